"""rindle's Redis clients against real servers: through a real Sentinel to its primary,
and a process's fixed budget of connections (issue #17)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from devstack import RedisServer, ServiceUnavailable
from rindle import redis_client
from rindle.config import Settings
from tests.conftest import tool_missing


@pytest.fixture
def primary_and_sentinel(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    """A redis-server with a password, and a real Sentinel (`redis-server --sentinel`)
    that monitors it as "rindle-primary"."""
    primary = RedisServer(log_path=tmp_path / "primary.log", password="s3cret")
    sentinel = RedisServer(
        log_path=tmp_path / "sentinel.log", sentinel_for=primary, master_name="rindle-primary"
    )
    try:
        primary.start()
        sentinel.start()
    except ServiceUnavailable as exc:
        primary.stop()
        tool_missing(str(exc))
    yield primary, sentinel
    sentinel.stop()
    primary.stop()


def test_the_factory_reaches_the_primary_through_a_sentinel(primary_and_sentinel):
    primary, sentinel = primary_and_sentinel
    settings = Settings.from_env(
        {
            # The password and db come from REDIS_URL; its host is not used.
            "REDIS_URL": "redis://:s3cret@unused-host:1/3",
            "RINDLE_REDIS_SENTINELS": f"rindle-primary@{sentinel.host}:{sentinel.port}",
        }
    )
    client = redis_client.client(settings)
    client.set("rindle:sentinel-probe", "through the sentinel")
    # Written on the primary itself, in db 3, by a connection that names itself.
    direct = redis.Redis(
        host=primary.host, port=primary.port, password="s3cret", db=3, decode_responses=True
    )
    try:
        assert direct.get("rindle:sentinel-probe") == "through the sentinel"
        names = [c["name"] for c in direct.client_list()]
        assert any(n.startswith("rindle:web:") for n in names), names
    finally:
        direct.close()
    assert client.connection_pool.connection_kwargs["decode_responses"] is True


def test_a_thread_beyond_the_budget_waits_for_a_connection(redis_url: str):
    """Budget 4 for a web process: 2 raw, 2 decoding. Two threads hold both decoding
    connections; a third waits for one instead of failing, and gets it when freed."""
    settings = Settings.from_env({"REDIS_URL": redis_url, "RINDLE_REDIS_CONNECTIONS": "4"})
    pool = redis_client.pool(settings)
    held = [pool.get_connection(), pool.get_connection()]
    got: list[float] = []

    def third() -> None:
        started = time.monotonic()
        redis_client.client(settings).ping()
        got.append(time.monotonic() - started)

    waiter = threading.Thread(target=third)
    waiter.start()
    time.sleep(0.5)
    assert not got, "the third thread did not wait"
    pool.release(held.pop())
    waiter.join(5)
    assert got and got[0] >= 0.4
    pool.release(held.pop())
    assert pool.max_connections == 2
