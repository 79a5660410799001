"""Heroku's router timeouts (issue #17, item 5), with the rig's router (tests/router.py)
in front of the web nodes and the S3 fault proxy behind them:

- H12: the router answers ``503`` when no response byte came 30 s (here 3 s) after it
  sent the whole request. A PATCH whose last parts are still on their way to a slow S3
  is cut that way; the server keeps every byte it commits (Redis agrees with S3 and with
  the tail) and the client's resume through the router, once S3 is back, ends exact.
- H28/H15: a connection on which nothing moves for 55 s (here 3 s) is reset. A client
  that stops sending mid-body is cut; what reached the server is kept and the resume
  ends exact.

Each runs in local tail mode on one node (one dyno) and in shared tail mode on two nodes
behind random routing (Heroku's formation with ``RINDLE_TAIL_STORE=s3``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from rindle import tail_path
from tests.conftest import Stack
from tests.e2e import test_faults as faults
from tests.e2e.conftest import MIB, TUS, Uploads, payload, poll, upload_id_of
from tests.e2e.test_faults import (
    LEASE_SECONDS,
    P,
    RawPatch,
    assert_consistent,
    record,
    target_of,
    tus_resume,
)
from tests.faultproxy import FaultProxy
from tests.router import Router

pytestmark = pytest.mark.e2e

RESPONSE_TIMEOUT = 3.0  # Heroku's 30 s, shortened
IDLE_TIMEOUT = 3.0  # Heroku's 55 s, shortened
s3_proxy = faults.s3_proxy


@dataclass
class Heroku:
    nodes: list[Stack]
    router: Router
    proxy: FaultProxy
    uploads: Uploads
    shared: bool

    def create(self, length: int) -> str:
        """POST through the router: the upload's URL names the router."""
        r = requests.post(
            self.router.files_url, headers={**TUS, "Upload-Length": str(length)}, timeout=30
        )
        assert r.status_code == 201, r.text
        assert r.headers["Location"].startswith(self.router.url)
        return r.headers["Location"]

    def tail_node(self, upload_id: str) -> Stack:
        """The node that holds the upload's tail file (the first node if none does)."""
        for node in self.nodes:
            if Path(tail_path(upload_id, str(node.tmp_dir))).exists():
                return node
        return self.nodes[0]

    def writer_gone(self, upload_id: str) -> bool | None:
        return not self.nodes[0].redis.exists(f"rindle:upload:{{{upload_id}}}:writer") or None

    def assert_stored(self, url: str, data: bytes, part_size: int = P) -> None:
        """Uploads.assert_stored, on a node without a tail of the upload: in shared mode
        the node that did not complete it keeps its stale copy until the tail reaper
        takes it (ended uploads' tails go at its next round), as designed."""
        upload_id = upload_id_of(url)
        for node in self.nodes:
            if not Path(tail_path(upload_id, str(node.tmp_dir))).exists():
                Uploads(node).assert_stored(url, data, part_size)
                return
        pytest.fail(f"every node still holds a tail of the completed upload {upload_id}")

    def assert_kept(self, upload_id: str, data: bytes) -> dict[str, int | str]:
        """assert_consistent on the node with the tail; in shared mode the tail's copy in
        S3 holds the buffered bytes too."""
        after = assert_consistent(self.tail_node(upload_id), upload_id, data)
        buffered = int(after["offset"]) - int(after["committed"])
        if self.shared and buffered:
            rec = record(self.nodes[0], upload_id)
            s3, bucket = self.nodes[0].s3, self.nodes[0].bucket
            kept = b"".join(  # one segment per PATCH that left bytes buffered
                s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                for key in rec["tail_key"].split()
            )
            assert kept == data[int(after["committed"]) : int(after["offset"])]
        return after


@pytest.fixture(params=["local", "s3"], ids=["one-node-local-tail", "two-nodes-shared-tail"])
def heroku(
    request: pytest.FixtureRequest,
    make_stack: Callable[..., Stack],
    s3_server,
    s3_proxy: FaultProxy,
) -> Iterator[Heroku]:
    shared = request.param == "s3"
    behind = {
        "AWS_ENDPOINT_URL_S3": s3_proxy.rewrite(s3_server.endpoint),
        "RINDLE_LEASE_SECONDS": LEASE_SECONDS,
        "RINDLE_TAIL_STORE": "s3" if shared else None,
    }
    assert target_of(s3_server.endpoint) == s3_proxy.target
    nodes = [make_stack(**behind) for _ in range(2 if shared else 1)]
    helper = Uploads(nodes[0])
    with Router(
        [node.port for node in nodes],
        seed=17,
        response_timeout=RESPONSE_TIMEOUT,
        idle_timeout=IDLE_TIMEOUT,
    ) as router:
        yield Heroku(nodes, router, s3_proxy, helper, shared)
    s3_proxy.heal()
    helper.cleanup()


def test_a_patch_still_shipping_parts_at_the_response_timeout_gets_503_and_resumes(
    heroku: Heroku,
):
    """S3 is slow (1 MiB/s for all uploads): the whole PATCH reached the server, whose
    last two parts are still going up when the router's timer runs out. The client gets
    the router's 503; the server keeps going and commits what it took, consistent with
    S3 and the tail; once S3 is back, HEAD and a PATCH from its offset end the upload."""
    data = payload(4 * P + 4321, seed=1701)
    url = heroku.create(len(data))
    upload_id = heroku.uploads.track(url)
    sent = 2 * P + 3 * MIB  # two full parts and a 3 MiB tail
    first = 100_000  # a small first PATCH: the part size stays P (not the body's length)
    octets = {"Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}
    r = requests.patch(url, data=data[:first], headers={**TUS, **octets}, timeout=30)
    assert r.status_code == 204, r.text
    heroku.proxy.throttle(MIB, direction="up")  # ~10 s for the two parts: past the 3 s

    with RawPatch(url, first, sent - first) as patch:
        patch.send(data[first:sent])
        status, headers, body = patch.response()
    assert status == 503, body
    assert headers["connection"] == "close" and b"Application Error" in body
    assert heroku.router.timeouts == 1

    # Mid-flight, with S3 still slow: whatever is committed is in S3 as Redis says.
    assert_consistent(heroku.nodes[0], upload_id, data, live=True)
    heroku.proxy.heal()
    poll(lambda: heroku.writer_gone(upload_id), 60, "for the cut PATCH's writer to let go")
    after = heroku.assert_kept(upload_id, data)
    assert after["offset"] == sent, f"the server read {sent} bytes and kept {after}"
    assert (after["committed"], after["parts"]) == (2 * P, 2)

    seen = tus_resume(url, data)
    assert heroku.router.timeouts == 1, f"the resume met another router timeout: {seen}"
    heroku.assert_stored(url, data)


def test_a_client_that_stops_sending_mid_body_is_cut_by_the_router_and_resumes(
    heroku: Heroku,
):
    """The client sends two parts and a MiB of a longer body, then nothing: the router
    resets both sides IDLE_TIMEOUT later (before the server's own read timeout). The
    server keeps all it received; the resume through the router ends exact."""
    data = payload(3 * P + 777, seed=1702)
    url = heroku.create(len(data))
    upload_id = heroku.uploads.track(url)
    sent = 2 * P + MIB

    with RawPatch(url, 0, len(data)) as patch:
        patch.send(data[:sent])
        poll(lambda: heroku.router.idle_cuts or None, 4 * IDLE_TIMEOUT, "for the idle cut")
        with pytest.raises(OSError):  # reset: no answer for the client
            patch.send(data[sent : sent + MIB])
            patch.response()
    assert heroku.router.idle_cuts == 1 and heroku.router.timeouts == 0

    poll(lambda: heroku.writer_gone(upload_id), 30, "for the cut PATCH's writer to let go")
    after = heroku.assert_kept(upload_id, data)
    assert after["offset"] == sent, f"the server received {sent} bytes and kept {after}"
    assert (after["committed"], after["parts"]) == (2 * P, 2)

    tus_resume(url, data)
    heroku.assert_stored(url, data)


def test_a_client_resuming_while_s3_stays_slow_gets_through_the_503s(heroku: Heroku):
    """S3 stays slow (1 MiB/s): every PATCH of a part or more outlasts the router's
    timeout and is answered 503 by the router, while the server goes on and commits it.
    A tus client that resumes after each 503 (HEAD, then PATCH from the offset, 423
    while the previous writer still ships its part) makes progress every round and
    ends the upload exact, without S3 ever getting faster."""
    data = payload(4 * P + 999, seed=1703)
    url = heroku.create(len(data))
    heroku.uploads.track(url)
    heroku.proxy.throttle(MIB, direction="up")  # a 5 MiB part: ~5 s, past the 3 s

    seen = tus_resume(url, data, chunk=P + MIB, timeout=240)
    assert seen.count(503) >= 3, f"the PATCHes were not cut by the router: {seen}"
    assert heroku.router.timeouts == seen.count(503)
    heroku.proxy.heal()
    heroku.assert_stored(url, data, P + MIB)  # the client's first chunk set the part size
