"""Hardening, second pass (issue #21, items 5 to 7): deletes prove ownership, a vanished
assembly fails its upload, and a live writer keeps its shared copies (real Redis and S3)."""

from __future__ import annotations

import io
import logging
import time
from datetime import UTC, datetime

import pytest
from rq import Retry

from app import create_app
from rindle import Settings
from rindle.keys import EXPIRY_INDEX
from rindle.storage.s3 import NotDeleted
from tests.integration.conftest import PART, Tus, random_bytes, run_jobs
from tests.integration.test_concatenation import final, partial
from tests.integration.test_lifecycle import bucket, maintenance, make_expired
from tests.integration.test_shared_tail import shared_tails

pytestmark = pytest.mark.integration


def state_of(rdb, upload_id: str) -> str:
    return rdb.hget(f"rindle:upload:{{{upload_id}}}", "state")


def body_at(s3_client, app, key: str) -> bytes | None:
    try:
        return s3_client.get_object(Bucket=bucket(app), Key=key)["Body"].read()
    except s3_client.exceptions.NoSuchKey:
        return None


# -- item 5: deletes prove ownership ----------------------------------------------------


def give_up_after_one_try(app, upload_id: str):
    """The completion job, retried once, then given up on (the last try's path)."""
    queue = app.extensions["rindle"].jobs.queue
    queue.empty()  # the PATCH's own completion job waits seconds between retries
    job = queue.enqueue("rindle.jobs.complete_upload", upload_id, retry=Retry(max=1))
    run_jobs(app)
    job.refresh()
    assert job.retries_left == 0, "the first failure was retried"
    return job.return_value()


def test_giving_up_keeps_an_object_another_upload_wrote_at_the_key(app, tus, rdb, s3_client):
    """The upload's object was replaced by another writer's (a key a pre_create hook
    shares) before its completion ran: the upload fails, the other object stays."""
    upload_id = tus.create(5)
    assert tus.patch(upload_id, 0, b"hello").status_code == 204
    key = "uploads/" + upload_id
    s3_client.put_object(Bucket=bucket(app), Key=key, Body=b"another upload's")

    assert give_up_after_one_try(app, upload_id) == "failed (object)"

    assert state_of(rdb, upload_id) == "failed"
    assert tus.head(upload_id).status_code == 410
    assert body_at(s3_client, app, key) == b"another upload's"


def test_giving_up_keeps_an_object_a_multipart_upload_never_wrote(app, tus, rdb, s3_client):
    """A multipart upload whose completion never happened recorded no object: whatever
    sits at its key is someone else's."""
    data = random_bytes(PART + 10)
    upload_id = tus.create(len(data))
    assert tus.patch(upload_id, 0, data).status_code == 204
    key = "uploads/" + upload_id
    app.extensions["rindle"].jobs.queue.empty()
    s3_client.put_object(Bucket=bucket(app), Key=key, Body=b"someone else's")

    assert app.extensions["rindle"].assembly.give_up(upload_id, "test") == "failed (object)"

    assert state_of(rdb, upload_id) == "failed"
    assert body_at(s3_client, app, key) == b"someone else's"


def test_giving_up_deletes_the_wrong_object_this_upload_wrote(app, tus, rdb, s3_client):
    """The object this upload wrote (its recorded ETag) that does not match the upload
    (here: the record says one byte more) is not what the client sent: deleted."""
    upload_id = tus.create(5)
    assert tus.patch(upload_id, 0, b"hello").status_code == 204
    rdb.hset(f"rindle:upload:{{{upload_id}}}", "length", 6)

    assert give_up_after_one_try(app, upload_id) == "failed (object)"

    assert state_of(rdb, upload_id) == "failed"
    assert body_at(s3_client, app, "uploads/" + upload_id) is None


def test_a_conditional_delete_spares_an_object_replaced_after_the_head(app, s3_client):
    """The HEAD saw our object, then another writer replaced it before the DELETE: the
    DELETE's If-Match makes S3 refuse (412), and the new object stays."""
    s3 = app.extensions["rindle"].s3
    key = "uploads/shared/report.pdf"
    ours = s3.put_object(key, b"ours", 4)
    s3.put_object(key, b"theirs", 6)
    s3.head = lambda _key: (4, ours)  # the HEAD answered before the other PUT

    assert s3.delete_object_if(key, ours) is False
    assert body_at(s3_client, app, key) == b"theirs"


def test_a_conditional_delete_deletes_our_own_object(app, s3_client):
    s3 = app.extensions["rindle"].s3
    key = "uploads/shared/report.pdf"
    ours = s3.put_object(key, b"ours", 4)

    assert s3.delete_object_if(key, ours) is True
    assert body_at(s3_client, app, key) is None


def test_a_batch_delete_reports_the_keys_s3_refused(app, s3_client):
    """DeleteObjects in Quiet mode answers 200 with an Errors list: those keys are
    reported (NotDeleted, a ClientError), the others are deleted; missing keys count
    as deleted."""
    s3 = app.extensions["rindle"].s3
    s3.put_object("uploads/a", b"a", 1)

    with pytest.raises(NotDeleted) as raised:
        s3.delete_objects(["uploads/a", "../outside", "uploads/missing"])

    assert [key for key, _, _ in raised.value.errors] == ["../outside"]
    assert body_at(s3_client, app, "uploads/a") is None
    s3.delete_objects(["uploads/missing"])  # nothing there: no error


def test_the_shared_tail_sweep_counts_and_logs_keys_s3_refused(app, s3_client, caplog):
    rindle = app.extensions["rindle"]
    old = datetime(2020, 1, 1, tzinfo=UTC)
    orphan = rindle.shared_tails.root + "gone-upload/1-abc"
    rindle.s3.put_object(orphan, b"x", 1)
    rindle.shared_tails.listing = lambda: iter(
        [("gone-upload", orphan, old), ("gone-upload", "../outside", old)]
    )

    with caplog.at_level(logging.WARNING, logger="rindle.maintenance"):
        counts = rindle.maintenance.sweep_shared_tails(grace=60)

    assert counts["tails_deleted"] == 1
    assert counts["tails_errors"] == 1
    assert "../outside" in caplog.text
    assert body_at(s3_client, app, orphan) is None


# -- item 7: a concatenation whose assembly multipart upload vanished --------------------


@pytest.mark.parametrize("sizes", [[PART + 10, 3000], [1000, 2000]], ids=["copy", "restream"])
def test_a_final_upload_whose_assembly_was_aborted_outside_rindle_fails(
    app, tus, rq_burst, rdb, s3_client, sizes
):
    """An earlier try created the assembly's multipart upload, then a lifecycle rule
    aborted it: the job fails the upload (410) instead of being retried, and the sweep
    does not enqueue it again."""
    ids = [partial(tus, random_bytes(n)) for n in sizes]
    rq_burst()
    final_id = final(tus, ids).headers["Location"].rsplit("/", 1)[1]
    key = "uploads/" + final_id
    s3_upload_id = s3_client.create_multipart_upload(Bucket=bucket(app), Key=key)["UploadId"]
    app.extensions["rindle"].uploads.save_assembly_upload_id(final_id, s3_upload_id)
    s3_client.abort_multipart_upload(Bucket=bucket(app), Key=key, UploadId=s3_upload_id)

    rq_burst()

    assert state_of(rdb, final_id) == "failed"
    assert tus.head(final_id).status_code == 410
    rdb.zadd(EXPIRY_INDEX, {final_id: time.time() - 10})  # a stale entry: looked at once
    assert maintenance(app).sweep_expired()["requeued"] == 0
    assert rdb.zscore(EXPIRY_INDEX, final_id) is None
    assert tus.head(ids[0]).status_code == 200, "the partials are left alone"


@pytest.mark.parametrize("sizes", [[PART + 10, 3000], [1000, 2000]], ids=["copy", "restream"])
def test_a_final_upload_whose_partial_object_was_deleted_outside_rindle_fails(
    app, tus, rq_burst, rdb, s3_client, sizes
):
    ids = [partial(tus, random_bytes(n)) for n in sizes]
    rq_burst()
    s3_client.delete_object(Bucket=bucket(app), Key="uploads/" + ids[1])
    final_id = final(tus, ids).headers["Location"].rsplit("/", 1)[1]

    rq_burst()

    assert state_of(rdb, final_id) == "failed"
    assert tus.head(final_id).status_code == 410


def test_a_final_upload_completed_by_an_earlier_try_finishes(app, tus, rq_burst, rdb, s3_client):
    """An earlier try completed the assembly and stopped before marking the upload (a
    crash): the next try finds the multipart upload gone and the object it recorded,
    and finishes instead of failing."""
    pieces = [random_bytes(PART + 10), random_bytes(3000)]
    ids = [partial(tus, piece) for piece in pieces]
    rq_burst()
    final_id = final(tus, ids).headers["Location"].rsplit("/", 1)[1]
    assembly = app.extensions["rindle"].assembly

    def crash(upload):
        raise SystemExit("crashed after CompleteMultipartUpload")

    assembly._verify_and_finish = crash
    with pytest.raises(SystemExit):
        assembly.complete(final_id)
    del assembly._verify_and_finish
    assert state_of(rdb, final_id) == "assembling"

    assert assembly.complete(final_id) == "completed"
    assert body_at(s3_client, app, "uploads/" + final_id) == b"".join(pieces)


# -- item 6: shared tails of an upload whose writer holds the lease -----------------------


@pytest.fixture
def shared_app(redis_url, s3_env, tmp_path, monkeypatch):
    for name, value in s3_env.items():  # boto3 reads its own variables
        monkeypatch.setenv(name, value)
    env = {
        **s3_env,
        "REDIS_URL": redis_url,
        "RINDLE_TMP_DIR": str(tmp_path / "node-a"),
        "RINDLE_NODE_ID": "node-a",
        "RINDLE_TUS_PART_SIZE": str(PART),
        "RINDLE_TAIL_STORE": "s3",
        "RINDLE_PUBLIC": "1",
    }
    app = create_app(Settings.from_env(env))
    app.config["TESTING"] = True
    return app


def test_a_live_writer_keeps_its_shared_copy_past_the_expiry(shared_app, rdb, s3_client):
    """The upload's expiry passed while a writer (on another node: this node's tail is
    not locked) holds its lease, e.g. a slow PATCH that has committed nothing yet. The
    tail reaper, the expiry sweep and the orphan sweep leave its shared copy; once the
    lease is gone it is expired and reaped as before."""
    app = shared_app
    tus = Tus(app.test_client())
    data = random_bytes(PART + 1000)
    upload_id = tus.create(2 * PART)
    tus.send_up_to(upload_id, data, len(data))  # (the part size stays: a tail remains)
    copies = shared_tails(app, s3_client)
    assert copies, "the tail has a shared copy"
    lease = app.extensions["rindle"].lease
    lease.acquire(upload_id, "a-writer-on-another-node")
    make_expired(rdb, upload_id)
    work = maintenance(app)

    assert work.reap_tails()["kept"] == 1
    assert work.sweep_expired()["expired"] == 0
    assert work.sweep_orphans(grace=0)["tails_kept"] == len(copies)
    assert shared_tails(app, s3_client) == copies
    assert state_of(rdb, upload_id) == "receiving"

    lease.release(upload_id, "a-writer-on-another-node")
    assert work.sweep_expired()["expired"] == 1
    assert work.reap_tails()["deleted"] == 1
    assert shared_tails(app, s3_client) == []


def test_a_live_writer_keeps_an_unrecorded_shared_copy_older_than_the_grace(
    shared_app, rdb, s3_client
):
    """A writer puts a copy before it commits it: while it holds the lease, the orphan
    sweep keeps every copy of its upload, however old."""
    app = shared_app
    tus = Tus(app.test_client())
    upload_id = tus.create(2 * PART)
    assert tus.patch(upload_id, 0, random_bytes(100_000)).status_code == 204
    rindle = app.extensions["rindle"]
    rindle.lease.acquire(upload_id, "a-writer")
    rindle.shared_tails.put(upload_id, io.BytesIO(b"abcdef"), 6, 6)
    copies = shared_tails(app, s3_client)
    assert len(copies) == 2

    assert rindle.maintenance.sweep_shared_tails(grace=0)["tails_deleted"] == 0
    assert shared_tails(app, s3_client) == copies

    rindle.lease.release(upload_id, "a-writer")
    assert rindle.maintenance.sweep_shared_tails(grace=0)["tails_deleted"] == 1
    assert len(shared_tails(app, s3_client)) == 1, "the recorded copy stays"
