"""The tail guard and tail reconciliation (docs/design.md, PATCH invariant 3), real services."""

from __future__ import annotations

import logging
import os

import pytest

from rindle import tail_path
from tests.integration.conftest import PART, object_bytes, random_bytes, sha256

pytestmark = pytest.mark.integration


def upload_state(app, rdb, s3_client, upload_id: str) -> dict:
    """Everything a resume could change: the upload's Redis keys and its S3 state."""
    store = app.extensions["rindle"].uploads
    upload = store.get(upload_id)
    bucket = app.config["RINDLE"].s3_bucket
    state = {
        "hash": rdb.hgetall(f"rindle:upload:{{{upload_id}}}"),
        "parts": rdb.hgetall(f"rindle:upload:{{{upload_id}}}:parts"),
        "multipart": sorted(
            u["UploadId"]
            for u in s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        ),
        "objects": sorted(
            o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])
        ),
    }
    if upload.s3_upload_id:
        listed = s3_client.list_parts(Bucket=bucket, Key=upload.key, UploadId=upload.s3_upload_id)
        state["s3_parts"] = [(p["PartNumber"], p["Size"]) for p in listed.get("Parts", [])]
    return state


def tail_of(app, upload_id: str) -> str:
    return tail_path(upload_id, app.config["RINDLE"].tmp_dir)


def finish_and_check(app, tus, rq_burst, s3_client, upload_id: str, data: bytes) -> None:
    offset = int(tus.head(upload_id).headers["Upload-Offset"])
    r = tus.patch(upload_id, offset, data[offset:])
    assert r.status_code == 204, r.get_data(as_text=True)
    assert int(r.headers["Upload-Offset"]) == len(data)
    rq_burst()
    upload = app.extensions["rindle"].uploads.get(upload_id)
    assert upload.state == "completed"
    body = object_bytes(s3_client, app.config["RINDLE"].s3_bucket, upload.key)
    assert sha256(body) == sha256(data)


def test_resume_without_tail_after_parts_fails_loudly_and_changes_nothing(
    app, tus, rdb, s3_client, caplog
):
    data = random_bytes(2 * PART + 1000)
    upload_id = tus.create(len(data))
    tus.send_up_to(upload_id, data, PART + 1000)
    os.unlink(tail_of(app, upload_id))  # the resume reached a node without the tail
    before = upload_state(app, rdb, s3_client, upload_id)
    assert before["s3_parts"] == [(1, PART)]

    with caplog.at_level(logging.ERROR, logger="rindle"):
        r = tus.patch(upload_id, PART + 1000, data[PART + 1000 :])

    assert r.status_code == 500
    assert r.get_json()["error"] == "tus_tail_missing"
    assert upload_state(app, rdb, s3_client, upload_id) == before
    assert not os.path.exists(tail_of(app, upload_id))
    errors = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.ERROR]
    node = app.config["RINDLE"].node_id
    assert any("tus_tail_missing" in m and upload_id in m and node in m for m in errors)


def test_resume_without_tail_before_the_first_part_fails_loudly(app, tus, rdb, s3_client):
    data = random_bytes(PART + 10)
    upload_id = tus.create(len(data))
    assert tus.patch(upload_id, 0, data[:1000]).status_code == 204
    os.unlink(tail_of(app, upload_id))
    before = upload_state(app, rdb, s3_client, upload_id)
    assert before["hash"]["offset"] == "1000" and before["parts"] == {}

    r = tus.patch(upload_id, 1000, data[1000:])

    assert r.status_code == 500
    assert r.get_json()["error"] == "tus_tail_missing"
    assert upload_state(app, rdb, s3_client, upload_id) == before
    assert int(tus.head(upload_id).headers["Upload-Offset"]) == 1000


def test_shorter_tail_than_redis_says_fails_loudly(app, tus, rdb, s3_client):
    data = random_bytes(PART + 10)
    upload_id = tus.create(len(data))
    assert tus.patch(upload_id, 0, data[:1000]).status_code == 204
    with open(tail_of(app, upload_id), "r+b") as f:
        f.truncate(400)  # bytes lost on this disk
    before = upload_state(app, rdb, s3_client, upload_id)

    r = tus.patch(upload_id, 1000, data[1000:])

    assert r.status_code == 500 and r.get_json()["error"] == "tus_tail_missing"
    assert upload_state(app, rdb, s3_client, upload_id) == before
    assert os.path.getsize(tail_of(app, upload_id)) == 400


def test_first_patch_at_offset_zero_without_a_tail_is_accepted(app, tus, rq_burst, s3_client):
    data = random_bytes(PART + 77)
    upload_id = tus.create(len(data))
    assert not os.path.exists(tail_of(app, upload_id))
    finish_and_check(app, tus, rq_burst, s3_client, upload_id, data)


def test_patch_at_an_exact_part_boundary_without_a_tail_is_accepted(app, tus, rq_burst, s3_client):
    data = random_bytes(2 * PART + 5)
    upload_id = tus.create(len(data))
    r = tus.patch(upload_id, 0, data[:PART])
    assert r.status_code == 204 and r.headers["Upload-Offset"] == str(PART)
    if os.path.exists(tail_of(app, upload_id)):
        os.unlink(tail_of(app, upload_id))  # nothing buffered: another node may take over
    finish_and_check(app, tus, rq_burst, s3_client, upload_id, data)


def test_crash_leftovers_in_a_longer_tail_are_cut_off(app, tus, rq_burst, s3_client):
    data = random_bytes(PART + 3000)
    upload_id = tus.create(len(data))
    assert tus.patch(upload_id, 0, data[:1000]).status_code == 204
    with open(tail_of(app, upload_id), "ab") as f:
        f.write(b"X" * 700)  # written by a request that died before committing
    finish_and_check(app, tus, rq_burst, s3_client, upload_id, data)


def test_leftover_full_part_after_a_crash_between_commit_and_truncate(
    app, tus, rq_burst, s3_client
):
    data = random_bytes(2 * PART + 10)
    upload_id = tus.create(len(data))
    assert tus.patch(upload_id, 0, data[:PART]).status_code == 204
    # The part was committed but the process died before dropping it from the tail.
    with open(tail_of(app, upload_id), "wb") as f:
        f.write(data[:PART])
    finish_and_check(app, tus, rq_burst, s3_client, upload_id, data)
