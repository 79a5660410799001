"""Enqueueing rindle's RQ jobs. The job functions live in ``rindle.jobs``; they are named
by string so that enqueueing never imports them (nor what they import).

A job's arguments are ids and small internal values, never what a client sent: RQ keeps
them in the job and builds its default description from them, which rq-dashboard shows
unescaped. Each job loads what it needs when it runs, and gets a description of its own.
"""

from __future__ import annotations

from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

COMPLETE_JOB = "rindle.jobs.complete_upload"
CLEANUP_JOB = "rindle.jobs.clean_up_upload"
ON_COMPLETE_JOB = "rindle.jobs.call_on_complete"
# S3 hiccups are short, an outage may not be; the sweeps pick up what still fails.
RETRY_INTERVALS = [2, 10, 30, 120, 600]
PENDING = (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED)


def completion_job_id(upload_id: str) -> str:
    return f"rindle-complete-{upload_id}"


def cleanup_job_id(upload_id: str) -> str:
    return f"rindle-cleanup-{upload_id}"


class JobQueue:
    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def _enqueue(self, func: str, upload_id: str, job_id: str, description: str) -> None:
        # A fixed job id: one job per upload and purpose; the jobs are idempotent.
        self.queue.enqueue(
            func,
            upload_id,
            job_id=job_id,
            description=description,
            retry=Retry(max=len(RETRY_INTERVALS), interval=RETRY_INTERVALS),
            job_timeout=3600,
            failure_ttl=30 * 24 * 3600,
        )

    def on_complete(self, hook: str, upload_id: str) -> None:
        """The app's RINDLE_ON_COMPLETE function (``hook``, its dotted name) for a completed
        upload, once per upload: the job loads the upload and calls it."""
        self.queue.enqueue(
            ON_COMPLETE_JOB,
            upload_id,
            hook,
            job_id=f"rindle-on-complete-{upload_id}",
            description=f"on-complete hook for upload {upload_id}",
        )

    def complete(self, upload_id: str) -> None:
        """Assemble the object of an upload in ``assembling``."""
        self._enqueue(
            COMPLETE_JOB, upload_id, completion_job_id(upload_id), f"complete upload {upload_id}"
        )

    def ensure_completion(self, upload_id: str) -> bool:
        """Enqueue the completion again if no such job is waiting or running (e.g. the
        request that finished receiving lost Redis's reply). True when enqueued."""
        try:
            job = Job.fetch(completion_job_id(upload_id), connection=self.queue.connection)
            if job.get_status(refresh=False) in PENDING:
                return False
        except NoSuchJobError:
            pass
        self.complete(upload_id)
        return True

    def clean_up(self, upload_id: str) -> None:
        """Abort the multipart upload (and delete the object) of an ended upload."""
        self._enqueue(
            CLEANUP_JOB, upload_id, cleanup_job_id(upload_id), f"clean up upload {upload_id}"
        )
