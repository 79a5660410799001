"""Fixtures for the fast unit tests: no services, Redis from fakeredis, S3 from moto.

    fake_redis  -> fakeredis.FakeRedis (decode_responses=True), a fresh server per test
    store       -> UploadStore on fake_redis (expiration 3600 s, lease 30 s)
    lease       -> Lease on store (release_wait 0.2 s)
    s3          -> S3Storage on moto (mock_aws), its bucket created, built like rindle
                   builds it (rindle.storage.make_s3_client)

Named apart from the fixtures of tests/conftest.py (redis_client, s3_client...), which
start real services.
"""

from __future__ import annotations

from collections.abc import Iterator

import fakeredis
import pytest
from moto import mock_aws

from rindle.lease import Lease
from rindle.storage import S3Storage, make_s3_client
from rindle.store import UploadStore

MIB = 1024 * 1024
PART = 5 * MIB  # rindle's (and S3's) smallest part size
EXPIRATION = 3600
LEASE_SECONDS = 30
RELEASE_WAIT = 0.2
BUCKET = "rindle-unit"


@pytest.fixture
def fake_redis() -> fakeredis.FakeRedis:
    """A Redis of this test alone (its own fakeredis server)."""
    return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)


@pytest.fixture
def store(fake_redis: fakeredis.FakeRedis) -> UploadStore:
    return UploadStore(fake_redis, EXPIRATION, LEASE_SECONDS)


@pytest.fixture
def lease(store: UploadStore) -> Lease:
    return Lease(store, release_wait=RELEASE_WAIT)


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Storage]:
    """An empty bucket in moto's S3, through the client rindle itself builds."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = make_s3_client()
        client.create_bucket(Bucket=BUCKET)
        yield S3Storage(client, BUCKET)
