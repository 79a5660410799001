#!/usr/bin/env python
"""Fault campaign: many tus uploads while web processes are killed at random moments.

    python bench/fault_campaign.py --kills 200
    python bench/fault_campaign.py --kills 50 --clients 6 --max-mib 40 --seed 7
    python bench/fault_campaign.py --nodes 3 --kills 200 --clients 6   # shared tail mode

Starts its own redis-server and SeaweedFS, gunicorn (the app) and an rq worker
(``devstack.Stack``, as the tests and ``scripts/run`` start them), all on free loopback
ports with data in a temp dir. ``--clients`` threads upload one file after another, of
random sizes (0 to ``--max-mib`` MiB, some empty, some tiny, most of several parts) in
random chunkings (one PATCH, or chunks from 256 KiB to 16 MiB, rarely a part size
multiple), half with tuspy and half with a raw ``requests`` tus client; each resumes
after any failure the tus way (HEAD, then PATCH from the server's offset), as a careful
client does.

Meanwhile the main thread SIGKILLs gunicorn (its whole process group: master and
workers) at random moments (``--min-gap`` to ``--max-gap`` seconds after it is up again)
and restarts it on the same port, until ``--kills`` kills are done. Then the clients
finish what they started, every upload must reach ``completed``, and every object in S3
is read back and compared by SHA-256 with the bytes that were sent.

The writer lease is at its floor (RINDLE_LEASE_SECONDS=5): a killed writer's lease lives
on until it expires, and until then HEAD and PATCH of that upload answer 423 (the clients
wait and retry). With the default 60 s the campaign would spend most of its time waiting.

With ``--nodes 3`` (issue #8) there are three web nodes (each a gunicorn + rq worker
with its own tmp dir and node id, sharing Redis and the bucket) in shared tail mode
(RINDLE_TAIL_STORE=s3), behind the random router of tests/router.py: every new
connection goes to a random node, as on Heroku, and since both clients open a connection
per request, nearly every resume lands on a node that did not buffer the bytes. Each
kill picks a random node and stops it with SIGTERM (``--term-share`` of the kills, half
by default; a deploy or Heroku's dyno cycling: its running PATCHes should keep what
they received and answer, and it gets ``--term-timeout`` seconds, 30 as on Heroku,
before the SIGKILL) or SIGKILL (a crash), then starts it again. The router sends new
connections to the other nodes meanwhile (a refused connect is retried elsewhere).

At the end, a maintenance pass runs what a deployment runs by hand or on a schedule
(``flask rindle reap-tails`` on every node, ``sweep`` and ``abort-orphans --grace 0``),
and what it could not clean up counts as a leak: tail files, shared tails under
``<prefix>.tails/``, open multipart uploads.

With ``--redis-faults N`` (issue #18) the app (web nodes and rq workers) reaches Redis
through a fault proxy, and N Redis faults are injected at random moments beside the
kills: connections reset, a stall, a restart on AOF (``--appendonly yes --appendfsync
everysec``, SIGTERM or SIGKILL), a failover to a replica whose replication was held back
just before (the promoted replica lacks the last writes; the old primary is gone). With
``--redis-wipes N`` a restart without persistence (every record gone: clients answered
404 start again). With ``--s3-faults N`` the app reaches S3 through an HTTP-aware fault
proxy that, N times for a few seconds, answers a random share of requests ``503
SlowDown`` or ``500 InternalError``, or resets them (see ``bench/campaign_faults.py``).

    python bench/fault_campaign.py --kills 10 --redis-faults 20 --s3-faults 20 \
        --nodes 3 --tail-store s3

Every answer that tells an offset (a PATCH's 204, a HEAD's 200) is watched: an upload
whose later HEAD reports less than an offset the server once acknowledged lost
acknowledged bytes (a rollback after a failover or an AOF restart).

Prints kills performed, uploads started and verified exact, uploads corrupt or lost,
``tus_tail_missing`` in the logs, what is left behind before and after the maintenance
pass, and what the clients met on the way; exits 1 if anything is corrupt or lost,
leaks, or (shared tail mode) any node logged ``tus_tail_missing``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import redis  # noqa: E402
import requests  # noqa: E402
from campaign_faults import RedisFaults, S3Faults  # noqa: E402  (beside this script)

from devstack import SeaweedS3, Stack, private_services, stack_env  # noqa: E402
from rindle.storage.shared_tail import TAILS_DIR  # noqa: E402
from tests.router import Router  # noqa: E402

MIB = 1024 * 1024
PART_SIZE = 5 * MIB
TUS = {"Tus-Resumable": "1.0.0"}
PATCH_HEADERS = {**TUS, "Content-Type": "application/offset+octet-stream"}
LEASE_SECONDS = 5
HTTP_TIMEOUT = (5, 120)  # connect, read
PREFIX = "campaign/"
BUCKET = "campaign"
TERM_TIMEOUT = 30.0  # seconds between SIGTERM and SIGKILL, as on Heroku
_client = threading.local()  # the upload a client thread works on (for the offset watch)


class Forgotten(Exception):
    """The server no longer knows the upload (404): its record is gone (a Redis that
    lost everything); a client starts again."""


def watch_offsets() -> None:
    """Record every offset the server acknowledges (HEAD 200, PATCH 204) for the upload
    the calling client thread works on, both clients alike (tuspy uses requests too)."""
    send = requests.Session.send

    def watched(session: requests.Session, request: requests.PreparedRequest, **kw):  # type: ignore[no-untyped-def]
        response = send(session, request, **kw)
        upload = getattr(_client, "upload", None)
        offset = response.headers.get("Upload-Offset")
        if upload is None or not upload.url or request.url != upload.url:
            return response
        if (request.method, response.status_code) in (("HEAD", 200), ("PATCH", 204)):
            if offset is not None:
                upload.acknowledge(int(offset))
        elif request.method in ("HEAD", "PATCH") and response.status_code == 404:
            upload.acknowledge(0)  # the record is gone: nothing acknowledged is left
        return response

    requests.Session.send = watched  # type: ignore[method-assign]


# --------------------------------------------------------------------------- uploads


def payload(seed: int, size: int) -> bytes:
    """Incompressible bytes, reproducible from the seed."""
    return hashlib.shake_256(f"campaign/{seed}".encode()).digest(size) if size else b""


@dataclass
class Upload:
    index: int
    size: int
    seed: int
    chunk: int | None  # None: the whole rest in one PATCH
    client: str  # "raw" or "tuspy"
    sha256: str = ""
    url: str = ""
    done: bool = False  # the client saw offset == length
    error: str = ""
    patches: int = 0
    resumes: int = 0
    events: Counter[str] = field(default_factory=Counter)
    acked: int = 0  # the largest offset the server acknowledged
    rolled_back: int = 0  # the most acknowledged bytes a later answer no longer had
    forgotten: list[str] = field(default_factory=list)  # URLs answered 404, started again

    def acknowledge(self, offset: int) -> None:
        """An answer told ``offset`` (0 for a 404: the record is gone)."""
        if offset < self.acked:
            self.rolled_back = max(self.rolled_back, self.acked - offset)
        self.acked = max(self.acked, offset)

    @property
    def upload_id(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[1]


@dataclass
class Stop:
    """One kill of a node's web process."""

    node: str
    signal: str  # "SIGTERM" or "SIGKILL"
    connections: int  # open to that node when it was signalled (router), else uploads active
    stopped_after: float  # seconds from the signal to the process's exit
    escalated: bool  # a SIGTERM that needed the SIGKILL (not gone within --term-timeout)
    back_after: float  # seconds from its exit to healthy again


@dataclass
class Leftovers:
    """What is left behind once every upload has ended: tail files on the nodes' disks (by
    the state of their upload), shared tails in S3, open multipart uploads (those an
    upload still references, and orphans that none does)."""

    tails: Counter[str]
    shared_tails: int
    referenced: int
    orphans: int

    @property
    def total(self) -> int:
        return sum(self.tails.values()) + self.shared_tails + self.referenced + self.orphans

    def describe(self) -> str:
        kinds = ", ".join(f"{n} of {state} uploads" for state, n in sorted(self.tails.items()))
        return (
            f"{sum(self.tails.values())} tail files{f' ({kinds})' if kinds else ''}; "
            f"{self.shared_tails} shared tails; open multipart uploads: {self.referenced} "
            f"of uploads that never completed, {self.orphans} orphans"
        )


class Campaign:
    """The uploading clients, the killer of the web processes and the final checks."""

    def __init__(
        self,
        args: argparse.Namespace,
        stacks: list[Stack],
        router: Router | None,
        redis_url: str,
        s3: SeaweedS3,
        redis_faults: RedisFaults | None = None,
        s3_faults: S3Faults | None = None,
    ) -> None:
        self.args = args
        self.redis_faults = redis_faults
        self.s3_faults = s3_faults
        self.workers_restarted = 0
        self.stacks = stacks
        self.router = router  # in front of the nodes when there are several
        self.files_url = router.files_url if router else stacks[0].files_url
        self.redis_url = redis_url
        self.s3 = s3
        self.stops: list[Stop] = []
        self.rng = random.Random(args.seed)
        self.lock = threading.Lock()
        self.uploads: list[Upload] = []
        self.events: Counter[str] = Counter()
        self.stop_new = threading.Event()
        self.active = 0  # uploads in progress

    # -- choosing ---------------------------------------------------------------------

    def next_upload(self, rng: random.Random) -> Upload:
        max_size = self.args.max_mib * MIB
        r = rng.random()
        if r < 0.05:
            size = 0
        elif r < 0.15:
            size = rng.randint(1, MIB)
        elif r < 0.25:  # around part boundaries
            size = rng.randint(1, max(1, max_size // PART_SIZE)) * PART_SIZE + rng.randint(-2, 2)
        else:
            size = rng.randint(1, max_size)
        size = max(0, min(size, max_size))
        c = rng.random()
        if c < 0.35:
            chunk = None
        elif c < 0.45:
            chunk = PART_SIZE * rng.randint(1, 2)
        else:
            chunk = rng.randint(256 * 1024, 16 * MIB)
        with self.lock:
            index = len(self.uploads)
            upload = Upload(
                index=index,
                size=size,
                seed=self.args.seed * 1_000_003 + index,
                chunk=chunk,
                client="tuspy" if rng.random() < 0.5 else "raw",
            )
            self.uploads.append(upload)
        return upload

    def note(self, upload: Upload, event: str) -> None:
        upload.events[event] += 1
        with self.lock:
            self.events[event] += 1

    # -- clients ----------------------------------------------------------------------

    def client_loop(self, number: int) -> None:
        rng = random.Random(self.args.seed * 7919 + number)
        while not self.stop_new.is_set():
            upload = self.next_upload(rng)
            data = payload(upload.seed, upload.size)
            upload.sha256 = hashlib.sha256(data).hexdigest()
            with self.lock:
                self.active += 1
            _client.upload = upload
            try:
                deadline = time.monotonic() + self.args.upload_timeout
                while True:
                    try:
                        if upload.client == "raw":
                            self.upload_raw(upload, data, deadline)
                        else:
                            self.upload_tuspy(upload, data, deadline)
                        break
                    except Forgotten:  # the record is gone: start again, as a client does
                        self.note(upload, "404: started again")
                        upload.forgotten.append(upload.url)
                        upload.url, upload.acked = "", 0
                        self.backoff(deadline, "404")
                upload.done = True
            except Exception as exc:
                upload.error = f"{type(exc).__name__}: {exc}"
                self.note(upload, "client gave up")
            finally:
                with self.lock:
                    self.active -= 1

    def backoff(self, deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up ({what})")
        time.sleep(0.2 + random.random() * 0.3)

    def create(self, upload: Upload, deadline: float) -> str:
        while True:
            try:
                r = requests.post(
                    self.files_url,
                    headers={**TUS, "Upload-Length": str(upload.size)},
                    timeout=HTTP_TIMEOUT,
                )
            except requests.RequestException as exc:
                self.note(upload, f"POST {type(exc).__name__}")
                self.backoff(deadline, "POST")
                continue
            if r.status_code == 201:
                return str(r.headers["Location"])
            self.note(upload, f"POST {r.status_code}")
            self.backoff(deadline, f"POST {r.status_code}")

    def head(self, upload: Upload, deadline: float) -> int:
        while True:
            try:
                r = requests.head(upload.url, headers=TUS, timeout=HTTP_TIMEOUT)
            except requests.RequestException as exc:
                self.note(upload, f"HEAD {type(exc).__name__}")
                self.backoff(deadline, "HEAD")
                continue
            if r.status_code == 200:
                return int(r.headers["Upload-Offset"])
            self.note(upload, f"HEAD {r.status_code}")
            if r.status_code == 404:
                raise Forgotten(upload.url)
            if r.status_code not in (423, 503):
                raise RuntimeError(f"HEAD answered {r.status_code}")
            self.backoff(deadline, f"HEAD {r.status_code}")

    def upload_raw(self, upload: Upload, data: bytes, deadline: float) -> None:
        upload.url = self.create(upload, deadline)
        offset = 0 if upload.size else self.head(upload, deadline)
        while offset < upload.size:
            end = upload.size if upload.chunk is None else min(upload.size, offset + upload.chunk)
            upload.patches += 1
            try:
                r = requests.patch(
                    upload.url,
                    data=data[offset:end],
                    headers={**PATCH_HEADERS, "Upload-Offset": str(offset)},
                    timeout=HTTP_TIMEOUT,
                )
            except requests.RequestException as exc:
                self.note(upload, f"PATCH {type(exc).__name__}")
                upload.resumes += 1
                offset = self.head(upload, deadline)
                continue
            if r.status_code == 204:
                new = int(r.headers["Upload-Offset"])
                if not offset <= new <= end:
                    raise RuntimeError(f"PATCH {offset}..{end} answered offset {new}")
                if new < end:
                    self.note(upload, "PATCH 204 short")
                offset = new
                continue
            self.note(upload, f"PATCH {r.status_code}")
            if r.status_code == 404:
                raise Forgotten(upload.url)
            if r.status_code not in (409, 423) and r.status_code < 500:
                raise RuntimeError(f"PATCH answered {r.status_code}: {r.text[:200]}")
            if r.status_code == 500 and "tus_tail_missing" in r.text:
                raise RuntimeError("tus_tail_missing: the buffered bytes were lost")
            if time.monotonic() > deadline:
                raise TimeoutError(f"gave up (PATCH {r.status_code})")
            upload.resumes += 1
            if r.status_code != 409:
                time.sleep(0.2)
            offset = self.head(upload, deadline)

    def upload_tuspy(self, upload: Upload, data: bytes, deadline: float) -> None:
        from tusclient import client as tus
        from tusclient.exceptions import TusCommunicationError, TusUploadFailed

        chunk = upload.chunk or max(upload.size, 1)
        uploader = None
        while True:
            try:
                if uploader is None:
                    if upload.url:  # from its URL storage, as tuspy resumes: HEAD first
                        upload.resumes += 1
                        uploader = tus.TusClient(self.files_url).uploader(
                            file_stream=io.BytesIO(data), url=upload.url, chunk_size=chunk
                        )
                    else:
                        uploader = tus.TusClient(self.files_url).uploader(
                            file_stream=io.BytesIO(data), chunk_size=chunk
                        )
                uploader.upload()
                if uploader.url:
                    upload.url = uploader.url
                if uploader.offset != upload.size:
                    raise RuntimeError(f"tuspy stopped at {uploader.offset}")
                return
            except (TusCommunicationError, TusUploadFailed, requests.RequestException) as exc:
                status = getattr(exc, "status_code", None)
                self.note(upload, f"tuspy {status or 'no answer'}")
                if uploader is not None and uploader.url:
                    upload.url = uploader.url
                if status == 404 and upload.url:
                    raise Forgotten(upload.url) from exc
                uploader = None
                self.backoff(deadline, f"tuspy {status}")
            except (OSError, ValueError) as exc:  # a connection dropped inside tuspy
                self.note(upload, f"tuspy {type(exc).__name__}")
                if uploader is not None and uploader.url:
                    upload.url = uploader.url
                uploader = None
                self.backoff(deadline, "tuspy")

    # -- the killer ---------------------------------------------------------------------

    def kill_loop(self) -> None:
        rng = self.rng
        while len(self.stops) < self.args.kills:
            time.sleep(rng.uniform(self.args.min_gap, self.args.max_gap))
            self.stops.append(self.kill_one(rng))
            if len(self.stops) % 20 == 0:
                done = sum(u.done for u in self.uploads)
                print(
                    f"  {len(self.stops)} kills, {len(self.uploads)} uploads started, {done} done",
                    flush=True,
                )

    def fault_loop(self, kind: str, count: int, inject) -> None:  # type: ignore[no-untyped-def]
        """Inject ``count`` faults (``inject()``, which returns the fault's kind) at random
        moments; rq workers that died meanwhile are started again (and counted)."""
        rng = random.Random(f"{self.args.seed}/{kind}")
        for done in range(1, count + 1):
            time.sleep(rng.uniform(self.args.min_gap, self.args.max_gap))
            try:
                what = inject()
            except Exception as exc:
                print(f"  {kind} fault failed: {exc!r}", flush=True)
                continue
            self.revive_workers()
            if done % 10 == 0:
                print(f"  {done} {kind} faults (last: {what})", flush=True)

    def revive_workers(self) -> None:
        with self.lock:
            for stack in self.stacks:
                if stack.worker is not None and not stack.worker.alive():
                    self.workers_restarted += 1
                    with contextlib.suppress(Exception):
                        stack.restart_worker()

    def kill_one(self, rng: random.Random) -> Stop:
        """Stop a random node's web process (gunicorn's whole group: master and workers)
        with SIGTERM or SIGKILL, and start it again on the same port."""
        stack = rng.choice(self.stacks)
        term = rng.random() < self.args.term_share
        if self.router is not None:
            connections = self.router.open_to(stack.port)
        else:
            with self.lock:
                connections = self.active
        web = stack.web
        assert web is not None
        began = time.monotonic()
        # SIGTERM to the master, then SIGKILL to the group if still there at the timeout.
        code = web.stop(timeout=self.args.term_timeout) if term else web.kill()
        stopped = time.monotonic()
        stack.restart_web()  # the old process is gone already: this only starts it again
        return Stop(
            node=stack.env["RINDLE_NODE_ID"],
            signal="SIGTERM" if term else "SIGKILL",
            connections=connections,
            stopped_after=stopped - began,
            escalated=term and code == -signal.SIGKILL,
            back_after=time.monotonic() - stopped,
        )

    # -- the end ------------------------------------------------------------------------

    def verify(self) -> tuple[list[Upload], list[tuple[Upload, str]], list[tuple[Upload, str]]]:
        """(exact, corrupt, lost): every upload the server created must be completed and
        its object must be the bytes sent."""
        client = redis.Redis.from_url(self.redis_url, decode_responses=True)
        s3 = self.s3.client()
        deadline = time.monotonic() + self.args.completion_timeout
        exact: list[Upload] = []
        corrupt: list[tuple[Upload, str]] = []
        lost: list[tuple[Upload, str]] = []
        for upload in self.uploads:
            if not upload.url:
                continue  # never created: the server acknowledged nothing
            key = f"rindle:upload:{{{upload.upload_id}}}"
            state = client.hget(key, "state")
            while state != "completed" and time.monotonic() < deadline:
                if state == "failed":
                    break
                time.sleep(0.1)
                state = client.hget(key, "state")
            if not upload.done:
                self.last_head(upload)
                lost.append((upload, f"the client gave up: {upload.error}"))
                continue
            if state is None and upload.size == 0:
                state = "completed"  # made at creation: the object tells, not the record
            if state is None:
                # The record is gone (a Redis that lost it): the object, if it was made
                # before, is checked below; without one the upload is lost.
                try:
                    s3.head_object(Bucket=BUCKET, Key=PREFIX + upload.upload_id)
                    state = "completed"
                except Exception:
                    self.last_head(upload)
                    lost.append((upload, "record gone (404) and no object"))
                    continue
            if state != "completed":
                why = f"state {state!r}, not completed"
                if state == "assembling" and not client.exists(
                    f"rq:job:rindle-complete-{upload.upload_id}"
                ):
                    offset = client.hget(key, "offset")
                    why += (
                        f" (offset {offset} = length, every part in Redis, but no completion"
                        " job was ever enqueued: the web process died between the final"
                        " commit and the enqueue)"
                    )
                self.last_head(upload)
                lost.append((upload, why))
                continue
            try:
                body = s3.get_object(Bucket=BUCKET, Key=PREFIX + upload.upload_id)["Body"]
            except Exception as exc:
                lost.append((upload, f"no object: {exc}"))
                continue
            digest, size = hashlib.sha256(), 0
            for piece in iter(lambda b=body: b.read(MIB), b""):
                digest.update(piece)
                size += len(piece)
            if size != upload.size or digest.hexdigest() != upload.sha256:
                corrupt.append((upload, f"{size} bytes, sha256 {digest.hexdigest()[:16]}"))
            else:
                exact.append(upload)
        client.close()
        return exact, corrupt, lost

    def last_head(self, upload: Upload) -> None:
        """A last HEAD of an upload that did not end as an object: does the server still
        hold what it acknowledged (see ``watch_offsets``)?"""
        _client.upload = upload
        with contextlib.suppress(requests.RequestException):
            requests.head(upload.url, headers=TUS, timeout=HTTP_TIMEOUT)

    def leftovers(self) -> Leftovers:
        """Tail files on the nodes' disks (by the state of their upload: a kill after the
        last bytes were shipped leaves one for the tail reaper), shared tails in S3, and
        open multipart uploads that an upload references (one that never completed) or
        that none does (orphans: created, then the process died before their id was
        saved; the orphan sweep aborts them after RINDLE_ORPHAN_GRACE)."""
        from rindle.storage import upload_id_from_tail

        client = redis.Redis.from_url(self.redis_url, decode_responses=True)
        tails: Counter[str] = Counter()
        for stack in self.stacks:
            for path in (stack.tmp_dir / "tus").glob("*.tail"):
                upload_id = upload_id_from_tail(str(path), str(stack.tmp_dir))
                state = upload_id and client.hget(f"rindle:upload:{{{upload_id}}}", "state")
                tails[state or "unknown"] += 1
        s3 = self.s3.client()
        shared = 0
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=PREFIX + TAILS_DIR
        ):
            shared += len(page.get("Contents", []))
        referenced = orphans = 0
        for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=BUCKET):
            for item in page.get("Uploads", []):
                upload_id = item["Key"][len(PREFIX) :]
                saved = client.hget(f"rindle:upload:{{{upload_id}}}", "upload_id")
                if saved == item["UploadId"]:
                    referenced += 1
                else:
                    orphans += 1
        client.close()
        return Leftovers(tails, shared, referenced, orphans)

    def maintenance_pass(self) -> list[str]:
        """What a deployment runs by hand (or on its schedule): each node reaps its own
        tails, then the expiry sweep and the orphan sweep (grace 0: nothing is being
        written any more) run once. Returns what each command printed."""
        commands = [(stack, ["reap-tails"]) for stack in self.stacks]
        commands += [
            (self.stacks[0], ["sweep"]),
            (self.stacks[0], ["abort-orphans", "--grace", "0"]),
        ]
        said = []
        for stack, command in commands:
            result = subprocess.run(
                [sys.executable, "-m", "flask", "--app", "app", "rindle", *command],
                cwd=REPO_ROOT,
                env=stack.env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            out = (result.stdout.strip().splitlines() or [result.stderr.strip()[-300:]])[-1]
            said.append(f"{stack.env['RINDLE_NODE_ID']}: {out}")
        return said


def log_lines(path: Path | None, needle: str) -> int:
    try:
        return path.read_text(errors="replace").count(needle) if path else 0
    except FileNotFoundError:
        return 0


def campaign_settings(
    redis_url: str, s3: SeaweedS3, root: Path, node: str, tail_store: str
) -> dict[str, str]:
    """The app's settings for one node: 5 MiB parts, the writer lease at its floor, its
    own tmp dir and node id."""
    return {
        "REDIS_URL": redis_url,
        **s3.env(bucket=BUCKET),
        "RINDLE_S3_PREFIX": PREFIX,
        "RINDLE_TMP_DIR": str(root / "tails"),
        "RINDLE_TUS_PART_SIZE": str(PART_SIZE),
        "RINDLE_NODE_ID": node,
        "RINDLE_LEASE_SECONDS": str(LEASE_SECONDS),
        "RINDLE_TAIL_STORE": tail_store,
    }


def run(args: argparse.Namespace, campaign: Campaign, started: float) -> int:
    """Upload while killing, then verify and print the report; 1 if anything is lost,
    corrupt or leaked (or, in shared tail mode, any tus_tail_missing)."""
    clients = [
        threading.Thread(target=campaign.client_loop, args=(n,), daemon=True)
        for n in range(args.clients)
    ]
    for thread in clients:
        thread.start()
    loops = []
    if campaign.redis_faults is not None:
        faults = campaign.redis_faults
        # The wipes among the other faults, at random places.
        kinds: list[str | None] = ["wipe"] * args.redis_wipes + [None] * args.redis_faults
        random.Random(args.seed).shuffle(kinds)
        loops.append(("redis", len(kinds), lambda: faults.inject(kinds.pop())))
    if campaign.s3_faults is not None:
        loops.append(("s3", args.s3_faults, campaign.s3_faults.inject))
    threads = [
        threading.Thread(target=campaign.fault_loop, args=loop, daemon=True) for loop in loops
    ]
    for thread in threads:
        thread.start()
    campaign.kill_loop()
    for thread in threads:
        thread.join()
    if campaign.redis_faults is not None:
        campaign.redis_faults.heal()
    if campaign.s3_faults is not None:
        campaign.s3_faults.proxy.heal()
    campaign.revive_workers()
    kill_phase = time.monotonic() - started
    campaign.stop_new.set()
    for thread in clients:
        thread.join(args.upload_timeout)
    exact, corrupt, lost = campaign.verify()
    before = campaign.leftovers()
    maintenance = campaign.maintenance_pass()
    after = campaign.leftovers()
    elapsed = time.monotonic() - started
    report(args, campaign, exact, corrupt, lost, before, maintenance, after, elapsed, kill_phase)
    missing = sum(
        log_lines(s.web.log_path if s.web else None, "tus_tail_missing") for s in campaign.stacks
    )
    shared_mode = args.tail_store == "s3"
    rolled_back = any(u.rolled_back for u in campaign.uploads)
    return 1 if corrupt or lost or after.total or rolled_back or (shared_mode and missing) else 0


def average(values: list[float]) -> float:
    return sum(values) / max(1, len(values))


def report(
    args: argparse.Namespace,
    campaign: Campaign,
    exact: list[Upload],
    corrupt: list[tuple[Upload, str]],
    lost: list[tuple[Upload, str]],
    before: Leftovers,
    maintenance: list[str],
    after: Leftovers,
    elapsed: float,
    kill_phase: float,
) -> None:
    created = [u for u in campaign.uploads if u.url]
    sent = sum(u.size for u in created)
    stops = campaign.stops
    terms = [s for s in stops if s.signal == "SIGTERM"]
    kills = [s for s in stops if s.signal == "SIGKILL"]
    where = (
        f"{len(campaign.stacks)} nodes behind a random router, tail store {args.tail_store}"
        if campaign.router
        else f"one node, tail store {args.tail_store}"
    )
    print()
    print(f"duration: {elapsed:.0f} s ({kill_phase:.0f} s of kills); {where}")
    print(
        f"kills performed: {len(stops)} ({len(terms)} SIGTERM, {len(kills)} SIGKILL; "
        f"gunicorn master and workers; {sum(s.connections > 0 for s in stops)} with "
        f"{'connections open to the node' if campaign.router else 'uploads in progress'})"
    )
    if terms:
        print(
            f"  SIGTERM: exited after {average([s.stopped_after for s in terms]):.2f} s on "
            f"average (max {max(s.stopped_after for s in terms):.2f} s); "
            f"{sum(s.escalated for s in terms)} still running after {args.term_timeout:.0f} s "
            "and SIGKILLed"
        )
    print(f"  back up in {average([s.back_after for s in stops]):.2f} s on average")
    per_node = Counter(s.node for s in stops)
    print(f"  per node: {', '.join(f'{n} x{c}' for n, c in sorted(per_node.items()))}")
    print(
        f"uploads: {len(campaign.uploads)} started, {len(created)} created "
        f"({sent / MIB:.0f} MiB), "
        f"{sum(u.client == 'tuspy' for u in created)} by tuspy, "
        f"{sum(u.client == 'raw' for u in created)} raw; "
        f"{sum(u.resumes for u in created)} resumes"
    )
    if campaign.redis_faults is not None:
        rf = campaign.redis_faults
        kinds = ", ".join(f"{k} x{v}" for k, v in sorted(rf.injected.items()))
        print(f"redis faults injected: {sum(rf.injected.values())} ({kinds})")
        for note in rf.notes:
            print(f"  {note}")
    if campaign.s3_faults is not None:
        sf = campaign.s3_faults
        kinds = ", ".join(f"{k} x{v}" for k, v in sorted(sf.injected.items()))
        hit = ", ".join(f"{k} x{v}" for k, v in sorted(sf.requests_hit.items()))
        print(
            f"s3 faults injected: {sum(sf.injected.values())} bursts ({kinds}); "
            f"S3 requests hit: {hit or 'none'}"
        )
    if campaign.workers_restarted:
        print(f"rq workers found dead and started again: {campaign.workers_restarted}")
    tail_missing = [(u, why) for u, why in lost if "tus_tail_missing" in why]
    never = [(u, why) for u, why in lost if "tus_tail_missing" not in why]
    forgotten = [u for u in campaign.uploads if u.forgotten]
    rolled = [u for u in campaign.uploads if u.rolled_back]
    print(f"uploads verified exact: {len(exact)}")
    print(f"uploads corrupt: {len(corrupt)}")
    print(
        f"uploads stuck: {len(lost)} ({len(tail_missing)} tus_tail_missing, "
        f"{len(never)} never completed)"
    )
    print(
        f"uploads forgotten by the server (404, started again): {len(forgotten)} "
        f"({sum(len(u.forgotten) for u in forgotten)} times)"
    )
    print(
        f"acknowledged bytes lost (a later HEAD below an acknowledged offset): "
        f"{sum(u.rolled_back for u in rolled)} bytes in {len(rolled)} uploads"
    )
    for upload in rolled:
        print(
            f"  ROLLBACK #{upload.index} {upload.url}: {upload.rolled_back} bytes "
            f"(acknowledged up to {upload.acked})"
        )
    for upload, why in corrupt:
        print(f"  CORRUPT #{upload.index} {upload.url} size {upload.size}: {why}")
    for upload, why in lost:
        print(f"  LOST #{upload.index} {upload.url} size {upload.size}: {why}")
    events = ", ".join(f"{k} x{v}" for k, v in sorted(campaign.events.items()))
    print(f"what the clients met: {events or 'nothing'}")
    if campaign.router is not None:
        routed = ", ".join(
            f"{s.env['RINDLE_NODE_ID']} {campaign.router.routed[s.port]}" for s in campaign.stacks
        )
        print(
            f"router: {campaign.router.accepted} connections ({routed}); "
            f"{campaign.router.failovers} connects refused by a stopped node and sent elsewhere"
        )
    logs = [s.web.log_path if s.web else None for s in campaign.stacks]
    worker_logs = [s.worker.log_path if s.worker else None for s in campaign.stacks]
    print(
        f"server logs: {sum(log_lines(p, ' ERROR ') for p in logs)} ERROR lines, "
        f"tus_tail_missing: {sum(log_lines(p, 'tus_tail_missing') for p in logs)}, "
        f"{sum(log_lines(p, 'Traceback') for p in logs)} tracebacks, "
        f"{sum(log_lines(p, 'fetched from the shared tail') for p in logs)} resumes from a "
        f"shared tail, {sum(log_lines(p, 'graceful stop (SIGTERM)') for p in logs)} graceful "
        f"stops logged; workers: {sum(log_lines(p, 'Traceback') for p in worker_logs)} "
        "tracebacks"
    )
    codes = (
        "redis_unavailable",
        "storage_unavailable",
        "storage_error",
        "conflict",
        "upload_locked",
        "not_found",
        "gone",
    )
    found = [(code, sum(log_lines(p, f": {code} (") for p in logs)) for code in codes]
    print(
        "PATCH outcomes logged: "
        + ", ".join(f"{code} x{n}" for code, n in found if n)
        + f"; 'redis unavailable' lines: {sum(log_lines(p, 'redis unavailable') for p in logs)}"
        f", 'S3 request failed' lines: {sum(log_lines(p, 'S3 request failed') for p in logs)}"
        f"; workers: {sum(log_lines(p, ' ERROR ') for p in worker_logs)} ERROR lines"
    )
    print(f"left behind: {before.describe()}")
    print(f"maintenance pass: {'; '.join(maintenance)}")
    print(f"leaks after the maintenance pass: {after.describe()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=200, help="kills of a web process (200)")
    parser.add_argument("--nodes", type=int, default=1, help="web nodes (1; more: a router)")
    parser.add_argument(
        "--tail-store",
        choices=("local", "s3"),
        default=None,
        help="RINDLE_TAIL_STORE (local for one node, s3 for several)",
    )
    parser.add_argument(
        "--term-share",
        type=float,
        default=None,
        help="share of kills that are SIGTERM, not SIGKILL (0 for one node, 0.5 for several)",
    )
    parser.add_argument(
        "--term-timeout", type=float, default=TERM_TIMEOUT, help="SIGTERM to SIGKILL (30 s)"
    )
    parser.add_argument("--clients", type=int, default=4, help="concurrent uploaders (4)")
    parser.add_argument("--max-mib", type=int, default=40, help="largest upload, MiB (40)")
    parser.add_argument("--min-gap", type=float, default=0.3, help="seconds between kills")
    parser.add_argument("--max-gap", type=float, default=2.0, help="seconds between kills")
    parser.add_argument("--seed", type=int, default=None, help="random seed (new each run)")
    parser.add_argument("--upload-timeout", type=float, default=600, help="per upload (s)")
    parser.add_argument("--completion-timeout", type=float, default=180, help="at the end (s)")
    parser.add_argument(
        "--redis-faults", type=int, default=0, help="Redis faults (reset, stall, restart, failover)"
    )
    parser.add_argument(
        "--redis-wipes", type=int, default=0, help="Redis restarts without persistence"
    )
    parser.add_argument(
        "--s3-faults", type=int, default=0, help="S3 bursts (503 SlowDown, 500, resets)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the data dir and logs")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)
    if args.tail_store is None:
        args.tail_store = "s3" if args.nodes > 1 else "local"
    if args.term_share is None:
        args.term_share = 0.5 if args.nodes > 1 else 0.0
    socket.setdefaulttimeout(180)  # tuspy sets no timeouts: never hang forever
    watch_offsets()

    root = Path(tempfile.mkdtemp(prefix="rindle-campaign-"))
    print(
        f"fault campaign: seed {args.seed}, {args.kills} kills "
        f"({args.term_share:.0%} SIGTERM), {args.nodes} node(s), tail store "
        f"{args.tail_store}, {args.clients} clients, uploads 0..{args.max_mib} MiB, kill every "
        f"{args.min_gap}..{args.max_gap} s, lease {LEASE_SECONDS} s; logs in {root}",
        flush=True,
    )
    started = time.monotonic()
    code = 2
    try:
        with contextlib.ExitStack() as running:
            redis_server, s3 = running.enter_context(private_services(root, bucket=BUCKET))
            redis_url, redis_faults, s3_faults = redis_server.url, None, None
            if args.redis_faults or args.redis_wipes:
                redis_faults = RedisFaults(root, args.seed)
                running.callback(redis_faults.stop)
                redis_url = redis_faults.url
            if args.s3_faults:
                endpoint = urlsplit(s3.endpoint)
                assert endpoint.hostname and endpoint.port
                s3_faults = S3Faults((endpoint.hostname, endpoint.port), args.seed)
                running.callback(s3_faults.stop)
            stacks = []
            for n in range(args.nodes):
                node = f"node{n}" if args.nodes > 1 else "campaign"
                home = root / node if args.nodes > 1 else root
                settings = campaign_settings(redis_url, s3, home, node, args.tail_store)
                if s3_faults is not None:
                    settings["AWS_ENDPOINT_URL_S3"] = s3_faults.proxy.rewrite(s3.endpoint)
                stacks.append(running.enter_context(Stack(stack_env(settings), log_dir=home)))
            router = None
            if args.nodes > 1:
                ports = [stack.port for stack in stacks]
                router = running.enter_context(Router(ports, seed=args.seed, name="campaign"))
            campaign = Campaign(args, stacks, router, redis_url, s3, redis_faults, s3_faults)
            code = run(args, campaign, started)
    except KeyboardInterrupt:
        print("interrupted")
        code = 130
    except Exception:
        traceback.print_exc()
    finally:
        if args.keep or code not in (0, 130):
            print(f"data and logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return code


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
