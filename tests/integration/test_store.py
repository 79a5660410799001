"""Fencing in the session store, against a real redis-server."""

from __future__ import annotations

import pytest
import redis

from rindle.errors import Fenced, LeaseHeld
from rindle.store import SessionStore

pytestmark = pytest.mark.integration


@pytest.fixture
def store(redis_url: str) -> SessionStore:
    return SessionStore(redis.Redis.from_url(redis_url, decode_responses=True), 3600, 30)


def test_only_one_writer_holds_the_lease(store):
    store.create("u", 100, 5 << 20, "k", "")
    store.acquire("u", "a")
    with pytest.raises(LeaseHeld):
        store.acquire("u", "b")
    store.release("u", "b")  # not b's to release
    with pytest.raises(LeaseHeld):
        store.acquire("u", "b")
    store.release("u", "a")
    store.acquire("u", "b")


def test_a_writer_whose_lease_expired_cannot_commit(store, redis_url):
    store.create("u", 100, 5 << 20, "k", "")
    store.acquire("u", "stale")
    redis.Redis.from_url(redis_url).delete("rindle:upload:{u}:writer")  # lease ran out
    store.acquire("u", "fresh")
    with pytest.raises(Fenced):
        store.commit_offset("u", "stale", 0, 50, "node")
    assert store.get("u").offset == 0
    store.commit_offset("u", "fresh", 0, 50, "node")
    assert store.get("u").offset == 50


def test_a_commit_from_a_stale_offset_is_refused(store):
    store.create("u", 100, 5 << 20, "k", "")
    store.acquire("u", "t")
    store.commit_offset("u", "t", 0, 10, "node")
    with pytest.raises(Fenced):
        store.commit_offset("u", "t", 0, 20, "node")
    assert store.get("u").offset == 10


def test_part_commit_touches_only_its_own_field(store, redis_url):
    store.create("u", 30 << 20, 5 << 20, "k", "")
    store.acquire("u", "t")
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
