"""Hardening (issue #9): odd states and hostile input never lose data (real Redis and S3)."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import time
from dataclasses import replace

import pytest

from rindle import tail_path
from rindle.keys import EXPIRY_INDEX
from tests.integration.conftest import PART, TUS, Tus, random_bytes
from tests.integration.test_lifecycle import (
    bucket,
    half_upload,
    maintenance,
    make_expired,
    open_multipart,
)

pytestmark = pytest.mark.integration


def state_of(rdb, upload_id: str) -> str:
    return rdb.hget(f"rindle:upload:{{{upload_id}}}", "state")


def test_the_sweep_never_expires_an_upload_whose_writer_is_alive(app, tus, rdb, s3_client):
    """A PATCH that holds the lease but has committed nothing for the expiry period (a
    long checksummed body, a slow resume) is activity: its multipart upload stays."""
    upload_id, _ = half_upload(tus)
    lease = app.extensions["rindle"].lease
    lease.acquire(upload_id, "a-live-writer")
    make_expired(rdb, upload_id)

    counts = maintenance(app).sweep_expired()

    assert counts["expired"] == 0
    assert state_of(rdb, upload_id) == "receiving"
    assert open_multipart(s3_client, bucket(app)) == ["uploads/" + upload_id]
    assert rdb.zscore(EXPIRY_INDEX, upload_id) is not None, "looked at again next time"
    lease.release(upload_id, "a-live-writer")
    assert maintenance(app).sweep_expired()["expired"] == 1
    assert state_of(rdb, upload_id) == "expired"


def test_the_sweep_forgets_index_entries_whose_upload_is_gone(app, rdb):
    rdb.zadd(EXPIRY_INDEX, {"gone-long-ago": time.time() - 100})
    maintenance(app).sweep_expired()
    assert rdb.zscore(EXPIRY_INDEX, "gone-long-ago") is None


def test_the_sweep_reaches_past_the_first_thousand_due_entries(app, tus, rdb, s3_client):
    """A thousand entries that stay due (their writers are alive) must not hide the
    thousand-and-first from the sweep."""
    now = time.time()
    lease = app.extensions["rindle"].lease
    busy = [f"busy-{n}" for n in range(1000)]
    for upload_id in busy:
        rdb.hset(
            f"rindle:upload:{{{upload_id}}}",
            mapping={
                "state": "receiving",
                "length": 10,
                "offset": 0,
                "committed": 0,
                "part_size": 5 << 20,
                "key": "uploads/" + upload_id,
                "created_at": now - 100,
                "expires_at": now - 100,
            },
        )
        lease.acquire(upload_id, "alive")
    rdb.zadd(EXPIRY_INDEX, dict.fromkeys(busy, now - 100))
    upload_id, _ = half_upload(tus)
    make_expired(rdb, upload_id)  # due later than all of them

    counts = maintenance(app).sweep_expired()

    assert counts["expired"] == 1
    assert state_of(rdb, upload_id) == "expired"
    assert open_multipart(s3_client, bucket(app)) == []


def test_an_object_that_never_matches_ends_failed_after_the_retries(app, tus, rdb, s3_client):
    """The object at the key has another size than the upload (here: overwritten before
    the completion ran). The completion is retried; after the last try the upload is
    failed (410), its object deleted, and nothing re-enqueues it any more."""
    from rq import Retry, SimpleWorker

    upload_id = tus.create(5)
    assert tus.patch(upload_id, 0, b"hello").status_code == 204
    key = "uploads/" + upload_id
    s3_client.put_object(Bucket=bucket(app), Key=key, Body=b"abc")
    queue = app.extensions["rindle"].jobs.queue
    queue.empty()  # the PATCH's own completion job waits seconds between retries
    job = queue.enqueue("rindle.jobs.complete_upload", upload_id, retry=Retry(max=1))

    with app.app_context():
        SimpleWorker([queue], connection=queue.connection).work(burst=True)

    job.refresh()
    assert job.retries_left == 0, "the first failure was retried"
    assert job.return_value() == "failed (object)"
    assert state_of(rdb, upload_id) == "failed"
    assert tus.head(upload_id).status_code == 410
    assert s3_client.list_objects_v2(Bucket=bucket(app)).get("Contents", []) == []


def test_a_multipart_upload_aborted_outside_rindle_fails_the_upload(app, tus, rdb, s3_client):
    """An S3 lifecycle rule aborted the multipart upload under a live upload: its parts
    are gone for good. The next PATCH answers 410 (not 503 for ever) and the upload is
    failed."""
    upload_id, data = half_upload(tus)
    upload = app.extensions["rindle"].uploads.get(upload_id)
    s3_client.abort_multipart_upload(
        Bucket=bucket(app), Key=upload.key, UploadId=upload.s3_upload_id
    )

    r = tus.patch(upload_id, PART + 1000, data[PART + 1000 :])

    assert r.status_code == 410
    assert r.get_json()["error"] == "gone"
    assert state_of(rdb, upload_id) == "failed"
    assert tus.head(upload_id).status_code == 410


def sha256_header(data: bytes) -> str:
    return "sha256 " + base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_a_checksummed_body_beyond_four_parts_is_refused_before_it_is_read(app, tus, rdb):
    """Such a body is spooled to disk whole before it is checked: it is capped."""
    data = random_bytes(4 * PART + 1)
    upload_id = tus.create(len(data))
    r = tus.patch(upload_id, 0, data, **{"Upload-Checksum": sha256_header(data)})
    assert r.status_code == 413
    assert r.get_json()["error"] == "checksum_body_too_large"
    assert tus.head(upload_id).headers["Upload-Offset"] == "0"


def test_a_chunked_checksummed_body_beyond_the_cap_keeps_nothing(app, tus, rdb):
    data = random_bytes(4 * PART + 1)
    upload_id = tus.create(len(data))
    r = tus.client.patch(  # a body of unknown length, as a chunked request
        f"/files/{upload_id}",
        input_stream=io.BytesIO(data),
        environ_overrides={"wsgi.input_terminated": True},
        headers={
            **TUS,
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
            "Transfer-Encoding": "chunked",
            "Upload-Checksum": sha256_header(data),
        },
    )
    assert r.status_code == 413
    assert r.get_json()["error"] == "checksum_body_too_large"
    assert tus.head(upload_id).headers["Upload-Offset"] == "0"
    tail = tail_path(upload_id, app.config["RINDLE"].tmp_dir)
    assert not os.path.exists(tail) or os.path.getsize(tail) == 0


def test_a_spooled_body_is_shipped_part_by_part_without_rewriting_the_rest(
    app, tus, rq_burst, s3_client, monkeypatch
):
    """Each shipped part used to be dropped by copying the rest of the file forward:
    quadratic in the body. Now the parts go from where they lie, and the rest moves once."""
    from rindle.storage.tail import Tail

    moved = []
    real_drop = Tail.drop_front

    def spy(self, count):
        moved.append(self.size - count)  # bytes copied forward
        real_drop(self, count)

    monkeypatch.setattr(Tail, "drop_front", spy)
    data = random_bytes(4 * PART)
    upload_id = tus.create(len(data) + 10)
    r = tus.patch(
        upload_id,
        0,
        data[: 3 * PART + 7],
        **{"Upload-Checksum": sha256_header(data[: 3 * PART + 7])},
    )
    assert r.status_code == 204
    assert r.headers["Upload-Offset"] == str(3 * PART + 7)
    assert sum(moved) <= PART, f"bytes copied forward: {moved}"


def test_a_patch_is_refused_with_507_when_the_tail_disk_is_short(app, tus):
    app.extensions["rindle"].settings = replace(app.config["RINDLE"], min_free_disk=1 << 62)
    upload_id = tus.create(10)
    r = tus.patch(upload_id, 0, b"abc")
    assert r.status_code == 507
    assert r.get_json()["error"] == "insufficient_storage"
    assert tus.head(upload_id).headers["Upload-Offset"] == "0"


def test_cancelling_an_upload_never_deletes_an_object_it_did_not_write(app, s3_client):
    """Two uploads share a key chosen by pre_create (a re-upload of the same file).
    Cancelling the unfinished second one keeps the first one's object; cancelling the
    first one after the second replaced the object keeps the second's."""
    from tests.integration.test_hooks import make_app, rq_burst_for

    hooked = make_app(pre_create=lambda request, length, metadata: "uploads/shared/report.pdf")
    tus = Tus(hooked.test_client())
    first = tus.create(5)
    assert tus.patch(first, 0, b"first").status_code == 204
    rq_burst_for(hooked)
    second = tus.create(6)
    assert tus.patch(second, 0, b"sec").status_code == 204

    assert tus.client.delete(f"/files/{second}", headers=TUS).status_code == 204
    rq_burst_for(hooked)
    key = {"Bucket": bucket(hooked), "Key": "uploads/shared/report.pdf"}
    assert s3_client.get_object(**key)["Body"].read() == b"first"

    third = tus.create(5)
    assert tus.patch(third, 0, b"third").status_code == 204
    rq_burst_for(hooked)
    assert tus.client.delete(f"/files/{first}", headers=TUS).status_code == 204
    rq_burst_for(hooked)
    assert s3_client.get_object(**key)["Body"].read() == b"third"

    assert tus.client.delete(f"/files/{third}", headers=TUS).status_code == 204
    rq_burst_for(hooked)
    assert s3_client.list_objects_v2(Bucket=bucket(hooked)).get("Contents", []) == []


def test_cancelling_a_completed_empty_upload_deletes_its_object(app, tus, rq_burst, s3_client):
    upload_id = tus.create(0)
    assert tus.client.delete(f"/files/{upload_id}", headers=TUS).status_code == 204
    rq_burst()
    assert s3_client.list_objects_v2(Bucket=bucket(app)).get("Contents", []) == []


def test_the_shipped_app_refuses_to_start_open_to_anyone_unless_told(rindle_env):
    from app import create_app
    from rindle import ConfigError, Hooks, Settings

    closed = {k: v for k, v in rindle_env.items() if k != "RINDLE_PUBLIC"}
    with pytest.raises(ConfigError, match="RINDLE_PUBLIC"):
        create_app(Settings.from_env(closed))
    assert create_app(Settings.from_env({**closed, "RINDLE_PUBLIC": "1"}))
    hooks = Hooks(authorize=lambda request, action, upload: None)
    assert create_app(Settings.from_env(closed), hooks=hooks)


def test_healthz_tells_no_internals_when_redis_is_down(rindle_env):
    from app import create_app
    from rindle import Settings

    env = {**rindle_env, "RINDLE_PUBLIC": "1", "REDIS_URL": "redis://:s3cret@127.0.0.1:1/0"}
    r = create_app(Settings.from_env(env)).test_client().get("/healthz")
    assert r.status_code == 503
    assert r.get_json() == {"status": "redis_unavailable"}
