"""The operating surface in process (issue #11): request ids, PATCH summary lines, the
metrics page without multiprocess mode, and how the queue dashboard is mounted."""

from __future__ import annotations

import logging

import pytest
from flask import Flask

import rindle
from rindle import Settings
from rindle.errors import ConfigError
from rindle.web import dashboard
from rindle.web import metrics as web_metrics
from tests.integration.conftest import TUS, Tus

PATCH_HEADERS = {**TUS, "Content-Type": "application/offset+octet-stream"}


def summaries(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", "") == "write"]


def test_a_request_id_from_the_client_comes_back_and_a_bad_one_is_replaced(client) -> None:
    r = client.options("/files/", headers={"X-Request-ID": "abc-123"})
    assert r.headers["X-Request-ID"] == "abc-123"
    r = client.options("/files/", headers={"X-Request-ID": "no spaces\tor tabs"})
    assert r.headers["X-Request-ID"] != "no spaces\tor tabs"
    assert len(r.headers["X-Request-ID"]) == 16
    other = client.options("/files/").headers["X-Request-ID"]
    assert other != r.headers["X-Request-ID"]


def test_each_patch_logs_one_summary_line_with_its_ids(client, caplog) -> None:
    caplog.set_level(logging.INFO, logger="rindle")
    tus = Tus(client)
    upload_id = tus.create(10)
    r = tus.patch(upload_id, 0, b"hello", **{"X-Request-ID": "first"})
    assert r.status_code == 204
    r = tus.patch(upload_id, 3, b"late", **{"X-Request-ID": "second"})  # wrong offset
    assert r.status_code == 409

    lines = summaries(caplog)
    assert [(r.request_id, r.upload_id, r.bytes, r.outcome) for r in lines] == [
        ("first", upload_id, 5, "ok"),
        ("second", upload_id, 0, "offset_mismatch"),
    ]
    assert "PATCH upload" in lines[0].getMessage() and "5 bytes, 0 parts" in lines[0].getMessage()


def test_creation_with_upload_names_the_new_upload_on_its_lines(client, caplog) -> None:
    caplog.set_level(logging.INFO, logger="rindle")
    r = client.post("/files/", data=b"abc", headers={**PATCH_HEADERS, "Upload-Length": "10"})
    assert r.status_code == 201
    upload_id = r.headers["Location"].rsplit("/", 1)[1]
    (line,) = summaries(caplog)
    assert line.upload_id == upload_id and line.bytes == 3 and line.outcome == "ok"


def test_the_metrics_page_of_a_single_process(app, client, rq_burst) -> None:
    web_metrics.mount(app)
    tus = Tus(client)
    upload_id = tus.create(3)
    assert tus.patch(upload_id, 0, b"abc").status_code == 204
    rq_burst()
    text = client.get("/metrics").get_data(as_text=True)
    assert "rindle_uploads_created_total 1.0" in text
    assert "rindle_uploads_completed_total 1.0" in text
    assert 'rindle_queue_jobs{state="queued"} 0.0' in text
    assert "rindle_received_bytes_total" in text


def test_the_dashboard_is_never_mounted_without_authentication(app) -> None:
    other = Flask("other")
    rindle.init_app(other, app.config["RINDLE"])
    with pytest.raises(ConfigError, match="RINDLE_DASHBOARD_PASSWORD"):
        dashboard.mount(other)


def test_the_dashboard_behind_the_apps_own_check(app) -> None:
    allowed = {"yes": False}
    dashboard.mount(app, "/ops/rq", authorize=lambda: allowed["yes"])
    client = app.test_client()
    assert client.get("/ops/rq/").status_code == 401
    allowed["yes"] = True
    assert client.get("/ops/rq/").status_code == 200
    queues = client.get("/ops/rq/0/data/queues.json").get_json()
    assert isinstance(queues["queues"], list)


def test_the_dashboard_with_a_password_from_the_settings(redis_url, s3_env, tmp_path) -> None:
    settings = Settings.from_env(
        {
            **s3_env,
            "REDIS_URL": redis_url,
            "RINDLE_TMP_DIR": str(tmp_path / "n"),
            "RINDLE_DASHBOARD_PASSWORD": "pw",
        }
    )
    app = Flask("with-dashboard")
    rindle.init_app(app, settings)
    client = app.test_client()
    assert client.get("/rq/").status_code == 401
    assert client.get("/rq/", auth=("rindle", "wrong")).status_code == 401
    assert client.get("/rq/", auth=("someone", "pw")).status_code == 401
    assert client.get("/rq/", auth=("rindle", "pw")).status_code == 200
