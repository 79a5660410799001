"""Graceful stop (issue #8, part 2), with real gunicorn, rq worker, Redis and SeaweedFS.

- SIGTERM to gunicorn while a PATCH is receiving: the PATCH stops reading, keeps every
  byte it received, commits and answers 204 with its offset, within a second or so. The
  upload then resumes and finishes exact: on a second node in shared tail mode, on the
  restarted node in local mode.
- SIGKILL instead: what was committed before the kill is kept, exactly; the rest is sent
  again.
- While the process stops, a POST or PATCH that still reaches it gets 503 shutting_down
  with Retry-After.
- SIGTERM to the rq worker (and its horse and scheduler, as on Heroku) during a
  completion job: the job fails with ShutDownImminentException, is retried, and the upload
  completes once.

Kernel buffers: before it sends the signal, each test waits until neither kernel holds
any of the bytes sent: the client's send queue and the server's receive queue of the
connection are both empty (/proc/net/tcp), and the server wrote all the full 1 MiB
chunks it read (committed parts in Redis, the rest in the tail file). The last, short
chunk (99 B) then waits in gunicorn's own buffer for more bytes, and a stopped read
returns it. So the bound used is 0 bytes: the offset must be exactly what was sent.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import requests
from rq.job import Job
from rq.registry import StartedJobRegistry

from devstack.services import (
    REPO_ROOT,
    ManagedProcess,
    SeaweedS3,
    free_port,
    http_ok,
    wait_until,
    web_command,
)
from rindle.jobqueue import RETRY_INTERVALS, completion_job_id
from tests.conftest import PART_SIZE, Stack, stack_env
from tests.e2e.conftest import MIB, TUS, Uploads, payload, poll, read_response, web_log
from tests.e2e.test_faults import (
    PATCH,
    RawPatch,
    create,
    read_all,
    record,
    target_of,
    tcp_entries,
)
from tests.e2e.test_faults_worker import children, horse_of
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.e2e

P = PART_SIZE
SENT = 23 * MIB + 99  # what the client sends before it falls silent
LENGTH = 30 * MIB + 7
IN_FLIGHT_BOUND = 0  # bytes that may still sit in kernel buffers at the signal (see above)
ANSWER_WITHIN = 5.0  # seconds from the signal to the client's answer
GRACEFUL_LOG = "graceful stop (SIGTERM)"


def server_process(master: int, sock: socket.socket) -> int:
    """The gunicorn worker (a child of ``master``) that holds the server's end of ``sock``."""
    _, theirs = tcp_entries(sock)
    assert theirs is not None
    link = f"socket:[{theirs[9]}]"
    for pid in children(master):
        if any(os.readlink(fd) == link for fd in Path(f"/proc/{pid}/fd").iterdir()):
            return pid
    raise AssertionError(f"no gunicorn worker holds {link}")


def all_received(stack: Stack, upload_id: str, patch: RawPatch) -> bool | None:
    """True once the server process has every byte sent: all full parts committed, and
    the kernels hold none of the bytes (the rest is in the writer's files, or in
    gunicorn's own buffer for the last, short read)."""
    full = patch.sent // P * P
    committed = int(record(stack, upload_id).get("committed") or 0)
    return (committed == full and read_all(patch)) or None


def send_and_fall_silent(stack: Stack, url: str, upload_id: str, data: bytes) -> RawPatch:
    """A PATCH of the whole upload whose client sends SENT bytes, then nothing more,
    keeping its connection open; returns once the server process holds all of them."""
    patch = RawPatch(url, 0, len(data), timeout=30)
    patch.send(data[:SENT])
    poll(lambda: all_received(stack, upload_id, patch), 60, f"for the server to get {SENT} B")
    return patch


def read_answer(patch: RawPatch) -> tuple[float, tuple[int, dict[str, str], bytes] | None]:
    """Wait for the answer to ``patch`` (ANSWER_WITHIN seconds at most). Returns the
    seconds it took and the response, or None if the connection ended without one."""
    started = time.monotonic()
    patch.sock.settimeout(ANSWER_WITHIN)
    try:
        response = patch.response()
    except TimeoutError:
        pytest.fail(f"neither an answer nor the end of the connection in {ANSWER_WITHIN}s")
    except (ConnectionError, OSError):
        response = None
    return time.monotonic() - started, response


def head_on(stack: Stack, url: str) -> int:
    """The offset that HEAD on ``stack`` reports for ``url`` (a dead writer's lease on
    this host is taken over at once, so no 423 here)."""
    r = requests.head(stack.files_url + url.rsplit("/", 1)[1], headers=TUS, timeout=30)
    assert r.status_code == 200, r.status_code
    return int(r.headers["Upload-Offset"])


def resume_on(stack: Stack, url: str, data: bytes, offset: int) -> None:
    r = requests.patch(
        stack.files_url + url.rsplit("/", 1)[1],
        data=data[offset:],
        headers={**PATCH, "Upload-Offset": str(offset)},
        timeout=120,
    )
    assert r.status_code == 204, r.text
    assert int(r.headers["Upload-Offset"]) == len(data)


def signal_web(stack: Stack, how: str) -> None:
    """SIGTERM to the gunicorn master (gunicorn's graceful stop: it passes the signal on
    to its workers); SIGTERM to every gunicorn process at once (Heroku's dyno cycling);
    or SIGKILL to all of them (a crash)."""
    assert stack.web is not None
    if how == "sigterm-master":
        os.kill(stack.web.pid, signal.SIGTERM)
    elif how == "sigterm-all":
        for pid in [stack.web.pid, *children(stack.web.pid)]:
            os.kill(pid, signal.SIGTERM)
    else:
        os.killpg(stack.web.pid, signal.SIGKILL)


def wait_exit(stack: Stack, timeout: float = 15) -> float:
    """Wait for the stack's gunicorn master to exit; returns when it had (monotonic)."""
    assert stack.web is not None and stack.web.popen is not None
    stack.web.popen.wait(timeout=timeout)
    return time.monotonic()


@pytest.mark.parametrize(
    ("how", "tail_store"),
    [
        ("sigterm-master", "s3"),
        ("sigterm-all", "s3"),
        ("sigterm-master", "local"),
        ("sigkill", "s3"),
        ("sigkill", "local"),
    ],
)
def test_a_stopped_node_keeps_what_its_patch_received(
    make_stack: Callable[..., Stack], how: str, tail_store: str
):
    """23 MiB + 99 B arrive and the client falls silent; then the node is stopped.

    SIGTERM: the client gets 204 with every received byte within ANSWER_WITHIN seconds,
    and gunicorn exits long before its graceful timeout. SIGKILL: the connection just
    ends, and exactly what was committed before the kill is kept. Either way the upload
    resumes, on the second node in shared tail mode or on the restarted node in local
    mode, and its object is exact."""
    a = make_stack(RINDLE_TAIL_STORE=tail_store)
    b = make_stack(RINDLE_TAIL_STORE=tail_store) if tail_store == "s3" else None
    data = payload(LENGTH, seed=801)
    url = create(a, len(data))
    upload_id = url.rsplit("/", 1)[1]
    patch = send_and_fall_silent(a, url, upload_id, data)
    committed_before = int(record(a, upload_id)["offset"])
    assert committed_before == SENT // P * P  # the full parts; the tail is not acknowledged

    signalled = time.monotonic()
    signal_web(a, how)
    took, response = read_answer(patch)
    patch.close()
    stopped = wait_exit(a) - signalled
    if how.startswith("sigterm"):
        assert response is not None, "the PATCH ended without an answer"
        status, headers, _ = response
        assert status == 204
        assert SENT - IN_FLIGHT_BOUND <= int(headers["upload-offset"]) <= SENT
        assert took < ANSWER_WITHIN
        assert stopped < 10, f"gunicorn took {stopped:.1f}s to stop"
        assert GRACEFUL_LOG in web_log(a)
        expected = int(headers["upload-offset"])
    else:
        assert response is None, f"a killed node answered {response[0]}"
        expected = committed_before

    node = b
    if node is None:  # local mode: the buffered bytes are on a's disk
        a.restart_web()
        node = a
    assert head_on(node, url) == expected
    rec = record(a, upload_id)
    assert int(rec["offset"]) == expected
    assert rec["state"] == "receiving"
    resume_on(node, url, data, expected)
    uploads = Uploads(node)
    uploads.assert_stored(node.files_url + upload_id, data)
    uploads.cleanup()


def keep_alive_connection(stack: Stack) -> socket.socket:
    """A connection that one OPTIONS went through and that gunicorn keeps open."""
    sock = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
    sock.sendall(b"OPTIONS /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n\r\n")
    status, headers, _ = read_response(sock)
    assert status == 204
    assert headers.get("connection", "keep-alive").lower() == "keep-alive"
    return sock


def test_a_stopping_node_refuses_new_uploads_with_503(make_stack: Callable[..., Stack]):
    """After SIGTERM gunicorn accepts no new connection, but it serves the requests that
    arrive on the connections it keeps alive for a moment (2 s). A POST or PATCH there
    gets 503 shutting_down with Retry-After, before any byte of its body is read."""
    stack = make_stack()
    url = create(stack, 1000)
    path = "/files/" + url.rsplit("/", 1)[1]
    post_conn, patch_conn = keep_alive_connection(stack), keep_alive_connection(stack)
    try:
        assert stack.web is not None
        workers = {server_process(stack.web.pid, c) for c in (post_conn, patch_conn)}
        os.kill(stack.web.pid, signal.SIGTERM)
        # A worker has stopped its writers, and refuses uploads, once it has logged so.
        poll(
            lambda: (
                all(f"{GRACEFUL_LOG} of process {pid}:" in web_log(stack) for pid in workers)
                or None
            ),
            5,
            "for the workers to stop",
        )
        requests_ = {
            post_conn: "POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
            "Upload-Length: 1000\r\nContent-Length: 0\r\n\r\n",
            patch_conn: f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
            "Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
            "Content-Length: 10\r\n\r\n0123456789",
        }
        for sock, raw in requests_.items():
            sock.sendall(raw.encode())
            status, headers, body = read_response(sock)
            assert status == 503, body
            assert headers["retry-after"] == "5"
            assert headers["connection"].lower() == "close"
            assert b'"shutting_down"' in body
            # Close it, as a client does after "Connection: close": gunicorn's event loop
            # waits (up to 2 s) for the client to close before it serves anything else.
            sock.close()
    finally:
        post_conn.close()
        patch_conn.close()
    wait_exit(stack)
    assert int(record(stack, url.rsplit("/", 1)[1])["offset"]) == 0


@pytest.mark.parametrize("preload", [False, True], ids=["imported-by-worker", "preload"])
def test_the_graceful_stop_is_installed_with_and_without_preload(
    rindle_env: dict[str, str], tmp_path: Path, preload: bool
):
    """Without --preload ``init_app`` installs the SIGTERM handler in each worker; with
    it, gunicorn sets the worker's handlers after the app was imported, and the
    post_worker_init hook of gunicorn.conf.py (read from the repo root) installs it."""
    port = free_port()
    argv = web_command(port)
    if preload:
        argv.insert(-1, "--preload")
    log_path = tmp_path / "gunicorn.log"
    web = ManagedProcess(
        "gunicorn", argv, env=stack_env(rindle_env), cwd=REPO_ROOT, log_path=log_path
    )
    web.start()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(url + "/healthz"), timeout=60, procs=[web])
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"OPTIONS /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n\r\n")
        assert read_response(sock)[0] == 204
        worker = server_process(web.pid, sock)
        os.kill(web.pid, signal.SIGTERM)
        line = f"{GRACEFUL_LOG} of process {worker}:"
        poll(lambda: line in log_path.read_text(errors="replace") or None, 5, "for the log")
        sock.close()
    finally:
        web.stop(timeout=10)


# --------------------------------------------------------------------------- rq worker


@pytest.fixture
def s3_proxy(s3_server: SeaweedS3) -> Iterator[FaultProxy]:
    with FaultProxy(target_of(s3_server.endpoint), name="s3") as proxy:
        yield proxy


def test_a_sigtermed_worker_has_its_completion_job_retried_once(
    make_stack: Callable[..., Stack], s3_server: SeaweedS3, s3_proxy: FaultProxy
):
    """The completion job's CompleteMultipartUpload is held at an S3 proxy; then the rq
    worker, its horse and its scheduler all get SIGTERM (Heroku's dyno cycling). The
    horse ignores it; 6 s later the job raises ShutDownImminentException, fails, and
    is scheduled for a retry; the worker exits. A new worker runs the retry: the upload
    completes, exact, once."""
    stack = make_stack(AWS_ENDPOINT_URL_S3=s3_proxy.rewrite(s3_server.endpoint))
    assert stack.worker is not None
    stack.worker.stop(timeout=10)  # no worker while the upload is received
    data = payload(2 * P + 7, seed=802)
    url = create(stack, len(data))
    upload_id = url.rsplit("/", 1)[1]
    job_id = completion_job_id(upload_id)
    conn = redis.Redis.from_url(stack.env["REDIS_URL"])
    try:
        r = requests.patch(url, data=data, headers={**PATCH, "Upload-Offset": "0"}, timeout=60)
        assert r.status_code == 204
        s3_proxy.stall("up")
        stack.restart_worker()
        s3_proxy.wait(lambda p: p.held_up > 0, 30, "for the CompleteMultipartUpload")
        registry = StartedJobRegistry("rindle", connection=conn)
        assert job_id in registry.get_job_ids(cleanup=False)
        horse = horse_of(stack)

        worker = stack.worker
        assert worker is not None and worker.popen is not None and worker.log_path is not None
        signalled = time.monotonic()
        for pid in [worker.pid, *children(worker.pid)]:
            os.kill(pid, signal.SIGTERM)
        worker.popen.wait(timeout=25)
        stopped = time.monotonic() - signalled
        assert 5 < stopped < 15, f"the worker stopped after {stopped:.1f}s"
        with pytest.raises(ProcessLookupError):
            os.kill(horse, 0)
        job = Job.fetch(job_id, connection=conn)
        assert job.get_status(refresh=True) == "scheduled"
        assert job.retries_left == len(RETRY_INTERVALS) - 1
        assert record(stack, upload_id)["state"] == "assembling"
        assert "ShutDownImminentException" in worker.log_path.read_text()

        s3_proxy.heal()
        stack.restart_worker()
        uploads = Uploads(stack)
        # The retry waits in RQ's scheduler. If the old scheduler died holding RQ's
        # scheduler lock (61 s TTL), the new worker takes it over at its next try, up to
        # 120 s after it started: RQ's timing, not rindle's.
        uploads.wait_completed(upload_id, timeout=200)
        poll(lambda: job.get_status(refresh=True) == "finished" or None, 30, "job finished")
        assert job.return_value() == "completed"
        assert job.retries_left == len(RETRY_INTERVALS) - 1, "retried once"
        uploads.assert_stored(url, data)
        log = worker.log_path.read_text()  # the restarted worker appends to the same file
        assert log.count(f"upload {upload_id}: completed") == 1
        uploads.cleanup()
    finally:
        conn.close()
