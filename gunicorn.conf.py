"""gunicorn's settings file for this deployment. gunicorn reads ./gunicorn.conf.py by
itself, so the Procfile, ``scripts/run``, the tests and the benchmarks all load it.

The command line (the Procfile's, or ``devstack.services.web_command``) sets the worker
class, the counts, the timeouts and the bind address. This file adds what a command line
cannot: a hook that installs rindle's graceful stop in every worker
(``rindle.web.graceful``: on SIGTERM, running PATCHes keep what they received and
answer). ``init_app`` installs it already unless the app is preloaded. With ``--preload``
the master imports the app before it forks, and each worker then replaces our handler
with gunicorn's. This hook runs in the worker after that, so it covers both cases.
"""

from __future__ import annotations

from typing import Any


def post_worker_init(worker: Any) -> None:
    """Chain rindle's SIGTERM handler in front of this worker's (a no-op if present)."""
    from rindle.web.graceful import install

    install()
