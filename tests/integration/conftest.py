"""In-process app (Flask test client) against a real redis-server and SeaweedFS."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from rq import Queue, SimpleWorker

from app import create_app
from rindle import Settings, redis_client

PART = 5 * 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture
def app(redis_url: str, s3_env: dict[str, str], tmp_path, monkeypatch) -> Iterator[Flask]:
    env = {
        **s3_env,
        "REDIS_URL": redis_url,
        "RINDLE_TMP_DIR": str(tmp_path / "node"),
        "RINDLE_TUS_PART_SIZE": str(PART),
        "RINDLE_TUS_MAX_SIZE": str(1024 * 1024 * 1024),
        "RINDLE_PUBLIC": "1",  # app.py has no authorize hook
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    app = create_app(Settings.from_env())
    app.config["TESTING"] = True
    yield app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def rq_burst(app: Flask):
    """Run the queued jobs in-process with a real RQ worker, like `rq worker --burst`."""

    return lambda: run_jobs(app)


def in_process_worker(app: Flask) -> SimpleWorker:
    """An RQ worker for rindle's queue to run in this process, on a connection of its own
    as a worker process has: RQ's worker holds one for its pub/sub, which a web
    process's raw pool does not budget for. Close ``.connection`` when done."""
    rindle = app.extensions["rindle"]
    connection = redis_client.private_client(rindle.settings, decode=False, size=4)
    queue = Queue(rindle.jobs.queue.name, connection=connection)
    return SimpleWorker([queue], connection=connection)


def run_jobs(app: Flask, **work: Any) -> None:
    """Run the queued jobs in-process (``work`` options: ``with_scheduler=True``...)."""
    worker = in_process_worker(app)
    try:
        with app.app_context():  # the jobs then use this app's services and hooks
            worker.work(burst=True, **work)
    finally:
        worker.connection.close()


class Tus:
    """Small raw-protocol helpers over the Flask test client."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def create(self, length: int, **headers: str) -> str:
        r = self.client.post("/files/", headers={**TUS, "Upload-Length": str(length), **headers})
        assert r.status_code == 201, r.get_data(as_text=True)
        return r.headers["Location"].split("/files/", 1)[1]

    def patch(self, upload_id: str, offset: int, data: bytes, **headers: str):
        return self.client.patch(
            f"/files/{upload_id}",
            data=data,
            headers={
                **TUS,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
                **headers,
            },
        )

    def send_up_to(self, upload_id: str, data: bytes, end: int) -> None:
        """``data[:end]`` from offset 0 in two PATCHes: a small first one (100 kB), so
        that the upload keeps the configured part size (a first PATCH of 5 MiB or more,
        shorter than the upload, sets the part size to its own length), then the rest."""
        first = min(end, 100_000)
        for start, stop in ((0, first), (first, end)):
            if stop > start:
                r = self.patch(upload_id, start, data[start:stop])
                assert r.status_code == 204, r.get_data(as_text=True)

    def head(self, upload_id: str):
        return self.client.head(f"/files/{upload_id}", headers=TUS)


@pytest.fixture
def tus(client: FlaskClient) -> Tus:
    return Tus(client)


@pytest.fixture
def rdb(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def object_bytes(s3_client, bucket: str, key: str) -> bytes:
    return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()


def random_bytes(n: int) -> bytes:
    return os.urandom(n)
