"""tus-js-client (Node.js) with the tus extensions switched on, against the real stack:
parallel uploads (concatenation), deferred length, data during creation, the PATCH method
override, a locked upload (423) and a checksum mismatch (460).

tus-js-client runs from tests/e2e/js/extensions.mjs, one process per upload; every request
it makes is reported as a JSON line on its stdout. The stack has RINDLE_RELEASE_WAIT=1, so a
held upload answers 423 after a second. Without node/npm these tests skip, or fail when
RINDLE_REQUIRE_SERVICES=1 (tests/e2e/conftest.py's ``node`` installs node_modules).
"""

from __future__ import annotations

import hashlib
import json
import math
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PART_SIZE, Stack
from tests.e2e.conftest import JS_DIR, MIB, payload, upload_id_of, upload_key
from tests.e2e.test_faults import own_stack
from tests.e2e.test_tuspy_extensions import TrackedUploads

pytestmark = pytest.mark.e2e

P = PART_SIZE
NODE_TIMEOUT = 60.0  # seconds for one run of extensions.mjs (the files here take ~1 s)
SIZE = 12 * MIB + 12345  # three parts, the last one short
Event = dict[str, Any]


@pytest.fixture(scope="module")
def module_stack(redis_server, s3_server, tmp_path_factory) -> Iterator[Stack]:
    """This module's stack: the defaults, but a held upload answers 423 after 1 s."""
    root = tmp_path_factory.mktemp("tus-js-ext")
    with own_stack(redis_server, s3_server, root, node="e2e-node", RINDLE_RELEASE_WAIT=1) as stack:
        yield stack


@pytest.fixture
def uploads(module_stack: Stack) -> Iterator[TrackedUploads]:
    helper = TrackedUploads(module_stack)
    yield helper
    helper.cleanup()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Path]:
    """``files(size)``: a file of ``size`` incompressible bytes (made once per size)."""
    root = tmp_path_factory.mktemp("tus-js-ext-files")

    def make(size: int) -> Path:
        path = root / f"{size}.bin"
        if not path.exists():
            path.write_bytes(payload(size, seed=size))
        return path

    return make


class NodeRun:
    """One run of extensions.mjs: its events as they come, and a line to its stdin."""

    def __init__(self, node: str, stack: Stack, file: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [
                node,
                str(JS_DIR / "extensions.mjs"),
                "--endpoint",
                stack.files_url,
                "--file",
                str(file),
                *args,
            ],
            cwd=JS_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.deadline = time.monotonic() + NODE_TIMEOUT
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        self.events: list[Event] = []
        threading.Thread(
            target=self._pump, args=(self.proc.stdout, self.lines), daemon=True
        ).start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    @staticmethod
    def _pump(stream: Any, lines: queue.Queue[str | None]) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr.extend(self.proc.stderr)

    def next_event(self) -> Event | None:
        """The next event (None once stdout is closed); fails the test at the deadline."""
        remaining = self.deadline - time.monotonic()
        try:
            line = self.lines.get(timeout=max(remaining, 0.01))
        except queue.Empty:
            self.proc.kill()
            pytest.fail(
                f"extensions.mjs did not finish in {NODE_TIMEOUT:.0f}s; events so far: "
                f"{self.events}\nstderr: {''.join(self.stderr)[-4000:]}"
            )
        if line is None:
            return None
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"extensions.mjs printed a line that is not JSON: {line!r}")
        self.events.append(event)
        return event

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, on_event: Callable[[Event], None] | None = None) -> Event:
        """Read events until the end (``on_event`` sees each); the final "done" event."""
        try:
            while (event := self.next_event()) is not None:
                if on_event is not None:
                    on_event(event)
            self.proc.wait(timeout=max(self.deadline - time.monotonic(), 1))
        finally:
            if self.proc.poll() is None:  # a failed check: do not leave node waiting
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        done = [e for e in self.events if e["event"] == "done"]
        assert done, (
            f"no result from extensions.mjs (exit {self.proc.returncode}); events: "
            f"{self.events}\nstderr: {''.join(self.stderr)[-4000:]}"
        )
        return done[-1]

    def requests(self) -> list[Event]:
        return [e for e in self.events if e["event"] == "request"]


def run_ok(node: str, stack: Stack, file: Path, *args: str) -> NodeRun:
    run = NodeRun(node, stack, file, *args)
    done = run.finish()
    assert done["ok"], f"upload failed: {done}\nevents: {run.events}"
    assert run.proc.returncode == 0
    return run


def is_patch(request: Event) -> bool:
    return request["method"] == "PATCH" or request["override"] == "PATCH"


def assert_patches_contiguous(requests: list[Event], start: int, end: int) -> None:
    """The successful PATCHes move the offset from ``start`` to ``end`` without a gap."""
    position = start
    for request in requests:
        if is_patch(request) and request["status"] == 204:
            assert request["offset"] == position, requests
            assert request["uploadOffset"] > position, requests
            position = request["uploadOffset"]
    assert position == end, requests


# =========================================================================== concatenation


def test_parallel_uploads_are_concatenated(
    node: str, module_stack: Stack, uploads: TrackedUploads, files
) -> None:
    """parallelUploads: 3 partial uploads, then a final one the worker assembles in S3.
    Every partial is at least 5 MiB here: each becomes one part of the final object
    (UploadPartCopy). (Small partials, re-streamed: test_tuspy_extensions.py.)"""
    size = 20 * MIB + 7
    source = files(size)
    metadata = {"filename": "parallel.bin", "filetype": "application/x-rindle-test"}
    run = run_ok(node, module_stack, source, "--parallel", "3", "--metadata", json.dumps(metadata))
    final_url = run.events[-1]["uploadUrl"]
    final_id = uploads.track(final_url)
    requests = run.requests()

    partial_posts = [r for r in requests if r["method"] == "POST" and r["concat"] == "partial"]
    assert len(partial_posts) == 3, requests
    assert all(r["status"] == 201 and r["location"] for r in partial_posts), partial_posts
    # tus-js-client splits the file at multiples of floor(size / 3); the final POST lists
    # the partial uploads in the order of their slices.
    step = size // 3
    bounds = [(0, step), (step, 2 * step), (2 * step, size)]
    assert sorted(int(r["uploadLength"]) for r in partial_posts) == sorted(
        end - start for start, end in bounds
    )
    final_posts = [r for r in requests if (r["concat"] or "").startswith("final;")]
    assert len(final_posts) == 1, requests
    final_post = final_posts[0]
    assert final_post["status"] == 201
    partial_urls = final_post["concat"].split(";", 1)[1].split()
    assert sorted(partial_urls) == sorted(r["location"] for r in partial_posts)
    for url in partial_urls:
        uploads.track(url)

    data = source.read_bytes()
    # Each partial upload holds its slice, like any upload (parts of 5 MiB, no tail left).
    for url, (start, end) in zip(partial_urls, bounds, strict=True):
        uploads.assert_stored(url, data[start:end])
        assert uploads.head(url).headers["Upload-Concat"] == "partial"

    # The final upload: assembled by the worker, exactly the file.
    uploads.wait_completed(final_id)
    head = uploads.head(final_url)
    assert head.status_code == 200
    assert head.headers["Upload-Length"] == str(size)
    assert head.headers["Upload-Offset"] == str(size)
    assert head.headers["Upload-Concat"] == f"final;{' '.join(partial_urls)}"
    key = uploads.key(final_id)
    sha, stored = uploads.sha256(key)
    assert stored == size
    assert sha == hashlib.sha256(data).hexdigest(), "the final object differs from the file"
    assert uploads.part_sizes(key) == [end - start for start, end in bounds]  # copied
    obj = module_stack.s3.head_object(Bucket=module_stack.bucket, Key=key)
    assert obj["ContentType"] == "application/x-rindle-test"
    assert 'filename="parallel.bin"' in obj["ContentDisposition"]
    open_uploads = module_stack.s3.list_multipart_uploads(Bucket=module_stack.bucket, Prefix=key)
    assert not open_uploads.get("Uploads"), "a multipart upload was left open"


# =========================================================================== deferred length


@pytest.mark.parametrize(
    ("source", "chunk", "size"),
    [
        ("stream", 3 * MIB + 7, SIZE),
        ("buffer", "Infinity", SIZE),
        ("buffer", 5 * MIB, 10 * MIB),
    ],
    ids=["stream-3MiB+7-chunks", "buffer-one-patch", "buffer-at-part-end"],
)
def test_deferred_length(
    node: str, module_stack: Stack, uploads: TrackedUploads, files, source: str, chunk, size: int
) -> None:
    """uploadLengthDeferred: the POST says Upload-Defer-Length: 1; the PATCH that reaches
    the end of the source declares Upload-Length. A stream source has no size upfront."""
    path = files(size)
    run = run_ok(
        node,
        module_stack,
        path,
        "--defer-length",
        "--source",
        source,
        "--chunk-size",
        str(chunk),
    )
    url = run.events[-1]["uploadUrl"]
    uploads.track(url)
    requests = run.requests()

    post = requests[0]
    assert post["method"] == "POST" and post["status"] == 201, requests
    assert post["deferLength"] == "1" and post["uploadLength"] is None
    patches = [r for r in requests if is_patch(r)]
    assert all(p["status"] == 204 for p in patches), patches
    declaring = [p for p in patches if p["uploadLength"] is not None]
    assert declaring == [patches[-1]], patches  # only the last one, once the source ended
    assert declaring[0]["uploadLength"] == str(size)
    assert_patches_contiguous(requests, 0, size)
    uploads.assert_stored(url, path)


# =========================================================================== creation-with-upload


@pytest.mark.parametrize("chunk", ["Infinity", str(3 * MIB)], ids=["whole-file", "3MiB-chunks"])
def test_upload_data_during_creation(
    node: str, module_stack: Stack, uploads: TrackedUploads, files, chunk: str
) -> None:
    """uploadDataDuringCreation: the first chunk rides on the POST; the 201 says how much
    the server kept (Upload-Offset) and the PATCHes go on from there."""
    path = files(SIZE)
    run = run_ok(node, module_stack, path, "--data-during-creation", "--chunk-size", chunk)
    url = run.events[-1]["uploadUrl"]
    uploads.track(url)
    requests = run.requests()

    post = requests[0]
    assert post["method"] == "POST" and post["status"] == 201, requests
    first = SIZE if chunk == "Infinity" else int(chunk)
    assert post["uploadOffset"] == first, post  # the server kept the POST's bytes
    patches = [r for r in requests if is_patch(r)]
    if chunk == "Infinity":
        assert patches == [], requests  # nothing left to PATCH
    else:
        assert len(patches) == math.ceil((SIZE - first) / first), patches
        assert_patches_contiguous(requests, first, SIZE)
    uploads.assert_stored(url, path)


# =========================================================================== method override


def test_override_patch_method(
    node: str, module_stack: Stack, uploads: TrackedUploads, files
) -> None:
    """overridePatchMethod: every PATCH goes out as a POST with X-HTTP-Method-Override."""
    path = files(SIZE)
    run = run_ok(node, module_stack, path, "--override-patch", "--chunk-size", str(5 * MIB))
    url = run.events[-1]["uploadUrl"]
    uploads.track(url)
    requests = run.requests()

    assert not [r for r in requests if r["method"] == "PATCH"], requests
    overridden = [r for r in requests if r["override"] == "PATCH"]
    assert [r["method"] for r in overridden] == ["POST"] * 3, requests
    assert [r["status"] for r in overridden] == [204] * 3, requests
    assert_patches_contiguous(requests, 0, SIZE)
    uploads.assert_stored(url, path)


# =========================================================================== 423 Locked


def test_locked_upload_is_retried_until_released(
    node: str, module_stack: Stack, uploads: TrackedUploads, files
) -> None:
    """Another request holds the upload (its writer lease is in Redis) and does not let go:
    the client's PATCH gets 423 after RINDLE_RELEASE_WAIT (1 s), tus-js-client retries
    (HEAD, 423 again), and once the lease is gone it resumes where it was and finishes."""
    path = files(SIZE)
    run = NodeRun(
        node,
        module_stack,
        path,
        "--chunk-size",
        str(5 * MIB),
        "--hold-before-patch",
        "1",
        "--retry-delays",
        "[100, 200, 400, 800, 1000, 1000, 1000, 1000]",
    )
    lease: dict[str, str] = {}
    seen_423: list[str] = []

    def on_event(event: Event) -> None:
        if event["event"] == "hold":  # the second PATCH is about to go: someone takes it
            upload_id = upload_id_of(event["url"])
            lease["key"] = f"{upload_key(upload_id)}:writer"
            # A TTL as a safety net only: the test deletes it once the client saw 423s.
            assert module_stack.redis.set(lease["key"], "another-request", nx=True, px=30_000)
            run.send("go")
        elif event["event"] == "request" and event["status"] == 423:
            seen_423.append(event["method"])
            if seen_423 == ["PATCH", "HEAD"]:  # refused as a PATCH and as a resume: let go
                module_stack.redis.delete(lease["key"])

    done = run.finish(on_event)
    assert done["ok"], f"upload failed: {done}\nevents: {run.events}"
    url = done["uploadUrl"]
    uploads.track(url)
    requests = run.requests()

    assert seen_423 == ["PATCH", "HEAD"], requests
    refused = next(i for i, r in enumerate(requests) if r["status"] == 423)
    assert requests[refused]["offset"] == 5 * MIB
    # After the lease went: a HEAD finds the offset unchanged, the PATCH goes on from there.
    after = requests[refused + 2 :]
    assert after[0]["method"] == "HEAD" and after[0]["status"] == 200, requests
    assert after[0]["uploadOffset"] == 5 * MIB
    assert_patches_contiguous(requests, 0, SIZE)
    assert not [e for e in run.events if e["event"] == "error"]  # retried, never reported
    uploads.assert_stored(url, path)


# =========================================================================== 460 Checksum Mismatch


ALGORITHMS = "sha1,sha256,sha512,md5,crc32"


@pytest.mark.parametrize("retry_on_460", [False, True], ids=["default", "onShouldRetry"])
def test_checksum_mismatch(
    node: str, module_stack: Stack, uploads: TrackedUploads, files, retry_on_460: bool
) -> None:
    """Every PATCH carries a correct Upload-Checksum (added in onBeforeRequest, rotating
    through the five algorithms) except the second, whose checksum is wrong: 460, and the
    server keeps nothing of that PATCH (it crosses a part boundary: 3 MiB+7 .. 6 MiB+14).

    tus-js-client does not retry a 460 by default (defaultOnShouldRetry retries network
    errors, 5xx, 409 and 423 only): onError is called, and start() resumes the upload. With
    an onShouldRetry that accepts 460, it retries by itself and onError is never called.
    """
    path = files(SIZE)
    chunk = 3 * MIB + 7
    args = ["--chunk-size", str(chunk), "--checksum", ALGORITHMS, "--bad-checksum-at", "1"]
    args.append("--retry-on-460" if retry_on_460 else "--restart-after-error")
    run = run_ok(node, module_stack, path, *args)
    url = run.events[-1]["uploadUrl"]
    uploads.track(url)
    requests = run.requests()

    errors = [e for e in run.events if e["event"] == "error"]
    if retry_on_460:
        assert errors == []
    else:
        assert [e["status"] for e in errors] == [460], errors
    patches = [r for r in requests if is_patch(r)]
    assert all(p["checksum"] for p in patches), patches
    bad = [p for p in patches if p.get("badChecksum")]
    assert len(bad) == 1 and bad[0]["status"] == 460 and bad[0]["offset"] == chunk, patches
    # The resume: HEAD says the offset did not move, and the same bytes go again.
    refused = requests.index(bad[0])
    head, retried = requests[refused + 1], requests[refused + 2]
    assert head["method"] == "HEAD" and head["uploadOffset"] == chunk, requests
    assert is_patch(retried) and retried["offset"] == chunk and retried["status"] == 204
    assert [p["status"] for p in patches] == [204, 460] + [204] * (len(patches) - 2)
    assert_patches_contiguous(requests, 0, SIZE)
    uploads.assert_stored(url, path)


def test_checksum_mismatch_fails_the_upload_without_a_retry(
    node: str, module_stack: Stack, uploads: TrackedUploads, files
) -> None:
    """No onShouldRetry, no second start(): the upload fails with the 460; the server
    still holds exactly the first chunk."""
    path = files(SIZE)
    chunk = 3 * MIB + 7
    run = NodeRun(
        node,
        module_stack,
        path,
        "--chunk-size",
        str(chunk),
        "--checksum",
        "sha256",
        "--bad-checksum-at",
        "1",
    )
    done = run.finish()
    assert not done["ok"] and done["status"] == 460, done
    assert run.proc.returncode == 1
    url = next(r["location"] for r in run.requests() if r["method"] == "POST")
    upload_id = uploads.track(url)
    assert uploads.offset(url) == chunk
    record = module_stack.redis.hgetall(upload_key(upload_id))
    assert record["state"] == "receiving"
    assert int(record["offset"]) == chunk and int(record["committed"]) == 0
    assert uploads.head(url).headers["Upload-Length"] == str(SIZE)
