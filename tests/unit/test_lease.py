"""The writer lease on fakeredis: exclusive, released by its holder only, renewed under
fencing, released on request, taken over from a dead holder of this host."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import redis

from rindle.errors import Fenced, LeaseHeld
from rindle.keys import release_key, writer_key
from rindle.lease import (
    BOOT_ID,
    IDLE_SECONDS,
    RELEASE_IF_IDLE,
    RELEASE_NOW,
    ActiveWrite,
    Lease,
    LeaseRenewer,
    ReleaseWatcher,
    holder_is_dead,
    new_token,
)
from rindle.store import UploadStore
from rindle.upload import State

from .conftest import LEASE_SECONDS, PART, RELEASE_WAIT


@pytest.fixture
def upload_id(store: UploadStore) -> str:
    store.create("u", 3 * PART, PART, "uploads/u", "")
    return "u"


def dead_pid() -> int:
    """The pid of a process that ran and was reaped (so no process has it, for now)."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def token_of(host: str, pid: int, boot: str = BOOT_ID) -> str:
    return f"{host}/{boot}/{pid}/test"


# -- acquire and release --------------------------------------------------------------


def test_acquire_is_exclusive(lease: Lease, upload_id: str, fake_redis):
    lease.acquire(upload_id, "a")
    with pytest.raises(LeaseHeld) as caught:
        lease.acquire(upload_id, "b")
    assert caught.value.status == 423
    assert caught.value.headers == {"Retry-After": "1"}
    assert lease.holder(upload_id) == "a"
    assert 0 < fake_redis.pttl(writer_key(upload_id)) <= LEASE_SECONDS * 1000


def test_only_the_holder_releases(lease: Lease, upload_id: str):
    lease.acquire(upload_id, "a")
    lease.release(upload_id, "b")  # not b's to drop
    assert lease.holder(upload_id) == "a"
    lease.release(upload_id, "a")
    assert not lease.held(upload_id)
    lease.acquire(upload_id, "b")
    assert lease.holder(upload_id) == "b"


def test_acquiring_clears_a_release_request_meant_for_the_previous_holder(
    lease: Lease, upload_id: str, fake_redis
):
    lease.acquire(upload_id, "a")
    lease.request_release(upload_id)
    lease.release(upload_id, "a")
    lease.acquire(upload_id, "b")
    assert fake_redis.get(release_key(upload_id)) is None
    assert lease.renew(upload_id, "b") is False


# -- renew and release requests -------------------------------------------------------


def test_renew_extends_the_lease_and_reports_no_request(lease, upload_id, fake_redis):
    lease.acquire(upload_id, "a")
    fake_redis.pexpire(writer_key(upload_id), 100)
    assert lease.renew(upload_id, "a") is False
    assert fake_redis.pttl(writer_key(upload_id)) > 100


def test_renew_tells_the_holder_to_let_go_on_a_release_request(lease: Lease, upload_id: str):
    lease.acquire(upload_id, "a")
    lease.request_release(upload_id, RELEASE_NOW)
    assert lease.renew(upload_id, "a") is True


def test_renew_ignores_an_idle_only_release_request(lease: Lease, upload_id: str, fake_redis):
    """A HEAD asks only an idle writer; the release watcher judges idleness, not renew."""
    lease.acquire(upload_id, "a")
    lease.request_release(upload_id, RELEASE_IF_IDLE)
    assert fake_redis.get(release_key(upload_id)) == RELEASE_IF_IDLE
    assert lease.renew(upload_id, "a") is False


def test_an_idle_only_request_never_weakens_a_pending_release(lease: Lease, upload_id: str):
    lease.acquire(upload_id, "a")
    lease.request_release(upload_id, RELEASE_NOW)
    lease.request_release(upload_id, RELEASE_IF_IDLE)
    assert lease.renew(upload_id, "a") is True


def test_a_release_request_is_published_for_blocked_readers(lease, upload_id, fake_redis):
    subscriber = fake_redis.pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe("rindle:release")
    subscriber.get_message(timeout=0.1)  # the subscribe confirmation
    lease.request_release(upload_id, RELEASE_IF_IDLE)
    message = subscriber.get_message(timeout=1.0)
    assert message is not None and message["data"] == f"{RELEASE_IF_IDLE} {upload_id}"
    assert fake_redis.pttl(release_key(upload_id)) > 0  # a request does not linger
    subscriber.close()


@pytest.mark.parametrize("how", ["expired", "taken"])
def test_renew_after_the_lease_was_lost_is_fenced(lease, upload_id, fake_redis, how):
    lease.acquire(upload_id, "a")
    fake_redis.delete(writer_key(upload_id))  # ran out
    if how == "taken":
        lease.acquire(upload_id, "b")
    with pytest.raises(Fenced):
        lease.renew(upload_id, "a")
    assert lease.holder(upload_id) == (None if how == "expired" else "b")


def test_renew_after_the_upload_ended_is_fenced(lease, upload_id, store):
    lease.acquire(upload_id, "a")
    store.set_state(upload_id, State.TERMINATED, (State.CREATED,))
    with pytest.raises(Fenced):
        lease.renew(upload_id, "a")


# -- waiting for a holder to let go ---------------------------------------------------


def test_tokens_name_this_host_boot_and_process():
    token = new_token()
    host, boot, pid, secret = token.split("/", 3)
    assert (host, boot, pid) == (socket.gethostname(), BOOT_ID, str(os.getpid()))
    assert secret and secret != new_token().split("/", 3)[3]
    assert not holder_is_dead(token)


def test_a_dead_holder_is_recognised_on_this_host_only():
    pid = dead_pid()
    assert holder_is_dead(token_of(socket.gethostname(), pid))
    assert not holder_is_dead(token_of("another-host", pid))  # only its TTL tells
    assert not holder_is_dead("not-a-token")


def test_a_holder_in_another_container_with_this_host_name_is_never_taken_over():
    """Two containers may share a host name: a pid that is dead here may be alive in the
    other container's PID namespace (or on another boot of another machine)."""
    pid = dead_pid()
    assert not holder_is_dead(token_of(socket.gethostname(), pid, boot="other-boot-ns"))


def test_wait_for_release_takes_over_a_dead_holder_at_once(store: UploadStore, upload_id):
    lease = Lease(store, release_wait=5.0)  # taking over must not wait for this
    dead = token_of(socket.gethostname(), dead_pid())
    lease.acquire(upload_id, dead)
    started = time.monotonic()
    lease.wait_for_release(upload_id, lambda: lease.acquire(upload_id, "mine"))
    assert time.monotonic() - started < 1.0
    assert lease.holder(upload_id) == "mine"


@pytest.mark.parametrize("host", ["this", "another"])
def test_wait_for_release_gives_up_on_a_holder_that_keeps_the_lease(lease, upload_id, host):
    """A live holder of this host, or any of another host (its pid means nothing here)."""
    if host == "this":
        holder = token_of(socket.gethostname(), os.getpid())
    else:
        holder = token_of("another-host", dead_pid())
    lease.acquire(upload_id, holder)
    started = time.monotonic()
    with pytest.raises(LeaseHeld):
        lease.wait_for_release(upload_id, lambda: lease.acquire(upload_id, "mine"))
    assert RELEASE_WAIT <= time.monotonic() - started < RELEASE_WAIT + 1.0
    assert lease.holder(upload_id) == holder
    assert lease.renew(upload_id, holder) is True  # the holder was asked to let go


def test_wait_for_release_returns_once_the_holder_lets_go(lease, upload_id, fake_redis):
    lease.acquire(upload_id, "holder")
    attempts = 0

    def attempt() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 3:  # the holder saw the request and let go meanwhile
            lease.release(upload_id, "holder")
        lease.acquire(upload_id, "mine")
        return "acquired"

    assert lease.wait_for_release(upload_id, attempt) == "acquired"
    assert lease.holder(upload_id) == "mine"


def test_wait_until_free_asks_an_idle_holder_only(lease, upload_id, fake_redis):
    lease.acquire(upload_id, token_of("another-host", 1))
    with pytest.raises(LeaseHeld):
        lease.wait_until_free(upload_id, RELEASE_IF_IDLE)
    assert fake_redis.get(release_key(upload_id)) == RELEASE_IF_IDLE
    lease.release(upload_id, token_of("another-host", 1))
    lease.wait_until_free(upload_id, RELEASE_IF_IDLE)  # free: returns at once


# -- the release watcher's decisions (no thread, no Redis) ---------------------------


class RecordingInterrupt:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


@pytest.fixture
def watcher(monkeypatch: pytest.MonkeyPatch) -> ReleaseWatcher:
    """A watcher whose thread never starts: its decisions are called directly."""
    watcher = ReleaseWatcher(lambda: None, read_timeout=5)
    monkeypatch.setattr(watcher, "_ensure_thread", lambda: None)
    return watcher


def test_the_watcher_interrupts_its_writer_on_a_release_request(watcher: ReleaseWatcher):
    interrupt = RecordingInterrupt()
    with watcher.watching("u", interrupt) as write:
        watcher._release("other", RELEASE_NOW)  # not ours
        assert interrupt.calls == 0
        watcher._release("u", RELEASE_NOW)
        watcher._release("u", RELEASE_NOW)  # stopped once
        assert (interrupt.calls, write.stop_reason) == (1, "release requested")
    watcher._release("u", RELEASE_NOW)  # gone: nothing to interrupt
    assert interrupt.calls == 1


def test_the_watcher_interrupts_on_an_idle_request_only_an_idle_writer(watcher):
    interrupt = RecordingInterrupt()
    with watcher.watching("u", interrupt) as write:
        write.touch()
        watcher._release("u", RELEASE_IF_IDLE)
        assert interrupt.calls == 0
        write.last_read -= IDLE_SECONDS
        watcher._release("u", RELEASE_IF_IDLE)
        assert interrupt.calls == 1


def test_the_watcher_stops_a_stalled_read(watcher: ReleaseWatcher):
    interrupt = RecordingInterrupt()
    with watcher.watching("u", interrupt) as write:
        watcher._stop_stalled()
        assert interrupt.calls == 0
        write.last_read -= watcher.read_timeout + 1
        watcher._stop_stalled()
        assert (interrupt.calls, write.stop_reason) == (1, "read timeout")


# -- the process's one renewer --------------------------------------------------------


def renewer_of(lease: Lease) -> LeaseRenewer:
    """A renewer whose thread never runs: the tests call ``renew_all`` themselves."""
    renewer = LeaseRenewer(lease)
    renewer._thread = threading.current_thread()  # (it only starts one when None)
    return renewer


def test_one_round_trip_renews_every_lease_of_the_process(lease, store, fake_redis):
    renewer = renewer_of(lease)
    ids = [f"u{i}" for i in range(50)]
    writes = {}
    with contextlib.ExitStack() as stack:
        for upload_id in ids:
            store.create(upload_id, 3 * PART, PART, f"uploads/{upload_id}", "")
            lease.acquire(upload_id, f"t-{upload_id}")
            fake_redis.pexpire(writer_key(upload_id), 1000)
            writes[upload_id] = ActiveWrite(lambda: None)
            held = stack.enter_context(
                renewer.keeping(upload_id, f"t-{upload_id}", time.monotonic())
            )
            held.attach(writes[upload_id])
        renewer.renew_all()  # the first also loads the script into Redis
        executes = []
        real_pipeline = fake_redis.pipeline

        def pipeline(*args, **kwargs):
            pipe = real_pipeline(*args, **kwargs)
            real_execute = pipe.execute
            pipe.execute = lambda *a, **k: executes.append(1) or real_execute(*a, **k)
            return pipe

        fake_redis.pipeline = pipeline
        renewer.renew_all()

    assert len(executes) == 1
    assert all(fake_redis.pttl(writer_key(upload_id)) > 1000 for upload_id in ids)
    assert not any(write.stop_reason for write in writes.values())


def test_a_renewal_that_fails_once_keeps_the_writer_going(lease, upload_id, monkeypatch):
    """Redis drops the connection once (a maintenance restart): most of the lease's time
    remains, so the writer goes on (before: one failed renewal ended the PATCH)."""
    renewer = renewer_of(lease)
    lease.acquire(upload_id, "a")
    write = ActiveWrite(lambda: None)
    real = lease.renew_all
    failures = {"left": 1}

    def flaky(leases):
        if failures["left"]:
            failures["left"] -= 1
            raise redis.ConnectionError("Connection reset by peer")
        return real(leases)

    monkeypatch.setattr(lease, "renew_all", flaky)
    with renewer.keeping(upload_id, "a", time.monotonic()) as held:
        held.attach(write)
        with pytest.raises(redis.ConnectionError):
            renewer.renew_all()
        assert held.lost is None and not write.stop_reason
        renewer.renew_all()
        assert held.lost is None and not write.stop_reason


def test_a_writer_stops_once_its_lease_may_have_run_out(lease, upload_id, monkeypatch):
    renewer = renewer_of(lease)
    lease.acquire(upload_id, "a")
    write = ActiveWrite(lambda: None)

    def down(leases):
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(lease, "renew_all", down)
    with renewer.keeping(upload_id, "a", time.monotonic() - renewer.ttl) as held:
        held.attach(write)
        with pytest.raises(redis.ConnectionError):
            renewer.renew_all()
        assert isinstance(held.lost, redis.ConnectionError)
        assert write.stop_reason.startswith("lease lost")


@pytest.mark.parametrize("how", ["taken", "ended"])
def test_a_lease_lost_for_sure_stops_the_writer_at_once(lease, upload_id, store, how):
    renewer = renewer_of(lease)
    lease.acquire(upload_id, "a")
    write = ActiveWrite(lambda: None)
    with renewer.keeping(upload_id, "a", time.monotonic()) as held:
        held.attach(write)
        if how == "taken":
            lease.release(upload_id, "a")
            lease.acquire(upload_id, "b")
        else:
            store.set_state(upload_id, State.TERMINATED, (State.CREATED,))
        renewer.renew_all()
        assert isinstance(held.lost, Fenced)
        assert write.stop_reason.startswith("lease lost")


def test_the_renewer_passes_on_a_release_request(lease, upload_id):
    renewer = renewer_of(lease)
    lease.acquire(upload_id, "a")
    write = ActiveWrite(lambda: None)
    with renewer.keeping(upload_id, "a", time.monotonic()) as held:
        held.attach(write)
        lease.request_release(upload_id, RELEASE_NOW)
        renewer.renew_all()
        assert held.lost is None
        assert write.stop_reason == "release requested"


def test_an_unanswered_lease_claim_is_found_on_the_retry(lease, upload_id, monkeypatch):
    """SET NX went through but its answer was lost: the retry sees our own token."""
    real_set = lease.redis.set
    lost = {"left": 1}

    def set_then_lose(*args, **kwargs):
        result = real_set(*args, **kwargs)
        if lost["left"]:
            lost["left"] -= 1
            raise redis.ConnectionError("Connection reset by peer")
        return result

    monkeypatch.setattr(lease.redis, "set", set_then_lose)
    lease.acquire(upload_id, "a")
    assert lease.holder(upload_id) == "a"


def test_a_lease_a_failover_brought_back_is_dropped_at_once(lease, upload_id, fake_redis):
    """This process released its lease, but the promoted replica never heard: the lease
    is back, naming a live process (this one) that writes nothing. A new request takes
    it over at once instead of waiting for it to expire (423 meanwhile)."""
    mine = new_token()
    lease.acquire(upload_id, mine)
    lease.let_go(upload_id, mine)
    fake_redis.set(writer_key(upload_id), mine, px=60_000)  # the failover's doing

    lease.wait_for_release(upload_id, lambda: lease.acquire(upload_id, "b"))
    assert lease.holder(upload_id) == "b"


def test_drop_orphan_spares_a_lease_this_process_still_holds(lease, upload_id, fake_redis):
    held, orphan = new_token(), new_token()
    lease.acquire(upload_id, held)
    lease.drop_orphan(upload_id)
    assert lease.holder(upload_id) == held, "a live writer's lease stays"
    fake_redis.set(writer_key(upload_id), orphan)
    lease.drop_orphan(upload_id)
    assert not lease.held(upload_id)
