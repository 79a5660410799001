"""The PATCH engine: streams a request body into S3 parts and the node-local tail.

It knows no HTTP: it takes a body reader (raising BodyEnded when the client is gone) and
an interrupt callback (ending a blocked read), and raises domain errors.

Ordering (docs/design.md, invariants of a PATCH): a full part is uploaded to S3, then
committed in Redis (fenced by the writer token and the previous offset), then dropped
from the tail. A body that ends early keeps what arrived: the tail is synced, then its
bytes are acknowledged. The last bytes of an upload are shipped (last part, or one
PutObject) before the offset reaches the length, so "offset == length" always means
"every byte is in S3".
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TypeVar

import redis
from blinker import NamedSignal

from rindle import hooks, protocol
from rindle.config import Settings
from rindle.errors import (
    BodyEnded,
    ChecksumMismatch,
    Fenced,
    NotReplicated,
    OutcomeUnknown,
    TailMissing,
    TusError,
)
from rindle.jobqueue import JobQueue
from rindle.lease import ActiveWrite, HeldLease, Lease, LeaseRenewer, ReleaseWatcher, new_token
from rindle.storage import S3_ERRORS, MultipartGone, S3Storage, SpoolFile, Tail, TailLocked
from rindle.storage.shared_tail import Generation, SharedTailMissing, SharedTails
from rindle.store import UploadStore
from rindle.transient import is_transient, wait_out
from rindle.upload import WRITABLE, State, Upload, segments_size

log = logging.getLogger("rindle")
T = TypeVar("T")

# Part uploads one process runs at once, for all its PATCHes (RINDLE_PARTS_IN_FLIGHT each).
PART_UPLOAD_THREADS = 64
# Sends to S3 that request threads make themselves (the last part or object, a shared
# segment, the parts of a checksummed body), at once per process. Uncapped, 1,000 uploads
# ending together sent 1,000 bodies at once, and the S3 server dropped connections until
# the retries ran out (503): 282 of 1,000 in the benchmark; none with 16 or 32.
REQUEST_SENDS = 32
# Shared segments one tail may have; more (only small bodies of unknown length get there)
# are merged into one.
MAX_SEGMENTS = 256
Reader = Callable[[int], bytes]  # read(n): up to n bytes, b"" at the end; BodyEnded


@dataclass
class WriteResult:
    upload: Upload  # as committed when the request let go
    overflow: bool  # the client sent bytes beyond Upload-Length
    # The body was not read to its end (client gone, timeout, release, stop): what is
    # left of it may still arrive on the connection, which must not carry another request.
    ended_early: bool = False


class Writer:
    def __init__(
        self,
        store: UploadStore,
        lease: Lease,
        s3: S3Storage,
        settings: Settings,
        watcher: ReleaseWatcher,
        jobs: JobQueue,
        notify: Callable[[NamedSignal, Upload], None] = lambda signal, upload: None,
        on_tail_opened: Callable[[], None] = lambda: None,
        shared: SharedTails | None = None,
    ) -> None:
        """``shared``: where tails get a durable copy (shared tail mode), else None."""
        self.store = store
        self.lease = lease
        self.s3 = s3
        self.settings = settings
        self.watcher = watcher
        self.jobs = jobs
        self.notify = notify
        self.on_tail_opened = on_tail_opened  # starts this node's tail reaper
        self.shared = shared
        self.part_uploads = ThreadPoolExecutor(
            max_workers=PART_UPLOAD_THREADS, thread_name_prefix="rindle-part"
        )
        self.renewer = LeaseRenewer(lease)  # one per process, as this writer is
        self.sends = threading.BoundedSemaphore(REQUEST_SENDS)

    def write(
        self,
        upload_id: str,
        append: protocol.Append,
        read: Reader,
        interrupt: Callable[[], None] = lambda: None,
    ) -> WriteResult:
        """Append the body that ``read`` returns at ``append.offset``.

        ``interrupt`` ends a blocked ``read`` (another request needs the upload, or the
        client stalls). With ``append.checksum``, the body is kept only if it matches
        (ChecksumMismatch otherwise); ``append.declared_length`` sets the length of a
        deferred-length upload. Raises LeaseHeld, TailMissing, Fenced, ChecksumMismatch,
        TusError, or S3 errors (nothing of the failed step is committed).
        """
        if shutil.disk_usage(self.settings.tmp_dir).free < self.settings.min_free_disk:
            raise TusError("insufficient_storage", "this node is short of disk space; retry")
        token = new_token()
        acquired_at = time.monotonic()  # (before the claim is sent: the lease lasts longer)
        self.lease.wait_for_release(upload_id, lambda: self.lease.acquire(upload_id, token))
        try:
            # Kept from now on: fetching a shared tail may take longer than a lease.
            with self.renewer.keeping(upload_id, token, acquired_at) as held:
                # Re-read under the lease: this is the state we build on.
                upload = wait_out(
                    lambda: self.store.get(upload_id), held.valid_until, "upload record"
                )
                if upload is None or upload.state not in WRITABLE:
                    raise TusError("upload_not_writable", "the upload cannot take bytes now")
                declared = protocol.check_append(
                    upload, append, self.settings.max_size, None, self.settings.max_checksum_body
                )
                upload = self._follow_chunks(upload, append, declared, held)
                if self.shared is not None:
                    protocol.check_shared_append(upload, append, declared)
                tail = self._open_tail(upload, token)
                self.on_tail_opened()
                try:
                    with self.watcher.watching(upload_id, interrupt) as active:
                        held.attach(active)
                        patch = _Patch(self, upload, held, tail, declared)
                        overflow = patch.run(read, append.checksum)
                except MultipartGone:
                    self._fail_lost_multipart(upload)
                    raise TusError(
                        "gone", "the upload failed: S3 no longer has its parts"
                    ) from None
                finally:
                    tail.close()
                replicated = patch.replicated()
                if replicated is not False:  # else Redis may still roll back any number
                    patch.drop_superseded()  # (of PATCHes: the orphan sweep collects them)
                after = patch.call(lambda: self.store.get(upload_id), "upload record")
            assert after is not None
            if after.offset != upload.offset:
                self.notify(hooks.upload_progress, after)
            if after.state == State.ASSEMBLING:  # (``upload`` was writable: this write did it,
                # also when it declared a deferred length at the offset already reached)
                self.notify(hooks.upload_received, after)
            if replicated is False:  # the offset must not be reported before it is safe
                raise NotReplicated(upload_id)
            return WriteResult(after, overflow, patch.ended_early)
        finally:
            self.lease.let_go(upload_id, token)

    def _follow_chunks(
        self, upload: Upload, append: protocol.Append, declared: int | None, held: HeldLease
    ) -> Upload:
        """On the first PATCH, the part size becomes the client's chunk size when it can
        (``protocol.chunk_part_size``): chunks then end on part boundaries."""
        size = protocol.chunk_part_size(
            upload, append, declared, self.settings.part_size, self.settings.max_size
        )
        if size is None:
            return upload
        wait_out(
            lambda: self.store.follow_chunks(upload.id, held.token, size),
            held.valid_until,
            "part size",
        )
        log.info("upload %s: part size %d follows the client's chunks", upload.id, size)
        return replace(upload, part_size=size)

    def _fail_lost_multipart(self, upload: Upload) -> None:
        """S3 dropped the multipart upload (a lifecycle rule that aborts incomplete
        uploads too early): its parts are lost for good, so the upload is failed."""
        log.error(
            "upload %s: S3 no longer knows its multipart upload %s (aborted outside "
            "rindle, e.g. by a lifecycle rule): the upload failed",
            upload.id,
            upload.s3_upload_id,
        )
        if self.store.set_state(upload.id, State.FAILED, WRITABLE):
            self.jobs.clean_up(upload.id)
            self.notify(hooks.upload_failed, replace(upload, state=State.FAILED))

    def _open_tail(self, upload: Upload, token: str) -> Tail:
        """This node's tail file, locked and holding exactly the buffered bytes.

        The local file counts only if Redis names this node as the holder of the
        buffered bytes: elsewhere it would be stale leftovers from an older stretch of
        the upload. Without a usable local file the bytes come from the shared copy
        (shared tail mode), else it is TailMissing: never a silent re-slice.
        """
        expected = upload.buffered
        here = upload.node == self.settings.node_id
        if expected and (here or self.shared is None):
            try:
                if not here:
                    raise TailMissing(upload.id, expected, None)
                return self._lock_tail(upload.id, expected, upload.committed)
            except TailMissing as exc:
                if self.shared is None:
                    if exc.starts_at is not None and exc.starts_at > upload.committed:
                        self._rewind(upload, token, exc)
                    exc.node = upload.node
                    raise
                # Lost with a restart: the shared copy has the bytes.
        tail = self._lock_tail(upload.id, 0, upload.committed)  # empties a stale file
        if expected:
            try:
                self._fetch_shared(upload, tail)
            except BaseException:
                tail.remove()  # nothing of it is this upload's: leave no file behind
                tail.close()
                raise
        return tail

    def _rewind(self, upload: Upload, token: str, found: TailMissing) -> None:
        """Redis lost commits (a replica promoted without them, a restart): its record
        expects buffered bytes from ``upload.committed``, and this node's tail holds bytes
        from a later part on. The bytes in between went up in a part Redis no longer
        records, and only the client still has them: the upload goes back to the last
        part Redis records, and the client resends from there (409 with that offset)."""
        log.error(
            "upload %s: Redis lost commits (failover or restart?): it expects %d buffered "
            "bytes from offset %d, this node's tail holds bytes from offset %s; the upload "
            "goes back to offset %d",
            upload.id,
            found.expected,
            upload.committed,
            found.starts_at,
            upload.committed,
        )
        self.store.commit_offset(
            upload.id, token, upload.offset, upload.committed, self.settings.node_id
        )
        tail = self._lock_tail(upload.id, 0, upload.committed)  # empties it
        tail.close()
        raise TusError(
            "offset_mismatch",
            "the upload's bookkeeping lost its last bytes; resume from Upload-Offset",
            {"Upload-Offset": str(upload.committed)},
        )

    def _lock_tail(self, upload_id: str, expected: int, start: int) -> Tail:
        # A stale request of this node may still hold the file (its lease expired).
        return self.lease.wait_for_release(
            upload_id,
            lambda: Tail.open(upload_id, expected, self.settings.tmp_dir, start),
            busy=(TailLocked,),
        )

    def _fetch_shared(self, upload: Upload, tail: Tail) -> None:
        """Fill the (empty) local tail from the shared copy Redis records."""
        assert self.shared is not None
        missing = TailMissing(upload.id, upload.buffered, None, upload.node)
        if segments_size(upload.tail_segments) != upload.buffered:
            raise missing  # e.g. buffered before shared mode was switched on
        try:
            for segment in upload.tail_segments:
                self.shared.fetch(Generation(*segment), tail.write)
        except SharedTailMissing as exc:
            raise missing from exc
        if tail.size != upload.buffered:  # the store checked its size too: belt and braces
            raise missing
        tail.mark_start(upload.committed)
        tail.sync()
        log.info(
            "upload %s: %d buffered bytes fetched from the shared tail of node %s",
            upload.id,
            upload.buffered,
            upload.node or "?",
        )


class _Patch:
    """One PATCH request holding the lease and the tail of one upload.

    The request thread reads the body into the tail until it holds a full part, then
    into a fresh nameless spool file per part. Each full part is uploaded by a
    background thread while the body keeps arriving (up to RINDLE_PARTS_IN_FLIGHT at
    once), and committed in Redis only after its upload and the commit of the part
    before it: commits stay in order, so the offset never has a hole, and only one
    thread at a time moves the committed state forward (the request thread itself once
    no part is in flight).
    """

    def __init__(
        self,
        writer: Writer,
        upload: Upload,
        held: HeldLease,
        tail: Tail,
        declared: int | None,
    ) -> None:
        self.writer = writer
        self.upload = upload if declared is None else replace(upload, length=declared)
        self.declared = declared  # a deferred length this PATCH declares, not yet saved
        self.held = held  # the lease: the renewer keeps it, and says when it is lost
        self.token = held.token
        self.tail = tail
        self.active: ActiveWrite = held.write  # type: ignore[assignment]  # (attached)
        self.offset = upload.offset  # as committed in Redis
        self.committed = upload.committed  # bytes in committed parts
        self.s3_upload_id = upload.s3_upload_id
        self.inflight: deque[Future[None]] = deque()  # part uploads, oldest first
        # Shared tail mode: the segments Redis records now, and the keys it recorded when
        # this PATCH began (current and previous): see ``drop_superseded``.
        self.segments = list(upload.tail_segments)
        self.shared_start = (tuple(key for key, _, _ in self.segments), upload.prev_tail_keys)
        self.superseded = False  # a commit replaced the segments recorded at the start
        self.ended_early = False  # the body was not read to its end
        self.moved = False  # a commit of this PATCH went through
        self.uncertain = False  # a commit may have gone through: Redis knows, not us
        self.confirmed: tuple[int, bool | None] | None = None  # (offset, replicated())
        self.object_headers = protocol.object_headers(protocol.parse_metadata(upload.metadata))

    def run(self, read: Reader, checksum: protocol.Checksum | None) -> bool:
        """Stream the body; True when the client sent bytes beyond Upload-Length.

        The process's lease renewer keeps the lease for the whole request, also while it
        waits for a silent client (until RINDLE_READ_TIMEOUT ends the read) and while S3
        calls run. On a failure the tail is cut back to the bytes Redis acknowledges (a
        disk error, S3 down, a lost lease, a body too large), unless a commit's outcome
        is unknown: then Redis may acknowledge more than we know, and the next request
        cuts off what it does not (``Tail.open``)."""
        try:
            return self._run(read, checksum)
        except BaseException:
            if not self.uncertain:
                with contextlib.suppress(OSError):
                    self.tail.truncate(self.offset - self.committed)
            raise

    def _run(self, read: Reader, checksum: protocol.Checksum | None) -> bool:
        """Stream the body; True when the client sent bytes beyond Upload-Length.

        Without a checksum, full parts are shipped while the body keeps arriving (at
        most RINDLE_PARTS_IN_FLIGHT parts in flight and one filling on disk). With one,
        the whole body is spooled to the tail first and checked, then shipped: a body
        that does not match leaves no trace.
        """
        upload, tail = self.upload, self.tail
        limit = upload.length
        if limit is None:
            limit = protocol.deferred_limit(upload, self.writer.settings.max_size)
        room = limit - upload.offset  # bytes this upload can still take
        hasher = checksum.hasher() if checksum else None
        # Where the body goes: the tail, until it holds a full part; then a spool file
        # per part. ``start`` is the upload offset of its first byte.
        filling: SpoolFile = tail
        start = self.committed
        received = 0
        self.ended_early = False
        self.filling = filling
        try:
            while received < room:
                want = min(self.writer.settings.read_chunk, room - received)
                if hasher is None:
                    filling, start = self._ship_if_full(filling, start)
                    want = min(want, upload.part_size - filling.size)
                try:
                    data = read(want)
                except BodyEnded as exc:
                    reason = self.active.stop_reason or exc
                    log.info("upload %s: body ended early (%s)", upload.id, reason)
                    self.ended_early = True
                    break
                if not data:
                    break
                self.active.touch(len(data))
                filling.write(data)
                received += len(data)
                if hasher is not None:
                    hasher.update(data)
                    protocol.check_checksum_body(
                        upload, received, self.writer.settings.max_checksum_body
                    )
                else:
                    self._collect_shipped()  # a failed part ends the PATCH now
                    filling, start = self._ship_if_full(filling, start)
                if self.active.stop_reason:  # asked to let go (see lease_kept, the watcher)
                    log.info("upload %s: letting go (%s)", upload.id, self.active.stop_reason)
                    self.ended_early = True
                    break
            if self.held.lost is not None:
                raise self._lost()  # nothing more may be committed
            self._wait_shipped()
            if filling is not tail:  # the rest of the body becomes the tail
                filling.copy_to(tail)
        finally:
            self._let_shipped_end()
            if self.filling is not tail:
                self.filling.close()

        overflow = False
        if received == room and not self.ended_early:
            with contextlib.suppress(BodyEnded):
                overflow = bool(read(1))
        if (
            hasher is not None
            and checksum is not None
            and (self.ended_early or hasher.digest() != checksum.digest)
        ):
            tail.truncate(self.offset - self.committed)  # as it was before this PATCH
            if self.ended_early:
                return False  # an incomplete body cannot match: nothing kept
            raise ChecksumMismatch(upload.id)
        self._ship_waiting_parts()  # a spooled body
        if upload.length is not None and self.committed + tail.size == upload.length:
            self._ship_last()
        elif self.committed + tail.size != self.offset or self.declared is not None:
            self._commit_tail()
        return overflow

    def _commit_tail(self) -> None:
        """Acknowledge the tail's bytes: on disk first, in S3 too in shared tail mode
        (the bytes this PATCH added, as one more segment), then the offset that covers
        them (with the segments)."""
        tail, shared = self.tail, self.writer.shared
        if shared is not None and self._too_little_to_share():
            tail.truncate(self.offset - self.committed)
            if self.declared is None:
                return
        # Where its bytes start: a record rolled back past a part (a failover) must not
        # take them for its own buffered bytes.
        tail.mark_start(self.committed)
        tail.sync()
        new_offset = self.committed + tail.size
        generation, segments, superseding = None, self.segments, self.superseded
        covered = segments_size(segments)
        if shared is not None and tail.size > covered:
            if len(segments) >= MAX_SEGMENTS:  # small bodies of unknown length: merge
                segments, covered, superseding = [], 0, True
            with self.writer.sends, tail.slice(covered, tail.size - covered) as body:
                generation = shared.put(self.upload.id, body, tail.size - covered, new_offset)
            segments = [*segments, (generation.key, generation.etag, generation.size)]
        try:
            self._commit(
                lambda: self.writer.store.commit_offset(
                    self.upload.id,
                    self.token,
                    self.offset,
                    new_offset,
                    self.writer.settings.node_id,
                    self.declared,
                    tuple(segments) if shared is not None else (),
                    self._previous_tail(superseding),
                ),
                "commit",
            )
        except Fenced:
            if generation is not None:  # refused: nothing records this copy
                shared.delete_quietly(generation.key)  # type: ignore[union-attr]
            raise
        self.offset, self.declared = new_offset, None
        self.segments, self.superseded = segments, superseding

    def _too_little_to_share(self) -> bool:
        """A body that ended early and left only a few new bytes buffered (no part)
        keeps none of them in shared tail mode: one S3 object per few bytes would let a
        client make the server write far more than it sends (the client sends them again;
        a whole body that small is refused before it is read: check_shared_append)."""
        added = self.committed + self.tail.size - self.offset
        minimum = protocol.min_shared_append(self.upload.part_size)
        return self.ended_early and not self.superseded and 0 < added < minimum

    def _previous_tail(self, superseding: bool) -> tuple[str, ...] | None:
        """The previous shared copies a commit records: once a commit replaces the
        segments recorded when the PATCH began, those (None: the record's stay)."""
        start = self.shared_start[0]
        return start if start and superseding else None

    def drop_superseded(self) -> None:
        """After the PATCH's last commit: once a commit replaced the segments recorded
        when it began, those stay as the previous ones, and the ones before them go.
        Kept also when replicas confirmed the commit: a primary restarted without its
        last second of writes (AOF's everysec) hands its older data to the replicas too."""
        shared, (start, start_prev) = self.writer.shared, self.shared_start
        if shared is None or not start or not self.superseded:
            return
        current = {key for key, _, _ in self.segments}
        for key in start_prev:
            if key not in start and key not in current:
                shared.delete_quietly(key)

    def _commit(self, change: Callable[[], None], what: str) -> None:
        """Apply a fenced change of this writer, waiting out transient Redis errors
        while the lease lasts. Fenced only when every try was refused (nothing was
        applied): the caller may undo. When a try's outcome is unknown (its answer was
        lost), the change may be in Redis: OutcomeUnknown, and nothing may be undone."""
        unknown = False

        def attempt() -> None:
            nonlocal unknown
            sent_at = time.monotonic()
            try:
                change()
            except redis.RedisError as exc:
                unknown = unknown or is_transient(exc)
                raise
            self.held.confirm(sent_at, self.writer.renewer.ttl)  # a commit extends it
            self.moved = True

        try:
            self.call(attempt, what)
        except redis.RedisError as exc:
            self.uncertain = True
            if unknown:
                raise OutcomeUnknown(self.upload.id, what) from exc
            raise
        except Fenced as exc:
            if unknown:
                self.uncertain = True
                raise OutcomeUnknown(self.upload.id, what) from exc
            raise

    def call(self, fn: Callable[[], T], what: str) -> T:
        """``fn()``, a Redis call of this writer, waiting out transient errors while
        the lease lasts."""
        return wait_out(fn, self.held.valid_until, f"upload {self.upload.id}: {what}")

    def _lost(self) -> Exception:
        """Why this writer may commit nothing more (the renewer lost its lease)."""
        lost = self.held.lost
        assert lost is not None
        return lost

    def replicated(self) -> bool | None:
        """With RINDLE_REDIS_WAIT_REPLICAS, the offset the answer reports must survive a
        failover: wait (bounded) until the replicas hold this PATCH's commits. True when
        they do, False when they did not in time (the answer is then 503: not
        acknowledged yet), None without commits or replicas to wait for."""
        if not self.moved:
            return None
        if self.confirmed is not None and self.confirmed[0] == self.offset:
            return self.confirmed[1]  # asked already, and nothing committed since
        done = self.call(lambda: self.writer.store.replicated(self.upload.id), "replicas")
        self.confirmed = (self.offset, done)
        if done is False:
            log.warning(
                "upload %s: Redis replicas did not confirm offset %d in time",
                self.upload.id,
                self.offset,
            )
        return done

    def _is_full_part(self, size: int, start: int) -> bool:
        """``size`` bytes from upload offset ``start`` hold a full part that is not the
        upload's last part (the last part is _ship_last's)."""
        part_size, length = self.upload.part_size, self.upload.length
        return size >= part_size and (length is None or start + part_size < length)

    def _ship_if_full(self, filling: SpoolFile, start: int) -> tuple[SpoolFile, int]:
        """Once ``filling`` (from upload offset ``start``) holds a full part, ship it in
        the background; the body then goes on into a new spool file. Returns where the
        body goes now, and that file's start."""
        if not self._is_full_part(filling.size, start):
            return filling, start
        self._ship_meanwhile(filling, start)
        self.filling = SpoolFile.anonymous(self.writer.settings.tmp_dir)
        return self.filling, start + self.upload.part_size

    def _ship_waiting_parts(self) -> None:
        """Ship every full part of a spooled body from where it lies, then drop them all
        at once: one copy of the rest, not one per part."""
        shipped = 0
        while self._is_full_part(self.tail.size - shipped, self.committed):
            with self.writer.sends:
                self._ship_part(self.tail, shipped)
            shipped += self.upload.part_size
        if shipped:
            self.tail.drop_front(shipped)

    def _ship_meanwhile(self, spool: SpoolFile, start: int) -> None:
        """Upload the full part in ``spool`` in the background; commit it after the part
        before it. Waits first while RINDLE_PARTS_IN_FLIGHT parts are in flight (S3 is
        slower than the client): this bounds the disk a PATCH uses."""
        self._ensure_multipart()
        while len(self.inflight) >= self.writer.settings.parts_in_flight:
            self.inflight.popleft().result()
        before = self.inflight[-1] if self.inflight else None

        def ship() -> None:
            try:
                self._ship_part(spool, 0, before, start, empty_after=spool is self.tail)
            except BaseException:
                # The request thread may be waiting for a client that sends nothing:
                # end its read, so that the client hears of the failure now.
                self.active.stop("part upload failed")
                raise
            finally:
                if spool is not self.tail:
                    spool.close()  # its part is committed (or never will be): free it now

        # (in the request's context: its log lines carry the request and upload ids)
        self.inflight.append(self.writer.part_uploads.submit(contextvars.copy_context().run, ship))

    def _collect_shipped(self) -> None:
        """Forget the parts committed so far; raise the error of a failed one."""
        while self.inflight and self.inflight[0].done():
            self.inflight.popleft().result()

    def _wait_shipped(self) -> None:
        while self.inflight:
            self.inflight.popleft().result()  # S3's or Redis's error: nothing more committed

    def _let_shipped_end(self) -> None:
        """On the way out by an error: a part in flight reads a spool file, and a late
        UploadPart must not follow a newer writer's: let them all end first."""
        while self.inflight:
            with contextlib.suppress(Exception):
                self.inflight.popleft().result()

    def _ensure_multipart(self) -> None:
        if not self.s3_upload_id:
            self.s3_upload_id = self.writer.s3.create_multipart(
                self.upload.key, self.object_headers
            )
            # Saved at once, so that an abort can always find it. Refused (the upload
            # was deleted, or the lease lost meanwhile): nobody else will know of it.
            # Unknown: Redis may record it, so it stays (the orphan sweep aborts it if not).
            try:
                self._commit(
                    lambda: self.writer.store.save_s3_upload_id(
                        self.upload.id, self.token, self.s3_upload_id
                    ),
                    "S3 upload id",
                )
            except Fenced:
                with contextlib.suppress(*S3_ERRORS):
                    self.writer.s3.abort_multipart(self.upload.key, self.s3_upload_id)
                raise

    def _ship_part(
        self,
        spool: SpoolFile,
        at: int,
        before: Future[None] | None = None,
        start: int | None = None,
        empty_after: bool = False,
    ) -> None:
        """Upload the full part at ``at`` in ``spool``, then (after ``before``, the part
        before it, is committed) commit it. The part number follows from the upload
        offset of its first byte (``start``, else the committed end). ``empty_after``:
        the spool holds only this part, and is emptied once it is committed. A tail
        holding committed bytes is harmless: Redis says nothing is buffered from then
        on, so the next request cuts the file back."""
        self._ensure_multipart()
        size = self.upload.part_size
        if start is None:
            start = self.committed
        number = start // size + 1
        with spool.slice(at, size) as body:
            etag = self.writer.s3.upload_part(
                self.upload.key, self.s3_upload_id, number, body, size
            )
        if before is not None:
            before.result()  # the part before failed: this one is not committed
        assert self.committed == start, "parts are committed in order"
        new_offset = start + size
        self._commit(
            lambda: self.writer.store.commit_part(
                self.upload.id,
                self.token,
                self.offset,
                new_offset,
                (number, etag, size),
                self.writer.settings.node_id,
                self.declared,
                self._previous_tail(True),
            ),
            f"commit of part {number}",
        )
        self.committed = self.offset = new_offset
        self.declared = None
        if empty_after:
            spool.truncate(0)  # frees its disk while the body keeps arriving
        self.segments, self.superseded = [], True

    def _ship_last(self) -> None:
        """Ship the remaining bytes, then move to assembling and enqueue completion."""
        upload, s3, size = self.upload, self.writer.s3, self.tail.size
        assert upload.length is not None
        last_part, object_etag = None, ""
        if self.s3_upload_id and size:
            number = self.committed // upload.part_size + 1
            with self.writer.sends, self.tail.slice(0, size) as body:
                etag = s3.upload_part(upload.key, self.s3_upload_id, number, body, size)
            last_part = (number, etag, size)
        elif not self.s3_upload_id:
            with self.writer.sends, self.tail.slice(0, size) as body:
                object_etag = s3.put_object(upload.key, body, size, self.object_headers)
        # (A multipart upload and nothing left: the last full part was the last part.)
        self._commit(
            lambda: self.writer.store.finish_receiving(
                upload.id,
                self.token,
                self.offset,
                upload.length,
                last_part,
                object_etag,
                self._previous_tail(True),
            ),
            "last commit",
        )
        self.offset = upload.length
        self.tail.remove()
        self.segments, self.superseded = [], True
        if self.replicated() is False:
            return  # not assembled before the replicas hold it: the next HEAD enqueues it
        try:  # a Redis reset is waited out: the client may never ask again (no HEAD)
            self.call(lambda: self.writer.jobs.complete(upload.id), "enqueue of its completion")
        except Exception:  # the upload is safe in S3; the maintenance sweep re-enqueues
            log.exception("upload %s: could not enqueue completion", upload.id)
