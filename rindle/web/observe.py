"""What each request to the tus endpoints leaves behind: a request id and the upload id
on every log line it makes, its count in the metrics, and for each body written (a PATCH,
or a POST with creation-with-upload) one summary line: bytes, parts, duration, outcome.

The request id is the client's (or the router's: Heroku's) ``X-Request-ID`` when it
looks like one, else a new one; the answer carries it back. The upload id of the URL is
named only when it looks like an id (``logs.ID``): the URL is the client's text.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import time
from types import TracebackType

import redis
from flask import Flask, Response, g, request

from rindle import logs, metrics
from rindle.errors import RindleError
from rindle.storage import S3_ERRORS
from rindle.upload import Upload
from rindle.web.context import current_rindle
from rindle.writer import WriteResult

log = logging.getLogger("rindle")

REQUEST_ID_HEADER = "X-Request-ID"
BLUEPRINT = "rindle"


def install(app: Flask) -> None:
    """Bind the ids and count the answers of the requests rindle's blueprint serves."""
    app.before_request(_start)
    app.after_request(_answered)
    app.teardown_request(_end)


def _ours() -> bool:
    return request.blueprint == BLUEPRINT


def _start() -> None:
    if not _ours():
        return
    given = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = logs.safe_id(given) or secrets.token_hex(8)
    upload_id = (request.view_args or {}).get("upload_id")
    stack = contextlib.ExitStack()
    stack.enter_context(logs.bound(request=request_id, upload=upload_id or ""))
    g.rindle_log_context = stack
    g.rindle_started = time.monotonic()


def _end(exc: BaseException | None) -> None:
    stack = g.pop("rindle_log_context", None)
    if stack is not None:
        stack.close()


def _answered(response: Response) -> Response:
    if not _ours():
        return response
    if request_id := logs.request_id.get():
        response.headers[REQUEST_ID_HEADER] = request_id
    status = response.status_code
    metrics.REQUESTS.labels(request.method, str(status)).inc()
    wrote_nothing = request.method == "PATCH" and not g.get("rindle_wrote")
    code = ""
    # Only error answers and unwritten PATCHes: a GET may stream a JSON download.
    if response.is_json and (status >= 400 or wrote_nothing):
        code = (response.get_json(silent=True) or {}).get("error", "")
    if status >= 400:
        if code == "upload_locked":
            metrics.LOCKED.inc()
        elif code == "tus_tail_missing":
            metrics.TAIL_MISSES.inc()
        elif code == "redis_unavailable":
            metrics.REDIS_ERRORS.labels(request.method).inc()
    if wrote_nothing:
        refused(response, code)  # the summary line of a PATCH that wrote nothing
    return response


def refused(response: Response, code: str) -> None:
    upload_id = logs.upload_id.get()
    duration = time.monotonic() - g.get("rindle_started", time.monotonic())
    outcome = code or ("ok" if response.status_code < 400 else str(response.status_code))
    log.info(
        "PATCH upload %s: 0 bytes, 0 parts in %.3fs: %s",
        upload_id or "?",
        duration,
        outcome,
        extra={
            "event": "write",
            "bytes": 0,
            "parts": 0,
            "duration": round(duration, 6),
            "outcome": outcome,
            "status": response.status_code,
        },
    )


def outcome_of(result: WriteResult | None, exc: BaseException | None) -> str:
    """``ok``, ``ended_early`` (client gone, timeout, release, stop), ``overflow``, or
    what failed: a tus error code, ``storage_unavailable``, ``redis_unavailable``..."""
    if exc is None and result is not None:
        return "overflow" if result.overflow else "ended_early" if result.ended_early else "ok"
    if isinstance(exc, RindleError):
        return exc.code
    if isinstance(exc, S3_ERRORS):
        return "storage_unavailable"
    if isinstance(exc, redis.RedisError):
        return "redis_unavailable"
    if isinstance(exc, OSError):
        return "storage_error"
    return type(exc).__name__


class BodyWrite:
    """Around one body write: the PATCH gauge, the bytes counter and the summary line.

    ``result`` is set by the caller on success; after a failure the upload is read again
    (what the writer committed before it failed was received all the same)."""

    def __init__(self, upload: Upload) -> None:
        self.before = upload
        self.result: WriteResult | None = None
        self.started = 0.0

    def __enter__(self) -> BodyWrite:
        # The upload's id is bound already: the URL's (_start) or new_upload's.
        g.rindle_wrote = True
        metrics.PATCHES_IN_PROGRESS.inc()
        self.started = time.monotonic()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        duration = time.monotonic() - self.started
        metrics.PATCHES_IN_PROGRESS.dec()
        before = self.before
        after = self.result.upload if self.result is not None else self._read_again()
        received = max(0, after.offset - before.offset) if after else 0
        committed = max(0, after.committed - before.committed) if after else 0
        part_size = after.part_size if after else before.part_size  # (a first PATCH sets it)
        parts = math.ceil(committed / part_size) if part_size else 0
        outcome = outcome_of(self.result, exc)
        metrics.RECEIVED_BYTES.inc(received)
        log.info(
            "%s upload %s: %d bytes, %d parts in %.3fs: %s (offset %s)",
            request.method,
            before.id,
            received,
            parts,
            duration,
            outcome,
            after.offset if after else "?",
            extra={
                "event": "write",
                "bytes": received,
                "parts": parts,
                "duration": round(duration, 6),
                "outcome": outcome,
                "offset": after.offset if after else None,
                "state": str(after.state) if after else None,
            },
        )

    def _read_again(self) -> Upload | None:
        try:
            return current_rindle().uploads.get(self.before.id)
        except redis.RedisError:
            return None
