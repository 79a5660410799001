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


def upload_key(upload_id: str) -> str:
    return f"rindle:upload:{{{upload_id}}}"


def parts_key(upload_id: str) -> str:
    return f"rindle:upload:{{{upload_id}}}:parts"


def writer_key(upload_id: str) -> str:
    return f"rindle:upload:{{{upload_id}}}:writer"


@dataclass(frozen=True)
class Upload:
    id: str
    state: str
    length: int
    offset: int
    committed: int
    part_size: int
    key: str
    metadata: str
    s3_upload_id: str
    node: str
    created_at: float
    expires_at: float

    @property
    def buffered(self) -> int:
        """Bytes Redis says the tail holds: acknowledged but not yet in a part."""
        return self.offset - self.committed

    @property
    def next_part_number(self) -> int:
        return self.committed // self.part_size + 1

    @classmethod
    def from_hash(cls, upload_id: str, h: dict[str, str]) -> Upload:
        return cls(
            id=upload_id,
            state=h["state"],
            length=int(h["length"]),
            offset=int(h["offset"]),
            committed=int(h["committed"]),
            part_size=int(h["part_size"]),
            key=h["key"],
            metadata=h.get("metadata", ""),
            s3_upload_id=h.get("upload_id", ""),
            node=h.get("node", ""),
            created_at=float(h["created_at"]),
            expires_at=float(h["expires_at"]),
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
        length: int,
        part_size: int,
        key: str,
        metadata: str,
        state: str = CREATED,
    ) -> Upload:
        now = time.time()
        fields = {
            "state": state,
            "length": length,
            "offset": length if state == COMPLETED else 0,
            "committed": 0,
            "part_size": part_size,
            "key": key,
            "metadata": metadata,
            "upload_id": "",
            "node": "",
            "created_at": now,
            "expires_at": now + self.expiration,
        }
        k = upload_key(upload_id)
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(k, mapping=fields)
            pipe.expire(k, self._key_ttl())
            pipe.execute()
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

    def renew(self, upload_id: str, token: str) -> None:
        self._fenced(upload_id, token, None, lambda pipe: None)

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
    ) -> None:
        """Run ``apply`` in MULTI if we still hold the lease and the offset is unchanged."""
        k, lease = upload_key(upload_id), writer_key(upload_id)
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(k, lease)
                    holder = pipe.get(lease)
                    state, offset = pipe.hmget(k, "state", "offset")
                    if holder != token:
                        raise Fenced(f"upload {upload_id}: writer lease lost")
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
        number: int,
        etag: str,
        size: int,
        new_offset: int,
        node: str,
    ) -> None:
        """Record an uploaded part; the offset moves to ``new_offset``, the part's end."""

        def apply(pipe: Pipeline) -> None:
            k = upload_key(upload_id)
            pipe.hset(parts_key(upload_id), str(number), f"{size} {etag}")
            pipe.expire(parts_key(upload_id), self._key_ttl())
            pipe.hincrby(k, "committed", size)
            pipe.hset(
                k,
                mapping={
                    "offset": new_offset,
                    "state": RECEIVING,
                    "node": node,
                    **self._activity(),
                },
            )
            pipe.expire(k, self._key_ttl())

        self._fenced(upload_id, token, expected_offset, apply)

    def commit_offset(
        self, upload_id: str, token: str, expected_offset: int, new_offset: int, node: str
    ) -> None:
        """Acknowledge bytes now held (synced) in this node's tail."""

        def apply(pipe: Pipeline) -> None:
            k = upload_key(upload_id)
            pipe.hset(
                k,
                mapping={
                    "offset": new_offset,
                    "state": RECEIVING,
                    "node": node,
                    **self._activity(),
                },
            )
            pipe.expire(k, self._key_ttl())

        self._fenced(upload_id, token, expected_offset, apply)

    def finish_receiving(
        self,
        upload_id: str,
        token: str,
        expected_offset: int,
        length: int,
        last_part: tuple[int, str, int] | None,
    ) -> None:
        """All bytes are in S3: offset = length, state assembling, in one transaction."""

        def apply(pipe: Pipeline) -> None:
            k = upload_key(upload_id)
            if last_part is not None:
                number, etag, size = last_part
                pipe.hset(parts_key(upload_id), str(number), f"{size} {etag}")
                pipe.expire(parts_key(upload_id), self._key_ttl())
                pipe.hincrby(k, "committed", size)
            pipe.hset(k, mapping={"offset": length, "state": ASSEMBLING, **self._activity()})
            pipe.expire(k, self._key_ttl())

        self._fenced(upload_id, token, expected_offset, apply)

    def _activity(self) -> dict[str, float]:
        return {"expires_at": time.time() + self.expiration}

    # -- assembly (RQ jobs) -----------------------------------------------------------

    def set_state(self, upload_id: str, state: str, expect: tuple[str, ...]) -> bool:
        """Move to ``state`` if the upload is in one of ``expect``; keys become tombstones."""
        k = upload_key(upload_id)
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(k)
                    if pipe.hget(k, "state") not in expect:
                        return False
                    pipe.multi()
                    pipe.hset(k, "state", state)
                    pipe.expire(k, TOMBSTONE_SECONDS)
                    pipe.expire(parts_key(upload_id), TOMBSTONE_SECONDS)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue
