"""Shared fixtures: real Redis, a real S3 server (SeaweedFS) and the whole app stack.

Services are started once per session; every test gets a clean state (FLUSHALL, its own
bucket, its own tmp dir). When a service's program is missing the tests that need it are
skipped, unless RINDLE_REQUIRE_SERVICES=1 (as in CI), where they fail instead.

Fixtures (see each docstring):
    redis_server (session)  -> devstack.RedisServer         .url
    redis_url               -> str   (the server, FLUSHALLed before the test)
    redis_client            -> redis.Redis (decode_responses=True) on redis_url
    s3_server (session)     -> devstack.SeaweedS3           .endpoint .env() .client()
    s3_bucket               -> str   (a fresh bucket, deleted with its content afterwards)
    s3_env                  -> dict  AWS_* + RINDLE_S3_BUCKET + RINDLE_S3_PREFIX
    s3_client               -> boto3 S3 client for s3_server
    rindle_env              -> dict  everything the app reads (Redis, S3, tmp dir, part size)
    make_stack(**env)       -> Stack (gunicorn + rq worker); env values override, None unsets
    stack                   -> make_stack() with the defaults; indirect-parametrize with a dict

Helpers for fixtures of other scopes: ``stack_env(settings, **overrides)`` (the hermetic
environment of the app's processes, from devstack) and ``Stack(env, log_dir, redis_client,
s3_client)`` (devstack.Stack with a Redis and an S3 client); put a test's stacks in
``item.stash[_STACKS]`` to get their logs in its failure report.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import redis

import devstack
from devstack import RedisServer, SeaweedS3, ServiceUnavailable, stack_env

PART_SIZE = 5 * 1024 * 1024
S3_PREFIX = "uploads/"
REQUIRE_SERVICES = os.environ.get("RINDLE_REQUIRE_SERVICES") == "1"
# Importing app.py builds the example app, which has no authorize hook: say it is meant.
os.environ.setdefault("RINDLE_PUBLIC", "1")


def _service_missing(exc: ServiceUnavailable) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{exc} (RINDLE_REQUIRE_SERVICES=1: a missing service fails)", pytrace=False)
    pytest.skip(f"service unavailable: {exc}")


def tool_missing(why: str) -> NoReturn:
    """Skip the test for a program that is not installed (node, npm, chromium...), or fail
    it when RINDLE_REQUIRE_SERVICES=1 (CI must run every test)."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{why} (RINDLE_REQUIRE_SERVICES=1: a missing tool fails)", pytrace=False)
    pytest.skip(why)


# --------------------------------------------------------------------------- markers


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests under tests/e2e and tests/integration with `e2e` / `integration`."""
    for item in items:
        parts = Path(str(item.path)).parts
        for name in ("e2e", "integration"):
            if name in parts:
                item.add_marker(getattr(pytest.mark, name))


# --------------------------------------------------------------------------- Redis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server on a free loopback port, for the whole session."""
    try:
        server = RedisServer(log_path=tmp_path_factory.mktemp("redis") / "redis.log").start()
    except ServiceUnavailable as exc:
        _service_missing(exc)
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session Redis, emptied (FLUSHALL) before this test."""
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the emptied Redis, with decode_responses=True like the app's."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


# --------------------------------------------------------------------------- S3


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """SeaweedFS as a real S3 server (signatures checked), data in a session temp dir."""
    try:
        server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"), bucket="rindle-session").start()
    except ServiceUnavailable as exc:
        _service_missing(exc)
    yield server
    server.stop(timeout=0)  # the data is thrown away: no need for a graceful (2-10 s) stop


@pytest.fixture
def s3_bucket(s3_server: SeaweedS3) -> Iterator[str]:
    """A fresh, empty bucket for this test; deleted with everything in it afterwards."""
    name = f"t-{uuid.uuid4().hex}"
    s3_server.create_bucket(name)
    yield name
    s3_server.delete_bucket(name)


@pytest.fixture
def s3_env(s3_server: SeaweedS3, s3_bucket: str) -> dict[str, str]:
    """AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION,
    RINDLE_S3_BUCKET (this test's bucket) and RINDLE_S3_PREFIX."""
    return {**s3_server.env(bucket=s3_bucket), "RINDLE_S3_PREFIX": S3_PREFIX}


@pytest.fixture
def s3_client(s3_server: SeaweedS3) -> Any:
    """A boto3 S3 client for the session's S3 server."""
    return s3_server.client()


# --------------------------------------------------------------------------- the app


@pytest.fixture
def rindle_env(redis_url: str, s3_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Every variable the app reads, for this test: Redis, S3, a tmp dir, 5 MiB parts.

    Use it in-process with ``monkeypatch.setenv`` or ``Settings.from_env(rindle_env)``.
    """
    tmp_dir = tmp_path / "rindle-tmp"
    tmp_dir.mkdir(exist_ok=True)
    return {
        "REDIS_URL": redis_url,
        **s3_env,
        "RINDLE_TMP_DIR": str(tmp_dir),
        "RINDLE_TUS_PART_SIZE": str(PART_SIZE),
        "RINDLE_NODE_ID": "test-node",
    }


class Stack(devstack.Stack):
    """devstack's Stack (gunicorn + an rq worker from the repo root, logs in ``log_dir``)
    with the clients a test checks the outcome with: ``.redis`` (decode_responses=True)
    and ``.s3`` (boto3)."""

    def __init__(
        self,
        env: dict[str, str],
        log_dir: Path,
        redis_client: redis.Redis,
        s3: Any,
        *,
        worker_env: dict[str, str] | None = None,
        **options: Any,
    ) -> None:
        """``options`` go to devstack's Stack (``clock=True``, ``procfile=True``...)."""
        super().__init__(env, log_dir=log_dir, worker_env=worker_env, **options)
        self.redis = redis_client
        self.s3 = s3


_STACKS = pytest.StashKey[list[Stack]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """On a failure, attach the tail of each stack's gunicorn and worker logs to the report."""
    report = yield
    if report.failed:
        for stack in item.stash.get(_STACKS, []):
            for proc in stack.processes():
                report.sections.append(
                    (f"{proc.name} log {proc.log_path}", proc.log_tail(200) or "(empty)")
                )
    return report


@pytest.fixture
def make_stack(
    request: pytest.FixtureRequest,
    rindle_env: dict[str, str],
    s3_server: SeaweedS3,
    tmp_path: Path,
) -> Iterator[Callable[..., Stack]]:
    """A factory: ``make_stack(**env_overrides) -> Stack``, stopped after the test.

    The env is ``rindle_env`` (minus any RINDLE_/AWS_/REDIS_ variable of the outer
    environment) plus the overrides; an override of None removes the variable. Several
    stacks in one test share Redis and the bucket, each with its own RINDLE_TMP_DIR and
    RINDLE_NODE_ID (node0, node1, ...): two nodes, unless overridden.
    """
    stacks: list[Stack] = []
    request.node.stash[_STACKS] = stacks

    def factory(**overrides: str | int | None) -> Stack:
        n = len(stacks)
        tmp_dir = tmp_path / f"node{n}-tmp"  # created by Stack.start()
        env = stack_env(
            {**rindle_env, "RINDLE_TMP_DIR": str(tmp_dir), "RINDLE_NODE_ID": f"node{n}"},
            **overrides,
        )
        client = redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)
        stack = Stack(env, tmp_path / f"node{n}-logs", client, s3_server.client())
        stacks.append(stack)
        return stack.start()

    yield factory
    for stack in reversed(stacks):
        stack.stop()
        stack.redis.close()


@pytest.fixture
def stack(request: pytest.FixtureRequest, make_stack: Callable[..., Stack]) -> Stack:
    """The app (gunicorn) and an rq worker on this test's Redis, bucket and tmp dir.

    Override env with ``@pytest.mark.parametrize("stack", [{"VAR": "value"}], indirect=True)``.
    """
    overrides: dict[str, Any] = getattr(request, "param", None) or {}
    return make_stack(**overrides)
