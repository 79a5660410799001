"""Upload bookkeeping in Redis: one hash per upload, every change fenced.

Keys of one upload share a cluster hash tag:
  rindle:upload:{id}         hash: state, length, offset, committed, part_size, upload_id, ...
  rindle:upload:{id}:parts   hash: part number -> "<size> <etag>" (a commit is O(1))
  rindle:upload:{id}:writer  the writer lease: a random token with a TTL kept by Redis
Every change runs in WATCH/MULTI and re-checks the writer token and the offset it
started from, so a stale request can never overwrite a newer one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from redis.client import Pipeline

from rindle.errors import Fenced, LeaseHeld

CREATED, RECEIVING, ASSEMBLING, COMPLETED = "created", "receiving", "assembling", "completed"
TERMINATED, EXPIRED, FAILED = "terminated", "expired", "failed"
WRITABLE = (CREATED, RECEIVING)
ENDED = (TERMINATED, EXPIRED, FAILED)

# How long keys of a finished upload stay around as a tombstone (410, not 404).
TOMBSTONE_SECONDS = 7 * 24 * 3600
# An upload still assembling after this long gets its completion job enqueued again.
ASSEMBLY_CHECK_SECONDS = 600
# Sorted set: upload id -> expires_at, for the expiry sweep.
EXPIRY_INDEX = "rindle:expiry"


def _declared(length: int | None) -> dict[str, int]:
    return {} if length is None else {"length": length}


def upload_key(upload_id: str) -> str:
    return f"rindle:upload:{{{upload_id}}}"


def parts_key(upload_id: str) -> str:
    return f"rindle:upload:{{{upload_id}}}:parts"


def writer_key(upload_id: str) -> str:
    return f"rindle:upload:{{{upload_id}}}:writer"


def release_key(upload_id: str) -> str:
    return f"rindle:upload:{{{upload_id}}}:release"


# Pub/sub channel on which a request asks the writer of an upload to let go.
RELEASE_CHANNEL = "rindle:release"
RELEASE_REQUEST_MS = 10_000
RELEASE_NOW = "now"  # any writer lets go (a new PATCH: one writer at a time)
RELEASE_IF_IDLE = "idle"  # only a writer receiving nothing (a HEAD: not a monitor's)


@dataclass(frozen=True)
class Upload:
    id: str
    state: str
    length: int | None  # None until a deferred length is declared
    offset: int
    committed: int
    part_size: int
    key: str
    metadata: str
    s3_upload_id: str
    node: str
    created_at: float
    expires_at: float
    concat: str = ""  # "", "partial", or "final" ...
    partials: tuple[str, ...] = ()  # ... with the ids of its partial uploads, in order

    @property
    def is_final(self) -> bool:
        return self.concat == "final"

    @property
    def buffered(self) -> int:
        """Bytes Redis says the tail holds: acknowledged but not yet in a part."""
        return self.offset - self.committed

    @classmethod
    def from_hash(cls, upload_id: str, h: dict[str, str]) -> Upload:
        return cls(
            id=upload_id,
            state=h["state"],
            length=int(h["length"]) if h["length"] else None,
            offset=int(h["offset"]),
            committed=int(h["committed"]),
            part_size=int(h["part_size"]),
            key=h["key"],
            metadata=h.get("metadata", ""),
            s3_upload_id=h.get("upload_id", ""),
            node=h.get("node", ""),
            created_at=float(h["created_at"]),
            expires_at=float(h["expires_at"]),
            concat=h.get("concat", ""),
            partials=tuple(h.get("partials", "").split()),
        )


class SessionStore:
    def __init__(self, client: redis.Redis, expiration: int, lease_seconds: int) -> None:
        """``client`` must decode responses to str."""
        self.r = client
        self.expiration = expiration
        self.lease_ms = lease_seconds * 1000

    def _key_ttl(self) -> int:
        # Live keys outlast the upload's expiry so the sweep can still find and end it.
        return self.expiration + TOMBSTONE_SECONDS

    def create(
        self,
        upload_id: str,
        length: int | None,
        part_size: int,
        key: str,
        metadata: str,
        state: str = CREATED,
        concat: str = "",
        partials: tuple[str, ...] = (),
    ) -> Upload:
        now = time.time()
        fields = {
            "state": state,
            "length": "" if length is None else length,
            "offset": length if state in (COMPLETED, ASSEMBLING) else 0,
            "committed": 0,
            "part_size": part_size,
            "key": key,
            "metadata": metadata,
            "upload_id": "",
            "node": "",
            "created_at": now,
            "expires_at": now + self.expiration,
            "concat": concat,
            "partials": " ".join(partials),
        }
        k = upload_key(upload_id)
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(k, mapping=fields)
            pipe.expire(k, TOMBSTONE_SECONDS if state == COMPLETED else self._key_ttl())
            pipe.execute()
        if state != COMPLETED:
            self.index_expiry(upload_id, now + self.expiration)
        return Upload.from_hash(upload_id, {k2: str(v) for k2, v in fields.items()})

    def get(self, upload_id: str) -> Upload | None:
        h = self.r.hgetall(upload_key(upload_id))
        return Upload.from_hash(upload_id, h) if h else None

    def parts(self, upload_id: str) -> list[tuple[int, str, int]]:
        """Committed parts as (number, etag, size), in order."""
        raw = self.r.hgetall(parts_key(upload_id))
        result = []
        for number, value in raw.items():
            size, etag = value.split(" ", 1)
            result.append((int(number), etag, int(size)))
        return sorted(result)

    # -- the writer lease -------------------------------------------------------------

    def acquire(self, upload_id: str, token: str) -> None:
        if not self.r.set(writer_key(upload_id), token, nx=True, px=self.lease_ms):
            raise LeaseHeld(upload_id)
        self.r.delete(release_key(upload_id))  # meant for the previous holder

    def lease_held(self, upload_id: str) -> bool:
        return bool(self.r.exists(writer_key(upload_id)))

    def lease_holder(self, upload_id: str) -> str | None:
        return self.r.get(writer_key(upload_id))

    def request_release(self, upload_id: str, kind: str = RELEASE_NOW) -> None:
        """Ask the writer of ``upload_id``, on whatever node, to save what it has and let
        go: a flag its next check-in sees, and a message for a writer blocked in a read.
        RELEASE_NOW asks any writer; RELEASE_IF_IDLE only one that receives nothing."""
        with self.r.pipeline(transaction=False) as pipe:
            # An idle-only request never weakens a pending unconditional one.
            pipe.set(
                release_key(upload_id), kind, px=RELEASE_REQUEST_MS, nx=kind == RELEASE_IF_IDLE
            )
            pipe.publish(RELEASE_CHANNEL, f"{kind} {upload_id}")
            pipe.execute()

    def renew(self, upload_id: str, token: str) -> bool:
        """Extend our lease (Fenced if it was lost or the upload ended); True when another
        request asked us to let go even while bytes are flowing."""
        self._fenced(upload_id, token, None, lambda pipe: None)
        return self.r.get(release_key(upload_id)) == RELEASE_NOW

    def release(self, upload_id: str, token: str) -> None:
        """Drop the lease if it is still ours (a lost lease is someone else's now)."""
        lease = writer_key(upload_id)
        with self.r.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(lease)
                if pipe.get(lease) != token:
                    return
                pipe.multi()
                pipe.delete(lease)
                pipe.execute()
            except redis.WatchError:
                return  # it changed hands meanwhile: not ours to delete

    # -- fenced changes ---------------------------------------------------------------

    def _fenced(
        self,
        upload_id: str,
        token: str,
        expected_offset: int | None,
        apply: Callable[[Pipeline], None],
        reaches: tuple[str, int] | None = None,
    ) -> None:
        """Run ``apply`` in MULTI if we still hold the lease and the offset is unchanged.

        ``reaches`` is the (state, offset) the change leads to. Finding it already there,
        under our own lease, means an earlier try went through though its answer was lost
        (redis-py retries a watched transaction as a WatchError): done, not fenced.
        """
        k, lease = upload_key(upload_id), writer_key(upload_id)
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(k, lease)
                    holder = pipe.get(lease)
                    state, offset = pipe.hmget(k, "state", "offset")
                    if holder != token:
                        raise Fenced(f"upload {upload_id}: writer lease lost")
                    if reaches is not None and (state, int(offset)) == reaches:
                        pipe.reset()
                        return
                    if state not in WRITABLE:
                        raise Fenced(f"upload {upload_id}: state is {state}")
                    if expected_offset is not None and int(offset) != expected_offset:
                        raise Fenced(f"upload {upload_id}: offset moved to {offset}")
                    pipe.multi()
                    apply(pipe)
                    pipe.pexpire(lease, self.lease_ms)
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue  # re-check: either it still holds, or Fenced

    def save_s3_upload_id(self, upload_id: str, token: str, s3_upload_id: str) -> None:
        self._fenced(
            upload_id,
            token,
            None,
            lambda pipe: pipe.hset(upload_key(upload_id), "upload_id", s3_upload_id),
        )

    def commit_part(
        self,
        upload_id: str,
        token: str,
        expected_offset: int,
        new_offset: int,
        part: tuple[int, str, int],
        node: str,
        length: int | None = None,
    ) -> None:
        """Record an uploaded (number, etag, size) part; the offset moves to the part's
        end, ``new_offset`` (the committed bytes, as the tail is now empty). ``length``:
        a deferred length this request declared, saved with its first commit."""
        fields = {"state": RECEIVING, "node": node, **_declared(length)}
        self._progress(upload_id, token, expected_offset, new_offset, fields, part)

    def commit_offset(
        self,
        upload_id: str,
        token: str,
        expected_offset: int,
        new_offset: int,
        node: str,
        length: int | None = None,
    ) -> None:
        """Acknowledge bytes now held (synced) in ``node``'s tail (and a declared length)."""
        fields = {"state": RECEIVING, "node": node, **_declared(length)}
        self._progress(upload_id, token, expected_offset, new_offset, fields)

    def finish_receiving(
        self,
        upload_id: str,
        token: str,
        expected_offset: int,
        length: int,
        last_part: tuple[int, str, int] | None,
    ) -> None:
        """All bytes are in S3: offset = length, state assembling, in one transaction."""
        fields = {"state": ASSEMBLING, "length": length}
        self._progress(upload_id, token, expected_offset, length, fields, last_part)
        # The sweep looks again soon, in case the completion job never runs.
        self.index_expiry(upload_id, time.time() + ASSEMBLY_CHECK_SECONDS)

    def _progress(
        self,
        upload_id: str,
        token: str,
        expected_offset: int,
        new_offset: int,
        fields: dict[str, str | int],
        part: tuple[int, str, int] | None = None,
    ) -> None:
        """One fenced step forward; activity pushes the upload's expiry back."""
        expires_at = time.time() + self.expiration
        k, pk = upload_key(upload_id), parts_key(upload_id)

        def apply(pipe: Pipeline) -> None:
            if part is not None:
                number, etag, size = part
                pipe.hset(pk, str(number), f"{size} {etag}")  # O(1), whatever the count
                pipe.expire(pk, self._key_ttl())
                pipe.hincrby(k, "committed", size)
            pipe.hset(k, mapping={**fields, "offset": new_offset, "expires_at": expires_at})
            pipe.expire(k, self._key_ttl())

        reaches = (fields["state"], new_offset) if new_offset != expected_offset else None
        self._fenced(upload_id, token, expected_offset, apply, reaches)
        self.index_expiry(upload_id, expires_at)

    def index_expiry(self, upload_id: str, expires_at: float) -> None:
        # Outside the transaction: the index lives in another cluster slot, and a stale
        # score only makes the sweep look at an upload early (it re-checks).
        self.r.zadd(EXPIRY_INDEX, {upload_id: expires_at})

    def due_for_sweep(self, now: float, limit: int = 1000) -> list[str]:
        """Ids whose recorded expiry has passed, oldest first."""
        return list(self.r.zrangebyscore(EXPIRY_INDEX, "-inf", now, start=0, num=limit))

    def unindex(self, upload_id: str) -> None:
        self.r.zrem(EXPIRY_INDEX, upload_id)

    def open_multipart_ids(self, states: tuple[str, ...]) -> set[str]:
        """S3 upload ids referenced by uploads in ``states`` (a full scan: for sweeps)."""
        found: set[str] = set()
        ids = self.ids()
        for start in range(0, len(ids), 500):
            with self.r.pipeline(transaction=False) as pipe:
                for upload_id in ids[start : start + 500]:
                    pipe.hmget(upload_key(upload_id), "state", "upload_id")
                for state, s3_upload_id in pipe.execute():
                    if state in states and s3_upload_id:
                        found.add(s3_upload_id)
        return found

    def save_assembly_upload_id(self, upload_id: str, s3_upload_id: str) -> str:
        """For the assembly job (no writer lease): keep the multipart upload id of an
        upload in ``assembling``; the id already saved wins (a retried job reuses it)."""
        k = upload_key(upload_id)
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(k)
                    state, saved = pipe.hmget(k, "state", "upload_id")
                    if state != ASSEMBLING:
                        raise Fenced(f"upload {upload_id}: state is {state}")
                    if saved:
                        return saved
                    pipe.multi()
                    pipe.hset(k, "upload_id", s3_upload_id)
                    pipe.execute()
                    return s3_upload_id
                except redis.WatchError:
                    continue

    def ids(self) -> list[str]:
        """Every upload id Redis knows (SCAN: fine for the CLI, not for a request)."""
        prefix = len("rindle:upload:{")
        return sorted(
            key[prefix:-1]
            for key in self.r.scan_iter(match="rindle:upload:{*}", count=1000)
            if key.endswith("}")
        )

    # -- state changes outside a writer: completion, termination, expiry ----------------

    def set_state(
        self, upload_id: str, state: str, expect: tuple[str, ...], before: float | None = None
    ) -> bool:
        """Move to ``state`` if the upload is in one of ``expect`` (and, with ``before``,
        its expiry has passed by then). Ending or completing makes the keys tombstones."""
        k = upload_key(upload_id)
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(k)
                    current, expires_at = pipe.hmget(k, "state", "expires_at")
                    if current not in expect:
                        return False
                    if before is not None and float(expires_at) > before:
                        return False
                    pipe.multi()
                    pipe.hset(k, "state", state)
                    if state in (*ENDED, COMPLETED):
                        pipe.expire(k, TOMBSTONE_SECONDS)
                        pipe.expire(parts_key(upload_id), TOMBSTONE_SECONDS)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        if state in (*ENDED, COMPLETED):
            self.unindex(upload_id)
        return True
