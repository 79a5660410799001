"""No Redis password reaches a line rindle prints (issue #21, item 8): ``redact_url`` for
every way redis-py takes a password, and the places that show REDIS_URL: the settings'
error at start, the dev stack's banner (the doctor and the dashboard: integration)."""

from __future__ import annotations

import pytest

from rindle.config import Settings, redact_url
from rindle.errors import ConfigError

SECRET = "hunter2-s3cret"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://h:6379/0?password={SECRET}", "redis://h:6379/0?password=***"),
        (f"redis://:{SECRET}@h:6379/0", "redis://:***@h:6379/0"),
        (f"redis://user:{SECRET}@h:6379/0", "redis://user:***@h:6379/0"),
        (
            f"rediss://default:{SECRET}@h:6380/0?ssl_cert_reqs=none",
            "rediss://default:***@h:6380/0?ssl_cert_reqs=none",
        ),
        # redis-py unquotes the parameter's name: this is its password too.
        (f"redis://h/0?pass%77ord={SECRET}&db=1", "redis://h/0?pass%77ord=***&db=1"),
        (f"redis://h/0?PASSWORD={SECRET}", "redis://h/0?PASSWORD=***"),
        (f"rediss://h/0?ssl_password={SECRET}", "rediss://h/0?ssl_password=***"),
        (
            f"redis://h/0?password={SECRET}&password={SECRET}#x",
            "redis://h/0?password=***&password=***#x",
        ),
        (
            f"unix:///run/redis.sock?password={SECRET}&db=2",
            "unix:///run/redis.sock?password=***&db=2",
        ),
        (f"unix://:{SECRET}@/run/redis.sock", "unix://:***@/run/redis.sock"),
        # A password holding "@", "/", "?" or "#" (unquoted, as people write them).
        (f"redis://:{SECRET}@x@h:6379/0", "redis://:***@h:6379/0"),
        (f"redis://:{SECRET}/x?y#z@h:6379/0", "redis://:***@h:6379/0"),
        # A user name alone may well be a password put in the wrong place.
        (f"redis://{SECRET}@h:6379/0", "redis://***@h:6379/0"),
        # A port that is no number: still shown, never raised.
        (f"redis://u:{SECRET}@h:port/0", "redis://u:***@h:port/0"),
        # A sentinel URL of another library, and a URL without a scheme.
        (
            f"redis+sentinel://:{SECRET}@s1:26379,s2:26379/primary?password={SECRET}",
            "redis+sentinel://:***@s1:26379,s2:26379/primary?password=***",
        ),
        (f"{SECRET}@h:6379", "***@h:6379"),
        # Nothing secret: unchanged.
        ("redis://h:6379/0?client_name=a@b&db=3", "redis://h:6379/0?client_name=a@b&db=3"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_every_password_is_redacted_and_the_rest_kept(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert SECRET not in redact_url(url)


def test_redis_py_reads_those_query_passwords() -> None:
    """The cases above are real: redis-py takes each as the password."""
    from redis.connection import parse_url

    assert parse_url(f"redis://h/0?pass%77ord={SECRET}")["password"] == SECRET
    assert parse_url(f"redis://h/0?password={SECRET}")["password"] == SECRET


@pytest.mark.parametrize(
    "url",
    [
        f"http://:{SECRET}@h:6379/0",
        f"https://h/0?pass%77ord={SECRET}",
        f"redis+sentinel://u:{SECRET}@h:26379/p?password={SECRET}",
        f"memcache://u:{SECRET}@h:port/0",
    ],
)
def test_the_error_at_start_for_a_bad_url_shows_no_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"REDIS_URL": url})
    assert "REDIS_URL" in str(caught.value) and SECRET not in str(caught.value)


def test_the_dev_stack_banner_shows_no_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from devstack import run

    url = f"rediss://u:{SECRET}@h:6380/0?pass%77ord={SECRET}"
    monkeypatch.setenv("REDIS_URL", url)
    assert run.start_redis([]) == url
    printed = capsys.readouterr().out
    assert "REDIS_URL=rediss://u:***@h:6380/0" in printed and SECRET not in printed
