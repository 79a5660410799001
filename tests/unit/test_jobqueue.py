"""What rindle's RQ jobs carry: ids, and a description of rindle's own (issue #20).

rq-dashboard shows a job's description unescaped, and RQ's default one is the call with
its arguments: no client text may get there."""

from __future__ import annotations

import fakeredis
from rq import Queue
from rq.job import Job

from rindle.jobqueue import JobQueue

UPLOAD_ID = "a1b2c3"


def test_every_job_has_a_short_description_and_only_ids_as_arguments() -> None:
    connection = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    jobs = JobQueue(Queue("rindle", connection=connection))
    jobs.complete(UPLOAD_ID)
    jobs.clean_up(UPLOAD_ID)
    jobs.on_complete("app.hooks.processed", UPLOAD_ID)
    found = {
        job.id: (job.func_name, job.args, job.kwargs, job.description)
        for job in Job.fetch_many(jobs.queue.get_job_ids(), connection=connection)
        if job is not None
    }
    assert found == {
        f"rindle-complete-{UPLOAD_ID}": (
            "rindle.jobs.complete_upload",
            (UPLOAD_ID,),
            {},
            f"complete upload {UPLOAD_ID}",
        ),
        f"rindle-cleanup-{UPLOAD_ID}": (
            "rindle.jobs.clean_up_upload",
            (UPLOAD_ID,),
            {},
            f"clean up upload {UPLOAD_ID}",
        ),
        f"rindle-on-complete-{UPLOAD_ID}": (
            "rindle.jobs.call_on_complete",
            (UPLOAD_ID, "app.hooks.processed"),
            {},
            f"on-complete hook for upload {UPLOAD_ID}",
        ),
    }
