"""``flask rindle doctor``: is this node ready to take uploads? Each check says ok, warn
or fail, and for anything but ok what to do about it.

The checks talk to the real services with the app's own settings and clients: Redis
(reachable, version, an eviction policy that cannot drop rindle's keys, the clock), S3
(credentials, the bucket, a real multipart upload of one 5 MiB part that is aborted
again), the tail directory (writable, free space, on a local disk), the part and upload
size limits against S3's, and the processes around the web node (an RQ worker on
rindle's queue, RQ's scheduler, the ``rq cron`` clock).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import boto3
import redis
from rq import Queue, Worker
from rq.cron import CronScheduler
from rq.defaults import DEFAULT_CRON_SCHEDULER_TTL as CRON_TTL
from rq.scheduler import RQScheduler

from rindle import protocol
from rindle.config import (
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIB,
    MIN_PART_SIZE,
    redact_url,
)
from rindle.core import Rindle
from rindle.storage import (
    S3_ERRORS,
    MultipartGone,
    S3Storage,
    error_code,
    s3_client_for,
    tail_path,
)

OK, WARN, FAIL = "ok", "warn", "fail"
PROBE_PART = 5 * MIB  # S3's smallest non-final part: what every PATCH ships
SKEW_WARN, SKEW_FAIL = 1.0, 10.0  # seconds between this node's clock and Redis's
# Rindle's keys all carry a TTL, so volatile-* policies may evict them as well.
SAFE_POLICIES = ("noeviction",)
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "glusterfs", "ceph")


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # OK, WARN or FAIL
    detail: str
    fix: str = ""


Checker = Callable[[Rindle], Iterator[Check]]


def run(rindle: Rindle) -> list[Check]:
    """Every check, in order; a check that breaks is a failure of its own."""
    results: list[Check] = []
    for checker in CHECKERS:
        try:
            results.extend(checker(rindle))
        except Exception as exc:  # the doctor reports; it never dies of a check
            name = checker.__name__.removeprefix("check_").replace("_", " ")
            results.append(Check(name, FAIL, f"the check broke: {exc!r}", "see the error"))
    return results


# -- Redis ---------------------------------------------------------------------------


def check_redis(rindle: Rindle) -> Iterator[Check]:
    url = redact_url(rindle.settings.redis_url)
    client = rindle.redis
    try:
        info = client.info("server")
    except redis.RedisError as exc:
        yield Check(
            "redis",
            FAIL,
            f"cannot reach Redis at {url}: {exc}",
            "start Redis, or set REDIS_URL to the one rindle should use",
        )
        return
    version = str(info.get("redis_version", "?"))
    major_minor = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if major_minor and major_minor < (5, 0):
        yield Check(
            "redis", FAIL, f"Redis {version} at {url}", "use Redis 5.0 or newer (RQ 2 needs it)"
        )
    else:
        yield Check("redis", OK, f"Redis {version} at {url}")
    yield from _eviction(client)
    yield from _clock_skew(client)


def _eviction(client: redis.Redis) -> Iterator[Check]:
    try:
        config = client.config_get("maxmemory*")
    except redis.RedisError as exc:  # managed services often refuse CONFIG
        yield Check(
            "redis eviction",
            WARN,
            f"cannot read maxmemory-policy ({exc})",
            "make sure the provider's eviction policy is noeviction",
        )
        return
    policy = config.get("maxmemory-policy", "?")
    maxmemory = int(config.get("maxmemory", 0) or 0)
    if policy in SAFE_POLICIES:
        yield Check("redis eviction", OK, f"maxmemory-policy {policy}")
    elif maxmemory == 0:
        yield Check(
            "redis eviction",
            WARN,
            f"maxmemory-policy {policy}, no maxmemory yet: once one is set, Redis may "
            "evict uploads' records and leases (they all have a TTL)",
            "CONFIG SET maxmemory-policy noeviction (or the provider's setting)",
        )
    else:
        yield Check(
            "redis eviction",
            FAIL,
            f"maxmemory-policy {policy} with maxmemory {maxmemory}: Redis evicts rindle's "
            "keys when full (uploads vanish, leases break)",
            "CONFIG SET maxmemory-policy noeviction (or the provider's setting)",
        )


def _clock_skew(client: redis.Redis) -> Iterator[Check]:
    before = time.time()
    seconds, micros = client.time()
    after = time.time()
    skew = seconds + micros / 1e6 - (before + after) / 2
    detail = f"this node's clock is {abs(skew):.3f}s {'behind' if skew > 0 else 'ahead of'} Redis"
    fix = "run NTP (chrony, systemd-timesyncd) on this node and on Redis's host"
    if abs(skew) >= SKEW_FAIL:
        yield Check("clock", FAIL, detail + ": expiry and leases go wrong", fix)
    elif abs(skew) >= SKEW_WARN:
        yield Check("clock", WARN, detail, fix)
    else:
        yield Check("clock", OK, detail)


# -- S3 ------------------------------------------------------------------------------


def check_s3(rindle: Rindle) -> Iterator[Check]:
    settings = rindle.settings
    if boto3.session.Session().get_credentials() is None:
        yield Check(
            "s3",
            FAIL,
            "no S3 credentials found",
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or give the node a role)",
        )
        return
    where = settings.s3_endpoint or "AWS"
    style = "path-style" if settings.s3_endpoint else "virtual-hosted-style"
    s3 = probe_storage(rindle)
    try:
        s3.client.head_bucket(Bucket=settings.s3_bucket)
    except S3_ERRORS as exc:
        code = error_code(exc) if hasattr(exc, "response") else ""
        fix = {
            "404": f"create the bucket {settings.s3_bucket!r}, or set RINDLE_S3_BUCKET",
            "NoSuchBucket": f"create the bucket {settings.s3_bucket!r}, or set RINDLE_S3_BUCKET",
            "403": "the credentials may not use this bucket: check the key and its policy",
        }.get(code, "check AWS_ENDPOINT_URL_S3, the credentials and that S3 is up")
        yield Check("s3", FAIL, f"bucket {settings.s3_bucket!r} at {where} ({style}): {exc}", fix)
        return
    yield Check("s3", OK, f"bucket {settings.s3_bucket!r} at {where}, {style} addressing")
    if not settings.s3_endpoint and "." in settings.s3_bucket:
        yield Check(
            "s3 addressing",
            WARN,
            f"bucket {settings.s3_bucket!r} has dots: AWS's TLS certificates do not cover "
            "it in virtual-hosted-style URLs (presigned downloads fail)",
            "use a bucket name without dots",
        )
    yield _multipart_probe(rindle, s3)


def probe_storage(rindle: Rindle) -> S3Storage:
    """The app's bucket through a client of its own: the probe's calls (and failures)
    stay out of the metrics of the web processes, which may share this node's
    PROMETHEUS_MULTIPROC_DIR."""
    client = s3_client_for(rindle.settings.s3_endpoint, 2)
    return S3Storage(client, rindle.settings.s3_bucket)


def _multipart_probe(rindle: Rindle, s3: S3Storage) -> Check:
    """CreateMultipartUpload, one 5 MiB UploadPart, AbortMultipartUpload, under the
    prefix (the orphan sweep would abort anything left behind)."""
    settings = rindle.settings
    key = f"{settings.s3_prefix}.doctor/{secrets.token_hex(8)}"
    step = "CreateMultipartUpload"
    upload_id = ""
    try:
        upload_id = s3.create_multipart(key)
        step = "UploadPart"
        with tempfile.TemporaryFile() as body:
            body.write(os.urandom(PROBE_PART))
            body.seek(0)
            started = time.monotonic()
            s3.upload_part(key, upload_id, 1, body, PROBE_PART)
            seconds = time.monotonic() - started
        step = "AbortMultipartUpload"
        s3.abort_multipart(key, upload_id)
        upload_id = ""
    except (*S3_ERRORS, MultipartGone) as exc:
        return Check(
            "s3 multipart",
            FAIL,
            f"{step} of {key} failed: {exc}",
            "the credentials need s3:PutObject and s3:AbortMultipartUpload on the prefix; "
            "the store must support multipart uploads",
        )
    finally:
        if upload_id:
            with contextlib.suppress(*S3_ERRORS):
                s3.abort_multipart(key, upload_id)
    rate = PROBE_PART / MIB / max(seconds, 1e-6)
    return Check(
        "s3 multipart",
        OK,
        f"created, uploaded one 5 MiB part ({seconds:.2f}s, {rate:.1f} MiB/s) and aborted",
    )


# -- the tail directory ----------------------------------------------------------------


def check_tmp_dir(rindle: Rindle) -> Iterator[Check]:
    settings = rindle.settings
    tails = os.path.dirname(tail_path("x", settings.tmp_dir))
    try:
        with tempfile.NamedTemporaryFile(dir=tails, prefix=".doctor-") as probe:
            probe.write(b"rindle")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        yield Check(
            "tmp dir",
            FAIL,
            f"cannot write in {tails}: {exc}",
            "give this user a writable RINDLE_TMP_DIR on a local disk",
        )
        return
    free = shutil.disk_usage(tails).free
    # Each running PATCH holds up to two parts there.
    wanted = settings.min_free_disk + 2 * settings.part_size
    detail = f"{tails}: writable, {size(free)} free"
    if free < settings.min_free_disk:
        yield Check(
            "tmp dir",
            FAIL,
            detail + f", below RINDLE_MIN_FREE_DISK ({size(settings.min_free_disk)}): "
            "PATCHes are refused with 507",
            "free some space, or point RINDLE_TMP_DIR at a larger disk",
        )
    elif free < wanted:
        yield Check(
            "tmp dir",
            WARN,
            detail + f": room for few PATCHes (each holds up to 2 parts of "
            f"{size(settings.part_size)})",
            "free some space, or point RINDLE_TMP_DIR at a larger disk",
        )
    else:
        yield Check("tmp dir", OK, detail)
    fstype = filesystem_type(tails)
    if fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse."):
        yield Check(
            "tmp dir disk",
            WARN,
            f"{tails} is on {fstype}: tails are written and locked at every PATCH",
            "use a local disk for RINDLE_TMP_DIR",
        )
    elif settings.tail_store == "local":
        yield Check(
            "tmp dir disk",
            OK,
            f"{fstype or 'local'} disk; RINDLE_TAIL_STORE=local: a resume must reach this "
            "node while bytes are buffered (one web node, or sticky routing)",
        )
    else:
        yield Check("tmp dir disk", OK, f"{fstype or 'local'} disk; buffered bytes copied to S3")


def filesystem_type(path: str) -> str:
    """The type of the file system that holds ``path`` ("" where unknown)."""
    best, fstype = "", ""
    real = os.path.realpath(path)
    with contextlib.suppress(OSError), open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) < 3:
                continue
            point = fields[1].replace("\\040", " ")
            inside = real == point or real.startswith(point.rstrip("/") + "/")
            if inside and len(point) > len(best):
                best, fstype = point, fields[2]
    return fstype


# -- sizes -----------------------------------------------------------------------------


def check_sizes(rindle: Rindle) -> Iterator[Check]:
    settings = rindle.settings
    part, largest = settings.part_size, settings.max_size
    if not MIN_PART_SIZE <= part <= MAX_PART_SIZE:
        yield Check(
            "sizes",
            FAIL,
            f"RINDLE_TUS_PART_SIZE {part} is outside S3's 5 MiB..5 GiB",
            f"set RINDLE_TUS_PART_SIZE between {MIN_PART_SIZE} and {MAX_PART_SIZE}",
        )
    elif largest > MAX_OBJECT_SIZE:
        yield Check(
            "sizes",
            FAIL,
            f"RINDLE_TUS_MAX_SIZE {largest} is beyond S3's largest object (5 TiB)",
            f"set RINDLE_TUS_MAX_SIZE to {MAX_OBJECT_SIZE} or less",
        )
    else:
        needed = protocol.part_size_for(largest, part)
        yield Check(
            "sizes",
            OK,
            f"parts of {size(part)}; the largest upload ({size(largest)}) takes parts of "
            f"{size(needed)}, at most {MAX_PARTS} of them",
        )


def size(n: int) -> str:
    """``n`` bytes for a person: 8 MiB, 524.3 MiB, 5 TiB."""
    value, unit = float(n), "bytes"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{value:.1f}".removesuffix(".0") + f" {unit}"


# -- the processes around the web node ---------------------------------------------------


def check_workers(rindle: Rindle) -> Iterator[Check]:
    queue: Queue = rindle.jobs.queue
    try:
        workers = Worker.all(queue=queue)
        scheduler = bool(queue.connection.exists(RQScheduler.get_locking_key(queue.name)))
        clocks = CronScheduler.all(queue.connection, cleanup=False)
    except redis.RedisError as exc:
        yield Check("rq", FAIL, f"cannot read RQ's workers: {exc}", "fix Redis first")
        return
    command = f"rq worker --with-scheduler --worker-class rindle.worker.RindleWorker {queue.name}"
    if workers:
        names = ", ".join(sorted(w.name for w in workers)[:3])
        yield Check("rq worker", OK, f"{len(workers)} on queue {queue.name!r} ({names})")
    else:
        yield Check(
            "rq worker",
            FAIL,
            f"no RQ worker listens on queue {queue.name!r}: uploads are never assembled",
            f"run `{command}` (the Procfile's worker line)",
        )
    if scheduler:
        yield Check("rq scheduler", OK, f"a worker runs RQ's scheduler for {queue.name!r}")
    else:
        yield Check(
            "rq scheduler",
            FAIL,
            "no worker runs RQ's scheduler: failed jobs are never retried",
            "start the worker with --with-scheduler",
        )
    now = datetime.now(UTC)
    alive = [
        c for c in clocks if (beat := c.last_heartbeat) and (now - beat).total_seconds() < CRON_TTL
    ]
    if alive:
        yield Check("rq cron", OK, f"{len(alive)} clock(s) alive (expiry and orphan sweeps)")
    else:
        yield Check(
            "rq cron",
            FAIL,
            "no `rq cron` clock is alive: expired uploads and orphan parts are never swept",
            "run exactly one `rq cron workers/cron.py` (the Procfile's clock line)",
        )


def check_metrics(rindle: Rindle) -> Iterator[Check]:
    settings = rindle.settings
    if not settings.metrics:
        return
    if not settings.metrics_dir:
        yield Check(
            "metrics",
            WARN,
            "RINDLE_METRICS=1 without PROMETHEUS_MULTIPROC_DIR: each gunicorn worker counts "
            "alone, and a scrape sees one of them",
            "set PROMETHEUS_MULTIPROC_DIR to a directory of this node (gunicorn.conf.py "
            "empties it at start)",
        )
    elif not os.access(settings.metrics_dir, os.W_OK):
        yield Check(
            "metrics",
            FAIL,
            f"PROMETHEUS_MULTIPROC_DIR {settings.metrics_dir} is not writable",
            "make it a directory this user can write",
        )
    else:
        yield Check("metrics", OK, f"multiprocess mode in {settings.metrics_dir}")


CHECKERS: tuple[Checker, ...] = (
    check_redis,
    check_s3,
    check_tmp_dir,
    check_sizes,
    check_workers,
    check_metrics,
)
