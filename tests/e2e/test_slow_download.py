"""A streamed download under gunicorn whose client stops reading is cut off: the send
blocked on that client ends, the thread and the S3 connection are free again (issue
#21, item 12)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.conftest import _STACKS, Stack
from tests.e2e.conftest import MIB, TUS, Uploads, own_stack, payload, poll, web_log

pytestmark = pytest.mark.e2e

PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}
SIZE = 32 * MIB  # far more than the kernel's socket buffers hold


@pytest.fixture
def stream_stack(request, redis_server, s3_server, tmp_path: Path) -> Iterator[Stack]:
    """Streamed downloads; at least 256 KiB/s over a 1 s window (uploads here are fast)."""
    with own_stack(
        redis_server,
        s3_server,
        tmp_path,
        RINDLE_DOWNLOAD="stream",
        RINDLE_MIN_RATE=256 * 1024,
        RINDLE_MIN_RATE_WINDOW=1,
    ) as stack:
        request.node.stash[_STACKS] = [stack]
        yield stack


def test_a_download_whose_client_stops_reading_is_cut_off(stream_stack: Stack):
    data = payload(SIZE, seed=1212)
    r = requests.post(stream_stack.files_url, headers={**TUS, "Upload-Length": str(SIZE)})
    url = r.headers["Location"]
    r = requests.patch(url, data=data, headers={**PATCH, "Upload-Offset": "0"}, timeout=60)
    assert r.status_code == 204
    uploads = Uploads(stream_stack)
    upload_id = uploads.track(url)
    uploads.wait_completed(upload_id)

    parts = urlsplit(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that takes little
    sock.settimeout(60)
    sock.connect((parts.hostname, parts.port))
    sock.sendall(f"GET {parts.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    try:
        # The client reads nothing until the server gave up on it.
        poll(
            lambda: f"download {upload_id}: client cut off" in web_log(stream_stack) or None,
            30,
            "for the server to cut the silent client off",
        )
        received = b""
        while chunk := sock.recv(1 << 20):  # then the connection ends: EOF, not a hang
            received += chunk
    except ConnectionResetError:
        received = b"(reset)"
    finally:
        sock.close()
    _, _, body = received.partition(b"\r\n\r\n")
    assert len(body) < SIZE, "the silent client got the whole object"
    # The thread is free and the S3 pool sound: the next download is whole.
    again = requests.get(url, timeout=60)
    assert again.status_code == 200 and again.content == data
    uploads.cleanup()
