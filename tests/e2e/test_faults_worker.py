"""An rq worker that dies in the middle of a completion job (issue #3): the job is taken
up again and the upload completes, once, exact.

The worker reaches S3 through the fault proxy (the web process directly), so that the
CompleteMultipartUpload can be held at the proxy while the worker dies. Two deaths:

- the work horse alone (say the OOM killer): ``rq worker`` sees its horse die, fails the
  job and, as it has retries left, schedules it again (2 s); all real, nothing waited for.
- the whole worker (horse, scheduler and main process: a host or container crash). The
  horse runs in a process group of its own (rq calls setpgrp), so killing the worker's
  group is not enough: every process is killed. RQ notices the abandoned job when a
  worker's maintenance pass (at its start, then every 10 minutes) finds it in the
  StartedJobRegistry past the dead worker's heartbeat (30 s monitoring interval + 60 s),
  and a new worker only gets the scheduler lock (that the retry needs) once the dead
  scheduler's lock ran out (61 s). The test does not wait for that: it lets those two
  clocks run out (RQ's own registry cleanup as of 2 minutes from now, the dead
  scheduler's lock deleted), then starts a new worker. Everything else is real.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator

import pytest
import redis
import requests
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.scheduler import RQScheduler

from devstack.services import RedisServer, SeaweedS3
from rindle.jobqueue import completion_job_id
from tests.conftest import _STACKS, Stack
from tests.e2e.conftest import Uploads, payload, poll
from tests.e2e.test_faults import PATCH, P, create, own_stack, record, target_of
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.e2e

# How far ahead the registry cleanup looks: past the heartbeat of a dead worker's job.
HEARTBEAT_RUNS_OUT = 120


@pytest.fixture(scope="module")
def worker_s3_proxy(s3_server: SeaweedS3) -> Iterator[FaultProxy]:
    with FaultProxy(target_of(s3_server.endpoint), name="worker-s3") as proxy:
        yield proxy


@pytest.fixture(scope="module")
def worker_stack(
    redis_server: RedisServer,
    s3_server: SeaweedS3,
    worker_s3_proxy: FaultProxy,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    # Every stack runs on the session's Redis and queue: a completion job an earlier
    # module's stack left queued (its bucket gone since) would be this worker's first
    # job, held at this module's proxy in its place. No other stack runs now.
    leftovers = redis.Redis.from_url(redis_server.url)
    for key in leftovers.scan_iter("rq:*"):
        leftovers.delete(key)
    leftovers.close()
    with own_stack(
        redis_server,
        s3_server,
        tmp_path_factory.mktemp("worker-stack"),
        worker_overrides={"AWS_ENDPOINT_URL_S3": worker_s3_proxy.rewrite(s3_server.endpoint)},
    ) as stack:
        yield stack


@pytest.fixture
def uploads(
    request: pytest.FixtureRequest, worker_stack: Stack, worker_s3_proxy: FaultProxy
) -> Iterator[Uploads]:
    request.node.stash[_STACKS] = [worker_stack]
    helper = Uploads(worker_stack)
    yield helper
    worker_s3_proxy.heal()
    helper.cleanup()


def object_etag(stack: Stack, key: str) -> str | None:
    with contextlib.suppress(stack.s3.exceptions.ClientError):
        return str(stack.s3.head_object(Bucket=stack.bucket, Key=key)["ETag"])
    return None


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (from /proc)."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry))
    return kids


def horse_of(stack: Stack) -> int:
    """The work horse of the stack's rq worker: the child in a process group of its own."""
    assert stack.worker is not None

    def find() -> int | None:
        assert stack.worker is not None
        for kid in children(stack.worker.pid):
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(kid) == kid:
                    return kid
        return None

    return poll(find, 10, "for the work horse")


def crash_worker(stack: Stack, conn: redis.Redis) -> None:
    """Kill the worker, its horse and its scheduler at once; let the two RQ clocks that a
    dead worker leaves behind run out; start a new worker."""
    assert stack.worker is not None
    doomed = children(stack.worker.pid)
    stack.worker.kill()
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # Two minutes later, as far as RQ can tell.
    StartedJobRegistry("rindle", connection=conn).cleanup(time.time() + HEARTBEAT_RUNS_OUT)
    conn.delete(RQScheduler.get_locking_key("rindle"))
    stack.restart_worker()


@pytest.mark.parametrize(
    ("death", "held"),
    [("horse", "up"), ("worker", "up"), ("worker", "down")],
    ids=["horse-before-s3-completes", "worker-before-s3-completes", "worker-after-s3-completed"],
)
def test_a_worker_killed_during_completion_is_retried_and_completes_once(
    uploads: Uploads, worker_s3_proxy: FaultProxy, death: str, held: str
):
    """The completion job's CompleteMultipartUpload is held at the proxy (before S3 sees
    it, or after S3 did it but before the worker hears back), and the horse or the whole
    worker dies. The upload stays assembling; RQ retries the job (it has retries left);
    the upload completes exact, and the object is assembled once (a retry after S3
    completed finds the multipart upload gone and checks the object)."""
    stack = uploads.stack
    data = payload(2 * P + 7, seed=601)
    url = create(stack, len(data))
    upload_id = uploads.track(url)
    key = uploads.key(upload_id)
    job_id = completion_job_id(upload_id)
    conn = redis.Redis.from_url(stack.env["REDIS_URL"])
    try:
        worker_s3_proxy.stall(held)
        r = requests.patch(url, data=data, headers={**PATCH, "Upload-Offset": "0"}, timeout=60)
        assert r.status_code == 204
        if held == "up":
            worker_s3_proxy.wait(lambda p: p.held_up > 0, 30, "for the CompleteMultipartUpload")
            assembled = None
        else:
            assembled = poll(lambda: object_etag(stack, key), 30, "for S3 to assemble it")
        assert job_id in StartedJobRegistry("rindle", connection=conn).get_job_ids(cleanup=False)
        assert record(stack, upload_id)["state"] == "assembling"

        if death == "horse":
            os.kill(horse_of(stack), signal.SIGKILL)
        else:
            crash_worker(stack, conn)
        assert record(stack, upload_id)["state"] == "assembling"
        worker_s3_proxy.heal()

        uploads.wait_completed(upload_id, timeout=60)
        job = Job.fetch(job_id, connection=conn)
        poll(lambda: job.get_status(refresh=True) == "finished" or None, 30, "job finished")
        assert job.return_value() == "completed"
        assert job.retries_left == len(job.retry_intervals) - 1, "retried once"
        uploads.assert_stored(url, data)
        if assembled is not None:
            assert object_etag(stack, key) == assembled
        assert stack.worker is not None and stack.worker.log_path is not None
        log = stack.worker.log_path.read_text()
        assert log.count(f"upload {upload_id}: completed") == 1
    finally:
        conn.close()
