"""RQ jobs: thin entry points over the session store, the S3 adapter and
``rindle.maintenance``; they never touch Flask."""

from __future__ import annotations

import logging
from functools import cache

import redis
from botocore.exceptions import ClientError
from rq import Queue

from rindle.config import Settings
from rindle.jobqueue import JobQueue
from rindle.maintenance import Maintenance
from rindle.storage import S3Storage, make_s3_client
from rindle.storage.s3 import error_code
from rindle.store import ASSEMBLING, COMPLETED, FAILED, TERMINATED, SessionStore

log = logging.getLogger("rindle.jobs")

# S3 answers that no retry can fix: the recorded parts do not assemble.
PERMANENT_COMPLETE_ERRORS = ("InvalidPart", "InvalidPartOrder", "EntityTooSmall")


@cache
def maintenance() -> Maintenance:
    """The worker's clients, built once per worker process from the environment."""
    settings = Settings.from_env()
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    store = SessionStore(client, settings.expiration, settings.lease_seconds)
    storage = S3Storage(make_s3_client(max_pool_connections=4), settings.s3_bucket)
    queue = Queue(settings.queue, connection=redis.Redis.from_url(settings.redis_url))
    return Maintenance(store, storage, settings, JobQueue(queue))


class AssemblyError(RuntimeError):
    """The object in S3 does not match the upload (retried by RQ)."""


def complete_upload(upload_id: str) -> str:
    """Assemble the object of an upload in ``assembling`` and mark it ``completed``.

    Idempotent: a retry after success, or of a completion S3 already did, is a no-op.
    """
    m = maintenance()
    store, storage = m.store, m.storage
    upload = store.get(upload_id)
    if upload is None:
        return "unknown"
    if upload.state != ASSEMBLING:
        return f"skipped ({upload.state})"

    if upload.s3_upload_id:
        parts = store.parts(upload_id)
        numbers = [n for n, _, _ in parts]
        if numbers != list(range(1, len(parts) + 1)) or sum(s for *_, s in parts) != upload.length:
            store.set_state(upload_id, FAILED, (ASSEMBLING,))
            log.error("upload %s: recorded parts do not cover the upload: %s", upload_id, numbers)
            return "failed (parts)"
        try:
            storage.complete_multipart(
                upload.key, upload.s3_upload_id, [(n, etag) for n, etag, _ in parts]
            )
        except ClientError as exc:
            code = error_code(exc)
            if code in PERMANENT_COMPLETE_ERRORS:
                store.set_state(upload_id, FAILED, (ASSEMBLING,))
                log.error("upload %s: S3 refused assembly: %s", upload_id, exc)
                return f"failed ({code})"
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
    return "completed"


def clean_up_upload(upload_id: str) -> str:
    """After DELETE or expiry: abort the multipart upload (and delete the object of a
    terminated upload). NoSuchUpload counts as done; other failures are retried."""
    return maintenance().clean_up(upload_id)


def sweep_expired() -> dict[str, int]:
    return maintenance().sweep_expired()


def abort_orphans() -> dict[str, int]:
    m = maintenance()
    return m.abort_orphans(grace=m.settings.orphan_grace)


def reap_tails() -> dict[str, int]:
    """Reap the tails of the node this worker runs on (only useful on a web node)."""
    return maintenance().reap_tails()
