"""Redis and S3 faults for the fault campaign (``bench/fault_campaign.py``, issue #18).

``RedisFaults``: the campaign's Redis is a primary with AOF (``--appendonly yes
--appendfsync everysec``) and a replica; every process of the app reaches the primary
through a fault proxy (``front``), and the replica reaches it through another (``link``).
Faults, one at a time at random moments:

- ``reset``: every open connection to Redis is cut (TCP RST);
- ``stall``: nothing passes for a moment (0.5 to 3 s), then everything held flows on;
- ``restart``: the primary is stopped (SIGTERM or SIGKILL: with ``everysec`` the last
  second of writes may be lost) and started again on its AOF, same port;
- ``failover``: replication is held back (``link`` stalled) while the app goes on
  writing, then the replica is promoted (``REPLICAOF NO ONE``), ``front`` is switched to
  it and the old primary is gone for good: the new primary really lacks the last writes.
  A new replica of the new primary is made for the next failover;
- ``wipe`` (only with ``--redis-wipes``): the primary restarts without its AOF, as a
  Redis without persistence does: every record is gone.

``S3Faults``: an HTTP-aware fault proxy in front of S3 answers ``503 SlowDown`` or
``500 InternalError``, or resets, a random share of all requests for a few seconds.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import redis

from devstack import ManagedProcess, free_port
from devstack.services import LOOPBACK, wait_until
from tests.faultproxy import FaultProxy

REDIS_KINDS = ("reset", "stall", "restart", "failover")
S3_KINDS = ("slowdown", "internal", "reset")


class RedisNode:
    """One redis-server with AOF on a fixed port (so that a restart keeps its address)."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: ManagedProcess | None = None

    @property
    def address(self) -> tuple[str, int]:
        return LOOPBACK, self.port

    def start(self, replica_of: tuple[str, int] | None = None) -> RedisNode:
        argv = [
            shutil.which("redis-server") or "redis-server",
            *("--port", str(self.port), "--bind", LOOPBACK, "--save", ""),
            *("--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.dir)),
            *("--daemonize", "no"),
        ]
        if replica_of is not None:
            argv += ["--replicaof", replica_of[0], str(replica_of[1])]
        self.proc = ManagedProcess(
            f"redis-{self.name}", argv, log_path=self.dir / "redis.log"
        ).start()
        client = self.client()
        try:
            wait_until(client.ping, timeout=30, procs=[self.proc], what="for PING (AOF load)")
        finally:
            client.close()
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=5)

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None:
            self.proc.kill() if kill else self.proc.stop(timeout=10)
            self.proc = None

    def wipe(self) -> None:
        """Forget everything on disk (the next start begins empty)."""
        for path in self.dir.iterdir():
            if path.name != "redis.log":
                shutil.rmtree(path) if path.is_dir() else path.unlink()


class RedisFaults:
    """The campaign's Redis (primary, replica, proxies) and its fault injector."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root = root / "redis"
        self.rng = random.Random(seed)
        self.generation = 0
        self.primary = RedisNode(self.root, "r0").start()
        self.front = FaultProxy(self.primary.address, name="redis-front").start()
        self.link: FaultProxy | None = None
        self.replica: RedisNode | None = None
        self.injected: Counter[str] = Counter()
        self.notes: list[str] = []
        self.lock = threading.Lock()
        self._new_replica()

    @property
    def url(self) -> str:
        """What the app and the campaign's own checks use: the front proxy."""
        return f"redis://{self.front.address}/0"

    def _new_replica(self) -> None:
        self.generation += 1
        self.link = FaultProxy(self.primary.address, name="redis-link").start()
        host, port = self.link.host, self.link.port
        self.replica = RedisNode(self.root, f"r{self.generation}").start((host, port))
        client = self.replica.client()
        try:
            wait_until(
                lambda: client.info("replication").get("master_link_status") == "up",
                timeout=60,
                what="for the replica to sync",
            )
        finally:
            client.close()

    def inject(self, kind: str | None = None) -> str:
        """One fault: ``kind``, or one of REDIS_KINDS at random; returns its kind."""
        kind = kind or self.rng.choice(REDIS_KINDS)
        with self.lock:
            getattr(self, f"_{kind}")()
        self.injected[kind] += 1
        return kind

    def _reset(self) -> None:
        self.front.reset()

    def _stall(self) -> None:
        self.front.stall()
        time.sleep(self.rng.uniform(0.5, 3.0))
        self.front.heal()

    def _restart(self) -> None:
        kill = self.rng.random() < 0.5
        self.notes.append(f"restart ({'SIGKILL' if kill else 'SIGTERM'})")
        self.primary.stop(kill=kill)
        time.sleep(self.rng.uniform(0.1, 1.0))  # the app meets refused connections
        self.primary.start()

    def _wipe(self) -> None:
        """A restart of a Redis without persistence: nothing comes back."""
        self.primary.stop(kill=True)
        self.primary.wipe()
        self.primary.start()

    def _failover(self) -> None:
        assert self.link is not None and self.replica is not None
        old, new, link = self.primary, self.replica, self.link
        link.stall()  # replication held back: what the app writes now, the replica lacks
        held = self.rng.uniform(0.3, 1.5)
        time.sleep(held)
        lag = self._lag(old, new)
        new_client = new.client()
        try:
            new_client.execute_command("REPLICAOF", "NO", "ONE")
        finally:
            new_client.close()
        self.front.target = new.address  # new connections: the new primary
        self.front.reset()  # open ones: cut (the app reconnects to the new one)
        old.stop(kill=True)  # the old primary is gone
        link.stop()
        behind = f"{lag} bytes of replication stream behind" if lag >= 0 else "lag unknown"
        self.notes.append(f"failover to {new.name}: replication held back {held:.1f} s ({behind})")
        self.primary = new
        self._new_replica()

    @staticmethod
    def _lag(primary: RedisNode, replica: RedisNode) -> int:
        """How far (replication offset, bytes) the replica is behind."""
        a, b = primary.client(), replica.client()
        try:
            return int(a.info("replication")["master_repl_offset"]) - int(
                b.info("replication")["master_repl_offset"]
            )
        except redis.RedisError:
            return -1
        finally:
            a.close()
            b.close()

    def heal(self) -> None:
        self.front.heal()

    def stop(self) -> None:
        for proxy in (self.front, self.link):
            if proxy is not None:
                proxy.stop()
        for node in (self.primary, self.replica):
            if node is not None:
                node.stop(kill=True)


class S3Faults:
    """A fault proxy in front of S3 and its fault injector: for a few seconds, a random
    share of every request is answered 503 SlowDown or 500 InternalError, or reset."""

    def __init__(self, target: tuple[str, int], seed: int) -> None:
        self.rng = random.Random(seed)
        self.proxy = FaultProxy(target, name="s3").start()
        self.injected: Counter[str] = Counter()

    def inject(self) -> str:
        kind = self.rng.choice(S3_KINDS)
        share = self.rng.uniform(0.2, 1.0)
        self.proxy.http_fault("*", b"", share=share, action=kind, seed=self.rng.random())
        time.sleep(self.rng.uniform(0.5, 5.0))
        self.proxy.heal()
        self.injected[kind] += 1
        return kind

    @property
    def requests_hit(self) -> Counter[str]:
        return self.proxy.http_faulted

    def stop(self) -> None:
        self.proxy.stop()
