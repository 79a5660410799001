"""Fencing in the upload store and the writer lease, against a real redis-server."""

from __future__ import annotations

import pytest
import redis

from rindle.errors import Fenced, LeaseHeld
from rindle.lease import Lease
from rindle.store import UploadStore

pytestmark = pytest.mark.integration


@pytest.fixture
def store(redis_url: str) -> UploadStore:
    return UploadStore(redis.Redis.from_url(redis_url, decode_responses=True), 3600, 30)


@pytest.fixture
def lease(store: UploadStore) -> Lease:
    return Lease(store, release_wait=0)


def test_only_one_writer_holds_the_lease(store, lease):
    store.create("u", 100, 5 << 20, "k", "")
    lease.acquire("u", "a")
    with pytest.raises(LeaseHeld):
        lease.acquire("u", "b")
    lease.release("u", "b")  # not b's to release
    with pytest.raises(LeaseHeld):
        lease.acquire("u", "b")
    lease.release("u", "a")
    lease.acquire("u", "b")


def test_a_writer_whose_lease_expired_cannot_commit(store, lease, redis_url):
    store.create("u", 100, 5 << 20, "k", "")
    lease.acquire("u", "stale")
    redis.Redis.from_url(redis_url).delete("rindle:upload:{u}:writer")  # lease ran out
    lease.acquire("u", "fresh")
    with pytest.raises(Fenced):
        store.commit_offset("u", "stale", 0, 50, "node")
    assert store.get("u").offset == 0
    store.commit_offset("u", "fresh", 0, 50, "node")
    assert store.get("u").offset == 50


def test_a_commit_from_a_stale_offset_is_refused(store, lease):
    store.create("u", 100, 5 << 20, "k", "")
    lease.acquire("u", "t")
    store.commit_offset("u", "t", 0, 10, "node")
    with pytest.raises(Fenced):
        store.commit_offset("u", "t", 0, 20, "node")
    assert store.get("u").offset == 10


def test_part_commit_touches_only_its_own_field(store, lease, redis_url):
    store.create("u", 30 << 20, 5 << 20, "k", "")
    lease.acquire("u", "t")
    offset = 0
    for number in range(1, 4):
        part = (number, f'"etag{number}"', 5 << 20)
        store.commit_part("u", "t", offset, offset + (5 << 20), part, "node")
        offset += 5 << 20
    assert store.parts("u") == [(n, f'"etag{n}"', 5 << 20) for n in range(1, 4)]
    upload = store.get("u")
    assert (upload.offset, upload.committed, upload.buffered) == (15 << 20, 15 << 20, 0)
    r = redis.Redis.from_url(redis_url)
    assert all(r.ttl(k) > 0 for k in r.keys("rindle:upload:{u}*"))  # nothing lives forever
