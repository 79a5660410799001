"""An offset retrieval in the IETF draft's dialect follows tus's rule (issue #21, item 4):
it asks only an idle writer to let go, never one whose bytes keep coming."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from tests.e2e.conftest import TUS, Uploads, payload
from tests.e2e.test_release import stalled_patch

pytestmark = pytest.mark.e2e

DRAFT = {"Upload-Draft-Interop-Version": "8"}


def test_draft_heads_do_not_interrupt_a_live_upload(module_stack, uploads: Uploads):
    data = payload(20 * 1024 * 1024, seed=21)
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
        heads.append(requests.head(url, headers=DRAFT, timeout=30).status_code)
        time.sleep(0.2)
    sender.join()
    answer = sock.recv(65536).decode("latin-1")
    sock.close()
    assert answer.startswith("HTTP/1.1 204"), answer
    assert f"Upload-Offset: {len(data)}" in answer, "one PATCH took it all"
    assert heads and set(heads) <= {204, 423}, heads
    uploads.assert_stored(url, data)
