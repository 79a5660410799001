"""Shared tail mode (RINDLE_TAIL_STORE=s3): any node resumes any upload.

Two apps in this process play two web nodes: the same Redis and bucket, each with its
own tmp dir and node id. Uploads hop between them at every kind of offset.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from flask import Flask

from app import create_app
from rindle import Hooks, Settings, init_app, tail_path
from rindle.storage.shared_tail import TAILS_DIR
from tests.integration.conftest import (
    PART,
    TUS,
    Tus,
    object_bytes,
    random_bytes,
    run_jobs,
    sha256,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def node_env(redis_url: str, s3_env: dict[str, str], tmp_path: Path, monkeypatch):
    for name, value in s3_env.items():  # boto3 reads its own variables
        monkeypatch.setenv(name, value)

    def env(name: str, **extra: str) -> dict[str, str]:
        return {
            **s3_env,
            "REDIS_URL": redis_url,
            "RINDLE_TMP_DIR": str(tmp_path / name),
            "RINDLE_NODE_ID": name,
            "RINDLE_TUS_PART_SIZE": str(PART),
            "RINDLE_TAIL_STORE": "s3",
            "RINDLE_PUBLIC": "1",
            **extra,
        }

    return env


@pytest.fixture
def nodes(node_env) -> tuple[Flask, Flask]:
    apps = []
    for name in ("node-a", "node-b"):
        app = create_app(Settings.from_env(node_env(name)))
        app.config["TESTING"] = True
        apps.append(app)
    return apps[0], apps[1]


def tus_of(app: Flask) -> Tus:
    return Tus(app.test_client())


def shared_tails(app: Flask, s3_client) -> list[str]:
    settings = app.config["RINDLE"]
    listed = s3_client.list_objects_v2(
        Bucket=settings.s3_bucket, Prefix=settings.s3_prefix + TAILS_DIR
    )
    return sorted(o["Key"] for o in listed.get("Contents", []))


def offset_of(tus: Tus, upload_id: str) -> int:
    r = tus.head(upload_id)
    assert r.status_code == 200, r.get_data(as_text=True)
    return int(r.headers["Upload-Offset"])


def assert_completed_exact(app: Flask, s3_client, upload_id: str, data: bytes) -> None:
    run_jobs(app)
    upload = app.extensions["rindle"].uploads.get(upload_id)
    assert upload.state == "completed"
    body = object_bytes(s3_client, app.config["RINDLE"].s3_bucket, upload.key)
    assert sha256(body) == sha256(data)
    assert shared_tails(app, s3_client) == [], "completion leaves no shared tail behind"


LENGTH = 3 * PART + 4321


@pytest.mark.parametrize(
    "cut",
    [100_000, PART + 1, 2 * PART + 12345, LENGTH - 1],
    ids=["before-the-first-part", "after-a-part-boundary", "mid-part-after-parts", "last-byte"],
)
def test_a_resume_on_another_node_continues_at_any_offset(nodes, s3_client, cut):
    a, b = nodes
    data = random_bytes(LENGTH)
    upload_id = tus_of(a).create(LENGTH)
    tus_of(a).send_up_to(upload_id, data, cut)

    assert offset_of(tus_of(b), upload_id) == cut
    r = tus_of(b).patch(upload_id, cut, data[cut:])

    assert r.status_code == 204, r.get_data(as_text=True)
    assert int(r.headers["Upload-Offset"]) == LENGTH
    assert_completed_exact(a, s3_client, upload_id, data)


def test_a_stale_local_tail_is_never_used(nodes, s3_client):
    """Node A keeps its old tail; the upload moves on through B; back on A, the current
    bytes (B's) are used, not A's stale file."""
    a, b = nodes
    data = random_bytes(2 * PART)
    upload_id = tus_of(a).create(len(data))
    assert tus_of(a).patch(upload_id, 0, data[:100_000]).status_code == 204
    assert tus_of(b).patch(upload_id, 100_000, data[100_000:200_000]).status_code == 204
    stale = Path(tail_path(upload_id, a.config["RINDLE"].tmp_dir))
    assert stale.read_bytes() == data[:100_000]

    r = tus_of(a).patch(upload_id, 200_000, data[200_000:])

    assert r.status_code == 204, r.get_data(as_text=True)
    assert_completed_exact(a, s3_client, upload_id, data)


def test_a_restarted_node_that_lost_its_tail_resumes_from_the_shared_copy(nodes, s3_client):
    a, _ = nodes
    data = random_bytes(PART + 500)
    upload_id = tus_of(a).create(len(data))
    assert tus_of(a).patch(upload_id, 0, data[:100_000]).status_code == 204
    os.unlink(tail_path(upload_id, a.config["RINDLE"].tmp_dir))  # an ephemeral disk

    assert tus_of(a).patch(upload_id, 100_000, data[100_000:]).status_code == 204
    assert_completed_exact(a, s3_client, upload_id, data)


def test_a_lost_shared_tail_fails_loudly_and_changes_nothing(nodes, s3_client, rdb, caplog):
    a, b = nodes
    data = random_bytes(PART + 500)
    upload_id = tus_of(a).create(len(data))
    tus_of(a).send_up_to(upload_id, data, PART + 200)
    [key] = rdb.hget(f"rindle:upload:{{{upload_id}}}", "tail_key").split()  # the 200 bytes
    s3_client.delete_object(Bucket=a.config["RINDLE"].s3_bucket, Key=key)
    before = rdb.hgetall(f"rindle:upload:{{{upload_id}}}")

    with caplog.at_level(logging.ERROR, logger="rindle"):
        r = tus_of(b).patch(upload_id, PART + 200, data[PART + 200 :])

    assert r.status_code == 500
    assert r.get_json()["error"] == "tus_tail_missing"
    assert rdb.hgetall(f"rindle:upload:{{{upload_id}}}") == before
    assert not os.path.exists(tail_path(upload_id, b.config["RINDLE"].tmp_dir)), "no file left"
    assert any(
        "tus_tail_missing" in rec.getMessage() and upload_id in rec.getMessage()
        for rec in caplog.records
    )
    # The node that holds the bytes locally still finishes the upload.
    assert tus_of(a).patch(upload_id, PART + 200, data[PART + 200 :]).status_code == 204
    assert_completed_exact(a, s3_client, upload_id, data)


def test_each_patch_adds_a_segment_and_a_part_keeps_the_ones_it_replaced(nodes, s3_client):
    a, b = nodes
    data = random_bytes(2 * PART + 10)
    upload_id = tus_of(a).create(len(data))
    step = 100_000
    assert tus_of(a).patch(upload_id, 0, data[:step]).status_code == 204
    first = shared_tails(a, s3_client)
    assert len(first) == 1
    assert tus_of(b).patch(upload_id, step, data[step : 2 * step]).status_code == 204
    [second] = sorted(set(shared_tails(a, s3_client)) - set(first))
    segments = app_record(a, upload_id).tail_segments
    assert [(key, size) for key, _, size in segments] == [(first[0], step), (second, step)]
    # A part now holds them: kept as the previous segments, for a record a failover
    # rolls back by a commit.
    assert tus_of(a).patch(upload_id, 2 * step, data[2 * step : PART]).status_code == 204
    assert app_record(a, upload_id).tail_segments == ()
    assert sorted(shared_tails(a, s3_client)) == sorted([*first, second])
    assert tus_of(a).patch(upload_id, PART, data[PART : PART + step]).status_code == 204
    assert (
        tus_of(b).patch(upload_id, PART + step, data[PART + step : PART + 2 * step]).status_code
        == 204
    )
    later = sorted(set(shared_tails(a, s3_client)) - {*first, second})
    assert len(later) == 2
    # The next part replaces those two: they are the previous ones now, the first two go.
    r = tus_of(a).patch(upload_id, PART + 2 * step, data[PART + 2 * step : 2 * PART])
    assert r.status_code == 204, r.get_data(as_text=True)
    assert sorted(shared_tails(a, s3_client)) == later, (
        "segments older than the previous ones are deleted"
    )
    assert tus_of(b).patch(upload_id, 2 * PART, data[2 * PART :]).status_code == 204
    assert_completed_exact(a, s3_client, upload_id, data)


def app_record(app: Flask, upload_id: str):
    return app.extensions["rindle"].uploads.get(upload_id)


def test_termination_and_the_orphan_sweep_remove_shared_tails(nodes, s3_client):
    a, b = nodes
    ended = tus_of(a).create(PART)
    assert tus_of(a).patch(ended, 0, random_bytes(100_000)).status_code == 204
    live = tus_of(b).create(PART)
    assert tus_of(b).patch(live, 0, random_bytes(100_000)).status_code == 204
    assert tus_of(a).client.delete(f"/files/{ended}", headers=TUS).status_code == 204
    run_jobs(a)
    [kept] = shared_tails(a, s3_client)
    assert f"/{live}/" in kept

    # A generation no upload records (a writer died between its put and its commit).
    bucket = a.config["RINDLE"].s3_bucket
    orphan = f"{a.config['RINDLE'].s3_prefix}{TAILS_DIR}{live}/0-dead"
    s3_client.put_object(Bucket=bucket, Key=orphan, Body=b"x")
    maintenance = a.extensions["rindle"].maintenance
    assert maintenance.sweep_shared_tails(grace=3600) == {"tails_deleted": 0, "tails_kept": 2}
    assert maintenance.sweep_shared_tails(grace=0) == {"tails_deleted": 1, "tails_kept": 1}
    assert shared_tails(a, s3_client) == [kept]


def test_a_pre_create_key_inside_the_shared_tails_is_refused(node_env, s3_client):
    app = Flask(__name__)
    settings = Settings.from_env(node_env("node-c"))
    init_app(app, settings, hooks=Hooks(pre_create=lambda request, length, meta: meta["k"]))
    reserved = f"{settings.s3_prefix}{TAILS_DIR}x/1"
    value = __import__("base64").b64encode(reserved.encode()).decode()
    r = app.test_client().post(
        "/files/", headers={**TUS, "Upload-Length": "0", "Upload-Metadata": f"k {value}"}
    )
    assert r.status_code == 500
    assert r.get_json()["error"] == "invalid_key"


def test_local_mode_still_refuses_a_resume_on_another_node(node_env, s3_client):
    a, b = (
        create_app(Settings.from_env(node_env(name, RINDLE_TAIL_STORE="local")))
        for name in ("node-a", "node-b")
    )
    data = random_bytes(PART + 10)
    upload_id = tus_of(a).create(len(data))
    assert tus_of(b).patch(upload_id, 0, data[:100]).status_code == 204, "a first PATCH anywhere"
    r = tus_of(a).patch(upload_id, 100, data[100:])
    assert r.status_code == 500 and r.get_json()["error"] == "tus_tail_missing"
    assert shared_tails(a, s3_client) == []


def test_the_reaper_drops_a_stale_cache_but_keeps_the_shared_copy(nodes, s3_client):
    """A's file of a live upload that moved on through B is a stale cache: reaped, while
    the shared copy (B's) stays, and a resume on A fetches it."""
    a, b = nodes
    data = random_bytes(PART + 300)
    upload_id = tus_of(a).create(len(data))
    assert tus_of(a).patch(upload_id, 0, data[:100_000]).status_code == 204
    assert tus_of(b).patch(upload_id, 100_000, data[100_000:200_000]).status_code == 204
    shared = shared_tails(a, s3_client)  # A's segment and B's

    counts = a.extensions["rindle"].maintenance.reap_tails()
    assert counts == {"deleted": 1, "kept": 0, "busy": 0}
    assert not os.path.exists(tail_path(upload_id, a.config["RINDLE"].tmp_dir))
    assert b.extensions["rindle"].maintenance.reap_tails() == {"deleted": 0, "kept": 1, "busy": 0}
    assert shared_tails(a, s3_client) == shared

    assert tus_of(a).patch(upload_id, 200_000, data[200_000:]).status_code == 204
    assert_completed_exact(a, s3_client, upload_id, data)
