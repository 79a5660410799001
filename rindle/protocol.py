"""tus 1.0.0 header parsing and rules: pure functions, no I/O.

The checks here run before a request body is read, so that everything that can be
refused is refused first; the writer runs ``check_append`` again under the lease.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote

from rindle.config import MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE
from rindle.errors import TusError
from rindle.upload import Upload

TUS_VERSION = "1.0.0"
SUPPORTED_VERSIONS = (TUS_VERSION,)
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "expiration",
    "termination",
    "checksum",
    "concatenation",
)
CHECKSUM_ALGORITHMS = ("sha1", "sha256", "sha512", "md5", "crc32")
DIGEST_SIZES = {"sha1": 20, "sha256": 32, "sha512": 64, "md5": 16, "crc32": 4}
PATCH_CONTENT_TYPE = "application/offset+octet-stream"

# For CORS: what a browser client may send, and what it must be allowed to read.
REQUEST_HEADERS = (
    "Authorization",
    "Content-Type",
    "Origin",
    "X-Requested-With",
    "X-Request-ID",
    "X-HTTP-Method-Override",
    "Tus-Resumable",
    "Upload-Length",
    "Upload-Offset",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Upload-Checksum",
)
RESPONSE_HEADERS = (
    "Location",
    "Tus-Version",
    "Tus-Resumable",
    "Tus-Max-Size",
    "Tus-Extension",
    "Tus-Checksum-Algorithm",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Upload-Expires",
    "Upload-Checksum",
)
METHODS = ("POST", "GET", "HEAD", "PATCH", "DELETE", "OPTIONS")

_DIGITS = re.compile(r"[0-9]+")
_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def parse_non_negative(value: str | None, header: str) -> int:
    """An integer header of digits only (no sign, no spaces): 400 otherwise."""
    if value is None:
        raise TusError("missing_header", f"{header} is required")
    if not _DIGITS.fullmatch(value) or len(value) > 19:
        raise TusError("invalid_header", f"{header} must be a non-negative integer")
    return int(value)


def parse_metadata(value: str | None, max_size: int | None = None) -> dict[str, bytes | None]:
    """Upload-Metadata: comma-separated ``key base64value`` pairs; 400 when malformed or
    longer than ``max_size`` characters.

    Keys are unique, non-empty, without spaces or commas; a value may be absent.
    """
    if value is None or value.strip() == "":
        return {}
    if max_size is not None and len(value) > max_size:
        raise TusError("metadata_too_large", f"Upload-Metadata exceeds {max_size} bytes")
    result: dict[str, bytes | None] = {}
    for pair in value.split(","):
        parts = pair.strip().split(" ")
        key = parts[0]
        if not key or len(parts) > 2 or not key.isascii() or not key.isprintable():
            raise TusError("invalid_metadata", f"malformed Upload-Metadata pair {pair!r}")
        if key in result:
            raise TusError("invalid_metadata", f"duplicate Upload-Metadata key {key!r}")
        if len(parts) == 1 or parts[1] == "":
            result[key] = None
            continue
        encoded = parts[1]
        if not _B64.fullmatch(encoded) or len(encoded) % 4:
            raise TusError("invalid_metadata", f"value of {key!r} is not base64")
        try:
            result[key] = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise TusError("invalid_metadata", f"value of {key!r} is not base64") from None
    return result


def format_metadata(metadata: dict[str, bytes | None]) -> str:
    """The canonical Upload-Metadata header for parsed metadata."""
    return ",".join(
        key if value is None else f"{key} {base64.b64encode(value).decode('ascii')}"
        for key, value in metadata.items()
    )


def part_size_for(length: int, configured: int) -> int:
    """Fixed part size of an upload: the configured size, raised so that the upload
    needs at most 10,000 parts, never below S3's 5 MiB floor."""
    size = max(configured, MIN_PART_SIZE, math.ceil(length / MAX_PARTS))
    if size > MAX_PART_SIZE:
        raise TusError("upload_too_large", "the upload is larger than S3 can store")
    return size


# A client's chunk becomes the part size up to this (or the configured part size, when
# larger); a larger chunk is cut into equal parts no larger than this, when it can be.
FOLLOWED_PART_CEILING = 64 * 1024 * 1024


def chunk_part_size(
    upload: Upload, append: Append, declared: int | None, configured: int, max_size: int
) -> int | None:
    """The part size that follows the client's chunk size, or None to keep the upload's.

    Asked of the first PATCH (nothing stored yet): when its body is shorter than the
    upload and at least S3's minimum, every later chunk of the same size then ends on a
    part boundary, and nothing stays buffered between PATCHes (no tail to find, on any
    node). A chunk larger than the ceiling is cut into k equal parts when it divides
    evenly. The part count limit still holds, and an upload of unknown length keeps at
    least the ceiling its configured part size gives it."""
    chunk = append.content_length
    length = upload.length if declared is None else declared
    if upload.offset or upload.s3_upload_id or not chunk or chunk < MIN_PART_SIZE:
        return None
    if length is not None and chunk >= length:
        return None  # one PATCH: the configured size is best for it
    size = _equal_parts(chunk, max(FOLLOWED_PART_CEILING, configured))
    if size is None or size == upload.part_size:
        return None
    if length is not None and size * MAX_PARTS < length:
        return None
    if length is None and size * MAX_PARTS < min(max_size, upload.part_size * MAX_PARTS):
        return None
    return size


def check_shared_append(upload: Upload, append: Append, declared: int | None) -> None:
    """In shared tail mode, 400 for a body of known length that is smaller than
    ``min_shared_append`` and would stay buffered whole: it neither ends the upload nor
    fills the part. (Each such body would be one more S3 object.)"""
    body = append.content_length
    length = upload.length if declared is None else declared
    if not body or upload.buffered + body >= upload.part_size:
        return
    if length is not None and upload.offset + body >= length:
        return
    minimum = min_shared_append(upload.part_size)
    if body < minimum:
        raise TusError(
            "append_too_small",
            f"a PATCH that neither ends the upload nor fills a part of {upload.part_size} "
            f"bytes must carry at least {minimum} bytes",
        )


def _equal_parts(chunk: int, ceiling: int) -> int | None:
    """The largest size, at most ``ceiling`` and at least S3's minimum, that cuts
    ``chunk`` into equal parts (None when there is none)."""
    for count in range(1, chunk // MIN_PART_SIZE + 1):
        if chunk % count == 0 and chunk // count <= ceiling:
            return chunk // count
    return None


def min_shared_append(part_size: int) -> int:
    """In shared tail mode, the fewest bytes a PATCH may leave buffered on its own (one
    S3 object per PATCH that leaves bytes buffered): at most 129 such copies per part."""
    return max(64 * 1024, part_size // 128)


_MIME = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")


def _filename_params(metadata: dict[str, bytes | None]) -> str:
    """The ``filename`` metadata as Content-Disposition parameters, RFC 6266 style (an
    ASCII fallback plus the UTF-8 name), or "" without a name."""
    raw_name = (metadata.get("filename") or b"").decode("utf-8", "replace")
    name = raw_name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not name:
        return ""
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    return f"; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


def object_headers(metadata: dict[str, bytes | None]) -> dict[str, str]:
    """S3 ContentType / ContentDisposition from the ``filetype`` and ``filename`` metadata.

    A filetype that is not a plain MIME type is ignored, never passed on to S3; the file
    name is sent RFC 6266 style (an ASCII fallback plus the UTF-8 name).
    """
    headers: dict[str, str] = {}
    filetype = (metadata.get("filetype") or b"").decode("utf-8", "replace").strip()
    if _MIME.fullmatch(filetype):
        headers["ContentType"] = filetype
    params = _filename_params(metadata)
    if params:
        headers["ContentDisposition"] = "attachment" + params
    return headers


# Types a browser may show in place (with nosniff and a sandbox CSP): they run no script.
# Anything else, HTML and SVG among them, is served as an attachment.
INLINE_TYPES = ("application/pdf", "text/plain")
INLINE_FAMILIES = ("image/", "video/", "audio/")


def shown_inline(content_type: str) -> bool:
    """Whether a download of ``content_type`` may be displayed rather than saved: images
    (not SVG, which runs script), PDF, plain text, video and audio."""
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime.startswith("image/") and ("svg" in mime or "xml" in mime):
        return False
    return mime in INLINE_TYPES or mime.startswith(INLINE_FAMILIES)


def download_headers(metadata: dict[str, bytes | None], content_type: str = "") -> dict[str, str]:
    """ContentType / ContentDisposition to serve a download with, so that an uploaded
    file never runs as a page of the origin that serves it: ``content_type`` (the
    object's, else the ``filetype`` metadata, else application/octet-stream) and an
    attachment, unless the type is ``shown_inline``; the RFC 6266 file name kept."""
    content_type = (
        content_type or object_headers(metadata).get("ContentType") or "application/octet-stream"
    )
    kind = "inline" if shown_inline(content_type) else "attachment"
    return {
        "ContentType": content_type,
        "ContentDisposition": kind + _filename_params(metadata),
    }


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


class _Crc32:
    """CRC-32 (zlib's), digest as 4 big-endian bytes, as tusd and tus-js-client do."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes, /) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


@dataclass(frozen=True)
class Checksum:
    algorithm: str
    digest: bytes

    def hasher(self) -> Hasher:
        return _Crc32() if self.algorithm == "crc32" else hashlib.new(self.algorithm)


def parse_checksum(value: str | None) -> Checksum | None:
    """Upload-Checksum: ``<algorithm> <base64 digest>``; 400 when malformed or when the
    algorithm is not one of CHECKSUM_ALGORITHMS."""
    if value is None:
        return None
    parts = value.strip().split(" ")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise TusError("invalid_checksum", "Upload-Checksum must be '<algorithm> <base64>'")
    algorithm = parts[0].lower()
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise TusError(
            "unsupported_checksum_algorithm",
            f"supported: {', '.join(CHECKSUM_ALGORITHMS)}",
            {"Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS)},
        )
    try:
        digest = base64.b64decode(parts[1], validate=True)
    except binascii.Error:
        raise TusError("invalid_checksum", "the checksum is not base64") from None
    if len(digest) != DIGEST_SIZES[algorithm]:
        # Refused before the body is read: such a checksum could never match.
        raise TusError(
            "invalid_checksum", f"a {algorithm} digest has {DIGEST_SIZES[algorithm]} bytes"
        )
    return Checksum(algorithm, digest)


def parse_concat(value: str | None) -> tuple[str, list[str]]:
    """Upload-Concat: ``partial``, or ``final;<url> <url> ...``: (kind, urls); 400 when
    malformed. No header: ("", [])."""
    if value is None:
        return "", []
    value = value.strip()
    if value == "partial":
        return "partial", []
    kind, _, urls = value.partition(";")
    if kind.strip() != "final" or not urls.split():
        raise TusError("invalid_concat", "Upload-Concat is 'partial' or 'final;<urls>'")
    return "final", urls.split()


def check_version(version: str | None) -> None:
    """Tus-Resumable must name a version this server speaks (412 otherwise)."""
    if version not in SUPPORTED_VERSIONS:
        raise TusError(
            "unsupported_version",
            "Tus-Resumable 1.0.0 is required",
            {"Tus-Version": ",".join(SUPPORTED_VERSIONS)},
        )


def media_type(headers: Mapping[str, str]) -> str:
    return headers.get("Content-Type", "").split(";")[0].strip().lower()


def is_chunked(headers: Mapping[str, str]) -> bool:
    """A body of unknown length (``Transfer-Encoding: chunked``, in any case: header
    values are case-insensitive tokens)."""
    return "chunked" in headers.get("Transfer-Encoding", "").lower()


def has_upload_body(headers: Mapping[str, str], content_length: int | None) -> bool:
    """A creation request that carries bytes (creation-with-upload)."""
    return media_type(headers) == PATCH_CONTENT_TYPE and (
        bool(content_length) or is_chunked(headers)
    )


def creation_length(headers: Mapping[str, str]) -> int | None:
    """Upload-Length, or None with Upload-Defer-Length: 1 (exactly one of them)."""
    defer = headers.get("Upload-Defer-Length")
    raw = headers.get("Upload-Length")
    if defer is not None and raw is not None:
        raise TusError("invalid_length", "send Upload-Length or Upload-Defer-Length, not both")
    if defer is not None:
        if defer.strip() != "1":
            raise TusError("invalid_header", "Upload-Defer-Length must be 1")
        return None
    return parse_non_negative(raw, "Upload-Length")


@dataclass(frozen=True)
class Append:
    """What a PATCH asks for, parsed before its body is read."""

    offset: int
    checksum: Checksum | None
    declared_length: int | None  # Upload-Length sent with a PATCH (deferred length)
    content_length: int | None = None  # the body's length, when the request says it


def parse_append(headers: Mapping[str, str]) -> Append:
    """Content type (415), Upload-Offset, Upload-Checksum and Upload-Length (400)."""
    if media_type(headers) != PATCH_CONTENT_TYPE:
        raise TusError("unsupported_media_type", f"Content-Type must be {PATCH_CONTENT_TYPE}")
    offset = parse_non_negative(headers.get("Upload-Offset"), "Upload-Offset")
    checksum = parse_checksum(headers.get("Upload-Checksum"))
    declared = headers.get("Upload-Length")
    length = None if declared is None else parse_non_negative(declared, "Upload-Length")
    body = headers.get("Content-Length")
    content_length = None if body is None else parse_non_negative(body, "Content-Length")
    return Append(offset, checksum, length, content_length)


def deferred_limit(upload: Upload, max_size: int) -> int:
    """The most a deferred-length upload can hold: its part size fixes its ceiling."""
    return min(max_size, upload.part_size * MAX_PARTS)


def checksum_body_limit(upload: Upload, configured: int = 0) -> int:
    """The largest checksummed PATCH body (it is spooled to disk whole before it is
    checked): RINDLE_MAX_CHECKSUM_BODY, or by default four of the upload's parts."""
    return configured or 4 * upload.part_size


def check_append(
    upload: Upload,
    append: Append,
    max_size: int,
    body_length: int | None = None,
    max_checksum_body: int = 0,
) -> int | None:
    """Whether ``append`` fits ``upload`` as recorded; returns the length it declares for
    a deferred-length upload (None when the length was known already).

    409 on a wrong offset, 400 on a contradictory length, 413 when the declared length
    or a body of ``body_length`` bytes cannot fit, or when a checksummed body is larger
    than ``checksum_body_limit``.
    """
    if append.offset != upload.offset:
        raise TusError(
            "offset_mismatch",
            "Upload-Offset does not match the upload's",
            {"Upload-Offset": str(upload.offset)},
        )
    declared = append.declared_length
    if declared is not None and upload.length is not None:
        if declared != upload.length:
            raise TusError("length_already_set", "Upload-Length cannot change")
        declared = None
    if declared is not None:
        if declared < upload.offset:
            raise TusError("invalid_length", "Upload-Length is smaller than Upload-Offset")
        if declared > deferred_limit(upload, max_size):
            raise TusError("upload_too_large", f"at most {deferred_limit(upload, max_size)}")
    length = upload.length if declared is None else declared
    limit = length if length is not None else deferred_limit(upload, max_size)
    if body_length is not None and upload.offset + body_length > limit:
        raise TusError("exceeds_upload_length", "the body goes beyond Upload-Length")
    if append.checksum is not None and body_length is not None:
        check_checksum_body(upload, body_length, max_checksum_body)
    return declared


def check_checksum_body(upload: Upload, received: int, max_checksum_body: int = 0) -> None:
    """413 once a checksummed body is (or would be) larger than its limit."""
    limit = checksum_body_limit(upload, max_checksum_body)
    if received > limit:
        raise TusError(
            "checksum_body_too_large",
            f"a PATCH with Upload-Checksum carries at most {limit} bytes; send smaller chunks",
        )
