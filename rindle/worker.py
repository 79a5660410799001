"""The RQ worker class for rindle: ``rq worker --worker-class rindle.worker.RindleWorker
--connection-class rindle.redis_client.RQConnection`` (the Procfile's worker line; the
connection class builds RQ's client from rindle's settings: TLS, Sentinel, the budget).

RQ forks a work horse per job. Importing boto3 and building the app's clients takes most
of a second, which each fork would otherwise pay again; this worker does it once, before
it forks. Nothing is connected yet at that point (redis-py reconnects after a fork, and the
S3 client opens its connections lazily), so the children share no sockets.

It stops the way RQ's ``HerokuWorker`` does. On SIGTERM a plain RQ worker waits for its
horse to finish the job, however long that takes. Heroku sends SIGKILL 30 s later, which
leaves the job in the started registry until the dead worker's heartbeat runs out
(minutes). Heroku also sends the SIGTERM to every process of the dyno, and a plain horse
dies of it on the spot, in the middle of its job. Here the horse ignores SIGTERM. The
worker gives it ``imminent_shutdown_delay`` seconds to finish its job, then makes the job
raise ``ShutDownImminentException``. That is a BaseException, so no ``except Exception``
in a job swallows it. The job fails, and its Retry policy schedules it again (in 2 s, on
any worker with a scheduler). rindle's jobs are idempotent: a retry starts again from what
Redis and S3 hold, so a job cut off anywhere is redone, never left half-done.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from rq.utils import now
from rq.worker import HerokuWorker

from rindle import logs, redis_client
from rindle.config import Settings
from rindle.jobs import worker_rindle


class RindleWorker(HerokuWorker):
    # RQ's default. A completion job takes about 30 ms, so a job that is still running
    # 6 s after SIGTERM is stuck on S3 and is better retried. That leaves the horse 24 s
    # of Heroku's 30 to record the failure and schedule the retry.
    imminent_shutdown_delay = 6
    # How soon a scheduler that died is started again. RQ does it in its maintenance pass,
    # every 10 minutes, and an idle worker looks only when its BLPOP (about 6 minutes)
    # times out; meanwhile the retries of failed jobs (a completion that met a SlowDown
    # burst) wait, because only a live scheduler enqueues them.
    scheduler_check_seconds = 30

    @property
    def dequeue_timeout(self) -> int:
        """Wake up at least every ``scheduler_check_seconds`` (one BLPOP each)."""
        return min(int(super().dequeue_timeout), self.scheduler_check_seconds)

    @property
    def should_run_maintenance_tasks(self) -> bool:
        """RQ's every 10 minutes, and every ``scheduler_check_seconds`` while this worker
        runs no scheduler (its scheduler died on a Redis error: a reset, a restart, a
        failover; or another worker's held the lock, and that worker may be gone): RQ's
        maintenance pass then takes the lock if it is free and starts a scheduler."""
        scheduler = self.scheduler
        if (
            scheduler is not None
            and self.last_cleaned_at is not None
            and (scheduler._process is None or not scheduler._process.is_alive())
            and now() - self.last_cleaned_at > timedelta(seconds=self.scheduler_check_seconds)
        ):
            return True
        return bool(super().should_run_maintenance_tasks)

    def work(self, *args: Any, **kwargs: Any) -> bool:
        # Before the app is imported: RQ gave its loggers handlers of their own, and an
        # app that configures the root logger too would print each RQ line twice.
        logs.configure(Settings.from_env().log_format)
        # Before any client is built: a worker's budget and connection names.
        redis_client.set_role("worker")
        rindle = worker_rindle()
        _ = rindle.uploads, rindle.s3, rindle.jobs, rindle.assembly, rindle.maintenance
        return super().work(*args, **kwargs)
