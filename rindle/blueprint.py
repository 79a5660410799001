"""The tus 1.0.0 endpoints: OPTIONS, POST (creation), HEAD, PATCH and DELETE
(termination); answers carry Upload-Expires (expiration)."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from dataclasses import replace

import redis
from botocore.exceptions import BotoCoreError, ClientError
from flask import (
    Blueprint,
    Response,
    current_app,
    jsonify,
    redirect,
    request,
    stream_with_context,
    url_for,
)
from werkzeug.http import http_date

from rindle import hooks, protocol
from rindle.errors import ChecksumMismatch, Fenced, LeaseHeld, TailMissing, TusError
from rindle.extension import Services
from rindle.hooks import Refuse
from rindle.storage import tail_path
from rindle.storage.s3 import error_code
from rindle.store import (
    ASSEMBLING,
    COMPLETED,
    CREATED,
    ENDED,
    RECEIVING,
    RELEASE_IF_IDLE,
    RELEASE_NOW,
    TERMINATED,
    WRITABLE,
    Upload,
)
from rindle.writer import WriteResult

log = logging.getLogger("rindle")

blueprint = Blueprint("rindle", __name__)


def services() -> Services:
    return current_app.extensions["rindle"]


def tus_headers(response: Response) -> Response:
    response.headers["Tus-Resumable"] = protocol.TUS_VERSION
    if not response.is_json:
        del response.headers["Content-Type"]  # bodiless answers: no text/html default
    return response


def error_response(err: TusError) -> Response:
    response = jsonify(error=err.code, message=err.message)
    response.status_code = err.status
    response.headers.update(err.headers)
    if request.content_length or "chunked" in request.headers.get("Transfer-Encoding", ""):
        # The body may be unread: ask the server to close rather than drain it (gunicorn
        # decides by itself: it drains a capped amount, then closes).
        response.headers["Connection"] = "close"
    return tus_headers(response)


@blueprint.errorhandler(TusError)
def _tus_error(err: TusError) -> Response:
    return error_response(err)


@blueprint.errorhandler(Refuse)
def _refused(err: Refuse) -> Response:
    return error_response(TusError(err.status, err.code, err.message))


@blueprint.errorhandler(redis.RedisError)
def _redis_down(err: redis.RedisError) -> Response:
    log.error("redis unavailable: %s", err)
    return error_response(
        TusError(503, "redis_unavailable", "bookkeeping store unavailable", {"Retry-After": "5"})
    )


@blueprint.errorhandler(BotoCoreError)
@blueprint.errorhandler(ClientError)
def _s3_down(err: Exception) -> Response:
    log.error("S3 request failed: %s", err)
    return error_response(
        TusError(503, "storage_unavailable", "object storage failed", {"Retry-After": "5"})
    )


@blueprint.before_request
def _check_version() -> None:
    services().start_tail_reaper()  # once per process, after gunicorn forked it
    if request.method in ("OPTIONS", "GET"):  # GET is a plain download, not tus
        return
    version = request.headers.get("Tus-Resumable")
    if version not in protocol.SUPPORTED_VERSIONS:
        raise TusError(
            412,
            "unsupported_version",
            "Tus-Resumable 1.0.0 is required",
            {"Tus-Version": ",".join(protocol.SUPPORTED_VERSIONS)},
        )


@blueprint.route("/", methods=["OPTIONS"])
@blueprint.route("/<upload_id>", methods=["OPTIONS"])
def options(upload_id: str | None = None) -> Response:
    response = Response(status=204)
    response.headers["Tus-Version"] = ",".join(protocol.SUPPORTED_VERSIONS)
    response.headers["Tus-Extension"] = ",".join(protocol.EXTENSIONS)
    response.headers["Tus-Max-Size"] = str(services().settings.max_size)
    response.headers["Tus-Checksum-Algorithm"] = ",".join(protocol.CHECKSUM_ALGORITHMS)
    return tus_headers(response)


@blueprint.route("/", methods=["POST"])
def create() -> Response:
    svc = services()
    settings = svc.settings
    concat, urls = protocol.parse_concat(request.headers.get("Upload-Concat"))
    partials = final_partials(urls) if concat == "final" else []
    length = sum(p.length or 0 for p in partials) if partials else creation_length()
    if length is not None and length > settings.max_size:
        raise TusError(413, "upload_too_large", f"Upload-Length exceeds {settings.max_size}")
    metadata = protocol.parse_metadata(
        request.headers.get("Upload-Metadata"), settings.max_metadata
    )
    part_size = protocol.part_size_for(length or 0, settings.part_size)
    with_body = has_upload_body() and not partials
    checksum = protocol.parse_checksum(request.headers.get("Upload-Checksum"))
    if with_body and length is not None and (request.content_length or 0) > length:
        raise TusError(413, "exceeds_upload_length", "the body goes beyond Upload-Length")

    authorize("create", None)
    upload_id = secrets.token_urlsafe(24)  # 192 random bits, URL-safe
    key = settings.s3_prefix + upload_id
    if svc.hooks.pre_create is not None:
        key = svc.hooks.pre_create(request, length, hooks.metadata_dict(metadata)) or key
    if length == 0 and not partials:
        # Nothing to receive: the (empty) object exists before the client hears of it.
        svc.storage.put_object(key, b"", 0, protocol.object_headers(metadata))
    upload = svc.store.create(
        upload_id,
        length,
        part_size,
        key,
        protocol.format_metadata(metadata),
        state=ASSEMBLING if partials else COMPLETED if length == 0 else CREATED,
        concat=concat,
        partials=tuple(p.id for p in partials),
    )
    svc.notify(hooks.upload_created, upload)
    if partials:
        svc.jobs.complete(upload_id)  # assembles the final object from the partials
    response = Response(status=201)
    response.headers["Location"] = url_for(".upload", upload_id=upload_id, _external=True)
    if with_body and length != 0:
        # creation-with-upload. The upload exists now: whatever happens to the body, the
        # client gets its Location and the offset that was kept, and resumes from there.
        try:
            upload = write_body(upload, 0, checksum, None).upload
        except TusError as err:
            log.warning("upload %s: first bytes with the POST not kept: %s", upload_id, err)
            upload = load(upload_id)
        response.headers["Upload-Offset"] = str(upload.offset)
    return with_expiry(tus_headers(response), upload)


def final_partials(urls: list[str]) -> list[Upload]:
    """The partial uploads a final upload concatenates: each must be a finished partial."""
    if "Upload-Length" in request.headers:
        raise TusError(400, "invalid_concat", "a final upload takes no Upload-Length")
    partials = []
    for url in urls:
        upload = services().store.get(url.rstrip("/").rsplit("/", 1)[-1])
        if upload is None or upload.state in ENDED or upload.concat != "partial":
            raise TusError(400, "invalid_concat", f"{url} is not a partial upload")
        if upload.length is None or upload.offset != upload.length:
            raise TusError(400, "partial_not_finished", f"{url} is not finished")
        partials.append(upload)
    return partials


def creation_length() -> int | None:
    """Upload-Length, or None with Upload-Defer-Length: 1 (exactly one of them)."""
    defer = request.headers.get("Upload-Defer-Length")
    raw = request.headers.get("Upload-Length")
    if defer is not None and raw is not None:
        raise TusError(400, "invalid_length", "send Upload-Length or Upload-Defer-Length, not both")
    if defer is not None:
        if defer.strip() != "1":
            raise TusError(400, "invalid_header", "Upload-Defer-Length must be 1")
        return None
    return protocol.parse_non_negative(raw, "Upload-Length")


def has_upload_body() -> bool:
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "")
    return content_type == protocol.PATCH_CONTENT_TYPE and (bool(request.content_length) or chunked)


def authorize(action: str, upload: Upload | None) -> None:
    """The app's authorize hook, if any: it raises Refuse to deny."""
    check = services().hooks.authorize
    if check is not None:
        check(request, action, upload)


def with_expiry(response: Response, upload: Upload) -> Response:
    """Upload-Expires, while the upload still takes bytes."""
    if upload.state in WRITABLE:
        response.headers["Upload-Expires"] = http_date(upload.expires_at)
    return response


def load(upload_id: str) -> Upload:
    upload = services().store.get(upload_id)
    if upload is None:
        raise TusError(404, "not_found", "no such upload")
    if upload.state in ENDED:
        raise TusError(410, "gone", f"the upload is {upload.state}")
    if upload.state in WRITABLE and upload.expires_at <= time.time():
        raise TusError(410, "gone", "the upload expired")  # the sweep will mark it
    return upload


@blueprint.route("/<upload_id>", methods=["HEAD"], endpoint="upload")
def head(upload_id: str) -> Response:
    upload = load(upload_id)
    authorize("head", upload)
    if upload.state in WRITABLE:
        upload = take_over(upload, RELEASE_IF_IDLE)
    if upload.state == ASSEMBLING:
        services().jobs.ensure_completion(upload_id)  # in case the last PATCH lost it
    response = Response(status=200)
    if not upload.is_final or upload.state == COMPLETED:
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


def take_over(upload: Upload, kind: str) -> Upload:
    """If a request holds the upload, ask it to save what it has and let go; 423 if it
    does not in time. Typically the client reconnected while its old PATCH still hangs
    on a dead connection: the answer must report what that request received. A PATCH
    asks any writer (RELEASE_NOW: one writer at a time); a HEAD only a writer that
    receives nothing (RELEASE_IF_IDLE), so that polling HEADs never slow a live upload.
    Returns the upload as the holder left it."""
    svc, upload_id = services(), upload.id
    if not svc.store.lease_held(upload_id):
        return upload

    def free() -> None:
        if svc.store.lease_held(upload_id):
            raise LeaseHeld(upload_id)

    try:
        svc.writer.wait_for_release(upload_id, free, kind)
    except LeaseHeld:
        raise TusError(
            423, "upload_locked", "another request is writing this upload", {"Retry-After": "1"}
        ) from None
    return load(upload_id)


@blueprint.route("/<upload_id>", methods=["PATCH"])
def patch(upload_id: str) -> Response:
    # Everything that can be refused is refused before the body is read.
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type != protocol.PATCH_CONTENT_TYPE:
        raise TusError(
            415, "unsupported_media_type", f"Content-Type must be {protocol.PATCH_CONTENT_TYPE}"
        )
    offset = protocol.parse_non_negative(request.headers.get("Upload-Offset"), "Upload-Offset")
    checksum = protocol.parse_checksum(request.headers.get("Upload-Checksum"))
    declared = request.headers.get("Upload-Length")
    declared_length = (
        None if declared is None else protocol.parse_non_negative(declared, "Upload-Length")
    )
    upload = load(upload_id)
    authorize("patch", upload)
    upload = take_over(upload, RELEASE_NOW)
    if upload.is_final:
        raise TusError(403, "final_upload", "a final upload is assembled from its partials")
    if offset != upload.offset:
        raise TusError(
            409,
            "offset_mismatch",
            "Upload-Offset does not match the upload's",
            {"Upload-Offset": str(upload.offset)},
        )
    if declared_length is not None and upload.length not in (None, declared_length):
        raise TusError(400, "length_already_set", "Upload-Length cannot change")
    if declared_length is not None and declared_length < offset:
        raise TusError(400, "invalid_length", "Upload-Length is smaller than Upload-Offset")
    length = upload.length if declared_length is None else declared_length
    limit = length if length is not None else services().writer.deferred_limit(upload)
    if request.content_length is not None and offset + request.content_length > limit:
        raise TusError(413, "exceeds_upload_length", "the body goes beyond Upload-Length")
    if upload.state not in WRITABLE and upload.offset == upload.length:
        if upload.state == ASSEMBLING:
            services().jobs.ensure_completion(upload_id)
        return patched(upload)  # nothing left to take (e.g. a retried last PATCH)

    result = write_body(upload, offset, checksum, declared_length)
    if result.overflow:
        raise TusError(
            413,
            "exceeds_upload_length",
            "bytes beyond Upload-Length were refused; the rest was kept",
            {"Upload-Offset": str(result.upload.offset)},
        )
    return patched(result.upload)


def write_body(
    upload: Upload, offset: int, checksum: protocol.Checksum | None, declared_length: int | None
) -> WriteResult:
    """Stream the request body into the upload; the writer's refusals as TusErrors."""
    svc = services()
    try:
        sock = request.environ.get("gunicorn.socket")  # to unblock a read of a dead client
        return svc.writer.write(upload.id, offset, request.stream, sock, checksum, declared_length)
    except LeaseHeld:
        raise TusError(
            423, "upload_locked", "another request is writing this upload", {"Retry-After": "1"}
        ) from None
    except ChecksumMismatch:
        raise TusError(
            460, "checksum_mismatch", "the body does not match Upload-Checksum"
        ) from None
    except Fenced as exc:
        load(upload.id)  # 410 when a DELETE or the expiry sweep ended it meanwhile
        raise TusError(409, "conflict", str(exc)) from None
    except TailMissing as exc:
        log.error(
            "tus_tail_missing: upload=%s node=%s tail_node=%s expected=%d found=%s path=%s",
            upload.id,
            svc.settings.node_id,
            upload.node or "?",
            exc.expected,
            "none" if exc.found is None else exc.found,
            tail_path(upload.id, svc.settings.tmp_dir),
        )
        raise TusError(
            500,
            "tus_tail_missing",
            "this node does not hold the buffered bytes of this upload; "
            "resumes must reach the node that received them",
        ) from None


def patched(upload: Upload) -> Response:
    response = Response(status=204)
    response.headers["Upload-Offset"] = str(upload.offset)
    return with_expiry(tus_headers(response), upload)


@blueprint.route("/<upload_id>", methods=["DELETE"])
def terminate(upload_id: str) -> Response:
    """Termination: a tombstone (410 from now on), a running writer stops at its next
    check-in, this node's tail goes, and an RQ job aborts the multipart upload."""
    svc = services()
    upload = load(upload_id)
    authorize("delete", upload)
    if not svc.store.set_state(upload_id, TERMINATED, (CREATED, RECEIVING, ASSEMBLING, COMPLETED)):
        raise TusError(410, "gone", "the upload has already ended")
    svc.notify(hooks.upload_terminated, replace(upload, state=TERMINATED))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tail_path(upload_id, svc.settings.tmp_dir))
    try:
        svc.jobs.clean_up(upload_id)
    except redis.RedisError:  # terminated already; the orphan sweep aborts it later
        log.exception("upload %s: could not enqueue its clean-up", upload_id)
    return tus_headers(Response(status=204))


PRESIGNED_SECONDS = 300


@blueprint.route("/<upload_id>", methods=["GET"])
def download(upload_id: str) -> Response:
    """A completed upload's object: a redirect to a short-lived presigned URL, or (with
    RINDLE_DOWNLOAD=stream) the bytes themselves, with Range support."""
    svc = services()
    if svc.settings.download == "off":
        raise TusError(405, "download_disabled", "downloads are switched off")
    upload = load(upload_id)
    authorize("get", upload)
    if upload.state != COMPLETED:
        raise TusError(
            409,
            "not_ready",
            f"the upload is {upload.state}, not completed yet",
            {"Retry-After": "2"},
        )
    if svc.settings.download == "redirect":
        response = redirect(svc.storage.presigned_get(upload.key, PRESIGNED_SECONDS), 302)
        response.headers["Cache-Control"] = "no-store"
        return response
    try:
        obj = svc.storage.get_object(upload.key, request.headers.get("Range"))
    except ClientError as exc:
        if error_code(exc) == "InvalidRange":
            raise TusError(416, "invalid_range", "the range is outside the object") from None
        raise
    response = Response(
        stream_with_context(obj["Body"].iter_chunks(1024 * 1024)),
        status=206 if "ContentRange" in obj else 200,
        content_type=obj.get("ContentType") or "application/octet-stream",
        direct_passthrough=True,
    )
    response.headers["Content-Length"] = str(obj["ContentLength"])
    response.headers["Accept-Ranges"] = "bytes"
    for header, field in (
        ("Content-Range", "ContentRange"),
        ("ETag", "ETag"),
        ("Content-Disposition", "ContentDisposition"),
    ):
        if obj.get(field):
            response.headers[header] = obj[field]
    return response
