"""Log lines: one per event, in text or JSON, naming the request and the upload.

``configure(log_format)`` gives the root logger one handler (stderr) whose lines carry
``request_id`` and ``upload_id`` when the code that logs runs inside ``bound(...)``: the
web layer binds both for each request, the RQ jobs bind the job id and the upload id.
``RINDLE_LOG_FORMAT=json`` makes each line one JSON object (``time``, ``level``,
``logger``, ``message``, the ids, any ``extra`` fields, ``exc_info``).

Libraries that add handlers of their own to their loggers (RQ's worker does, before it
imports the app) would print each of their lines twice once the root logger has a
handler too: ``configure`` removes those handlers, and their lines reach the root's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

request_id: ContextVar[str] = ContextVar("rindle_request_id", default="")
upload_id: ContextVar[str] = ContextVar("rindle_upload_id", default="")

HANDLER_NAME = "rindle"
# Loggers that get a handler of their own from the library (rq.logutils); their lines
# belong on the root's one handler.
OWN_HANDLER_LOGGERS = ("rq.worker", "rq.job", "rq.scheduler", "rq.cron", "rq.worker_pool")
# Chatty at INFO (botocore: "Found credentials..." in every process): warnings only.
QUIET_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")
# The attributes of every LogRecord: anything else on a record came with ``extra``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


@contextlib.contextmanager
def bound(*, request: str | None = None, upload: str | None = None) -> Iterator[None]:
    """Log lines of this thread (and context) name ``request`` and ``upload`` meanwhile."""
    tokens = []
    if request is not None:
        tokens.append((request_id, request_id.set(request)))
    if upload is not None:
        tokens.append((upload_id, upload_id.set(upload)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def bind_upload(upload: str) -> None:
    """Name ``upload`` on the rest of this request's lines (the id is made mid-request)."""
    upload_id.set(upload)


class ContextFilter(logging.Filter):
    """Puts the bound ids on each record (an id given with ``extra`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id = request_id.get()
        if not getattr(record, "upload_id", ""):
            record.upload_id = upload_id.get()
        return True


class TextFormatter(logging.Formatter):
    """``time LEVEL logger message [request_id=... upload_id=...]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(
            f"{name}={value}"
            for name in ("request_id", "upload_id")
            if (value := getattr(record, name, ""))
        )
        if not ids:
            return line
        first, newline, rest = line.partition("\n")  # after the message, before a traceback
        return f"{first} [{ids}]{newline}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for name in ("request_id", "upload_id"):
            if value := getattr(record, name, ""):
                entry[name] = value
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry and key not in ("request_id", "upload_id"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def make_handler(log_format: str) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.name = HANDLER_NAME
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    return handler


def configure(log_format: str = "text", level: int = logging.INFO) -> None:
    """One handler on the root logger, in ``log_format`` ("text" or "json"); called again,
    it replaces its own handler and leaves the others alone; botocore and friends log
    warnings only (``QUIET_LOGGERS``). Handlers that libraries put
    on their own loggers (``OWN_HANDLER_LOGGERS``) are removed, so that each line is
    printed once, by the root's handler."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.name == HANDLER_NAME]:
        root.removeHandler(handler)
    root.addHandler(make_handler(log_format))
    root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    for name in OWN_HANDLER_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
