"""RQ jobs: thin entry points over the session store, the S3 adapter and
``rindle.maintenance``.

A job runs with the app's services, so that settings, hooks and signal receivers are the
app's own: inside the current app context (in-process runs), else the app named by
RINDLE_APP (``module:attribute``, default ``app:app``), imported once per worker process.
"""

from __future__ import annotations

import importlib
import io
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import cache

from botocore.exceptions import ClientError
from flask import Flask, current_app, has_app_context

from rindle import hooks, protocol
from rindle.config import MAX_PART_SIZE, MIN_PART_SIZE
from rindle.extension import Services
from rindle.storage import S3Storage
from rindle.storage.s3 import error_code
from rindle.store import ASSEMBLING, COMPLETED, ENDED, FAILED, TERMINATED, Upload

log = logging.getLogger("rindle.jobs")

# S3 answers that no retry can fix: the recorded parts do not assemble.
PERMANENT_COMPLETE_ERRORS = ("InvalidPart", "InvalidPartOrder", "EntityTooSmall")


@cache
def worker_app() -> Flask:
    module, _, attribute = (os.environ.get("RINDLE_APP") or "app:app").partition(":")
    return getattr(importlib.import_module(module), attribute or "app")


@contextmanager
def app_services() -> Iterator[Services]:
    if has_app_context():
        yield current_app.extensions["rindle"]
        return
    app = worker_app()
    with app.app_context():
        yield app.extensions["rindle"]


class AssemblyError(RuntimeError):
    """The object in S3 does not match the upload (retried by RQ)."""


def complete_upload(upload_id: str) -> str:
    """Assemble the object of an upload in ``assembling`` and mark it ``completed``.

    Idempotent: a retry after success, or of a completion S3 already did, is a no-op.
    """
    with app_services() as svc:
        return _complete(svc, upload_id)


def _complete(svc: Services, upload_id: str) -> str:
    upload = svc.store.get(upload_id)
    if upload is None:
        return "unknown"
    if upload.state != ASSEMBLING:
        return f"skipped ({upload.state})"
    if upload.is_final:
        return _concatenate(svc, upload)
    return _complete_multipart(svc, upload)


def _complete_multipart(svc: Services, upload: Upload) -> str:
    store, storage, upload_id = svc.store, svc.storage, upload.id
    if upload.s3_upload_id:
        parts = store.parts(upload_id)
        numbers = [n for n, _, _ in parts]
        if numbers != list(range(1, len(parts) + 1)) or sum(s for *_, s in parts) != upload.length:
            log.error("upload %s: recorded parts do not cover the upload: %s", upload_id, numbers)
            return _fail(svc, upload_id, "failed (parts)")
        try:
            storage.complete_multipart(
                upload.key, upload.s3_upload_id, [(n, etag) for n, etag, _ in parts]
            )
        except ClientError as exc:
            code = error_code(exc)
            if code in PERMANENT_COMPLETE_ERRORS:
                log.error("upload %s: S3 refused assembly: %s", upload_id, exc)
                return _fail(svc, upload_id, f"failed ({code})")
            if code != "NoSuchUpload":  # NoSuchUpload: completed by an earlier try
                raise

    return _verify_and_finish(svc, upload)


def _verify_and_finish(svc: Services, upload: Upload) -> str:
    """HEAD the object, then mark the upload completed (once) and tell the app."""
    store, storage, upload_id = svc.store, svc.storage, upload.id
    size = storage.head_size(upload.key)
    if size != upload.length:
        raise AssemblyError(f"upload {upload_id}: object has {size} bytes, not {upload.length}")
    if not store.set_state(upload_id, COMPLETED, (ASSEMBLING,)):
        current = store.get(upload_id)
        if current is not None and current.state == TERMINATED:
            storage.delete_object(upload.key)  # terminated while we assembled it
        return f"skipped ({current.state if current else 'unknown'})"
    log.info("upload %s: completed, %d bytes at %s", upload_id, size, upload.key)
    completed = replace(upload, state=COMPLETED)
    svc.notify(hooks.upload_completed, completed)
    if svc.settings.on_complete:
        svc.jobs.queue.enqueue(
            svc.settings.on_complete,
            upload_id=upload_id,
            key=upload.key,
            size=size,
            metadata=hooks.metadata_dict(protocol.parse_metadata(upload.metadata)),
            job_id=f"rindle-on-complete-{upload_id}",
        )
    return "completed"


def _fail(svc: Services, upload_id: str, outcome: str) -> str:
    if svc.store.set_state(upload_id, FAILED, (ASSEMBLING,)):
        svc.jobs.clean_up(upload_id)  # abort its multipart upload
        upload = svc.store.get(upload_id)
        if upload is not None:
            svc.notify(hooks.upload_failed, upload)
    return outcome


def clean_up_upload(upload_id: str) -> str:
    """After DELETE or expiry: abort the multipart upload (and delete the object of a
    terminated upload). NoSuchUpload counts as done; other failures are retried."""
    with app_services() as svc:
        return svc.maintenance.clean_up(upload_id)


def sweep_expired() -> dict[str, int]:
    with app_services() as svc:
        return svc.maintenance.sweep_expired()


def abort_orphans() -> dict[str, int]:
    with app_services() as svc:
        return svc.maintenance.abort_orphans(grace=svc.settings.orphan_grace)


def reap_tails() -> dict[str, int]:
    """Reap the tails of the node this worker runs on (only useful on a web node)."""
    with app_services() as svc:
        return svc.maintenance.reap_tails()


class PartialsNotReady(RuntimeError):
    """A partial upload of a final one is still being assembled (retried by RQ)."""


def _concatenate(svc: Services, upload: Upload) -> str:
    """Assemble a final upload from its partial uploads' objects.

    When every partial but the last is at least 5 MiB (and none above S3's 5 GiB part
    limit), each partial becomes one part, copied inside S3 (UploadPartCopy): no bytes
    travel. Otherwise the partials are streamed through this worker into parts of the
    upload's part size, one part in memory at a time.
    """
    store, storage = svc.store, svc.storage
    partials = [store.get(partial_id) for partial_id in upload.partials]
    if any(p is None or p.state in ENDED for p in partials):
        log.error("upload %s: a partial upload is gone", upload.id)
        return _fail(svc, upload.id, "failed (partial gone)")
    ready = [p for p in partials if p is not None and p.state == COMPLETED]
    if len(ready) != len(partials):
        raise PartialsNotReady(f"upload {upload.id}: partial uploads still assembling")
    sources = [(p.key, p.length or 0) for p in ready if p.length]
    headers = protocol.object_headers(protocol.parse_metadata(upload.metadata))
    if not sources:
        storage.put_object(upload.key, b"", 0, headers)
        return _verify_and_finish(svc, upload)

    s3_upload_id = upload.s3_upload_id or store.save_assembly_upload_id(
        upload.id, storage.create_multipart(upload.key, headers)
    )
    copyable = all(MIN_PART_SIZE <= size <= MAX_PART_SIZE for _, size in sources[:-1])
    if copyable and sources[-1][1] <= MAX_PART_SIZE:
        parts = [
            (n, storage.upload_part_copy(upload.key, s3_upload_id, n, key))
            for n, (key, _) in enumerate(sources, start=1)
        ]
    else:
        parts = _restream(storage, upload, s3_upload_id, [key for key, _ in sources])
    try:
        storage.complete_multipart(upload.key, s3_upload_id, parts)
    except ClientError as exc:
        if error_code(exc) != "NoSuchUpload":  # NoSuchUpload: completed by an earlier try
            raise
    return _verify_and_finish(svc, upload)


def _restream(
    storage: S3Storage, upload: Upload, s3_upload_id: str, keys: list[str]
) -> list[tuple[int, str]]:
    """Copy objects, in order, into parts of exactly the upload's part size (the last
    one shorter), holding at most one part in memory."""
    parts: list[tuple[int, str]] = []
    buffer = bytearray()

    def ship() -> None:
        number = len(parts) + 1
        etag = storage.upload_part(
            upload.key, s3_upload_id, number, io.BytesIO(buffer), len(buffer)
        )
        parts.append((number, etag))
        buffer.clear()

    for key in keys:
        body = storage.get_object(key)["Body"]
        for chunk in body.iter_chunks(1024 * 1024):
            view = memoryview(chunk)
            while view:
                take = min(len(view), upload.part_size - len(buffer))
                buffer += view[:take]
                view = view[take:]
                if len(buffer) == upload.part_size:
                    ship()
    if buffer or not parts:
        ship()
    return parts
