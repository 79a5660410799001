"""A streamed download whose client reads too slowly is cut off, and its S3 connection
released (issue #21, item 12). In process, real Redis and S3; the gunicorn side (the
socket shut down under a blocked send) is in tests/e2e/test_slow_download.py."""

from __future__ import annotations

import os
import time

import pytest

from app import create_app
from rindle import Settings
from tests.integration.conftest import Tus
from tests.integration.test_hardening import completed_upload

pytestmark = pytest.mark.integration

SIZE = 2 * 1024 * 1024
MIN_RATE = 256 * 1024  # bytes/s; 2 chunks take 0.125 s, so the window is 1 s


@pytest.fixture
def streaming(app, monkeypatch):
    monkeypatch.setenv("RINDLE_DOWNLOAD", "stream")
    monkeypatch.setenv("RINDLE_MIN_RATE", str(MIN_RATE))
    monkeypatch.setenv("RINDLE_MIN_RATE_WINDOW", "1")
    return create_app(Settings.from_env())


@pytest.fixture
def bodies(streaming, monkeypatch):
    """The S3 bodies the downloads read (to see them closed)."""
    s3 = streaming.extensions["rindle"].s3
    opened = []
    get_object = s3.get_object

    def recording(*args, **kwargs):
        obj = get_object(*args, **kwargs)
        opened.append(obj["Body"])
        return obj

    monkeypatch.setattr(s3, "get_object", recording)
    return opened


def test_a_client_that_reads_too_slowly_is_cut_off_and_s3_released(streaming, bodies, caplog):
    tus = Tus(streaming.test_client())
    data = os.urandom(SIZE)
    upload_id = completed_upload(streaming, tus, data)
    r = tus.client.get(f"/files/{upload_id}", buffered=False)
    assert r.status_code == 200
    assert r.headers["Content-Length"] == str(SIZE)
    chunks = iter(r.response)
    received = len(next(chunks))
    # The client stops reading (a window is 1 s) until the server gave up on it.
    deadline = time.monotonic() + 30
    while f"download {upload_id}: client cut off" not in caplog.text:
        if time.monotonic() > deadline:
            break  # never cut off: the client below gets the whole object
        time.sleep(0.1)
    received += sum(len(chunk) for chunk in chunks)
    r.close()
    assert received < SIZE, "a client far below RINDLE_MIN_RATE got the whole object"
    (body,) = bodies
    assert body._raw_stream.closed, "the S3 connection is still held"


def test_a_client_that_keeps_up_gets_everything(streaming, bodies):
    tus = Tus(streaming.test_client())
    data = os.urandom(SIZE)
    upload_id = completed_upload(streaming, tus, data)
    r = tus.client.get(f"/files/{upload_id}")
    assert r.status_code == 200 and r.data == data
    (body,) = bodies
    assert body._raw_stream.closed
