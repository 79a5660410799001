"""Errors with an HTTP status and a stable, machine-readable code."""

from __future__ import annotations


class TusError(Exception):
    """A refusal sent to the client as ``{"error": code, "message": ...}``."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class TailMissing(Exception):
    """Redis says bytes are buffered in a tail this node does not hold (or holds short)."""

    def __init__(self, upload_id: str, expected: int, found: int | None) -> None:
        super().__init__(
            f"upload {upload_id}: {expected} buffered bytes expected, "
            f"{'no tail file' if found is None else f'{found} bytes found'}"
        )
        self.upload_id = upload_id
        self.expected = expected
        self.found = found


class Fenced(Exception):
    """A commit lost its race: the writer lease or the offset moved underneath it."""


class LeaseHeld(Exception):
    """Another request holds the writer lease of this upload."""


class ChecksumMismatch(Exception):
    """The PATCH body does not match its Upload-Checksum: nothing of it was kept."""
