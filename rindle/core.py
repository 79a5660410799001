"""The services of one rindle deployment: clients and the parts built on them.

Built lazily, on first use: after gunicorn (or RQ) forked the process, then shared by
its threads (boto3 clients and redis-py pools are thread-safe). Each is built once, under
the instance's lock: ``functools.cached_property`` has no lock since Python 3.12, and two
first requests at once would build two release watchers (a SIGTERM then stops one). No
web framework here: the web layer and the RQ jobs both use a ``Rindle``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

import redis
from blinker import NamedSignal
from rq import Queue

from rindle import metrics, redis_client
from rindle.assembly import Assembly
from rindle.config import Settings
from rindle.errors import ConfigError
from rindle.hooks import Hooks
from rindle.jobqueue import JobQueue
from rindle.lease import Lease, ReleaseWatcher
from rindle.maintenance import Maintenance, TailReaper
from rindle.storage import S3Storage, check_tail_dir, s3_client_for
from rindle.storage.shared_tail import SharedTails
from rindle.store import UploadStore
from rindle.upload import Upload
from rindle.writer import PART_UPLOAD_THREADS, Writer

log = logging.getLogger("rindle")

T = TypeVar("T")


class service(Generic[T]):  # lower case: a decorator, like cached_property
    """A service of a ``Rindle``, built on first use, once per instance even when many
    threads ask at once (the instance's re-entrant lock: a service may build others)."""

    def __init__(self, build: Callable[[Rindle], T]) -> None:
        self.build = build
        self.name = build.__name__
        self.__doc__ = build.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> service[T]: ...
    @overload
    def __get__(self, instance: Rindle, owner: type | None = None) -> T: ...
    def __get__(self, instance: Rindle | None, owner: type | None = None) -> T | service[T]:
        if instance is None:
            return self
        built = instance.__dict__
        if self.name not in built:  # the lock only until each is built
            with instance._build_lock:
                if self.name not in built:
                    built[self.name] = self.build(instance)
        return built[self.name]  # type: ignore[no-any-return]


class Rindle:
    def __init__(self, settings: Settings, hooks: Hooks | None = None, sender: Any = None) -> None:
        """``sender``: what signals are sent from (the app, for its receivers). The tail
        directory is made, or checked to be private, now: at start-up, not mid-upload."""
        try:
            check_tail_dir(settings.tmp_dir)
        except OSError as exc:
            raise ConfigError(f"RINDLE_TMP_DIR: {exc}") from exc
        self.settings = settings
        self._build_lock = threading.RLock()
        self.hooks = hooks or Hooks()
        self.sender = sender

    def notify(self, signal: NamedSignal, upload: Upload) -> None:
        """Send a signal to the app's receivers; their failures never fail an upload."""
        try:
            signal.send(self.sender, upload=upload)
        except Exception:
            log.exception("upload %s: a receiver of %s failed", upload.id, signal.name)

    def stop_writers(self, reason: str) -> int:
        """The process is shutting down (SIGTERM): every PATCH it runs stops reading now,
        keeps what it received, commits and answers with its offset; later ones stop at
        once. Returns how many were running. The web layer refuses new uploads meanwhile
        (``stopping``)."""
        return self.watcher.stop_all(reason)

    @property
    def stopping(self) -> str:
        """Why this process is stopping, or "" while it serves."""
        return self.watcher.stopping

    @service
    def redis(self) -> redis.Redis:
        # Hundreds of request threads share a few connections (the process's budget,
        # rindle.redis_client): past it they wait for a free one instead of failing.
        return redis_client.client(self.settings, decode=True)

    @service
    def jobs(self) -> JobQueue:
        # rq stores pickled payloads: it needs a client that does not decode.
        connection = redis_client.client(self.settings, decode=False)
        return JobQueue(Queue(self.settings.queue, connection=connection))

    @service
    def uploads(self) -> UploadStore:
        settings = self.settings
        return UploadStore(
            self.redis, settings.expiration, settings.lease_seconds, settings.redis_wait_replicas
        )

    @service
    def lease(self) -> Lease:
        return Lease(self.uploads, self.settings.release_wait)

    @service
    def s3(self) -> S3Storage:
        # One connection for each request thread and each part upload thread at most.
        pool = self.settings.threads + PART_UPLOAD_THREADS
        client = s3_client_for(self.settings.s3_endpoint, pool)
        metrics.instrument_s3(client)  # part durations, failed calls
        return S3Storage(client, self.settings.s3_bucket)

    @service
    def shared_tails(self) -> SharedTails:
        return SharedTails(self.s3, self.settings.s3_prefix)

    @service
    def watcher(self) -> ReleaseWatcher:
        settings = self.settings
        return ReleaseWatcher(
            # Its pub/sub holds a connection of its own, inside the budget.
            lambda: redis_client.pubsub_client(settings),
            settings.read_timeout,
            settings.min_rate,
            settings.min_rate_window,
            self.lease.drop_orphan,
        )

    @service
    def writer(self) -> Writer:
        return Writer(
            self.uploads,
            self.lease,
            self.s3,
            self.settings,
            self.watcher,
            self.jobs,
            self.notify,
            self.reaper.ensure_running,
            self.shared_tails if self.settings.tail_store == "s3" else None,
        )

    @service
    def assembly(self) -> Assembly:
        return Assembly(
            self.uploads, self.s3, self.shared_tails, self.settings, self.jobs, self.notify
        )

    @service
    def maintenance(self) -> Maintenance:
        return Maintenance(
            self.uploads,
            self.s3,
            self.shared_tails,
            self.settings,
            self.jobs,
            self.lease,
            self.notify,
        )

    @service
    def reaper(self) -> TailReaper:
        return TailReaper(self.maintenance, self.redis, self.settings.reap_interval)
