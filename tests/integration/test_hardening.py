"""Hardening (issue #9): odd states and hostile input never lose data (real Redis and S3)."""

from __future__ import annotations

import time

import pytest

from rindle.keys import EXPIRY_INDEX
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
