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
- ``on_starting`` and ``child_exit`` keep the Prometheus metrics of every worker
  (``RINDLE_METRICS=1``, ``PROMETHEUS_MULTIPROC_DIR``): the directory where each worker
  counts is emptied when gunicorn starts, and a dead worker's live gauges (PATCHes in
  progress) are dropped; its counters stay counted.
"""

from __future__ import annotations

from typing import Any


def on_starting(server: Any) -> None:
    """Before any worker: an empty PROMETHEUS_MULTIPROC_DIR (made if missing)."""
    from rindle.config import Settings

    settings = Settings.from_env()
    if settings.metrics_dir:
        from pathlib import Path

        directory = Path(settings.metrics_dir)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)


def post_worker_init(worker: Any) -> None:
    """Chain rindle's SIGTERM handler in front of this worker's (a no-op if present)."""
    from rindle.web.graceful import install

    install()


def child_exit(server: Any, worker: Any) -> None:
    """A worker ended: its live gauges no longer count (multiprocess metrics only)."""
    from rindle.config import Settings

    settings = Settings.from_env()
    if settings.metrics_dir:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, settings.metrics_dir)
