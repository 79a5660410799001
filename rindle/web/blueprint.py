"""The tus 1.0.0 endpoints: OPTIONS, POST (creation), HEAD, PATCH, DELETE (termination)
and GET (download); answers carry Upload-Expires (expiration).

Each view parses the request (``rindle.protocol``), calls the core, and builds the
answer. Errors are answered in one place: a ``RindleError`` by its code (``STATUS``),
Redis and S3 failures as 503.
"""

from __future__ import annotations

import errno
import logging
import socket

import redis
from botocore.exceptions import ClientError
from flask import Blueprint, Response, jsonify, redirect, request, stream_with_context, url_for
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.http import http_date

from rindle import draft, protocol
from rindle.errors import Fenced, RindleError, TailMissing, TusError
from rindle.hooks import Refuse
from rindle.lease import RELEASE_IF_IDLE, RELEASE_NOW
from rindle.storage import S3_ERRORS, error_code, tail_path
from rindle.upload import ENDED, WRITABLE, State, Upload
from rindle.web import draft as dialect
from rindle.web.context import current_rindle
from rindle.web.download import Download
from rindle.web.uploads import (
    authorize,
    check_length,
    close_if_unread,
    connection_shutdown,
    end_upload,
    load,
    new_upload,
    refuse_if_stopping,
    settled,
    take_over,
    write_body,
)

log = logging.getLogger("rindle")

blueprint = Blueprint("rindle", __name__)

PRESIGNED_SECONDS = 300


# -- answers -------------------------------------------------------------------------


def tus_headers(response: Response) -> Response:
    response.headers["Tus-Resumable"] = protocol.TUS_VERSION
    if not response.is_json:
        del response.headers["Content-Type"]  # bodiless answers: no text/html default
    return response


def error_response(status: int, code: str, message: str, headers: dict[str, str]) -> Response:
    in_draft = draft.is_draft(request.headers)
    if in_draft:  # the IETF draft's dialect: a problem document
        response = dialect.problem_response(status, code, message, headers)
    else:
        response = jsonify(error=code, message=message)
        response.status_code = status
        response.headers.update(headers)
    if request.content_length or protocol.is_chunked(request.headers):
        # The body may be unread: ask the server to close rather than drain it (gunicorn
        # decides by itself: it drains a capped amount, then closes).
        response.headers["Connection"] = "close"
    return response if in_draft else tus_headers(response)


@blueprint.errorhandler(RindleError)
def _rindle_error(err: RindleError) -> Response:
    if isinstance(err, Fenced):
        log.info("conflict: %s", err)  # the detail stays here; the client needs none
    if isinstance(err, TailMissing):
        rindle = current_rindle()
        log.error(
            "tus_tail_missing: upload=%s node=%s tail_node=%s expected=%d found=%s path=%s",
            err.upload_id,
            rindle.settings.node_id,
            err.node or "?",
            err.expected,
            "none" if err.found is None else err.found,
            tail_path(err.upload_id, rindle.settings.tmp_dir),
        )
    return error_response(err.status, err.code, err.message, err.headers)


@blueprint.errorhandler(OSError)
def _disk_failed(err: OSError) -> Response:
    """The tail's disk failed under a request (full, read-only, gone): a JSON answer, and
    the writer has already cut the tail back to what Redis acknowledges."""
    log.error("tail storage failed: %s", err)
    if err.errno == errno.ENOSPC:
        return _rindle_error(
            TusError("insufficient_storage", "this node is short of disk space; retry")
        )
    return _rindle_error(TusError("storage_error", "this node could not store the bytes"))


@blueprint.errorhandler(Refuse)
def _refused(err: Refuse) -> Response:
    return error_response(err.status, err.code, err.message, {})


@blueprint.errorhandler(redis.RedisError)
def _redis_down(err: redis.RedisError) -> Response:
    log.error("redis unavailable: %s", err)
    return error_response(
        503, "redis_unavailable", "bookkeeping store unavailable", {"Retry-After": "5"}
    )


def _s3_down(err: Exception) -> Response:
    log.error("S3 request failed: %s", err)
    return error_response(503, "storage_unavailable", "object storage failed", {"Retry-After": "5"})


for _s3_error in S3_ERRORS:
    blueprint.register_error_handler(_s3_error, _s3_down)


def method_not_allowed(err: MethodNotAllowed) -> Response:
    """405 as JSON with Allow, like every other tus error. Routing errors never reach a
    blueprint's handlers: ``init_app`` registers this on the app, for rindle's paths."""
    allowed = list(err.valid_methods or ())
    if "PUT" in allowed and not draft.is_draft(request.headers):
        # The collection's PUT and PATCH create uploads in the IETF draft's dialect only.
        allowed = [method for method in allowed if method not in ("PUT", "PATCH")]
    return _rindle_error(
        TusError(
            "method_not_allowed",
            f"{request.method} is not served here",
            {"Allow": ", ".join(allowed)},
        )
    )


def with_expiry(response: Response, upload: Upload) -> Response:
    """Upload-Expires, while the upload still takes bytes."""
    if upload.state in WRITABLE:
        response.headers["Upload-Expires"] = http_date(upload.expires_at)
    return response


def patched(upload: Upload) -> Response:
    response = Response(status=204)
    response.headers["Upload-Offset"] = str(upload.offset)
    return with_expiry(tus_headers(response), upload)


# -- shared steps --------------------------------------------------------------------


@blueprint.before_request
def _check_version() -> None:
    if request.method not in ("OPTIONS", "GET") and not draft.is_draft(request.headers):
        protocol.check_version(request.headers.get("Tus-Resumable"))  # GET: a plain download


@blueprint.before_request
def _refuse_while_stopping() -> None:
    """A process that is shutting down (SIGTERM, ``rindle.web.graceful``) starts no new
    upload: the client retries, on another node or on this one once it has restarted."""
    if request.method in ("POST", "PATCH"):
        refuse_if_stopping()


@blueprint.before_request
def _speak_the_draft() -> Response | None:
    """A request with Upload-Draft-Interop-Version is answered in the IETF draft's dialect
    (``rindle.web.draft``), on the same uploads; tus requests go on to the views below."""
    if not draft.is_draft(request.headers):
        return None
    return dialect.dispatch(request.view_args or {})


# -- the endpoints -------------------------------------------------------------------


@blueprint.route("/", methods=["OPTIONS"])
@blueprint.route("/<upload_id>", methods=["OPTIONS"])
def options(upload_id: str | None = None) -> Response:
    response = Response(status=204)
    response.headers["Tus-Version"] = ",".join(protocol.SUPPORTED_VERSIONS)
    response.headers["Tus-Extension"] = ",".join(protocol.EXTENSIONS)
    response.headers["Tus-Max-Size"] = str(current_rindle().settings.max_size)
    response.headers["Tus-Checksum-Algorithm"] = ",".join(protocol.CHECKSUM_ALGORITHMS)
    return tus_headers(response)


@blueprint.route("/", methods=["POST"])
def create() -> Response:
    rindle = current_rindle()
    settings = rindle.settings
    concat, urls = protocol.parse_concat(request.headers.get("Upload-Concat"))
    authorize("create", None)  # before any partial is looked up
    partials = final_partials(urls) if concat == "final" else []
    length = (
        sum(p.length or 0 for p in partials)
        if partials
        else protocol.creation_length(request.headers)
    )
    if length is not None and length > settings.max_size:
        raise TusError("upload_too_large", f"Upload-Length exceeds {settings.max_size}")
    metadata = protocol.parse_metadata(
        request.headers.get("Upload-Metadata"), settings.max_metadata
    )
    part_size = protocol.part_size_for(length or 0, settings.part_size)
    with_body = protocol.has_upload_body(request.headers, request.content_length) and not partials
    checksum = protocol.parse_checksum(request.headers.get("Upload-Checksum"))
    if with_body and length is not None and (request.content_length or 0) > length:
        raise TusError("exceeds_upload_length", "the body goes beyond Upload-Length")

    upload = new_upload(length, metadata, part_size, concat, partials)
    upload_id = upload.id
    if partials:
        rindle.jobs.complete(upload_id)  # assembles the final object from the partials
    response = Response(status=201)
    response.headers["Location"] = url_for(".upload", upload_id=upload_id, _external=True)
    if with_body and length != 0:
        # creation-with-upload. The upload exists now: whatever happens to the body, the
        # client gets its Location and the offset that was kept, and resumes from there.
        overflow = False
        try:
            result = write_body(upload, protocol.Append(0, checksum, None, request.content_length))
            upload, overflow = result.upload, result.overflow
            close_if_unread(response, result)
        except RindleError as err:
            log.warning("upload %s: first bytes with the POST not kept: %s", upload_id, err)
            upload = load(upload_id)
        response.headers["Upload-Offset"] = str(upload.offset)
        if overflow:  # a chunked body longer than Upload-Length: what fits was kept
            raise TusError(
                "exceeds_upload_length",
                "bytes beyond Upload-Length were refused; the rest was kept",
                {"Location": response.headers["Location"], "Upload-Offset": str(upload.offset)},
            )
    return with_expiry(tus_headers(response), upload)


@blueprint.route("/", methods=["PUT", "PATCH"])
def create_otherwise() -> Response:
    """The IETF draft creates uploads by PUT and PATCH too (``_speak_the_draft`` answers
    those); tus 1.0.0 does not."""
    raise MethodNotAllowed(valid_methods=["OPTIONS", "POST"])


def final_partials(urls: list[str]) -> list[Upload]:
    """The partial uploads a final upload concatenates: each must be a finished partial,
    named once, that the app lets this request use (``authorize`` with action "concat"):
    else a client could assemble someone else's partial into an upload of its own."""
    if "Upload-Length" in request.headers:
        raise TusError("invalid_concat", "a final upload takes no Upload-Length")
    most = current_rindle().settings.max_partials
    if len(urls) > most:
        raise TusError("invalid_concat", f"a final upload concatenates at most {most} partials")
    ids = [url.rstrip("/").rsplit("/", 1)[-1] for url in urls]
    if len(set(ids)) != len(ids):
        raise TusError("invalid_concat", "a partial upload is named more than once")
    partials = []
    for url, upload_id in zip(urls, ids, strict=True):
        upload = current_rindle().uploads.get(upload_id)
        if upload is None:
            raise TusError("invalid_concat", f"{url} is not a partial upload")
        authorize("concat", upload)
        if upload.state in ENDED or upload.concat != "partial":
            raise TusError("invalid_concat", f"{url} is not a partial upload")
        if upload.length is None or upload.offset != upload.length:
            raise TusError("partial_not_finished", f"{url} is not finished")
        partials.append(upload)
    return partials


@blueprint.route("/<upload_id>", methods=["HEAD"], endpoint="upload")
def head(upload_id: str) -> Response:
    upload = settled(upload_id, RELEASE_IF_IDLE)
    response = Response(status=200)
    if not upload.is_final or upload.state == State.COMPLETED:
        response.headers["Upload-Offset"] = str(upload.offset)  # a final one: once assembled
    if upload.concat == "partial":
        response.headers["Upload-Concat"] = "partial"
    elif upload.is_final:
        urls = " ".join(url_for(".upload", upload_id=p, _external=True) for p in upload.partials)
        response.headers["Upload-Concat"] = f"final;{urls}"
    if upload.length is None:
        response.headers["Upload-Defer-Length"] = "1"
    else:
        response.headers["Upload-Length"] = str(upload.length)
    if upload.metadata:
        response.headers["Upload-Metadata"] = upload.metadata
    response.headers["Cache-Control"] = "no-store"
    return with_expiry(tus_headers(response), upload)


@blueprint.route("/<upload_id>", methods=["PATCH"])
def patch(upload_id: str) -> Response:
    # Everything that can be refused is refused before the body is read.
    append = protocol.parse_append(request.headers)
    upload = load(upload_id)
    authorize("patch", upload)
    upload = take_over(upload, RELEASE_NOW)
    if upload.is_final:
        raise TusError("final_upload", "a final upload is assembled from its partials")
    settings = current_rindle().settings
    declared = protocol.check_append(
        upload, append, settings.max_size, request.content_length, settings.max_checksum_body
    )
    check_length(upload, declared)
    if upload.state not in WRITABLE and upload.offset == upload.length:
        if upload.state == State.ASSEMBLING:
            current_rindle().jobs.ensure_completion(upload_id)
        return patched(upload)  # nothing left to take (e.g. a retried last PATCH)

    result = write_body(upload, append)
    if result.overflow:
        raise TusError(
            "exceeds_upload_length",
            "bytes beyond Upload-Length were refused; the rest was kept",
            {"Upload-Offset": str(result.upload.offset)},
        )
    return close_if_unread(patched(result.upload), result)


@blueprint.route("/<upload_id>", methods=["DELETE"])
def terminate(upload_id: str) -> Response:
    """Termination: a tombstone (410 from now on), a running writer is asked to stop
    (it commits nothing more: 410), this node's idle tail goes, and an RQ job aborts the
    multipart upload and deletes the shared tails."""
    upload = load(upload_id)
    authorize("delete", upload)
    end_upload(upload)
    return tus_headers(Response(status=204))


@blueprint.route("/<upload_id>", methods=["GET"])
def download(upload_id: str) -> Response:
    """A completed upload's object: a redirect to a short-lived presigned URL, or (with
    RINDLE_DOWNLOAD=stream) the bytes themselves, with Range support.

    Either way the file cannot run as a page of the serving origin: it is an attachment
    unless its type is safe to show (``protocol.download_headers``); streamed, it also
    gets nosniff and a sandbox CSP, and a client slower than RINDLE_MIN_RATE is cut off."""
    rindle = current_rindle()
    if rindle.settings.download == "off":
        raise TusError("download_disabled", "downloads are switched off")
    upload = load(upload_id)
    authorize("get", upload)
    if upload.state != State.COMPLETED:
        raise TusError(
            "not_ready", f"the upload is {upload.state}, not completed yet", {"Retry-After": "2"}
        )
    metadata = protocol.parse_metadata(upload.metadata)
    if rindle.settings.download == "redirect":
        served = protocol.download_headers(metadata)
        overrides = {
            "ResponseContentType": served["ContentType"],
            "ResponseContentDisposition": served["ContentDisposition"],
        }
        response = redirect(rindle.s3.presigned_get(upload.key, PRESIGNED_SECONDS, overrides), 302)
        response.headers["Cache-Control"] = "no-store"
        return response
    try:
        obj = rindle.s3.get_object(upload.key, request.headers.get("Range"))
    except ClientError as exc:
        if error_code(exc) == "InvalidRange":
            raise TusError("invalid_range", "the range is outside the object") from None
        raise
    served = protocol.download_headers(metadata, obj.get("ContentType") or "")
    # A client reading slower than RINDLE_MIN_RATE is cut off (rindle.web.download).
    streamed = Download(
        upload.id,
        obj["Body"],
        connection_shutdown(socket.SHUT_RDWR),
        rindle.settings.min_rate,
        rindle.settings.min_rate_window,
    )
    response = Response(
        stream_with_context(streamed.chunks()),
        status=206 if "ContentRange" in obj else 200,
        content_type=served["ContentType"],
        direct_passthrough=True,
    )
    response.headers["Content-Length"] = str(obj["ContentLength"])
    response.headers["Accept-Ranges"] = "bytes"
    response.headers["Content-Disposition"] = served["ContentDisposition"]
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "sandbox"
    for header, field in (("Content-Range", "ContentRange"), ("ETag", "ETag")):
        if obj.get(field):
            response.headers[header] = obj[field]
    return response
