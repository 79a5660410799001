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
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import boto3
import redis
from redis.sentinel import MasterNotFoundError
from rq import Queue, Worker
from rq.cron import CronScheduler
from rq.defaults import DEFAULT_CRON_SCHEDULER_TTL as CRON_TTL
from rq.scheduler import RQScheduler

from rindle import protocol, redis_client
from rindle.config import (
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIB,
    MIN_PART_SIZE,
    Settings,
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


def run(rindle: Rindle, release: bool = False) -> list[Check]:
    """Every check, in order; a check that breaks is a failure of its own. ``release``:
    the quick ones a platform's release phase runs before a deploy goes live (Redis,
    the bucket writable with a small object, the sizes), without the 5 MiB multipart
    probe and without the worker checks (none may run yet on a first deploy)."""
    results: list[Check] = []
    for checker in RELEASE_CHECKERS if release else CHECKERS:
        try:
            results.extend(checker(rindle))
        except Exception as exc:  # the doctor reports; it never dies of a check
            name = checker.__name__.removeprefix("check_").replace("_", " ")
            results.append(Check(name, FAIL, f"the check broke: {exc!r}", "see the error"))
    return results


# -- Redis ---------------------------------------------------------------------------


def check_redis(rindle: Rindle) -> Iterator[Check]:
    settings = rindle.settings
    url = redact_url(settings.redis_url)
    where = redis_where(settings)
    # A client of its own: a failure is seen at once (not after the pool's wait) and the
    # probe's connections are closed again.
    client = redis_client.private_client(settings, decode=True, size=1)
    try:
        try:
            info = client.info("server")
        except redis.RedisError as exc:
            detail, fix = redis_failure(exc, settings)
            yield Check("redis", FAIL, f"{detail} ({where}, REDIS_URL={url})", fix)
            return
        version = str(info.get("redis_version", "?"))
        major_minor = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
        tls = " over TLS" if redis_client.target(settings).tls else ""
        if major_minor and major_minor < (5, 0):
            yield Check(
                "redis", FAIL, f"Redis {version} at {url}", "use Redis 5.0 or newer (RQ 2 needs it)"
            )
        else:
            yield Check("redis", OK, f"Redis {version} at {url}{tls}")
        yield from _eviction(client)
        yield from _clock_skew(client)
        yield from _connections(client, settings)
    finally:
        client.close()


def redis_where(settings: Settings) -> str:
    """host:port of the primary, or the sentinels that name it (no secrets)."""
    if settings.redis_sentinels:
        hosts = ",".join(f"{h}:{p}" for h, p in settings.redis_sentinels)
        return f"primary {settings.redis_sentinel_master!r} via sentinels {hosts}"
    parts = urlsplit(settings.redis_url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"


TLS_FIX = (
    "on Heroku (Key-Value Store, self-signed certificate) set RINDLE_REDIS_SSL_CERT_REQS=none; "
    "for a private CA set RINDLE_REDIS_SSL_CA_CERTS to its PEM bundle file"
)


def redis_failure(exc: BaseException, settings: Settings) -> tuple[str, str]:
    """What failed when connecting to Redis, and the fix: (detail, fix). Secrets are
    never in either (redis-py's messages name host and port, never the password)."""
    where = redis_where(settings)
    text = str(exc)
    low = text.lower()
    chain = [exc, exc.__cause__, exc.__context__]
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in chain) or (
        "certificate verify failed" in low
    ):
        reason = text.split("certificate verify failed:")[-1].split("(_ssl")[0].strip(" :")
        return (
            f"TLS verification of Redis's certificate failed ({reason or text})",
            TLS_FIX,
        )
    if isinstance(exc, redis.AuthenticationError) or any(
        word in low for word in ("noauth", "wrongpass", "invalid password", "invalid username")
    ):
        if "noauth" in low or "authentication required" in low:
            return (
                "Redis requires a password and REDIS_URL gives none (NOAUTH)",
                "put the password in REDIS_URL: redis[s]://:<password>@host:port/0",
            )
        if "without any password configured" in low:
            return (
                "REDIS_URL gives a password but this Redis has none",
                "remove the password from REDIS_URL, or check that it names the right Redis",
            )
        return (
            "Redis refused the password in REDIS_URL (wrong password or user)",
            "set REDIS_URL's password to the server's (on Heroku the add-on sets REDIS_URL: "
            "do not edit it, and re-read it after a credential rotation)",
        )
    if isinstance(exc, redis.TimeoutError) or "timed out" in low:
        return (
            f"no answer from Redis within {redis_client.CONNECT_TIMEOUT:.0f}s: {text}",
            f"check that {where} is reachable from this node (firewall, security group, "
            "region), and that Redis is not overloaded",
        )
    if any(e is not None and "ssl" in type(e).__name__.lower() for e in chain) or (
        "ssl" in low and "error" in low
    ):
        return (
            f"TLS handshake with Redis failed: {text}",
            "use rediss:// only for a TLS port and redis:// for a plain one; " + TLS_FIX,
        )
    if "max number of clients" in low:
        return (
            "Redis refused the connection: its maxclients is reached",
            "lower RINDLE_REDIS_CONNECTIONS or the number of processes, or take a larger "
            "plan (README: Sizing Redis connections)",
        )
    if any(m in low for m in ("name or service not known", "nodename nor servname")) or any(
        m in low for m in ("temporary failure in name resolution", "error -2 ", "error -3 ")
    ):
        return (
            f"the host name of REDIS_URL does not resolve (DNS): {text}",
            "check the host in REDIS_URL (on Heroku the add-on sets it)",
        )
    if "refused" in low or "error 111" in low:
        return (
            f"connection refused at {where}: nothing listens there",
            "start Redis, or set REDIS_URL to the one rindle should use",
        )
    if isinstance(exc, MasterNotFoundError):
        return (
            f"no sentinel knows a primary {settings.redis_sentinel_master!r}: {text}",
            "check RINDLE_REDIS_SENTINELS (<primary name>@host:port,...) against the "
            "sentinels' `sentinel monitor` lines",
        )
    if "closed by server" in low or "reset by peer" in low:
        return (
            f"Redis closed the connection: {text}",
            "a TLS-only Redis needs rediss:// in REDIS_URL; else see the server's log",
        )
    return f"cannot reach Redis: {text}", "start Redis, or set REDIS_URL to the one to use"


def _connections(client: redis.Redis, settings: Settings) -> Iterator[Check]:
    """Whether rindle's processes fit in Redis's client limit at their budgets: those
    connected now (by the names their connections carry), at least this node's
    WEB_CONCURRENCY web processes, one worker and one clock."""
    info = client.info("clients")
    connected = int(info.get("connected_clients", 0))
    limit = info.get("maxclients")
    if limit is None:
        try:
            limit = client.config_get("maxclients").get("maxclients")
        except redis.RedisError as exc:  # managed Redis often refuses CONFIG
            yield Check(
                "redis connections",
                WARN,
                f"{connected} clients connected; Redis does not tell its maxclients ({exc})",
                "look up your plan's connection limit and compare it with the README's "
                "sizing table (Sizing Redis connections)",
            )
            return
    maxclients = int(limit)
    seen: dict[str, set[str]] = {role: set() for role in redis_client.ROLES}
    mine = 0
    with contextlib.suppress(redis.RedisError):
        for entry in client.client_list():
            _, role, process = _name_parts(str(entry.get("name", "")))
            if role in seen:
                seen[role].add(process)
                mine += 1
    need = formation_need(settings, seen)
    others = max(0, connected - mine - 1)  # -1: this probe
    room = maxclients - others - need["total"]
    per_web = sum(redis_client.budget(settings, "web"))
    detail = (
        f"{connected}/{maxclients} clients connected; rindle's formation "
        f"({need['web']} web, {need['worker']} worker, {need['clock']} clock processes) "
        f"needs up to {need['total']} at its budgets, other clients hold {others}"
    )
    fix = (
        "lower RINDLE_REDIS_CONNECTIONS (a web process's budget) or WEB_CONCURRENCY, run "
        "fewer dynos, or take a Redis plan with more connections (README: Sizing Redis "
        "connections)"
    )
    if room < 0:
        yield Check("redis connections", WARN, detail + ": it does not fit", fix)
    elif connected > 0.8 * maxclients:
        yield Check("redis connections", WARN, detail + ": over 80% in use", fix)
    else:
        yield Check(
            "redis connections",
            OK,
            detail + f"; room for {room // per_web} more web process(es)",
        )


def _name_parts(name: str) -> tuple[str, str, str]:
    """("rindle", role, "host:pid") from a connection name ``rindle:<role>:<host>:<pid>``."""
    prefix, _, rest = name.partition(":")
    role, _, process = rest.partition(":")
    return (prefix, role, process) if prefix == "rindle" else ("", "", "")


def formation_need(settings: Settings, seen: dict[str, set[str]]) -> dict[str, int]:
    """Connections the formation may open at its budgets. A worker counts its main
    process, the work horse it forks and RQ's scheduler process (one connection)."""
    web = max(len(seen.get("web", ())), int(os.environ.get("WEB_CONCURRENCY") or 2))
    workers = max(len(seen.get("worker", ())), 1)
    clocks = max(len(seen.get("clock", ())), 1)
    per = {role: sum(redis_client.budget(settings, role)) for role in ("web", "worker", "clock")}
    # A worker's main process, its horse (each its own budget) and RQ's scheduler (1).
    total = web * per["web"] + workers * (2 * per["worker"] + 1) + clocks * per["clock"]
    return {"web": web, "worker": workers, "clock": clocks, "total": total}


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


def check_s3(rindle: Rindle, quick: bool = False) -> Iterator[Check]:
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
    if quick:
        yield _write_probe(rindle, s3)
        return
    if not settings.s3_endpoint and "." in settings.s3_bucket:
        yield Check(
            "s3 addressing",
            WARN,
            f"bucket {settings.s3_bucket!r} has dots: AWS's TLS certificates do not cover "
            "it in virtual-hosted-style URLs (presigned downloads fail)",
            "use a bucket name without dots",
        )
    yield _multipart_probe(rindle, s3)


def check_s3_quick(rindle: Rindle) -> Iterator[Check]:
    """The bucket, and a small object written and deleted (no multipart probe)."""
    return check_s3(rindle, quick=True)


def _write_probe(rindle: Rindle, s3: S3Storage) -> Check:
    key = f"{rindle.settings.s3_prefix}.doctor/{secrets.token_hex(8)}"
    try:
        s3.client.put_object(Bucket=rindle.settings.s3_bucket, Key=key, Body=b"rindle doctor")
        s3.client.delete_object(Bucket=rindle.settings.s3_bucket, Key=key)
    except S3_ERRORS as exc:
        return Check(
            "s3 write",
            FAIL,
            f"PutObject/DeleteObject of {key} failed: {exc}",
            "the credentials need s3:PutObject and s3:DeleteObject on the prefix",
        )
    return Check("s3 write", OK, f"wrote and deleted {key}")


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
    # A running PATCH holds its tail and one spooled part per part upload in flight.
    per_patch = settings.parts_in_flight + 1
    wanted = settings.min_free_disk + per_patch * settings.part_size
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
            detail + f": room for few PATCHes (each holds up to {per_patch} parts of "
            f"{size(settings.part_size)}: RINDLE_PARTS_IN_FLIGHT + 1)",
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
    if not settings.metrics_token:
        yield Check(
            "metrics auth",
            WARN,
            "/metrics answers anyone who reaches it (no RINDLE_METRICS_TOKEN); a router "
            "such as Heroku's cannot hide a path",
            "set RINDLE_METRICS_TOKEN and give it to the scraper as its bearer token",
        )
    else:
        yield Check("metrics auth", OK, "scrapes need the bearer token RINDLE_METRICS_TOKEN")


CHECKERS: tuple[Checker, ...] = (
    check_redis,
    check_s3,
    check_tmp_dir,
    check_sizes,
    check_workers,
    check_metrics,
)
RELEASE_CHECKERS: tuple[Checker, ...] = (check_redis, check_s3_quick, check_sizes)
