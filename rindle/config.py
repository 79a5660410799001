"""Settings read once from the environment (12-factor): the only module that reads it.

boto3 reads its own variables (credentials, region) itself; the S3 endpoint is read here
too, since it decides the addressing style.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote_plus, urlsplit

from rindle.errors import ConfigError

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB  # S3's floor for every part but the last
MAX_PART_SIZE = 5 * 1024 * MIB  # S3's ceiling for one part
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 5 * 1024 * 1024 * MIB  # S3's largest object: 5 TiB


def default_tmp_dir(environ: Mapping[str, str] | None = None) -> str:
    """The root under which tails live: RINDLE_TMP_DIR, else a directory of this user's
    in the system temp dir (never the shared /tmp/tus itself)."""
    env = os.environ if environ is None else environ
    return env.get("RINDLE_TMP_DIR") or os.path.join(
        tempfile.gettempdir(), f"rindle-{os.geteuid()}"
    )


def metrics_dir(environ: Mapping[str, str] | None = None) -> str:
    """PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode), or ""."""
    env = os.environ if environ is None else environ
    return env.get("PROMETHEUS_MULTIPROC_DIR", "")


SECRET = "***"


def redact_url(url: str) -> str:
    """``url`` for logs, banners and the doctor: what precedes ``@`` in its host part
    (``user:***``, or ``***`` alone), and every query parameter whose name says password
    (``password``, ``ssl_password``..., in any case and however percent-encoded: redis-py
    unquotes the names) replaced by ``***``. Any scheme (``redis``, ``rediss``,
    ``unix``, a sentinel URL...); never raises, and keeps the rest of the text as it was."""
    head, sep, tail = url.partition("://")
    if not sep:
        head, tail = "", url
    # The credentials end at the last "@" (a password may hold "/", "?" or "#"), unless
    # that "@" is in a query parameter's value.
    at = tail.rfind("@")
    question = tail.find("?")
    if 0 <= question < at and "=" in tail[question:at]:
        at = tail.rfind("@", 0, question)
    if at >= 0:
        user, colon, _ = tail[:at].partition(":")
        head += sep + (f"{user}:{SECRET}@" if colon else f"{SECRET}@")
        sep, tail = "", tail[at + 1 :]
    before, question_mark, query = tail.partition("?")
    if question_mark:
        query, hash_, fragment = query.partition("#")
        query = "&".join(_redact_param(p) for p in query.split("&")) + hash_ + fragment
    return f"{head}{sep}{before}{question_mark}{query}"


def _redact_param(param: str) -> str:
    name, equals, _ = param.partition("=")
    if equals and "password" in unquote_plus(name).lower():
        return f"{name}={SECRET}"
    return param


def _prefix(env: Mapping[str, str]) -> str:
    prefix = env.get("RINDLE_S3_PREFIX", "uploads/")
    if not prefix.endswith("/") or prefix.strip("/") == "":
        # The orphan sweep aborts every unreferenced multipart upload under the prefix:
        # "" or "up" would reach other applications' uploads in the bucket.
        raise ConfigError(
            f"RINDLE_S3_PREFIX must be a folder of its own ending in '/', got {prefix!r}"
        )
    return prefix


DAY = 24 * 3600
# Every numeric setting: (least, most) it may be. A value outside is refused at start,
# never clamped: a typo must not quietly become another number.
BOUNDS: dict[str, tuple[int, int]] = {
    "RINDLE_TUS_PART_SIZE": (MIN_PART_SIZE, MAX_PART_SIZE),  # S3's limits for a part
    "RINDLE_TUS_MAX_SIZE": (1, MAX_OBJECT_SIZE),
    # Below a minute an upload would expire between two PATCHes of a healthy client.
    "RINDLE_TUS_EXPIRATION": (60, 365 * DAY),
    "RINDLE_TRUSTED_PROXIES": (0, 10),
    # The floor is the renewer's (four renewals per lease); past 10 min a dead writer
    # would keep its upload locked for too long.
    "RINDLE_LEASE_SECONDS": (5, 600),
    # Each open PATCH holds a few chunks in memory: hundreds of threads multiply it.
    "RINDLE_READ_CHUNK": (64 * 1024, 4 * MIB),
    # The orphan sweep aborts unreferenced multipart uploads older than this: a POST
    # must have recorded its upload in Redis by then.
    "RINDLE_ORPHAN_GRACE": (300, 30 * DAY),
    "RINDLE_REAP_INTERVAL": (0, DAY),  # 0: off
    # A waiting request must answer within a router's 30 s (Heroku's).
    "RINDLE_RELEASE_WAIT": (0, 25),
    "RINDLE_READ_TIMEOUT": (1, 600),
    "RINDLE_TUS_MAX_METADATA": (0, 64 * 1024),
    "RINDLE_TUS_MAX_PARTIALS": (1, MAX_PARTS),  # each partial is one part of the object
    "RINDLE_SWEEP_INTERVAL": (1, DAY),
    "RINDLE_ORPHAN_SWEEP_INTERVAL": (1, DAY),
    "RINDLE_MIN_RATE": (0, 100 * MIB),  # 0: no minimum
    "RINDLE_MIN_RATE_WINDOW": (1, 3600),
    "RINDLE_MAX_CHECKSUM_BODY": (0, MAX_PART_SIZE),  # 0: four parts; spooled whole
    "RINDLE_MIN_FREE_DISK": (0, MAX_OBJECT_SIZE),
    # Each holds a part on disk, a thread and an S3 connection.
    "RINDLE_PARTS_IN_FLIGHT": (1, 16),
    "RINDLE_THREADS": (1, 4096),
    "RINDLE_REDIS_CONNECTIONS": (0, 10_000),  # 0: the default; else at least 4
    "RINDLE_REDIS_WAIT_REPLICAS": (0, 16),
}


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    """The integer setting ``name`` (``default`` when unset), within ``BOUNDS[name]``."""
    low, high = BOUNDS[name]
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer from {low} to {high}, got {raw!r}")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    value = env.get(name) or choices[0]
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _redis_url(env: Mapping[str, str]) -> str:
    url = env.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"REDIS_URL must start with redis://, rediss:// (TLS) or unix://, got "
            f"{redact_url(url)!r}"
        )
    reqs = parse_qs(parts.query).get("ssl_cert_reqs")
    if reqs and reqs[-1] not in ("required", "optional", "none"):
        raise ConfigError(
            f"REDIS_URL's ssl_cert_reqs must be required, optional or none, got {reqs[-1]!r}"
        )
    return url


def _ca_certs(env: Mapping[str, str]) -> str:
    path = env.get("RINDLE_REDIS_SSL_CA_CERTS", "")
    if path and not os.path.isfile(path):
        raise ConfigError(f"RINDLE_REDIS_SSL_CA_CERTS: no such file {path!r} (a PEM CA bundle)")
    return path


def _connections(env: Mapping[str, str]) -> int:
    value = _int(env, "RINDLE_REDIS_CONNECTIONS", 0)
    if value and value < 4:
        high = BOUNDS["RINDLE_REDIS_CONNECTIONS"][1]
        raise ConfigError(
            f"RINDLE_REDIS_CONNECTIONS must be 0 (the default) or from 4 to {high}, got {value}"
        )
    return value


def _sentinels(env: Mapping[str, str]) -> tuple[str, tuple[tuple[str, int], ...]]:
    """RINDLE_REDIS_SENTINELS = ``<primary name>@host:port,host:port`` -> (name, addresses)."""
    raw = env.get("RINDLE_REDIS_SENTINELS", "").strip()
    if not raw:
        return "", ()
    master, at, hosts = raw.rpartition("@")
    addresses = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not (at and master and colon and host and port.isdigit()):
            raise ConfigError(
                "RINDLE_REDIS_SENTINELS must be <primary name>@host:port[,host:port...], "
                f"got {raw!r}"
            )
        addresses.append((host.strip("[]"), int(port)))
    return master, tuple(addresses)


MIN_TOKEN = 16


def _metrics_token(env: Mapping[str, str]) -> str:
    """RINDLE_METRICS_TOKEN: "" (no token), or at least 16 printable ASCII characters
    without spaces (it travels in an Authorization header)."""
    token = env.get("RINDLE_METRICS_TOKEN", "")
    if token and (len(token) < MIN_TOKEN or not all("!" <= c <= "~" for c in token)):
        raise ConfigError(
            f"RINDLE_METRICS_TOKEN must be at least {MIN_TOKEN} printable ASCII characters "
            "without spaces (e.g. `openssl rand -hex 32`)"
        )
    return token


# gunicorn threads per web process (the Procfile's default for $RINDLE_THREADS): a PATCH
# from a slow client holds one for its whole length, so they must outnumber them; 1,024
# so that either of two processes can hold a node's 1,000 open uploads (issue #19).
DEFAULT_THREADS = 1024


@dataclass(frozen=True)
class Settings:
    redis_url: str
    s3_bucket: str
    s3_prefix: str
    tmp_dir: str
    part_size: int
    max_size: int
    expiration: int
    queue: str
    node_id: str
    trusted_proxies: int
    lease_seconds: int
    read_chunk: int
    orphan_grace: int
    reap_interval: int
    release_wait: float
    read_timeout: float
    cors_origins: tuple[str, ...]
    max_metadata: int
    max_partials: int  # most partial uploads one final upload may concatenate
    download: str
    on_complete: str
    app: str  # module:attribute of the app the RQ worker imports
    sweep_interval: int
    orphan_sweep_interval: int
    s3_endpoint: str  # "" for AWS itself
    public: bool  # RINDLE_PUBLIC=1: the app may run without an authorize hook
    min_rate: int  # bytes/s a PATCH must average over each rate window (0: no minimum)
    min_rate_window: int
    tail_store: str  # "local": tails on this node only; "s3": a shared copy in S3 too
    max_checksum_body: int  # 0: four of the upload's parts
    min_free_disk: int  # new PATCHes are refused below this much free space for tails
    parts_in_flight: int  # part uploads one PATCH runs at once while its body arrives
    threads: int  # RINDLE_THREADS: requests one web process serves at once (gunicorn's)
    # Most Redis connections a web process opens (threads beyond wait); 0: the default
    # (rindle.redis_client.ROLES, where the worker's and the clock's are too)
    redis_connections: int
    redis_ssl_cert_reqs: str  # rediss://: "required", "optional" or "none"
    redis_ssl_ca_certs: str  # rediss://: a CA bundle file ("": the system's)
    redis_sentinels: tuple[tuple[str, int], ...]  # Sentinel addresses (empty: none)
    redis_sentinel_master: str  # the primary's name at the sentinels
    # Replicas that must hold a commit before the answer that depends on it (Redis WAIT)
    # Replicas (of those connected) that must hold a change before it is acknowledged
    redis_wait_replicas: int
    demo: bool  # RINDLE_DEMO=1: the example app.py serves its upload page at /
    metrics: bool  # RINDLE_METRICS=1: Prometheus metrics at /metrics
    metrics_dir: str  # PROMETHEUS_MULTIPROC_DIR: prometheus_client's multiprocess mode
    metrics_token: str  # RINDLE_METRICS_TOKEN: scrapes must send it as a bearer token
    log_format: str  # "text" or "json" (one JSON object per line)
    dashboard_user: str  # rq-dashboard at /rq behind HTTP basic auth ...
    dashboard_password: str  # ... when a password is set ("": not mounted)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        master, sentinels = _sentinels(env)
        return cls(
            redis_url=_redis_url(env),
            s3_bucket=env.get("RINDLE_S3_BUCKET") or "rindle",
            s3_prefix=_prefix(env),
            tmp_dir=default_tmp_dir(env),
            part_size=_int(env, "RINDLE_TUS_PART_SIZE", 8 * MIB),
            max_size=_int(env, "RINDLE_TUS_MAX_SIZE", MAX_OBJECT_SIZE),
            expiration=_int(env, "RINDLE_TUS_EXPIRATION", 24 * 3600),
            queue=env.get("RINDLE_QUEUE") or "rindle",
            # The node is whoever holds a tail folder: two processes on one host with
            # different tmp dirs are two nodes.
            node_id=env.get("RINDLE_NODE_ID")
            or f"{socket.gethostname()}:{os.path.abspath(default_tmp_dir(env))}",
            trusted_proxies=_int(env, "RINDLE_TRUSTED_PROXIES", 0),
            lease_seconds=_int(env, "RINDLE_LEASE_SECONDS", 60),
            read_chunk=_int(env, "RINDLE_READ_CHUNK", 64 * 1024),
            orphan_grace=_int(env, "RINDLE_ORPHAN_GRACE", 3600),
            reap_interval=_int(env, "RINDLE_REAP_INTERVAL", 600),
            release_wait=_int(env, "RINDLE_RELEASE_WAIT", 3),
            read_timeout=_int(env, "RINDLE_READ_TIMEOUT", 60),
            cors_origins=tuple(
                o.strip() for o in env.get("RINDLE_CORS_ORIGINS", "").split(",") if o.strip()
            ),
            max_metadata=_int(env, "RINDLE_TUS_MAX_METADATA", 4096),
            max_partials=_int(env, "RINDLE_TUS_MAX_PARTIALS", 100),
            download=_choice(env, "RINDLE_DOWNLOAD", ("redirect", "stream", "off")),
            on_complete=env.get("RINDLE_ON_COMPLETE", ""),
            app=env.get("RINDLE_APP") or "app:app",
            sweep_interval=_int(env, "RINDLE_SWEEP_INTERVAL", 300),
            orphan_sweep_interval=_int(env, "RINDLE_ORPHAN_SWEEP_INTERVAL", 3600),
            s3_endpoint=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or "",
            tail_store=_choice(env, "RINDLE_TAIL_STORE", ("local", "s3")),
            public=_choice(env, "RINDLE_PUBLIC", ("0", "1")) == "1",
            min_rate=_int(env, "RINDLE_MIN_RATE", 256),
            min_rate_window=_int(env, "RINDLE_MIN_RATE_WINDOW", 30),
            max_checksum_body=_int(env, "RINDLE_MAX_CHECKSUM_BODY", 0),
            min_free_disk=_int(env, "RINDLE_MIN_FREE_DISK", 256 * MIB),
            parts_in_flight=_int(env, "RINDLE_PARTS_IN_FLIGHT", 4),
            threads=_int(env, "RINDLE_THREADS", DEFAULT_THREADS),
            redis_connections=_connections(env),
            redis_ssl_cert_reqs=_choice(
                env, "RINDLE_REDIS_SSL_CERT_REQS", ("required", "optional", "none")
            ),
            redis_ssl_ca_certs=_ca_certs(env),
            redis_sentinels=sentinels,
            redis_sentinel_master=master,
            redis_wait_replicas=_int(env, "RINDLE_REDIS_WAIT_REPLICAS", 1),
            demo=_choice(env, "RINDLE_DEMO", ("0", "1")) == "1",
            metrics=_choice(env, "RINDLE_METRICS", ("0", "1")) == "1",
            metrics_dir=metrics_dir(env),
            metrics_token=_metrics_token(env),
            log_format=_choice(env, "RINDLE_LOG_FORMAT", ("text", "json")),
            dashboard_user=env.get("RINDLE_DASHBOARD_USER") or "rindle",
            dashboard_password=env.get("RINDLE_DASHBOARD_PASSWORD", ""),
        )
