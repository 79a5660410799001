"""The IETF "Resumable Uploads for HTTP" draft (draft-ietf-httpbis-resumable-upload):
header parsing, the rules checked before a body is read, and answer fields. Pure: no I/O.

rindle speaks two interop versions of the draft, on the same uploads as tus 1.0.0:

- 8: draft-09 to draft-12, what Apple's URLSession speaks (iOS 17 and later);
- 6: draft-04 and draft-05, what tus-js-client sends with ``protocol: 'ietf-draft-05'``.

A request is in the draft's dialect when it carries ``Upload-Draft-Interop-Version``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus

from rindle import protocol
from rindle.errors import TusError
from rindle.upload import WRITABLE, State, Upload

VERSION_HEADER = "Upload-Draft-Interop-Version"
INTEROP_VERSIONS = (6, 8)
PARTIAL_UPLOAD = "application/partial-upload"  # an append's content type
PROBLEM_JSON = "application/problem+json"

# Problem types (RFC 9457) the draft defines; "completed-upload" is in draft-04 to -11.
PROBLEM_BASE = "https://iana.org/assignments/http-problem-types#"
PROBLEM_TYPES = {
    "offset_mismatch": PROBLEM_BASE + "mismatching-upload-offset",
    "inconsistent_length": PROBLEM_BASE + "inconsistent-upload-length",
    "completed_upload": PROBLEM_BASE + "completed-upload",
}
PROBLEM_TITLES = {
    "offset_mismatch": "offset from request does not match offset of resource",
    "inconsistent_length": "inconsistent length values for upload",
    "completed_upload": "upload is already completed",
}

# For CORS: what a browser may send and read in this dialect (beside tus's lists).
REQUEST_HEADERS = (
    VERSION_HEADER,
    "Upload-Complete",
    "Upload-Offset",
    "Upload-Length",
    "Content-Disposition",
)
RESPONSE_HEADERS = (
    "Location",
    "Upload-Complete",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Limit",
)
# Fields of tus 1.0.0 answers: never in an answer in the draft's dialect.
TUS_ONLY_RESPONSE_HEADERS = (
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
    "Upload-Expires",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Upload-Checksum",
)

# Structured Field items (RFC 8941): an Integer has at most 15 digits; parameters
# (";key=value") may follow a bare item and are ignored here.
_INTEGER = re.compile(r"-?[0-9]{1,15}")


def _bare_item(value: str) -> str:
    return value.split(";", 1)[0].strip()


def sf_integer(value: str | None) -> int | None:
    """A non-negative Structured Field Integer, or None when absent or anything else (the
    draft: other values MUST cause the entire field to be ignored)."""
    if value is None:
        return None
    bare = _bare_item(value)
    if not _INTEGER.fullmatch(bare) or bare.startswith("-"):
        return None
    return int(bare)


def sf_boolean(value: str | None) -> bool | None:
    """A Structured Field Boolean (``?0``, ``?1``), or None when absent or anything else."""
    if value is None:
        return None
    return {"?0": False, "?1": True}.get(_bare_item(value))


def sf_boolean_text(value: bool) -> str:
    return "?1" if value else "?0"


def interop_version(headers: Mapping[str, str]) -> int | None:
    """The draft interop version a request names, or None for a tus 1.0.0 request. A
    version rindle does not speak is -1 (refused with ``check_interop_version``)."""
    raw = headers.get(VERSION_HEADER)
    if raw is None:
        return None
    version = sf_integer(raw)
    return version if version in INTEROP_VERSIONS else -1


def check_interop_version(version: int) -> None:
    if version not in INTEROP_VERSIONS:
        raise TusError(
            "unsupported_version",
            f"{VERSION_HEADER} must be one of {', '.join(map(str, INTEROP_VERSIONS))}",
        )


def is_draft(headers: Mapping[str, str]) -> bool:
    return VERSION_HEADER in headers


@dataclass(frozen=True)
class Transfer:
    """What a creation or append request declares, parsed before its body is read."""

    complete: bool  # Upload-Complete
    length: int | None  # Upload-Length (None: absent or ignored as malformed)
    body_length: int | None  # Content-Length (None: chunked)
    offset: int | None = None  # Upload-Offset (appends only)

    def declared_length(self, offset: int) -> int | None:
        """The upload's length this request declares when its content starts at
        ``offset``: Upload-Length, or (with Upload-Complete: ?1) offset + Content-Length.
        Both present must agree (400 inconsistent_length)."""
        by_content = (
            offset + self.body_length if self.complete and self.body_length is not None else None
        )
        if self.length is not None and by_content is not None and self.length != by_content:
            raise TusError(
                "inconsistent_length",
                "Upload-Length differs from the offset plus Content-Length of a completing request",
            )
        return self.length if self.length is not None else by_content


def parse_transfer(
    headers: Mapping[str, str], content_length: int | None, append: bool
) -> Transfer:
    """Upload-Complete (required), Upload-Length, and for an append Upload-Offset (required)
    and the ``application/partial-upload`` content type (415 otherwise)."""
    complete = sf_boolean(headers.get("Upload-Complete"))
    if complete is None:
        raise TusError("missing_header", "Upload-Complete (?0 or ?1) is required")
    offset = None
    if append:
        if protocol.media_type(headers) != PARTIAL_UPLOAD:
            raise TusError("unsupported_media_type", f"Content-Type must be {PARTIAL_UPLOAD}")
        offset = sf_integer(headers.get("Upload-Offset"))
        if offset is None:
            raise TusError("missing_header", "Upload-Offset (a non-negative integer) is required")
    body_length = None if protocol.is_chunked(headers) else (content_length or 0)
    return Transfer(complete, sf_integer(headers.get("Upload-Length")), body_length, offset)


def check_no_upload_fields(headers: Mapping[str, str], names: tuple[str, ...]) -> None:
    """Interop 6: offset retrieval and cancellation MUST NOT carry these fields (400)."""
    for name in names:
        if name in headers:
            raise TusError("invalid_header", f"{name} is not allowed in this request")


def is_complete(upload: Upload) -> bool:
    """Every byte of the upload is received (then assembled by the worker)."""
    return upload.state in (State.ASSEMBLING, State.COMPLETED)


def check_append(upload: Upload, transfer: Transfer, max_size: int) -> int | None:
    """Whether an append fits the upload as recorded, before its body is read; returns the
    length it declares for an upload whose length is not known yet (else None).

    409 on a wrong offset, 400 inconsistent_length when it contradicts the recorded
    length or its content cannot end where a length says, 400 completed_upload for a
    completed upload, 413 beyond the most the upload can hold.
    """
    assert transfer.offset is not None
    if transfer.offset != upload.offset:
        raise TusError(
            "offset_mismatch",
            "Upload-Offset does not match the upload's",
            {"Upload-Offset": str(upload.offset)},
        )
    declared = transfer.declared_length(upload.offset)
    body = transfer.body_length
    if is_complete(upload):
        if body:
            raise TusError("inconsistent_length", "the upload is complete: nothing can follow")
        if declared is not None and declared != upload.length:
            raise TusError("inconsistent_length", "the upload is complete at another length")
        if not transfer.complete:
            raise TusError("completed_upload", "the upload is already complete")
        return None
    if declared is not None and upload.length is not None and declared != upload.length:
        raise TusError("inconsistent_length", f"the upload's length is {upload.length}")
    length = upload.length if upload.length is not None else declared
    if length is not None:
        if length < upload.offset:
            raise TusError("inconsistent_length", "the length is below the upload's offset")
        if body is not None and upload.offset + body > length:
            raise TusError("inconsistent_length", "the content goes beyond the upload's length")
    most = protocol.deferred_limit(upload, max_size) if upload.length is None else upload.length
    if (length or 0) > most or (body is not None and upload.offset + body > most):
        raise TusError("upload_too_large", f"an upload here holds at most {most} bytes")
    return declared if upload.length is None else None


def creation_length(transfer: Transfer, max_size: int) -> int | None:
    """The length a creation request declares (None: not known yet); 413 above
    ``max_size``, 400 when its content goes beyond its own Upload-Length."""
    length = transfer.declared_length(0)
    if length is not None and length > max_size:
        raise TusError("upload_too_large", f"an upload here holds at most {max_size} bytes")
    body = transfer.body_length
    if length is not None and body is not None and body > length:
        raise TusError("inconsistent_length", "the content goes beyond Upload-Length")
    return length


def limits(
    version: int,
    max_size: int,
    upload: Upload | None = None,
    now: float = 0.0,
    shared_tails: bool = False,
) -> dict[str, int]:
    """The Upload-Limit members that apply: ``max-size`` (RINDLE_TUS_MAX_SIZE, or what an
    upload of unknown length can hold with its part size) and, for an upload that still
    takes bytes, its remaining lifetime (``max-age``; ``expires`` in interop 6); with
    ``shared_tails`` (RINDLE_TAIL_STORE=s3), the smallest append that is not the last,
    ``min-append-size`` (``protocol.check_shared_append``: each append that leaves bytes
    buffered is one S3 object).

    There is no min-size (every upload is resumable) and no max-append-size (no
    per-request cap)."""
    found: dict[str, int] = {"max-size": max_size}
    if upload is None:
        return found
    if upload.length is None:
        found["max-size"] = protocol.deferred_limit(upload, max_size)
    if shared_tails and upload.state in WRITABLE:
        found["min-append-size"] = protocol.min_shared_append(upload.part_size)
    if upload.state in WRITABLE:
        found["max-age" if version >= 7 else "expires"] = max(0, int(upload.expires_at - now))
    return found


def format_limits(members: Mapping[str, int]) -> str:
    """An Upload-Limit Dictionary: ``max-size=1000, max-age=3600``."""
    return ", ".join(f"{key}={value}" for key, value in members.items())


def problem(
    status: int,
    code: str,
    message: str,
    expected_offset: str | None = None,
    provided_offset: int | None = None,
) -> dict[str, object]:
    """A problem document (RFC 9457) for a refusal: the draft's problem type where one
    applies, else ``about:blank`` titled by the status; rindle's code in ``error``. A
    mismatching offset carries ``expected-offset`` and ``provided-offset``."""
    body: dict[str, object] = {
        "type": PROBLEM_TYPES.get(code, "about:blank"),
        "title": PROBLEM_TITLES.get(code) or _phrase(status),
        "detail": message,
        "error": code,
    }
    if code == "offset_mismatch":
        if expected_offset is not None and expected_offset.isdigit():
            body["expected-offset"] = int(expected_offset)
        if provided_offset is not None:
            body["provided-offset"] = provided_offset
    return body


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
