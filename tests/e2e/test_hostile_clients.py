"""Silent, dripping and racing clients against the real server (issue #9, items 1, 6, 11):
each ends with a clear JSON answer and keeps every byte it was acknowledged."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import pytest
import requests

from tests.e2e.conftest import MIB, TUS, payload, read_response
from tests.e2e.test_faults import create
from tests.e2e.test_release import stalled_patch, wait_for_offset

pytestmark = pytest.mark.e2e


def read_answer(sock: socket.socket, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """The HTTP answer on ``sock`` within ``timeout`` seconds."""
    sock.settimeout(timeout)
    return read_response(sock)


def assert_connection_ends(sock: socket.socket) -> None:
    """After an answer to a body it stopped reading, the server closes the connection:
    kept alive, it would read the rest of the body as the next request."""
    sock.settimeout(5)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass  # closed while the client was still sending: also an end


def offset_of(url: str) -> int:
    return int(requests.head(url, headers=TUS, timeout=30).headers["Upload-Offset"])


@pytest.mark.parametrize(
    "stack", [{"RINDLE_READ_TIMEOUT": "5", "RINDLE_LEASE_SECONDS": "5"}], indirect=True
)
def test_a_silent_client_keeps_what_it_sent_with_the_defaults_ratio(stack):
    """Read timeout and lease as long as each other (60 s and 60 s by default): the
    lease must not run out while the writer waits for the client."""
    data = payload(12 * MIB, seed=91)
    url = create(stack, len(data))
    sent = 4 * MIB
    sock = stalled_patch(url, data, sent)
    try:
        status, headers, body = read_answer(sock, timeout=30)
        assert_connection_ends(sock)
    finally:
        sock.close()
    assert status == 204, body
    assert int(headers["upload-offset"]) == sent
    assert offset_of(url) == sent


@pytest.mark.parametrize(
    "stack", [{"RINDLE_MIN_RATE": "100000", "RINDLE_MIN_RATE_WINDOW": "2"}], indirect=True
)
def test_a_dripping_client_is_ended_and_keeps_what_it_sent(stack):
    """1 KiB every quarter second never trips the read timeout (60 s), yet holds a
    thread for ever: under RINDLE_MIN_RATE over the window, the PATCH ends."""
    data = payload(1 * MIB, seed=92)
    url = create(stack, len(data))
    sock = stalled_patch(url, data, 0)
    sent = 0
    stop = threading.Event()

    def drip() -> None:
        nonlocal sent
        while not stop.is_set() and sent < len(data):
            try:
                sock.sendall(data[sent : sent + 1024])
            except OSError:
                return
            sent += 1024
            time.sleep(0.25)

    dripper = threading.Thread(target=drip)
    started = time.monotonic()
    dripper.start()
    try:
        status, headers, body = read_answer(sock, timeout=30)
        assert_connection_ends(sock)
    finally:
        stop.set()
        dripper.join()
        sock.close()
    assert status == 204, body
    assert time.monotonic() - started < 10
    kept = int(headers["upload-offset"])
    assert 0 < kept <= sent
    assert offset_of(url) == kept


def test_a_delete_during_a_patch_answers_json_and_leaves_nothing(stack):
    """The DELETE removes the tail while the writer, past its first part, still works on
    it: the writer's client gets a JSON answer, never an HTML 500."""
    data = payload(16 * MIB, seed=93)
    url = create(stack, len(data))
    sock = stalled_patch(url, data, 6 * MIB)
    try:
        wait_for_offset(stack, url, 5 * MIB)  # part 1 is in S3: a multipart upload exists
        assert requests.delete(url, headers=TUS, timeout=10).status_code == 204
        with contextlib.suppress(OSError):  # the server may have stopped reading already
            sock.sendall(data[6 * MIB :])  # enough for more parts: the writer works on
        status, headers, body = read_answer(sock, timeout=30)
    finally:
        sock.close()
    assert status in (409, 410), body
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"] in ("gone", "conflict")
    assert requests.head(url, headers=TUS, timeout=10).status_code == 410
