"""S3 throttling (issue #18, item 6): bursts of ``503 SlowDown`` answered by the S3 fault
proxy itself (``FaultProxy.http_fault``) on UploadPart, on the PutObject and GetObject of
shared tails, and on CompleteMultipartUpload. A burst that boto3's retries ride out only
delays the request; a longer one answers 503 storage_unavailable with Retry-After, keeps
what was committed, and the resume ends exact; completion is retried by RQ."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from devstack.services import SeaweedS3
from rindle.storage.s3 import S3_RETRIES
from tests.conftest import Stack
from tests.e2e import test_faults as faults
from tests.e2e.conftest import MIB, Uploads, payload, poll, upload_id_of
from tests.e2e.test_any_node import assert_exact
from tests.e2e.test_faults import PATCH, P, assert_consistent, create, record, tus_resume
from tests.e2e.test_faults_s3 import assert_storage_unavailable
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.e2e

s3_proxy = faults.s3_proxy
crash_stack = faults.crash_stack
crashed = faults.crashed

ATTEMPTS = S3_RETRIES["total_max_attempts"]
PART_PUT = rb"partNumber="  # UploadPart: PUT /bucket/key?partNumber=n&uploadId=...
TAIL_KEY = rb"[.]tails/"  # a shared tail's object: <prefix>.tails/<id>/<generation>
COMPLETE = rb"[?&]uploadId="  # CompleteMultipartUpload: POST /bucket/key?uploadId=...


def patch(url: str, data: bytes, offset: int) -> requests.Response:
    return requests.patch(
        url, data=data, headers={**PATCH, "Upload-Offset": str(offset)}, timeout=120
    )


def assert_503(r: requests.Response) -> None:
    assert_storage_unavailable(
        r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content
    )


# =========================================================================== UploadPart


def test_a_slowdown_burst_on_a_part_upload_only_delays_the_patch(
    crashed: Uploads, s3_proxy: FaultProxy
):
    """S3 answers the first four attempts of part 1 with 503 SlowDown: boto3 backs off
    and the fifth goes through; the PATCH answers 204 at the end and the object is
    exact. (With the four attempts of ``max_attempts: 3`` the PATCH answered 503.)"""
    data = payload(P + 5, seed=1801)
    url = create(crashed.stack, len(data))
    crashed.track(url)
    faulted = s3_proxy.http_faulted["slowdown"]
    s3_proxy.http_fault("PUT", PART_PUT, count=ATTEMPTS - 1)
    r = patch(url, data, 0)
    assert (r.status_code, r.headers.get("Upload-Offset")) == (204, str(len(data))), r.text
    assert s3_proxy.http_faulted["slowdown"] - faulted == ATTEMPTS - 1
    crashed.assert_stored(url, data)


def test_a_slowdown_longer_than_the_retries_answers_503_and_keeps_the_parts_before(
    crashed: Uploads, s3_proxy: FaultProxy
):
    """Every attempt at part 2 meets SlowDown: the PATCH answers 503 storage_unavailable
    with Retry-After; part 1 stays committed (Redis and S3 agree), nothing after it is;
    the client resumes from the offset HEAD reports and the object is exact."""
    stack = crashed.stack
    data = payload(3 * P + 7, seed=1802)
    url = create(stack, len(data))
    upload_id = crashed.track(url)
    faulted = s3_proxy.http_faulted["slowdown"]
    s3_proxy.http_fault("PUT", rb"partNumber=2(&|$)", count=ATTEMPTS)
    assert_503(patch(url, data, 0))
    assert s3_proxy.http_faulted["slowdown"] - faulted == ATTEMPTS
    after = assert_consistent(stack, upload_id, data)
    assert (after["offset"], after["committed"], after["parts"]) == (P, P, 1)
    tus_resume(url, data)
    crashed.assert_stored(url, data)


# =========================================================================== completion


def test_a_slowdown_burst_on_completion_is_retried_by_the_worker(
    crashed: Uploads, s3_proxy: FaultProxy
):
    """CompleteMultipartUpload meets SlowDown more times than boto3 tries in one job run:
    that run fails, RQ runs the job again (its Retry policy) and the object is exact."""
    stack = crashed.stack
    data = payload(2 * P + 3, seed=1803)
    url = create(stack, len(data))
    upload_id = crashed.track(url)
    burst = ATTEMPTS + 2  # one job run's attempts, and two more for the retried run
    faulted = s3_proxy.http_faulted["slowdown"]
    s3_proxy.http_fault("POST", COMPLETE, count=burst)
    r = patch(url, data, 0)
    assert r.status_code == 204, r.text
    crashed.wait_completed(upload_id)
    assert s3_proxy.http_faulted["slowdown"] - faulted == burst, "the whole burst was met"
    crashed.assert_stored(url, data)


def scheduler_pid(stack: Stack, worker_pid: int) -> int | None:
    """The pid of the RQ scheduler process forked by the worker ``worker_pid``, if one
    runs (RQ keeps a hash per scheduler, ``rq:scheduler:<name>``, with its pid)."""
    for key in stack.redis.scan_iter("rq:scheduler:*"):
        if stack.redis.type(key) != "hash" or not (pid := stack.redis.hget(key, "pid")):
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue  # that scheduler is gone
        if int(stat.rsplit(")", 1)[1].split()[1]) == worker_pid:  # its parent
            return int(pid)
    return None


def test_completion_retries_run_after_the_scheduler_died(crashed: Uploads, s3_proxy: FaultProxy):
    """The worker's RQ scheduler dies (as it does on a Redis reset or restart); then a
    completion meets more SlowDown than one job run rides out, so its retry waits in
    RQ's scheduled registry. The worker starts its scheduler again within half a minute
    and the retry completes the object. (RQ alone looks only every 10 minutes.)"""
    stack = crashed.stack
    assert stack.worker is not None
    worker = stack.worker.pid
    pid = poll(lambda: scheduler_pid(stack, worker), 60, "for the worker's scheduler")
    os.kill(pid, signal.SIGKILL)
    data = payload(P + 11, seed=1807)
    url = create(stack, len(data))
    upload_id = crashed.track(url)
    s3_proxy.http_fault("POST", COMPLETE, count=ATTEMPTS)
    r = patch(url, data, 0)
    assert r.status_code == 204, r.text
    crashed.wait_completed(upload_id, timeout=90)
    crashed.assert_stored(url, data)


# =========================================================================== shared tails


def two_shared_nodes(
    make_stack: Callable[..., Stack], s3_server: SeaweedS3, s3_proxy: FaultProxy, **env: Any
) -> list[Stack]:
    """Two nodes in shared tail mode, both talking to S3 through ``s3_proxy``."""
    s3_proxy.heal()
    endpoint = s3_proxy.rewrite(s3_server.endpoint)
    return [
        make_stack(RINDLE_TAIL_STORE="s3", AWS_ENDPOINT_URL_S3=endpoint, **env) for _ in range(2)
    ]


@pytest.fixture
def shared_nodes(
    make_stack: Callable[..., Stack], s3_server: SeaweedS3, s3_proxy: FaultProxy
) -> list[Stack]:
    """Two shared-tail nodes with the default writer lease (60 s): a fetch slowed down by
    back-off is not also a lease expiry (see the lease test below)."""
    return two_shared_nodes(make_stack, s3_server, s3_proxy)


def on(stack: Stack, url: str) -> str:
    return stack.files_url + upload_id_of(url)


def start_small(url: str, data: bytes) -> None:
    """A first PATCH of 1 MiB (under 5 MiB: the part size stays the configured one, and
    the next PATCH ends with bytes buffered past part 1)."""
    r = patch(url, data[:MIB], 0)
    assert (r.status_code, r.headers.get("Upload-Offset")) == (204, str(MIB)), r.text


def test_slowdown_bursts_on_shared_tails_are_ridden_out_across_nodes(
    shared_nodes: list[Stack], s3_proxy: FaultProxy
):
    """Node A's PATCH ends with 1 MiB buffered: the PutObject of its shared tail meets
    SlowDown four times and still succeeds (204). The resume reaches node B, whose
    GetObject of that tail meets SlowDown four times too, and goes on: exact."""
    a, b = shared_nodes
    data = payload(P + 3 * MIB, seed=1804)
    url = create(a, len(data))
    start_small(url, data)
    faulted = s3_proxy.http_faulted["slowdown"]
    s3_proxy.http_fault("PUT", TAIL_KEY, count=ATTEMPTS - 1)
    r = patch(url, data[MIB : P + MIB], MIB)
    assert (r.status_code, r.headers.get("Upload-Offset")) == (204, str(P + MIB)), r.text
    assert s3_proxy.http_faulted["slowdown"] - faulted == ATTEMPTS - 1
    assert record(a, upload_id_of(url)).get("tail_key"), "the tail was shared"

    s3_proxy.http_fault("GET", TAIL_KEY, count=ATTEMPTS - 1)
    r = patch(on(b, url), data[P + MIB :], P + MIB)
    assert (r.status_code, r.headers.get("Upload-Offset")) == (204, str(len(data))), r.text
    assert s3_proxy.http_faulted["slowdown"] - faulted == 2 * (ATTEMPTS - 1)
    assert_exact(a, url, hashlib.sha256(data).hexdigest(), len(data))


def test_slowdown_beyond_the_retries_on_shared_tails_answers_503_and_resumes_exact(
    shared_nodes: list[Stack], s3_proxy: FaultProxy
):
    """SlowDown on every attempt: node A cannot share its tail (503, Retry-After, the
    offset stays at the committed part), node B cannot fetch a shared tail (503, nothing
    changes); once S3 is back a resume on the other node ends exact."""
    a, b = shared_nodes
    data = payload(P + 4 * MIB, seed=1805)
    upload_id = upload_id_of(url := create(a, len(data)))
    start_small(url, data)
    faulted = s3_proxy.http_faulted["slowdown"]
    s3_proxy.http_fault("PUT", TAIL_KEY, count=ATTEMPTS)
    assert_503(patch(url, data[MIB : P + MIB], MIB))
    rec = record(a, upload_id)
    assert (int(rec["offset"]), int(rec["committed"])) == (P, P), rec
    assert not rec.get("tail_key")

    r = patch(on(b, url), data[P : P + 2 * MIB], P)  # B shares a tail of its own
    assert (r.status_code, r.headers.get("Upload-Offset")) == (204, str(P + 2 * MIB)), r.text
    before = record(a, upload_id)
    s3_proxy.http_fault("GET", TAIL_KEY, count=ATTEMPTS)
    r = patch(on(a, url), data[P + 2 * MIB :], P + 2 * MIB)
    assert_503(r)
    assert json.loads(r.content)["error"] == "storage_unavailable"
    assert record(a, upload_id) == before, "a failed fetch changed the record"
    assert s3_proxy.http_faulted["slowdown"] - faulted == 2 * ATTEMPTS

    tus_resume(on(a, url), data)
    assert_exact(a, url, hashlib.sha256(data).hexdigest(), len(data))


def test_a_shared_tail_fetch_slower_than_the_lease_still_commits(
    make_stack: Callable[..., Stack], s3_server: SeaweedS3, s3_proxy: FaultProxy
):
    """The resume on node B fetches 1 MiB of shared tail at 100 KiB/s (10 s, twice the 5 s
    lease): nobody else wants the upload, so B must keep its lease and commit."""
    a, b = two_shared_nodes(
        make_stack, s3_server, s3_proxy, RINDLE_LEASE_SECONDS=faults.LEASE_SECONDS
    )
    data = payload(P + 3 * MIB, seed=1806)
    url = create(a, len(data))
    start_small(url, data)
    r = patch(url, data[MIB : P + MIB], MIB)
    assert r.status_code == 204, r.text
    s3_proxy.throttle(100 * 1024, "down")
    try:
        r = patch(on(b, url), data[P + MIB :], P + MIB)
    finally:
        s3_proxy.heal()
    assert (r.status_code, r.headers.get("Upload-Offset")) == (204, str(len(data))), r.text
