"""Where the metrics are counted: S3 calls (botocore events) and the upload counters."""

from __future__ import annotations

import io

import pytest
from botocore.exceptions import ClientError
from prometheus_client import REGISTRY

from rindle import metrics
from rindle.storage import S3Storage
from tests.unit.conftest import PART


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_part_uploads_are_timed_and_failed_calls_counted_by_operation(s3: S3Storage) -> None:
    metrics.instrument_s3(s3.client)
    parts_before = sample("rindle_part_upload_seconds_count")
    complete_errors = sample("rindle_s3_errors_total", operation="CompleteMultipartUpload")
    head_errors = sample("rindle_s3_errors_total", operation="HeadObject")

    upload_id = s3.create_multipart("uploads/a")
    s3.upload_part("uploads/a", upload_id, 1, io.BytesIO(b"x" * PART), PART)
    s3.upload_part("uploads/a", upload_id, 2, io.BytesIO(b"y"), 1)
    assert sample("rindle_part_upload_seconds_count") == parts_before + 2

    with pytest.raises(ClientError):  # a wrong ETag: 400 InvalidPart
        s3.complete_multipart("uploads/a", upload_id, [(1, '"nope"'), (2, '"nope"')])
    assert (
        sample("rindle_s3_errors_total", operation="CompleteMultipartUpload") == complete_errors + 1
    )
    assert s3.head("uploads/missing") is None  # a 404 is an answer, not a failure
    assert sample("rindle_s3_errors_total", operation="HeadObject") == head_errors


def test_upload_counters_add_up_in_redis(fake_redis) -> None:
    counters = metrics.UploadCounters(fake_redis)
    assert counters.read() == dict.fromkeys(metrics.EVENTS, 0)
    counters.count("created")
    counters.count("created")
    counters.count("completed")
    assert counters.read() == {**dict.fromkeys(metrics.EVENTS, 0), "created": 2, "completed": 1}


def test_a_counter_that_cannot_reach_redis_does_not_raise(caplog) -> None:
    import redis

    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    metrics.UploadCounters(dead).count("created")
    assert "could not count an upload created" in caplog.text
