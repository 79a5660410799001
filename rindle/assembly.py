"""Completion: the object of an upload whose bytes are all in S3.

For a plain upload, CompleteMultipartUpload of the recorded parts (nothing to do for one
PutObject); for a final upload (concatenation), the partials' objects become its parts.
Then a HEAD checks the size, and only then is the upload ``completed``. Every step is
idempotent: the completion job may run again after a crash or a lost answer.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from blinker import NamedSignal
from botocore.exceptions import ClientError

from rindle import hooks, protocol
from rindle.config import MAX_PART_SIZE, MIN_PART_SIZE, Settings
from rindle.errors import AssemblyError, PartialsNotReady
from rindle.jobqueue import JobQueue
from rindle.storage import S3_ERRORS, MultipartGone, S3Storage, error_code
from rindle.storage.shared_tail import SharedTails
from rindle.store import UploadStore
from rindle.upload import ENDED, State, Upload

log = logging.getLogger("rindle.assembly")

# S3 answers that no retry can fix: the recorded parts do not assemble.
PERMANENT_COMPLETE_ERRORS = ("InvalidPart", "InvalidPartOrder", "EntityTooSmall")


@dataclass
class Assembly:
    store: UploadStore
    s3: S3Storage
    shared: SharedTails
    settings: Settings
    jobs: JobQueue
    notify: Callable[[NamedSignal, Upload], None] = lambda signal, upload: None

    def complete(self, upload_id: str) -> str:
        """Assemble the object of an upload in ``assembling`` and mark it ``completed``.

        A retry after success, or of a completion S3 already did, is a no-op. Raises on
        a failure worth retrying; marks the upload ``failed`` when no retry can help.
        """
        upload = self.store.get(upload_id)
        if upload is None:
            return "unknown"
        if upload.state != State.ASSEMBLING:
            return f"skipped ({upload.state})"
        # Not before the replicas hold the state it builds on: a failover could take it
        # back and leave an object S3 completed under a record still receiving.
        # (No client waits: a lagging replica gets 10 s before the job is retried later.)
        self.store.confirm_replicated(upload_id, timeout_ms=10_000)
        if upload.is_final:
            return self._concatenate(upload)
        return self._complete_multipart(upload)

    def _complete_multipart(self, upload: Upload) -> str:
        if upload.s3_upload_id:
            parts = self.store.parts(upload.id)
            numbers = [n for n, _, _ in parts]
            if numbers != list(range(1, len(parts) + 1)) or sum(s for *_, s in parts) != (
                upload.length
            ):
                log.error(
                    "upload %s: recorded parts do not cover the upload: %s", upload.id, numbers
                )
                return self._fail(upload.id, "failed (parts)")
            try:
                written = self.s3.complete_multipart(
                    upload.key, upload.s3_upload_id, [(n, etag) for n, etag, _ in parts]
                )
            except ClientError as exc:
                code = error_code(exc)
                if code in PERMANENT_COMPLETE_ERRORS:
                    log.error("upload %s: S3 refused assembly: %s", upload.id, exc)
                    return self._fail(upload.id, f"failed ({code})")
                if code != "NoSuchUpload":  # NoSuchUpload: completed by an earlier try
                    raise
            else:
                self._record_object(upload.id, written)
        return self._verify_and_finish(upload)

    def _record_object(self, upload_id: str, etag: str) -> None:
        """Keep the ETag of the object this upload just wrote, before anything else can
        happen: only that object is ever deleted on its behalf (``give_up``)."""
        if etag:
            self.store.set_state(
                upload_id, State.ASSEMBLING, (State.ASSEMBLING,), fields={"object_etag": etag}
            )

    def _verify_and_finish(self, upload: Upload, head: tuple[int | None, str] | None = None) -> str:
        """HEAD the object (unless ``head`` holds its size and ETag already), then mark
        the upload completed (once) and tell the app."""
        size, etag = head or self.s3.head(upload.key) or (None, "")
        if size != upload.length:
            raise AssemblyError(f"upload {upload.id}: object has {size} bytes, not {upload.length}")
        if self.settings.tail_store == "s3":
            # Every byte is in the object: shared copies are leftovers (a completed upload
            # has none, once it says so). What fails to go, the orphan sweep takes.
            with contextlib.suppress(*S3_ERRORS):
                self.shared.delete_all(upload.id)
        done = {"object_etag": etag}
        if not self.store.set_state(upload.id, State.COMPLETED, (State.ASSEMBLING,), None, done):
            current = self.store.get(upload.id)
            if current is not None and current.state == State.TERMINATED:
                self.s3.delete_object_if(upload.key, etag)  # terminated while assembled
            return f"skipped ({current.state if current else 'unknown'})"
        log.info("upload %s: completed, %d bytes at %s", upload.id, size, upload.key)
        # Told at once: a retry of this job would find the upload completed and skip it.
        self.notify(hooks.upload_completed, replace(upload, state=State.COMPLETED))
        if self.settings.on_complete:  # by id: the job loads the metadata (call_on_complete)
            self.jobs.on_complete(self.settings.on_complete, upload.id)
        return "completed"

    def call_on_complete(self, upload_id: str, hook: Callable[..., object]) -> str:
        """Call the app's RINDLE_ON_COMPLETE function for a completed upload, with what its
        record holds: ``upload_id``, ``key``, ``size`` and ``metadata`` (a dict of str).
        The record stays a week after completion (a tombstone); a job that runs after it
        went, or after a DELETE ended the upload, calls nothing (and says so)."""
        upload = self.store.get(upload_id)
        if upload is None or upload.state != State.COMPLETED:
            state = upload.state if upload is not None else "unknown"
            log.warning("upload %s: is %s: its on-complete hook is not called", upload_id, state)
            return f"skipped ({state})"
        metadata = hooks.metadata_dict(protocol.parse_metadata(upload.metadata))
        hook(upload_id=upload.id, key=upload.key, size=upload.length, metadata=metadata)
        return "called"

    def give_up(self, upload_id: str, reason: str) -> str:
        """No retry left for a completion whose object does not match the upload: the
        upload is ``failed`` (410) and its multipart upload aborted. The object at its
        key, which is not what the client sent, is deleted only if this upload wrote it
        (its recorded ETag): a key chosen by ``pre_create`` may hold another upload's."""
        upload = self.store.get(upload_id)
        if upload is None or upload.state != State.ASSEMBLING:
            return f"skipped ({upload.state if upload else 'unknown'})"
        log.error("upload %s: giving up on its completion, marked failed: %s", upload_id, reason)
        if not self.s3.delete_object_if(upload.key, upload.object_etag):
            log.warning(
                "upload %s: no object it wrote at %s: nothing deleted", upload_id, upload.key
            )
        return self._fail(upload_id, "failed (object)")

    def _fail(self, upload_id: str, outcome: str) -> str:
        if self.store.set_state(upload_id, State.FAILED, (State.ASSEMBLING,)):
            self.jobs.clean_up(upload_id)  # abort its multipart upload
            upload = self.store.get(upload_id)
            if upload is not None:
                self.notify(hooks.upload_failed, upload)
        return outcome

    def _concatenate(self, upload: Upload) -> str:
        """Assemble a final upload from its partial uploads' objects.

        When every partial but the last is at least 5 MiB (and none above S3's 5 GiB part
        limit), each partial becomes one part, copied inside S3 (UploadPartCopy): no bytes
        travel. Otherwise the partials are streamed through this process into parts of the
        upload's part size, one part in memory at a time.
        """
        partials = [self.store.get(partial_id) for partial_id in upload.partials]
        if any(p is None or p.state in ENDED for p in partials):
            log.error("upload %s: a partial upload is gone", upload.id)
            return self._fail(upload.id, "failed (partial gone)")
        ready = [p for p in partials if p is not None and p.state == State.COMPLETED]
        if len(ready) != len(partials):
            raise PartialsNotReady(f"upload {upload.id}: partial uploads still assembling")
        sources = [(p.key, p.length or 0) for p in ready if p.length]
        headers = protocol.object_headers(protocol.parse_metadata(upload.metadata))
        if not sources:
            self._record_object(upload.id, self.s3.put_object(upload.key, b"", 0, headers))
            return self._verify_and_finish(upload)

        s3_upload_id = upload.s3_upload_id or self.store.save_assembly_upload_id(
            upload.id, self.s3.create_multipart(upload.key, headers)
        )
        copyable = all(MIN_PART_SIZE <= size <= MAX_PART_SIZE for _, size in sources[:-1])
        try:
            if copyable and sources[-1][1] <= MAX_PART_SIZE:
                parts = [
                    (n, self.s3.upload_part_copy(upload.key, s3_upload_id, n, key))
                    for n, (key, _) in enumerate(sources, start=1)
                ]
            else:
                parts = self._restream(upload, s3_upload_id, [key for key, _ in sources])
        except MultipartGone:
            return self._assembly_gone(upload, s3_upload_id)
        except ClientError as exc:
            if error_code(exc) not in ("NoSuchKey", "404"):
                raise
            # A partial's object was deleted outside rindle: no retry brings it back.
            log.error("upload %s: a partial upload's object is gone: %s", upload.id, exc)
            return self._fail(upload.id, "failed (partial gone)")
        try:
            self._record_object(
                upload.id, self.s3.complete_multipart(upload.key, s3_upload_id, parts)
            )
        except ClientError as exc:
            if error_code(exc) != "NoSuchUpload":  # NoSuchUpload: completed by an earlier try
                raise
        return self._verify_and_finish(upload)

    def _assembly_gone(self, upload: Upload, s3_upload_id: str) -> str:
        """S3 no longer knows the assembly's multipart upload. An earlier try that
        completed it left the object (its size, and the ETag it recorded): finish.
        Otherwise it was aborted outside rindle (a lifecycle rule, by hand) and the
        parts copied into it are lost: the upload is failed (410), as a plain upload
        whose multipart upload vanished; retrying for ever would not bring it back."""
        size, etag = self.s3.head(upload.key) or (None, "")
        if size == upload.length and (not upload.object_etag or etag == upload.object_etag):
            return self._verify_and_finish(upload, (size, etag))
        log.error(
            "upload %s: S3 no longer knows its assembly multipart upload %s (aborted "
            "outside rindle, e.g. by a lifecycle rule): the upload failed",
            upload.id,
            s3_upload_id,
        )
        return self._fail(upload.id, "failed (multipart gone)")

    def _restream(
        self, upload: Upload, s3_upload_id: str, keys: list[str]
    ) -> list[tuple[int, str]]:
        """Copy objects, in order, into parts of exactly the upload's part size (the last
        one shorter), holding at most one part in memory."""
        parts: list[tuple[int, str]] = []
        buffer = bytearray()

        def ship() -> None:
            number = len(parts) + 1
            etag = self.s3.upload_part(
                upload.key, s3_upload_id, number, io.BytesIO(buffer), len(buffer)
            )
            parts.append((number, etag))
            buffer.clear()

        for key in keys:
            body = self.s3.get_object(key)["Body"]
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
