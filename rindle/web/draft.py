"""The IETF "Resumable Uploads for HTTP" draft over HTTP: upload creation (POST, PUT or
PATCH to the collection), offset retrieval (HEAD, GET), append (PATCH), cancellation
(DELETE) and OPTIONS, on the same uploads and engine as the tus 1.0.0 views.

``rindle.web.blueprint`` sends every request that carries Upload-Draft-Interop-Version
here (``dispatch``), and answers refusals with ``problem_response``. The header parsing
and the rules are in ``rindle.draft``. Nothing of tus 1.0.0 appears in these answers.

104 (Upload Resumption Supported) interim responses are not sent: a WSGI application
cannot send informational responses, and the draft lets a server that cannot send them
answer with the final response only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Mapping

from flask import Response, request, url_for
from werkzeug.http import parse_options_header

from rindle import draft, protocol
from rindle.errors import LeaseHeld, RindleError, TusError
from rindle.lease import RELEASE_IF_IDLE, RELEASE_NOW
from rindle.upload import WRITABLE, State, Upload
from rindle.web.context import current_rindle
from rindle.web.uploads import (
    authorize,
    check_length,
    close_if_unread,
    end_upload,
    gone_if_ended,
    load,
    new_upload,
    refuse_if_stopping,
    settled,
    take_over,
    write_body,
)
from rindle.writer import WriteResult

log = logging.getLogger("rindle")


def dispatch(view_args: Mapping[str, str]) -> Response:
    """Answer a request in the draft's dialect, by method and target (the collection or
    an upload resource)."""
    version = draft.interop_version(request.headers)
    assert version is not None
    draft.check_interop_version(version)
    upload_id = view_args.get("upload_id")
    method = request.method
    if method == "OPTIONS":
        return options(version)
    if upload_id is None:
        return create(version)  # POST, PUT or PATCH to the collection
    if method in ("HEAD", "GET"):
        return retrieve_offset(version, upload_id)
    if method == "PATCH":
        return append(version, upload_id)
    return cancel(version, upload_id)  # DELETE: the only method left on an upload


# -- answers -------------------------------------------------------------------------


def bodiless(status: int) -> Response:
    response = Response(status=status)
    del response.headers["Content-Type"]
    return response


def with_state(response: Response, upload: Upload) -> Response:
    response.headers["Upload-Offset"] = str(upload.offset)
    response.headers["Upload-Complete"] = draft.sf_boolean_text(draft.is_complete(upload))
    return response


def upload_limit(version: int, upload: Upload | None = None) -> str:
    settings = current_rindle().settings
    shared = settings.tail_store == "s3"
    return draft.format_limits(
        draft.limits(version, settings.max_size, upload, time.time(), shared)
    )


def problem_response(status: int, code: str, message: str, headers: Mapping[str, str]) -> Response:
    """A refusal in the draft's dialect: ``application/problem+json`` with the draft's
    problem type where one applies, ``Upload-Complete: ?0`` (the answer comes from the
    upload, not from processing it), ``Upload-Limit`` on a 413; no tus field."""
    version = draft.interop_version(request.headers)
    if version == 6 and code == "gone":
        status = 404  # interop 6: an upload that is not active is 404
    provided = draft.sf_integer(request.headers.get("Upload-Offset"))
    body = draft.problem(status, code, message, headers.get("Upload-Offset"), provided)
    response = Response(json.dumps(body), status=status, mimetype=draft.PROBLEM_JSON)
    for name, value in headers.items():
        if name not in draft.TUS_ONLY_RESPONSE_HEADERS:
            response.headers[name] = value
    if request.method != "OPTIONS":
        response.headers["Upload-Complete"] = "?0"
    if status == 413 and version in draft.INTEROP_VERSIONS:
        response.headers["Upload-Limit"] = upload_limit(version)
    return response


# -- the requests --------------------------------------------------------------------


def options(version: int) -> Response:
    """The limits a new upload gets (``Upload-Limit``; never empty: max-size is always set)."""
    response = bodiless(204)
    response.headers["Upload-Limit"] = upload_limit(version)
    return response


def create(version: int) -> Response:
    """Upload creation: the request's content (any size, maybe none, maybe interrupted)
    is the upload's beginning; ``Upload-Complete: ?1`` says it is all of it."""
    settings = current_rindle().settings
    refuse_if_stopping()  # POST and PATCH were refused already; PUT too
    transfer = draft.parse_transfer(request.headers, request.content_length, append=False)
    authorize("create", None)
    length = draft.creation_length(transfer, settings.max_size)
    metadata = representation_metadata(settings.max_metadata)
    part_size = protocol.part_size_for(length or 0, settings.part_size)
    upload = new_upload(length, metadata, part_size)
    location = url_for(".upload", upload_id=upload.id, _external=True)
    result = None
    if transfer.body_length != 0 and length != 0:
        # The upload exists now: whatever happens to the content, the client may resume.
        try:
            upload, result = receive(upload, transfer, None, location)
        except RindleError as err:
            if err.code in ("inconsistent_length", "upload_too_large"):
                raise
            log.warning("upload %s: first bytes with the creation not kept: %s", upload.id, err)
            upload = load(upload.id)
    response = with_state(bodiless(201), upload)
    response.headers["Location"] = location
    response.headers["Upload-Limit"] = upload_limit(version, upload)
    return close_if_unread(response, result) if result is not None else response


def representation_metadata(max_metadata: int) -> dict[str, bytes | None]:
    """The creation request's representation metadata, as rindle records it: the media
    type (``Content-Type``, unless it is the draft's or tus's own) as ``filetype``, the
    ``Content-Disposition`` file name as ``filename``. tus-js-client sends
    ``Upload-Metadata`` in this dialect too: it is read first, and wins."""
    metadata = protocol.parse_metadata(request.headers.get("Upload-Metadata"), max_metadata)
    media_type = protocol.media_type(request.headers)
    if media_type and media_type not in (draft.PARTIAL_UPLOAD, protocol.PATCH_CONTENT_TYPE):
        metadata.setdefault("filetype", media_type.encode())
    disposition = request.headers.get("Content-Disposition")
    if disposition:
        filename = parse_options_header(disposition)[1].get("filename")
        if filename:
            metadata.setdefault("filename", filename.encode("utf-8", "replace"))
    return metadata


def retrieve_offset(version: int, upload_id: str) -> Response:
    """HEAD (or GET) of an upload: its offset, completeness, length when known, limits."""
    if version == 6:
        draft.check_no_upload_fields(
            request.headers, ("Upload-Offset", "Upload-Complete", "Upload-Length")
        )
    # As for tus: a request still writing this upload is ended first only if it receives
    # nothing (a client reconnecting after its old append hung), so that the offset
    # answered is the one a following append is held to. One whose bytes keep coming
    # goes on: anyone allowed to HEAD could otherwise stall an upload.
    upload = settled(upload_id, RELEASE_IF_IDLE)
    response = with_state(bodiless(204), upload)
    if upload.length is not None:
        response.headers["Upload-Length"] = str(upload.length)
    response.headers["Upload-Limit"] = upload_limit(version, upload)
    response.headers["Cache-Control"] = "no-store"
    return response


def append(version: int, upload_id: str) -> Response:
    """Append the request's content at Upload-Offset; everything that can be refused is
    refused before the content is read."""
    transfer = draft.parse_transfer(request.headers, request.content_length, append=True)
    upload = load(upload_id)
    authorize("patch", upload)
    upload = take_over(upload, RELEASE_NOW)
    if upload.is_final:
        raise TusError("final_upload", "a final upload is assembled from its partials")
    declared = draft.check_append(upload, transfer, current_rindle().settings.max_size)
    check_length(upload, declared)
    if draft.is_complete(upload):
        # A valid completing append to a complete upload (its answer was lost): the
        # same answer again.
        if upload.state == State.ASSEMBLING:
            current_rindle().jobs.ensure_completion(upload_id)
        return appended(version, upload)
    upload, result = receive(upload, transfer, declared)
    return close_if_unread(appended(version, upload), result)


def appended(version: int, upload: Upload) -> Response:
    # Interop 6 acknowledges an append with 201; from interop 7 on, any 2xx (204 here).
    return with_state(bodiless(201 if version == 6 else 204), upload)


def cancel(version: int, upload_id: str) -> Response:
    """Cancellation: the upload ends (410 from now on), and a request still writing it
    is ended before the answer (as the draft recommends), or within a second after it."""
    if version == 6:
        draft.check_no_upload_fields(request.headers, ("Upload-Offset", "Upload-Complete"))
    upload = load(upload_id)
    authorize("delete", upload)
    end_upload(upload)
    lease = current_rindle().lease
    with contextlib.suppress(LeaseHeld):  # not in time: it stops at its next renewal
        lease.wait_until_free(upload_id, RELEASE_NOW)
    return bodiless(204)


# -- receiving content ---------------------------------------------------------------


def receive(
    upload: Upload, transfer: draft.Transfer, declared: int | None, location: str = ""
) -> tuple[Upload, WriteResult]:
    """Write the request's content at the upload's offset (``declared``: the length this
    request declares for an upload of unknown length). What arrived is kept however the
    content ends. A completing request (Upload-Complete: ?1) whose content arrived whole
    completes the upload at its end; content beyond the upload's length makes the upload
    invalid (the draft), beyond what an upload can hold here is 413."""
    before = upload
    append = protocol.Append(upload.offset, None, declared, transfer.body_length)
    result = write_body(upload, append)
    upload = result.upload
    kept = {"Upload-Offset": str(upload.offset), **({"Location": location} if location else {})}
    if result.overflow:
        if upload.length is None:
            raise TusError("upload_too_large", "content beyond the most an upload holds", kept)
        end_upload(upload)
        raise TusError(
            "inconsistent_length", "the content went beyond the upload's length: it ended", kept
        )
    # Whole: a body of known length that ended short was cut (gunicorn ends such a read
    # quietly), and only a whole body completes the upload.
    whole = not result.ended_early and (
        transfer.body_length is None or upload.offset - before.offset == transfer.body_length
    )
    if transfer.complete and whole and upload.state in WRITABLE:
        if upload.length is not None:
            raise TusError(
                "inconsistent_length", "the content ended before the upload's length", kept
            )
        upload = finish(upload)
    return upload, result


def finish(upload: Upload) -> Upload:
    """Complete an upload of unknown length at its offset (a completing request with
    content of unknown length, now ended): declare the length, with no more bytes. The
    app's pre_length hook decides first: refused, the upload stays incomplete."""
    check_length(upload, upload.offset)
    with gone_if_ended(upload.id):
        result = current_rindle().writer.write(
            upload.id, protocol.Append(upload.offset, None, upload.offset), lambda n: b""
        )
    return result.upload
