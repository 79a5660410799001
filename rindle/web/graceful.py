"""Graceful stop of a web process: on SIGTERM, running PATCHes keep what they received.

gunicorn stops gracefully on SIGTERM, and Heroku's dyno cycling sends every process a
SIGTERM, then a SIGKILL 30 s later. gunicorn then stops accepting connections and waits
up to ``--graceful-timeout`` for the running requests. A PATCH runs as long as its client
keeps sending (or stays silent, up to RINDLE_READ_TIMEOUT), so on its own it would run
into the SIGKILL and lose every byte it had not committed yet. The handler installed here
runs before gunicorn's own handler. It wakes a thread that stops every writer of the
process (``Rindle.stop_writers``): each one stops reading, keeps what it received (tail
synced, and persisted in shared tail mode), commits and answers 204 with its offset.
From then on a POST or PATCH that still reaches this process gets ``503 shutting_down``.
Then it calls gunicorn's handler.

Where it is installed:

- ``init_app`` installs it when it runs inside a gunicorn worker. Without ``--preload``
  the worker imports the app after gunicorn has set its signal handlers
  (``init_signals`` runs before ``load_wsgi``), so there is a handler to chain to.
- With ``--preload`` the app is imported by the master, before the fork, and each worker
  then sets gunicorn's handlers again. Those replace ours, so call ``install()`` from
  gunicorn's ``post_worker_init`` hook. The repo's ``gunicorn.conf.py`` always does;
  a second call changes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import weakref
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rindle.core import Rindle

log = logging.getLogger("rindle")

REASON = "SIGTERM"

_rindles: weakref.WeakSet[Rindle] = weakref.WeakSet()  # every init_app of this process
_previous: Any = None  # the handler ours calls after it
_wakeup: int | None = None  # write end of the pipe that the stopper thread reads
_wakeup_pid = 0  # the process that owns that pipe and thread (not a forked child)


def register(rindle: Rindle) -> None:
    """Let a SIGTERM of this process stop ``rindle``'s writers (``init_app`` calls this)."""
    _rindles.add(rindle)


def stop_all(reason: str = REASON) -> int:
    """Stop the writers of every rindle of this process and refuse new uploads from now
    on. Returns how many PATCHes were running. Calling it again does no harm (Heroku
    signals the worker directly, and so does the gunicorn master)."""
    rindles = list(_rindles)
    first = not any(rindle.stopping for rindle in rindles)
    count = sum(rindle.stop_writers(reason) for rindle in rindles)
    if first:
        log.warning(
            "graceful stop (%s) of process %d: %d running PATCH(es) told to keep what they "
            "received and answer; new uploads get 503 shutting_down",
            reason,
            os.getpid(),
            count,
        )
    return count


def install() -> bool:
    """Run the graceful stop before this process's current SIGTERM handler.

    Only from the main thread, and only when that handler is a Python function (a
    server's own, such as a gunicorn worker's). Without one, SIGTERM ends the process
    at once and there is no time to stop gracefully. True when installed, now or earlier.
    """
    global _previous, _wakeup, _wakeup_pid
    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(signal.SIGTERM)
    if not callable(current):
        return False
    if _wakeup is None or _wakeup_pid != os.getpid():  # first call, or a forked child
        # The handler may interrupt the main thread while it holds any lock, including
        # those that starting a thread takes. So the thread that does the work is
        # started now and waits on a pipe; the handler only writes a byte to it.
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        threading.Thread(
            target=_stopper, args=(read_end,), name="rindle-graceful-stop", daemon=True
        ).start()
        _wakeup, _wakeup_pid = write_end, os.getpid()
    if current is not _on_sigterm:
        _previous = current
        signal.signal(signal.SIGTERM, _on_sigterm)
        signal.siginterrupt(signal.SIGTERM, False)  # as gunicorn set it: no EINTR mid-request
    return True


def install_in_gunicorn_worker() -> bool:
    """``install()``, if this process is a gunicorn worker that is loading the app.
    Elsewhere it does nothing: the rq worker, the CLI, or a gunicorn master with
    ``--preload``."""
    owner = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    if not any(cls.__module__.startswith("gunicorn.workers.") for cls in type(owner).__mro__):
        return False
    return install()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Runs in the main thread between two of its bytecodes, so it takes no lock. It
    only wakes the stopper thread, then calls the previous handler (gunicorn's)."""
    if _wakeup is not None:
        with contextlib.suppress(OSError):  # a full pipe: the stopper is awake anyway
            os.write(_wakeup, b"\0")
    if callable(_previous):
        _previous(signum, frame)


def _stopper(read_end: int) -> None:
    while os.read(read_end, 64):
        try:
            stop_all(REASON)
        except Exception:  # the shutdown goes on; the writers end at their read timeout
            log.exception("graceful stop failed")
