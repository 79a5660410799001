"""The doctor's Redis checks against real servers: what failed, and whether the
formation fits Redis's maxclients (issue #17)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import RedisServer, ServiceUnavailable, free_port
from rindle import doctor
from rindle.config import Settings
from rindle.core import Rindle
from tests.conftest import tool_missing


def redis_checks(url: str, tmp_path: Path) -> dict[str, doctor.Check]:
    rindle = Rindle(Settings.from_env({"REDIS_URL": url, "RINDLE_TMP_DIR": str(tmp_path)}))
    return {c.name: c for c in doctor.check_redis(rindle)}


def test_nothing_listening_is_named_connection_refused(tmp_path):
    check = redis_checks(f"redis://:secret@127.0.0.1:{free_port()}/0", tmp_path)["redis"]
    assert check.status == doctor.FAIL
    assert "connection refused" in check.detail and "start Redis" in check.fix
    assert "secret" not in check.detail + check.fix


def test_a_host_that_does_not_resolve_is_named_dns(tmp_path):
    check = redis_checks("redis://no-such-host.invalid:6379/0", tmp_path)["redis"]
    assert check.status == doctor.FAIL
    assert "does not resolve" in check.detail, check.detail


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(log_path=tmp_path / "redis.log")
    try:
        server.start()
    except ServiceUnavailable as exc:
        tool_missing(str(exc))
    yield server
    server.stop()


def test_a_formation_beyond_maxclients_is_warned_about(small_redis, tmp_path, monkeypatch):
    import redis

    admin = redis.Redis.from_url(small_redis.url)
    admin.config_set("maxclients", 40)  # Heroku's premium-0 plan
    admin.close()
    # 2 dynos x 2 processes x 6 + a worker (9) + a clock (2) = 35: fits.
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    fits = redis_checks(small_redis.url, tmp_path)["redis connections"]
    assert fits.status == doctor.OK, fits.detail
    assert "needs up to 35" in fits.detail
    # 6 web processes: 47.
    monkeypatch.setenv("WEB_CONCURRENCY", "6")
    too_many = redis_checks(small_redis.url, tmp_path)["redis connections"]
    assert too_many.status == doctor.WARN
    assert "does not fit" in too_many.detail and "/40 clients" in too_many.detail
    assert "RINDLE_REDIS_CONNECTIONS" in too_many.fix
