"""Slow-clients mode of bench.py: many tus clients on slow links, and a probe for new ones.

N clients first create their uploads (POST, untimed), then start together: each sends its
whole upload in ONE PATCH, throttled to ``rate`` bytes/s like a slow link. The throttle is
a token bucket at most ``burst`` seconds deep: a client whose connection the server does
not read cannot later catch up faster than that (a phone's link time is lost, not saved
up). The clients are asyncio tasks on raw sockets in ``procs`` spawned processes, so
hundreds of them cost the bench little; their own CPU time is reported.

While the PATCHes run, a probe acts as a new client: every ``interval`` seconds, starting
``delay`` seconds after the PATCHes, a fresh connection sends POST (create) then HEAD,
each probe in its own thread so that a slow answer does not delay the next probe. Probes
stop when the last PATCH is answered; the ones still waiting are given ``probe_timeout``.

Every client's bytes are hashed (sha256) as they are sent; after the run each object is
awaited in S3 (the completion job) and its sha256 compared.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import http.client
import math
import multiprocessing as mp
import resource
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

KIB = 1024
MIB = 1024 * KIB
# Each client's bytes are slices of one random buffer of PRIME bytes at offsets that step
# by STEP mod PRIME: reproducible, different per client, and no slice offset repeats
# within an upload, so a part sent twice or out of order changes the object's sha256.
PRIME = 8_388_593  # a prime just under 8 MiB
STEP = 2_654_435
CLIENT_STEP = 1_000_003
CREATE_CONCURRENCY = 16


@dataclass
class SlowOptions:
    url: str
    clients: int
    size: int  # bytes per client, all in one PATCH
    rate: float  # bytes/s per client
    chunk: int  # bytes written per send
    burst: float  # seconds of catch-up a client may send after a stall
    procs: int  # client processes
    interval: float  # seconds between probes
    delay: float  # seconds after the PATCHes' start before the first probe
    probe_timeout: float
    timeout: float  # seconds allowed for the whole slow phase
    seed: bytes


# --------------------------------------------------------------------------- client side


class Pattern:
    def __init__(self, seed: bytes, chunk: int) -> None:
        self.buf = memoryview(hashlib.shake_256(seed).digest(PRIME + chunk))

    def piece(self, client: int, k: int, n: int) -> memoryview:
        start = (client * CLIENT_STEP + k * STEP) % PRIME
        return self.buf[start : start + n]


async def _read_response(
    reader: asyncio.StreamReader, method: str
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one HTTP/1.1 response; the request
    said ``Connection: close``, so a body without Content-Length runs to EOF."""
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    body = b""
    if method != "HEAD" and status not in (204, 304):
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        else:
            body = await reader.read()
    return status, headers, body


def _request_head(method: str, path: str, netloc: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {netloc}", "Tus-Resumable: 1.0.0"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += ["Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


async def _create(opts: SlowOptions, index: int, gate: asyncio.Semaphore) -> str:
    """POST: a new upload of ``opts.size`` bytes; returns its path."""
    url = urlsplit(opts.url)
    name = base64.b64encode(f"slow-{index}.bin".encode()).decode()
    async with gate:
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        try:
            headers = {
                "Upload-Length": str(opts.size),
                "Upload-Metadata": f"filename {name}",
                "Content-Length": "0",
            }
            writer.write(_request_head("POST", url.path, url.netloc, headers))
            status, headers, body = await _read_response(reader, "POST")
        finally:
            writer.close()
    if status != 201 or "location" not in headers:
        raise RuntimeError(f"POST {opts.url}: {status} {body[:200]!r}")
    return urlsplit(headers["location"]).path


async def _patch(
    opts: SlowOptions, pattern: Pattern, index: int, path: str, start_at: float
) -> dict[str, Any]:
    """One PATCH of the whole upload at ``opts.rate``; never raises."""
    result: dict[str, Any] = {"index": index, "path": path, "size": opts.size}
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    url = urlsplit(opts.url)
    digest = hashlib.sha256()
    sent = k = 0
    writer = None
    try:
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        headers = {
            "Content-Type": "application/offset+octet-stream",
            "Upload-Offset": "0",
            "Content-Length": str(opts.size),
        }
        writer.write(_request_head("PATCH", path, url.netloc, headers))
        answer = asyncio.ensure_future(_read_response(reader, "PATCH"))
        link = loop.time()  # when the link has sent everything so far
        try:
            while sent < opts.size and not answer.done():
                n = min(opts.chunk, opts.size - sent)
                link = max(link, loop.time() - opts.burst) + n / opts.rate
                if link > loop.time():
                    await asyncio.sleep(link - loop.time())
                piece = pattern.piece(index, k, n)
                writer.write(piece)
                digest.update(piece)
                await writer.drain()
                sent += n
                k += 1
        except OSError as exc:  # the server closed: its answer tells why
            result["send_error"] = repr(exc)
        result["sent"] = sent
        result["sent_at"] = time.monotonic()
        status, headers, body = await asyncio.wait_for(answer, opts.timeout)
        result["answered_at"] = time.monotonic()
        result["status"] = status
        result["offset"] = int(headers.get("upload-offset", -1))
        if status != 204:
            result["error"] = f"PATCH answered {status} {body[:200]!r}"
        elif result["offset"] != opts.size:
            result["error"] = f"PATCH acknowledged {result['offset']} of {opts.size} bytes"
    except Exception as exc:
        result.setdefault("sent", sent)
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if writer is not None:
            writer.close()
    result["sha256"] = digest.hexdigest()
    return result


def client_process(
    opts: SlowOptions, indices: list[int], go: Any, start_at: Any, results: Any
) -> None:
    """One client process: create the uploads of ``indices``, report ready, wait for
    ``go``, then run their PATCHes; report (kind, payload) tuples on ``results``."""
    try:
        pattern = Pattern(opts.seed, opts.chunk)

        async def create_all() -> list[str]:
            gate = asyncio.Semaphore(CREATE_CONCURRENCY)
            return await asyncio.gather(*(_create(opts, i, gate) for i in indices))

        paths = asyncio.run(create_all())
        results.put(("ready", len(paths)))
        go.wait()

        async def patch_all() -> list[dict[str, Any]]:
            pairs = zip(indices, paths, strict=True)
            return await asyncio.gather(
                *(_patch(opts, pattern, i, p, start_at.value) for i, p in pairs)
            )

        patched = asyncio.run(patch_all())
        usage = resource.getrusage(resource.RUSAGE_SELF)
        results.put(
            (
                "done",
                {
                    "clients": patched,
                    "cpu_s": usage.ru_utime + usage.ru_stime,
                    "max_rss_kib": usage.ru_maxrss,
                },
            )
        )
    except BaseException:
        results.put(("error", traceback.format_exc()))


# --------------------------------------------------------------------------- the probe


class Probe:
    """A new client every ``interval`` s: fresh connection, POST, then HEAD on it."""

    def __init__(self, url: str, interval: float, timeout: float) -> None:
        self.url = urlsplit(url)
        self.interval = interval
        self.timeout = timeout
        self.results: list[dict[str, Any]] = []
        self.locations: list[str] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._launcher: threading.Thread | None = None

    def start(self, first_at: float) -> None:
        self._launcher = threading.Thread(target=self._launch, args=(first_at,), daemon=True)
        self._launcher.start()

    def stop(self) -> None:
        """No new probes; wait for the ones under way (each has its own timeout)."""
        self._stop.set()
        if self._launcher is not None:
            self._launcher.join()
        for thread in self._threads:
            thread.join()

    def _launch(self, first_at: float) -> None:
        due = first_at
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            thread = threading.Thread(target=self._one, args=(due,), daemon=True)
            thread.start()
            self._threads.append(thread)
            due += self.interval

    def _one(self, due: float) -> None:
        result: dict[str, Any] = {"at": due}
        began = time.monotonic()
        conn = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=self.timeout)
        try:
            headers = {"Tus-Resumable": "1.0.0", "Upload-Length": "1024"}
            conn.request("POST", self.url.path, headers=headers)
            answer = conn.getresponse()
            answer.read()
            result["post_s"] = time.monotonic() - began
            location = answer.getheader("Location")
            if answer.status != 201 or not location:
                raise RuntimeError(f"POST answered {answer.status}")
            with self._lock:
                self.locations.append(location)
            conn.request("HEAD", urlsplit(location).path, headers={"Tus-Resumable": "1.0.0"})
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200 or answer.getheader("Upload-Offset") != "0":
                raise RuntimeError(f"HEAD answered {answer.status}")
            result["total_s"] = time.monotonic() - began
            result["head_s"] = result["total_s"] - result["post_s"]
        except TimeoutError:
            result["failure"] = "timeout"
        except Exception as exc:
            result["failure"] = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        with self._lock:
            self.results.append(result)

    def delete_uploads(self) -> None:
        """DELETE the probes' uploads (untimed clean-up)."""
        for location in self.locations:
            conn = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=30)
            with contextlib.suppress(Exception):
                conn.request("DELETE", urlsplit(location).path, headers={"Tus-Resumable": "1.0.0"})
                conn.getresponse().read()
            conn.close()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


# --------------------------------------------------------------------------- S3 check


def wait_complete(
    s3: Any, bucket: str, clients: list[dict[str, Any]], timeout: float
) -> dict[str, float]:
    """Wait until every client's object exists with its size (the completion job ran);
    returns when each appeared (monotonic), by key."""
    pending = {c["key"]: c for c in clients}
    complete_at: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for key, c in list(pending.items()):
            try:
                head = s3.head_object(Bucket=bucket, Key=key)
            except s3.exceptions.ClientError:
                continue
            if int(head["ContentLength"]) == c["size"]:
                complete_at[key] = time.monotonic()
                del pending[key]
        if pending:
            time.sleep(0.2)
    return complete_at


def exact_objects(s3: Any, bucket: str, clients: list[dict[str, Any]]) -> list[str]:
    """The keys of ``clients`` whose object's sha256 is not the one the client sent."""

    def exact(c: dict[str, Any]) -> bool:
        body = s3.get_object(Bucket=bucket, Key=c["key"])["Body"]
        digest = hashlib.sha256()
        for chunk in iter(lambda: body.read(MIB), b""):
            digest.update(chunk)
        return digest.hexdigest() == c["sha256"]

    with ThreadPoolExecutor(4) as pool:
        return [c["key"] for c, ok in zip(clients, pool.map(exact, clients), strict=True) if not ok]


# --------------------------------------------------------------------------- the run


def run(
    opts: SlowOptions,
    *,
    watch: Any,
    s3: Any,
    bucket: str,
    prefix: str,
    keep: bool,
    redis_stats: Any = None,
) -> dict[str, Any]:
    """The slow phase against ``opts.url``; prints its lines and returns its numbers.

    ``watch`` is a started-on-go ``procstat.Watch`` of the server's processes (or None);
    ``redis_stats`` a ``redis_stats.RedisSampler`` of the server's Redis (or None).
    """
    ctx = mp.get_context("spawn")
    go, start_at, results = ctx.Event(), ctx.Value("d", 0.0), ctx.Queue()
    shares = [list(range(p, opts.clients, opts.procs)) for p in range(opts.procs)]
    procs = [
        ctx.Process(target=client_process, args=(opts, share, go, start_at, results))
        for share in shares
        if share
    ]
    for proc in procs:
        proc.start()
    probe = Probe(opts.url, opts.interval, opts.probe_timeout)
    reports: list[dict[str, Any]] = []
    deadline = time.monotonic() + opts.timeout
    try:
        ready = 0
        while ready < len(procs):
            kind, payload = _next(results, procs, deadline)
            if kind != "ready":
                raise RuntimeError(f"client process: {payload}")
            ready += 1
        start_at.value = began = time.monotonic() + 0.5
        if watch is not None:
            watch.start()
        if redis_stats is not None:
            redis_stats.start(began, opts.size / opts.rate)
        go.set()
        probe.start(began + opts.delay)
        while len(reports) < len(procs):
            kind, payload = _next(results, procs, deadline)
            if kind != "done":
                raise RuntimeError(f"client process: {payload}")
            reports.append(payload)
        patches_done = time.monotonic()
        probe.stop()
    finally:
        probe.stop()
        if redis_stats is not None:
            redis_stats.stop()
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()

    clients = sorted((c for r in reports for c in r["clients"]), key=lambda c: c["index"])
    for c in clients:
        c["key"] = prefix + c["path"].rstrip("/").rsplit("/", 1)[1]
    finished = [c for c in clients if "error" not in c]
    complete_at = wait_complete(s3, bucket, finished, timeout=120)
    if watch is not None:
        watch.stop()  # after the completion jobs: their CPU counts
    present = [c for c in finished if c["key"] in complete_at]
    mismatched = exact_objects(s3, bucket, present)
    missing = sorted(c["key"] for c in finished if c["key"] not in complete_at)
    last_complete = max(complete_at.values(), default=None)
    redis_lines: list[str] = []
    redis_out: dict[str, Any] = {}
    answered_clients = [c for c in clients if "answered_at" in c]
    if redis_stats is not None and present and answered_clients:
        # Before the clean-up below, whose DELETEs would add jobs of their own.
        first_answer = min(c["answered_at"] for c in answered_clients)
        finished_id = present[0]["path"].rstrip("/").rsplit("/", 1)[1]
        redis_out, redis_lines = redis_stats.report(
            began, opts.size / opts.rate, first_answer, len(answered_clients), finished_id
        )
    if not keep:
        for c in clients:
            with contextlib.suppress(Exception):
                s3.delete_object(Bucket=bucket, Key=c["key"])
    probe.delete_uploads()

    ideal = opts.size / opts.rate
    wall = max((c["answered_at"] for c in finished), default=patches_done) - began
    durations = sorted(c["answered_at"] - began for c in finished)
    sending = sorted(c["sent_at"] - began for c in clients if "sent_at" in c)
    answered = [p for p in probe.results if "total_s" in p]
    failed = [p for p in probe.results if "failure" in p]
    timeouts = [p for p in failed if p["failure"] == "timeout"]
    latencies = [p["total_s"] for p in answered]
    # Over every probe, an unanswered one (failed or timed out) counting as infinitely slow.
    every = latencies + [math.inf] * len(failed)
    client_cpu = sum(r["cpu_s"] for r in reports)
    out: dict[str, Any] = {
        "mode": "slow",
        "options": {k: v for k, v in asdict(opts).items() if k != "seed"},
        "uploads": opts.clients,
        "uploads_finished": len(finished),
        "objects_exact": len(present) - len(mismatched),
        "wall_s": round(wall, 2),
        "ideal_s": round(ideal, 2),
        "wall_over_ideal": round(wall / ideal, 3),
        "client_duration_p50_s": round(percentile(durations, 50), 2) if durations else None,
        "client_last_byte_sent_p50_s": round(percentile(sending, 50), 2) if sending else None,
        "client_last_byte_sent_max_s": round(max(sending), 2) if sending else None,
        "objects_complete_after_last_patch_s": (
            round(last_complete - patches_done, 2) if last_complete else None
        ),
        "probes": len(probe.results),
        "probes_answered": len(answered),
        "probes_failed": len(failed) - len(timeouts),
        "probes_timed_out": len(timeouts),
        "probe_p50_s": round(percentile(latencies, 50), 3) if latencies else None,
        "probe_p99_s": round(percentile(latencies, 99), 3) if latencies else None,
        "probe_max_s": round(max(latencies), 3) if latencies else None,
        "probe_p99_all_s": _rounded(percentile(every, 99)) if every else None,
        "bench_client_cpu_s": round(client_cpu, 1),
        "bench_client_max_rss_mib": round(max(r["max_rss_kib"] for r in reports) / KIB, 1),
    }
    errors = [c["error"] for c in clients if "error" in c]
    probe_failures = sorted({p["failure"] for p in failed})

    size_mib, rate_kib = opts.size / MIB, opts.rate / KIB
    print(
        f"slow clients: {opts.clients} x {size_mib:g} MiB in one PATCH each at "
        f"{rate_kib:g} KiB/s (chunks of {opts.chunk / KIB:g} KiB, burst {opts.burst:g} s)"
    )
    wmem, rmem = _socket_buffers()
    if wmem and rmem:
        fits = opts.size <= wmem[2] + rmem[1]  # a socket nobody reads keeps the default
        print(
            f"  socket buffers (TCP)    send up to {wmem[2] / MIB:g} MiB, receive "
            f"{rmem[1] / KIB:g} KiB growing up to {rmem[2] / MIB:g} MiB while read"
            + (": a body this small can sit whole in them unread" if fits else "")
        )
    print(f"  uploads finished        {len(finished)}/{opts.clients}")
    if errors:
        print(f"  first client error      {errors[0]}")
    print(
        f"  wall time               {wall:.1f} s (ideal {ideal:.1f} s, "
        f"{wall / ideal:.2f} x ideal); median client {out['client_duration_p50_s']} s"
    )
    print(
        f"  last byte sent          median {out['client_last_byte_sent_p50_s']} s, "
        f"last {out['client_last_byte_sent_max_s']} s after the start"
    )
    if latencies:
        p99_all = out["probe_p99_all_s"]
        print(
            f"  probe POST+HEAD         p50 {out['probe_p50_s']:.3f} s, "
            f"p99 {out['probe_p99_s']:.3f} s, max {out['probe_max_s']:.3f} s (answered "
            f"probes); p99 of all probes "
            + (f"{p99_all:.3f} s" if p99_all is not None else "unanswered")
        )
    print(
        f"  probes                  {len(answered)} answered of {len(probe.results)} "
        f"({len(failed) - len(timeouts)} failed, {len(timeouts)} timed out after "
        f"{opts.probe_timeout:g} s)"
        + (f"; failures: {'; '.join(probe_failures)[:300]}" if probe_failures else "")
    )
    print(
        f"  objects in S3           {len(present)}/{len(finished)} complete, "
        f"{out['objects_exact']} exact (sha256); last complete "
        f"{out['objects_complete_after_last_patch_s']} s after the last PATCH answer"
    )
    if mismatched or missing:
        print(f"  NOT EXACT: {mismatched[:5]} missing: {missing[:5]}")
    out.update(redis_out)
    for line in redis_lines:
        print(line)
    wall_cpu = patches_done - began
    print(
        f"  bench client CPU        {client_cpu:.1f} s over {wall_cpu:.0f} s "
        f"({100 * client_cpu / wall_cpu:.0f}% of one core) in {len(procs)} process(es), "
        f"max RSS {out['bench_client_max_rss_mib']} MiB"
    )
    return out


def _socket_buffers() -> tuple[list[int], list[int]]:
    """(min, default, max) of tcp_wmem and tcp_rmem ([] where unreadable)."""
    found = []
    for name in ("tcp_wmem", "tcp_rmem"):
        try:
            text = Path(f"/proc/sys/net/ipv4/{name}").read_text()
            found.append([int(x) for x in text.split()])
        except (OSError, ValueError):
            found.append([])
    return found[0], found[1]


def _rounded(value: float) -> float | None:
    """Rounded for JSON; None for an unanswered probe's infinity."""
    return None if math.isinf(value) else round(value, 3)


def _next(results: Any, procs: list[Any], deadline: float) -> tuple[str, Any]:
    while True:
        try:
            return results.get(timeout=1.0)
        except Exception:  # queue.Empty: check that no client process died silently
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                code = dead[0].exitcode
                raise RuntimeError(f"a client process died (exit code {code})") from None
            if time.monotonic() > deadline:
                raise TimeoutError("the slow clients did not finish in time") from None
