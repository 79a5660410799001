"""A managed Redis fails over behind the same address (Heroku's premium plans do): a
replica is promoted, and the address then leads to it. Here with real redis-servers: the
app's Redis (the primary) has a replica that reaches it through a fault proxy, so that
replication can be held back or slowed; the failover promotes the replica, then makes the
old primary take the replica's data (a full resync: READONLY meanwhile) and serve again.
What the app sees at its one address is a Redis that answered READONLY for a moment and
then lacks the writes the replica never got."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from devstack.services import RedisServer, SeaweedS3
from tests.conftest import _STACKS, Stack
from tests.e2e.conftest import MIB, TUS, Uploads, own_stack, payload, poll, upload_id_of
from tests.e2e.test_faults import PATCH, P, create, head_offset, rindle_cli, tus_resume
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.e2e


class Pair:
    """A primary (the app's Redis) and its replica, linked through ``link``."""

    def __init__(self, root: Path) -> None:
        self.primary = RedisServer(log_path=root / "primary.log").start()
        self.replica = RedisServer(log_path=root / "replica.log").start()
        self.link = FaultProxy(("127.0.0.1", self.primary.port), name="replication").start()
        self.p = redis.Redis(port=self.primary.port, decode_responses=True)
        self.r = redis.Redis(port=self.replica.port, decode_responses=True)
        self.follow()

    def follow(self) -> None:
        """(Again) the replica follows the primary, in sync when this returns."""
        self.link.heal()
        self.r.replicaof("127.0.0.1", self.link.port)
        self.wait_linked(self.r)
        self.wait_caught_up()

    def wait_linked(self, client: redis.Redis) -> None:
        poll(
            lambda: client.info("replication").get("master_link_status") == "up" or None,
            30,
            "for the replica's link",
        )

    def wait_caught_up(self) -> None:
        def caught_up() -> bool | None:
            offset = self.p.info("replication")["master_repl_offset"]
            return self.r.info("replication").get("slave_repl_offset", -1) >= offset or None

        poll(caught_up, 30, "for the replica to catch up")

    def fail_over(self) -> None:
        """The replica becomes the primary with what it has; the app's address then
        serves that data (the old primary resyncs from it, then serves again)."""
        self.r.replicaof("NO", "ONE")
        self.p.replicaof("127.0.0.1", self.replica.port)
        self.wait_linked(self.p)
        self.p.replicaof("NO", "ONE")

    def stop(self) -> None:
        self.link.stop()
        for client in (self.p, self.r):
            client.close()
        self.replica.stop()
        self.primary.stop()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    made = Pair(tmp_path_factory.mktemp("redis-pair"))
    yield made
    made.stop()


@pytest.fixture(params=["local", "s3"], ids=["local-tail", "shared-tail"])
def failover(
    request: pytest.FixtureRequest,
    pair: Pair,
    s3_server: SeaweedS3,
    tmp_path: Path,
) -> Iterator[Uploads]:
    """A stack on the pair's primary that does not wait for the replica (so that a
    failover can lose what it acknowledged)."""
    pair.follow()
    with own_stack(
        pair.primary,
        s3_server,
        tmp_path,
        RINDLE_TAIL_STORE=request.param,
        RINDLE_REDIS_WAIT_REPLICAS=0,
    ) as stack:
        request.node.stash[_STACKS] = [stack]
        uploads = Uploads(stack)
        yield uploads
        uploads.cleanup()


def test_a_failover_that_lost_the_last_patch_resumes_exact(failover: Uploads, pair: Pair):
    """Without waiting for replicas (RINDLE_REDIS_WAIT_REPLICAS=0), the replica never got
    the second PATCH (a part and a tail commit). After the
    failover HEAD reports the older offset, and the client's resume ends exact: in local
    mode the tail's bytes from a later part are never taken for the record's (the
    upload goes back to its last part), in shared mode the previous copy is still in
    S3."""
    stack: Stack = failover.stack
    data = payload(3 * P + 123, seed=801)
    url = create(stack, len(data))
    failover.track(url)
    r = requests.patch(url, data=data[:MIB], headers={**PATCH, "Upload-Offset": "0"}, timeout=60)
    assert r.status_code == 204
    pair.wait_caught_up()
    pair.link.stall()  # replication held back from here on
    end = P + 2 * MIB
    r = requests.patch(
        url, data=data[MIB:end], headers={**PATCH, "Upload-Offset": str(MIB)}, timeout=60
    )
    assert r.status_code == 204 and r.headers["Upload-Offset"] == str(end)

    pair.fail_over()

    assert head_offset(url) == MIB, "the promoted replica lacks the second PATCH"
    seen = tus_resume(url, data)
    assert 500 not in seen, seen  # never tus_tail_missing
    failover.wait_completed(upload_id_of(url))
    # The multipart upload the lost PATCH created is one no record names: the orphan
    # sweep (the clock's) aborts it, and nothing else is left.
    rindle_cli(stack, "abort-orphans", "--grace", "0")
    failover.assert_stored(url, data)


def test_a_patch_during_a_failover_waits_through_readonly(failover: Uploads, pair: Pair):
    """The app's Redis answers READONLY while it resyncs from the promoted replica: a
    PATCH that commits meanwhile waits it out and answers 204 (before: 503)."""
    stack: Stack = failover.stack
    data = payload(P + 3 * MIB, seed=802)
    url = create(stack, len(data))
    failover.track(url)
    pair.r.replicaof("NO", "ONE")
    pair.link.stall()
    pair.p.replicaof("127.0.0.1", pair.replica.port)  # READONLY from now on ...
    pair.wait_linked(pair.p)

    def serve_again() -> None:  # ... until the old primary serves again, 2 s later
        time.sleep(2)
        pair.p.replicaof("NO", "ONE")

    promoter = threading.Thread(target=serve_again)
    promoter.start()
    try:
        r = requests.patch(url, data=data, headers={**PATCH, "Upload-Offset": "0"}, timeout=60)
    finally:
        promoter.join()
    assert r.status_code == 204, r.text
    failover.assert_stored(url, data)


@pytest.mark.parametrize("wait", ["1", "2"])
def test_with_wait_replicas_an_acknowledged_offset_survives_a_failover(
    pair: Pair, s3_server: SeaweedS3, tmp_path: Path, request: pytest.FixtureRequest, wait: str
):
    """RINDLE_REDIS_WAIT_REPLICAS=1 (the default; 2 with one replica connected waits for
    that one) and a replica slow to follow (its link throttled): the 204 comes once the
    replica holds the commit, so a failover right after it keeps the offset the client
    was told; afterwards, with no replica left, nothing waits."""
    pair.follow()
    with own_stack(pair.primary, s3_server, tmp_path, RINDLE_REDIS_WAIT_REPLICAS=wait) as stack:
        request.node.stash[_STACKS] = [stack]
        uploads = Uploads(stack)
        data = payload(2 * P, seed=803)
        url = create(stack, len(data))
        uploads.track(url)
        pair.link.throttle(2000, "down")  # ~0.3 s for a commit to reach the replica
        r = requests.patch(
            url, data=data[: 3 * MIB], headers={**PATCH, "Upload-Offset": "0"}, timeout=60
        )
        assert r.status_code == 204
        pair.link.stall()
        pair.fail_over()
        assert head_offset(url) == 3 * MIB, "the offset the client saw survived"
        assert tus_resume(url, data)[-1:] != [500]
        uploads.assert_stored(url, data)
        uploads.cleanup()


def test_an_offset_the_replica_does_not_confirm_is_not_acknowledged(
    pair: Pair, s3_server: SeaweedS3, tmp_path: Path, request: pytest.FixtureRequest
):
    """The default (one replica, Redis has one) and a replica that stopped following: the
    PATCH's commit is in the primary only, so its answer is 503 with Retry-After, not a
    204 with an offset a failover could take back; HEAD says the same. Once the replica
    caught up, HEAD reports the offset and the upload ends exact."""
    pair.follow()
    with own_stack(pair.primary, s3_server, tmp_path) as stack:
        request.node.stash[_STACKS] = [stack]
        uploads = Uploads(stack)
        data = payload(P + MIB, seed=804)
        url = create(stack, len(data))
        uploads.track(url)
        pair.link.stall()
        r = requests.patch(
            url, data=data[: 2 * MIB], headers={**PATCH, "Upload-Offset": "0"}, timeout=60
        )
        assert r.status_code == 503 and r.headers["Retry-After"], r.text
        assert r.json()["error"] == "redis_unavailable"
        assert requests.head(url, headers=TUS, timeout=30).status_code == 503
        pair.link.heal()
        assert head_offset(url) == 2 * MIB
        assert tus_resume(url, data)[-1:] == [204]
        uploads.assert_stored(url, data)
        uploads.cleanup()


def test_a_creation_the_replica_does_not_confirm_gives_out_no_url(
    pair: Pair, s3_server: SeaweedS3, tmp_path: Path, request: pytest.FixtureRequest
):
    """The default (one replica) and a replica that stopped following: a POST's record is
    in the primary only, so the answer is 503 with Retry-After, not a 201 whose Location
    a failover could forget (the client would meet 404 and start again). Once the replica
    follows again, a POST is 201 and the upload ends exact."""
    pair.follow()
    with own_stack(pair.primary, s3_server, tmp_path) as stack:
        request.node.stash[_STACKS] = [stack]
        uploads = Uploads(stack)
        pair.link.stall()
        r = requests.post(stack.files_url, headers={**TUS, "Upload-Length": "10"}, timeout=60)
        assert r.status_code == 503 and r.headers["Retry-After"], r.text
        assert r.json()["error"] == "redis_unavailable"
        assert "Location" not in r.headers
        pair.link.heal()
        data = payload(10, seed=805)
        url = create(stack, len(data))
        uploads.track(url)
        assert tus_resume(url, data)[-1:] == [204]
        uploads.assert_stored(url, data)
        uploads.cleanup()
