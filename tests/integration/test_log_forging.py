"""A client's text never makes a log line of its own (issue #21, item 1): an upload id in
the URL, metadata, a request path in Flask's own error line, in text and JSON format,
as the log output reads (rindle's handler on a buffer, not caplog's records)."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from app import create_app
from rindle import Hooks, Settings, logs
from tests.integration.conftest import TUS

FORGED = "2030-01-01 00:00:00,000 ERROR rindle FORGED"
# Each way a client could end a line: LF, CR, CRLF, Unicode's line separator, NEL.
BREAKS = ("\n", "\r", "\r\n", "\u2028", "\x85")
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}


def pre_create(request: Any, length: int | None, metadata: dict[str, str | None]) -> None:
    """An app's hook that fails with the client's text in its error (a 500)."""
    name = metadata.get("filename") or ""
    if name.startswith("boom"):
        raise ValueError(f"cannot store {name}")


@pytest.fixture
def forging_app(app: Flask) -> Flask:
    forging_app = create_app(Settings.from_env(), Hooks(pre_create=pre_create))
    # A failing hook is answered 500 and logged by Flask (with the path), as in production.
    forging_app.config["PROPAGATE_EXCEPTIONS"] = False
    return forging_app


@pytest.fixture(params=["text", "json"])
def output(request: pytest.FixtureRequest) -> Iterator[tuple[str, io.StringIO]]:
    """What rindle's own handler (``logs.make_handler``) prints, into a buffer."""
    buffer = io.StringIO()
    handler = logs.make_handler(request.param)
    handler.setStream(buffer)  # type: ignore[attr-defined]
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield request.param, buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_no_client_text_forges_a_line(forging_app: Flask, output: tuple[str, io.StringIO]) -> None:
    log_format, buffer = output
    client = forging_app.test_client()
    for brk in BREAKS:
        forged_id = f"x{brk}{FORGED}"
        quoted = forged_id.encode().hex()
        path = "/files/" + "".join(f"%{quoted[i : i + 2]}" for i in range(0, len(quoted), 2))
        assert client.patch(path, data=b"abc", headers=PATCH).status_code == 404
        assert client.head(path, headers=TUS).status_code == 404
        assert client.delete(path, headers=TUS).status_code == 404
        r = client.post(
            "/files/",
            headers={
                **TUS,
                "Upload-Length": "3",
                "Upload-Metadata": f"filename {b64(f'boom{brk}{FORGED}')}",
                "X-Request-ID": f"r\t{FORGED}",  # no line breaks in a header
            },
        )
        assert r.status_code == 500
        # An upload whose metadata holds line breaks, written to: its summary line.
        r = client.post(
            "/files/",
            data=b"abc",
            headers={
                **PATCH,
                "Upload-Length": "3",
                "Upload-Metadata": f"filename {b64(f'a{brk}{FORGED}')}",
            },
        )
        assert r.status_code == 201

    text = buffer.getvalue()
    assert "Exception on /files/" in text  # Flask's line for the 500, with its traceback
    lines = text.splitlines()  # every line boundary Python knows, \u2028 and \x85 too
    assert len(lines) >= 3 * len(BREAKS)  # a 404 summary, a 500, a 201 summary each
    assert not [line for line in lines if "FORGED" in line and line.startswith(FORGED[:10])]
    if log_format == "json":
        for line in lines:
            json.loads(line)  # each line a whole record
        return
    record_start = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")
    for line in lines:
        # A record's first line, or one of its traceback's lines (indented).
        assert record_start.match(line) or line.startswith(logs.CONTINUATION), line
        assert not record_start.match(line.strip()) or record_start.match(line), line
    assert "FORGED" in text  # it reached the log, escaped


def test_ids_outside_the_id_alphabet_are_not_bound() -> None:
    with logs.bound(request="r\nX", upload="u\r\nX"):
        assert logs.request_id.get() == "" and logs.upload_id.get() == ""
    with logs.bound(request="req-1", upload="Ab_9-z"):
        assert (logs.request_id.get(), logs.upload_id.get()) == ("req-1", "Ab_9-z")
