"""A reconnecting client takes over from its own stalled request (issue #3, release)."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import pytest
import requests

from tests.e2e.conftest import TUS, Uploads, payload

pytestmark = pytest.mark.e2e
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}


def stalled_patch(url: str, data: bytes, sent: int) -> socket.socket:
    """A PATCH whose client sends ``sent`` bytes of ``data`` and then goes silent."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.sendall(
        f"PATCH {parts.path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
        "Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data[:sent]
    )
    return sock


def wait_for_offset(stack, url: str, at_least: int) -> None:
    key = f"rindle:upload:{{{url.rsplit('/', 1)[1]}}}"
    deadline = time.monotonic() + 30
    while int(stack.redis.hget(key, "offset") or 0) < at_least:
        assert time.monotonic() < deadline, "the stalled request never committed its part"
        time.sleep(0.05)


@pytest.mark.parametrize("method", ["HEAD", "PATCH"])
def test_a_new_request_makes_a_stalled_writer_save_and_let_go(
    module_stack, uploads: Uploads, method
):
    data = payload(12 * 1024 * 1024 + 5, seed=11)
    r = requests.post(
        module_stack.files_url, headers={**TUS, "Upload-Length": str(len(data))}, timeout=10
    )
    url = r.headers["Location"]
    uploads.track(url)
    sent = 7 * 1024 * 1024 + 333  # a part and some tail
    stalled = stalled_patch(url, data, sent)
    try:
        wait_for_offset(module_stack, url, 5 * 1024 * 1024)  # the writer is in the body
        started = time.monotonic()
        if method == "HEAD":
            answer = requests.head(url, headers=TUS, timeout=30)
            assert answer.status_code == 200
            offset = int(answer.headers["Upload-Offset"])
        else:
            # The client retries from the offset it last knew: the writer lets go, the
            # retry meets the saved offset (409), HEADs and resumes.
            answer = requests.patch(
                url, data=data, headers={**PATCH, "Upload-Offset": "0"}, timeout=30
            )
            assert answer.status_code == 409
            offset = int(answer.headers["Upload-Offset"])
        took = time.monotonic() - started
        assert offset == sent, "everything the stalled request received is kept"
        assert took < 5, f"the holder let go after {took:.1f}s"
    finally:
        stalled.close()
    r = requests.patch(
        url, data=data[offset:], headers={**PATCH, "Upload-Offset": str(offset)}, timeout=60
    )
    assert r.status_code == 204
    uploads.assert_stored(url, data)


@pytest.mark.parametrize(
    ("dialect", "answered"),
    [({}, 200), ({"Upload-Draft-Interop-Version": "8"}, 204)],
    ids=["tus", "ietf-draft"],
)
def test_polling_heads_do_not_interrupt_a_live_upload(
    module_stack, uploads: Uploads, dialect: dict[str, str], answered: int
):
    """A progress monitor polling HEAD (tus, or the draft's offset retrieval) must not
    split a PATCH whose bytes keep coming: only an idle writer is asked to let go."""
    import threading

    data = payload(20 * 1024 * 1024, seed=12)
    r = requests.post(
        module_stack.files_url, headers={**TUS, "Upload-Length": str(len(data))}, timeout=10
    )
    url = r.headers["Location"]
    uploads.track(url)
    sock = stalled_patch(url, data, 0)  # the headers only, so far

    def steady_client() -> None:
        for start in range(0, len(data), 256 * 1024):
            sock.sendall(data[start : start + 256 * 1024])
            time.sleep(0.02)  # a steady client, never idle for long

    sender = threading.Thread(target=steady_client)
    sender.start()
    heads = []
    while sender.is_alive():
        heads.append(requests.head(url, headers={**TUS, **dialect}, timeout=30).status_code)
        time.sleep(0.2)
    sender.join()
    answer = sock.recv(65536).decode("latin-1")
    sock.close()
    assert answer.startswith("HTTP/1.1 204"), answer
    assert f"Upload-Offset: {len(data)}" in answer, "one PATCH took it all"
    assert heads and set(heads) <= {answered, 423}, heads
    uploads.assert_stored(url, data)
