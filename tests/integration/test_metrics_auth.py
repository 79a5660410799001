"""``/metrics`` behind a bearer token, and what a scrape costs (issue #21, item 3): Redis
round trips and stat() calls counted on a real Redis and a real tail directory."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask

from app import create_app
from rindle import Settings
from rindle.storage import tail_path
from rindle.web import metrics as web_metrics

TOKEN = "s3cret-scrape-token-0123456789"


@pytest.fixture
def metrics_app(app: Flask, monkeypatch: pytest.MonkeyPatch) -> Flask:
    """The app fixture's settings with RINDLE_METRICS=1 and a token, as init_app reads them."""
    monkeypatch.setenv("RINDLE_METRICS", "1")
    monkeypatch.setenv("RINDLE_METRICS_TOKEN", TOKEN)
    metrics_app = create_app(Settings.from_env())
    metrics_app.config["TESTING"] = True
    return metrics_app


def test_a_scrape_without_the_token_is_refused(metrics_app: Flask) -> None:
    client = metrics_app.test_client()
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": "Bearer"},
    ):
        r = client.get("/metrics", headers=headers)
        assert r.status_code == 401, headers
        assert r.get_json()["error"] == "unauthorized"
        assert r.headers["WWW-Authenticate"].startswith("Bearer ")
        assert b"rindle_" not in r.data
    r = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    assert "rindle_uploads_created_total" in r.get_data(as_text=True)


def test_without_a_token_the_page_is_open_as_before(app: Flask) -> None:
    web_metrics.mount(app)
    assert app.test_client().get("/metrics").status_code == 200


class Costs:
    """Redis round trips of this thread, and stat() calls on tail entries."""

    def __init__(self) -> None:
        self.round_trips = 0
        self.stats = 0


@pytest.fixture
def costs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Costs]:
    counted = Costs()
    me = threading.get_ident()
    send = redis.connection.AbstractConnection.send_packed_command

    def counting_send(self: Any, *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == me:
            counted.round_trips += 1
        return send(self, *args, **kwargs)

    class Entry:
        def __init__(self, entry: os.DirEntry[str]) -> None:
            self.entry, self.path = entry, entry.path

        def stat(self, **kwargs: Any) -> os.stat_result:
            counted.stats += 1
            return self.entry.stat(**kwargs)

    scan = web_metrics.scan_tails
    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting_send)
    monkeypatch.setattr(web_metrics, "scan_tails", lambda root: [Entry(e) for e in scan(root)])
    yield counted


def samples(text: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def test_a_scrape_makes_one_redis_round_trip_and_counts_tails_once_in_a_while(
    metrics_app: Flask, costs: Costs, monkeypatch: pytest.MonkeyPatch
) -> None:
    rindle = metrics_app.extensions["rindle"]
    for n, upload_id in enumerate(("tailA", "tailB", "tailC"), start=1):
        with open(tail_path(upload_id, rindle.settings.tmp_dir), "wb") as f:
            f.write(b"x" * n * 100)
    client = metrics_app.test_client()
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def scrape() -> tuple[dict[str, float], int, int]:
        before = (costs.round_trips, costs.stats)
        r = client.get("/metrics", headers=auth)
        assert r.status_code == 200
        return samples(r.get_data(as_text=True)), *(
            now - then for now, then in zip((costs.round_trips, costs.stats), before, strict=True)
        )

    first, _, stats = scrape()  # the first also opens its Redis connection
    assert (first["rindle_tails"], first["rindle_tail_bytes"]) == (3, 600)
    assert stats == 3
    # The next scrape: the counters and the queue in one round trip (6 commands), and
    # the tails as counted by the first (TAILS_CACHE_SECONDS).
    second, round_trips, stats = scrape()
    assert (round_trips, stats) == (1, 0)
    assert (second["rindle_tails"], second["rindle_tail_bytes"]) == (3, 600)
    assert second['rindle_queue_jobs{state="failed"}'] == 0
    assert "rindle_uploads_created_total" in second

    # Once the count is older than TAILS_CACHE_SECONDS, a scrape counts again.
    os.remove(tail_path("tailA", rindle.settings.tmp_dir))
    monkeypatch.setattr(web_metrics, "TAILS_CACHE_SECONDS", 0.0)
    third, round_trips, stats = scrape()
    assert (round_trips, stats) == (1, 2)
    assert (third["rindle_tails"], third["rindle_tail_bytes"]) == (2, 500)


def test_the_upload_counters_are_read_fresh_at_each_scrape(metrics_app: Flask) -> None:
    """Only the tail count is kept between scrapes: the deployment-wide counters are
    aggregated with max() over the nodes and must not lag."""
    client = metrics_app.test_client()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    before = samples(client.get("/metrics", headers=auth).get_data(as_text=True))
    r = client.post("/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "5"})
    assert r.status_code == 201
    after = samples(client.get("/metrics", headers=auth).get_data(as_text=True))
    assert after["rindle_uploads_created_total"] == before["rindle_uploads_created_total"] + 1
