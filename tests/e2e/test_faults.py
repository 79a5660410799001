"""Faults (issue #3): the web process killed mid-PATCH, clients that vanish or stall,
concurrent clients on one upload. Real processes, real faults; afterwards a crash may
leave nothing that contradicts what Redis acknowledged, and the upload completes exact.

The helpers here (a raw-socket PATCH, the consistency check after a fault, a tus
recovery loop, an S3 proxy) serve test_faults_*.py too, and so does ``own_stack`` (a
stack with its own settings), which lives in tests/e2e/conftest.py.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from tusclient import client as tus

from devstack.services import REPO_ROOT, RedisServer, SeaweedS3
from rindle import tail_path
from tests.conftest import _STACKS, PART_SIZE, Stack
from tests.e2e.conftest import (  # own_stack: imported from here by test_faults_*.py
    FIRST_PATCH,
    MIB,
    TUS,
    Uploads,
    own_stack,
    payload,
    poll,
    read_response,
    send_up_to,
    upload_id_of,
    with_deadline,
)
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.e2e

P = PART_SIZE
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}
LEASE_SECONDS = 5  # the floor: a killed writer's lease lives this long after its last renewal


# =========================================================================== helpers


def create(stack: Stack, length: int) -> str:
    r = requests.post(stack.files_url, headers={**TUS, "Upload-Length": str(length)}, timeout=30)
    assert r.status_code == 201, r.text
    return r.headers["Location"]


def ukey(upload_id: str) -> str:
    return f"rindle:upload:{{{upload_id}}}"


class RawPatch:
    """A PATCH over a raw socket: the test sends the body piece by piece, stops when it
    likes, and reads the answer whenever there is one."""

    def __init__(
        self,
        url: str,
        offset: int,
        content_length: int,
        timeout: float = 60,
        checksum: str | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        self.sent = 0
        extra = f"Upload-Checksum: {checksum}\r\n" if checksum else ""
        self.sock.sendall(
            f"PATCH {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nTus-Resumable: 1.0.0\r\n"
            "Content-Type: application/offset+octet-stream\r\n"
            f"Upload-Offset: {offset}\r\nContent-Length: {content_length}\r\n{extra}\r\n".encode()
        )

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += len(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        return read_response(self.sock)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawPatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tcp_entries(sock: socket.socket) -> tuple[list[str] | None, list[str] | None]:
    """The /proc/net/tcp lines (split) of both ends of ``sock``'s loopback connection:
    the client's end, then the server's."""

    def hex_address(address: tuple[str, int]) -> str:
        return f"{socket.inet_aton(address[0])[::-1].hex().upper()}:{address[1]:04X}"

    client, server = hex_address(sock.getsockname()), hex_address(sock.getpeername())
    mine = theirs = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == (client, server):
            mine = fields
        elif (fields[1], fields[2]) == (server, client):
            theirs = fields
    return mine, theirs


def kernel_queues(sock: socket.socket) -> tuple[int | None, int | None]:
    """The bytes the client's kernel still has to deliver on this connection, and the
    bytes the server's kernel holds that the server has not read."""
    mine, theirs = tcp_entries(sock)
    unsent = None if mine is None else int(mine[4].split(":")[0], 16)
    unread = None if theirs is None else int(theirs[4].split(":")[1], 16)
    return unsent, unread


def read_all(patch: RawPatch) -> bool:
    """The server process has read every byte sent on ``patch`` (no kernel holds any)."""
    return kernel_queues(patch.sock) == (0, 0)


def record(stack: Stack, upload_id: str) -> dict[str, str]:
    return stack.redis.hgetall(ukey(upload_id))


def redis_parts(stack: Stack, upload_id: str) -> dict[int, tuple[int, str]]:
    """Committed parts: number -> (size, etag)."""
    raw = stack.redis.hgetall(f"{ukey(upload_id)}:parts")
    return {int(n): (int(v.split(" ", 1)[0]), v.split(" ", 1)[1]) for n, v in raw.items()}


def s3_parts(stack: Stack, key: str, s3_upload_id: str) -> dict[int, set[tuple[int, str]]]:
    """What S3 holds for a multipart upload: number -> {(size, etag)} (SeaweedFS lists
    every upload of a part number until the upload is completed)."""
    if not s3_upload_id:
        return {}
    held: dict[int, set[tuple[int, str]]] = {}
    paginator = stack.s3.get_paginator("list_parts")
    for page in paginator.paginate(Bucket=stack.bucket, Key=key, UploadId=s3_upload_id):
        for part in page.get("Parts", []):
            held.setdefault(part["PartNumber"], set()).add((part["Size"], part["ETag"]))
    return held


def tail_of(stack: Stack, upload_id: str) -> bytes | None:
    try:
        return Path(tail_path(upload_id, str(stack.tmp_dir))).read_bytes()
    except FileNotFoundError:
        return None


def tail_size(stack: Stack, upload_id: str) -> int:
    try:
        return Path(tail_path(upload_id, str(stack.tmp_dir))).stat().st_size
    except FileNotFoundError:
        return -1


def md5(data: bytes) -> str:
    return '"' + hashlib.md5(data).hexdigest() + '"'


def assert_consistent(
    stack: Stack, upload_id: str, data: bytes, live: bool = False
) -> dict[str, Any]:
    """What any fault may leave behind, as Redis acknowledged it: the committed parts
    are numbered 1..n, full, in S3 with the ETag Redis recorded and that ETag is the MD5
    of the source's bytes at that place; the offset is the committed parts plus the
    buffered bytes; this node's tail holds (at least) the buffered bytes, and they are
    the source's bytes at that place. Returns offset, committed, parts, tail size.

    ``live``: writers are running. The record and its parts are then read in one
    transaction (a snapshot no commit can split), S3 is listed after it (it only gains
    parts), and the tail, which a writer changes under the check, is not looked at."""
    with stack.redis.pipeline(transaction=True) as pipe:
        pipe.hgetall(ukey(upload_id))
        pipe.hgetall(f"{ukey(upload_id)}:parts")
        rec, raw_parts = pipe.execute()
    assert rec, f"upload {upload_id} is gone from Redis"
    offset, committed, part_size = int(rec["offset"]), int(rec["committed"]), int(rec["part_size"])
    parts = {int(n): (int(v.split(" ", 1)[0]), v.split(" ", 1)[1]) for n, v in raw_parts.items()}
    assert sorted(parts) == list(range(1, len(parts) + 1)), parts
    assert sum(size for size, _ in parts.values()) == committed
    held = s3_parts(stack, rec["key"], rec.get("upload_id", ""))
    for number, (size, etag) in parts.items():
        start = (number - 1) * part_size
        if rec["state"] in ("created", "receiving"):
            assert size == part_size, f"part {number} of a receiving upload is {size} bytes"
        assert (size, etag) in held.get(number, set()), f"part {number} is not in S3 as recorded"
        assert etag == md5(data[start : start + size]), f"part {number} holds other bytes"
    buffered = offset - committed
    assert buffered >= 0, (offset, committed)
    tail = None if live else tail_of(stack, upload_id)
    if buffered and rec["state"] in ("created", "receiving") and not live:
        assert tail is not None, "bytes acknowledged in a tail that does not exist"
        assert len(tail) >= buffered, f"the tail has {len(tail)} of {buffered} bytes"
        assert tail[:buffered] == data[committed:offset], "the tail holds other bytes"
    return {
        "state": rec["state"],
        "offset": offset,
        "committed": committed,
        "parts": len(parts),
        "tail": -1 if tail is None else len(tail),
    }


def head_offset(url: str, timeout: float = 30) -> int:
    """The offset from HEAD, once HEAD answers 200: after a crash the dead writer's lease
    lives on until it expires, and HEAD answers 423 meanwhile."""

    def attempt() -> int | None:
        try:
            r = requests.head(url, headers=TUS, timeout=10)
        except requests.ConnectionError:
            return None
        if r.status_code in (423, 503):
            return None
        assert r.status_code == 200, r.status_code
        return int(r.headers["Upload-Offset"])

    return poll(attempt, timeout, f"for HEAD {url} to answer 200")


def paced(data: bytes, piece: int, pause: float) -> Iterator[bytes]:
    """A request body that trickles: ``piece`` bytes, then ``pause`` seconds, and so on
    (requests sends it with Transfer-Encoding: chunked)."""
    for start in range(0, len(data), piece):
        yield data[start : start + piece]
        time.sleep(pause)


def tus_resume(
    url: str,
    data: bytes,
    chunk: int | None = None,
    timeout: float = 90,
    pace: tuple[int, float] | None = None,
    start: int | None = None,
) -> list[int | str]:
    """The tus recovery loop of a careful client: HEAD, PATCH from the offset the server
    has; on 409, 423, 5xx or a dropped connection, HEAD again. Returns what it met: HTTP
    statuses, "204<" for a PATCH that kept only part of its body (its writer was asked
    to let go), exception names for dropped connections.
    ``pace`` = (piece, pause) sends each body as a trickle (see ``paced``); ``start``: the
    offset the client believes in, PATCHed first without asking (as right after POST)."""
    seen: list[int | str] = []
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, f"no end to the resume of {url}: {seen}"
        if start is not None:
            offset, start = start, None
        else:
            try:
                r = requests.head(url, headers=TUS, timeout=10)
            except requests.ConnectionError as exc:
                seen.append(type(exc).__name__)
                time.sleep(0.2)
                continue
            if r.status_code != 200:
                seen.append(r.status_code)
                assert r.status_code in (423, 503), r.status_code
                time.sleep(0.2)
                continue
            offset = int(r.headers["Upload-Offset"])
        if offset == len(data):
            return seen
        end = len(data) if chunk is None else min(len(data), offset + chunk)
        body: bytes | Iterator[bytes] = data[offset:end]
        if pace is not None:
            body = paced(data[offset:end], *pace)
        try:
            r = requests.patch(
                url, data=body, headers={**PATCH, "Upload-Offset": str(offset)}, timeout=60
            )
        except requests.ConnectionError as exc:
            seen.append(type(exc).__name__)
            continue
        if r.status_code == 204:
            got = int(r.headers["Upload-Offset"])
            assert offset <= got <= end, (offset, got, end)
            seen.append(204 if got == end else "204<")  # "204<": let go before the end
            continue
        seen.append(r.status_code)
        assert r.status_code in (409, 423) or r.status_code >= 500, (r.status_code, r.text)
        time.sleep(0.1)


def tuspy_resume(url: str, data: bytes, chunk: int, stack: Stack) -> None:
    """tuspy, given the upload URL (as from its URL storage), finds the offset and ends it."""
    uploader = tus.TusClient(stack.files_url).uploader(
        file_stream=io.BytesIO(data), url=url, chunk_size=chunk, retries=5, retry_delay=1
    )
    with_deadline(uploader.upload, 120, "the tuspy resume")
    assert uploader.offset == len(data)


def rindle_cli(stack: Stack, *args: str) -> str:
    """Run ``flask rindle <args>`` with the stack's settings (as the clock's jobs or an
    operator would); it must succeed. Returns what it printed."""
    done = subprocess.run(
        ["flask", "rindle", *args],
        cwd=REPO_ROOT,
        env={**stack.env, "FLASK_APP": "app"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def target_of(url: str) -> tuple[str, int]:
    """(host, port) of a service URL (an S3 endpoint, a redis:// URL)."""
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


# =========================================================================== fixtures


@pytest.fixture(scope="module")
def s3_proxy(s3_server: SeaweedS3) -> Iterator[FaultProxy]:
    """A fault proxy between this module's app and SeaweedFS."""
    with FaultProxy(target_of(s3_server.endpoint), name="s3") as proxy:
        yield proxy


@pytest.fixture(scope="module")
def crash_stack(
    redis_server: RedisServer,
    s3_server: SeaweedS3,
    s3_proxy: FaultProxy,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """The app talking to S3 through ``s3_proxy``, with the shortest writer lease."""
    with stack_behind(
        redis_server, s3_server, s3_proxy, tmp_path_factory.mktemp("crash-stack")
    ) as stack:
        yield stack


@contextlib.contextmanager
def stack_behind(
    redis_server: RedisServer,
    s3_server: SeaweedS3,
    proxy: FaultProxy,
    root: Path,
    **overrides: str | int | None,
) -> Iterator[Stack]:
    """``own_stack`` with the app talking to S3 through ``proxy`` and the shortest writer
    lease; ``overrides`` are further settings."""
    with own_stack(
        redis_server,
        s3_server,
        root,
        AWS_ENDPOINT_URL_S3=proxy.rewrite(s3_server.endpoint),
        RINDLE_LEASE_SECONDS=LEASE_SECONDS,
        **overrides,
    ) as stack:
        yield stack


def uploads_behind(
    request: pytest.FixtureRequest, stack: Stack, proxy: FaultProxy
) -> Iterator[Uploads]:
    """Uploads on ``stack`` (a fixture's body); afterwards the proxy passes again and the
    app runs."""
    request.node.stash[_STACKS] = [stack]
    helper = Uploads(stack)
    yield helper
    proxy.heal()
    if stack.web is None or not stack.web.alive():
        stack.restart_web()
    helper.cleanup()


@pytest.fixture
def crashed(
    request: pytest.FixtureRequest, crash_stack: Stack, s3_proxy: FaultProxy
) -> Iterator[Uploads]:
    """Uploads on ``crash_stack``; afterwards the proxy passes again and the app runs."""
    yield from uploads_behind(request, crash_stack, s3_proxy)


def kill_web(stack: Stack, patch: RawPatch) -> float:
    """SIGKILL gunicorn (its whole process group), start it again; the client's connection
    is gone with it. Returns the seconds the restart took."""
    started = time.monotonic()
    stack.restart_web(kill=True)
    patch.close()
    return time.monotonic() - started


def committed_at_least(stack: Stack, upload_id: str, committed: int, tail: int) -> bool | None:
    rec = record(stack, upload_id)
    ok = int(rec.get("committed", 0)) >= committed and tail_size(stack, upload_id) >= tail
    return ok or None


# =========================================================================== 1. SIGKILL


def test_kill_before_the_first_part_keeps_nothing_unacknowledged(crashed: Uploads):
    """Killed while the first part is still filling the tail: nothing was acknowledged,
    so the offset is 0; the tail's leftovers are cut off when tuspy starts over."""
    stack = crashed.stack
    data = payload(12 * MIB + 7, seed=101)
    url = create(stack, len(data))
    upload_id = crashed.track(url)
    patch = RawPatch(url, 0, len(data))
    patch.send(data[: 3 * MIB])
    poll(lambda: committed_at_least(stack, upload_id, 0, 3 * MIB), 30, "for 3 MiB in the tail")
    kill_web(stack, patch)

    after = assert_consistent(stack, upload_id, data)
    assert (after["offset"], after["committed"], after["parts"]) == (0, 0, 0)
    assert after["tail"] == 3 * MIB  # leftovers, not acknowledged
    assert head_offset(url) == 0
    tuspy_resume(url, data, 4 * MIB, stack)
    crashed.assert_stored(url, data)


def test_kill_after_parts_keeps_the_committed_parts(crashed: Uploads):
    """Killed with two parts committed and 2 MiB more received: the offset is the two
    parts (those bytes were never acknowledged); the resume sends the rest."""
    stack = crashed.stack
    data = payload(3 * P + 123, seed=102)
    url = create(stack, len(data))
    upload_id = crashed.track(url)
    patch = RawPatch(url, 0, len(data))
    patch.send(data[: 2 * P + 2 * MIB])
    poll(
        lambda: (committed_at_least(stack, upload_id, 2 * P, 0) and read_all(patch)) or None,
        30,
        "for two parts, and the 2 MiB after them read",
    )
    kill_web(stack, patch)

    after = assert_consistent(stack, upload_id, data)
    assert (after["offset"], after["committed"], after["parts"]) == (2 * P, 2 * P, 2)
    assert head_offset(url) == 2 * P
    seen = tus_resume(url, data)
    assert seen[-1] == 204, seen
    crashed.assert_stored(url, data)


def start_two(stack: Stack, seed: int) -> list[tuple[str, str, bytes, int, RawPatch]]:
    """Two uploads with all but their last bytes sent: one of two parts and 3 MiB (the
    last part goes to S3 as an UploadPart), one of 3 MiB (one PutObject at the end).
    Returns (url, id, data, base, patch): ``base`` is what is committed before the end."""
    started = []
    for size, base in ((2 * P + 3 * MIB, 2 * P), (3 * MIB, 0)):
        data = payload(size, seed=seed + size)
        url = create(stack, size)
        upload_id = upload_id_of(url)
        patch = RawPatch(url, 0, size)
        patch.send(data[: base + MIB])
        poll(
            lambda u=upload_id, b=base, p=patch: (
                (committed_at_least(stack, u, b, 0) and read_all(p)) or None
            ),
            30,
            "parts, and the MiB after them read",
        )
        started.append((url, upload_id, data, base, patch))
    return started


def test_kill_while_the_last_bytes_go_to_s3(crashed: Uploads, s3_proxy: FaultProxy):
    """Killed while the last part, and the one PutObject of a small upload, are on their
    way to S3 (held by the proxy): both uploads stay receiving at their last committed
    part, and resume from there."""
    stack = crashed.stack
    started = start_two(stack, seed=103)
    s3_proxy.stall("up")
    for url, _, data, base, patch in started:
        crashed.track(url)
        held = s3_proxy.held_up
        patch.send(data[base + MIB :])
        s3_proxy.wait(lambda p, h=held: p.held_up >= h + MIB, 30, "for the bytes at the proxy")
    kill_web(stack, started[0][4])
    s3_proxy.heal()

    for url, upload_id, data, base, patch in started:
        patch.close()
        after = assert_consistent(stack, upload_id, data)
        assert after["state"] in ("created", "receiving")
        assert (after["offset"], after["committed"]) == (base, base)
        assert head_offset(url) == base
        tus_resume(url, data, chunk=2 * MIB)
        crashed.assert_stored(url, data)


def test_kill_after_s3_took_the_last_bytes_but_before_redis_heard(
    crashed: Uploads, s3_proxy: FaultProxy
):
    """S3 stored the last part (and, for a small upload, the whole object) but its answer
    is held by the proxy when the web process dies: Redis never heard of it, so it counts
    for nothing; the resume uploads it again (same part number, or the same key) and the
    object is exact."""
    stack = crashed.stack
    started = start_two(stack, seed=104)
    s3_proxy.stall("down")
    for url, upload_id, data, base, patch in started:
        crashed.track(url)
        patch.send(data[base + MIB :])
        key = crashed.key(upload_id)

        def s3_has_it(upload_id: str = upload_id, key: str = key, base: int = base) -> bool | None:
            if not base:  # the one PutObject
                with contextlib.suppress(stack.s3.exceptions.ClientError):
                    return stack.s3.head_object(Bucket=stack.bucket, Key=key)["ContentLength"] > 0
                return None
            rec = record(stack, upload_id)
            return 3 in s3_parts(stack, key, rec["upload_id"]) or None

        poll(s3_has_it, 30, "for S3 to hold the last bytes")
    kill_web(stack, started[0][4])
    s3_proxy.heal()

    for url, upload_id, data, base, patch in started:
        patch.close()
        after = assert_consistent(stack, upload_id, data)
        assert after["state"] in ("created", "receiving")
        assert (after["offset"], after["committed"]) == (base, base)
        assert head_offset(url) == base
        tus_resume(url, data)
        crashed.assert_stored(url, data)


# =========================================================================== 2. stalls


@pytest.fixture
def slow_client_stack(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    s3_server: SeaweedS3,
    tmp_path: Path,
) -> Iterator[Stack]:
    """The app with RINDLE_READ_TIMEOUT=2: a client silent for 2 s is let go."""
    with own_stack(redis_server, s3_server, tmp_path, RINDLE_READ_TIMEOUT=2) as stack:
        request.node.stash[_STACKS] = [stack]
        yield stack


@pytest.mark.parametrize("sent", [MIB + 5, P + MIB + 5], ids=["tail-only", "part+tail"])
def test_a_silent_client_is_let_go_after_the_read_timeout(slow_client_stack: Stack, sent: int):
    """A client that goes silent mid-body (connection open, nothing sent): after
    RINDLE_READ_TIMEOUT (2 s) the request keeps what it received (offset committed, the
    tail synced), answers, and frees the lease, so the resume is not refused."""
    stack = slow_client_stack
    data = payload(3 * P, seed=201)
    url = create(stack, len(data))
    upload_id = upload_id_of(url)
    with RawPatch(url, 0, len(data)) as patch:
        patch.send(data[:sent])
        went_silent = time.monotonic()
        poll(
            lambda: int(record(stack, upload_id)["offset"]) == sent or None,
            15,
            "for the offset of the silent client to be committed",
        )
        took = time.monotonic() - went_silent
        poll(
            lambda: not stack.redis.exists(f"{ukey(upload_id)}:writer") or None,
            5,
            "for the lease to be released",
        )
        # The answer reaches the client (its connection still reads): what was kept.
        status, headers, _ = patch.response()
    assert 2 <= took < 6, f"let go after {took:.1f}s"
    assert status == 204
    assert headers["upload-offset"] == str(sent)
    after = assert_consistent(stack, upload_id, data)
    assert after["offset"] == sent
    assert after["tail"] == sent % P
    # No 423, no waiting: the resume goes straight on.
    r = requests.patch(
        url, data=data[sent:], headers={**PATCH, "Upload-Offset": str(sent)}, timeout=60
    )
    assert r.status_code == 204, r.text
    uploads = Uploads(stack)
    uploads.assert_stored(url, data)


# =========================================================================== 8. two clients


def test_two_clients_on_one_upload_never_write_at_the_same_time(crashed: Uploads):
    """Two clients upload the same bytes to one upload URL at the same time, each the tus
    way (HEAD, PATCH from the offset, on 409/423/reset HEAD again). One writer at a time:
    a PATCH makes the current writer save and let go; the loser of a race meets a moved
    offset (409) or a held lease (423). Both finish; the object is exact; while they
    raced, every commit moved the offset forward from a state the check accepts."""
    stack = crashed.stack
    data = payload(5 * P + 77, seed=801)
    url = create(stack, len(data))
    upload_id = crashed.track(url)
    results: dict[str, Any] = {}
    go = threading.Barrier(2)

    def client(name: str, chunk: int, delay: float) -> None:
        go.wait()
        time.sleep(delay)
        try:
            # Slow bodies (about 25 MB/s), so that the two clients' PATCHes overlap.
            pace = (256 * 1024, 0.01)
            # Both start as if they had just created the upload: a PATCH at offset 0.
            results[name] = tus_resume(url, data, chunk=chunk, timeout=120, pace=pace, start=0)
        except BaseException as exc:
            results[name] = exc

    threads = [
        threading.Thread(target=client, args=("a", 8 * MIB, 0), daemon=True),
        threading.Thread(target=client, args=("b", 6 * MIB + 11, 0.3), daemon=True),
    ]
    for t in threads:
        t.start()
    offsets = []
    while any(t.is_alive() for t in threads):
        rec = record(stack, upload_id)
        offsets.append(int(rec["offset"]))
        if rec["state"] in ("created", "receiving"):
            assert_consistent(stack, upload_id, data, live=True)
        time.sleep(0.02)
    for t in threads:
        t.join(5)
    for name in ("a", "b"):
        assert not isinstance(results[name], BaseException), results[name]
    seen = results["a"] + results["b"]
    assert all(s in (204, 409, 423) or isinstance(s, str) for s in seen), seen
    assert any(s != 204 for s in seen), f"the clients never met: {results}"
    assert offsets == sorted(offsets), "the offset went backwards"
    crashed.assert_stored(url, data)


def test_kill_while_a_checksummed_body_is_shipped_part_by_part(
    crashed: Uploads, s3_proxy: FaultProxy
):
    """With Upload-Checksum the body is spooled whole to the tail, checked, then shipped
    part by part. Killed after part 1 was committed, with part 2's UploadPart lost at the
    proxy: Redis says part 1 and nothing buffered, the tail still holds the whole spooled
    body (cut back on resume); the client resends from the end of part 1, exact. (A small
    PATCH comes first: a first PATCH of 3 parts would make the part size 3 parts.)"""
    stack = crashed.stack
    data = payload(3 * P + 5, seed=105)
    url = create(stack, len(data))
    upload_id = crashed.track(url)
    send_up_to(url, data, FIRST_PATCH)
    body = data[FIRST_PATCH : 3 * P]
    digest = base64.b64encode(hashlib.sha1(body).digest()).decode()
    s3_proxy.blackhole_once(b"&partNumber=2 ")
    patch = RawPatch(url, FIRST_PATCH, len(body), checksum=f"sha1 {digest}")
    patch.send(body)
    s3_proxy.wait(lambda p: p.triggered.is_set(), 30, "for part 2 on its way to S3")
    poll(lambda: committed_at_least(stack, upload_id, P, 0), 30, "for part 1 to be committed")
    kill_web(stack, patch)
    s3_proxy.heal()

    after = assert_consistent(stack, upload_id, data)
    assert (after["offset"], after["committed"], after["parts"]) == (P, P, 1)
    assert after["tail"] > 0  # spooled bytes, never acknowledged as a tail: cut back
    assert head_offset(url) == P
    rest = data[P:]
    digest = base64.b64encode(hashlib.sha1(rest).digest()).decode()
    r = requests.patch(
        url,
        data=rest,
        headers={**PATCH, "Upload-Offset": str(P), "Upload-Checksum": f"sha1 {digest}"},
        timeout=60,
    )
    assert r.status_code == 204, r.text
    crashed.assert_stored(url, data)
