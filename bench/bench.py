#!/usr/bin/env python
"""rindle's benchmark: fast clients against raw S3, and many slow clients with a probe.

    python bench/bench.py --self-contained                      # fast mode, 1 then 4 clients
    python bench/bench.py --self-contained --mode slow          # 100 x 16 MiB at 512 KiB/s
    python bench/bench.py --self-contained --mode slow --clients 400 --size 4MiB --rate 256KiB
    python bench/bench.py --url http://127.0.0.1:5000/files/ --mib 256 --clients 4

The goal lines of issue #10 (each also prints peak RSS per server process and CPU s/GiB):

    python bench/bench.py --self-contained --mode slow --clients 100 --size 16MiB --rate 512KiB
    python bench/bench.py --self-contained --mode slow --clients 400 --size 4MiB --rate 256KiB
    python bench/bench.py --self-contained --mode fast --clients 1,4 --mib-each 256 --repeat 3

Fast mode (issue #10, goal 3): for each count in ``--clients`` (default 1,4), that many
client processes (one process each, so the GIL of one client never slows another) upload
``--mib`` MiB in total (or ``--mib-each`` each) of random bytes with tuspy, one PATCH per
upload unless ``--chunk-mib``. The upload phase ends when the last PATCH is
acknowledged; the end-to-end time when the completion job has made every object in S3
(the bench polls HEAD). Then the same processes send the same bytes straight to the same
S3 with boto3 (CreateMultipartUpload, UploadPart with the part size the server used,
Complete), once with each number of parts in flight of ``--raw-in-flight`` (default 1,4;
a thread pool per client): the ceiling that rindle can approach. Printed: MB/s of each,
rindle's end-to-end rate over each ceiling, server CPU seconds per GiB (gunicorn and rq
process trees, children included) and the peak RSS of every server process.

Slow mode (issue #10, goals 1 and 2): see ``bench/slow_clients.py``. N clients start
together, each sending one PATCH throttled to ``--rate``; a probe (a fresh connection,
POST then HEAD, every 0.5 s, from a few seconds after the start until the last PATCH is
answered) measures what a new client waits. Printed: uploads finished, wall time against
the ideal (size / rate), probe latency p50/p99/max and how many probes were answered,
failed or timed out, objects verified exactly (sha256) in S3, peak RSS per server process,
server CPU, and the bench client's own CPU. With the app's Redis known (``--self-contained``,
or ``REDIS_URL`` when connected), also Redis's work (``bench/redis_stats.py``): commands
per second per open upload (in total and by command, while every client is mid-upload),
peak ``connected_clients``, ``MEMORY USAGE`` of an upload in progress and of a finished
one (with its RQ job), and the keys without a TTL.

Connected mode uses the same environment as the app: AWS_* (AWS_ENDPOINT_URL_S3 for an
S3-compatible store), RINDLE_S3_BUCKET, RINDLE_S3_PREFIX; pass --gunicorn-pid and
--worker-pid (else the gunicorn master is looked up by port) for RSS and CPU.
``--self-contained`` starts redis-server and SeaweedFS, then the app as the Procfile runs
it (``devstack.Stack``: gunicorn, one rq worker) on free loopback ports, and tears it all
down at the end. Server settings for that stack: ``--web-workers``, ``--threads``,
``--worker-class``, ``--gunicorn-arg`` (appended to gunicorn's command line, where the
last of a repeated option wins), ``--part-mib`` (RINDLE_TUS_PART_SIZE),
``--parts-in-flight`` (RINDLE_PARTS_IN_FLIGHT), ``--tail-store`` and ``--env NAME=VALUE``.

Every run also prints (issue #19), self-contained:

- S3 bytes written per byte received: the stacks reach S3 through ``bench/s3_meter.py``,
  a proxy that counts the bytes of every PutObject, UploadPart, CopyObject and
  UploadPartCopy (shared tail copies included) per rindle run; the bench's own clients
  (the raw runs, the checks) go through it too, so the ceiling has the same path to S3.
  ``--no-s3-meter`` for CPU and throughput runs (the proxy takes CPU of its own);
- Redis commands per second per open upload (fast mode: while every client uploads);
- peak RSS and peak open descriptors of each server process, and the peak total RSS of
  the web processes (the highest sum in one sample).

Several ``--tail-store`` values run one after the other on fresh stacks over the same
Redis and SeaweedFS, and a table puts them side by side with each one's end-to-end rate
over the first one's ("vs first"). The goal lines of issue #19:

    python bench/bench.py --self-contained --clients 4 --mib-each 64 --chunk-mib 5 \
        --tail-store local,s3 --raw-in-flight 4 --repeat 3          # also --chunk-mib 1
    python bench/bench.py --self-contained --client js --clients 4 --mib-each 64 \
        --chunk-mib 5 --tail-store local,s3 --raw-in-flight 4      # tus-js-client
    python bench/bench.py --self-contained --mode slow --clients 1000 --size 4MiB \
        --rate 64KiB --client-procs 4
    python bench/bench.py --self-contained --no-s3-meter --clients 1 --mib-each 1024 \
        --raw-in-flight 4 --repeat 3

``--client js`` uploads with tus-js-client under Node.js (``tests/e2e/js/upload.mjs``,
``npm ci`` there when missing), each client a Node process reading its bytes from a file.

The machine's load average is printed before and after each mode: other work on the
machine shows in every number here.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import re
import resource
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
for _path in (REPO_ROOT, BENCH_DIR):  # rindle and devstack; this dir's modules
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import procstat  # noqa: E402
import redis_stats  # noqa: E402
import s3_meter  # noqa: E402
import slow_clients  # noqa: E402

KIB = 1024
MIB = 1024 * 1024
GIB = 1024 * MIB
MB = 1_000_000
DEFAULT_PART_SIZE = 8 * MIB  # rindle's default RINDLE_TUS_PART_SIZE
POLL_INTERVAL = 0.02  # seconds between HEADs while waiting for the completion job
SERVER_TREES = ["web", "jobs"]  # the roots whose CPU counts as the server's


# --------------------------------------------------------------------------- clients
# Each runs in its own (spawned) process and returns a plain dict through a queue.


def _s3_client(connections: int = 4) -> Any:
    """The same boto3 client settings as the app for the same endpoint (checksums only
    when required, payloads signed only over plain HTTP to another host, ...)."""
    from rindle.storage.s3 import s3_client_for

    return s3_client_for(os.environ.get("AWS_ENDPOINT_URL_S3", ""), connections)


def _payload(index: int, size: int, seed: bytes) -> bytes:
    """Incompressible bytes, different per client, reproducible within one run."""
    if size == 0:
        return b""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.shake_256(seed + f"/{index}/{counter}".encode()).digest(4 * MIB)
        counter += 1
    return bytes(out[:size])


def _wait_for_object(s3: Any, bucket: str, key: str, size: int, deadline: float) -> None:
    """Poll HEAD until the object exists with ``size`` bytes (the completion job ran)."""
    while True:
        try:
            head = s3.head_object(Bucket=bucket, Key=key)
            if int(head["ContentLength"]) == size:
                return
        except s3.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"s3://{bucket}/{key} did not reach {size} bytes in time")
        time.sleep(POLL_INTERVAL)


def _verify(s3: Any, bucket: str, key: str, data: bytes) -> bool:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    digest = hashlib.sha256()
    for chunk in iter(lambda: body.read(MIB), b""):
        digest.update(chunk)
    return digest.hexdigest() == hashlib.sha256(data).hexdigest()


def verify_phase(phase: Phase, seed: bytes, bucket: str) -> bool:
    """After a phase (so that no client's check takes CPU from another's upload): every
    object's sha256 against the bytes its client sent, regenerated from ``seed``."""
    s3 = _s3_client()

    def exact(r: dict[str, Any]) -> bool:
        return _verify(s3, bucket, r["key"], _payload(r["index"], r["size"], seed))

    with ThreadPoolExecutor(2) as pool:
        return all(pool.map(exact, phase.results))


def _tus_client(
    index: int,
    url: str,
    size: int,
    chunk_size: int | None,
    seed: bytes,
    bucket: str,
    prefix: str,
    timeout: float,
    barrier: Barrier,
    results: Any,
) -> None:
    result: dict[str, Any] = {"index": index, "size": size}
    try:
        from tusclient import client as tus

        data = _payload(index, size, seed)
        s3 = _s3_client()
        barrier.wait(timeout=timeout)
        result["started"] = time.monotonic()
        uploader = tus.TusClient(url).uploader(
            file_stream=io.BytesIO(data),
            chunk_size=chunk_size or sys.maxsize,
            metadata={"filename": f"bench-{index}.bin"},
        )
        uploader.upload()
        result["uploaded"] = time.monotonic()
        upload_id = urlsplit(uploader.url).path.rstrip("/").rsplit("/", 1)[1]
        result["key"] = key = prefix + upload_id
        _wait_for_object(s3, bucket, key, size, result["started"] + timeout)
        result["completed"] = time.monotonic()
    except BaseException:
        result["error"] = traceback.format_exc()
    results.put(result)


def _raw_client(
    index: int,
    size: int,
    part_size: int,
    in_flight: int,
    seed: bytes,
    bucket: str,
    key: str,
    timeout: float,
    barrier: Barrier,
    results: Any,
) -> None:
    """boto3 multipart upload of the same bytes, ``in_flight`` UploadParts at a time."""
    result: dict[str, Any] = {"index": index, "size": size, "key": key}
    try:
        data = memoryview(_payload(index, size, seed))
        s3 = _s3_client(max(4, in_flight))
        barrier.wait(timeout=timeout)
        result["started"] = time.monotonic()
        upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]

        def put(numbered: tuple[int, int]) -> dict[str, Any]:
            number, start = numbered
            body = bytes(data[start : start + part_size])
            answer = s3.upload_part(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                ContentLength=len(body),
            )
            return {"PartNumber": number, "ETag": answer["ETag"]}

        with ThreadPoolExecutor(in_flight) as pool:
            parts = list(pool.map(put, enumerate(range(0, max(size, 1), part_size), start=1)))
        s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
        result["uploaded"] = result["completed"] = time.monotonic()
    except BaseException:
        result["error"] = traceback.format_exc()
    results.put(result)


JS_DIR = REPO_ROOT / "tests" / "e2e" / "js"  # tus-js-client, as the e2e tests use it


def ensure_tus_js() -> None:
    """tus-js-client in tests/e2e/js/node_modules (npm ci unless there already)."""
    from demo import assets

    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        raise RuntimeError("--client js needs node and npm (Node.js >= 18)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    major = version.stdout.strip().lstrip("v").split(".")[0]
    assets.npm_ci(JS_DIR, stamp_suffix=f" node{major}")  # the e2e tests' stamp too


def _js_client(
    index: int,
    url: str,
    size: int,
    chunk_size: int | None,
    seed: bytes,
    bucket: str,
    prefix: str,
    timeout: float,
    barrier: Barrier,
    results: Any,
) -> None:
    """tus-js-client under Node.js (tests/e2e/js/upload.mjs) sends the bytes from a file."""
    result: dict[str, Any] = {"index": index, "size": size}
    try:
        s3 = _s3_client()
        with tempfile.NamedTemporaryFile(prefix="rindle-bench-", suffix=".bin") as f:
            f.write(_payload(index, size, seed))
            f.flush()
            argv = ["node", str(JS_DIR / "upload.mjs"), "--endpoint", url, "--file", f.name]
            argv += ["--chunk-size", str(chunk_size) if chunk_size else "Infinity"]
            barrier.wait(timeout=timeout)
            result["started"] = time.monotonic()
            out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"tus-js-client failed: {out.stderr.strip()[-500:]}")
        result["uploaded"] = time.monotonic()
        upload_url = json.loads(out.stdout.strip().splitlines()[-1])["uploadUrl"]
        upload_id = urlsplit(upload_url).path.rstrip("/").rsplit("/", 1)[1]
        result["key"] = key = prefix + upload_id
        _wait_for_object(s3, bucket, key, size, result["started"] + timeout)
        result["completed"] = time.monotonic()
    except BaseException:
        result["error"] = traceback.format_exc()
    results.put(result)


CLIENTS = {"tuspy": _tus_client, "js": _js_client}


@dataclass
class Phase:
    name: str
    results: list[dict[str, Any]]
    started: float
    client_cpu: float  # CPU seconds of the client processes (spawn included)

    @property
    def total(self) -> int:
        return sum(r["size"] for r in self.results)

    def seconds(self, what: str) -> float:
        return max(r[what] for r in self.results) - self.started

    def rate(self, what: str) -> float:
        """MB/s (10^6 bytes per second)."""
        return self.total / MB / self.seconds(what)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_clients(
    name: str,
    target: Callable[..., None],
    per_client_args: list[tuple[Any, ...]],
    timeout: float,
    before_start: Callable[[], None] = lambda: None,
) -> Phase:
    """Start one process per client, release them together, collect their results."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(per_client_args) + 1)
    results = ctx.Queue()
    cpu_before = _children_cpu()
    procs = [
        ctx.Process(target=target, args=(*args, barrier, results), name=f"{name}-{i}")
        for i, args in enumerate(per_client_args)
    ]
    for proc in procs:
        proc.start()
    try:
        barrier.wait(timeout=timeout)  # every client has its bytes in memory
        before_start()
        started = time.monotonic()
        collected = []
        deadline = started + timeout + 60
        while len(collected) < len(procs):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{name}: clients did not report in time")
            try:
                collected.append(results.get(timeout=min(remaining, 1.0)))
            except Exception:  # queue.Empty: check that nobody died silently
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"{name}: client {dead[0].name} died") from None
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    errors = [r["error"] for r in collected if "error" in r]
    if errors:
        raise RuntimeError(f"{name}: {len(errors)} client(s) failed; first:\n{errors[0]}")
    results_sorted = sorted(collected, key=lambda r: r["index"])
    return Phase(name, results_sorted, started, _children_cpu() - cpu_before)


# --------------------------------------------------------------------------- the server


def find_gunicorn_master(port: int | None) -> int | None:
    """The gunicorn master listening on ``port``: a gunicorn whose parent is not one and
    whose command line binds ``:port`` (None unless exactly one matches)."""
    masters = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        cmdline = procstat.cmdline(int(entry.name))
        if "gunicorn" not in cmdline or not re.search(rf":{port}(\s|$)", cmdline):
            continue
        with contextlib.suppress(OSError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if "gunicorn" not in procstat.cmdline(ppid):
                masters.append(int(entry.name))
    return masters[0] if len(masters) == 1 else None


@dataclass
class Target:
    """Where the bench sends its uploads, and the server processes it watches."""

    url: str
    roots: dict[str, procstat.Root]
    config: dict[str, Any]
    redis_url: str | None = None  # the app's Redis, for the Redis figures
    meter: s3_meter.S3Meter | None = None  # counts what the app writes to S3

    def watch(self) -> procstat.Watch:
        return procstat.Watch(dict(self.roots))


def roots_of(
    web: int | None, jobs: int | None, redis: int | None = None, s3: int | None = None
) -> dict[str, procstat.Root]:
    roots = {}
    if web:
        roots["web"] = procstat.Root(web, "gunicorn master", "gunicorn worker")
    if jobs:
        roots["jobs"] = procstat.Root(jobs, "rq worker", "rq work horse")
    if redis:
        roots["redis"] = procstat.Root(redis, "redis-server", "redis child", rss=False)
    if s3:
        roots["s3"] = procstat.Root(s3, "seaweedfs", "seaweedfs child", rss=False)
    return roots


def server_settings(args: argparse.Namespace) -> tuple[dict[str, str], list[str]]:
    """The environment overrides and extra gunicorn arguments asked for on the command line."""
    env: dict[str, str] = {}
    if args.part_mib:
        env["RINDLE_TUS_PART_SIZE"] = str(int(args.part_mib * MIB))
    if args.parts_in_flight is not None:
        env["RINDLE_PARTS_IN_FLIGHT"] = str(args.parts_in_flight)
    for pair in args.env:
        name, _, value = pair.partition("=")
        env[name] = value
    # As the Procfile does: the app sizes its connection pools from RINDLE_THREADS too.
    if args.web_workers is not None:
        env["WEB_CONCURRENCY"] = str(args.web_workers)
    if args.threads is not None:
        env["RINDLE_THREADS"] = str(args.threads)
    web_args: list[str] = []
    if args.worker_class:
        web_args += ["--worker-class", args.worker_class]
    for extra in args.gunicorn_arg:
        web_args += shlex.split(extra)
    return env, web_args


def self_contained_runs(
    args: argparse.Namespace, run_one: Callable[[Target], dict[str, Any]]
) -> list[dict[str, Any]]:
    """redis-server + SeaweedFS, then for each ``--tail-store`` in turn the app on them
    (devstack's Stack: the Procfile's gunicorn settings plus ``--web-workers`` & co., and
    an rq worker), and ``run_one(target)``. Torn down at the end.

    Sets the AWS_* and RINDLE_S3_* variables in this process for the bench's own clients.
    """
    from devstack import Stack, private_services, stack_env

    overrides, web_args = server_settings(args)
    root = Path(tempfile.mkdtemp(prefix="rindle-bench-"))
    results = []
    try:
        with contextlib.ExitStack() as running:
            redis_server, s3 = running.enter_context(private_services(root, bucket="rindle-bench"))
            os.environ.update({**s3.env(), "RINDLE_S3_PREFIX": "bench/"})
            meter = None
            if args.s3_meter:
                # Everything goes through it, the bench's own clients too (the raw runs
                # then have the same path to S3 as the app); it counts per phase.
                meter = running.enter_context(s3_meter.S3Meter(s3.env()["AWS_ENDPOINT_URL_S3"]))
                os.environ["AWS_ENDPOINT_URL_S3"] = meter.endpoint
            for n, tail_store in enumerate(args.tail_store.split(",")):
                settings = {
                    "REDIS_URL": redis_server.url,
                    **s3.env(),
                    **({"AWS_ENDPOINT_URL_S3": meter.endpoint} if meter else {}),
                    "RINDLE_S3_PREFIX": "bench/",
                    "RINDLE_TMP_DIR": str(root / f"node{n}"),
                    "RINDLE_TAIL_STORE": tail_store,
                    **overrides,
                }
                stack = Stack(stack_env(settings), log_dir=root / f"logs{n}", web_args=web_args)
                with stack:
                    assert stack.web is not None and stack.worker is not None
                    redis_pid = redis_server.proc.pid if redis_server.proc else None
                    s3_pid = s3.proc.pid if s3.proc else None
                    roots = roots_of(stack.web.pid, stack.worker.pid, redis_pid, s3_pid)
                    config = {"tail_store": tail_store, "web_args": web_args, "env": overrides}
                    print(
                        f"--- {stack.files_url} RINDLE_TAIL_STORE={tail_store}; gunicorn "
                        f"{' '.join(web_args) or '(devstack defaults)'}; env {overrides or '-'}",
                        flush=True,
                    )
                    try:
                        target = Target(stack.files_url, roots, config, redis_server.url, meter)
                        results.append(run_one(target))
                    except BaseException:
                        print(stack.logs(30), file=sys.stderr)
                        raise
    finally:
        if args.keep:
            print(f"kept: the stacks' data and logs in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return results


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


# --------------------------------------------------------------------------- fast mode


def detect_part_size(bucket: str, key: str) -> int | None:
    """The size of part 1 of a multipart object (ETag "<md5>-<parts>"); None otherwise."""
    s3 = _s3_client()
    if "-" not in s3.head_object(Bucket=bucket, Key=key)["ETag"]:
        return None  # one PutObject (SeaweedFS would answer PartNumber with its chunks)
    return int(s3.head_object(Bucket=bucket, Key=key, PartNumber=1)["ContentLength"])


def warm_up(url: str, prefix: str, uploads: int = 8) -> list[str]:
    """Untimed: a few concurrent empty uploads, so that every web worker has built its S3
    client (an empty upload is one PutObject), as a long-running server would have.
    Returns the keys of the empty objects."""
    from tusclient import client as tus

    def one(_: int) -> str:
        uploader = tus.TusClient(url).uploader(file_stream=io.BytesIO(b""))
        uploader.upload()
        return prefix + urlsplit(uploader.url).path.rstrip("/").rsplit("/", 1)[1]

    with ThreadPoolExecutor(uploads) as pool:
        return list(pool.map(one, range(uploads)))


def split(total: int, clients: int) -> list[int]:
    share, extra = divmod(total, clients)
    return [share + (1 if i < extra else 0) for i in range(clients)]


def _median_rate(phases: list[Phase], what: str) -> float:
    return statistics.median(p.rate(what) for p in phases)


def _spread(phases: list[Phase], what: str) -> str:
    """' (min-max)' of the rates when there were repeats."""
    if len(phases) < 2:
        return ""
    rates = [p.rate(what) for p in phases]
    return f" ({min(rates):.0f}-{max(rates):.0f})"


def fast_round(args: argparse.Namespace, target: Target, clients: int) -> dict[str, Any]:
    """``clients`` tuspy clients, then the same bytes as raw multipart uploads with each
    ``--raw-in-flight``; all of it ``--repeat`` times, alternating; medians reported."""
    bucket = os.environ.get("RINDLE_S3_BUCKET") or "rindle"
    prefix = os.environ.get("RINDLE_S3_PREFIX", "uploads/")
    total = int(args.mib_each * MIB * clients) if args.mib_each else int(args.mib * MIB)
    sizes = split(total, clients)
    chunk = int(args.chunk_mib * MIB) if args.chunk_mib else None
    s3 = _s3_client()
    tus_phases: list[Phase] = []
    raw_phases: dict[int, list[Phase]] = {n: [] for n in args.raw_in_flight}
    part_size = args.part_mib and int(args.part_mib * MIB)
    load_before = load_average()
    written: list[float] = []  # S3 bytes written per byte received, per rindle run
    commands: list[float] = []  # Redis commands per second per open upload, per run
    print(
        f"fast: {total / MIB:g} MiB over {clients} {args.client} client(s) "
        f"({sizes[0] / MIB:.2f} MiB each), "
        + (f"PATCHes of {args.chunk_mib:g} MiB" if chunk else "one PATCH per upload")
        + (f", {args.repeat} times" if args.repeat > 1 else ""),
        flush=True,
    )
    watch = target.watch()
    keys = warm_up(target.url, prefix)
    for _ in range(args.repeat):
        seed = secrets.token_bytes(16)
        sampler = redis_stats.RedisSampler(target.redis_url, 0.25) if target.redis_url else None
        counted: list[dict[str, Any]] = []

        def before_start(
            sampler: redis_stats.RedisSampler | None = sampler,
            counted: list[dict[str, Any]] = counted,
        ) -> None:
            watch.start()
            if target.meter is not None:
                counted.append(target.meter.counts())
            if sampler is not None:
                sampler.start(time.monotonic(), math.inf)  # no in-progress snapshot

        try:
            tus_phase = _run_clients(
                "tus",
                CLIENTS[args.client],
                [
                    (i, target.url, size, chunk, seed, bucket, prefix, args.timeout)
                    for i, size in enumerate(sizes)
                ],
                args.timeout,
                before_start=before_start,
            )
            watch.stop()
            tus_phases.append(tus_phase)
            if target.meter is not None:  # the objects are complete: every write is in
                phase_written = s3_meter.written_between(counted[0], target.meter.counts())
                written.append(phase_written["written"] / tus_phase.total)
                print(f"  S3 writes of this run: {phase_written}", flush=True)
            if sampler is not None:
                sampler.close()
                first_done = min(r["uploaded"] for r in tus_phase.results)
                rate = sampler.commands_per_upload(tus_phase.started, first_done, clients)
                if rate is not None:
                    commands.append(rate)
            keys += [r["key"] for r in tus_phase.results]
            if args.verify and not verify_phase(tus_phase, seed, bucket):
                raise RuntimeError("an object in S3 does not match the bytes that were uploaded")
            part_size = part_size or detect_part_size(bucket, tus_phase.results[0]["key"])
            part_size = part_size or int(
                os.environ.get("RINDLE_TUS_PART_SIZE") or DEFAULT_PART_SIZE
            )
            for in_flight in args.raw_in_flight:
                run_id = secrets.token_hex(4)
                raw_keys = [f"{prefix}bench-raw/{run_id}-{i}" for i in range(clients)]
                keys += raw_keys
                raw_phases[in_flight].append(
                    _run_clients(
                        f"raw{in_flight}",
                        _raw_client,
                        [
                            (i, size, part_size, in_flight, seed, bucket, raw_keys[i], args.timeout)
                            for i, size in enumerate(sizes)
                        ],
                        args.timeout,
                    )
                )
        finally:
            if not args.keep:
                for key in keys:
                    with contextlib.suppress(Exception):
                        s3.delete_object(Bucket=bucket, Key=key)
            keys = []

    up, e2e = _median_rate(tus_phases, "uploaded"), _median_rate(tus_phases, "completed")
    server_cpu = watch.cpu_seconds([t for t in SERVER_TREES if t in target.roots])
    gib = sum(p.total for p in tus_phases) / GIB
    median = f"medians of {args.repeat} runs" if args.repeat > 1 else "one run each"
    print(
        f"part size {(part_size or 0) / MIB:g} MiB, {os.cpu_count()} CPUs, "
        f"load average before {load_before}, after {load_average()}"
    )
    print(f"{median:52} {'MB/s':>8} {'range':>10} {'rindle e2e / this':>18}")
    rows = [
        ("rindle, upload phase (last PATCH acknowledged)", tus_phases, "uploaded", None),
        ("rindle, end to end (objects complete in S3)", tus_phases, "completed", None),
    ]
    rows += [
        (f"raw boto3 multipart, {n} part(s) in flight", phases, "completed", n)
        for n, phases in raw_phases.items()
    ]
    ratios = {}
    for label, phases, what, in_flight in rows:
        rate = _median_rate(phases, what)
        ratio = ""
        if in_flight is not None:
            ratios[in_flight] = e2e / rate
            ratio = f"{e2e / rate:18.2f}"
        print(f"{label:52} {rate:8.1f} {_spread(phases, what):>10} {ratio}")
    ceiling = max(raw_phases)
    ceiling_rate = _median_rate(raw_phases[ceiling], "completed")
    print(
        f"ratio rindle / ceiling (raw, {ceiling} in flight): upload phase "
        f"{up / ceiling_rate:.2f}, end to end {ratios[ceiling]:.2f}"
    )
    if args.verify:
        print("integrity: every object's sha256 matches its source bytes")
    client_cpu = sum(p.client_cpu for p in tus_phases)
    print(
        f"server CPU (gunicorn + rq trees) during the rindle runs: {server_cpu:.1f} s for "
        f"{gib:g} GiB, {server_cpu / gib:.2f} s per GiB; tus client processes {client_cpu:.1f} s"
    )
    s3_ratio = statistics.median(written) if written else None
    redis_rate = statistics.median(commands) if commands else None
    print(
        "S3 bytes written per byte received (PutObject, UploadPart, copies; at the S3 "
        "meter): "
        + (f"{s3_ratio:.3f}" if s3_ratio is not None else "not measured")
        + (f" (runs: {', '.join(f'{x:.3f}' for x in written)})" if len(written) > 1 else "")
    )
    print(
        "Redis commands per second per open upload (while every client uploads): "
        + (f"{redis_rate:.2f}" if redis_rate is not None else "not measured")
    )
    print("server processes during the rindle runs:")
    for line in watch.report():
        print(line)
    return {
        "clients": clients,
        "mib_total": total / MIB,
        "chunk_mib": args.chunk_mib,
        "part_size": part_size,
        "repeat": args.repeat,
        "tus_upload_mb_s": round(up, 1),
        "tus_end_to_end_mb_s": round(e2e, 1),
        "tus_end_to_end_mb_s_each": [round(p.rate("completed"), 1) for p in tus_phases],
        "raw_mb_s_by_in_flight": {
            n: round(_median_rate(p, "completed"), 1) for n, p in raw_phases.items()
        },
        "raw_mb_s_each_by_in_flight": {
            n: [round(x.rate("completed"), 1) for x in p] for n, p in raw_phases.items()
        },
        "ratio_end_to_end_by_in_flight": {k: round(v, 3) for k, v in ratios.items()},
        "ratio_end_to_end": round(ratios[ceiling], 3),
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_s_per_gib": round(server_cpu / gib, 2),
        "s3_written_per_byte": round(s3_ratio, 4) if s3_ratio is not None else None,
        "s3_written_per_byte_each": [round(x, 4) for x in written],
        "redis_commands_per_s_per_upload": round(redis_rate, 2) if redis_rate else None,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "server": watch.summary(),
    }


def run_fast(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    rounds = []
    for clients in args.clients:
        rounds.append(fast_round(args, target, clients))
        print()
    if len(rounds) > 1:
        print("clients   upload MB/s   end to end MB/s   ceiling MB/s   ratio e2e   CPU s/GiB")
        for r in rounds:
            ceiling = r["raw_mb_s_by_in_flight"][max(r["raw_mb_s_by_in_flight"])]
            print(
                f"{r['clients']:7} {r['tus_upload_mb_s']:13.1f} {r['tus_end_to_end_mb_s']:17.1f}"
                f" {ceiling:14.1f} {r['ratio_end_to_end']:11.2f}"
                f" {r['server_cpu_s_per_gib']:11.1f}"
            )
    return {"mode": "fast", **target.config, "rounds": rounds}


def print_tail_stores(runs: list[dict[str, Any]]) -> None:
    """The fast runs of several --tail-store values side by side; "vs first" is the end to
    end rate over the first tail store's with as many clients (e.g. s3 over local)."""
    print(
        "tail store  clients   upload MB/s   end to end MB/s   ceiling MB/s   ratio e2e"
        "   vs first   S3 written/received   redis cmd/s/upload   CPU s/GiB"
    )
    first = {r["clients"]: r["tus_end_to_end_mb_s"] for r in runs[0]["rounds"]}
    for run in runs:
        for r in run["rounds"]:
            ceiling = r["raw_mb_s_by_in_flight"][max(r["raw_mb_s_by_in_flight"])]
            written = r["s3_written_per_byte"]
            redis_rate = r["redis_commands_per_s_per_upload"]
            print(
                f"{run['tail_store']:10} {r['clients']:8} {r['tus_upload_mb_s']:13.1f}"
                f" {r['tus_end_to_end_mb_s']:17.1f} {ceiling:14.1f} {r['ratio_end_to_end']:11.2f}"
                f" {r['tus_end_to_end_mb_s'] / first[r['clients']]:10.2f}"
                + (f" {written:21.3f}" if written is not None else f" {'-':>21}")
                + (f" {redis_rate:20.2f}" if redis_rate is not None else f" {'-':>20}")
                + f" {r['server_cpu_s_per_gib']:11.2f}"
            )


# --------------------------------------------------------------------------- slow mode


def run_slow(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    rate = args.rate
    opts = slow_clients.SlowOptions(
        url=target.url,
        clients=args.clients[0],
        size=args.size,
        rate=rate,
        chunk=args.chunk or int(min(64 * KIB, max(4 * KIB, rate / 8))),
        burst=args.burst,
        procs=args.client_procs,
        interval=args.probe_interval,
        delay=args.probe_delay,
        probe_timeout=args.probe_timeout,
        timeout=args.timeout,
        seed=secrets.token_bytes(16),
    )
    load_before = load_average()
    watch = target.watch()
    sampler = redis_stats.RedisSampler(target.redis_url) if target.redis_url else None
    counted = target.meter.counts() if target.meter is not None else None
    try:
        out = slow_clients.run(
            opts,
            watch=watch,
            s3=_s3_client(8),
            bucket=os.environ.get("RINDLE_S3_BUCKET") or "rindle",
            prefix=os.environ.get("RINDLE_S3_PREFIX", "uploads/"),
            keep=args.keep,
            redis_stats=sampler,
        )
    finally:
        if sampler is not None:
            sampler.close()
    server_cpu = watch.cpu_seconds([t for t in SERVER_TREES if t in target.roots])
    gib = opts.clients * opts.size / GIB
    if target.meter is not None and counted is not None:
        phase_written = s3_meter.written_between(counted, target.meter.counts())
        received = out["objects_exact"] * opts.size
        out["s3_written"] = phase_written
        out["s3_written_per_byte"] = round(phase_written["written"] / max(received, 1), 4)
        print(
            f"  S3 writes               {out['s3_written_per_byte']:.3f} bytes per byte "
            f"received (exact objects): {phase_written}"
        )
    print(
        f"  server CPU              {server_cpu:.1f} s (gunicorn + rq trees), "
        f"{server_cpu / gib:.1f} s per GiB"
    )
    print(
        f"  load average            before {load_before}, after {load_average()} "
        f"({os.cpu_count()} CPUs)"
    )
    print("  server processes from the start of the PATCHes until every object was complete:")
    for line in watch.report(indent="    "):
        print(line)
    return {
        **out,
        **target.config,
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_s_per_gib": round(server_cpu / gib, 2),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "server": watch.summary(),
    }


# --------------------------------------------------------------------------- main

_UNITS = {"": 1, "b": 1, "k": KIB, "kib": KIB, "m": MIB, "mib": MIB, "g": GIB, "gib": GIB}
_UNITS |= {"kb": 1000, "mb": 1000**2, "gb": 1000**3}


def parse_size(text: str) -> int:
    """'16MiB', '512KiB', '512k', '4M' (binary), '4MB' (decimal), '1000' (bytes); '/s'
    at the end is allowed (a rate)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*(/s)?\s*", text.lower())
    if not match or match.group(2) not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 16MiB, 512KiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        msg = f"not a comma-separated list of integers: {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"need positive integers: {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="the tus endpoint of a running stack (…/files/)")
    where.add_argument(
        "--self-contained",
        action="store_true",
        help="start redis, SeaweedFS, gunicorn and an rq worker, then tear them down",
    )
    p.add_argument("--mode", choices=["fast", "slow"], default="fast", help="(fast)")
    p.add_argument(
        "--clients",
        type=int_list,
        default=None,
        help="fast: client counts run one after the other (1,4); slow: clients (100)",
    )
    p.add_argument("--timeout", type=float, default=600, help="seconds allowed per phase")
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the objects the bench made, and the stacks' data and logs (self-contained)",
    )
    p.add_argument("--json", action="store_true", help="also print the results as JSON")

    fast = p.add_argument_group("fast mode")
    fast.add_argument("--mib", type=float, default=256, help="MiB uploaded in total (256)")
    fast.add_argument("--mib-each", type=float, default=None, help="MiB per client instead")
    fast.add_argument(
        "--chunk-mib", type=float, default=None, help="PATCH size in MiB (default: one PATCH)"
    )
    fast.add_argument(
        "--raw-in-flight",
        type=int_list,
        default=[1, 4],
        help="parts in flight of the raw boto3 runs (1,4); the largest is the ceiling",
    )
    fast.add_argument(
        "--repeat", type=int, default=1, help="rindle and raw runs, alternating; medians (1)"
    )
    fast.add_argument("--no-verify", dest="verify", action="store_false", help="skip sha256")
    fast.add_argument(
        "--client",
        choices=sorted(CLIENTS),
        default="tuspy",
        help="tuspy, or js: tus-js-client under Node.js (npm ci in tests/e2e/js) (tuspy)",
    )

    slow = p.add_argument_group("slow mode")
    slow.add_argument("--size", type=parse_size, default=16 * MIB, help="per client (16MiB)")
    slow.add_argument("--rate", type=parse_size, default=512 * KIB, help="per client (512KiB)")
    slow.add_argument("--chunk", type=parse_size, default=None, help="bytes per send")
    slow.add_argument(
        "--burst", type=float, default=1.0, help="seconds of catch-up after a stall (1)"
    )
    slow.add_argument("--client-procs", type=int, default=1, help="client processes (1)")
    slow.add_argument("--probe-interval", type=float, default=0.5, help="seconds (0.5)")
    slow.add_argument("--probe-delay", type=float, default=3.0, help="first probe after (3 s)")
    slow.add_argument("--probe-timeout", type=float, default=120, help="seconds (120)")

    server = p.add_argument_group("the server (--self-contained)")
    server.add_argument(
        "--part-mib",
        type=float,
        default=None,
        help="RINDLE_TUS_PART_SIZE (default: the app's, 8 MiB); connected, the fast "
        "mode's raw runs use the one the server used",
    )
    server.add_argument("--parts-in-flight", type=int, default=None, help="RINDLE_PARTS_IN_FLIGHT")
    server.add_argument("--web-workers", type=int, default=None, help="gunicorn --workers")
    server.add_argument("--threads", type=int, default=None, help="gunicorn --threads")
    server.add_argument("--worker-class", default=None, help="gunicorn --worker-class")
    server.add_argument(
        "--gunicorn-arg",
        action="append",
        default=[],
        help="more gunicorn arguments, e.g. --gunicorn-arg=--preload or "
        "--gunicorn-arg '--worker-connections 1000' (repeatable)",
    )
    server.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE for the app (repeatable)"
    )
    server.add_argument(
        "--tail-store",
        default="local",
        help="RINDLE_TAIL_STORE, or several, comma-separated, run one after the other on "
        "fresh stacks (e.g. local,s3)",
    )
    server.add_argument(
        "--no-s3-meter",
        dest="s3_meter",
        action="store_false",
        help="no byte-counting proxy in front of S3 (bench/s3_meter.py): for CPU and "
        "throughput runs, which it slows (it forwards every byte in Python)",
    )
    server.add_argument("--gunicorn-pid", type=int, default=None, help="(connected)")
    server.add_argument("--worker-pid", type=int, default=None, help="rq worker (connected)")

    args = p.parse_args(argv)
    if args.clients is None:
        args.clients = [100] if args.mode == "slow" else [1, 4]
    if args.mode == "slow":
        if len(args.clients) != 1:
            p.error("slow mode takes one --clients count")
        if args.size < 1 or args.rate < 1 or args.client_procs < 1:
            p.error("--size, --rate and --client-procs must be positive")
    if args.repeat < 1:
        p.error("--repeat must be positive")
    if args.mib <= 0 or (args.chunk_mib is not None and args.chunk_mib <= 0):
        p.error("--mib and --chunk-mib must be positive")
    if args.part_mib is not None and not 5 <= args.part_mib <= 5 * 1024:
        p.error("--part-mib must be between 5 and 5120 (S3's limits)")
    largest = args.mib_each or args.mib / min(args.clients)
    if args.mode == "fast" and math.ceil(largest / (args.part_mib or 5)) > 10_000:
        p.error("more than 10,000 parts per client")
    if any("=" not in pair for pair in args.env):
        p.error("--env takes NAME=VALUE")
    return args


def main(argv: list[str] | None = None) -> int:
    from botocore.exceptions import BotoCoreError, ClientError
    from tusclient.exceptions import TusCommunicationError

    args = parse_args(argv)
    run_one = run_slow if args.mode == "slow" else run_fast
    if args.mode == "fast" and args.client == "js":
        ensure_tus_js()
    try:
        if args.self_contained:
            runs = self_contained_runs(args, lambda target: run_one(args, target))
            if len(runs) > 1 and args.mode == "fast":
                print_tail_stores(runs)
            summary: Any = runs if len(runs) > 1 else runs[0]
        else:
            overrides, web_args = server_settings(args)
            if overrides or web_args:
                print("note: server settings apply to --self-contained only; ignored")
            master = args.gunicorn_pid or find_gunicorn_master(urlsplit(args.url).port)
            config = {"url": args.url}
            roots = roots_of(master, args.worker_pid)
            target = Target(args.url, roots, config, os.environ.get("REDIS_URL"))
            summary = run_one(args, target)
    except (RuntimeError, OSError, TusCommunicationError, BotoCoreError, ClientError) as exc:
        print(f"bench failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
