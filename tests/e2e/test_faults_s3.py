"""S3 faults (issue #3), with the fault proxy between the app and SeaweedFS: connections
cut or refused during a part upload, a stalled S3, answers lost after S3 did the work.
A PATCH that meets a storage failure answers 503 storage_unavailable; Redis never records
a part S3 does not hold; once S3 is back the upload resumes and ends exact."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.e2e import test_faults as faults
from tests.e2e.conftest import MIB, TUS, Uploads, payload, send_up_to
from tests.e2e.test_faults import (
    LEASE_SECONDS,
    PATCH,
    P,
    RawPatch,
    assert_consistent,
    create,
    record,
    rindle_cli,
    s3_parts,
    tus_resume,
)
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.e2e

# This module's own app stack behind its own S3 proxy (module-scoped fixtures).
s3_proxy = faults.s3_proxy
crash_stack = faults.crash_stack
crashed = faults.crashed


def assert_storage_unavailable(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 503, body
    assert json.loads(body)["error"] == "storage_unavailable"
    assert int(headers["retry-after"]) > 0
    assert b"Traceback" not in body and b"botocore" not in body


def test_connections_cut_during_a_part_upload_answer_503_and_commit_nothing(
    crashed: Uploads, s3_proxy: FaultProxy
):
    """Every connection to S3 is cut after 256 KiB (boto3's three attempts all fail)
    while the second part goes up: 503 storage_unavailable; Redis still has one part,
    the one S3 holds; once S3 is back the client resumes from the offset HEAD reports."""
    stack = crashed.stack
    data = payload(3 * P + 9, seed=401)
    url = create(stack, len(data))
    upload_id = crashed.track(url)
    send_up_to(url, data, P + MIB)  # part 1 and 1 MiB buffered

    s3_proxy.cut_after(256 * 1024)
    resets = s3_proxy.resets
    patch = RawPatch(url, P + MIB, len(data) - P - MIB)
    patch.send(data[P + MIB : 2 * P + MIB])  # the tail reaches a full part: UploadPart
    started = time.monotonic()
    status, headers, body = patch.response()
    patch.close()
    took = time.monotonic() - started
    assert_storage_unavailable(status, headers, body)
    assert s3_proxy.resets - resets >= 3, "boto3 retries (3 attempts) before giving up"
    s3_proxy.heal()

    after = assert_consistent(stack, upload_id, data)
    assert (after["offset"], after["committed"], after["parts"]) == (P + MIB, P, 1)
    rec = record(stack, upload_id)
    held = s3_parts(stack, rec["key"], rec["upload_id"])
    assert set(held) <= {1, 2}, held  # a cut UploadPart may or may not have landed
    seen = tus_resume(url, data)
    assert 423 not in seen, "the failed request let go of its lease"
    crashed.assert_stored(url, data)
    assert took < 30, took


def test_s3_refusing_connections_fails_creation_and_the_last_part_with_503(
    crashed: Uploads, s3_proxy: FaultProxy
):
    """S3 resets every new connection (and the pooled ones are cut): a zero-length
    upload (its object is made at creation) cannot be created, and the PATCH that ends an
    upload cannot ship its last bytes: both 503, nothing recorded. Back: it ends exact."""
    stack = crashed.stack
    data = payload(P + 3 * MIB, seed=402)
    url = create(stack, len(data))
    upload_id = crashed.track(url)
    r = requests.patch(url, data=data[:P], headers={**PATCH, "Upload-Offset": "0"}, timeout=60)
    assert r.status_code == 204
    keys_before = set(stack.redis.scan_iter("rindle:upload:*"))

    s3_proxy.refuse()
    r = requests.post(stack.files_url, headers={**TUS, "Upload-Length": "0"}, timeout=60)
    assert_storage_unavailable(
        r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content
    )
    r = requests.patch(url, data=data[P:], headers={**PATCH, "Upload-Offset": str(P)}, timeout=60)
    assert_storage_unavailable(
        r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content
    )
    assert set(stack.redis.scan_iter("rindle:upload:*")) == keys_before
    after = assert_consistent(stack, upload_id, data)
    assert (after["state"], after["offset"], after["committed"]) == ("receiving", P, P)
    s3_proxy.heal()

    assert tus_resume(url, data) == [204]
    crashed.assert_stored(url, data)


def test_a_short_s3_stall_only_delays_the_patch(crashed: Uploads, s3_proxy: FaultProxy):
    """S3 stops answering for two seconds in the middle of a part upload (well within
    boto3's 60 s read timeout and the writer's lease): the PATCH just takes longer.

    A stall longer than that is not waited for here: the read timeout is 60 s and boto3
    makes three attempts, so the PATCH answers 503 only after about three minutes."""
    stack = crashed.stack
    data = payload(2 * P + 5, seed=403)
    url = create(stack, len(data))
    crashed.track(url)
    s3_proxy.stall("up")
    held = s3_proxy.held_up
    patch = RawPatch(url, 0, len(data))
    patch.send(data[: P + 10])
    s3_proxy.wait(lambda p: p.held_up > held, 30, "for the part upload to reach the proxy")
    time.sleep(2)  # the fault itself: two seconds of silence from S3
    s3_proxy.heal()
    patch.send(data[P + 10 :])
    status, headers, _ = patch.response()
    patch.close()
    assert (status, headers["upload-offset"]) == (204, str(len(data)))
    crashed.assert_stored(url, data)


def test_lost_answers_from_s3_cost_a_retry_not_a_byte(crashed: Uploads, s3_proxy: FaultProxy):
    """S3 did the work but its answer is lost (the connection reset before the reply):
    for an UploadPart boto3 sends the part again (same number, same bytes); for a
    CreateMultipartUpload it creates another one, and the first is an orphan that the
    orphan sweep aborts. The object is exact either way."""
    stack = crashed.stack
    data = payload(3 * P + 1, seed=404)
    url = create(stack, len(data))
    upload_id = crashed.track(url)
    key = crashed.key(upload_id)

    s3_proxy.drop_reply_once(b"?uploads")  # POST /bucket/key?uploads
    send_up_to(url, data, P + 1)  # part 1 (the part size stays P) and 1 byte buffered
    assert s3_proxy.triggered.is_set()
    open_uploads = stack.s3.list_multipart_uploads(Bucket=stack.bucket, Prefix=key)["Uploads"]
    assert len(open_uploads) == 2, open_uploads
    used = record(stack, upload_id)["upload_id"]
    (orphan,) = {u["UploadId"] for u in open_uploads} - {used}

    s3_proxy.drop_reply_once(b"&partNumber=2 ")  # PUT ...?uploadId=...&partNumber=2
    r = requests.patch(
        url, data=data[P + 1 :], headers={**PATCH, "Upload-Offset": str(P + 1)}, timeout=60
    )
    assert r.status_code == 204, r.text
    assert s3_proxy.triggered.is_set()
    crashed.wait_completed(upload_id)

    orphans = stack.s3.list_multipart_uploads(Bucket=stack.bucket, Prefix=key).get("Uploads", [])
    assert [u["UploadId"] for u in orphans] == [orphan], "completion closed the one it used"
    rindle_cli(stack, "abort-orphans", "--grace", "0")
    crashed.assert_stored(url, data)


def test_a_part_upload_slower_than_the_lease_still_commits(crashed: Uploads, s3_proxy: FaultProxy):
    """S3 is slow (640 KiB/s), so one 5 MiB UploadPart takes longer than the writer's lease
    (5 s here; 60 s by default, with parts that can be hundreds of MiB for large
    uploads). Nobody else wants the upload, so the writer must keep its lease while it
    waits for S3 and commit the part. (Before the fix, it did not renew the lease during
    S3 calls: its commit was refused, 409 "writer lease lost", the part counted for
    nothing, and the resent part was as slow: the upload could never make progress.)"""
    stack = crashed.stack
    data = payload(P + 100, seed=405)
    url = create(stack, len(data))
    crashed.track(url)
    s3_proxy.throttle(640 * 1024, "up")  # 5 MiB take 8 s
    try:
        r = requests.patch(url, data=data, headers={**PATCH, "Upload-Offset": "0"}, timeout=60)
    finally:
        s3_proxy.heal()
    assert r.status_code == 204, (
        f"{r.status_code} {r.text}: a part upload slower than the lease "
        f"({LEASE_SECONDS} s) is refused its commit although nobody else wrote"
    )
    crashed.assert_stored(url, data)
