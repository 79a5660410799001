"""No Redis password in the doctor's lines or the queue dashboard's page (issue #21,
item 8), with the password given in the query of REDIS_URL, as redis-py accepts it."""

from __future__ import annotations

from pathlib import Path

from flask import Flask

import rindle
from devstack import free_port
from rindle import doctor
from rindle.config import Settings
from rindle.core import Rindle

SECRET = "hunter2-s3cret"


def doctor_redis(url: str, tmp_path: Path) -> doctor.Check:
    rindle_ = Rindle(Settings.from_env({"REDIS_URL": url, "RINDLE_TMP_DIR": str(tmp_path)}))
    return next(c for c in doctor.check_redis(rindle_) if c.name == "redis")


def test_the_doctor_shows_no_query_password(redis_url: str, tmp_path: Path) -> None:
    # redis-py reads the percent-encoded name as its password (a Redis without one
    # lets the default user in all the same).
    check = doctor_redis(f"{redis_url}?pass%77ord={SECRET}", tmp_path)
    assert check.status == doctor.OK, check
    assert check.detail.endswith("?pass%77ord=***"), check.detail
    refused = doctor_redis(f"redis://127.0.0.1:{free_port()}/0?pass%77ord={SECRET}", tmp_path)
    assert refused.status == doctor.FAIL
    assert "connection refused" in refused.detail and "?pass%77ord=***" in refused.detail
    assert SECRET not in check.detail + check.fix + refused.detail + refused.fix


def test_the_dashboard_shows_no_query_password(
    redis_url: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    settings = Settings.from_env(
        {
            **s3_env,
            "REDIS_URL": f"{redis_url}?ssl_password={SECRET}",
            "RINDLE_TMP_DIR": str(tmp_path / "n"),
            "RINDLE_DASHBOARD_PASSWORD": "pw",
        }
    )
    app = Flask("with-dashboard")
    rindle.init_app(app, settings)
    shown = str(app.config["RQ_DASHBOARD_REDIS_URL"])
    assert "ssl_password=***" in shown and SECRET not in shown
