"""Upload records in Redis: one hash per upload, every change fenced.

Every change of a writer runs in one Redis transaction (``Redis.transaction``: WATCH,
check, MULTI/EXEC, retried when a watched key moved) that re-checks the writer's lease
token and the offset it started from, so a stale request can never overwrite a newer one.
The key names are in ``rindle.keys``; the lease itself in ``rindle.lease``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import redis
from redis.client import Pipeline

from rindle.errors import Fenced, NotReplicated
from rindle.keys import (
    EXPIRY_INDEX,
    UPLOAD_KEY_PATTERN,
    parts_key,
    upload_id_of,
    upload_key,
    writer_key,
)
from rindle.upload import ENDED, WRITABLE, Segment, State, Upload

log = logging.getLogger("rindle")
# How long keys of a finished upload stay around as a tombstone (410, not 404).
TOMBSTONE_SECONDS = 7 * 24 * 3600
# An upload still assembling after this long gets its completion job enqueued again.
ASSEMBLY_CHECK_SECONDS = 600
# How often a process asks Redis how many replicas it has (RINDLE_REDIS_WAIT_REPLICAS=auto).
REPLICAS_CHECK_SECONDS = 60
# How long an answer waits for replicas to hold the change it reports: a replica a second
# behind is a lagging one, and the client is waiting.
REPLICA_WAIT_MS = 1000

Part = tuple[int, str, int]  # (number, etag, size)
# A commit that leaves no buffered bytes (or none copied to S3) records no shared tail.
NO_SHARED_TAIL = {"tail_key": "", "tail_etag": "", "tail_sizes": ""}


class UploadStore:
    def __init__(
        self,
        client: redis.Redis,
        expiration: int,
        lease_seconds: int,
        wait_replicas: int = 0,
    ) -> None:
        """``client`` must decode responses to str. ``wait_replicas``: how many of the
        connected replicas must hold a change before it is acknowledged."""
        self.redis = client
        self.expiration = expiration
        self.lease_ms = lease_seconds * 1000
        self.wait_replicas = wait_replicas
        self._replicas = (0, -REPLICAS_CHECK_SECONDS)  # (count, when: monotonic)

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
        state: State = State.CREATED,
        concat: str = "",
        partials: tuple[str, ...] = (),
        object_etag: str = "",
    ) -> Upload:
        """``object_etag``: the object the request already wrote (a zero-length upload)."""
        now = time.time()
        record = {
            "state": state,
            "length": "" if length is None else length,
            "offset": length if state in (State.COMPLETED, State.ASSEMBLING) else 0,
            "committed": 0,
            "part_size": part_size,
            "key": key,
            "metadata": metadata,
            "upload_id": "",  # S3's UploadId, once the first part is on its way
            "node": "",
            "created_at": now,
            "expires_at": now + self.expiration,
            "concat": concat,
            "partials": " ".join(partials),
            "object_etag": object_etag,
            **NO_SHARED_TAIL,
        }
        k = upload_key(upload_id)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(k, mapping=record)
            pipe.expire(k, TOMBSTONE_SECONDS if state == State.COMPLETED else self._key_ttl())
            pipe.execute()
        if state != State.COMPLETED:
            self.index_expiry(upload_id, now + self.expiration)
        return Upload.from_record(upload_id, {f: str(v) for f, v in record.items()})

    def get(self, upload_id: str) -> Upload | None:
        record = self.redis.hgetall(upload_key(upload_id))
        return Upload.from_record(upload_id, record) if record else None

    def parts(self, upload_id: str) -> list[Part]:
        """Committed parts as (number, etag, size), in order."""
        found = []
        for number, value in self.redis.hgetall(parts_key(upload_id)).items():
            size, etag = value.split(" ", 1)
            found.append((int(number), etag, int(size)))
        return sorted(found)

    # -- a writer's fenced changes ---------------------------------------------------

    def fenced(
        self,
        upload_id: str,
        token: str,
        expected_offset: int | None,
        apply: Callable[[Pipeline], None],
        reaches: tuple[State, int] | None = None,
    ) -> None:
        """Run ``apply`` in MULTI if ``token`` still holds the writer lease, the upload
        still takes bytes and (unless None) its offset is ``expected_offset``; the lease
        is extended in the same transaction. Fenced otherwise.

        ``reaches`` is the (state, offset) the change leads to. Finding it already there,
        under our own lease, means an earlier try went through though its answer was lost
        (redis-py retries a watched transaction as a WatchError): done, not fenced.
        """
        k, lease = upload_key(upload_id), writer_key(upload_id)

        def attempt(pipe: Pipeline) -> None:
            holder = pipe.get(lease)
            state, offset = pipe.hmget(k, "state", "offset")
            if holder != token:
                raise Fenced(f"upload {upload_id}: writer lease lost")
            if state is None:
                raise Fenced(f"upload {upload_id}: its record is gone")
            if reaches is not None and (state, int(offset)) == reaches:
                return  # an empty EXEC follows: nothing changes
            if state not in WRITABLE:
                raise Fenced(f"upload {upload_id}: state is {state}")
            if expected_offset is not None and int(offset) != expected_offset:
                raise Fenced(f"upload {upload_id}: offset moved to {offset}")
            pipe.multi()
            apply(pipe)
            pipe.pexpire(lease, self.lease_ms)

        self.redis.transaction(attempt, k, lease)

    def follow_chunks(self, upload_id: str, token: str, part_size: int) -> None:
        """The first PATCH sets the part size to its chunk's, while nothing is stored."""
        self.fenced(
            upload_id,
            token,
            0,
            lambda pipe: pipe.hset(upload_key(upload_id), "part_size", part_size),
        )

    def save_s3_upload_id(self, upload_id: str, token: str, s3_upload_id: str) -> None:
        self.fenced(
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
        part: Part,
        node: str,
        length: int | None = None,
        previous_tail: tuple[str, ...] | None = None,
    ) -> None:
        """Record an uploaded (number, etag, size) part; the offset moves to the part's
        end, ``new_offset`` (the committed bytes, as the tail is now empty). ``length``:
        a deferred length this request declared, saved with its first commit.
        ``previous_tail``: the shared copies this commit replaces (kept as the previous)."""
        fields = {
            "state": State.RECEIVING,
            "node": node,
            **_declared(length),
            **NO_SHARED_TAIL,
            **_previous(previous_tail),
        }
        self._progress(upload_id, token, expected_offset, new_offset, fields, part)

    def commit_offset(
        self,
        upload_id: str,
        token: str,
        expected_offset: int,
        new_offset: int,
        node: str,
        length: int | None = None,
        shared: tuple[Segment, ...] = (),
        previous_tail: tuple[str, ...] | None = None,
    ) -> None:
        """Acknowledge bytes now held (synced) in ``node``'s tail (and a declared length);
        ``shared``: the segments that copy those bytes in S3, in shared tail mode."""
        fields = {
            "state": State.RECEIVING,
            "node": node,
            **_declared(length),
            **NO_SHARED_TAIL,
            **_previous(previous_tail),
        }
        if shared:
            keys, etags, sizes = zip(*shared, strict=True)
            fields.update(
                tail_key=" ".join(keys),
                tail_etag=" ".join(etags),
                tail_sizes=" ".join(map(str, sizes)),
            )
        self._progress(upload_id, token, expected_offset, new_offset, fields)

    def finish_receiving(
        self,
        upload_id: str,
        token: str,
        expected_offset: int,
        length: int,
        last_part: Part | None,
        object_etag: str = "",
        previous_tail: tuple[str, ...] | None = None,
    ) -> None:
        """All bytes are in S3: offset = length, state assembling, in one transaction.
        ``object_etag``: the object itself, when one PutObject wrote it."""
        fields = {
            "state": State.ASSEMBLING,
            "length": length,
            "object_etag": object_etag,
            **NO_SHARED_TAIL,
            **_previous(previous_tail),
        }
        self._progress(upload_id, token, expected_offset, length, fields, last_part)
        # The sweep looks again soon, in case the completion job never runs.
        self._index_after_commit(upload_id, time.time() + ASSEMBLY_CHECK_SECONDS)

    def _progress(
        self,
        upload_id: str,
        token: str,
        expected_offset: int,
        new_offset: int,
        fields: dict[str, str | int],
        part: Part | None = None,
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

        state = State(fields["state"])
        reaches = (state, new_offset) if new_offset != expected_offset else None
        self.fenced(upload_id, token, expected_offset, apply, reaches)
        self._index_after_commit(upload_id, expires_at)

    def _index_after_commit(self, upload_id: str, expires_at: float) -> None:
        """Bookkeeping after a commit is best effort: failing, it must not make the
        writer undo what Redis holds. A missed index entry only delays a sweep (the
        orphan sweep still finds the upload)."""
        try:
            self.index_expiry(upload_id, expires_at)
        except redis.RedisError as exc:
            log.warning("upload %s: expiry index not updated (%s)", upload_id, exc)

    def connected_replicas(self) -> int:
        """Replicas connected to this Redis (INFO replication), asked once a minute (and
        again when one did not answer in time); 0 when Redis does not say (a managed
        Redis may refuse INFO)."""
        count, asked_at = self._replicas
        now = time.monotonic()
        if now - asked_at >= REPLICAS_CHECK_SECONDS:
            try:
                count = int(self.redis.info("replication").get("connected_slaves", 0))
            except redis.RedisError as exc:
                log.warning("Redis does not say how many replicas it has (%s)", exc)
                count = 0
            self._replicas = (count, now)
        return count

    def replicated(self, upload_id: str, timeout_ms: int = REPLICA_WAIT_MS) -> bool | None:
        """Wait (at most ``timeout_ms``) until the replicas RINDLE_REDIS_WAIT_REPLICAS
        asks for hold every change made so far: True when they do, False when they did
        not in time, None when there are none to wait for."""
        wanted = self._replicas_wanted()
        if not wanted:
            return None
        if self.wait_for_replicas(upload_id, wanted, timeout_ms) >= wanted:
            return True
        self._replicas = (0, -REPLICAS_CHECK_SECONDS)  # a replica gone is none to wait for
        if not self._replicas_wanted():
            return None
        return False

    def confirm_replicated(self, upload_id: str, timeout_ms: int = REPLICA_WAIT_MS) -> bool | None:
        """``replicated``, NotReplicated (503) when the replicas did not confirm in time."""
        done = self.replicated(upload_id, timeout_ms)
        if done is False:
            log.warning(
                "upload %s: Redis replicas did not confirm it within %d ms: not acknowledged",
                upload_id,
                timeout_ms,
            )
            raise NotReplicated(upload_id)
        return done

    def _replicas_wanted(self) -> int:
        if not self.wait_replicas:
            return 0
        return min(self.wait_replicas, self.connected_replicas())

    def wait_for_replicas(self, upload_id: str, replicas: int, timeout_ms: int) -> int:
        """Wait (at most ``timeout_ms``) until ``replicas`` replicas hold this process's
        writes up to now; how many do. WAIT counts from the last write of the connection
        it runs on, and a pooled connection may not be the one that committed: a write on
        the same connection first (the upload's own TTL again) follows every commit."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.expire(upload_key(upload_id), self._key_ttl())
            pipe.wait(replicas, timeout_ms)
            _, acked = pipe.execute()
        return int(acked)

    # -- changes outside a writer: assembly, termination, expiry ------------------------

    def save_assembly_upload_id(self, upload_id: str, s3_upload_id: str) -> str:
        """For the assembly job (no writer lease): keep the multipart upload id of an
        upload in ``assembling``; the id already saved wins (a retried job reuses it)."""
        k = upload_key(upload_id)

        def attempt(pipe: Pipeline) -> str:
            state, saved = pipe.hmget(k, "state", "upload_id")
            if state != State.ASSEMBLING:
                raise Fenced(f"upload {upload_id}: state is {state}")
            if saved:
                return str(saved)
            pipe.multi()
            pipe.hset(k, "upload_id", s3_upload_id)
            return s3_upload_id

        return str(self.redis.transaction(attempt, k, value_from_callable=True))

    def set_state(
        self,
        upload_id: str,
        state: State,
        expect: tuple[State, ...],
        before: float | None = None,
        fields: Mapping[str, str] | None = None,
    ) -> bool:
        """Move to ``state`` if the upload is in one of ``expect`` (and, with ``before``,
        its expiry has passed by then and no request holds its writer lease: a live
        writer is activity). ``fields`` are set with it. Ending or completing makes the
        keys tombstones."""
        k, lease = upload_key(upload_id), writer_key(upload_id)
        final = state in (*ENDED, State.COMPLETED)

        def attempt(pipe: Pipeline) -> bool:
            current, expires_at = pipe.hmget(k, "state", "expires_at")
            if current not in expect:
                return False
            if before is not None and (float(expires_at) > before or pipe.exists(lease)):
                return False
            pipe.multi()
            pipe.hset(k, mapping={**(fields or {}), "state": state})
            if final:
                pipe.expire(k, TOMBSTONE_SECONDS)
                pipe.expire(parts_key(upload_id), TOMBSTONE_SECONDS)
            return True

        moved = bool(self.redis.transaction(attempt, k, lease, value_from_callable=True))
        if moved and final:
            self.unindex(upload_id)
        return moved

    # -- the expiry index, and scans for the sweeps -------------------------------------

    def index_expiry(self, upload_id: str, expires_at: float) -> None:
        # Outside the transaction: the index lives in another cluster slot, and a stale
        # score only makes the sweep look at an upload early (it re-checks).
        self.redis.zadd(EXPIRY_INDEX, {upload_id: expires_at})

    def due_for_sweep(self, now: float, start: int = 0, limit: int = 1000) -> list[str]:
        """Ids whose recorded expiry has passed, oldest first (from the ``start``-th)."""
        return list(self.redis.zrangebyscore(EXPIRY_INDEX, "-inf", now, start=start, num=limit))

    def unindex(self, upload_id: str) -> None:
        self.redis.zrem(EXPIRY_INDEX, upload_id)

    def ids(self) -> list[str]:
        """Every upload id Redis knows (SCAN: fine for the CLI and sweeps, not a request)."""
        found = (
            upload_id_of(key) for key in self.redis.scan_iter(match=UPLOAD_KEY_PATTERN, count=1000)
        )
        return sorted(upload_id for upload_id in found if upload_id is not None)

    def open_multipart_ids(self, states: tuple[State, ...]) -> set[str]:
        """S3 upload ids referenced by uploads in ``states`` (a full scan: for sweeps)."""
        found: set[str] = set()
        ids = self.ids()
        for start in range(0, len(ids), 500):
            with self.redis.pipeline(transaction=False) as pipe:
                for upload_id in ids[start : start + 500]:
                    pipe.hmget(upload_key(upload_id), "state", "upload_id")
                for state, s3_upload_id in pipe.execute():
                    if state in states and s3_upload_id:
                        found.add(s3_upload_id)
        return found


def _declared(length: int | None) -> dict[str, int]:
    return {} if length is None else {"length": length}


def _previous(keys: tuple[str, ...] | None) -> dict[str, str]:
    return {} if keys is None else {"prev_tail_key": " ".join(keys)}
