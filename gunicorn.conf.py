"""gunicorn's settings file for this deployment. gunicorn reads ./gunicorn.conf.py by
itself, so the Procfile, ``scripts/run``, the tests and the benchmarks all load it.

The command line (the Procfile's, or ``devstack.services.web_command``) sets the worker
class, the counts, the timeouts and the bind address. This file adds what a command line
cannot:

- ``post_worker_init`` installs rindle's graceful stop in every worker
  (``rindle.web.graceful``: on SIGTERM, running PATCHes keep what they received and
  answer). ``init_app`` installs it already unless the app is preloaded. With
  ``--preload`` the master imports the app before it forks, and each worker then replaces
  our handler with gunicorn's. This hook runs in the worker after that, so it covers both.
- ``logconfig_dict``: gunicorn's own lines in JSON with ``RINDLE_LOG_FORMAT=json``.
- ``post_fork`` caps glibc's malloc arenas at two per worker (unless ``MALLOC_ARENA_MAX``
  is set): with hundreds of threads each reading a request body, glibc's default of an
  arena per thread (up to 8 per core) kept freed buffers per arena, and the RSS of a
  worker grew far past what it used (measured in README, "Many slow clients").
- ``SocketUnreader.max_body_chunk``: recv() request bodies ``RINDLE_READ_CHUNK`` at a
  time (see below).
- ``on_starting`` and ``child_exit`` keep the Prometheus metrics of every worker
  (``RINDLE_METRICS=1``, ``PROMETHEUS_MULTIPROC_DIR``): the directory where each worker
  counts is emptied when gunicorn starts, and a dead worker's live gauges (PATCHes in
  progress) are dropped; its counters stay counted.
- ``worker_connections``: ``RINDLE_THREADS`` plus a few idle keep-alive connections (see
  the end of this file).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

from gunicorn.http.unreader import SocketUnreader

# Read here, not through rindle.config: importing rindle in gunicorn's master would load
# the app's dependencies there, before the fork (the JSON formatter is the exception).
METRICS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
LOG_FORMAT = os.environ.get("RINDLE_LOG_FORMAT", "text")


def json_logging(log_format: str) -> dict[str, Any]:
    """gunicorn's own lines as JSON too with RINDLE_LOG_FORMAT=json (the app's lines are
    rindle's: ``rindle.configure_logging``). No access log, as without this setting."""
    if log_format != "json":
        return {}  # gunicorn's defaults
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "root": {"level": "INFO", "handlers": []},  # the app adds its one handler
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["json"], "propagate": False},
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
        },
        "handlers": {
            "json": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "formatters": {"json": {"()": "rindle.logs.JsonFormatter"}},
    }


logconfig_dict = json_logging(LOG_FORMAT)

# A thread reading a request body waits in recv() with its buffer already allocated
# (CPython allocates it before the call), and gunicorn asks for up to 1 MiB at a time:
# with hundreds of slow clients that was ~1-2 MiB of RSS per open PATCH doing nothing.
# recv() no more than the app reads at a time, RINDLE_READ_CHUNK (64 KiB by default, as
# in rindle.config): larger saves a fast client ~10 % of server CPU per GiB and costs
# memory per open PATCH (README, "Many slow clients").
# The bounds of rindle.config.BOUNDS["RINDLE_READ_CHUNK"] (a unit test keeps them equal).
READ_CHUNK_BOUNDS = (64 * 1024, 4 * 1024 * 1024)


def read_chunk(environ: Any) -> int:
    """RINDLE_READ_CHUNK as rindle.config reads it: refused, with rindle's message, when
    it is not an integer within its bounds (gunicorn stops before it binds)."""
    low, high = READ_CHUNK_BOUNDS
    raw = environ.get("RINDLE_READ_CHUNK")
    if raw is None or raw.strip() == "":
        return low
    try:
        value = int(raw.strip())
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        # SystemExit: gunicorn prints other exceptions of this file with a traceback.
        raise SystemExit(f"RINDLE_READ_CHUNK must be an integer from {low} to {high}, got {raw!r}")
    return value


RECV_PIECE = read_chunk(os.environ)
if hasattr(SocketUnreader, "max_body_chunk"):
    SocketUnreader.max_body_chunk = RECV_PIECE
if METRICS_DIR:
    Path(METRICS_DIR).mkdir(parents=True, exist_ok=True)


def on_starting(server: Any) -> None:
    """Before any worker: no counts left from an earlier run in PROMETHEUS_MULTIPROC_DIR."""
    if METRICS_DIR:
        for stale in Path(METRICS_DIR).glob("*.db"):
            stale.unlink(missing_ok=True)


def post_fork(server: Any, worker: Any) -> None:
    """In the new worker, before its threads start: two malloc arenas (glibc only)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return  # glibc read it itself
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc
    m_arena_max = -8  # <malloc.h>
    libc.mallopt(m_arena_max, 2)


def post_worker_init(worker: Any) -> None:
    """Chain rindle's SIGTERM handler in front of this worker's (a no-op if present)."""
    from rindle.web.graceful import install

    install()


def child_exit(server: Any, worker: Any) -> None:
    """A worker ended: its live gauges no longer count (multiprocess metrics only)."""
    if METRICS_DIR:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, METRICS_DIR)


# gthread accepts up to worker_connections per worker, and a connection accepted while
# every thread is busy waits for one: a new client (a HEAD, a POST) behind open PATCHes. At
# 1,000 slow PATCHes on 2 workers one worker held ~540 of them (the split is uneven), and
# with 512 threads + 32 the probe waited up to 61 s; with 1,024 threads each, no worker can
# be full below 1,000 open uploads (README, "Many slow clients"). Connections beyond the
# threads are the idle keep-alive ones gunicorn keeps (worker_connections - threads): with
# gunicorn's default of 1000 and more threads than that, it would keep none. Read from the
# environment like the Procfile's --threads (the default is rindle.config.DEFAULT_THREADS).
KEEPALIVE_SLOTS = 64
worker_connections = int(os.environ.get("RINDLE_THREADS") or 1024) + KEEPALIVE_SLOTS
