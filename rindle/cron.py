"""rindle's periodic maintenance, for RQ's cron (``rq cron <your cron file>``).

rq's built-in cron (rq >= 2.5) needs no extra package and enqueues onto the normal queue,
so the jobs show up in ``rq info`` and rq-dashboard like any other. The jobs are idempotent
and safe in parallel, so a second cron process only costs duplicate work. A deployment's
cron file calls ``register_maintenance()`` beside its own registrations (``workers/cron.py``).
"""

from __future__ import annotations

from rq import cron

from rindle.config import Settings
from rindle.jobs import abort_orphans, sweep_expired


def register_maintenance(settings: Settings | None = None) -> None:
    """Register the expiry sweep and the orphan sweep at the configured intervals."""
    settings = settings or Settings.from_env()
    cron.register(sweep_expired, queue_name=settings.queue, interval=settings.sweep_interval)
    cron.register(abort_orphans, queue_name=settings.queue, interval=settings.orphan_sweep_interval)
