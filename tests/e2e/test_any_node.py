"""Any node resumes any upload (issue #8): three web nodes in shared tail mode
(RINDLE_TAIL_STORE=s3), each a real gunicorn + rq worker with its own tmp dir and node id,
sharing Redis and the bucket, behind a router that sends every new connection to a random
node (tests/router.py, as Heroku's router does).

- tus-js-client (Node.js) and tuspy upload 64 MiB in 5 MiB chunks, 20 at once, each
  interrupted twice: a connection cut mid-PATCH by the router (the client retries), and
  the client dropped and a new one resumed from the upload's URL. Every object is exact,
  no node logs ``tus_tail_missing``, every 423 is retried.
- A resume on another node at every kind of offset, a stale local tail that must not be
  used, a shared tail lost from S3 (loud ``tus_tail_missing``, nothing changed), and a
  rolling restart (each node SIGTERMed and started again while 20 uploads run).
- Local mode (RINDLE_TAIL_STORE unset) still refuses a misrouted resume and takes a first
  PATCH anywhere; tests/e2e/test_faults_nodes.py has the detailed local-mode checks (what
  a refused resume leaves unchanged, a stale tail on the wrong node, HEAD on any node).

The in-process tests of tests/integration/test_shared_tail.py cover the same rules for
two apps in one process; here they go through real processes, sockets and clients.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import random
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import tusclient.request
import tusclient.uploader.baseuploader
from tusclient import client as tus
from tusclient.exceptions import TusCommunicationError, TusUploadFailed
from tusclient.uploader import Uploader

from rindle import tail_path
from rindle.storage.shared_tail import TAILS_DIR
from tests.conftest import PART_SIZE, Stack
from tests.e2e.conftest import (
    FIRST_PATCH,
    JS_DIR,
    MIB,
    Uploads,
    payload,
    poll,
    send_up_to,
    upload_id_of,
    web_log,
)
from tests.e2e.test_faults import PATCH, create, record, redis_parts, s3_parts, ukey
from tests.router import Router

pytestmark = pytest.mark.e2e

P = PART_SIZE
SEED = 8  # the router's and the interruptions' choices (issue #8)
SIZE = 64 * MIB
CHUNK = 5 * MIB
PER_CLIENT = 10  # uploads per client library: 20 at once
CLIENT_TIMEOUT = 300.0  # seconds for one whole upload, interruptions included
FETCHED = "buffered bytes fetched from the shared tail of node"


# =========================================================================== helpers


@pytest.fixture
def nodes(make_stack: Callable[..., Stack]) -> list[Stack]:
    """Three web nodes in shared tail mode: node0, node1, node2 (own tmp dirs)."""
    return [make_stack(RINDLE_TAIL_STORE="s3") for _ in range(3)]


@pytest.fixture
def router(nodes: list[Stack]) -> Iterator[Router]:
    """A random router in front of the three nodes (seeded)."""
    with Router([node.port for node in nodes], seed=SEED) as r:
        yield r


def assert_no_tail_missing(nodes: list[Stack]) -> None:
    """No node refused a resume for want of the buffered bytes (its ERROR line)."""
    for stack in nodes:
        lines = [line for line in web_log(stack).splitlines() if "tus_tail_missing" in line]
        assert not lines, f"{stack.env['RINDLE_NODE_ID']} logged: {lines[:5]}"


def fetches(nodes: list[Stack], upload_id: str = "") -> int:
    """How many times a node took an upload's buffered bytes from the shared copy (the
    resume reached a node other than the one that buffered them)."""
    needle = f"upload {upload_id}: " if upload_id else ""
    return sum(
        1
        for stack in nodes
        for line in web_log(stack).splitlines()
        if FETCHED in line and needle in line
    )


def shared_tails(stack: Stack, upload_id: str) -> list[str]:
    """The keys of an upload's shared tails in S3."""
    listed = stack.s3.list_objects_v2(
        Bucket=stack.bucket, Prefix=f"{stack.prefix}{TAILS_DIR}{upload_id}/"
    )
    return [item["Key"] for item in listed.get("Contents", [])]


def on(stack: Stack, url: str) -> str:
    """The same upload's URL on one chosen node."""
    return stack.files_url + upload_id_of(url)


def patch(url: str, data: bytes, offset: int) -> requests.Response:
    """One raw PATCH of ``data`` at ``offset`` (the test picks the node by the URL)."""
    return requests.patch(
        url, data=data, headers={**PATCH, "Upload-Offset": str(offset)}, timeout=60
    )


def assert_exact(stack: Stack, url: str, sha256: str, size: int) -> None:
    """The upload completes; its object holds exactly the source's bytes in parts of the
    part size; no multipart upload is left open and no shared tail is left in S3.
    (Local tails on other nodes may stay behind: a node that buffered bytes earlier
    keeps its stale file until its tail reaper runs.)"""
    uploads = Uploads(stack)
    upload_id = upload_id_of(url)
    uploads.wait_completed(upload_id)
    key = uploads.key(upload_id)
    got_sha, got_size = uploads.sha256(key)
    assert (got_size, got_sha) == (size, sha256), f"s3://{stack.bucket}/{key} differs"
    sizes = uploads.part_sizes(key) or [size]
    assert all(s == P for s in sizes[:-1]), sizes
    open_uploads = stack.s3.list_multipart_uploads(Bucket=stack.bucket, Prefix=key)
    assert not open_uploads.get("Uploads"), "a multipart upload was left open"
    assert shared_tails(stack, upload_id) == [], "completion left shared tails behind"


def tuspy_finish(url: str, data: bytes, chunk: int = 3 * MIB) -> None:
    """tuspy, given an upload's URL on one node: HEAD for the offset, then the rest."""
    uploader = tus.TusClient(url.rsplit("/", 1)[0] + "/").uploader(
        file_stream=io.BytesIO(data), url=url, chunk_size=chunk
    )
    uploader.upload()
    assert uploader.offset == len(data)


# =========================================================================== the clients


@dataclass
class Run:
    """One upload by one client library, with what it met on the way."""

    client: str  # "tus-js-client" or "tuspy"
    index: int
    path: Path
    sha256: str
    url: str = ""
    statuses: Counter[str] = field(default_factory=Counter)  # "PATCH 204", "HEAD 423"...
    retried: Counter[str] = field(default_factory=Counter)  # tus-js-client: what it retried
    cuts: list[threading.Event] = field(default_factory=list)  # router cuts, armed
    aborts: int = 0  # the client object dropped, a new one resumed from the URL
    unplanned: list[str] = field(default_factory=list)  # tuspy: uploaders made again
    finished: threading.Event = field(default_factory=threading.Event)
    ok: bool = False
    error: str = ""

    @property
    def name(self) -> str:
        return f"{self.client}#{self.index}"


def cut_pattern(url: str) -> bytes:
    """The request line of a PATCH of this upload, as it goes through the router."""
    return f"PATCH {urlsplit(url).path} ".encode()


def make_sources(root: Path, count: int, size: int, seed: int) -> list[tuple[Path, str]]:
    """``count`` different files of ``size`` bytes, with their sha256."""
    sources = []
    for n in range(count):
        data = payload(size, seed=seed + n)
        path = root / f"source-{n}.bin"
        path.write_bytes(data)
        sources.append((path, hashlib.sha256(data).hexdigest()))
    return sources


def run_tus_js(
    node: str, router: Router, run: Run, storage: Path, cut_after: int | None, abort_at: int | None
) -> None:
    """tests/e2e/js/resumable.mjs through the router. Once the upload exists, the router
    is told to cut one of its PATCHes ``cut_after`` bytes in (tus-js-client retries);
    at ``abort_at`` bytes the client aborts and a new Upload resumes from the URL storage."""
    argv = [
        node,
        str(JS_DIR / "resumable.mjs"),
        "--endpoint",
        router.files_url,
        "--file",
        str(run.path),
        "--url-storage",
        str(storage),
        "--chunk-size",
        str(CHUNK),
    ]
    if abort_at is not None:
        argv += ["--abort-at", str(abort_at)]
    stderr = run.path.with_suffix(".stderr")
    with open(stderr, "w") as errors:
        proc = subprocess.Popen(argv, cwd=JS_DIR, stdout=subprocess.PIPE, stderr=errors, text=True)
    timer = threading.Timer(CLIENT_TIMEOUT, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            event: dict[str, Any] = json.loads(line)
            kind = event["event"]
            if kind == "created":
                run.url = event["url"]
                if cut_after is not None:
                    run.cuts.append(router.cut_once(cut_pattern(run.url), cut_after))
            elif kind == "request":
                run.statuses[f"{event['method']} {event['status']}"] += 1
            elif kind == "retry" and event["retry"]:
                run.retried[str(event["status"] or "no answer")] += 1
            elif kind == "aborted":
                run.aborts += 1
            elif kind == "done":
                run.ok = bool(event["ok"])
                run.error = event.get("error") or ""
        proc.wait()
        if proc.returncode != 0 and not run.error:
            run.error = f"exit {proc.returncode}: {stderr.read_text()[-2000:]}"
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()
        run.finished.set()


class TuspySpy:
    """Counts tuspy's PATCH and HEAD answers per upload URL (tuspy has no hooks; it calls
    ``requests.patch`` and ``requests.head`` of the shared requests module)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.statuses: dict[str, Counter[str]] = {}
        self.lock = threading.Lock()
        real_patch, real_head = requests.patch, requests.head

        def spy(method: str, real: Callable[..., requests.Response]) -> Callable[..., Any]:
            def call(url: str, *args: Any, **kwargs: Any) -> requests.Response:
                response = real(url, *args, **kwargs)
                with self.lock:
                    self.statuses.setdefault(url, Counter())[
                        f"{method} {response.status_code}"
                    ] += 1
                return response

            return call

        monkeypatch.setattr(tusclient.request.requests, "patch", spy("PATCH", real_patch))
        monkeypatch.setattr(
            tusclient.uploader.baseuploader.requests, "head", spy("HEAD", real_head)
        )

    def of(self, url: str) -> Counter[str]:
        with self.lock:
            return Counter(self.statuses.get(url, Counter()))


def new_tuspy(files_url: str, run: Run, deadline: float) -> Uploader:
    """A tuspy uploader for the run's file: a new upload, or (once it has a URL) the same
    upload resumed from its URL, as from tuspy's URL storage. Creating one asks HEAD for
    the offset; a 423 there (another request still holds the upload) is waited out."""
    while True:
        try:
            uploader = tus.TusClient(files_url).uploader(
                file_path=str(run.path),
                url=run.url or None,
                chunk_size=CHUNK,
                retries=8,
                retry_delay=0.5,  # type: ignore[arg-type]  # tuspy sleeps a float fine
            )
            if not run.url:
                uploader.set_url(uploader.create_url())
                run.url = uploader.url
            return uploader
        except (TusCommunicationError, requests.RequestException) as exc:
            if time.monotonic() > deadline:
                raise
            run.unplanned.append(f"new uploader: {exc}")
            time.sleep(0.5)


def run_tuspy(
    router: Router, run: Run, cut_after: int | None, abort_after: int | None, abort_at: int
) -> None:
    """tuspy through the router, one chunk at a time. Once the upload exists the router
    cuts one of its PATCHes ``cut_after`` bytes in (tuspy's own retry resumes it). Past
    ``abort_at`` bytes, a second cut ``abort_after`` bytes into a PATCH meets an uploader
    without retries: it fails, and a new uploader resumes from the URL."""
    deadline = time.monotonic() + CLIENT_TIMEOUT
    try:
        uploader = new_tuspy(router.files_url, run, deadline)
        if cut_after is not None:
            run.cuts.append(router.cut_once(cut_pattern(run.url), cut_after))
        abort: threading.Event | None = None
        size = run.path.stat().st_size
        while uploader.offset < size:
            assert time.monotonic() < deadline, f"{run.name} did not finish"
            if abort is None and abort_after is not None and uploader.offset >= abort_at:
                abort = router.cut_once(cut_pattern(run.url), abort_after)
                run.cuts.append(abort)
                uploader.retries = 0  # this cut ends the uploader
            try:
                uploader.upload_chunk()
            except (TusUploadFailed, TusCommunicationError, requests.RequestException) as exc:
                if abort is not None and abort.is_set() and uploader.retries == 0:
                    run.aborts += 1
                else:
                    run.unplanned.append(f"{type(exc).__name__}: {exc}")
                uploader = new_tuspy(router.files_url, run, deadline)
                if abort is not None and not abort.is_set():
                    uploader.retries = 0  # the planned abort is still to come
        run.ok = True
    except BaseException as exc:  # reported by the test, with the others
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        run.finished.set()


def start_clients(
    node: str,
    router: Router,
    root: Path,
    size: int,
    *,
    interrupt: bool,
) -> tuple[list[Run], list[threading.Thread]]:
    """PER_CLIENT uploads with each library at once, each of its own file; with
    ``interrupt``, two interruptions each (random points, seeded)."""
    rng = random.Random(SEED)
    sources = make_sources(root, 2 * PER_CLIENT, size, seed=SEED * 1000)
    runs: list[Run] = []
    threads = []
    for n, (path, sha) in enumerate(sources):
        client = "tus-js-client" if n < PER_CLIENT else "tuspy"
        run = Run(client, n % PER_CLIENT, path, sha)
        # Cut 1 to 4 MiB into a 5 MiB PATCH (and a few bytes: offsets off any boundary).
        cut_after = rng.randint(MIB, 4 * MIB) + rng.randint(1, 999) if interrupt else None
        abort_at = rng.randint(size // 3, size // 2)
        target: Callable[[], None]
        if client == "tus-js-client":
            storage = root / f"url-storage-{n}.json"
            abort = abort_at if interrupt else None
            target = functools.partial(run_tus_js, node, router, run, storage, cut_after, abort)
        else:
            abort_after = rng.randint(MIB, 4 * MIB) + rng.randint(1, 999) if interrupt else None
            target = functools.partial(run_tuspy, router, run, cut_after, abort_after, abort_at)
        runs.append(run)
        threads.append(threading.Thread(target=target, name=run.name, daemon=True))
    for thread in threads:
        thread.start()
    return runs, threads


def wait_clients(runs: list[Run], threads: list[threading.Thread], spy: TuspySpy) -> None:
    """Every client ends, and every one succeeded; tuspy's answers are merged in."""
    for thread in threads:
        thread.join(CLIENT_TIMEOUT + 30)
    stuck = [run.name for run in runs if not run.finished.is_set()]
    assert not stuck, f"clients still running after {CLIENT_TIMEOUT:.0f}s: {stuck}"
    for run in runs:
        if run.client == "tuspy" and run.url:
            run.statuses.update(spy.of(run.url))
    failed = [f"{run.name} ({run.url}): {run.error[-1500:]}" for run in runs if not run.ok]
    assert not failed, "uploads failed:\n" + "\n".join(failed)


def assert_all_exact(stack: Stack, runs: list[Run], size: int) -> None:
    """Every object exact (checked four at a time: reading back is the slow part)."""
    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(assert_exact, stack, r.url, r.sha256, size) for r in runs]:
            future.result()


def status_summary(runs: list[Run]) -> Counter[str]:
    """Every answer the clients got, and what tus-js-client retried ("retried 423")."""
    total: Counter[str] = Counter()
    for run in runs:
        total.update(run.statuses)
        total.update({f"retried {k}": v for k, v in run.retried.items()})
    return total


# =========================================================================== the tests


def test_tus_js_client_and_tuspy_through_random_routing_with_interruptions(
    nodes: list[Stack],
    router: Router,
    node: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """20 uploads of 64 MiB in 5 MiB chunks at once, 10 by tus-js-client and 10 by
    tuspy, all through the random router, each interrupted twice: the router cuts one of
    its PATCHes mid-body (the client retries: HEAD, then PATCH from the offset, on a new
    connection, so on a random node), and the client is dropped and a new one resumes
    from the URL (tus-js-client: abort() and the URL storage; tuspy: a failed uploader
    and a new one for the URL). After the first interruption every PATCH starts off a
    part boundary, so every PATCH leaves buffered bytes and most resumes land on a node
    that does not hold them: only the shared copy makes that work."""
    spy = TuspySpy(monkeypatch)
    runs, threads = start_clients(node, router, tmp_path, SIZE, interrupt=True)
    wait_clients(runs, threads, spy)

    statuses = status_summary(runs)
    print(f"\nrouter: {router!r}; answers: {dict(sorted(statuses.items()))}")
    assert_no_tail_missing(nodes)
    # Nothing refused but what clients retry: 409, 423, 503 (S3 or Redis busy). A 500
    # is an error of the server (tus_tail_missing is one).
    bad = {k: v for k, v in statuses.items() if k.split()[1] in ("500", "502", "504")}
    assert not bad, f"5xx answers: {bad}"
    # A 409 or 423 (the upload still held by the request that was cut) is retried by
    # the clients: tus-js-client by itself, tuspy by itself during an upload and by a
    # new uploader when the HEAD of its creation met one (what a tuspy user has to do).
    # Every upload ended (wait_clients): nothing was left unretried.
    restarts = {run.name: run.unplanned for run in runs if run.unplanned}
    print(f"tuspy uploaders made again besides the planned aborts: {restarts}")
    for run in runs:
        # tus-js-client: one cut and one abort; tuspy: two cuts, the second one fatal.
        assert len(run.cuts) == (1 if run.client == "tus-js-client" else 2), run
        assert all(cut.is_set() for cut in run.cuts), f"{run.name}: a cut never happened"
        assert run.aborts == 1, f"{run.name}: the client was not dropped and resumed once"
    assert all(router.routed[stack.port] > 0 for stack in nodes), router.routed
    assert fetches(nodes) >= len(runs), "resumes did not cross nodes: the test proves nothing"
    assert_all_exact(nodes[0], runs, SIZE)


OFFSET_LENGTH = 4 * P + 4321
OFFSETS = {
    "inside-the-first-part": 2 * MIB + 5,  # nothing in S3 but the shared tail
    "at-a-part-boundary": P,  # nothing buffered: no shared tail needed
    "just-after-a-part-boundary": P + 1,
    "mid-part-after-several-parts": 3 * P + 12345,
    "at-length-1": OFFSET_LENGTH - 1,
}


def test_a_resume_on_another_node_at_every_kind_of_offset(nodes: list[Stack]) -> None:
    """For each kind of offset: the upload is created on node0, its first bytes are
    PATCHed raw to node1 up to that offset (a small PATCH first, so that the part size
    stays P), and tuspy finishes it on node2 (HEAD, then the rest). node2 never saw the
    buffered bytes: it fetches them from the shared copy (its log says so), except at a
    part boundary, where nothing is buffered."""
    a, b, c = nodes
    cases = []
    for n, (kind, cut) in enumerate(OFFSETS.items()):
        data = payload(OFFSET_LENGTH, seed=800 + n)
        url = create(a, len(data))
        send_up_to(on(b, url), data, cut)
        cases.append((kind, cut, url, data))

    for kind, cut, url, data in cases:
        upload_id = upload_id_of(url)
        assert int(record(a, upload_id)["offset"]) == cut
        tuspy_finish(on(c, url), data)
        assert_exact(a, url, hashlib.sha256(data).hexdigest(), len(data))
        expected = 0 if cut % P == 0 else 1
        assert fetches([c], upload_id) == expected, f"{kind}: node2 did not use the shared copy"
    assert_no_tail_missing(nodes)


def test_a_stale_local_tail_is_never_used(nodes: list[Stack]) -> None:
    """Node A buffers the first 100 kB (its file, and the shared copy). The upload
    moves on through node B: B fetches them, ships part 1 and buffers the 100 kB after
    it. A's file is now stale, and of exactly the size Redis says is buffered, so
    only the record of which node and which copy hold the bytes tells them apart. The
    resume on A must use B's bytes: the object is exact."""
    a, b, _ = nodes
    data = payload(2 * P + 777, seed=900)
    url = create(a, len(data))
    upload_id = upload_id_of(url)
    n = FIRST_PATCH  # under P (the part size stays), and shared mode's minimum append
    assert patch(on(a, url), data[:n], 0).status_code == 204
    assert patch(on(b, url), data[n : P + n], n).status_code == 204

    rec = record(a, upload_id)
    assert (int(rec["committed"]), int(rec["offset"]), rec["node"]) == (P, P + n, "node1")
    stale = Path(tail_path(upload_id, str(a.tmp_dir))).read_bytes()
    assert stale == data[:n], "the precondition: A still holds its old tail"
    assert len(stale) == int(rec["offset"]) - int(rec["committed"])

    r = patch(on(a, url), data[P + n :], P + n)
    assert r.status_code == 204, r.text
    assert_exact(a, url, hashlib.sha256(data).hexdigest(), len(data))
    assert fetches([a], upload_id) == 1, "A did not take the bytes from the shared copy"
    assert_no_tail_missing(nodes)


def test_a_shared_tail_lost_from_s3_fails_loudly_and_changes_nothing(
    nodes: list[Stack],
) -> None:
    """Node A commits a part and buffers 200 bytes (after a small first PATCH, so that
    the part size stays P); the test deletes their shared copy (every segment Redis
    records) from S3. A resume on node B: 500 tus_tail_missing (JSON), an ERROR line naming the
    upload and both nodes; Redis and S3 as they were, no lease left. A still holds the
    bytes in its own file (Redis names it), so the same resume on A completes exact."""
    a, b, _ = nodes
    data = payload(P + 500, seed=901)
    url = create(a, len(data))
    upload_id = upload_id_of(url)
    send_up_to(on(a, url), data, P + 200)
    copies = record(a, upload_id)["tail_key"].split()
    assert copies and set(copies) <= set(shared_tails(a, upload_id)), copies
    for copy in copies:
        a.s3.delete_object(Bucket=a.bucket, Key=copy)

    def snapshot() -> tuple[dict[str, str], object, object]:
        rec = record(a, upload_id)
        return rec, redis_parts(a, upload_id), s3_parts(a, rec["key"], rec["upload_id"])

    before = snapshot()
    r = patch(on(b, url), data[P + 200 :], P + 200)
    assert r.status_code == 500, r.text
    assert r.json()["error"] == "tus_tail_missing"
    assert "Traceback" not in r.text
    assert snapshot() == before
    assert not a.redis.exists(f"{ukey(upload_id)}:writer"), "B kept the lease"
    poll(
        lambda: (
            any(
                " ERROR " in line
                and f"tus_tail_missing: upload={upload_id} node=node1 tail_node=node0" in line
                for line in web_log(b).splitlines()
            )
            or None
        ),
        10,
        "for the ERROR line on node B",
    )

    r = patch(on(a, url), data[P + 200 :], P + 200)
    assert r.status_code == 204, r.text
    assert_exact(a, url, hashlib.sha256(data).hexdigest(), len(data))


ROLLING_SIZE = 24 * MIB
ROLLING_RATE = 20 * MIB  # bytes per second through the router, for all uploads together


def test_a_rolling_restart_while_20_uploads_run(
    nodes: list[Stack],
    router: Router,
    node: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """20 uploads (10 tus-js-client, 10 tuspy, 24 MiB in 5 MiB chunks) through the
    router, slowed to 20 MiB/s in all so that they outlast the restarts. Meanwhile each
    node in turn, once it has connections open, gets SIGTERM and is started again (a
    deploy, Heroku's dyno cycling); the clients go on through the other nodes, from the
    shared copies of what the stopped node buffered. Every upload finishes exact; no
    node logs tus_tail_missing. (What a SIGTERM does to one running PATCH, and how fast,
    is tests/e2e/test_graceful_stop.py's.)"""
    router.throttle(ROLLING_RATE, "up")
    spy = TuspySpy(monkeypatch)
    runs, threads = start_clients(node, router, tmp_path, ROLLING_SIZE, interrupt=False)
    stops = []
    for stack in nodes:
        name = stack.env["RINDLE_NODE_ID"]
        poll(lambda s=stack: router.open_to(s.port) or None, 30, f"for connections to {name}")
        running = sum(not run.finished.is_set() for run in runs)
        assert running > 0, f"the uploads ended before {name} restarted"
        began = time.monotonic()
        stack.restart_web()  # SIGTERM, wait for it to exit (10 s, then SIGKILL), start
        stops.append((name, running, round(time.monotonic() - began, 1)))
    router.heal()
    wait_clients(runs, threads, spy)

    print(f"\nrestarts (node, uploads running, seconds to restart): {stops}")
    print(f"router: {router!r}; answers: {dict(sorted(status_summary(runs).items()))}")
    assert_no_tail_missing(nodes)
    assert_all_exact(nodes[0], runs, ROLLING_SIZE)


def test_local_mode_refuses_a_misrouted_resume_and_takes_a_first_patch_anywhere(
    make_stack: Callable[..., Stack],
) -> None:
    """RINDLE_TAIL_STORE unset: created on node0, the first PATCH lands on node1 (fine:
    nothing is buffered yet; a small one, then the rest up to P + 2 MiB + 5, so that the
    part size stays P and bytes stay buffered after part 1). The resume on node2, and on
    node0, is refused loudly (500 tus_tail_missing and an ERROR line naming the node and
    the one that holds the bytes); on node1 it completes exact.
    (tests/e2e/test_faults_nodes.py checks that a refused resume changes nothing, and
    more.)"""
    a, b, c = (make_stack(RINDLE_TAIL_STORE=None) for _ in range(3))
    data = payload(2 * P + 99, seed=902)
    url = create(a, len(data))
    upload_id = upload_id_of(url)
    sent = P + 2 * MIB + 5
    send_up_to(on(b, url), data, sent)
    assert shared_tails(a, upload_id) == [], "local mode put a shared tail in S3"

    for stack in (c, a):
        r = patch(on(stack, url), data[sent:], sent)
        assert r.status_code == 500, r.text
        assert r.json()["error"] == "tus_tail_missing"
        line = f"tus_tail_missing: upload={upload_id} node={stack.env['RINDLE_NODE_ID']} "
        poll(lambda s=stack, w=line: (w + "tail_node=node1") in web_log(s) or None, 10, "ERROR")

    r = patch(on(b, url), data[sent:], sent)
    assert r.status_code == 204, r.text
    assert_exact(a, url, hashlib.sha256(data).hexdigest(), len(data))
