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
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

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


def redact_url(url: str) -> str:
    """``url`` with its password (if any, also a ``?password=`` query parameter, as
    redis-py takes it) replaced by ``***``: for logs, banners and the doctor."""
    parts = urlsplit(url)
    if "password=" in parts.query:
        query = [
            (k, "***" if k == "password" else v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        ]
        parts = parts._replace(query=urlencode(query, safe="*/"))
    if parts.password is None:
        return urlunsplit(parts)
    user = f"{parts.username}:" if parts.username else ":"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _prefix(env: Mapping[str, str]) -> str:
    prefix = env.get("RINDLE_S3_PREFIX", "uploads/")
    if not prefix.endswith("/") or prefix.strip("/") == "":
        # The orphan sweep aborts every unreferenced multipart upload under the prefix:
        # "" or "up" would reach other applications' uploads in the bucket.
        raise ConfigError(
            f"RINDLE_S3_PREFIX must be a folder of its own ending in '/', got {prefix!r}"
        )
    return prefix


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {value}")
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
        raise ConfigError(f"RINDLE_REDIS_CONNECTIONS must be at least 4 (or unset), got {value}")
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


def _wait_replicas(env: Mapping[str, str]) -> int:
    """RINDLE_REDIS_WAIT_REPLICAS: 0 to 16 (0: never wait)."""
    value = _int(env, "RINDLE_REDIS_WAIT_REPLICAS", 1)
    if value > 16:
        raise ConfigError(f"RINDLE_REDIS_WAIT_REPLICAS must be 0 to 16, got {value}")
    return value


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
    log_format: str  # "text" or "json" (one JSON object per line)
    dashboard_user: str  # rq-dashboard at /rq behind HTTP basic auth ...
    dashboard_password: str  # ... when a password is set ("": not mounted)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        part_size = _int(env, "RINDLE_TUS_PART_SIZE", 8 * MIB)
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ConfigError(
                f"RINDLE_TUS_PART_SIZE must be between {MIN_PART_SIZE} and {MAX_PART_SIZE}"
            )
        max_size = _int(env, "RINDLE_TUS_MAX_SIZE", MAX_OBJECT_SIZE)
        if max_size > MAX_OBJECT_SIZE:
            raise ConfigError(f"RINDLE_TUS_MAX_SIZE cannot exceed S3's {MAX_OBJECT_SIZE}")
        master, sentinels = _sentinels(env)
        return cls(
            redis_url=_redis_url(env),
            s3_bucket=env.get("RINDLE_S3_BUCKET") or "rindle",
            s3_prefix=_prefix(env),
            tmp_dir=default_tmp_dir(env),
            part_size=part_size,
            max_size=max_size,
            expiration=_int(env, "RINDLE_TUS_EXPIRATION", 24 * 3600),
            queue=env.get("RINDLE_QUEUE") or "rindle",
            # The node is whoever holds a tail folder: two processes on one host with
            # different tmp dirs are two nodes.
            node_id=env.get("RINDLE_NODE_ID")
            or f"{socket.gethostname()}:{os.path.abspath(default_tmp_dir(env))}",
            trusted_proxies=_int(env, "RINDLE_TRUSTED_PROXIES", 0),
            lease_seconds=max(5, _int(env, "RINDLE_LEASE_SECONDS", 60)),
            read_chunk=max(64 * 1024, _int(env, "RINDLE_READ_CHUNK", 64 * 1024)),
            orphan_grace=_int(env, "RINDLE_ORPHAN_GRACE", 3600),
            reap_interval=_int(env, "RINDLE_REAP_INTERVAL", 600),
            release_wait=_int(env, "RINDLE_RELEASE_WAIT", 3),
            read_timeout=max(1, _int(env, "RINDLE_READ_TIMEOUT", 60)),
            cors_origins=tuple(
                o.strip() for o in env.get("RINDLE_CORS_ORIGINS", "").split(",") if o.strip()
            ),
            max_metadata=_int(env, "RINDLE_TUS_MAX_METADATA", 4096),
            max_partials=max(1, _int(env, "RINDLE_TUS_MAX_PARTIALS", 100)),
            download=_choice(env, "RINDLE_DOWNLOAD", ("redirect", "stream", "off")),
            on_complete=env.get("RINDLE_ON_COMPLETE", ""),
            app=env.get("RINDLE_APP") or "app:app",
            sweep_interval=max(1, _int(env, "RINDLE_SWEEP_INTERVAL", 300)),
            orphan_sweep_interval=max(1, _int(env, "RINDLE_ORPHAN_SWEEP_INTERVAL", 3600)),
            s3_endpoint=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or "",
            tail_store=_choice(env, "RINDLE_TAIL_STORE", ("local", "s3")),
            public=_choice(env, "RINDLE_PUBLIC", ("0", "1")) == "1",
            min_rate=_int(env, "RINDLE_MIN_RATE", 256),
            min_rate_window=max(1, _int(env, "RINDLE_MIN_RATE_WINDOW", 30)),
            max_checksum_body=_int(env, "RINDLE_MAX_CHECKSUM_BODY", 0),
            min_free_disk=_int(env, "RINDLE_MIN_FREE_DISK", 256 * MIB),
            parts_in_flight=max(1, _int(env, "RINDLE_PARTS_IN_FLIGHT", 4)),
            threads=max(1, _int(env, "RINDLE_THREADS", DEFAULT_THREADS)),
            redis_connections=_connections(env),
            redis_ssl_cert_reqs=_choice(
                env, "RINDLE_REDIS_SSL_CERT_REQS", ("required", "optional", "none")
            ),
            redis_ssl_ca_certs=_ca_certs(env),
            redis_sentinels=sentinels,
            redis_sentinel_master=master,
            redis_wait_replicas=_wait_replicas(env),
            demo=_choice(env, "RINDLE_DEMO", ("0", "1")) == "1",
            metrics=_choice(env, "RINDLE_METRICS", ("0", "1")) == "1",
            metrics_dir=metrics_dir(env),
            log_format=_choice(env, "RINDLE_LOG_FORMAT", ("text", "json")),
            dashboard_user=env.get("RINDLE_DASHBOARD_USER") or "rindle",
            dashboard_password=env.get("RINDLE_DASHBOARD_PASSWORD", ""),
        )
