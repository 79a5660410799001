"""Log lines: text or JSON, the bound ids on each, and each line printed once."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from rindle import logs


@pytest.fixture
def root_handler() -> Iterator[None]:
    """Undo ``logs.configure`` on the process's loggers after the test."""
    root = logging.getLogger()
    level = root.level
    rq_worker = logging.getLogger("rq.worker")
    saved = (list(rq_worker.handlers), rq_worker.propagate)
    yield
    for handler in [h for h in root.handlers if h.name == logs.HANDLER_NAME]:
        root.removeHandler(handler)
    root.setLevel(level)
    rq_worker.handlers[:] = saved[0]
    rq_worker.propagate = saved[1]
    for name in logs.QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)


def record(message: str = "hello %s", *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.makeLogRecord(
        {"name": "rindle", "levelname": "INFO", "levelno": logging.INFO, "msg": message}
    )
    rec.args = args or ("world",)
    rec.__dict__.update(extra)
    return rec


def formatted(formatter: logging.Formatter, rec: logging.LogRecord) -> str:
    logs.ContextFilter().filter(rec)
    return formatter.format(rec)


def test_json_lines_carry_the_bound_ids_and_the_extra_fields() -> None:
    with logs.bound(request="req-1", upload="up-1"):
        line = formatted(logs.JsonFormatter(), record(bytes=5, outcome="ok"))
    entry = json.loads(line)
    assert entry["message"] == "hello world"
    assert entry["level"] == "INFO" and entry["logger"] == "rindle"
    assert entry["request_id"] == "req-1" and entry["upload_id"] == "up-1"
    assert entry["bytes"] == 5 and entry["outcome"] == "ok"
    assert "\n" not in line


def test_json_lines_outside_a_request_have_no_ids_and_keep_tracebacks() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = record()
        rec.exc_info = sys.exc_info()
    entry = json.loads(formatted(logs.JsonFormatter(), rec))
    assert "request_id" not in entry and "upload_id" not in entry
    assert "ValueError: boom" in entry["exc_info"]


def test_text_lines_name_the_ids_after_the_message() -> None:
    with logs.bound(request="req-2", upload="up-2"):
        line = formatted(logs.TextFormatter(), record())
    assert line.endswith("INFO rindle hello world [request_id=req-2 upload_id=up-2]")
    assert formatted(logs.TextFormatter(), record()).endswith("INFO rindle hello world")


def test_bound_ids_end_with_their_block() -> None:
    with logs.bound(request="outer"):
        with logs.bound(request="inner", upload="u"):
            assert logs.request_id.get() == "inner"
        assert logs.request_id.get() == "outer" and logs.upload_id.get() == ""
    assert logs.request_id.get() == ""


def test_a_line_of_a_logger_with_its_own_handler_is_printed_once(
    root_handler: None, capsys: pytest.CaptureFixture[str]
) -> None:
    own = io.StringIO()
    rq_worker = logging.getLogger("rq.worker")
    rq_worker.addHandler(logging.StreamHandler(own))  # what rq's CLI does
    logs.configure("text")
    logs.configure("text")  # twice: still one handler
    rq_worker.info("*** Listening on rindle...")
    printed = capsys.readouterr().err.splitlines()
    assert [line for line in printed if "Listening" in line] == [printed[-1]], (
        printed
    )  # exactly one line, by the root's handler
    assert own.getvalue() == ""
    assert len([h for h in logging.getLogger().handlers if h.name == logs.HANDLER_NAME]) == 1
