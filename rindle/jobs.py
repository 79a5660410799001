"""RQ job functions: thin entry points over ``Assembly`` and ``Maintenance``.

A job runs with the services of the app, so that settings, hooks and signal receivers
are the app's own: those of the running context when a lookup finds one (the web layer
adds Flask's app context: jobs run in-process inside ``app.app_context()`` use that app),
else those of the app named by RINDLE_APP (``module:attribute``, default ``app:app``),
imported once per worker process.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from functools import cache

from rq import get_current_job
from rq.utils import import_attribute

from rindle import logs
from rindle.config import Settings
from rindle.core import Rindle
from rindle.errors import AssemblyError

Lookup = Callable[[], Rindle | None]
_lookups: list[Lookup] = []


@cache
def worker_rindle() -> Rindle:
    """The services of the app named by RINDLE_APP (an app given to ``init_app``)."""
    module, _, attribute = Settings.from_env().app.partition(":")
    app = getattr(importlib.import_module(module), attribute or "app")
    return app.extensions["rindle"]


def add_lookup(lookup: Lookup) -> None:
    """Let jobs find the services of the running context (once per lookup)."""
    if lookup not in _lookups:
        _lookups.append(lookup)


def current() -> Rindle:
    for lookup in _lookups:
        if (found := lookup()) is not None:
            return found
    return worker_rindle()


def job_log_ids(upload_id: str | None = None) -> contextlib.AbstractContextManager[None]:
    """Log lines of the running job name it (as their request id) and its upload."""
    job = get_current_job()
    return logs.bound(request=job.id if job is not None else None, upload=upload_id)


def complete_upload(upload_id: str) -> str:
    """Assemble the object of an upload in ``assembling`` and mark it ``completed``.

    An object that does not match the upload is retried (RQ's Retry); on the last try
    the upload is marked failed instead of staying in ``assembling`` for ever.
    """
    with job_log_ids(upload_id):
        rindle = current()
        try:
            return rindle.assembly.complete(upload_id)
        except AssemblyError as exc:
            job = get_current_job()
            if job is not None and job.retries_left:
                raise
            return rindle.assembly.give_up(upload_id, str(exc))


def call_on_complete(upload_id: str, hook: str) -> str:
    """The app's RINDLE_ON_COMPLETE function (``hook``, its dotted name), called with the
    completed upload's id, key, size and metadata as its record holds them. Returns how
    it went, never what the function returned: rq-dashboard shows a job's result."""
    with job_log_ids(upload_id):
        return current().assembly.call_on_complete(upload_id, import_attribute(hook))


def clean_up_upload(upload_id: str) -> str:
    """After DELETE or expiry: abort the multipart upload (and delete the object of a
    terminated upload). NoSuchUpload counts as done; other failures are retried."""
    with job_log_ids(upload_id):
        return current().maintenance.clean_up(upload_id)


def sweep_expired() -> dict[str, int]:
    return current().maintenance.sweep_expired()


def abort_orphans() -> dict[str, int]:
    """Orphan multipart uploads, and shared tails that no upload needs any more."""
    rindle = current()
    return rindle.maintenance.sweep_orphans(grace=rindle.settings.orphan_grace)


def reap_tails() -> dict[str, int]:
    """Reap the tails of the node this worker runs on (only useful on a web node)."""
    return current().maintenance.reap_tails()
