"""A Heroku formation on a capped TLS Redis (issue #17).

What Heroku runs, on what Heroku Key-Value Store premium-0 gives: a redis-server with TLS
only, a certificate from no public CA, a password and ``maxclients 40``; two web dynos
(each a gunicorn with ``WEB_CONCURRENCY=2`` processes) behind a random router with
Heroku's timeouts (tests/router.py), one worker dyno and one clock dyno, all started with
the Procfile's own lines, ``REDIS_URL=rediss://:<pw>@...``,
``RINDLE_REDIS_SSL_CERT_REQS=none`` and ``RINDLE_TAIL_STORE=s3`` (web dynos scale out).

100 slow uploads at once (one PATCH of 6 MiB each at ~512 KiB/s) go through the router
while the test samples ``INFO clients`` and ``CLIENT LIST`` in one transaction every
0.2 s, on a connection of its own (its own connections carry the name ``rindle-test:...``
and are not counted). The formation must stay within the plan's 40 connections and each
process within its budget (``rindle.redis_client.ROLES``); Redis must turn no connection
away (``rejected_connections``) and no process may log that it did (or that Redis was
unavailable); no PATCH may be answered 5xx; every object must be exact in S3, completed
by the worker. The peak and the connections per process (by the names rindle's
connections carry, ``rindle:<role>:<host>:<pid>``) are printed (``pytest -s``).
"""

from __future__ import annotations

import collections
import hashlib
import random
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import requests

from devstack import RedisServer, SeaweedS3
from rindle import redis_client
from tests.conftest import _STACKS, PART_SIZE, S3_PREFIX, Stack, stack_env
from tests.e2e.conftest import MIB, TUS, Uploads, tls_redis_server, upload_id_of
from tests.e2e.test_faults import RawPatch
from tests.router import Router

pytestmark = pytest.mark.e2e

KIB = 1024
MAXCLIENTS = 40  # Heroku Key-Value Store premium-0
NODES = 2  # web dynos
WEB_CONCURRENCY = 2  # gunicorn processes per web dyno
UPLOADS = 100
SIZE = 6 * MIB  # one PATCH each
RATE = 512 * KIB  # bytes per second, per upload
PIECE = 64 * KIB  # sent every PIECE / RATE seconds (0.125 s)
SAMPLE_EVERY = 0.2  # seconds between two looks at Redis's clients
OWN = "rindle-test:"  # the name of every connection of the test's own
UNNAMED = "(unnamed)"  # a connection that has not sent CLIENT SETNAME yet (TLS handshake)
SEED = 17  # the router's choices
# What a process logs when Redis turns its connection away: Redis's own error (plain
# TCP), and what the app logs for it over TLS (see the test).
REFUSED = ("max number of clients", "redis unavailable", "unexpected_eof")

WEB_BUDGET = redis_client.ROLES["web"][0]  # RINDLE_REDIS_CONNECTIONS's default
WORKER_BUDGET = 2 * redis_client.ROLES["worker"][0] + 1  # main, work horse, scheduler
CLOCK_BUDGET = redis_client.ROLES["clock"][0]
FORMATION_BUDGET = NODES * WEB_CONCURRENCY * WEB_BUDGET + WORKER_BUDGET + CLOCK_BUDGET


@dataclass
class Sample:
    at: float  # seconds since sampling began
    formation: int  # connected_clients minus the test's own
    own: int
    names: collections.Counter[str]  # connections by client name (the test's left out)


@dataclass
class Sampler:
    """INFO clients and CLIENT LIST, in one MULTI (so both describe the same instant),
    every SAMPLE_EVERY seconds, on one connection of the test's own."""

    client: redis.Redis
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    unnamed: list[tuple[float, list[str]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._began = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="redis-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pipe = self.client.pipeline(transaction=True)
                pipe.info("clients")
                pipe.client_list()
                info, listed = pipe.execute()
            except redis.RedisError as exc:  # reported by the test: no sample must be lost
                self.errors.append(f"{type(exc).__name__}: {exc}")
            else:
                own = sum(1 for c in listed if c["name"].startswith(OWN))
                names = collections.Counter(
                    c["name"] or UNNAMED for c in listed if not c["name"].startswith(OWN)
                )
                formation = int(info["connected_clients"]) - own
                at = time.monotonic() - self._began
                self.samples.append(Sample(at, formation, own, names))
                pending = [f"{c['addr']} age={c['age']}s" for c in listed if not c["name"]]
                if pending:
                    self.unnamed.append((at, pending))
            self._stop.wait(SAMPLE_EVERY)

    def peak(self) -> Sample:
        return max(self.samples, key=lambda s: s.formation)

    def by_owner(self, owner: dict[str, str]) -> list[collections.Counter[str]]:
        """Each sample's connections per owning process (``owner``: name -> process)."""
        found = []
        for sample in self.samples:
            counts: collections.Counter[str] = collections.Counter()
            for name, count in sample.names.items():
                counts[owner[name]] += count
            found.append(counts)
        return found


@dataclass
class Formation:
    redis: RedisServer
    nodes: list[Stack]  # web dynos; nodes[0] runs the worker and the clock too
    router: Router
    check: redis.Redis  # the test's own client (named OWN + "check")
    ca_file: Path
    passed: bool = False

    def owner(self, name: str) -> str:
        """The process of the formation that holds connections named ``name``:
        ``<role> node<n> pid <pid>``. rindle's connections are named
        ``rindle:<role>:<host>:<pid>`` (a worker's work horses and RQ's scheduler process
        carry their worker's name); RQ renames one connection of a worker to the worker's
        own name (``CLIENT SETNAME`` in ``Worker._set_ip_address``), found here by the pid
        in its ``rq:worker:<name>`` record. Anything else is ``(unknown) <name>``; a
        connection still in its TLS handshake has no name yet: ``(unnamed)``."""
        if name == UNNAMED:
            return UNNAMED
        parts = name.split(":")
        if len(parts) == 4 and parts[0] == "rindle" and parts[3].isdigit():
            role, pid = parts[1], int(parts[3])
        elif rq_pid := self.check.hget(f"rq:worker:{name}", "pid"):
            role, pid = "worker", int(rq_pid)
        else:
            return f"(unknown) {name}"
        for n, node in enumerate(self.nodes):
            for proc, what in ((node.web, "web"), (node.worker, "worker"), (node.clock, "clock")):
                if proc is None or what != role:
                    continue
                if pid == proc.pid or (what == "web" and _parent(pid) == proc.pid):
                    return f"{role} node{n} pid {pid}"
        return f"(unknown) {name}"

    def logs(self) -> dict[str, str]:
        """Every process's whole log: gunicorn of each node, the worker, the clock."""
        found = {}
        for n, node in enumerate(self.nodes):
            for proc in node.processes():
                assert proc.log_path is not None
                found[f"node{n} {proc.name}"] = proc.log_path.read_text(errors="replace")
        return found


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


@pytest.fixture
def formation(
    request: pytest.FixtureRequest, s3_server: SeaweedS3, tmp_path: Path
) -> Iterator[Formation]:
    root = tmp_path / "formation"
    bucket = f"e2e-{uuid.uuid4().hex}"
    nodes: list[Stack] = []
    request.node.stash[_STACKS] = nodes
    formation: Formation | None = None
    with tls_redis_server(root / "redis", maxclients=MAXCLIENTS) as server:
        assert server.tls is not None
        ca_file = server.tls.ca_file
        check = redis.Redis.from_url(
            server.url, decode_responses=True, ssl_ca_certs=str(ca_file), client_name=OWN + "check"
        )
        s3_server.create_bucket(bucket)
        try:
            for n in range(NODES):
                env = stack_env(
                    {
                        "REDIS_URL": server.url,
                        "RINDLE_REDIS_SSL_CERT_REQS": "none",
                        **s3_server.env(bucket=bucket),
                        "RINDLE_S3_PREFIX": S3_PREFIX,
                        "RINDLE_TMP_DIR": str(root / f"node{n}" / "tmp"),
                        "RINDLE_TUS_PART_SIZE": str(PART_SIZE),
                        "RINDLE_TAIL_STORE": "s3",
                        "RINDLE_NODE_ID": f"node{n}",
                        "WEB_CONCURRENCY": str(WEB_CONCURRENCY),
                    }
                )
                first = n == 0  # the worker dyno and the clock dyno, once
                stack = Stack(
                    env,
                    root / f"node{n}" / "logs",
                    check,
                    s3_server.client(),
                    procfile=True,
                    worker=first,
                    clock=first,
                )
                nodes.append(stack)
                stack.start()
            with Router([node.port for node in nodes], seed=SEED) as router:
                formation = Formation(server, nodes, router, check, ca_file)
                yield formation
        finally:
            for stack in reversed(nodes):
                stack.stop()
            check.close()
            s3_server.delete_bucket(bucket)
    if (
        formation is not None and formation.passed
    ):  # on a failure the logs stay, for the report and a look
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Upload:
    n: int
    url: str = ""
    created: int = 0  # POST's status
    status: int = 0  # PATCH's status
    offset: str = ""  # PATCH's Upload-Offset
    body: bytes = b""
    sha256: str = ""
    error: str = ""


def slow_upload(router: Router, up: Upload, gate: threading.Barrier) -> None:
    """POST through the router, wait for the others, then one PATCH of SIZE bytes at
    RATE (a new connection: a random node), and its answer."""
    try:
        created = requests.post(
            router.files_url, headers={**TUS, "Upload-Length": str(SIZE)}, timeout=30
        )
        up.created = created.status_code
        up.url = created.headers.get("Location", "")
    except requests.RequestException as exc:
        up.error = f"POST: {type(exc).__name__}: {exc}"
    try:
        gate.wait()
    except threading.BrokenBarrierError:
        return
    if up.created != 201:
        return
    rng, digest = random.Random(up.n), hashlib.sha256()
    try:
        with RawPatch(up.url, 0, SIZE, timeout=60) as patch:
            began = time.monotonic()
            try:
                for k in range(SIZE // PIECE):
                    delay = began + k * PIECE / RATE - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    piece = rng.randbytes(PIECE)
                    digest.update(piece)
                    patch.send(piece)
            except OSError as exc:  # the server ended the PATCH early: its answer, if any
                up.error = f"PATCH cut after {patch.sent} bytes: {type(exc).__name__}: {exc}"
            up.sha256 = digest.hexdigest()
            up.status, headers, up.body = patch.response()
            up.offset = headers.get("upload-offset", "")
    except OSError as exc:
        up.error += f" PATCH: {type(exc).__name__}: {exc}"


def test_100_slow_uploads_through_two_web_dynos_fit_a_premium_0_redis(
    formation: Formation,
) -> None:
    """The formation (2 web dynos x 2 processes, a worker, a clock) serves 100 slow
    uploads at once through the router within the plan's 40 connections: every upload is
    exact, none is refused, no process meets Redis's client limit."""
    assert SIZE % PIECE == 0
    assert FORMATION_BUDGET <= MAXCLIENTS, "the test's own sizing no longer fits the plan"
    sampler = Sampler(
        redis.Redis.from_url(
            formation.redis.url,
            decode_responses=True,
            ssl_ca_certs=str(formation.ca_file),
            client_name=OWN + "sampler",
            single_connection_client=True,
        )
    )
    uploads = [Upload(n) for n in range(UPLOADS)]
    gate = threading.Barrier(UPLOADS, timeout=60)
    threads = [
        threading.Thread(target=slow_upload, args=(formation.router, up, gate), name=f"up{up.n}")
        for up in uploads
    ]
    began = time.monotonic()
    sampler.start()
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        sent = time.monotonic() - began
        failed = [
            f"#{up.n} POST {up.created} PATCH {up.status} {up.body[:100]!r} {up.error}"
            for up in uploads
            if up.created != 201 or up.status != 204 or up.offset != str(SIZE) or up.error
        ]
        helper = Uploads(formation.nodes[0])
        if not failed and not any(t.is_alive() for t in threads):
            # Completed by the worker (its work horses' connections are sampled too).
            for up in uploads:
                helper.wait_completed(upload_id_of(up.url))
            time.sleep(1.0)  # RQ's bookkeeping after the last job
        completed = time.monotonic() - began
    finally:
        sampler.stop()
        sampler.client.close()

    peak = sampler.peak()
    names = {name for sample in sampler.samples for name in sample.names}
    owner = {name: formation.owner(name) for name in names}
    per_sample = sampler.by_owner(owner)
    own_peak: collections.Counter[str] = collections.Counter()
    for counts in per_sample:
        for process, count in counts.items():
            own_peak[process] = max(own_peak[process], count)
    at_peak = per_sample[sampler.samples.index(peak)]
    routed = {
        f"node{n}": formation.router.routed[node.port] for n, node in enumerate(formation.nodes)
    }
    print(
        f"\n{UPLOADS} uploads of {SIZE // MIB} MiB at {RATE // KIB} KiB/s through the router: "
        f"sent in {sent:.1f} s, completed in {completed:.1f} s; connections routed: {routed}"
    )
    print(
        f"peak Redis connections of the formation: {peak.formation} (maxclients {MAXCLIENTS}, "
        f"budget {FORMATION_BUDGET}) at {peak.at:.1f} s; the test's own {peak.own} not "
        f"counted; {len(sampler.samples)} samples every {SAMPLE_EVERY} s"
    )
    print("per process (CLIENT LIST): at the formation's peak / the process's own peak")
    for process in sorted(own_peak):
        held = sorted(n for n, o in owner.items() if o == process)
        print(f"  {at_peak[process]:3d} / {own_peak[process]:3d}  {process}  {held}")
    unnamed = [(at, conns) for at, conns in sampler.unnamed if len(conns) == own_peak[UNNAMED]]
    if unnamed:
        print(f"most connections without a name yet (at {unnamed[0][0]:.1f} s): {unnamed[0][1]}")

    # Redis counts the clients it turns away at maxclients. Over TLS a client never reads
    # Redis's "max number of clients reached": Redis writes it before the TLS handshake,
    # so redis-py sees the connection closed mid-handshake (UNEXPECTED_EOF, logged by the
    # app as "Redis unavailable"). Every process's log is searched for both.
    rejected = int(formation.check.info("stats")["rejected_connections"])
    refused = {
        proc: [line for line in log.splitlines() if any(m in line.lower() for m in REFUSED)]
        for proc, log in formation.logs().items()
    }
    refused = {proc: lines for proc, lines in refused.items() if lines}
    counts = {proc: len(lines) for proc, lines in refused.items()}
    print(f"Redis's rejected_connections: {rejected}; log lines of refusals: {counts}")

    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"uploads still running after 120 s: {stuck}"
    fivexx = [up.status for up in uploads if up.status >= 500]
    print(f"PATCH answers: {dict(collections.Counter(up.status for up in uploads))}")
    assert not fivexx, f"{len(fivexx)} PATCHes answered 5xx; {len(failed)} failed: {failed[:10]}"
    assert not failed, f"{len(failed)} uploads failed: {failed[:10]}"
    assert not sampler.errors, f"sampling Redis failed: {sampler.errors[:5]}"
    assert len(sampler.samples) >= 0.5 * completed / SAMPLE_EVERY, "too few samples"
    assert peak.formation <= MAXCLIENTS, f"the formation held {peak.formation} connections"
    assert rejected == 0, f"Redis turned {rejected} connections away at maxclients"
    assert not refused, f"Redis refused clients: { ({p: x[:2] for p, x in refused.items()}) }"

    # Each process within its budget, and every process of the formation seen.
    unknown = [process for process in own_peak if process.startswith("(unknown)")]
    assert not unknown, f"connections of no process of the formation: {unknown}"
    roles: dict[str, list[int]] = collections.defaultdict(list)
    for process, count in own_peak.items():
        roles[process.split()[0]].append(count)
    assert len(roles["web"]) == NODES * WEB_CONCURRENCY, own_peak
    assert max(roles["web"]) <= WEB_BUDGET, own_peak
    assert len(roles["worker"]) == 1 and roles["worker"][0] <= WORKER_BUDGET, own_peak
    assert len(roles["clock"]) == 1 and roles["clock"][0] <= CLOCK_BUDGET, own_peak
    assert all(routed.values()), f"a node got no connection: {routed}"

    # Every object exact (read back four at a time).
    def exact(up: Upload) -> str | None:
        key = helper.key(upload_id_of(up.url))
        got = helper.sha256(key)
        return None if got == (up.sha256, SIZE) else f"#{up.n} s3://{key}: {got}"

    with ThreadPoolExecutor(4) as pool:
        wrong = [w for w in pool.map(exact, uploads) if w]
    assert not wrong, f"{len(wrong)} objects differ from what was sent: {wrong[:5]}"
    formation.passed = True
