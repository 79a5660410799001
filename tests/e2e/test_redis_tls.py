"""A managed Redis as Heroku gives it (issue #17): TLS only, a certificate from no public
CA, a password, a cap on connections. The app's processes are started with the
Procfile's own lines, and only REDIS_URL and rindle's settings say how to connect."""

from __future__ import annotations

import collections
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests
from tusclient import client as tus

from devstack import RedisServer, SeaweedS3
from devstack.services import REPO_ROOT, TlsFiles, procfile_command
from rindle import redis_client
from tests.conftest import _STACKS, PART_SIZE, S3_PREFIX, Stack, stack_env
from tests.e2e.conftest import TUS, Uploads, payload, tls_redis_server, with_deadline

MIB = 1024 * 1024
WEB_BUDGET = redis_client.ROLES["web"][0]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return TlsFiles(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_redis(tls: TlsFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """redis-server with TLS only (--port 0 --tls-port ...) and requirepass."""
    with tls_redis_server(tmp_path_factory.mktemp("tls-redis"), tls) as server:
        yield server


@pytest.fixture(scope="module")
def tls_stack(
    tls_redis: RedisServer,
    tls: TlsFiles,
    s3_server: SeaweedS3,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """web, worker and clock from the Procfile's lines, REDIS_URL=rediss://:pw@..., no
    verification of the certificate (as on Heroku)."""
    root = tmp_path_factory.mktemp("tls-stack")
    bucket = f"e2e-{uuid.uuid4().hex}"
    s3_server.create_bucket(bucket)
    env = stack_env(
        {
            "REDIS_URL": tls_redis.url,
            "RINDLE_REDIS_SSL_CERT_REQS": "none",
            **s3_server.env(bucket=bucket),
            "RINDLE_S3_PREFIX": S3_PREFIX,
            "RINDLE_TMP_DIR": str(root / "tmp"),
            "RINDLE_TUS_PART_SIZE": str(PART_SIZE),
            "RINDLE_TAIL_STORE": "s3",
        }
    )
    check = redis.Redis.from_url(tls_redis.url, decode_responses=True, **ca(tls))
    stack = Stack(env, root / "logs", check, s3_server.client(), clock=True, procfile=True)
    try:
        yield stack.start()
    finally:
        stack.stop()
        check.close()
        s3_server.delete_bucket(bucket)


@pytest.fixture(autouse=True)
def _logs(request: pytest.FixtureRequest) -> None:
    if "tls_stack" in request.fixturenames:
        request.node.stash[_STACKS] = [request.getfixturevalue("tls_stack")]


def ca(tls: TlsFiles) -> dict[str, Any]:
    return {"ssl_ca_certs": str(tls.ca_file)}


def doctor(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app:app", "rindle", "doctor", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_upload_over_tls_is_assembled_by_the_worker(tls_stack: Stack) -> None:
    data = payload(12 * MIB + 7, seed=17)
    uploader = tus.TusClient(tls_stack.files_url).uploader(
        file_stream=__import__("io").BytesIO(data), chunk_size=5 * MIB
    )
    with_deadline(uploader.upload, 120, "tuspy upload over a TLS Redis")
    uploads = Uploads(tls_stack)
    try:
        uploads.assert_stored(uploader.url, data)  # completed by the worker, exact in S3
    finally:
        uploads.cleanup()


def test_the_doctor_passes_with_the_ca_and_verification_on(
    tls_stack: Stack, tls: TlsFiles, tls_redis: RedisServer
) -> None:
    env = {**tls_stack.env, "RINDLE_REDIS_SSL_CA_CERTS": str(tls.ca_file)}
    env.pop("RINDLE_REDIS_SSL_CERT_REQS")  # required, the default
    done = doctor(env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "over TLS" in done.stdout
    assert "redis connections" in done.stdout
    assert tls_redis.password not in done.stdout + done.stderr


def test_without_the_ca_the_doctor_names_tls_verification_and_the_fix(
    tls_stack: Stack, tls_redis: RedisServer
) -> None:
    env = dict(tls_stack.env)
    env.pop("RINDLE_REDIS_SSL_CERT_REQS")
    done = doctor(env)
    assert done.returncode == 1
    line = next(x for x in done.stdout.splitlines() if "redis:" in x)
    assert line.startswith("FAIL") and "TLS verification" in line, done.stdout
    assert "RINDLE_REDIS_SSL_CERT_REQS=none" in done.stdout
    assert "RINDLE_REDIS_SSL_CA_CERTS" in done.stdout
    assert tls_redis.password not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("password", "said"), [("wrong-password", "refused the password"), ("", "NOAUTH")]
)
def test_the_doctor_says_when_the_password_is_wrong_or_missing(
    tls_stack: Stack, tls_redis: RedisServer, password: str, said: str
) -> None:
    auth = f":{password}@" if password else ""
    url = f"rediss://{auth}{tls_redis.host}:{tls_redis.port}/0"
    env = {**tls_stack.env, "REDIS_URL": url}
    done = doctor(env)
    assert done.returncode == 1
    line = next(x for x in done.stdout.splitlines() if "redis:" in x)
    assert line.startswith("FAIL") and said in line, done.stdout
    assert "wrong-password" not in done.stdout + done.stderr


def test_the_release_line_passes_and_fails_with_redis(
    tls_stack: Stack, tls_redis: RedisServer
) -> None:
    def release(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            procfile_command("release"),
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    started = time.monotonic()
    ok = release(tls_stack.env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "s3 write" in ok.stdout and "s3 multipart" not in ok.stdout
    assert time.monotonic() - started < 30
    url = f"rediss://:nope@{tls_redis.host}:{tls_redis.port}/0"
    failed = release({**tls_stack.env, "REDIS_URL": url})
    assert failed.returncode != 0
    assert "refused the password" in failed.stdout


def test_rq_info_works_with_rindle_s_connection_class(tls_stack: Stack) -> None:
    done = subprocess.run(
        ["rq", "info", "--connection-class", "rindle.redis_client.RQConnection", "rindle"],
        cwd=REPO_ROOT,
        env=tls_stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 workers" in done.stdout


def test_connections_stay_within_each_process_s_budget_under_many_patches(
    tls_stack: Stack,
) -> None:
    """40 slow PATCHes at once: each web process keeps to its budget of connections;
    the peak per process, by the names the connections carry, is printed."""
    clients = 40
    peak: dict[str, int] = collections.Counter()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            names = collections.Counter(c["name"] for c in tls_stack.redis.client_list())
            for name, count in names.items():
                peak[name] = max(peak[name], count)
            time.sleep(0.1)

    def slow_patch(url: str) -> int:
        def body() -> Iterator[bytes]:
            for _ in range(20):
                yield b"x" * 16384
                time.sleep(0.15)

        headers = {**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
        return requests.patch(url, data=body(), headers=headers, timeout=60).status_code

    urls = []
    for _ in range(clients):
        created = requests.post(
            tls_stack.files_url, headers={**TUS, "Upload-Length": str(20 * 16384)}, timeout=10
        )
        assert created.status_code == 201
        urls.append(created.headers["Location"])
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    results: list[int] = []
    threads = [threading.Thread(target=lambda u=u: results.append(slow_patch(u))) for u in urls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    time.sleep(1.0)  # the completions run in the worker's horses
    stop.set()
    sampler.join(5)
    assert results.count(204) == clients, results
    by_role: dict[str, list[int]] = collections.defaultdict(list)
    for name, count in peak.items():
        if name.startswith("rindle:"):
            by_role[name.split(":")[1]].append(count)
    print(f"\npeak Redis connections per process, by role: {dict(by_role)}")
    assert len(by_role["web"]) == 2  # WEB_CONCURRENCY=2, each named
    assert max(by_role["web"]) <= WEB_BUDGET
    # A worker's main process, its horse and RQ's scheduler process share its name.
    assert max(by_role["worker"]) <= 2 * redis_client.ROLES["worker"][0] + 1
    assert max(by_role["clock"]) <= redis_client.ROLES["clock"][0]
