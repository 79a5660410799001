"""The steps both dialects take on an upload: tus 1.0.0 (``rindle.web.blueprint``) and the
IETF draft (``rindle.web.draft``). Load and authorize it, take it over from a request
still writing it, stream a request body into it, create and end one. Each dialect parses
its own headers and builds its own answers; both import these, neither the other's view.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import redis
from flask import Response, request
from werkzeug.exceptions import HTTPException

from rindle import hooks, logs, protocol
from rindle.errors import BodyEnded, Fenced, TusError
from rindle.storage import tail_path, try_remove_idle_tail
from rindle.upload import ENDED, WRITABLE, State, Upload
from rindle.web import observe
from rindle.web.context import current_rindle
from rindle.writer import WriteResult

log = logging.getLogger("rindle")

# What a body read raises when the client goes away or sends a broken body: werkzeug's
# ClientDisconnected (an HTTPException), gunicorn's NoMoreData and friends (IOError or
# ValueError subclasses), socket timeouts (OSError).
READ_ERRORS = (OSError, ValueError, HTTPException)


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


def refuse_if_stopping() -> None:
    """503 (with Retry-After) once this process is shutting down."""
    if current_rindle().stopping:
        raise TusError("shutting_down", "this server is shutting down; retry", {"Retry-After": "5"})


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
    # Its URL is not given out before the replicas hold it (RINDLE_REDIS_WAIT_REPLICAS):
    # a failover must not forget an upload whose client was told it exists (503 else).
    rindle.uploads.confirm_replicated(upload_id)
    rindle.notify(hooks.upload_created, upload)
    return upload


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
