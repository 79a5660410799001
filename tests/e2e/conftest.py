"""End-to-end helpers: one app stack per test module, and what a user checks after an upload.

``module_stack`` is the ``stack`` of tests/conftest.py (devstack's gunicorn ``app:app`` +
``rq worker --with-scheduler``, 5 MiB parts) built once per module: the upload matrices
run dozens of uploads and a stack per test would cost a second and a half each. It gets
its own bucket (deleted with its content at the end) and its own tmp dir; the session's
Redis is shared and is not flushed while the module runs. Each test cleans up what it
made through ``uploads`` (the objects in S3 and the upload's keys in Redis).
``own_stack`` makes such a stack with settings of its own, in any scope (the fault tests).
``node`` is the Node.js program with tus-js-client installed in tests/e2e/js (the JS tests).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
import redis
import requests

from demo import assets
from devstack import RedisServer, SeaweedS3, ServiceUnavailable
from devstack.services import TlsFiles
from rindle import tail_path
from tests.conftest import _STACKS, PART_SIZE, S3_PREFIX, Stack, stack_env, tool_missing

MIB = 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}
COMPLETION_TIMEOUT = 120.0  # seconds for the completion job to make the object
JS_DIR = Path(__file__).resolve().parent / "js"
MIN_NODE_MAJOR = 18  # what tus-js-client 4 supports; developed on Node 20
NODE_TIMEOUT = 300  # seconds for one run of a script in JS_DIR (64 MiB takes ~2 s)
T = TypeVar("T")


@contextlib.contextmanager
def own_stack(
    redis_server: RedisServer,
    s3_server: SeaweedS3,
    root: Path,
    node: str = "e2e-node",
    worker_overrides: dict[str, str | int | None] | None = None,
    **overrides: str | int | None,
) -> Iterator[Stack]:
    """An app stack (gunicorn + rq worker) with its own bucket, tmp dir (``root/tmp``) and
    settings on the session's Redis; 5 MiB parts. ``worker_overrides`` change the worker's
    settings only. Stopped, bucket deleted with its content, at the end."""
    bucket = f"e2e-{uuid.uuid4().hex}"
    s3_server.create_bucket(bucket)
    base = {
        "REDIS_URL": redis_server.url,
        **s3_server.env(bucket=bucket),
        "RINDLE_S3_PREFIX": S3_PREFIX,
        "RINDLE_TMP_DIR": str(root / "tmp"),
        "RINDLE_TUS_PART_SIZE": str(PART_SIZE),
        "RINDLE_NODE_ID": node,
    }
    worker_env = None
    if worker_overrides is not None:
        worker_env = stack_env(base, **{**overrides, **worker_overrides})
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    stack = Stack(
        stack_env(base, **overrides),
        root / "logs",
        client,
        s3_server.client(),
        worker_env=worker_env,
    )
    try:
        yield stack.start()
    finally:
        stack.stop()
        client.close()
        s3_server.delete_bucket(bucket)


@contextlib.contextmanager
def tls_redis_server(
    root: Path, tls: TlsFiles | None = None, **options: Any
) -> Iterator[RedisServer]:
    """A redis-server as a managed Redis gives it (issue #17): TLS only (``--port 0
    --tls-port``), a certificate from a throwaway CA (``tls``, else one made in
    ``root/tls``; ``server.tls.ca_file``), a generated ``requirepass`` password (in
    ``server.url``, ``rediss://:<pw>@...``). ``options`` go to ``RedisServer``
    (``maxclients=40``). Stopped, its files removed, at the end; without redis-server the
    test is skipped (failed under RINDLE_REQUIRE_SERVICES=1)."""
    root.mkdir(parents=True, exist_ok=True)
    tls = tls or TlsFiles(root / "tls")
    server = RedisServer(
        log_path=root / "redis.log", tls=tls, password=secrets.token_hex(12), **options
    )
    try:
        server.start()
    except ServiceUnavailable as exc:
        tool_missing(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def module_stack(
    redis_server: RedisServer, s3_server: SeaweedS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The app and an rq worker, shared by the tests of one module (5 MiB parts)."""
    with own_stack(redis_server, s3_server, tmp_path_factory.mktemp("e2e-stack")) as stack:
        yield stack


@pytest.fixture(autouse=True)
def _attach_module_stack_logs(request: pytest.FixtureRequest) -> None:
    """Let tests/conftest.py attach the stack's logs to a failing test's report."""
    if "module_stack" in request.fixturenames:
        request.node.stash[_STACKS] = [request.getfixturevalue("module_stack")]


def payload(size: int, seed: int = 0) -> bytes:
    """Incompressible, reproducible bytes."""
    return hashlib.shake_256(f"rindle-e2e/{seed}/{size}".encode()).digest(size) if size else b""


FIRST_PATCH = 100_000  # bytes: under 5 MiB (the part size stays), over 64 KiB (shared mode)


def send_up_to(url: str, data: bytes, end: int) -> None:
    """``data[:end]`` from offset 0 in two PATCHes: a small first one (100 kB), so that
    the upload keeps the configured part size (a first PATCH of 5 MiB or more, shorter
    than the upload, sets the part size to its own length), then the rest."""
    first = min(end, FIRST_PATCH)
    for start, stop in ((0, first), (first, end)):
        if stop > start:
            r = requests.patch(
                url,
                data=data[start:stop],
                headers={
                    **TUS,
                    "Content-Type": "application/offset+octet-stream",
                    "Upload-Offset": str(start),
                },
                timeout=60,
            )
            assert (r.status_code, r.headers.get("Upload-Offset")) == (204, str(stop)), r.text


def upload_id_of(url: str) -> str:
    return urlsplit(url).path.rstrip("/").rsplit("/", 1)[1]


def upload_key(upload_id: str) -> str:
    return f"rindle:upload:{{{upload_id}}}"


def with_deadline(fn: Callable[[], T], timeout: float, what: str) -> T:
    """Run ``fn`` in a thread; fail the test if it takes longer than ``timeout`` seconds.

    tuspy sets no socket timeout: a server that stops answering would hang the test.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name=what, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"{what} did not finish within {timeout:.0f}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def poll(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.02) -> T:
    """Call ``check`` until it returns something other than None; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting {what}")
        time.sleep(interval)


class Uploads:
    """What a user checks once an upload is done, and the cleanup of what a test made."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.made: list[str] = []

    def track(self, url: str) -> str:
        """Remember an upload for cleanup; returns its id."""
        upload_id = upload_id_of(url)
        self.made.append(upload_id)
        return upload_id

    def key(self, upload_id: str) -> str:
        return self.stack.prefix + upload_id

    def head(self, url: str) -> requests.Response:
        return requests.head(url, headers=TUS, timeout=10)

    def offset(self, url: str) -> int:
        response = self.head(url)
        assert response.status_code == 200, response.status_code
        return int(response.headers["Upload-Offset"])

    def wait_completed(self, upload_id: str, timeout: float = COMPLETION_TIMEOUT) -> None:
        """Poll until the completion job has marked the upload completed (fail on failed)."""

        def state() -> str | None:
            value = self.stack.redis.hget(upload_key(upload_id), "state")
            if value == "failed":
                pytest.fail(f"upload {upload_id}: the completion job marked it failed")
            return value if value == "completed" else None

        poll(state, timeout, f"for the completion job of upload {upload_id}")

    def part_sizes(self, key: str) -> list[int] | None:
        """Sizes of the parts of a multipart object; None for a single-PUT object.

        A multipart object's ETag ends in "-<number of parts>"; HEAD with PartNumber gives
        each part's size. (SeaweedFS answers PartNumber HEADs on single-PUT objects with its
        internal 4 MiB chunks, hence the ETag check first.)
        """
        s3, bucket = self.stack.s3, self.stack.bucket
        etag = s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
        if "-" not in etag:
            return None
        count = int(etag.rsplit("-", 1)[1])
        sizes = []
        for number in range(1, count + 1):
            head = s3.head_object(Bucket=bucket, Key=key, PartNumber=number)
            assert head.get("PartsCount") == count
            sizes.append(int(head["ContentLength"]))
        return sizes

    def sha256(self, key: str) -> tuple[str, int]:
        body = self.stack.s3.get_object(Bucket=self.stack.bucket, Key=key)["Body"]
        digest, size = hashlib.sha256(), 0
        for chunk in iter(lambda: body.read(MIB), b""):
            digest.update(chunk)
            size += len(chunk)
        return digest.hexdigest(), size

    def assert_stored(self, url: str, data: bytes | Path, part_size: int = PART_SIZE) -> None:
        """The upload is complete and its object in S3 holds exactly ``data``.

        Also: tus HEAD says offset == length; the upload's part size is ``part_size`` (the
        configured one, unless a first chunk set it) and every part but the last has it;
        no multipart upload is left open under the key; the node's tail is gone.
        """
        if isinstance(data, Path):
            expected_size = data.stat().st_size
            with open(data, "rb") as f:
                expected_sha = hashlib.file_digest(f, "sha256").hexdigest()
        else:
            expected_size, expected_sha = len(data), hashlib.sha256(data).hexdigest()
        upload_id = upload_id_of(url)
        if upload_id not in self.made:
            self.track(url)
        self.wait_completed(upload_id)

        response = self.head(url)
        assert response.status_code == 200
        assert response.headers["Upload-Length"] == str(expected_size)
        assert response.headers["Upload-Offset"] == str(expected_size)

        record = self.stack.redis.hgetall(upload_key(upload_id))
        key = self.key(upload_id)
        assert record["key"] == key
        assert int(record["part_size"]) == part_size

        sha, size = self.sha256(key)
        assert size == expected_size
        assert sha == expected_sha, f"s3://{self.stack.bucket}/{key} differs from the source"

        sizes = self.part_sizes(key)
        recorded = self.stack.redis.hgetall(f"{upload_key(upload_id)}:parts")
        if sizes is None:  # one PutObject: only when everything fits in one part
            assert expected_size <= part_size
            assert not recorded
        else:
            assert all(s == part_size for s in sizes[:-1]), sizes
            assert 0 < sizes[-1] <= part_size, sizes
            assert len(sizes) == math.ceil(expected_size / part_size), sizes
            # the bookkeeping agrees: part n -> "<size> <etag>"
            assert [int(recorded[str(n)].split()[0]) for n in range(1, len(sizes) + 1)] == sizes
            assert len(recorded) == len(sizes)

        open_uploads = self.stack.s3.list_multipart_uploads(Bucket=self.stack.bucket, Prefix=key)
        assert not open_uploads.get("Uploads"), "a multipart upload was left open"
        assert not os.path.exists(tail_path(upload_id, str(self.stack.tmp_dir)))

    def cleanup(self) -> None:
        for upload_id in self.made:
            self.stack.s3.delete_object(Bucket=self.stack.bucket, Key=self.key(upload_id))
            self.stack.redis.delete(
                upload_key(upload_id),
                f"{upload_key(upload_id)}:parts",
                f"{upload_key(upload_id)}:writer",
            )


@pytest.fixture
def uploads(module_stack: Stack) -> Iterator[Uploads]:
    """Checks for finished uploads; deletes each tracked upload's object and keys afterwards."""
    helper = Uploads(module_stack)
    yield helper
    helper.cleanup()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (status, lower-cased headers, body by Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a response: {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def connect(url: str, timeout: float = 10) -> tuple[socket.socket, str]:
    """A raw connection to ``url``'s server, and the URL's path."""
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=timeout), parts.path


def web_log(stack: Stack) -> str:
    """A node's whole gunicorn log, over all its restarts (the file is appended to)."""
    assert stack.web is not None and stack.web.log_path is not None
    return stack.web.log_path.read_text(errors="replace")


# =========================================================================== Node.js


def ensure_node_modules(npm: str, node_major: int) -> None:
    """``npm ci`` unless node_modules already matches the lock file and node's major
    version (under a file lock, so concurrent test runs do not install over each other)."""
    try:
        assets.npm_ci(JS_DIR, stamp_suffix=f" node{node_major}", npm=npm)
    except assets.InstallFailed as exc:
        pytest.fail(str(exc), pytrace=False)


def node_program() -> str:
    """The node program, with tus-js-client installed in tests/e2e/js (skip, or fail with
    RINDLE_REQUIRE_SERVICES=1, when Node.js is missing or too old)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        tool_missing("node and npm are needed for the tus-js-client tests (Node.js >= 18)")
    assert node is not None and npm is not None
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    match = re.match(r"v(\d+)\.", version.stdout.strip())
    if not match or int(match.group(1)) < MIN_NODE_MAJOR:
        tool_missing(f"Node.js >= {MIN_NODE_MAJOR} is needed, found {version.stdout.strip()!r}")
    ensure_node_modules(npm, int(match.group(1)))
    return node


@pytest.fixture(scope="session")
def node() -> str:
    """The node program, with tus-js-client installed (skips without Node.js)."""
    return node_program()


def run_node_script(
    node: str, script: str, endpoint: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (in JS_DIR) against ``endpoint`` to its end; fail after NODE_TIMEOUT."""
    try:
        return subprocess.run(
            [node, str(JS_DIR / script), "--endpoint", endpoint, *args],
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=NODE_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{script} did not finish in {NODE_TIMEOUT}s: {exc.stderr!r}")
