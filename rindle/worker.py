"""The RQ worker class for rindle: ``rq worker --worker-class rindle.worker.RindleWorker``.

RQ forks a work horse per job. Importing boto3 and building the app's clients takes most
of a second, which each fork would otherwise pay again; this worker does it once, before
it forks. Nothing is connected yet at that point (redis-py reconnects after a fork, and the
S3 client opens its connections lazily), so the children share no sockets.
"""

from __future__ import annotations

from typing import Any

from rq.worker import Worker

from rindle.jobs import worker_rindle


class RindleWorker(Worker):
    def work(self, *args: Any, **kwargs: Any) -> bool:
        rindle = worker_rindle()
        _ = rindle.uploads, rindle.s3, rindle.jobs, rindle.assembly, rindle.maintenance
        return super().work(*args, **kwargs)
