"""Numeric settings outside their bounds are refused at start with the setting's name and
its range, never clamped (issue #21, item 9); gunicorn.conf.py refuses the same way."""

from __future__ import annotations

import os
import runpy
import types
from pathlib import Path

import pytest

from rindle import doctor
from rindle.config import BOUNDS, MIB, Settings
from rindle.errors import ConfigError
from rindle.storage import tail_path

REPO = Path(__file__).resolve().parents[2]
GUNICORN_CONF = str(REPO / "gunicorn.conf.py")


def refusal(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    return str(caught.value)


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_each_numeric_setting_takes_its_bounds_and_refuses_beyond(name: str) -> None:
    low, high = BOUNDS[name]
    Settings.from_env({name: str(low)})
    Settings.from_env({name: str(high)})
    for bad in (str(low - 1), str(high + 1), "ten", "1e3"):
        message = refusal({name: bad})
        assert name in message and f"from {low} to {high}" in message, message
        assert repr(bad) in message


def test_the_defaults_are_within_the_bounds() -> None:
    Settings.from_env({})  # raises if a default is out of bounds


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RINDLE_TUS_EXPIRATION", "0"),  # every upload 410 at once
        ("RINDLE_READ_CHUNK", str(1024 * MIB)),  # a GiB per read per open PATCH
        ("RINDLE_READ_CHUNK", "1"),  # was raised to 64 KiB without a word
        ("RINDLE_PARTS_IN_FLIGHT", "1000"),  # a thousand parts on disk per PATCH
        ("RINDLE_PARTS_IN_FLIGHT", "0"),  # was raised to 1 without a word
        ("RINDLE_LEASE_SECONDS", "1"),  # was raised to 5 without a word
        ("RINDLE_READ_TIMEOUT", "0"),
        ("RINDLE_TUS_MAX_PARTIALS", "0"),
        ("RINDLE_THREADS", "0"),
        ("RINDLE_RELEASE_WAIT", "3600"),  # longer than any router waits
        ("RINDLE_ORPHAN_GRACE", "0"),  # the sweep could abort a POST's multipart upload
    ],
)
def test_nonsense_values_are_refused_not_clamped(name: str, value: str) -> None:
    assert name in refusal({name: value})


def test_redis_connections_is_zero_or_at_least_four() -> None:
    assert Settings.from_env({"RINDLE_REDIS_CONNECTIONS": "0"}).redis_connections == 0
    assert "from 4 to" in refusal({"RINDLE_REDIS_CONNECTIONS": "3"})


def test_a_metrics_token_must_be_long_and_fit_in_a_header() -> None:
    assert "RINDLE_METRICS_TOKEN" in refusal({"RINDLE_METRICS_TOKEN": "short"})
    assert "RINDLE_METRICS_TOKEN" in refusal({"RINDLE_METRICS_TOKEN": "a" * 20 + " b"})
    token = "0123456789abcdef0123"
    assert Settings.from_env({"RINDLE_METRICS_TOKEN": token}).metrics_token == token


# -- gunicorn.conf.py --------------------------------------------------------------------


def gunicorn_conf() -> dict[str, object]:
    return runpy.run_path(GUNICORN_CONF)


def test_gunicorn_conf_has_the_same_read_chunk_bounds_as_the_settings() -> None:
    assert gunicorn_conf()["READ_CHUNK_BOUNDS"] == BOUNDS["RINDLE_READ_CHUNK"]


@pytest.mark.parametrize("value", ["1", str(1024 * MIB), "lots", "-65536"])
def test_gunicorn_conf_refuses_a_bad_read_chunk_like_the_settings(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("RINDLE_READ_CHUNK", value)
    with pytest.raises(SystemExit) as caught:
        gunicorn_conf()
    assert str(caught.value) == refusal({"RINDLE_READ_CHUNK": value})


def test_gunicorn_conf_reads_a_good_read_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RINDLE_READ_CHUNK", str(MIB))
    assert gunicorn_conf()["RECV_PIECE"] == MIB
    monkeypatch.delenv("RINDLE_READ_CHUNK")
    assert gunicorn_conf()["RECV_PIECE"] == Settings.from_env({}).read_chunk


# -- the doctor's disk estimate ----------------------------------------------------------


def test_the_doctor_counts_parts_in_flight_plus_one_per_patch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings.from_env(
        {
            "RINDLE_TMP_DIR": str(tmp_path),
            "RINDLE_MIN_FREE_DISK": "0",
            "RINDLE_TUS_PART_SIZE": str(5 * MIB),
            "RINDLE_PARTS_IN_FLIGHT": "4",
        }
    )
    os.makedirs(os.path.dirname(tail_path("x", str(tmp_path))), mode=0o700)
    usage = types.SimpleNamespace(total=1 << 40, used=0, free=0)
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda path: usage)
    rindle = types.SimpleNamespace(settings=settings)

    usage.free = 15 * MIB  # room for two parts, not for the five a PATCH may hold
    (check, *_) = doctor.check_tmp_dir(rindle)  # type: ignore[arg-type]
    assert check.status == doctor.WARN, check
    assert "5 parts of 5 MiB" in check.detail

    usage.free = 25 * MIB
    (check, *_) = doctor.check_tmp_dir(rindle)  # type: ignore[arg-type]
    assert check.status == doctor.OK, check
