"""RQ jobs: thin entry points over the session store, the S3 adapter and
``rindle.maintenance``.

A job runs with the app's services, so that settings, hooks and signal receivers are the
app's own: inside the current app context (in-process runs), else the app named by
RINDLE_APP (``module:attribute``, default ``app:app``), imported once per worker process.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import cache

from botocore.exceptions import ClientError
from flask import Flask, current_app, has_app_context

from rindle import hooks, protocol
from rindle.extension import Services
from rindle.storage.s3 import error_code
from rindle.store import ASSEMBLING, COMPLETED, FAILED, TERMINATED

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
    store, storage = svc.store, svc.storage
    upload = store.get(upload_id)
    if upload is None:
        return "unknown"
    if upload.state != ASSEMBLING:
        return f"skipped ({upload.state})"

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
