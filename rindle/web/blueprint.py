"""The tus 1.0.0 endpoints: OPTIONS, POST (creation), HEAD, PATCH, DELETE (termination)
and GET (download); answers carry Upload-Expires (expiration).

Each view parses the request (``rindle.protocol``), calls the core, and builds the
answer. Errors are answered in one place: a ``RindleError`` by its code (``STATUS``),
Redis and S3 failures as 503.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from types import ModuleType

import redis
from botocore.exceptions import ClientError
from flask import Blueprint, Response, jsonify, redirect, request, stream_with_context, url_for
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.http import http_date

from rindle import draft, hooks, logs, protocol
from rindle.errors import BodyEnded, Fenced, RindleError, TailMissing, TusError
from rindle.hooks import Refuse
from rindle.lease import RELEASE_IF_IDLE, RELEASE_NOW
from rindle.storage import S3_ERRORS, error_code, tail_path, try_remove_idle_tail
from rindle.upload import ENDED, WRITABLE, State, Upload
from rindle.web import observe
from rindle.web.context import current_rindle
from rindle.web.download import Download
from rindle.writer import WriteResult

log = logging.getLogger("rindle")

blueprint = Blueprint("rindle", __name__)

# What a body read raises when the client goes away or sends a broken body: werkzeug's
# ClientDisconnected (an HTTPException), gunicorn's NoMoreData and friends (IOError or
# ValueError subclasses), socket timeouts (OSError).
READ_ERRORS = (OSError, ValueError, HTTPException)
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
        response = draft_dialect().problem_response(status, code, message, headers)
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


def close_if_unread(response: Response, result: WriteResult) -> Response:
    """A body the writer stopped reading (client gone, timeout, release, graceful stop)
    may still be arriving: the connection must end with this answer, or the server would
    read the rest of the body as the next request (and answer it with a 400). gunicorn
    decides keep-alive by itself and drops a Connection header from the app, so the
    socket is shut down once the answer has been sent."""
    if result.ended_early:
        response.headers["Connection"] = "close"  # for servers that honour it
        response.call_on_close(connection_shutdown(socket.SHUT_RDWR))
    return response


def connection_shutdown(how: int) -> Callable[[], None]:
    """A function that shuts this request's connection down (``how``: SHUT_RD ends a
    blocked body read, SHUT_RDWR the connection), where the server lends us its socket
    (gunicorn); elsewhere it does nothing."""
    sock = request.environ.get("gunicorn.socket")

    def shut_down() -> None:
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(how)

    return shut_down


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


def refuse_if_stopping() -> None:
    """503 (with Retry-After) once this process is shutting down."""
    if current_rindle().stopping:
        raise TusError("shutting_down", "this server is shutting down; retry", {"Retry-After": "5"})


@blueprint.before_request
def _speak_the_draft() -> Response | None:
    """A request with Upload-Draft-Interop-Version is answered in the IETF draft's dialect
    (``rindle.web.draft``), on the same uploads; tus requests go on to the views below."""
    if not draft.is_draft(request.headers):
        return None
    return draft_dialect().dispatch(request.view_args or {})


def draft_dialect() -> ModuleType:
    """``rindle.web.draft``, imported when first needed: it builds on this module."""
    from rindle.web import draft as dialect

    return dialect


def load(upload_id: str) -> Upload:
    upload = current_rindle().uploads.get(upload_id)
    if upload is None:
        raise TusError("not_found", "no such upload")
    if upload.state in ENDED:
        raise TusError("gone", f"the upload is {upload.state}")
    if upload.state in WRITABLE and upload.expires_at <= time.time():
        raise TusError("gone", "the upload expired")  # the sweep will mark it
    return upload


def authorize(action: str, upload: Upload | None) -> None:
    """The app's authorize hook, if any: it raises Refuse to deny."""
    check = current_rindle().hooks.authorize
    if check is not None:
        check(request, action, upload)


def check_length(upload: Upload, length: int | None) -> None:
    """The app's pre_length hook, when a request declares the length of an upload that
    had none (``length``; None: nothing declared): it raises Refuse to deny, before a
    byte of the body is read."""
    check = current_rindle().hooks.pre_length
    if check is not None and length is not None and upload.length is None:
        check(request, upload, length)


def take_over(upload: Upload, kind: str) -> Upload:
    """If a request holds the upload, ask it to save what it has and let go; 423 if it
    does not in time. Typically the client reconnected while its old PATCH still hangs
    on a dead connection: the answer must report what that request received. A PATCH
    asks any writer (RELEASE_NOW: one writer at a time); a HEAD only a writer that
    receives nothing (RELEASE_IF_IDLE), so that polling HEADs never slow a live upload.
    Returns the upload as the holder left it, re-read only if it had to wait."""
    lease = current_rindle().lease
    if not lease.held(upload.id):
        return upload
    lease.wait_until_free(upload.id, kind)
    return load(upload.id)


def settled(upload_id: str, kind: str) -> Upload:
    """The upload as a HEAD reports it: authorized ("head"), a request still writing it
    asked to let go (``kind``, as for ``take_over``), its completion ensured if it is
    assembling (in case the last append lost it)."""
    upload = load(upload_id)
    authorize("head", upload)
    if upload.state in WRITABLE:
        upload = take_over(upload, kind)
    if upload.offset:  # an offset is reported only once the replicas hold it
        current_rindle().uploads.confirm_replicated(upload_id)
    if upload.state == State.ASSEMBLING:
        current_rindle().jobs.ensure_completion(upload_id)
    return upload


@contextlib.contextmanager
def gone_if_ended(upload_id: str) -> Iterator[None]:
    """A write that lost its race (Fenced) is 410 when a DELETE or the expiry sweep
    ended the upload meanwhile, else the conflict itself."""
    try:
        yield
    except Fenced:
        load(upload_id)
        raise


def read_body(n: int) -> bytes:
    """The request body, as the writer reads it: client trouble is BodyEnded."""
    try:
        return request.stream.read(n)
    except READ_ERRORS as exc:
        raise BodyEnded(str(exc) or type(exc).__name__) from exc


def write_body(upload: Upload, append: protocol.Append) -> WriteResult:
    """Stream the request body into the upload."""
    interrupt = connection_shutdown(socket.SHUT_RD)  # ends a read blocked on the client
    # observe.BodyWrite: metrics and one summary line
    with observe.BodyWrite(upload) as written, gone_if_ended(upload.id):
        written.result = current_rindle().writer.write(upload.id, append, read_body, interrupt)
        return written.result


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


def new_upload(
    length: int | None,
    metadata: dict[str, bytes | None],
    part_size: int,
    concat: str = "",
    partials: list[Upload] | None = None,
) -> Upload:
    """Record a new upload: its id, the object key (the app's ``pre_create`` hook, kept
    under the prefix), the empty object of a zero-length upload; ``upload_created``."""
    rindle = current_rindle()
    settings = rindle.settings
    partials = partials or []
    upload_id = secrets.token_urlsafe(24)  # 192 random bits, URL-safe
    logs.bind_upload(upload_id)
    key = settings.s3_prefix + upload_id
    if rindle.hooks.pre_create is not None:
        chosen = hooks.choose_key(
            rindle.hooks.pre_create, request, length, hooks.metadata_dict(metadata), upload_id
        )
        key = chosen or key
        if not key.startswith(settings.s3_prefix) or key == settings.s3_prefix:
            # The sweeps, the clean-up and other apps' data: all rely on the prefix.
            log.error("pre_create chose %r, outside RINDLE_S3_PREFIX %r", key, settings.s3_prefix)
            raise TusError("invalid_key", "the upload's object key is outside rindle's prefix")
        if rindle.shared_tails.owns(key):
            log.error("pre_create chose %r, inside the shared tails' key space", key)
            raise TusError("invalid_key", "the upload's object key is reserved by rindle")
    object_etag = ""
    if length == 0 and not partials:
        # Nothing to receive: the (empty) object exists before the client hears of it.
        object_etag = rindle.s3.put_object(key, b"", 0, protocol.object_headers(metadata))
    state = State.ASSEMBLING if partials else State.COMPLETED if length == 0 else State.CREATED
    upload = rindle.uploads.create(
        upload_id,
        length,
        part_size,
        key,
        protocol.format_metadata(metadata),
        state=state,
        concat=concat,
        partials=tuple(p.id for p in partials),
        object_etag=object_etag,
    )
    rindle.notify(hooks.upload_created, upload)
    return upload


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


def end_upload(upload: Upload) -> None:
    """Terminate ``upload`` (410 ``gone`` if it has ended already)."""
    rindle, upload_id = current_rindle(), upload.id
    if not rindle.uploads.set_state(
        upload_id, State.TERMINATED, (*WRITABLE, State.ASSEMBLING, State.COMPLETED)
    ):
        raise TusError("gone", "the upload has already ended")
    rindle.notify(hooks.upload_terminated, replace(upload, state=State.TERMINATED))
    # A running writer, on any node, stops reading now (its renewal would see the end
    # too, but only within a quarter of a lease).
    rindle.lease.request_release(upload_id)
    # Not under a running writer's feet (it holds the tail's lock): the reaper deletes
    # the tail of the ended upload.
    try_remove_idle_tail(tail_path(upload_id, rindle.settings.tmp_dir))
    try:
        rindle.jobs.clean_up(upload_id)
    except redis.RedisError:  # terminated already; the orphan sweep aborts it later
        log.exception("upload %s: could not enqueue its clean-up", upload_id)


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
