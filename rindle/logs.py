"""Log lines: one per event, in text or JSON, naming the request and the upload.

``configure(log_format)`` gives the root logger one handler (stderr) whose lines carry
``request_id`` and ``upload_id`` when the code that logs runs inside ``bound(...)``: the
web layer binds both for each request, the RQ jobs bind the job id and the upload id.
``RINDLE_LOG_FORMAT=json`` makes each line one JSON object (``time``, ``level``,
``logger``, ``message``, the ids, any ``extra`` fields, ``exc_info``).

Libraries that add handlers of their own to their loggers (RQ's worker does, before it
imports the app) would print each of their lines twice once the root logger has a
handler too: ``configure`` removes those handlers, and their lines reach the root's.

A client's text reaches log lines (an upload id from the URL, metadata, a header in an
error message): it must never make a line of its own. Only ids of ``ID`` are bound, and
a text line escapes every control character (a newline as ``\\n``); the lines of a traceback
follow indented, so that no line but a record's first starts at the left margin. JSON
lines are escaped by JSON itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
import traceback
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
# What a request id or an upload id may look like on a line: rindle's upload ids
# (token_urlsafe), RQ's job ids, the request ids of routers (Heroku's: a UUID).
ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
# Control characters (C0, DEL, C1) and Unicode's line and paragraph separators: any of
# them may end a line for a terminal or a log collector.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Before each line of a traceback: a record's first line alone starts at the margin.
CONTINUATION = "  "
# The attributes of every LogRecord: anything else on a record came with ``extra``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def escape(text: str) -> str:
    """``text`` on one line: control characters as ``\\n``, ``\\x1b``, ``\\u2028``..."""
    return _CONTROL.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def safe_id(value: str) -> str:
    """``value`` if it looks like an id (``ID``), else "": a client's URL or header never
    reaches a line as an id."""
    return value if ID.fullmatch(value) else ""


@contextlib.contextmanager
def bound(*, request: str | None = None, upload: str | None = None) -> Iterator[None]:
    """Log lines of this thread (and context) name ``request`` and ``upload`` meanwhile
    (an id that does not look like one, ``safe_id``, is not named)."""
    tokens = []
    if request is not None:
        tokens.append((request_id, request_id.set(safe_id(request))))
    if upload is not None:
        tokens.append((upload_id, upload_id.set(safe_id(upload))))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def bind_upload(upload: str) -> None:
    """Name ``upload`` on the rest of this request's lines (the id is made mid-request)."""
    upload_id.set(safe_id(upload))


class ContextFilter(logging.Filter):
    """Puts the bound ids on each record (an id given with ``extra`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id = request_id.get()
        if not getattr(record, "upload_id", ""):
            record.upload_id = upload_id.get()
        return True


class TextFormatter(logging.Formatter):
    """``time LEVEL logger message [request_id=... upload_id=...]``, on one line whatever
    the message holds; a traceback follows on lines of its own, indented."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        first = escape(self.formatMessage(record))
        ids = " ".join(
            f"{name}={escape(str(value))}"
            for name in ("request_id", "upload_id")
            if (value := getattr(record, name, ""))
        )
        if ids:
            first += f" [{ids}]"
        more: list[str] = []
        if record.exc_info and record.exc_info[0] is not None:
            more += self.formatException(record.exc_info).splitlines()
        elif record.exc_text:
            more += record.exc_text.splitlines()
        if record.stack_info:
            more += self.formatStack(record.stack_info).splitlines()
        # splitlines() splits at every line boundary Python knows (\r, \x1c, \u2028...).
        return "\n".join([first, *(CONTINUATION + escape(line) for line in more)])

    def formatException(self, ei: Any) -> str:
        """The traceback, with each exception's message (and notes) on one line: those
        may hold a client's text (a path, a header, metadata)."""
        lines: list[str] = []
        for chunk in traceback.TracebackException(*ei, compact=True).format():
            if chunk.startswith(("Traceback ", "  ", "\n")):  # frames, chain banners
                lines += chunk.splitlines()
            else:  # "ValueError: <message>", a note
                lines.append(escape(chunk.removesuffix("\n")))
        return "\n".join(lines)


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
