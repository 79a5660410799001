"""Periodic maintenance, for RQ's own scheduler: ``rq cron workers/cron.py``.

rq's built-in cron (rq >= 2.5) needs no extra package and enqueues onto the normal queue,
so the jobs show up in ``rq info`` and rq-dashboard like any other. The jobs are idempotent
and safe in parallel, so a second cron process only costs duplicate work.
"""

import os

from rq import cron

from workers.jobs import abort_orphans, sweep_expired

QUEUE = os.environ.get("RINDLE_QUEUE") or "rindle"

cron.register(
    sweep_expired, queue_name=QUEUE, interval=int(os.environ.get("RINDLE_SWEEP_INTERVAL", "300"))
)
cron.register(
    abort_orphans,
    queue_name=QUEUE,
    interval=int(os.environ.get("RINDLE_ORPHAN_SWEEP_INTERVAL", "3600")),
)
