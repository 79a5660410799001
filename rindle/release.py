"""Unblocking this process's writers: on a release request, or when a client stalls.

A writer blocked in a read of a dead connection cannot check in with Redis. Each web
process runs one watcher thread that knows the sockets of its active writers. When a
release request for one of them is published (another request, maybe on another node,
wants the upload), or when a writer has read nothing for ``read_timeout`` seconds, the
watcher shuts the socket down for reading: the blocked read ends, and the writer keeps
what it received (tail synced, offset committed) and lets go of the lease.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis

from rindle.store import RELEASE_CHANNEL, RELEASE_NOW

log = logging.getLogger("rindle")
IDLE_EXIT_SECONDS = 60
# A writer that received nothing for this long lets go when a HEAD asks.
IDLE_SECONDS = 1.0


@dataclass
class ActiveWrite:
    sock: socket.socket | None
    last_read: float = field(default_factory=time.monotonic)
    stop_reason: str = ""

    def touch(self) -> None:
        self.last_read = time.monotonic()

    def stop(self, reason: str) -> None:
        if self.stop_reason:
            return
        self.stop_reason = reason
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RD)


class ReleaseWatcher:
    def __init__(self, redis_url: str, read_timeout: float) -> None:
        self.redis_url = redis_url
        self.read_timeout = read_timeout
        self._active: dict[str, ActiveWrite] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watching(self, upload_id: str, sock: socket.socket | None) -> Iterator[ActiveWrite]:
        """Register the writer of ``upload_id`` (this process holds its lease)."""
        write = ActiveWrite(sock)
        with self._lock:
            self._active[upload_id] = write
        self._ensure_thread()  # after registering: an idle watcher exits only when empty
        try:
            yield write
        finally:
            with self._lock:
                if self._active.get(upload_id) is write:
                    del self._active[upload_id]

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
                client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=5)
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
            return
        if kind == RELEASE_NOW or time.monotonic() - write.last_read >= IDLE_SECONDS:
            write.stop("release requested")

    def _stop_stalled(self) -> None:
        now = time.monotonic()
        with self._lock:
            stalled = [w for w in self._active.values() if now - w.last_read > self.read_timeout]
        for write in stalled:
            write.stop("read timeout")
