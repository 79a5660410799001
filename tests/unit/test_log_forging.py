"""Text log lines stay one line per record whatever a message, an id or an exception holds
(issue #21, item 1); the integration test drives the same through requests."""

from __future__ import annotations

import json
import logging

from rindle import logs

FORGED = "2030-01-01 00:00:00,000 ERROR rindle FORGED"


def record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    rec = logging.makeLogRecord(
        {"name": "rindle", "levelname": "ERROR", "levelno": logging.ERROR, "msg": msg}
    )
    rec.args = args
    if exc is not None:
        rec.exc_info = (type(exc), exc, exc.__traceback__)
    return rec


def raised() -> BaseException:
    try:
        try:
            raise KeyError(f"inner\n{FORGED}")
        except KeyError as inner:
            raise ValueError(f"outer\r\n{FORGED}\u2028{FORGED}") from inner
    except ValueError as exc:
        return exc


def starts_a_record(line: str) -> bool:
    return line[:4].isdigit() and line[4] == "-"


def test_a_message_and_ids_with_line_breaks_stay_on_one_line() -> None:
    rec = record("PATCH upload %s: %s", f"x\n{FORGED}", f"y\r{FORGED}\x85{FORGED}\u2029z")
    rec.upload_id = f"u\n{FORGED}"  # as ``extra`` could give it
    line = logs.TextFormatter().format(rec)
    assert line.splitlines() == [line]
    assert "x\\n2030-01-01" in line and "\\x85" in line and "\\u2029" in line
    assert "upload_id=u\\n2030" in line


def test_an_exception_s_message_stays_on_one_line_and_its_traceback_is_indented() -> None:
    exc = raised()
    text = logs.TextFormatter().format(record("failed", exc=exc))
    first, *more = text.splitlines()
    assert starts_a_record(first)
    assert more and all(line.startswith(logs.CONTINUATION) for line in more)
    assert not [line for line in more if starts_a_record(line.strip())], more
    assert any("ValueError: outer\\r\\n2030-01-01" in line for line in more)
    assert any("KeyError: 'inner\\n2030-01-01" in line for line in more)
    assert any("direct cause" in line for line in more)  # the chain is kept


def test_a_stack_is_indented_too() -> None:
    rec = record("where")
    rec.stack_info = "Stack (most recent call last):\n  File 'x', line 1"
    _, *more = logs.TextFormatter().format(rec).splitlines()
    assert more and all(line.startswith(logs.CONTINUATION) for line in more)


def test_json_lines_stay_one_line_with_the_traceback_inside() -> None:
    rec = record("failed %s", f"x\n{FORGED}\u2028", exc=raised())
    line = logs.JsonFormatter().format(rec)
    assert line.splitlines() == [line]
    entry = json.loads(line)
    assert entry["message"] == f"failed x\n{FORGED}\u2028"
    assert "ValueError: outer" in entry["exc_info"]


def test_an_id_that_is_not_one_is_not_bound() -> None:
    logs.bind_upload(f"x\n{FORGED}")
    assert logs.upload_id.get() == ""
    logs.bind_upload("AbC_-9")
    assert logs.upload_id.get() == "AbC_-9"
    logs.bind_upload("")


def test_a_record_without_exception_info_has_no_traceback() -> None:
    rec = record("plain")
    rec.exc_info = (None, None, None)
    assert logs.TextFormatter().format(rec).splitlines()[1:] == []
