"""Termination, expiration and maintenance leave nothing behind (real Redis and S3)."""

from __future__ import annotations

import os
import time

import pytest
from botocore.exceptions import EndpointConnectionError
from werkzeug.http import parse_date

from rindle import tail_path
from rindle.keys import EXPIRY_INDEX
from tests.integration.conftest import PART, TUS, in_process_worker, random_bytes

pytestmark = pytest.mark.integration


def open_multipart(s3_client, bucket: str) -> list[str]:
    return [u["Key"] for u in s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def keys_without_ttl(rdb, upload_id: str) -> list[str]:
    return [k for k in rdb.keys(f"rindle:upload:{{{upload_id}}}*") if rdb.ttl(k) < 0]


def half_upload(tus, size: int = 2 * PART) -> tuple[str, bytes]:
    """An upload with one committed part (an open multipart upload) and a tail."""
    data = random_bytes(size)
    upload_id = tus.create(len(data))
    tus.send_up_to(upload_id, data, PART + 1000)
    return upload_id, data


def maintenance(app):
    return app.extensions["rindle"].maintenance


def bucket(app) -> str:
    return app.config["RINDLE"].s3_bucket


def make_expired(rdb, upload_id: str) -> None:
    """Travel in time: the upload's last activity was long ago."""
    past = time.time() - 10
    rdb.hset(f"rindle:upload:{{{upload_id}}}", "expires_at", past)
    rdb.zadd(EXPIRY_INDEX, {upload_id: past})


def test_options_advertises_expiration_and_termination(client):
    extensions = client.options("/files/").headers["Tus-Extension"].split(",")
    assert {"creation", "expiration", "termination"} <= set(extensions)


def test_upload_expires_is_an_http_date_on_post_patch_and_head(client, tus):
    r = client.post("/files/", headers={**TUS, "Upload-Length": "10"})
    expires = parse_date(r.headers["Upload-Expires"])
    assert abs(expires.timestamp() - (time.time() + 24 * 3600)) < 60
    upload_id = r.headers["Location"].rsplit("/", 1)[1]
    assert parse_date(tus.patch(upload_id, 0, b"abc").headers["Upload-Expires"])
    assert parse_date(tus.head(upload_id).headers["Upload-Expires"])


def test_delete_ends_the_upload_and_leaves_nothing(app, tus, rq_burst, s3_client, rdb):
    upload_id, _ = half_upload(tus)
    assert os.path.exists(tail_path(upload_id, app.config["RINDLE"].tmp_dir))
    assert open_multipart(s3_client, bucket(app)) == ["uploads/" + upload_id]

    r = tus.client.delete(f"/files/{upload_id}", headers=TUS)
    assert r.status_code == 204
    assert tus.head(upload_id).status_code == 410
    assert tus.patch(upload_id, PART + 1000, b"x").status_code == 410
    assert tus.client.delete(f"/files/{upload_id}", headers=TUS).status_code == 410
    assert not os.path.exists(tail_path(upload_id, app.config["RINDLE"].tmp_dir))

    rq_burst()
    assert open_multipart(s3_client, bucket(app)) == []
    assert keys_without_ttl(rdb, upload_id) == []


def test_delete_of_a_completed_upload_deletes_its_object(app, tus, rq_burst, s3_client):
    upload_id = tus.create(5)
    assert tus.patch(upload_id, 0, b"hello").status_code == 204
    rq_burst()
    assert tus.client.delete(f"/files/{upload_id}", headers=TUS).status_code == 204
    rq_burst()
    listed = s3_client.list_objects_v2(Bucket=bucket(app)).get("Contents", [])
    assert [o["Key"] for o in listed] == []


def test_abort_that_fails_once_is_retried_until_it_succeeds(app, tus, s3_client, monkeypatch):
    upload_id, _ = half_upload(tus)
    storage = app.extensions["rindle"].s3
    real_abort = storage.client.abort_multipart_upload
    calls = []

    def flaky_abort(**kwargs):
        calls.append(kwargs["UploadId"])
        if len(calls) == 1:
            raise EndpointConnectionError(endpoint_url="s3")
        return real_abort(**kwargs)

    monkeypatch.setattr(storage.client, "abort_multipart_upload", flaky_abort)
    assert tus.client.delete(f"/files/{upload_id}", headers=TUS).status_code == 204

    worker = in_process_worker(app)
    deadline = time.monotonic() + 30
    while open_multipart(s3_client, bucket(app)) and time.monotonic() < deadline:
        with app.app_context():
            worker.work(burst=True, with_scheduler=True)  # the retry waits in RQ's scheduler
        time.sleep(0.2)
    worker.connection.close()
    assert len(calls) >= 2
    assert open_multipart(s3_client, bucket(app)) == []


def test_expired_upload_answers_410_and_one_sweep_cleans_it(app, tus, s3_client, rdb):
    upload_id, _ = half_upload(tus)
    make_expired(rdb, upload_id)
    assert tus.head(upload_id).status_code == 410

    counts = maintenance(app).sweep_expired()
    assert counts["expired"] == 1 and counts["aborted"] == 1
    assert rdb.hget(f"rindle:upload:{{{upload_id}}}", "state") == "expired"
    assert open_multipart(s3_client, bucket(app)) == []
    assert keys_without_ttl(rdb, upload_id) == []
    assert maintenance(app).reap_tails()["deleted"] == 1
    assert not os.path.exists(tail_path(upload_id, app.config["RINDLE"].tmp_dir))
    assert maintenance(app).sweep_expired()["expired"] == 0  # idempotent


def test_sweep_leaves_live_uploads_alone(app, tus, s3_client):
    upload_id, data = half_upload(tus)
    counts = maintenance(app).sweep_expired(dry_run=False)
    assert counts["expired"] == 0
    assert open_multipart(s3_client, bucket(app)) == ["uploads/" + upload_id]
    r = tus.patch(upload_id, PART + 1000, data[PART + 1000 :])
    assert r.status_code == 204


def test_reaper_keeps_live_tails_and_deletes_ended_and_unknown(app, tus, rdb):
    root = app.config["RINDLE"].tmp_dir
    live, _ = half_upload(tus)
    ended, _ = half_upload(tus)
    rdb.hset(f"rindle:upload:{{{ended}}}", "state", "terminated")  # ended on another node
    stranger = tail_path("no-such-upload", root)
    with open(stranger, "wb") as f:
        f.write(b"left behind")

    assert maintenance(app).reap_tails(dry_run=True) == {"deleted": 2, "kept": 1, "busy": 0}
    assert os.path.exists(stranger)
    assert maintenance(app).reap_tails() == {"deleted": 2, "kept": 1, "busy": 0}
    assert os.path.exists(tail_path(live, root))
    assert not os.path.exists(tail_path(ended, root))
    assert not os.path.exists(stranger)


def test_reaper_never_deletes_a_tail_a_writer_holds(app, tus, rdb):
    from rindle.storage import Tail

    root = app.config["RINDLE"].tmp_dir
    upload_id, _ = half_upload(tus)
    rdb.hset(f"rindle:upload:{{{upload_id}}}", "state", "terminated")
    held = Tail.open(upload_id, 1000, root=root, start=PART)  # a request still in its PATCH
    try:
        assert maintenance(app).reap_tails()["busy"] == 1
        assert os.path.exists(tail_path(upload_id, root))
    finally:
        held.close()
    assert maintenance(app).reap_tails()["deleted"] == 1


def test_orphan_multipart_uploads_are_aborted_after_the_grace_period(app, tus, s3_client):
    referenced, _ = half_upload(tus)
    orphan = s3_client.create_multipart_upload(Bucket=bucket(app), Key="uploads/orphan")
    elsewhere = s3_client.create_multipart_upload(Bucket=bucket(app), Key="other/keep-me")

    young = maintenance(app).abort_orphans(grace=3600)
    assert young == {"aborted": 0, "kept": 0, "young": 2}
    assert maintenance(app).abort_orphans(grace=0, dry_run=True)["aborted"] == 1
    counts = maintenance(app).abort_orphans(grace=0)
    assert counts == {"aborted": 1, "kept": 1, "young": 0}

    remaining = s3_client.list_multipart_uploads(Bucket=bucket(app)).get("Uploads", [])
    by_key = {u["Key"]: u["UploadId"] for u in remaining}
    assert by_key == {
        "uploads/" + referenced: by_key["uploads/" + referenced],
        "other/keep-me": elsewhere["UploadId"],
    }
    assert orphan["UploadId"] not in by_key.values()
