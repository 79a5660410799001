"""Many slow clients on one node (issue #10): while 50 PATCHes trickle in, each holding
its connection for seconds, new clients still create uploads and ask for offsets, and
every slow upload ends exact. A node whose threads all sat in slow PATCHes answered
nobody else until one of them ended."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from tests.e2e.conftest import MIB, TUS, Uploads, payload
from tests.e2e.test_faults import RawPatch, create

pytestmark = pytest.mark.e2e

CLIENTS = 50
SIZE = MIB
RATE = 128 * 1024  # bytes per second per client: each PATCH stays open ~8 s
PIECE = 16 * 1024


def trickle(url: str, data: bytes, done: list[tuple[str, int, float]]) -> None:
    """One PATCH of ``data`` sent at RATE; records (url, status, when it was answered)."""
    started = time.monotonic()
    with RawPatch(url, 0, len(data), timeout=120) as patch:
        for at in range(0, len(data), PIECE):
            patch.send(data[at : at + PIECE])
            time.sleep(max(0.0, started + (at + PIECE) / RATE - time.monotonic()))
        status, _, _ = patch.response()
    done.append((url, status, time.monotonic()))


def test_new_clients_are_served_while_fifty_slow_patches_run(stack):
    uploads = Uploads(stack)
    sources = [payload(SIZE, seed=1100 + n) for n in range(CLIENTS)]
    urls = [create(stack, SIZE) for _ in sources]
    for url in urls:
        uploads.track(url)
    done: list[tuple[str, int, float]] = []
    clients = [
        threading.Thread(target=trickle, args=(url, data, done))
        for url, data in zip(urls, sources, strict=True)
    ]
    for client in clients:
        client.start()

    answered = []  # when a fresh client's POST then HEAD were both answered
    time.sleep(1)  # every slow PATCH has begun
    while any(client.is_alive() for client in clients) and not done:
        r = requests.post(stack.files_url, headers={**TUS, "Upload-Length": "10"}, timeout=60)
        assert r.status_code == 201, r.text
        uploads.track(r.headers["Location"])
        head = requests.head(r.headers["Location"], headers=TUS, timeout=60)
        assert (head.status_code, head.headers["Upload-Offset"]) == (200, "0")
        answered.append(time.monotonic())
        time.sleep(0.3)
    for client in clients:
        client.join(timeout=120)

    first_end = min(when for _, _, when in done)
    while_all_ran = [when for when in answered if when < first_end]
    assert len(while_all_ran) >= 3, (
        f"{len(while_all_ran)} POST+HEAD answered while the {CLIENTS} slow PATCHes ran"
    )
    assert sorted(status for _, status, _ in done) == [204] * CLIENTS
    for url, data in zip(urls, sources, strict=True):
        uploads.assert_stored(url, data)
    uploads.cleanup()
