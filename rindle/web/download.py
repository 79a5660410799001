"""Streamed downloads (RINDLE_DOWNLOAD=stream) that a slow client cannot hold for ever.

Each one holds a request thread and an S3 connection while its client reads. A client
that takes less than RINDLE_MIN_RATE bytes/s (the minimum a PATCH body must keep) over a
rate window is cut off: one watchdog thread per process judges every streamed download
once a second, and shuts the connection down, which ends a send blocked on that client;
the S3 body is closed whenever the response ends, however it ends.

Bytes count once the server has handed them to the connection, a chunk at a time, so a
window is at least as long as two chunks take at the minimum rate (128 s at the
defaults): a client at the minimum is never cut because its last chunk was still in
flight.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("rindle")

CHUNK = 16 * 1024  # small: bytes count a chunk at a time (see above)
UNGUARDED_CHUNK = 1024 * 1024  # no minimum rate (RINDLE_MIN_RATE=0): fewer, larger sends
TICK = 1.0  # seconds between the watchdog's looks


class Download:
    """The bytes of one streamed download (``chunks``), from an S3 body."""

    def __init__(
        self,
        upload_id: str,
        body: Any,
        interrupt: Callable[[], None],
        min_rate: int,
        rate_window: float,
    ) -> None:
        """``body``: the S3 object's streaming body (closed when the response ends);
        ``interrupt`` ends a send blocked on the client (shuts the connection down)."""
        self.upload_id = upload_id
        self.body = body
        self.interrupt = interrupt
        self.min_rate = min_rate
        self.window = max(rate_window, 2 * CHUNK / min_rate) if min_rate else 0.0
        self.sent = 0
        self.window_start = time.monotonic()
        self.window_sent = 0
        self.stop_reason = ""

    def chunks(self) -> Iterator[bytes]:
        """The object's bytes; ends early once the watchdog stopped the download."""
        size = CHUNK if self.min_rate else UNGUARDED_CHUNK
        if self.min_rate:
            WATCHDOG.watch(self)
        try:
            while not self.stop_reason:
                chunk = self.body.read(size)
                if not chunk:
                    return
                yield chunk  # back here once the server handed it to the connection
                self.sent += len(chunk)
        finally:
            WATCHDOG.forget(self)
            # The S3 connection is released now, not when the garbage collector finds
            # the body: a client that went away (or was cut off) holds nothing.
            self.body.close()

    def judge(self, now: float) -> None:
        """Stop the download if its client took too little over the window that ended.
        One chunk of slack: the one in flight may be nearly taken."""
        elapsed = now - self.window_start
        if elapsed < self.window:
            return
        taken = self.sent - self.window_sent
        if taken + CHUNK < self.min_rate * elapsed:
            self.stop(f"too slow ({taken / elapsed:.0f} B/s, at least {self.min_rate} B/s)")
        self.window_start, self.window_sent = now, self.sent

    def stop(self, reason: str) -> None:
        if self.stop_reason:
            return
        self.stop_reason = reason
        log.warning(
            "download %s: client cut off after %d bytes: %s", self.upload_id, self.sent, reason
        )
        self.interrupt()


class Watchdog:
    """One thread per process judges every streamed download; it exits when none is left
    and the next one starts it again (a fork has none running)."""

    def __init__(self) -> None:
        self._active: set[Download] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, download: Download) -> None:
        with self._lock:
            self._active.add(download)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="rindle-download-watchdog", daemon=True
                )
                self._thread.start()

    def forget(self, download: Download) -> None:
        with self._lock:
            self._active.discard(download)

    def _run(self) -> None:
        while True:
            time.sleep(TICK)
            with self._lock:
                if not self._active:
                    self._thread = None
                    return
                downloads = list(self._active)
            now = time.monotonic()
            for download in downloads:
                download.judge(now)


WATCHDOG = Watchdog()
