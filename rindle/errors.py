"""Every exception of rindle, and the one table of named tus errors.

The core raises these; only the web layer turns them into HTTP answers, through
``STATUS`` (code -> status). A client sees ``{"error": code, "message": ...}``.
"""

from __future__ import annotations

from collections.abc import Mapping

STATUS: dict[str, int] = {
    "missing_header": 400,
    "invalid_header": 400,
    "invalid_metadata": 400,
    "metadata_too_large": 400,
    "invalid_length": 400,
    "length_already_set": 400,
    "invalid_checksum": 400,
    "unsupported_checksum_algorithm": 400,
    "invalid_concat": 400,
    "partial_not_finished": 400,
    "append_too_small": 400,  # shared tail mode: protocol.check_shared_append
    "inconsistent_length": 400,  # the IETF draft's dialect (rindle.draft)
    "completed_upload": 400,  # the IETF draft's dialect (rindle.draft)
    "final_upload": 403,
    "not_found": 404,
    "download_disabled": 405,
    "method_not_allowed": 405,
    "offset_mismatch": 409,
    "conflict": 409,
    "upload_not_writable": 409,
    "not_ready": 409,
    "gone": 410,
    "unsupported_version": 412,
    "upload_too_large": 413,
    "exceeds_upload_length": 413,
    "checksum_body_too_large": 413,
    "unsupported_media_type": 415,
    "invalid_range": 416,
    "upload_locked": 423,
    "checksum_mismatch": 460,
    "tus_tail_missing": 500,
    "invalid_key": 500,
    "redis_unavailable": 503,
    "storage_unavailable": 503,
    "storage_error": 500,
    "insufficient_storage": 507,
    "shutting_down": 503,
}


class RindleError(Exception):
    """A named error: ``code`` is a key of STATUS; ``headers`` go with the answer."""

    code = "conflict"

    def __init__(self, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})

    @property
    def status(self) -> int:
        return STATUS[self.code]


class TusError(RindleError):
    """The request cannot be served as sent (a malformed header, a wrong offset...)."""

    def __init__(self, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        if code not in STATUS:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message, headers)
        self.code = code


class LeaseHeld(RindleError):
    """Another request holds the writer lease of this upload."""

    code = "upload_locked"

    def __init__(self, upload_id: str) -> None:
        super().__init__("another request is writing this upload", {"Retry-After": "1"})
        self.upload_id = upload_id


class Fenced(RindleError):
    """A commit lost its race: the writer lease or the offset moved underneath it.

    The client hears only that (409); ``detail`` (lease, offset, state) is for logs."""

    code = "conflict"

    def __init__(self, detail: str) -> None:
        super().__init__("another request changed this upload meanwhile; HEAD tells its offset")
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


class OutcomeUnknown(RindleError):
    """A change sent to Redis may or may not have been applied: its answer was lost and
    Redis stayed out of reach while the lease lasted. Nothing is undone (the bytes it
    would acknowledge stay where they are); the next request reads what Redis holds."""

    code = "redis_unavailable"

    def __init__(self, upload_id: str, what: str) -> None:
        super().__init__(
            "the bookkeeping store is unavailable; retry, HEAD tells the offset",
            {"Retry-After": "5"},
        )
        self.upload_id = upload_id
        self.what = what

    def __str__(self) -> str:
        return f"upload {self.upload_id}: outcome of the {self.what} unknown"


class NotReplicated(RindleError):
    """The change is in Redis, but its replicas did not confirm it in time
    (RINDLE_REDIS_WAIT_REPLICAS): a failover now could lose it, so it is not acknowledged
    yet. The client asks again (HEAD) once they caught up."""

    code = "redis_unavailable"

    def __init__(self, upload_id: str) -> None:
        super().__init__(
            "the bookkeeping store's replicas did not confirm the upload's offset in time; "
            "retry, HEAD tells the offset",
            {"Retry-After": "1"},
        )
        self.upload_id = upload_id


class ChecksumMismatch(RindleError):
    """The PATCH body does not match its Upload-Checksum: nothing of it was kept."""

    code = "checksum_mismatch"

    def __init__(self, upload_id: str) -> None:
        super().__init__("the body does not match Upload-Checksum")
        self.upload_id = upload_id


class TailMissing(RindleError):
    """Redis says bytes are buffered in a tail this node does not hold (or holds short)."""

    code = "tus_tail_missing"

    def __init__(
        self,
        upload_id: str,
        expected: int,
        found: int | None,
        node: str = "",
        starts_at: int | None = None,
    ) -> None:
        """``node``: the node Redis says holds the bytes, when known. ``starts_at``: the
        upload offset at which the file found holds its bytes, when not where Redis
        expects them."""
        super().__init__(
            "this node does not hold the buffered bytes of this upload; "
            "resumes must reach the node that received them"
        )
        self.upload_id = upload_id
        self.node = node
        self.expected = expected
        self.found = found
        self.starts_at = starts_at

    def __str__(self) -> str:
        found = "no tail file" if self.found is None else f"{self.found} bytes found"
        return f"upload {self.upload_id}: {self.expected} buffered bytes expected, {found}"


class BodyEnded(Exception):
    """Reading the request body failed: the client went away, stalled, or was stopped."""


class ConfigError(ValueError):
    """A setting in the environment is missing or malformed."""


class AssemblyError(RuntimeError):
    """The object in S3 does not match the upload (the completion job is retried)."""


class PartialsNotReady(RuntimeError):
    """A partial upload of a final one is still being assembled (retried)."""
