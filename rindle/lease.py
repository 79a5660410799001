"""The writer lease: one request writes an upload at a time, across all nodes.

A request claims the lease (a token in Redis with a TTL) before it touches the tail, and
the process's one ``LeaseRenewer`` keeps it while the request works; every commit
re-checks the token in the same transaction (``UploadStore.fenced``), so a request that
lost its lease can never commit. A request that finds the lease held asks the holder to
let go (a flag plus a pub/sub message) and waits a bounded time; a holder whose process
died on this host is taken over at once.

The release watcher is the holder's side: one thread per process that knows how to
interrupt its writers' blocked reads, on a release request or when a client stalls; and,
when the process shuts down, it ends all of them at once (``stop_all``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import redis

from rindle import metrics
from rindle.errors import Fenced, LeaseHeld
from rindle.keys import RELEASE_CHANNEL, release_key, upload_key, writer_key
from rindle.store import UploadStore
from rindle.transient import is_transient, wait_out
from rindle.upload import WRITABLE

log = logging.getLogger("rindle")
T = TypeVar("T")

RELEASE_REQUEST_MS = 10_000
RELEASE_NOW = "now"  # any writer lets go (a new PATCH: one writer at a time)
RELEASE_IF_IDLE = "idle"  # only a writer receiving nothing (a HEAD: not a monitor's)
# A writer that received nothing for this long lets go when a HEAD asks.
IDLE_SECONDS = 1.0
# The watcher thread exits after this long without writers (the next one restarts it).
IDLE_EXIT_SECONDS = 60
# A lease is renewed this many times per TTL: Redis may be out of reach for most of a
# lease (a failover, a restart) before a writer must stop.
RENEWALS_PER_LEASE = 4

# Extends a writer's lease if ``token`` still holds it and the upload still takes bytes;
# says whether a release was asked for. One command per lease, so that the renewer sends
# every lease of its process in one round trip. The keys share the upload's hash tag.
RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'lost' end
local state = redis.call('HGET', KEYS[2], 'state')
if state ~= ARGV[3] and state ~= ARGV[4] then return 'ended' end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if redis.call('GET', KEYS[3]) == ARGV[5] then return 'release' end
return 'ok'
"""


def _boot_id() -> str:
    """Which boot of which kernel, and which PID namespace this process lives in: two
    containers may share a host name (or a host), and a pid means nothing across them."""
    parts = []
    with contextlib.suppress(OSError), open("/proc/sys/kernel/random/boot_id") as f:
        parts.append(f.read().strip())
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid").strip("pid:[]"))
    return "-".join(parts) or "unknown"


BOOT_ID = _boot_id()


def new_token() -> str:
    """A writer token: random, and naming its host, boot and PID namespace, and process,
    so that a request on the same host (and in the same namespace) can tell that a holder
    died."""
    return f"{socket.gethostname()}/{BOOT_ID}/{os.getpid()}/{secrets.token_urlsafe(16)}"


def _of_this_process(token: str) -> bool:
    host, boot, pid, _ = [*token.split("/", 3), "", "", ""][:4]
    return (host, boot, pid) == (socket.gethostname(), BOOT_ID, str(os.getpid()))


def holder_is_dead(token: str) -> bool:
    host, boot, pid, _ = [*token.split("/", 3), "", "", ""][:4]
    if host != socket.gethostname() or boot != BOOT_ID or BOOT_ID == "unknown":
        return False  # another machine's, or another container's: only its expiry tells
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    return False


class Lease:
    def __init__(self, store: UploadStore, release_wait: float) -> None:
        self.store = store
        self.redis = store.redis
        self.release_wait = release_wait
        self._renew = self.redis.register_script(RENEW_SCRIPT)
        # Tokens of this process that hold (or are claiming) a lease: any other token of
        # this process is an orphan (a failover brought back a lease it had released).
        self._live: set[str] = set()

    def acquire(self, upload_id: str, token: str) -> None:
        """Claim the lease for ``token`` (LeaseHeld if another holds it). Transient Redis
        errors are waited out for half a lease: a try whose answer was lost may have
        claimed it, which the next try sees."""
        lease = writer_key(upload_id)

        def claim() -> bool:
            if self.redis.set(lease, token, nx=True, px=self.store.lease_ms):
                return True
            return bool(self.redis.get(lease) == token)

        until = time.monotonic() + self.store.lease_ms / 2000
        self._live.add(token)
        try:
            claimed = wait_out(claim, until, f"upload {upload_id}: lease")
        except BaseException:
            self._live.discard(token)
            raise
        if not claimed:
            self._live.discard(token)
            raise LeaseHeld(upload_id)
        self.redis.delete(release_key(upload_id))  # meant for the previous holder

    def held(self, upload_id: str) -> bool:
        return bool(self.redis.exists(writer_key(upload_id)))

    def holder(self, upload_id: str) -> str | None:
        return self.redis.get(writer_key(upload_id))

    def renew(self, upload_id: str, token: str) -> bool:
        """Extend our lease (Fenced if it was lost or the upload ended); True when another
        request asked us to let go even while bytes are flowing."""
        (outcome,) = self.renew_all([(upload_id, token)])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def renew_all(self, leases: list[tuple[str, str]]) -> list[bool | Exception]:
        """Renew many (upload id, token) leases in one round trip. For each: whether a
        release was asked for, or the error (Fenced: lost, or the upload ended; a Redis
        error of that lease). A failed round trip raises its RedisError."""
        replies = self._run_renewals(leases)
        if any(isinstance(reply, redis.exceptions.NoScriptError) for reply in replies):
            self.redis.script_load(RENEW_SCRIPT)  # a restarted or promoted Redis forgot it
            replies = self._run_renewals(leases)
        return [
            _renewal(upload_id, reply)
            for (upload_id, _), reply in zip(leases, replies, strict=True)
        ]

    def _run_renewals(self, leases: list[tuple[str, str]]) -> list[object]:
        with self.redis.pipeline(transaction=False) as pipe:
            for upload_id, token in leases:
                keys = (writer_key(upload_id), upload_key(upload_id), release_key(upload_id))
                args = (token, self.store.lease_ms, *WRITABLE, RELEASE_NOW)
                pipe.evalsha(self._renew.sha, len(keys), *keys, *args)
            return list(pipe.execute(raise_on_error=False))

    def release(self, upload_id: str, token: str) -> None:
        """Drop the lease if it is still ours (a lost lease is someone else's now)."""
        lease = writer_key(upload_id)

        def attempt(pipe: redis.client.Pipeline) -> None:
            if pipe.get(lease) == token:  # else it changed hands: not ours to delete
                pipe.multi()
                pipe.delete(lease)

        self.redis.transaction(attempt, lease)
        self._live.discard(token)

    def orphaned(self, token: str) -> bool:
        """Whether ``token`` is this process's but no request of it holds it any more."""
        return _of_this_process(token) and token not in self._live

    def drop_orphan(self, upload_id: str) -> None:
        """A request waits for the writer of ``upload_id``: if the lease holder is an
        orphan of this process, let it go now rather than when it expires."""
        holder = self.holder(upload_id)
        if holder is not None and self.orphaned(holder):
            log.warning("upload %s: dropping an orphaned lease of this process", upload_id)
            self.release(upload_id, holder)

    def let_go(self, upload_id: str, token: str, wait: float = 5.0) -> None:
        """A writer's release when it is done: transient errors are waited out a few
        seconds, then left to the lease's expiry (logged; nothing is lost by it, the next
        request only waits longer)."""
        try:
            wait_out(
                lambda: self.release(upload_id, token),
                time.monotonic() + wait,
                f"upload {upload_id}: release",
            )
        except redis.RedisError as exc:
            if not is_transient(exc):
                raise
            log.warning("upload %s: lease not released (%s); it expires by itself", upload_id, exc)
        finally:
            self._live.discard(token)  # no request of this process holds it any more

    def request_release(self, upload_id: str, kind: str = RELEASE_NOW) -> None:
        """Ask the writer of ``upload_id``, on whatever node, to save what it has and let
        go: a flag its lease thread sees within a second, and a message for a writer
        blocked in a read.
        RELEASE_NOW asks any writer; RELEASE_IF_IDLE only one that receives nothing."""
        with self.redis.pipeline(transaction=False) as pipe:
            # An idle-only request never weakens a pending unconditional one.
            pipe.set(
                release_key(upload_id), kind, px=RELEASE_REQUEST_MS, nx=kind == RELEASE_IF_IDLE
            )
            pipe.publish(RELEASE_CHANNEL, f"{kind} {upload_id}")
            pipe.execute()

    def wait_for_release(
        self,
        upload_id: str,
        attempt: Callable[[], T],
        kind: str = RELEASE_NOW,
        busy: tuple[type[Exception], ...] = (LeaseHeld,),
    ) -> T:
        """Run ``attempt``, which raises one of ``busy`` while someone else writes the
        upload; meanwhile ask that writer to let go, and take over a dead one's lease.
        LeaseHeld after RINDLE_RELEASE_WAIT seconds."""
        deadline = time.monotonic() + self.release_wait
        asked_at = 0.0
        while True:
            try:
                return attempt()
            except busy:
                holder = self.holder(upload_id)
                if holder is not None and (holder_is_dead(holder) or self.orphaned(holder)):
                    # Its process is gone (a crash, a restart): no need to wait for the
                    # lease to expire. The dead cannot commit, and the kernel freed its
                    # lock on the tail.
                    log.warning("upload %s: taking over the lease of dead %s", upload_id, holder)
                    self.release(upload_id, holder)
                    continue
                now = time.monotonic()
                if now >= deadline:
                    raise LeaseHeld(upload_id) from None
                if now - asked_at >= 1.0:  # again each second, in case a message was missed
                    if not asked_at:
                        metrics.RELEASE_REQUESTS.labels(kind).inc()
                    self.request_release(upload_id, kind)
                    asked_at = now
                time.sleep(0.05)

    def wait_until_free(self, upload_id: str, kind: str) -> None:
        """Until no request holds the upload (asking the holder to let go): a HEAD must
        report what a hanging PATCH received. LeaseHeld if it does not let go in time."""

        def free() -> None:
            if self.held(upload_id):
                raise LeaseHeld(upload_id)

        if self.held(upload_id):
            self.wait_for_release(upload_id, free, kind)


def _renewal(upload_id: str, reply: object) -> bool | Exception:
    if isinstance(reply, Exception):
        return reply
    if reply == "lost":
        return Fenced(f"upload {upload_id}: writer lease lost")
    if reply == "ended":
        return Fenced(f"upload {upload_id}: it ended (or its record is gone)")
    return reply == "release"


# -- the holder's side --------------------------------------------------------------


@dataclass
class ActiveWrite:
    """A running writer of this process. ``interrupt`` ends its blocked body read."""

    interrupt: Callable[[], None]
    last_read: float = field(default_factory=time.monotonic)
    stop_reason: str = ""
    received: int = 0  # bytes read so far
    window_start: float = field(default_factory=time.monotonic)
    window_received: int = 0  # ``received`` when the current rate window began

    def touch(self, count: int = 0) -> None:
        self.last_read = time.monotonic()
        self.received += count

    def stop(self, reason: str) -> None:
        if self.stop_reason:
            return
        self.stop_reason = reason
        with contextlib.suppress(OSError):
            self.interrupt()


class ReleaseWatcher:
    """Ends this process's writers' reads on a release request or a stalled client.

    A writer blocked in a read of a dead connection cannot check in with Redis. When a
    release request for one of them is published, or when a writer has read nothing for
    ``read_timeout`` seconds, the watcher interrupts its read: the writer keeps what it
    received (tail synced, offset committed) and lets go of the lease.
    """

    def __init__(
        self,
        connect: Callable[[], redis.Redis],
        read_timeout: float,
        min_rate: int = 0,
        rate_window: float = 30,
        on_orphan: Callable[[str], None] = lambda upload_id: None,
    ) -> None:
        """``min_rate`` bytes/s over each ``rate_window`` seconds, else a writer is
        stopped as too slow (0: no minimum): a client that drips a byte now and then
        never trips the read timeout, yet holds a thread and a lease for ever.
        ``connect`` opens the watcher's own Redis connection (pub/sub holds it);
        ``on_orphan(upload_id)`` is called for a release request of an upload this
        process runs no writer of (``Lease.drop_orphan``)."""
        self.connect = connect
        self.on_orphan = on_orphan
        self.read_timeout = read_timeout
        self.min_rate = min_rate
        self.rate_window = rate_window
        # Why this process is stopping ("" while it serves): set once, by stop_all.
        self.stopping = ""
        self._active: dict[str, ActiveWrite] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watching(self, upload_id: str, interrupt: Callable[[], None]) -> Iterator[ActiveWrite]:
        """Register the writer of ``upload_id`` (this process holds its lease)."""
        write = ActiveWrite(interrupt)
        with self._lock:
            self._active[upload_id] = write
        if self.stopping:
            # It got past the web layer's check just before the stop: its read ends at
            # once too, rather than hold up the shutdown.
            write.stop(self.stopping)
        self._ensure_thread()  # after registering: an idle watcher exits only when empty
        try:
            yield write
        finally:
            with self._lock:
                if self._active.get(upload_id) is write:
                    del self._active[upload_id]

    def stop_all(self, reason: str) -> int:
        """The process is shutting down: end every writer's read now, and that of any
        writer that registers from now on. Each keeps what it received (tail synced,
        offset committed) and answers with its offset, well before a SIGKILL would lose
        it. Returns how many writers were running."""
        self.stopping = self.stopping or reason  # before the snapshot: see ``watching``
        with self._lock:
            writes = list(self._active.values())
        for write in writes:
            write.stop(reason)
        return len(writes)

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="rindle-release-watcher", daemon=True
                    )
                    self._thread.start()

    def _run(self) -> None:
        """Watch while this process has writers; exit after a quiet minute (restarted by
        the next ``watching``)."""
        idle_since = time.monotonic()
        client = None
        while True:
            try:
                client = self.connect()
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(RELEASE_CHANNEL)
                while True:
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        kind, _, upload_id = (
                            message["data"].decode("utf-8", "replace").partition(" ")
                        )
                        self._release(upload_id, kind)
                    self._stop_stalled()
                    if self._active:
                        idle_since = time.monotonic()
                    elif time.monotonic() - idle_since > IDLE_EXIT_SECONDS and self._exit():
                        pubsub.close()
                        return
            except redis.RedisError as exc:  # keep watching for stalls, reconnect later
                if self._exit():
                    return  # nobody to watch; the next writer starts a new watcher
                log.warning("release watcher: Redis unavailable (%s), retrying", exc)
                deadline = time.monotonic() + 2
                while time.monotonic() < deadline:
                    self._stop_stalled()
                    time.sleep(0.5)
            finally:
                if client is not None:
                    client.close()

    def _exit(self) -> bool:
        with self._lock:
            if self._active:
                return False
            self._thread = None
            return True

    def _release(self, upload_id: str, kind: str) -> None:
        with self._lock:
            write = self._active.get(upload_id)
        if write is None:
            try:
                self.on_orphan(upload_id)
            except redis.RedisError as exc:
                log.warning("upload %s: orphaned lease not checked (%s)", upload_id, exc)
            return
        if kind == RELEASE_NOW or time.monotonic() - write.last_read >= IDLE_SECONDS:
            write.stop("release requested")

    def _stop_stalled(self) -> None:
        now = time.monotonic()
        with self._lock:
            writes = list(self._active.values())
        for write in writes:
            if now - write.last_read > self.read_timeout:
                write.stop("read timeout")
            elif self.min_rate and now - write.window_start >= self.rate_window:
                rate = (write.received - write.window_received) / (now - write.window_start)
                if rate < self.min_rate:
                    write.stop(f"too slow ({rate:.0f} B/s, at least {self.min_rate} B/s)")
                write.window_start, write.window_received = now, write.received


@dataclass
class HeldLease:
    """A lease the renewer keeps for a running writer of this process."""

    upload_id: str
    token: str
    valid_until: float  # monotonic: the lease lasts in Redis at least until then
    lost: Exception | None = None  # why the writer may commit nothing more
    # Stopped when the lease is lost or another request asks for it (once it reads).
    write: ActiveWrite | None = None
    released: bool = False  # another request asked for the upload

    def attach(self, write: ActiveWrite) -> None:
        """The writer starts reading the body: stop it on what happened before too."""
        self.write = write
        if self.lost is not None:
            write.stop(f"lease lost: {self.lost}")
        elif self.released:
            write.stop("release requested")

    def ask_to_let_go(self) -> None:
        self.released = True
        if self.write is not None:
            self.write.stop("release requested")  # another request waits

    def confirm(self, sent_at: float, ttl: float) -> None:
        """A renewal (or a commit) sent at ``sent_at`` extended the lease by ``ttl``."""
        self.valid_until = max(self.valid_until, sent_at + ttl)

    def lose(self, why: Exception) -> None:
        if self.lost is None:
            self.lost = why
            if self.write is not None:
                self.write.stop(f"lease lost: {why}")


class LeaseRenewer:
    """Keeps the leases of all running writers of this process: one thread, one
    pipelined round trip per interval whatever the number of open uploads.

    A renewal that fails for a transient reason (Redis failing over, a dropped
    connection) is tried again each second; a writer stops only once its lease may have
    run out in Redis (it could commit nothing more), or at once when Redis says the
    lease went to another request or the upload ended. A release request seen here
    stops the writer too (the watcher's pub/sub message usually comes first)."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.ttl = lease.store.lease_ms / 1000
        self.interval = self.ttl / RENEWALS_PER_LEASE
        self._held: list[HeldLease] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def keeping(self, upload_id: str, token: str, acquired_at: float) -> Iterator[HeldLease]:
        """Keep the lease ``token`` claimed (sent at ``acquired_at``, monotonic) while
        the block runs."""
        held = HeldLease(upload_id, token, acquired_at + self.ttl)
        with self._lock:
            self._held.append(held)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="rindle-lease-renewer", daemon=True
                )
                self._thread.start()
        try:
            yield held
        finally:
            with self._lock:
                self._held.remove(held)

    def renew_all(self) -> None:
        """Renew every lease held now, in one round trip; RedisError if it failed."""
        with self._lock:
            leases = list(self._held)
        if not leases:
            return
        sent_at = time.monotonic()
        try:
            outcomes = self.lease.renew_all([(held.upload_id, held.token) for held in leases])
        except redis.RedisError as exc:
            for held in leases:
                self._failed(held, exc)
            raise
        for held, outcome in zip(leases, outcomes, strict=True):
            if isinstance(outcome, Exception):
                self._failed(held, outcome)
                continue
            held.confirm(sent_at, self.ttl)
            if outcome:
                held.ask_to_let_go()

    def _failed(self, held: HeldLease, exc: Exception) -> None:
        if not is_transient(exc) or time.monotonic() >= held.valid_until:
            held.lose(exc)

    def _run(self) -> None:
        idle_since = time.monotonic()
        delay = self.interval
        while True:
            time.sleep(delay)
            with self._lock:
                if self._held:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > IDLE_EXIT_SECONDS:
                    self._thread = None  # the next writer starts a new one
                    return
            try:
                self.renew_all()
                delay = self.interval
            except redis.RedisError as exc:
                if delay == self.interval:  # one line per outage
                    log.warning("lease renewer: Redis unavailable (%s), retrying", exc)
                delay = min(1.0, self.interval)
