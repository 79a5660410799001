"""RQ jobs: they use the session store and the S3 adapter, never Flask."""

from __future__ import annotations

import logging
from functools import cache

import redis
from botocore.exceptions import ClientError

from rindle.config import Settings
from rindle.storage import S3Storage, make_s3_client
from rindle.storage.s3 import error_code
from rindle.store import ASSEMBLING, COMPLETED, FAILED, SessionStore

log = logging.getLogger("rindle.jobs")

# S3 answers that no retry can fix: the recorded parts do not assemble.
PERMANENT_COMPLETE_ERRORS = ("InvalidPart", "InvalidPartOrder", "EntityTooSmall")


@cache
def _services() -> tuple[Settings, SessionStore, S3Storage]:
    settings = Settings.from_env()
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    store = SessionStore(client, settings.expiration, settings.lease_seconds)
    storage = S3Storage(make_s3_client(max_pool_connections=4), settings.s3_bucket)
    return settings, store, storage


class AssemblyError(RuntimeError):
    """The object in S3 does not match the upload (retried by RQ)."""


def complete_upload(upload_id: str) -> str:
    """Assemble the object of an upload in ``assembling`` and mark it ``completed``.

    Idempotent: a retry after success, or of a completion S3 already did, is a no-op.
    """
    _, store, storage = _services()
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
    store.set_state(upload_id, COMPLETED, (ASSEMBLING,))
    log.info("upload %s: completed, %d bytes at %s", upload_id, size, upload.key)
    return "completed"
