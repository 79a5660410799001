"""Every Redis client of rindle is built here, from the settings: URL, TLS, Sentinel,
timeouts, pool size, client name, decoding or not.

A process has a fixed budget of Redis connections (``ROLES``; a web process's is
``RINDLE_REDIS_CONNECTIONS``), however many uploads it serves: two blocking pools shared by
all its threads, one that decodes replies (the upload store, the leases) and one that
does not (RQ's pickled payloads, the release watcher's pub/sub, rq-dashboard). A thread
that finds its pool empty waits for a connection (up to ``POOL_WAIT`` seconds) instead
of failing.

Each connection names itself (CLIENT SETNAME, once when it connects)
``rindle:<role>:<host>:<pid>``, so that ``CLIENT LIST`` and ``flask rindle doctor`` can
tell which process holds which connection.

RQ's command line builds its connection with ``--connection-class
rindle.redis_client.RQConnection`` (the Procfile's worker and clock lines): the same
pools, from rindle's settings, with nothing to add to REDIS_URL.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import MasterDownError, ReadOnlyError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from rindle.config import Settings
from rindle.transient import is_transient

# Connections a process of each type opens at most: (budget, raw part, pub/sub part).
# The decoding pool gets the rest. See the README's sizing table before changing these.
#   web:    1 pub/sub (the release watcher, a connection of its own) + 1 raw (enqueues,
#           rq-dashboard, the queue metrics) + 4 decoding (requests, lease renewals,
#           the tail reaper).
#   worker: the main process and each work horse it forks, each: 3 raw (RQ's own
#           pub/sub for its commands, its bookkeeping, which nests a WATCH inside a
#           pipeline) + 1 decoding (the job). RQ's scheduler process adds one.
#   clock:  `rq cron` (one thread) needs 1 raw; the decoding one is never opened.
#   tool:   the doctor, the CLI, the tests' helpers.
ROLES: dict[str, tuple[int, int, int]] = {
    "web": (6, 1, 1),
    "worker": (4, 3, 0),
    "clock": (2, 1, 0),
    "tool": (4, 1, 1),
}
POOL_WAIT = 10.0  # seconds a thread waits for a free pooled connection
SOCKET_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0
CERT_REQS = ("required", "optional", "none")  # redis-py's (and ssl's) own names

# Processes whose code (RQ's) does not wait out a failover itself: their clients retry a
# command through a short outage (READONLY while a replica is promoted, LOADING after a
# restart, a dropped connection), ~13 s at most. A web process's writers retry within
# their lease instead (rindle.transient), and a retry below a WATCH would spin.
RETRYING_ROLES = ("worker", "clock")
RETRY_TRIES = 10


class TransientRetry(Retry):
    """redis-py's retry for the errors that pass only: a wrong password fails at once."""

    def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):  # type: ignore[no-untyped-def]
        def retryable(error: Exception) -> bool:
            return is_transient(error) and (is_retryable is None or is_retryable(error))

        return super().call_with_retry(do, fail, retryable, with_failure_count)


def _retry_kwargs(role_: str) -> dict[str, Any]:
    if role_ not in RETRYING_ROLES:
        return {}
    backoff = ExponentialWithJitterBackoff(base=0.1, cap=2.0)
    return {
        "retry": TransientRetry(backoff, RETRY_TRIES),
        "retry_on_error": [ReadOnlyError, MasterDownError, redis.ResponseError],  # (filtered)
    }


_role = "web"
_pools: dict[tuple[Any, ...], redis.ConnectionPool] = {}
_pools_lock = threading.Lock()


def set_role(role: str) -> None:
    """Say what this process is (``ROLES``), before its first Redis client is built:
    its budget and the names its connections give themselves depend on it."""
    global _role
    if role not in ROLES:
        raise ValueError(f"unknown process role {role!r}")
    _role = role


def role() -> str:
    return _role


def budget(settings: Settings, role_: str | None = None) -> tuple[int, int, int]:
    """(raw, decoding, pub/sub) connections of a process of ``role_`` (this one's by
    default); past the raw and pub/sub parts, the rest decodes. RINDLE_REDIS_CONNECTIONS
    sets a web process's budget, the one that serves many uploads at once; a worker and
    the clock run one job at a time and keep their fixed ones."""
    role_ = role_ or _role
    total, raw, pubsub = ROLES[role_]
    if settings.redis_connections and role_ == "web":
        total = settings.redis_connections
    return raw, max(1, total - raw - pubsub), pubsub


def client_name(role_: str | None = None) -> str:
    host = socket.gethostname().replace(" ", "_")[:64]
    return f"rindle:{role_ or _role}:{host}:{os.getpid()}"


@dataclass(frozen=True)
class Target:
    """Where and how to connect, parsed from the settings (no connection made)."""

    url: str
    tls: bool
    kwargs: dict[str, Any]  # Connection keyword arguments (TLS, password, db...)
    sentinels: tuple[tuple[str, int], ...]
    master: str

    def __hash__(self) -> int:
        return hash((self.url, self.sentinels, self.master, repr(sorted(self.kwargs.items()))))


def target(settings: Settings) -> Target:
    """The connection options of ``settings``: REDIS_URL (any ``ssl_*`` query parameter
    in it wins), RINDLE_REDIS_SSL_CERT_REQS and RINDLE_REDIS_SSL_CA_CERTS for a
    ``rediss://`` URL, RINDLE_REDIS_SENTINELS for a primary found through Sentinel."""
    url = settings.redis_url
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    tls = parts.scheme == "rediss"
    kwargs: dict[str, Any] = {}
    if tls:
        if "ssl_cert_reqs" not in query:
            kwargs["ssl_cert_reqs"] = settings.redis_ssl_cert_reqs
        if settings.redis_ssl_ca_certs and "ssl_ca_certs" not in query:
            kwargs["ssl_ca_certs"] = settings.redis_ssl_ca_certs
    return Target(url, tls, kwargs, settings.redis_sentinels, settings.redis_sentinel_master)


class BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """The primary found through Sentinel, in a pool whose threads wait for a free
    connection like everywhere else in rindle (redis-py's own raises at once)."""


def _new_pool(t: Target, decode: bool, size: int, name: str) -> redis.ConnectionPool:
    common: dict[str, Any] = {
        "max_connections": size,
        "timeout": POOL_WAIT,
        "decode_responses": decode,
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "health_check_interval": 30,
        "client_name": name,
        **_retry_kwargs(_role),
        **t.kwargs,
    }
    if not t.sentinels:
        return redis.BlockingConnectionPool.from_url(t.url, **common)
    # The URL gives the primary's password, db and TLS; its host is not used.
    from redis.connection import parse_url

    options = {k: v for k, v in parse_url(t.url).items() if k not in ("host", "port", "path")}
    options.update(common)
    if t.tls:
        options["ssl"] = True
    # Sentinels are asked with the same TLS settings, without the primary's password.
    tls_kwargs = {k: v for k, v in options.items() if k.startswith("ssl")}
    manager = Sentinel(
        list(t.sentinels),
        sentinel_kwargs={
            "socket_timeout": SOCKET_TIMEOUT,
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "client_name": name,
            **tls_kwargs,
        },
    )
    return BlockingSentinelPool(t.master, manager, **options)


def pool(settings: Settings, *, decode: bool = True) -> redis.ConnectionPool:
    """This process's pool (decoding or raw) for ``settings``: built once, shared by all
    its threads. After a fork redis-py opens new connections in the child by itself."""
    t = target(settings)
    raw, decoding, _ = budget(settings)
    size = decoding if decode else raw
    key = (t, decode, size, _role)
    with _pools_lock:
        found = _pools.get(key)
        if found is None:
            found = _pools[key] = _new_pool(t, decode, size, client_name())
        return found


def client(settings: Settings, *, decode: bool = True) -> redis.Redis:
    """A client on this process's shared pool; its ``close()`` leaves the pool open."""
    return redis.Redis(connection_pool=pool(settings, decode=decode))


def private_client(settings: Settings, *, decode: bool = True, size: int = 2) -> redis.Redis:
    """A client with a pool of its own, closed with it: for a short-lived check (the
    doctor's probes, a test's helper), never counted against a serving process."""
    c = redis.Redis(connection_pool=_new_pool(target(settings), decode, size, client_name()))
    c.auto_close_connection_pool = True
    return c


def pubsub_client(settings: Settings) -> redis.Redis:
    """The one raw connection of a process's release watcher (pub/sub holds it for as
    long as it listens): counted in the web budget, outside the pools, so that it never
    keeps an enqueue waiting. Closing the client closes it."""
    return private_client(settings, decode=False, size=1)


class RQConnection(redis.Redis):
    """For RQ's command line: ``rq worker|cron|info --connection-class
    rindle.redis_client.RQConnection``. RQ calls ``from_url(REDIS_URL)`` (or
    ``RQ_REDIS_URL``, ``--url``); the client comes from rindle's settings and pools, with
    the TLS and Sentinel settings applied. The process's role is the RQ command's."""

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> redis.Redis:  # type: ignore[override]
        return _rq_client(url)

    def __new__(cls, *args: Any, **kwargs: Any) -> redis.Redis:  # type: ignore[misc]
        # Without REDIS_URL RQ builds the class from REDIS_HOST etc.: rindle's default.
        return _rq_client("")


def _rq_client(url: str) -> redis.Redis:
    import click

    ctx = click.get_current_context(silent=True)
    command = ctx.info_name if ctx is not None else ""
    set_role({"worker": "worker", "cron": "clock"}.get(command or "", "tool"))
    settings = Settings.from_env()
    if url:
        settings = replace(settings, redis_url=url)
    return client(settings, decode=False)
