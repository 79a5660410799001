"""The one Redis client factory: options from the settings, refused when wrong (issue #17)."""

from __future__ import annotations

import pytest
import redis

from rindle import redis_client
from rindle.config import Settings, redact_url
from rindle.errors import ConfigError
from rindle.redis_client import BlockingSentinelPool


@pytest.fixture(autouse=True)
def _web_role():
    yield
    redis_client.set_role("web")


def settings(**env: str) -> Settings:
    return Settings.from_env(env)


def connection_kwargs(s: Settings, decode: bool = True) -> dict:
    return redis_client.pool(s, decode=decode).connection_kwargs


def test_a_tls_url_verifies_the_certificate_by_default():
    kwargs = connection_kwargs(settings(REDIS_URL="rediss://:pw@example.com:6380/0"))
    assert kwargs["ssl_cert_reqs"] == "required"
    assert "ssl_ca_certs" not in kwargs


@pytest.mark.parametrize("reqs", ["required", "optional", "none"])
def test_the_cert_reqs_setting_takes_redis_py_s_names(reqs):
    kwargs = connection_kwargs(
        settings(REDIS_URL="rediss://h:6380/0", RINDLE_REDIS_SSL_CERT_REQS=reqs)
    )
    assert kwargs["ssl_cert_reqs"] == reqs


def test_a_ca_bundle_is_passed_on(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    kwargs = connection_kwargs(
        settings(REDIS_URL="rediss://h:6380/0", RINDLE_REDIS_SSL_CA_CERTS=str(ca))
    )
    assert kwargs["ssl_ca_certs"] == str(ca)


def test_the_url_s_own_ssl_cert_reqs_wins_over_the_setting():
    kwargs = connection_kwargs(
        settings(
            REDIS_URL="rediss://h:6380/0?ssl_cert_reqs=none",
            RINDLE_REDIS_SSL_CERT_REQS="required",
        )
    )
    assert kwargs["ssl_cert_reqs"] == "none"


def test_tls_settings_do_nothing_to_a_plain_url():
    kwargs = connection_kwargs(
        settings(REDIS_URL="redis://h:6379/0", RINDLE_REDIS_SSL_CERT_REQS="none")
    )
    assert "ssl_cert_reqs" not in kwargs


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"RINDLE_REDIS_SSL_CERT_REQS": "CERT_NONE"}, "RINDLE_REDIS_SSL_CERT_REQS"),
        ({"RINDLE_REDIS_SSL_CERT_REQS": "false"}, "RINDLE_REDIS_SSL_CERT_REQS"),
        ({"RINDLE_REDIS_SSL_CA_CERTS": "/no/such/ca.pem"}, "RINDLE_REDIS_SSL_CA_CERTS"),
        ({"REDIS_URL": "rediss://h/0?ssl_cert_reqs=never"}, "REDIS_URL"),
        ({"REDIS_URL": "http://h:6379/0"}, "REDIS_URL"),
        ({"RINDLE_REDIS_SENTINELS": "h1:26379"}, "RINDLE_REDIS_SENTINELS"),
        ({"RINDLE_REDIS_SENTINELS": "mymaster@h1"}, "RINDLE_REDIS_SENTINELS"),
        ({"RINDLE_REDIS_CONNECTIONS": "2"}, "RINDLE_REDIS_CONNECTIONS"),
        ({"RINDLE_REDIS_CONNECTIONS": "many"}, "RINDLE_REDIS_CONNECTIONS"),
    ],
)
def test_bad_values_are_refused_naming_the_setting(env, named):
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


def test_a_refused_url_is_not_printed_with_its_password():
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"REDIS_URL": "http://:secret@h:6379/0"})
    assert "secret" not in str(refused.value)


def test_passwords_are_hidden_in_the_url_and_in_its_query():
    url = "rediss://user:s3cret@h:6380/0?password=other&ssl_cert_reqs=none"
    shown = redact_url(url)
    assert "s3cret" not in shown and "other" not in shown
    assert "ssl_cert_reqs=none" in shown and "h:6380" in shown


def test_each_process_type_has_a_budget_split_between_pools_and_pub_sub():
    s = settings()
    assert redis_client.budget(s, "web") == (1, 4, 1)  # raw, decoding, pub/sub
    assert redis_client.budget(s, "worker") == (3, 1, 0)
    assert sum(redis_client.budget(s, "clock")) == 2
    custom = settings(RINDLE_REDIS_CONNECTIONS="10")
    assert redis_client.budget(custom, "web") == (1, 8, 1)
    assert redis_client.budget(custom, "worker") == (3, 1, 0)  # one job at a time


def test_a_process_shares_one_blocking_pool_per_kind_sized_by_its_budget():
    s = settings(REDIS_URL="redis://h:1/0")
    decoding, raw = redis_client.pool(s), redis_client.pool(s, decode=False)
    assert redis_client.pool(s) is decoding
    assert isinstance(decoding, redis.BlockingConnectionPool)
    assert (raw.max_connections, decoding.max_connections) == (1, 4)
    assert decoding.timeout == redis_client.POOL_WAIT
    assert decoding.connection_kwargs["decode_responses"] is True
    assert raw.connection_kwargs["decode_responses"] is False
    assert decoding.connection_kwargs["client_name"].startswith("rindle:web:")


def test_sentinels_give_a_blocking_pool_for_the_named_primary():
    s = settings(
        REDIS_URL="redis://:pw@ignored/2",
        RINDLE_REDIS_SENTINELS="main@10.0.0.1:26379,[::1]:26380",
    )
    assert s.redis_sentinels == (("10.0.0.1", 26379), ("::1", 26380))
    found = redis_client.pool(s)
    assert isinstance(found, BlockingSentinelPool)
    assert found.service_name == "main"
    assert found.connection_kwargs["password"] == "pw"
    assert found.connection_kwargs["db"] == 2


def test_rq_s_command_line_gets_rindle_s_client(monkeypatch):
    monkeypatch.setenv("RINDLE_REDIS_SSL_CERT_REQS", "none")
    made = redis_client.RQConnection.from_url("rediss://:pw@h:6380/0")
    assert made.connection_pool.connection_kwargs["ssl_cert_reqs"] == "none"
    assert made.connection_pool.connection_kwargs["decode_responses"] is False
    assert redis_client.role() == "tool"  # not inside an `rq worker` command
