"""The PATCH engine (Writer) on fakeredis, moto and a tmp tail dir, wired by rindle.Rindle.

What a client or an operator would check: the bytes in S3, the offset and parts in Redis,
the tail file on disk, and the exception a refused write raises.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import fakeredis
import pytest
import redis
from redis.exceptions import MasterDownError, ReadOnlyError

from rindle import hooks, protocol
from rindle.config import Settings
from rindle.core import Rindle
from rindle.errors import (
    BodyEnded,
    ChecksumMismatch,
    Fenced,
    LeaseHeld,
    OutcomeUnknown,
    TailMissing,
    TusError,
)
from rindle.keys import parts_key, upload_key, writer_key
from rindle.lease import ReleaseWatcher
from rindle.storage import S3Storage, SpoolFile, Tail, tail_path
from rindle.upload import State, Upload
from rindle.writer import WriteResult

from .conftest import BUCKET, PART

# -- test doubles -------------------------------------------------------------------


class RecordingJobs:
    """Stands in for rindle.jobqueue.JobQueue (RQ): records what would be enqueued."""

    def __init__(self) -> None:
        self.completions: list[str] = []
        self.clean_ups: list[str] = []

    def complete(self, upload_id: str) -> None:
        self.completions.append(upload_id)

    def ensure_completion(self, upload_id: str) -> bool:
        self.complete(upload_id)
        return True

    def clean_up(self, upload_id: str) -> None:
        self.clean_ups.append(upload_id)

    def on_complete(self, *args: object, **kwargs: object) -> None:
        pass


class QuietWatcher(ReleaseWatcher):
    """A release watcher whose pub/sub thread never starts.

    Writing does not need it: the thread only interrupts a blocked read when a release
    request is published or a client stalls. The real one, pointed at no Redis, logs a
    warning per write and keeps retrying in the background while a write runs.
    """

    def _ensure_thread(self) -> None:
        pass


class Body:
    """A request body: ``read(n)`` as the web layer gives it to the writer.

    ``ends_after``: raise BodyEnded (client gone) once that many bytes were read.
    ``on_read(consumed)``: called after each read, to act while the body streams.
    """

    def __init__(
        self,
        data: bytes,
        chunk: int = 256 * 1024,
        ends_after: int | None = None,
        on_read: Callable[[int], None] = lambda consumed: None,
    ) -> None:
        self.data = data
        self.chunk = chunk
        self.ends_after = ends_after
        self.on_read = on_read
        self.consumed = 0

    def read(self, n: int) -> bytes:
        end = len(self.data) if self.ends_after is None else self.ends_after
        if self.consumed >= end and self.ends_after is not None:
            raise BodyEnded("client went away")
        piece = self.data[self.consumed : min(self.consumed + n, self.consumed + self.chunk, end)]
        self.consumed += len(piece)
        self.on_read(self.consumed)
        return piece


class Node:
    """One web node: a Rindle wired as in production, but on fakeredis and moto."""

    def __init__(self, rindle_: Rindle, jobs: RecordingJobs) -> None:
        self.rindle = rindle_
        self.jobs = jobs
        self.settings = rindle_.settings
        self.store = rindle_.uploads
        self.lease = rindle_.lease
        self.s3 = rindle_.s3
        self.writer = rindle_.writer

    def create(self, length: int | None, metadata: str = "") -> str:
        """A new upload, as the web layer records it on POST."""
        upload_id = uuid.uuid4().hex
        part_size = self.settings.part_size
        if length is not None:
            part_size = protocol.part_size_for(length, part_size)
        self.store.create(
            upload_id, length, part_size, self.settings.s3_prefix + upload_id, metadata
        )
        return upload_id

    def write(
        self,
        upload_id: str,
        body: bytes | Body,
        offset: int | None = None,
        checksum: protocol.Checksum | None = None,
        length: int | None = None,
    ) -> WriteResult:
        """A PATCH at ``offset`` (default: the upload's)."""
        if offset is None:
            offset = self.upload(upload_id).offset
        reader = body if isinstance(body, Body) else Body(body)
        return self.writer.write(upload_id, protocol.Append(offset, checksum, length), reader.read)

    def upload(self, upload_id: str) -> Upload:
        upload = self.store.get(upload_id)
        assert upload is not None
        return upload

    def tail_path(self, upload_id: str) -> str:
        return tail_path(upload_id, self.settings.tmp_dir)

    def tail(self, upload_id: str) -> bytes | None:
        """The tail file's bytes, None when there is none."""
        try:
            return Path(self.tail_path(upload_id)).read_bytes()
        except FileNotFoundError:
            return None

    def complete(self, upload_id: str) -> str:
        """Run the completion job (what the enqueued RQ job does)."""
        return self.rindle.assembly.complete(upload_id)

    def object(self, upload_id: str) -> bytes:
        key = self.upload(upload_id).key
        return bytes(self.s3.client.get_object(Bucket=BUCKET, Key=key)["Body"].read())


MakeNode = Callable[..., Node]


@pytest.fixture
def make_node(fake_redis: fakeredis.FakeRedis, s3: S3Storage, tmp_path: Path) -> Iterator[MakeNode]:
    """``make_node(node_id="node-a")``: nodes sharing Redis, S3 and (unless told
    otherwise) a tail dir; two node ids on one dir model a misrouted resume."""
    built: list[Node] = []

    def factory(
        node_id: str = "node-a", tmp_dir: Path = tmp_path, env: dict[str, str] | None = None
    ) -> Node:
        settings = Settings.from_env(
            {
                **(env or {}),
                "REDIS_URL": "redis://127.0.0.1:9/0",  # never connected to
                "RINDLE_S3_BUCKET": BUCKET,
                "RINDLE_S3_PREFIX": "uploads/",
                "RINDLE_TMP_DIR": str(tmp_dir),
                "RINDLE_TUS_PART_SIZE": str(PART),
                "RINDLE_NODE_ID": node_id,
                "RINDLE_RELEASE_WAIT": "0",
                "RINDLE_REAP_INTERVAL": "0",  # no tail reaper thread
            }
        )
        core = Rindle(settings)
        jobs = RecordingJobs()
        # The clients and the RQ queue Rindle would build, replaced before first use.
        core.redis = fake_redis
        core.s3 = s3
        core.jobs = jobs  # type: ignore[assignment]
        core.watcher = QuietWatcher(lambda: None, settings.read_timeout)
        node = Node(core, jobs)
        built.append(node)
        return node

    yield factory
    for node in built:
        node.writer.part_uploads.shutdown(wait=True)


@pytest.fixture
def node(make_node: MakeNode) -> Node:
    return make_node()


def random_bytes(size: int) -> bytes:
    return os.urandom(size)


def md5_etag(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


def sha1_checksum(data: bytes) -> protocol.Checksum:
    checksum = protocol.parse_checksum(
        f"sha1 {base64.b64encode(hashlib.sha1(data).digest()).decode()}"
    )
    assert checksum is not None
    return checksum


# -- streaming into parts and the tail ------------------------------------------------


def test_a_body_of_two_and_a_half_parts_ships_two_parts_and_buffers_the_rest(node: Node):
    data = random_bytes(3 * PART + 1234)
    upload_id = node.create(len(data))
    sent = data[: 2 * PART + PART // 2]

    result = node.write(upload_id, sent)

    assert result.overflow is False
    upload = node.upload(upload_id)
    assert result.upload == upload
    assert upload.state is State.RECEIVING
    assert (upload.offset, upload.committed) == (len(sent), 2 * PART)
    assert upload.node == "node-a"
    parts = node.store.parts(upload_id)
    assert parts == [
        (1, md5_etag(data[:PART]), PART),
        (2, md5_etag(data[PART : 2 * PART]), PART),
    ]
    in_s3 = node.s3.client.list_parts(Bucket=BUCKET, Key=upload.key, UploadId=upload.s3_upload_id)
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in in_s3["Parts"]] == parts
    assert node.tail(upload_id) == sent[2 * PART :]
    assert not node.lease.held(upload_id)
    assert node.jobs.completions == []


def test_the_write_that_reaches_the_length_ships_the_rest_then_completion_assembles_it(
    node: Node,
):
    data = random_bytes(3 * PART + 1234)
    upload_id = node.create(len(data), "filetype dGV4dC9wbGFpbg==")
    node.write(upload_id, data[: 2 * PART + PART // 2])
    received: list[Upload] = []

    def on_received(sender: object, upload: Upload) -> None:
        received.append(upload)

    with hooks.upload_received.connected_to(on_received):
        result = node.write(upload_id, data[2 * PART + PART // 2 :])

    upload = node.upload(upload_id)
    assert result.upload == upload
    assert (upload.state, upload.offset, upload.committed) == (
        State.ASSEMBLING,
        len(data),
        len(data),
    )
    assert [(n, size) for n, _, size in node.store.parts(upload_id)] == [
        (1, PART),
        (2, PART),
        (3, PART),
        (4, 1234),
    ]
    assert node.jobs.completions == [upload_id]
    assert [u.id for u in received] == [upload_id]
    assert node.tail(upload_id) is None  # every byte is in S3
    assert not node.lease.held(upload_id)

    assert node.complete(upload_id) == "completed"
    assert node.object(upload_id) == data
    head = node.s3.client.head_object(Bucket=BUCKET, Key=upload.key)
    assert head["ContentType"] == "text/plain"
    assert node.upload(upload_id).state is State.COMPLETED


def test_parts_go_up_together_but_are_committed_in_order_within_the_disk_bound(
    make_node: MakeNode, monkeypatch: pytest.MonkeyPatch
):
    """Three parts in flight; S3 answers part 1 last. Redis still commits 1, 2, 3, ...
    (never a part after a hole), and the PATCH never holds more than (3 + 1) parts on
    disk, tail and spool files together."""
    node = make_node(env={"RINDLE_PARTS_IN_FLIGHT": "3"})
    data = random_bytes(6 * PART + 10)
    upload_id = node.create(len(data))
    files: list[SpoolFile] = []
    peak = {"disk": 0, "uploads": 0}
    running: list[int] = []
    real_init, real_write = SpoolFile.__init__, SpoolFile.write
    real_upload, real_commit = node.s3.upload_part, node.store.commit_part
    committed: list[int] = []

    def init(self: SpoolFile, fd: int) -> None:
        real_init(self, fd)
        files.append(self)

    def write(self: SpoolFile, data: bytes) -> None:
        real_write(self, data)
        # (a closed spool file is nameless: closing it freed its disk)
        peak["disk"] = max(peak["disk"], sum(f.size for f in files if not f.closed))

    def upload_part(key, s3_upload_id, number, body, size):  # type: ignore[no-untyped-def]
        running.append(number)
        peak["uploads"] = max(peak["uploads"], len(running))
        if number == 1:
            time.sleep(0.3)  # the first part is the slowest
        try:
            return real_upload(key, s3_upload_id, number, body, size)
        finally:
            running.remove(number)

    def commit_part(upload_id, token, before, after, part, *args):  # type: ignore[no-untyped-def]
        committed.append(part[0])
        return real_commit(upload_id, token, before, after, part, *args)

    monkeypatch.setattr(SpoolFile, "__init__", init)
    monkeypatch.setattr(SpoolFile, "write", write)
    monkeypatch.setattr(node.s3, "upload_part", upload_part)
    monkeypatch.setattr(node.store, "commit_part", commit_part)

    node.write(upload_id, data[: 6 * PART - 1])

    assert committed == [1, 2, 3, 4, 5]
    assert peak["uploads"] == 3, "parts 2 and 3 went up while part 1 was slow"
    assert peak["disk"] <= 4 * PART
    upload = node.upload(upload_id)
    assert (upload.offset, upload.committed) == (6 * PART - 1, 5 * PART)
    assert node.tail(upload_id) == data[5 * PART : 6 * PART - 1]
    node.write(upload_id, data[6 * PART - 1 :])
    node.complete(upload_id)
    assert node.object(upload_id) == data


def test_an_upload_of_whole_parts_ends_with_a_full_last_part(node: Node):
    data = random_bytes(2 * PART)
    upload_id = node.create(len(data))

    node.write(upload_id, data)

    upload = node.upload(upload_id)
    assert (upload.state, upload.offset) == (State.ASSEMBLING, len(data))
    assert node.store.parts(upload_id) == [
        (1, md5_etag(data[:PART]), PART),
        (2, md5_etag(data[PART:]), PART),
    ]
    assert node.complete(upload_id) == "completed"
    assert node.object(upload_id) == data


def test_an_upload_that_fits_in_one_part_is_one_put_object(node: Node):
    data = random_bytes(1000)
    upload_id = node.create(len(data), "filetype dGV4dC9wbGFpbg==")
    node.write(upload_id, data[:400])
    assert node.upload(upload_id).s3_upload_id == ""  # nothing in S3 yet: all in the tail
    assert node.tail(upload_id) == data[:400]

    node.write(upload_id, data[400:])

    upload = node.upload(upload_id)
    assert (upload.state, upload.offset, upload.s3_upload_id) == (State.ASSEMBLING, 1000, "")
    assert node.object(upload_id) == data  # there before completion runs
    assert node.jobs.completions == [upload_id]
    assert node.complete(upload_id) == "completed"
    assert node.upload(upload_id).state is State.COMPLETED


def test_a_deferred_length_declared_with_the_last_bytes_finishes_the_upload(node: Node):
    data = random_bytes(1000)
    upload_id = node.create(None)
    node.write(upload_id, data[:600])
    assert (node.upload(upload_id).length, node.upload(upload_id).offset) == (None, 600)

    node.write(upload_id, data[600:], length=len(data))

    upload = node.upload(upload_id)
    assert (upload.state, upload.length, upload.offset) == (State.ASSEMBLING, 1000, 1000)
    assert node.object(upload_id) == data


def test_a_deferred_length_declared_at_the_offset_reached_finishes_the_upload(node: Node):
    """An empty PATCH that declares the length at the offset already reached: no bytes
    move, but the upload is received, and its receivers hear of it."""
    data = random_bytes(PART + 10)
    upload_id = node.create(None)
    node.write(upload_id, data)
    received: list[str] = []

    def on_received(sender: object, upload: Upload) -> None:
        received.append(upload.id)

    with hooks.upload_received.connected_to(on_received):
        node.write(upload_id, b"", length=len(data))

    upload = node.upload(upload_id)
    assert (upload.state, upload.length, upload.offset) == (State.ASSEMBLING, len(data), len(data))
    assert received == [upload_id]
    assert node.jobs.completions == [upload_id]
    node.complete(upload_id)
    assert node.object(upload_id) == data


def test_a_multipart_upload_whose_id_cannot_be_saved_is_aborted(
    node: Node, monkeypatch: pytest.MonkeyPatch
):
    """A DELETE between CreateMultipartUpload and saving its id: the save is refused,
    and nobody else could ever find that multipart upload, so the writer aborts it."""
    upload_id = node.create(3 * PART)

    def refused(*args: object) -> None:
        raise Fenced("the upload was deleted")

    monkeypatch.setattr(node.store, "save_s3_upload_id", refused)
    with pytest.raises(Fenced):
        node.write(upload_id, random_bytes(2 * PART))
    assert node.s3.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


# -- an early end ---------------------------------------------------------------------


@pytest.mark.parametrize("arrived", [1000, PART + 1000], ids=["in-the-tail", "a-part-and-more"])
def test_a_body_that_ends_early_keeps_what_arrived(
    node: Node, monkeypatch: pytest.MonkeyPatch, arrived: int
):
    data = random_bytes(3 * PART)
    upload_id = node.create(len(data))
    events: list[str] = []
    real_sync, real_commit = Tail.sync, node.store.commit_offset

    def sync(tail: Tail) -> None:
        events.append("sync")
        real_sync(tail)

    def commit_offset(*args: object, **kwargs: object) -> None:
        events.append("commit")
        real_commit(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Tail, "sync", sync)
    monkeypatch.setattr(node.store, "commit_offset", commit_offset)

    result = node.write(upload_id, Body(data, ends_after=arrived))

    upload = node.upload(upload_id)
    assert result.upload.offset == upload.offset == arrived
    assert upload.committed == PART * (arrived // PART)
    assert node.tail(upload_id) == data[upload.committed : arrived]
    assert events == ["sync", "commit"]  # on disk before Redis acknowledges it
    assert not node.lease.held(upload_id)
    # The client resumes where the offset says.
    node.write(upload_id, data[arrived:])
    assert node.complete(upload_id) == "completed"
    assert node.object(upload_id) == data


def test_a_release_request_makes_the_writer_keep_what_arrived_and_let_go(
    node: Node, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(node.writer.renewer, "interval", 0.01)  # renew (and look) often
    data = random_bytes(PART // 2)
    upload_id = node.create(3 * PART)

    def ask_to_let_go(consumed: int) -> None:
        if consumed == 3 * 1024:
            node.lease.request_release(upload_id)  # another PATCH wants the upload
        if consumed >= 3 * 1024:
            time.sleep(0.005)  # a client that keeps sending, at a human pace

    body = Body(data, chunk=1024, on_read=ask_to_let_go)
    node.write(upload_id, body)

    upload = node.upload(upload_id)
    assert 3 * 1024 <= upload.offset < len(data), "it let go before the body ended"
    assert upload.offset == body.consumed, "and kept every byte it read"
    assert node.tail(upload_id) == data[: upload.offset]
    assert not node.lease.held(upload_id)


def test_a_writer_that_lost_its_lease_acknowledges_nothing(node: Node, fake_redis):
    data = random_bytes(1000)
    upload_id = node.create(3 * PART)

    def lose_the_lease(consumed: int) -> None:
        if consumed == 500:  # the lease ran out and another request took it
            fake_redis.set(writer_key(upload_id), "intruder")

    with pytest.raises(Fenced):
        node.write(upload_id, Body(data, chunk=100, on_read=lose_the_lease))

    assert node.upload(upload_id).offset == 0
    assert node.lease.holder(upload_id) == "intruder"  # not released by the stale writer


# -- checksums ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [500, PART + 10], ids=["small", "more-than-a-part"])
def test_a_checksum_mismatch_keeps_nothing_of_the_patch(node: Node, size: int):
    data = random_bytes(1000 + size)
    upload_id = node.create(3 * PART)
    node.write(upload_id, data[:1000])

    with pytest.raises(ChecksumMismatch):
        node.write(upload_id, data[1000:], checksum=sha1_checksum(b"something else"))

    upload = node.upload(upload_id)
    assert (upload.offset, upload.committed, upload.s3_upload_id) == (1000, 0, "")
    assert node.tail(upload_id) == data[:1000]
    assert node.store.parts(upload_id) == []
    assert node.s3.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert not node.lease.held(upload_id)


def test_a_matching_checksum_keeps_the_body(node: Node):
    data = random_bytes(PART + 10)
    upload_id = node.create(3 * PART)
    node.write(upload_id, data, checksum=sha1_checksum(data))
    upload = node.upload(upload_id)
    assert (upload.offset, upload.committed) == (PART + 10, PART)
    assert node.store.parts(upload_id) == [(1, md5_etag(data[:PART]), PART)]
    assert node.tail(upload_id) == data[PART:]


# -- refusals: nothing changes ----------------------------------------------------------


@pytest.mark.parametrize("damage", ["removed", "shortened"])
def test_buffered_bytes_without_their_tail_are_refused(node: Node, damage: str):
    data = random_bytes(1000)
    upload_id = node.create(3 * PART)
    node.write(upload_id, data)
    path = node.tail_path(upload_id)
    if damage == "removed":
        os.remove(path)
    else:
        os.truncate(path, 600)
    before = node.upload(upload_id)
    body = Body(random_bytes(100))

    with pytest.raises(TailMissing) as caught:
        node.write(upload_id, body)

    assert caught.value.status == 500
    assert (caught.value.expected, caught.value.found) == (
        1000,
        None if damage == "removed" else 600,
    )
    assert caught.value.node == "node-a"
    assert node.upload(upload_id) == before
    assert node.tail(upload_id) == (None if damage == "removed" else data[:600])
    assert body.consumed == 0
    assert not node.lease.held(upload_id)


def test_a_resume_on_another_node_is_refused_even_with_a_file_there(make_node: MakeNode):
    node_a, node_b = make_node("node-a"), make_node("node-b")  # one tail dir for both
    data = random_bytes(1000)
    upload_id = node_a.create(3 * PART)
    node_a.write(upload_id, data[:600])
    body = Body(data[600:])

    with pytest.raises(TailMissing) as caught:
        node_b.write(upload_id, body)

    assert (caught.value.node, caught.value.expected) == ("node-a", 600)
    assert body.consumed == 0
    upload = node_a.upload(upload_id)
    assert (upload.offset, upload.node) == (600, "node-a")
    assert node_a.tail(upload_id) == data[:600]
    node_a.write(upload_id, data[600:])  # the right node resumes
    assert node_a.upload(upload_id).offset == 1000


def test_at_a_part_boundary_any_node_may_resume(make_node: MakeNode, tmp_path: Path):
    node_a, node_b = make_node("node-a"), make_node("node-b", tmp_path / "b")
    data = random_bytes(PART + 100)
    upload_id = node_a.create(3 * PART)
    node_a.write(upload_id, data[:PART])
    assert node_a.upload(upload_id).buffered == 0

    node_b.write(upload_id, data[PART:])

    upload = node_b.upload(upload_id)
    assert (upload.offset, upload.node) == (PART + 100, "node-b")
    assert node_b.tail(upload_id) == data[PART:]


def test_a_wrong_offset_is_refused(node: Node):
    upload_id = node.create(3 * PART)
    first = random_bytes(1000)
    node.write(upload_id, first)
    body = Body(random_bytes(100))

    with pytest.raises(TusError) as caught:
        node.write(upload_id, body, offset=0)

    assert (caught.value.code, caught.value.status) == ("offset_mismatch", 409)
    assert caught.value.headers == {"Upload-Offset": "1000"}
    assert node.upload(upload_id).offset == 1000
    assert node.tail(upload_id) == first
    assert body.consumed == 0


def test_a_write_to_an_ended_upload_is_refused(node: Node):
    upload_id = node.create(3 * PART)
    node.store.set_state(upload_id, State.TERMINATED, (State.CREATED,))
    with pytest.raises(TusError) as caught:
        node.write(upload_id, b"abc", offset=0)
    assert caught.value.code == "upload_not_writable"
    assert node.upload(upload_id).offset == 0


def test_a_write_while_another_request_holds_the_lease_is_refused(node: Node):
    upload_id = node.create(3 * PART)
    node.lease.acquire(upload_id, "another-host/1/busy")
    body = Body(random_bytes(100))
    with pytest.raises(LeaseHeld):
        node.write(upload_id, body)
    assert body.consumed == 0
    assert node.upload(upload_id).offset == 0
    assert node.lease.holder(upload_id) == "another-host/1/busy"


# -- overflow -------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [0, 500])
def test_bytes_beyond_the_length_are_reported_and_the_rest_kept(node: Node, extra: int):
    data = random_bytes(1000 + extra)
    upload_id = node.create(1000)

    result = node.write(upload_id, data)

    assert result.overflow is (extra > 0)
    upload = node.upload(upload_id)
    assert (upload.state, upload.offset) == (State.ASSEMBLING, 1000)
    assert node.object(upload_id) == data[:1000]


# -- Redis faults: unknown outcomes, transient errors, descriptors (issue #18) ---------


def applied_then_lost(monkeypatch: pytest.MonkeyPatch, target: object, name: str, times: int):
    """``target.name`` runs for real, then its answer is lost ``times`` times (a
    ConnectionError after Redis applied it), then works as usual."""
    real = getattr(target, name)
    lost = {"left": times}

    def call(*args: object, **kwargs: object) -> object:
        result = real(*args, **kwargs)
        if lost["left"]:
            lost["left"] -= 1
            raise redis.ConnectionError("Connection reset by peer (the answer was lost)")
        return result

    monkeypatch.setattr(target, name, call)
    return lost


def test_a_commit_whose_answer_was_lost_is_found_on_the_retry(node: Node, monkeypatch):
    """The EXEC of the tail's commit went through but its answer was lost: the retry
    finds Redis already there (offset and state) and the PATCH succeeds; the tail holds
    every acknowledged byte (before: cut back, and every resume failed tus_tail_missing)."""
    data = random_bytes(3 * PART)
    upload_id = node.create(len(data))
    applied_then_lost(monkeypatch, node.store, "fenced", 1)

    result = node.write(upload_id, data[: PART // 2])

    assert result.upload.offset == PART // 2
    assert node.tail(upload_id) == data[: PART // 2]
    node.write(upload_id, data[PART // 2 :])
    assert node.complete(upload_id) == "completed"
    assert node.object(upload_id) == data


def test_a_failed_expiry_index_update_after_a_commit_undoes_nothing(node: Node, monkeypatch):
    """The commit is in Redis; the index update after it fails: logged, never undone."""
    data = random_bytes(3 * PART)
    upload_id = node.create(len(data))

    def index_down(*args: object) -> None:
        raise redis.ConnectionError("Redis went away")

    monkeypatch.setattr(node.store, "index_expiry", index_down)
    result = node.write(upload_id, data[: PART + 1000])

    assert result.upload.offset == PART + 1000
    assert node.tail(upload_id) == data[PART : PART + 1000]
    monkeypatch.undo()
    node.write(upload_id, data[PART + 1000 :])
    assert node.complete(upload_id) == "completed"
    assert node.object(upload_id) == data


def test_an_outcome_still_unknown_when_the_lease_runs_out_keeps_the_tail(node: Node, monkeypatch):
    """Redis applied the commit, then stayed out of reach: the PATCH fails with an
    unknown outcome (503), but the tail keeps the bytes Redis now acknowledges."""
    data = random_bytes(3 * PART)
    upload_id = node.create(len(data))
    applied_then_lost(monkeypatch, node.store, "fenced", 10**6)
    monkeypatch.setattr(node.writer.renewer, "ttl", 0.3)  # the lease's time runs out fast

    with pytest.raises(OutcomeUnknown) as raised:
        node.write(upload_id, data[:1000])

    assert raised.value.status == 503 and raised.value.headers["Retry-After"]
    assert node.upload(upload_id).offset == 1000, "Redis did apply it"
    assert node.tail(upload_id) == data[:1000], "and the bytes it names are kept"
    monkeypatch.undo()
    node.lease.release(upload_id, node.lease.holder(upload_id) or "")
    node.write(upload_id, data[1000:])
    assert node.complete(upload_id) == "completed"
    assert node.object(upload_id) == data


def test_a_saved_s3_upload_id_whose_answer_was_lost_is_not_aborted(node: Node, monkeypatch):
    """save_s3_upload_id went through but raised: Redis records the multipart upload, so
    it must not be aborted (before: aborted, and the next PATCH got 410)."""
    data = random_bytes(3 * PART)
    upload_id = node.create(len(data))
    applied_then_lost(monkeypatch, node.store, "save_s3_upload_id", 1)

    node.write(upload_id, data[: 2 * PART])

    upload = node.upload(upload_id)
    assert upload.committed == 2 * PART
    node.write(upload_id, data[2 * PART :])
    assert node.complete(upload_id) == "completed"
    assert node.object(upload_id) == data


@pytest.mark.parametrize("error", ["reset", "READONLY", "LOADING", "MASTERDOWN", "pool"])
def test_transient_redis_errors_during_a_commit_are_waited_out(node: Node, monkeypatch, error):
    """A failover or a dropped connection (nothing applied) for a moment: the PATCH
    waits and goes on, not a 503."""
    errors = {
        "reset": redis.ConnectionError("Connection reset by peer"),
        "READONLY": ReadOnlyError("You can't write against a read only replica."),
        "LOADING": redis.BusyLoadingError("Redis is loading the dataset in memory"),
        "MASTERDOWN": MasterDownError("Link with MASTER is down"),
        "pool": redis.ConnectionError("No connection available."),
    }
    data = random_bytes(2 * PART + 10)
    upload_id = node.create(len(data))
    real = node.store.fenced
    failures = {"left": 3}

    def flaky(*args: object, **kwargs: object) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise errors[error]
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(node.store, "fenced", flaky)
    node.write(upload_id, data)

    assert failures["left"] == 0
    assert node.complete(upload_id) == "completed"
    assert node.object(upload_id) == data


def test_a_40_part_patch_holds_at_most_parts_in_flight_plus_two_descriptors(
    make_node: MakeNode, monkeypatch
):
    """A spool file is closed once its part is committed (before: every part's file
    stayed open until the PATCH ended, ~1,280 for a 10 GiB PATCH)."""
    node = make_node(env={"RINDLE_PARTS_IN_FLIGHT": "2"})
    size = 40 * PART + 7
    upload_id = node.create(size)

    def open_fds() -> int:
        """This process's descriptors of files in the tail dir (tail and spools)."""
        count = 0
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/self/fd/{fd}").startswith(node.settings.tmp_dir)
        return count

    before = open_fds()
    peak = {"fds": 0}

    def upload_part(key, s3_upload_id, number, body, part_size):  # type: ignore[no-untyped-def]
        digest = hashlib.md5()
        while chunk := body.read(1 << 20):  # S3 reads the body; nothing kept in memory
            digest.update(chunk)
        peak["fds"] = max(peak["fds"], open_fds() - before)
        return f'"{digest.hexdigest()}"'

    monkeypatch.setattr(node.s3, "upload_part", upload_part)

    class Stream:  # 40 parts of zeros, without holding them in memory
        def __init__(self) -> None:
            self.left = size

        def read(self, n: int) -> bytes:
            piece = min(n, self.left, 1 << 20)
            self.left -= piece
            peak["fds"] = max(peak["fds"], open_fds() - before)
            return bytes(piece)

    node.writer.write(upload_id, protocol.Append(0, None, None), Stream().read)

    assert node.upload(upload_id).state == State.ASSEMBLING
    assert len(node.store.parts(upload_id)) == 41
    assert peak["fds"] <= node.settings.parts_in_flight + 2, peak


# -- a record rolled back (a replica promoted without the last commits) ---------------


class Rollback:
    """What a replica promoted without the commits made after ``take()`` holds: the
    upload's hash and parts as they were then (fakeredis: copied, then put back)."""

    def __init__(self, node: Node, upload_id: str) -> None:
        self.redis = node.store.redis
        self.keys = (upload_key(upload_id), parts_key(upload_id))
        self.saved: dict[str, dict[str, str]] = {}

    def take(self) -> None:
        self.saved = {key: self.redis.hgetall(key) for key in self.keys}

    def promote(self) -> None:
        for key, fields in self.saved.items():
            self.redis.delete(key)
            if fields:
                self.redis.hset(key, mapping=fields)


def shared_nodes(make_node: MakeNode, tmp_path: Path) -> tuple[Node, Node]:
    """Two nodes in shared tail mode, each with a tail dir of its own."""
    a, b = (
        make_node(name, tmp_dir=tmp_path / name, env={"RINDLE_TAIL_STORE": "s3"})
        for name in ("node-a", "node-b")
    )
    return a, b


@pytest.mark.parametrize("lost", ["a-tail-commit", "a-part-and-a-tail-commit"])
def test_a_record_rolled_back_in_local_mode_resumes_exact(node: Node, lost: str):
    """The last PATCH's commits are lost: the client hears the older offset and resumes.
    Within a part the longer tail is cut back. Across a part the tail holds bytes from
    a later offset, which must never pass for the record's (before: they did, and the
    object was corrupt): the upload goes back to its last recorded part (409 with that
    offset), and the client resends from there."""
    data = random_bytes(3 * PART + 123)
    upload_id = node.create(len(data))
    node.write(upload_id, data[:1000])
    rollback = Rollback(node, upload_id)
    rollback.take()
    end = 3000 if lost == "a-tail-commit" else PART + 2000
    node.write(upload_id, data[1000:end])
    rollback.promote()

    offset = node.upload(upload_id).offset
    assert offset == 1000
    if lost == "a-part-and-a-tail-commit":
        with pytest.raises(TusError) as refused:
            node.write(upload_id, data[offset:], offset=offset)
        assert refused.value.code == "offset_mismatch"
        offset = int(refused.value.headers["Upload-Offset"])
        assert offset == node.upload(upload_id).offset == 0
    node.write(upload_id, data[offset:], offset=offset)
    assert node.complete(upload_id) == "completed"
    assert node.object(upload_id) == data


def test_a_record_rolled_back_in_shared_mode_finds_its_copy_on_any_node(
    make_node: MakeNode, tmp_path: Path
):
    """The previous shared copy stays until a later PATCH: a record rolled back past a
    part and a tail commit still names bytes S3 holds, and another node resumes exact."""
    a, b = shared_nodes(make_node, tmp_path)
    data = random_bytes(3 * PART + 123)
    upload_id = a.create(len(data))
    a.write(upload_id, data[:1000])
    rollback = Rollback(a, upload_id)
    rollback.take()
    a.write(upload_id, data[1000 : PART + 2000])
    rollback.promote()

    assert b.upload(upload_id).offset == 1000
    b.write(upload_id, data[1000:], offset=1000)
    assert b.complete(upload_id) == "completed"
    assert b.object(upload_id) == data


def test_a_fetched_tail_never_passes_for_older_bytes_after_a_rollback(
    make_node: MakeNode, tmp_path: Path
):
    """Node A fetched B's shared copy (bytes from a later part) into its file without
    committing anything; then the record rolls back to a commit A made itself. A's file
    must not pass for the bytes that record names (before: its old mark did, and the
    object was corrupt): the kept previous copy is fetched instead."""
    a, b = shared_nodes(make_node, tmp_path)
    data = random_bytes(3 * PART + 123)
    upload_id = a.create(len(data))
    a.write(upload_id, data[:1000])
    rollback = Rollback(a, upload_id)
    rollback.take()
    b.write(upload_id, data[1000 : PART + 2000])
    a.write(upload_id, b"")  # fetches B's copy (bytes from PART on), commits nothing
    rollback.promote()

    a.write(upload_id, data[1000:], offset=1000)
    assert a.complete(upload_id) == "completed"
    assert a.object(upload_id) == data


def test_request_threads_send_at_most_request_sends_bodies_to_s3_at_once(node: Node, monkeypatch):
    """Many uploads ending together (each one PutObject from its request thread) send at
    most REQUEST_SENDS bodies to S3 at once; the others wait their turn, none is lost."""
    from concurrent.futures import ThreadPoolExecutor

    from rindle.writer import REQUEST_SENDS

    lock, running, peak = threading.Lock(), [0], [0]
    real_put = node.s3.put_object

    def slow_put(*args, **kwargs):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            time.sleep(0.05)  # long enough for the others to pile up
            return real_put(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(node.s3, "put_object", slow_put)
    uploads = {node.create(1000): os.urandom(1000) for _ in range(REQUEST_SENDS + 16)}

    with ThreadPoolExecutor(len(uploads)) as pool:
        results = list(pool.map(lambda item: node.write(item[0], item[1]), uploads.items()))

    assert all(r.upload.state == State.ASSEMBLING for r in results)
    assert peak[0] <= REQUEST_SENDS, f"at most {REQUEST_SENDS} at once, saw {peak[0]}"
    for upload_id, data in uploads.items():
        node.complete(upload_id)
        assert node.object(upload_id) == data


def test_a_redis_reset_at_the_enqueue_of_the_completion_is_waited_out(node: Node, monkeypatch):
    """The last commit went through, then the enqueue of the completion met a reset (a
    campaign saw it): the client is told offset == length and may never ask again, so the
    writer retries the enqueue while its lease lasts rather than leave it to the sweep."""
    failures = [redis.ConnectionError("Connection reset by peer")]
    real_complete = node.jobs.complete

    def flaky_complete(upload_id: str) -> None:
        if failures:
            raise failures.pop()
        real_complete(upload_id)

    monkeypatch.setattr(node.jobs, "complete", flaky_complete)
    upload_id = node.create(1000)

    node.write(upload_id, os.urandom(1000))

    assert node.jobs.completions == [upload_id]
