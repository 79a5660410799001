#!/usr/bin/env python
"""Throughput benchmark: rindle (tus -> S3 multipart) against raw boto3 multipart uploads.

    python bench/bench.py --self-contained                 # starts and stops everything
    python bench/bench.py --url http://127.0.0.1:5000/files/ --mib 256 --clients 4

K client processes (one process each, so the GIL of one client never slows another) each
upload MiB/K mebibytes of random bytes with tuspy. The upload phase ends when the last
PATCH is acknowledged; the end-to-end time when the completion job has made every object
in S3 (the bench polls HEAD on ``RINDLE_S3_BUCKET``/``RINDLE_S3_PREFIX + <upload id>``).
Then the same K processes send the same bytes straight to the same S3 with boto3
(CreateMultipartUpload, UploadPart with the part size the server used, Complete): the
ceiling that rindle can approach. Both rates are printed with their ratio, and the peak
RSS of each gunicorn worker during the tus phase (VmHWM, reset at the start where the
kernel allows), which stays bounded per upload: bodies are streamed, never held whole.

Connected mode uses the same environment as the app: AWS_* (AWS_ENDPOINT_URL_S3 for an
S3-compatible store), RINDLE_S3_BUCKET, RINDLE_S3_PREFIX. ``--self-contained`` starts
redis-server and SeaweedFS, then the app as the Procfile runs it (``devstack.Stack``:
gunicorn with 2 gthread workers of 8 threads, one rq worker) on free loopback ports, and
tears it all down at the end.
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
import secrets
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # rindle (the S3 client settings) and devstack

MIB = 1024 * 1024
MB = 1_000_000
DEFAULT_PART_SIZE = 8 * MIB  # rindle's default RINDLE_TUS_PART_SIZE
POLL_INTERVAL = 0.02  # seconds between HEADs while waiting for the completion job


# --------------------------------------------------------------------------- clients
# Each runs in its own (spawned) process and returns a plain dict through a queue.


def _s3_client() -> Any:
    """The same boto3 client settings as the app (checksums only when required, ...)."""
    from rindle.storage import make_s3_client

    return make_s3_client(max_pool_connections=4)


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


def _tus_client(
    index: int,
    url: str,
    size: int,
    chunk_size: int | None,
    seed: bytes,
    bucket: str,
    prefix: str,
    timeout: float,
    verify: bool,
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
        if verify:
            result["verified"] = _verify(s3, bucket, key, data)
    except BaseException:
        result["error"] = traceback.format_exc()
    results.put(result)


def _raw_client(
    index: int,
    size: int,
    part_size: int,
    seed: bytes,
    bucket: str,
    key: str,
    timeout: float,
    barrier: Barrier,
    results: Any,
) -> None:
    result: dict[str, Any] = {"index": index, "size": size, "key": key}
    try:
        data = _payload(index, size, seed)
        s3 = _s3_client()
        barrier.wait(timeout=timeout)
        result["started"] = time.monotonic()
        upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        parts = []
        for number, start in enumerate(range(0, max(size, 1), part_size), start=1):
            body = data[start : start + part_size]
            etag = s3.upload_part(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                ContentLength=len(body),
            )["ETag"]
            parts.append({"PartNumber": number, "ETag": etag})
        s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
        result["uploaded"] = result["completed"] = time.monotonic()
    except BaseException:
        result["error"] = traceback.format_exc()
    results.put(result)


@dataclass
class Phase:
    name: str
    results: list[dict[str, Any]]
    started: float

    @property
    def total(self) -> int:
        return sum(r["size"] for r in self.results)

    def seconds(self, what: str) -> float:
        return max(r[what] for r in self.results) - self.started

    def rate(self, what: str) -> float:
        """MB/s (10^6 bytes per second)."""
        return self.total / MB / self.seconds(what)


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
    return Phase(name, sorted(collected, key=lambda r: r["index"]), started)


# --------------------------------------------------------------------------- memory


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in bytes."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) * 1024
    return values


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            kids += [int(c) for c in (task / "children").read_text().split()]
    return kids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def find_gunicorn_master(port: int | None) -> int | None:
    """The gunicorn master listening on ``port``: a gunicorn whose parent is not one and
    whose command line binds ``:port`` (None unless exactly one matches)."""
    masters = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        cmdline = _cmdline(int(entry.name))
        if "gunicorn" not in cmdline or not re.search(rf":{port}(\s|$)", cmdline):
            continue
        with contextlib.suppress(OSError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if "gunicorn" not in _cmdline(ppid):
                masters.append(int(entry.name))
    return masters[0] if len(masters) == 1 else None


@dataclass
class Memory:
    """Peak RSS of the gunicorn workers over one phase."""

    master: int | None
    before: dict[int, dict[str, int]] = field(default_factory=dict)
    peak_reset: bool = False

    def workers(self) -> list[int]:
        return _children(self.master) if self.master else []

    def start(self) -> None:
        for pid in self.workers():
            with contextlib.suppress(OSError):
                self.before[pid] = _proc_status(pid)
                # "5" resets VmHWM to the current RSS (Linux >= 4.0, needs ptrace rights).
                Path(f"/proc/{pid}/clear_refs").write_text("5")
                self.peak_reset = True

    def report(self) -> list[str]:
        if not self.master:
            return ["gunicorn workers: not found (pass --gunicorn-pid to report their RSS)"]
        since = "during the tus phase" if self.peak_reset else "since the worker started"
        lines = [f"gunicorn workers (master pid {self.master}), peak RSS {since}:"]
        for pid in self.workers():
            try:
                now = _proc_status(pid)
            except OSError:
                continue
            before = self.before.get(pid, {}).get("VmRSS")
            start = f"{before / MIB:7.1f} MiB at start, " if before else ""
            lines.append(
                f"  pid {pid}: {start}peak {now['VmHWM'] / MIB:7.1f} MiB, "
                f"now {now['VmRSS'] / MIB:7.1f} MiB"
            )
        return lines


# --------------------------------------------------------------------------- the stack


def self_contained_runs(
    part_size: int | None, tail_stores: list[str], run_one: Callable[[str, int], dict[str, Any]]
) -> list[dict[str, Any]]:
    """redis-server + SeaweedFS, then for each of ``tail_stores`` in turn the app on them
    (devstack's Stack: the Procfile's gunicorn settings and an rq worker) with that
    RINDLE_TAIL_STORE, and ``run_one(tus URL, gunicorn master pid)``. Torn down at the end.

    Sets the AWS_* and RINDLE_S3_* variables in this process for the bench's own clients.
    """
    from devstack import Stack, private_services, stack_env

    root = Path(tempfile.mkdtemp(prefix="rindle-bench-"))
    results = []
    try:
        with private_services(root, bucket="rindle-bench") as (redis_server, s3):
            os.environ.update({**s3.env(), "RINDLE_S3_PREFIX": "bench/"})
            for n, tail_store in enumerate(tail_stores):
                settings = {
                    "REDIS_URL": redis_server.url,
                    **s3.env(),
                    "RINDLE_S3_PREFIX": "bench/",
                    "RINDLE_TMP_DIR": str(root / f"node{n}"),
                    "RINDLE_TAIL_STORE": tail_store,
                }
                if part_size:
                    settings["RINDLE_TUS_PART_SIZE"] = str(part_size)
                with Stack(stack_env(settings), log_dir=root / f"logs{n}") as stack:
                    assert stack.web is not None
                    print(f"--- RINDLE_TAIL_STORE={tail_store}: {stack.files_url}", flush=True)
                    try:
                        results.append(
                            {"tail_store": tail_store, **run_one(stack.files_url, stack.web.pid)}
                        )
                    except BaseException:
                        print(stack.logs(30), file=sys.stderr)
                        raise
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


# --------------------------------------------------------------------------- main


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
    from concurrent.futures import ThreadPoolExecutor

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


def run(args: argparse.Namespace, url: str, master: int | None) -> dict[str, Any]:
    bucket = os.environ.get("RINDLE_S3_BUCKET") or "rindle"
    prefix = os.environ.get("RINDLE_S3_PREFIX", "uploads/")
    total = int(args.mib * MIB)
    sizes = split(total, args.clients)
    chunk = int(args.chunk_mib * MIB) if args.chunk_mib else None
    seed = secrets.token_bytes(16)
    s3 = _s3_client()
    keys: list[str] = []
    print(
        f"bench: {args.mib:g} MiB over {args.clients} tuspy client(s) "
        f"({sizes[0] / MIB:.2f} MiB each), "
        + (f"PATCHes of {args.chunk_mib:g} MiB" if chunk else "one PATCH per upload"),
        flush=True,
    )
    try:
        keys += warm_up(url, prefix)
        memory = Memory(master)
        tus_phase = _run_clients(
            "tus",
            _tus_client,
            [
                (i, url, size, chunk, seed, bucket, prefix, args.timeout, args.verify)
                for i, size in enumerate(sizes)
            ],
            args.timeout,
            before_start=memory.start,
        )
        keys += [r["key"] for r in tus_phase.results]
        if args.verify and not all(r.get("verified") for r in tus_phase.results):
            raise RuntimeError("an object in S3 does not match the bytes that were uploaded")

        part_size = args.part_mib and int(args.part_mib * MIB)
        part_size = part_size or detect_part_size(bucket, tus_phase.results[0]["key"])
        part_size = part_size or int(os.environ.get("RINDLE_TUS_PART_SIZE") or DEFAULT_PART_SIZE)
        run_id = secrets.token_hex(4)
        raw_keys = [f"{prefix}bench-raw/{run_id}-{i}" for i in range(args.clients)]
        keys += raw_keys
        raw_phase = _run_clients(
            "raw",
            _raw_client,
            [
                (i, size, part_size, seed, bucket, raw_keys[i], args.timeout)
                for i, size in enumerate(sizes)
            ],
            args.timeout,
        )
    finally:
        if not args.keep:
            for key in keys:
                with contextlib.suppress(Exception):
                    s3.delete_object(Bucket=bucket, Key=key)

    up, e2e = tus_phase.rate("uploaded"), tus_phase.rate("completed")
    raw = raw_phase.rate("completed")
    rows = [
        ("rindle, upload phase (last PATCH acknowledged)", tus_phase.seconds("uploaded"), up),
        ("rindle, end to end (objects complete in S3)", tus_phase.seconds("completed"), e2e),
        ("raw S3 multipart (boto3, same part size)", raw_phase.seconds("completed"), raw),
    ]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"part size {part_size / MIB:g} MiB, total {tus_phase.total / MIB:g} MiB, "
        f"{os.cpu_count()} CPUs, load average {load}"
    )
    print(f"{'':50} {'seconds':>8} {'MB/s':>8}")
    for label, seconds, rate in rows:
        print(f"{label:50} {seconds:8.2f} {rate:8.1f}")
    print(f"ratio rindle / raw S3: upload phase {up / raw:.2f}, end to end {e2e / raw:.2f}")
    if args.verify:
        print("integrity: every object's sha256 matches its source bytes")
    for line in memory.report():
        print(line)
    return {
        "mib": args.mib,
        "clients": args.clients,
        "chunk_mib": args.chunk_mib,
        "part_size": part_size,
        "tus_upload_mb_s": round(up, 1),
        "tus_end_to_end_mb_s": round(e2e, 1),
        "raw_s3_mb_s": round(raw, 1),
        "ratio_end_to_end": round(e2e / raw, 3),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="the tus endpoint of a running stack (…/files/)")
    where.add_argument(
        "--self-contained",
        action="store_true",
        help="start redis, SeaweedFS, gunicorn and an rq worker, then tear them down",
    )
    p.add_argument("--mib", type=float, default=256, help="MiB uploaded in total (256)")
    p.add_argument("--clients", type=int, default=4, help="concurrent client processes (4)")
    p.add_argument(
        "--chunk-mib", type=float, default=None, help="PATCH size in MiB (default: one PATCH)"
    )
    p.add_argument(
        "--part-mib",
        type=float,
        default=None,
        help="part size; --self-contained sets RINDLE_TUS_PART_SIZE to it (default: the "
        "app's, 8 MiB); connected, the raw run uses the one the server used",
    )
    p.add_argument(
        "--tail-store",
        default="local",
        help="--self-contained: RINDLE_TAIL_STORE, or several, comma-separated, run one "
        "after the other on fresh stacks and compared (e.g. local,s3)",
    )
    p.add_argument("--gunicorn-pid", type=int, default=None, help="gunicorn master (connected)")
    p.add_argument("--timeout", type=float, default=600, help="seconds allowed per phase")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip sha256 check")
    p.add_argument("--keep", action="store_true", help="keep the objects the bench made")
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = p.parse_args(argv)
    if args.clients < 1 or args.mib <= 0 or (args.chunk_mib is not None and args.chunk_mib <= 0):
        p.error("--clients, --mib and --chunk-mib must be positive")
    if args.part_mib is not None and not 5 <= args.part_mib <= 5 * 1024:
        p.error("--part-mib must be between 5 and 5120 (S3's limits)")
    if math.ceil(args.mib / args.clients / (args.part_mib or 5)) > 10_000:
        p.error("more than 10,000 parts per client")
    return args


def main(argv: list[str] | None = None) -> int:
    from botocore.exceptions import BotoCoreError, ClientError
    from tusclient.exceptions import TusCommunicationError

    args = parse_args(argv)
    try:
        if args.self_contained:
            part_size = args.part_mib and int(args.part_mib * MIB)
            runs = self_contained_runs(
                part_size,
                args.tail_store.split(","),
                lambda url, master: run(args, url, master),
            )
            if len(runs) > 1:
                print("tail store   upload MB/s   end to end MB/s   raw S3 MB/s   ratio e2e")
                for r in runs:
                    print(
                        f"{r['tail_store']:12} {r['tus_upload_mb_s']:11.1f}"
                        f" {r['tus_end_to_end_mb_s']:17.1f} {r['raw_s3_mb_s']:13.1f}"
                        f" {r['ratio_end_to_end']:11.2f}"
                    )
            summary = runs if len(runs) > 1 else runs[0]
        else:
            master = args.gunicorn_pid or find_gunicorn_master(urlsplit(args.url).port)
            summary = run(args, args.url, master)
    except (RuntimeError, OSError, TusCommunicationError, BotoCoreError, ClientError) as exc:
        print(f"bench failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
