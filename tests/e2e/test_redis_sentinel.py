"""Self-hosted Redis with Sentinel (issue #17): the web process, the worker and the clock
find the primary through a real sentinel, with the Procfile's own lines."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from tusclient import client as tus

from devstack import RedisServer, SeaweedS3, ServiceUnavailable
from tests.conftest import _STACKS, PART_SIZE, S3_PREFIX, Stack, stack_env, tool_missing
from tests.e2e.conftest import Uploads, payload, with_deadline

MIB = 1024 * 1024


@pytest.fixture
def sentinel_stack(
    request: pytest.FixtureRequest, s3_server: SeaweedS3, tmp_path: Path
) -> Iterator[Stack]:
    primary = RedisServer(log_path=tmp_path / "primary.log", password="pw-sentinel")
    sentinel = RedisServer(
        log_path=tmp_path / "sentinel.log", sentinel_for=primary, master_name="rindle"
    )
    try:
        primary.start()
        sentinel.start()
    except ServiceUnavailable as exc:
        primary.stop()
        tool_missing(str(exc))
    bucket = f"e2e-{uuid.uuid4().hex}"
    s3_server.create_bucket(bucket)
    env = stack_env(
        {
            # The host is not used: the sentinel names the primary.
            "REDIS_URL": "redis://:pw-sentinel@not-the-primary.invalid:1/0",
            "RINDLE_REDIS_SENTINELS": f"rindle@{sentinel.host}:{sentinel.port}",
            **s3_server.env(bucket=bucket),
            "RINDLE_S3_PREFIX": S3_PREFIX,
            "RINDLE_TMP_DIR": str(tmp_path / "tmp"),
            "RINDLE_TUS_PART_SIZE": str(PART_SIZE),
        }
    )
    check = redis.Redis.from_url(primary.url, decode_responses=True)
    stack = Stack(env, tmp_path / "logs", check, s3_server.client(), clock=True, procfile=True)
    request.node.stash[_STACKS] = [stack]
    try:
        yield stack.start()
    finally:
        stack.stop()
        check.close()
        s3_server.delete_bucket(bucket)
        sentinel.stop()
        primary.stop()


def test_web_worker_and_clock_reach_the_primary_through_the_sentinel(sentinel_stack) -> None:
    stack = sentinel_stack  # .redis: a client of the primary itself
    data = payload(6 * MIB + 1, seed=26379)
    uploader = tus.TusClient(stack.files_url).uploader(
        file_stream=io.BytesIO(data), chunk_size=len(data)
    )
    with_deadline(uploader.upload, 120, "tuspy upload with Redis behind Sentinel")
    Uploads(stack).assert_stored(uploader.url, data)  # assembled by the worker
    names = [c["name"] for c in stack.redis.client_list()]
    roles = {n.split(":")[1] for n in names if n.startswith("rindle:")}
    assert {"web", "worker", "clock"} <= roles, roles
