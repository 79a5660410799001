"""UploadStore on fakeredis: the record, fenced changes, states, the expiry index."""

from __future__ import annotations

import time

import fakeredis
import pytest

from rindle.errors import Fenced
from rindle.keys import EXPIRY_INDEX, parts_key, upload_key, writer_key
from rindle.lease import Lease
from rindle.store import ASSEMBLY_CHECK_SECONDS, TOMBSTONE_SECONDS, UploadStore
from rindle.upload import ENDED, WRITABLE, State

from .conftest import EXPIRATION, PART

NODE = "node-a"


@pytest.fixture
def writing(store: UploadStore, lease: Lease) -> str:
    """An upload of 3 parts whose writer lease token "t" holds."""
    store.create("u", 3 * PART, PART, "uploads/u", "")
    lease.acquire("u", "t")
    return "u"


def expiry_score(client: fakeredis.FakeRedis, upload_id: str) -> float | None:
    return client.zscore(EXPIRY_INDEX, upload_id)


# -- the record --------------------------------------------------------------------


def test_create_then_get_round_trips(store: UploadStore, fake_redis: fakeredis.FakeRedis):
    before = time.time()
    created = store.create("u", 1000, PART, "uploads/u", "filename aGVsbG8=")
    fetched = store.get("u")
    assert fetched == created
    assert fetched.state is State.CREATED
    assert (fetched.length, fetched.offset, fetched.committed, fetched.buffered) == (1000, 0, 0, 0)
    assert (fetched.part_size, fetched.key, fetched.metadata) == (
        PART,
        "uploads/u",
        "filename aGVsbG8=",
    )
    assert (fetched.s3_upload_id, fetched.node, fetched.concat, fetched.partials) == (
        "",
        "",
        "",
        (),
    )
    assert before <= fetched.created_at <= time.time()
    assert fetched.expires_at == pytest.approx(fetched.created_at + EXPIRATION)
    # What an operator reads in Redis: the enum's value, an expiring key, an index entry.
    assert fake_redis.hget(upload_key("u"), "state") == "created"
    assert EXPIRATION < fake_redis.ttl(upload_key("u")) <= EXPIRATION + TOMBSTONE_SECONDS
    assert expiry_score(fake_redis, "u") == pytest.approx(fetched.expires_at)


def test_a_deferred_length_reads_back_as_none(store: UploadStore, fake_redis):
    store.create("u", None, PART, "uploads/u", "")
    assert store.get("u").length is None
    assert fake_redis.hget(upload_key("u"), "length") == ""


def test_a_final_upload_starts_assembling_at_its_length(store: UploadStore):
    store.create("f", 30, PART, "uploads/f", "", State.ASSEMBLING, "final", ("p1", "p2"))
    upload = store.get("f")
    assert (upload.state, upload.offset, upload.is_final) == (State.ASSEMBLING, 30, True)
    assert upload.partials == ("p1", "p2")


def test_an_empty_upload_created_completed_is_a_tombstone_from_the_start(
    store: UploadStore, fake_redis
):
    store.create("z", 0, PART, "uploads/z", "", State.COMPLETED)
    assert store.get("z").state is State.COMPLETED
    assert 0 < fake_redis.ttl(upload_key("z")) <= TOMBSTONE_SECONDS
    assert expiry_score(fake_redis, "z") is None


def test_an_unknown_upload_is_none(store: UploadStore):
    assert store.get("nope") is None
    assert store.parts("nope") == []


# -- a writer's commits ------------------------------------------------------------


def test_commit_part_records_the_part_and_moves_the_offset(store, writing, fake_redis):
    store.commit_part(writing, "t", 0, PART, (1, '"etag-1"', PART), NODE)
    store.commit_offset(writing, "t", PART, PART + 10, NODE)
    upload = store.get(writing)
    assert upload.state is State.RECEIVING
    assert (upload.offset, upload.committed, upload.buffered) == (PART + 10, PART, 10)
    assert upload.node == NODE
    assert store.parts(writing) == [(1, '"etag-1"', PART)]
    assert fake_redis.hget(parts_key(writing), "1") == f'{PART} "etag-1"'
    assert fake_redis.ttl(parts_key(writing)) > 0  # nothing lives forever


def test_a_commit_saves_a_declared_length(store: UploadStore, lease: Lease):
    store.create("d", None, PART, "uploads/d", "")
    lease.acquire("d", "t")
    store.commit_offset("d", "t", 0, 10, NODE, length=100)
    assert store.get("d").length == 100


def test_a_commit_extends_the_lease(store, writing, fake_redis):
    fake_redis.pexpire(writer_key(writing), 500)
    store.commit_offset(writing, "t", 0, 10, NODE)
    assert fake_redis.pttl(writer_key(writing)) > 500


@pytest.mark.parametrize("holder", ["someone-else", None], ids=["taken", "expired"])
def test_a_commit_without_the_lease_is_fenced(store, writing, fake_redis, holder):
    fake_redis.delete(writer_key(writing))
    if holder is not None:
        fake_redis.set(writer_key(writing), holder)
    with pytest.raises(Fenced):
        store.commit_offset(writing, "t", 0, 10, NODE)
    with pytest.raises(Fenced):
        store.commit_part(writing, "t", 0, PART, (1, '"e"', PART), NODE)
    upload = store.get(writing)
    assert (upload.state, upload.offset, upload.committed) == (State.CREATED, 0, 0)
    assert store.parts(writing) == []
    assert fake_redis.get(writer_key(writing)) == holder  # not extended, not taken


def test_a_commit_from_a_stale_offset_is_fenced(store: UploadStore, writing: str):
    store.commit_offset(writing, "t", 0, 10, NODE)
    with pytest.raises(Fenced):
        store.commit_offset(writing, "t", 0, 20, NODE)
    with pytest.raises(Fenced):
        store.commit_part(writing, "t", 0, PART, (1, '"e"', PART), NODE)
    upload = store.get(writing)
    assert (upload.offset, upload.committed) == (10, 0)
    assert store.parts(writing) == []


@pytest.mark.parametrize("state", [*ENDED, State.ASSEMBLING, State.COMPLETED])
def test_a_commit_to_an_upload_that_takes_no_bytes_is_fenced(store, writing, state):
    assert store.set_state(writing, state, WRITABLE)
    with pytest.raises(Fenced):
        store.commit_offset(writing, "t", 0, 10, NODE)
    upload = store.get(writing)
    assert (upload.state, upload.offset) == (state, 0)


def test_a_commit_whose_answer_was_lost_is_done_not_fenced(store: UploadStore, writing: str):
    """A retry of an applied commit (same token, same expected and new offset)."""
    store.commit_offset(writing, "t", 0, 10, NODE)
    store.commit_offset(writing, "t", 0, 10, NODE)  # no Fenced
    assert store.get(writing).offset == 10


def test_a_part_commit_whose_answer_was_lost_counts_its_part_once(store, writing):
    part = (1, '"etag-1"', PART)
    store.commit_part(writing, "t", 0, PART, part, NODE)
    store.commit_part(writing, "t", 0, PART, part, NODE)  # no Fenced
    upload = store.get(writing)
    assert (upload.offset, upload.committed) == (PART, PART)
    assert store.parts(writing) == [part]


def test_finishing_whose_answer_was_lost_is_done_not_fenced(store, writing, fake_redis):
    store.commit_part(writing, "t", 0, PART, (1, '"e1"', PART), NODE)
    store.commit_part(writing, "t", PART, 2 * PART, (2, '"e2"', PART), NODE)
    store.finish_receiving(writing, "t", 2 * PART, 3 * PART, (3, '"e3"', PART))
    store.finish_receiving(writing, "t", 2 * PART, 3 * PART, (3, '"e3"', PART))  # no Fenced
    upload = store.get(writing)
    assert (upload.state, upload.offset, upload.committed) == (State.ASSEMBLING, 3 * PART, 3 * PART)
    assert [n for n, _, _ in store.parts(writing)] == [1, 2, 3]


def test_a_lost_answer_does_not_excuse_another_writer(store, writing, fake_redis):
    """The state a commit meant to reach, found under someone else's lease: fenced."""
    store.commit_offset(writing, "t", 0, 10, NODE)
    fake_redis.set(writer_key(writing), "other")
    with pytest.raises(Fenced):
        store.commit_offset(writing, "t", 0, 10, NODE)


def test_a_commit_to_a_vanished_record_is_fenced(store, writing, fake_redis):
    """Evicted or deleted under a writer: Fenced, not a TypeError from the record check."""
    fake_redis.delete(upload_key(writing))
    with pytest.raises(Fenced):
        store.commit_offset(writing, "t", 0, 10, NODE)
    assert not fake_redis.exists(upload_key(writing))  # not recreated as a partial hash


def test_finish_receiving_moves_to_assembling_and_asks_the_sweep_to_look_soon(
    store, writing, fake_redis
):
    store.commit_offset(writing, "t", 0, 10, NODE)
    store.finish_receiving(writing, "t", 10, 100, None)
    upload = store.get(writing)
    assert (upload.state, upload.offset, upload.length) == (State.ASSEMBLING, 100, 100)
    assert expiry_score(fake_redis, writing) == pytest.approx(
        time.time() + ASSEMBLY_CHECK_SECONDS, abs=5
    )


def test_the_s3_upload_id_is_saved_under_the_lease(store, writing, fake_redis):
    store.save_s3_upload_id(writing, "t", "s3-id")
    assert store.get(writing).s3_upload_id == "s3-id"
    fake_redis.set(writer_key(writing), "other")
    with pytest.raises(Fenced):
        store.save_s3_upload_id(writing, "t", "s3-id-2")
    assert store.get(writing).s3_upload_id == "s3-id"


# -- changes without a writer --------------------------------------------------------


def test_set_state_moves_only_from_an_expected_state(store: UploadStore):
    store.create("u", 100, PART, "uploads/u", "")
    assert not store.set_state("u", State.COMPLETED, (State.ASSEMBLING,))
    assert store.get("u").state is State.CREATED
    assert store.set_state("u", State.TERMINATED, (*WRITABLE, State.ASSEMBLING))
    assert store.get("u").state is State.TERMINATED
    # Of two racing callers, one wins: the second finds the state moved on.
    assert not store.set_state("u", State.TERMINATED, (*WRITABLE, State.ASSEMBLING))
    assert not store.set_state("u", State.EXPIRED, WRITABLE)
    assert store.get("u").state is State.TERMINATED


def test_set_state_on_an_unknown_upload_does_nothing(store: UploadStore, fake_redis):
    assert not store.set_state("nope", State.TERMINATED, WRITABLE)
    assert not fake_redis.exists(upload_key("nope"))


@pytest.mark.parametrize("final", [*ENDED, State.COMPLETED])
def test_an_ended_or_completed_upload_becomes_a_tombstone(store, writing, fake_redis, final):
    store.commit_part(writing, "t", 0, PART, (1, '"e"', PART), NODE)
    assert fake_redis.ttl(upload_key(writing)) > TOMBSTONE_SECONDS  # live: expiry + 7 days
    assert store.set_state(writing, final, WRITABLE)
    for key in (upload_key(writing), parts_key(writing)):
        assert TOMBSTONE_SECONDS - 60 < fake_redis.ttl(key) <= TOMBSTONE_SECONDS
    assert expiry_score(fake_redis, writing) is None  # the sweep has nothing left to do


def test_a_move_to_a_live_state_keeps_the_keys_live(store, fake_redis):
    store.create("u", 100, PART, "uploads/u", "")
    assert store.set_state("u", State.ASSEMBLING, WRITABLE)
    assert fake_redis.ttl(upload_key("u")) > TOMBSTONE_SECONDS
    assert expiry_score(fake_redis, "u") is not None


def test_set_state_before_a_time_waits_for_the_expiry(store: UploadStore):
    upload = store.create("u", 100, PART, "uploads/u", "")
    assert not store.set_state("u", State.EXPIRED, WRITABLE, before=upload.expires_at - 1)
    assert store.get("u").state is State.CREATED
    assert store.set_state("u", State.EXPIRED, WRITABLE, before=upload.expires_at + 1)
    assert store.get("u").state is State.EXPIRED


def test_the_first_assembly_upload_id_wins(store: UploadStore):
    store.create("f", 30, PART, "uploads/f", "", State.ASSEMBLING, "final", ("p1",))
    assert store.save_assembly_upload_id("f", "first") == "first"
    assert store.save_assembly_upload_id("f", "second") == "first"  # a retried job
    assert store.get("f").s3_upload_id == "first"


def test_an_assembly_upload_id_needs_an_assembling_upload(store: UploadStore):
    store.create("u", 30, PART, "uploads/u", "")
    with pytest.raises(Fenced):
        store.save_assembly_upload_id("u", "id")
    assert store.get("u").s3_upload_id == ""


# -- the expiry index and scans ------------------------------------------------------


def test_due_for_sweep_lists_what_expired_oldest_first(store: UploadStore):
    now = time.time()
    store.create("later", 1, PART, "uploads/later", "")
    store.index_expiry("old", now - 100)
    store.index_expiry("older", now - 200)
    assert store.due_for_sweep(now) == ["older", "old"]
    assert store.due_for_sweep(now, limit=1) == ["older"]
    assert store.due_for_sweep(now + EXPIRATION + 1) == ["older", "old", "later"]
    store.unindex("older")
    assert store.due_for_sweep(now) == ["old"]


def test_activity_pushes_the_expiry_back(store, writing, fake_redis):
    fake_redis.hset(upload_key(writing), "expires_at", time.time() - 1)
    store.index_expiry(writing, time.time() - 1)
    assert store.due_for_sweep(time.time()) == [writing]
    store.commit_offset(writing, "t", 0, 10, NODE)
    assert store.due_for_sweep(time.time()) == []
    assert store.get(writing).expires_at == pytest.approx(time.time() + EXPIRATION, abs=5)


def test_ids_lists_uploads_only(store: UploadStore, lease: Lease, fake_redis):
    for upload_id in ("b", "a", "x/y:z"):
        store.create(upload_id, 3 * PART, PART, f"uploads/{upload_id}", "")
    lease.acquire("a", "t")  # a writer key
    store.commit_part("a", "t", 0, PART, (1, '"e"', PART), NODE)  # a parts key
    lease.request_release("b")  # a release key
    fake_redis.set("rindle:reaper:node:/tmp", "1")
    assert store.ids() == ["a", "b", "x/y:z"]


def test_open_multipart_ids_come_from_uploads_in_the_given_states(store, lease):
    for upload_id in ("open", "done", "none"):
        store.create(upload_id, 3 * PART, PART, f"uploads/{upload_id}", "")
        lease.acquire(upload_id, "t")
    store.save_s3_upload_id("open", "t", "s3-open")
    store.save_s3_upload_id("done", "t", "s3-done")
    store.set_state("done", State.COMPLETED, WRITABLE)
    assert store.open_multipart_ids(WRITABLE) == {"s3-open"}
    assert store.open_multipart_ids((State.COMPLETED,)) == {"s3-done"}
