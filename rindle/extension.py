"""The Flask extension: settings, clients and the blueprint of one app."""

from __future__ import annotations

import logging
import threading
from functools import cached_property

import redis
from blinker import NamedSignal
from flask import Flask
from flask_cors import CORS
from rq import Queue

from rindle import protocol
from rindle.config import Settings
from rindle.hooks import Hooks
from rindle.jobqueue import JobQueue
from rindle.maintenance import Maintenance
from rindle.middleware import MethodOverride
from rindle.release import ReleaseWatcher
from rindle.storage import S3Storage, make_s3_client
from rindle.store import SessionStore, Upload
from rindle.writer import Writer

log = logging.getLogger("rindle")


class Services:
    """Clients of one app, built on first use: after gunicorn forks, then shared by the
    request threads (boto3 clients and redis-py pools are thread-safe)."""

    def __init__(
        self, settings: Settings, app: Flask, hooks: Hooks | None = None, s3_pool: int = 32
    ) -> None:
        self.settings = settings
        self.app = app
        self.hooks = hooks or Hooks()
        self.s3_pool = s3_pool
        self._reaper: threading.Thread | None = None

    def notify(self, signal: NamedSignal, upload: Upload) -> None:
        """Send a signal to the app's receivers; their failures never fail an upload."""
        try:
            signal.send(self.app, upload=upload)
        except Exception:
            log.exception("upload %s: a receiver of %s failed", upload.id, signal.name)

    @cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(
            self.settings.redis_url,
            decode_responses=True,
            socket_timeout=10,
            socket_connect_timeout=5,
            health_check_interval=30,
        )

    @cached_property
    def jobs(self) -> JobQueue:
        # rq stores pickled payloads: it needs a client that does not decode.
        connection = redis.Redis.from_url(self.settings.redis_url)
        return JobQueue(Queue(self.settings.queue, connection=connection))

    @cached_property
    def store(self) -> SessionStore:
        return SessionStore(self.redis, self.settings.expiration, self.settings.lease_seconds)

    @cached_property
    def storage(self) -> S3Storage:
        return S3Storage(make_s3_client(self.s3_pool), self.settings.s3_bucket)

    @cached_property
    def watcher(self) -> ReleaseWatcher:
        return ReleaseWatcher(self.settings.redis_url, self.settings.read_timeout)

    @cached_property
    def writer(self) -> Writer:
        return Writer(
            self.store, self.storage, self.settings, self.jobs.complete, self.watcher, self.notify
        )

    @cached_property
    def maintenance(self) -> Maintenance:
        return Maintenance(self.store, self.storage, self.settings, self.jobs, self.notify)

    def start_tail_reaper(self) -> None:
        """Reap this node's tails every RINDLE_REAP_INTERVAL seconds, from the web process
        (tails are node-local: a worker elsewhere cannot see them). Every web process
        starts one; a per-node lock in Redis lets one of them run per interval."""
        interval = self.settings.reap_interval
        if interval <= 0 or self._reaper is not None:
            return
        self._reaper = threading.Thread(
            target=self._reap_forever, args=(interval,), name="rindle-tail-reaper", daemon=True
        )
        self._reaper.start()

    def _reap_forever(self, interval: int) -> None:
        lock = f"rindle:reaper:{self.settings.node_id}:{self.settings.tmp_dir}"
        stop = threading.Event()
        while not stop.wait(interval):
            try:
                if self.redis.set(lock, "1", nx=True, ex=max(1, interval - 1)):
                    counts = self.maintenance.reap_tails()
                    log.info("tail reaper: %s", counts)
            except Exception:  # keep reaping next time; never take the web process down
                log.exception("tail reaper failed")


def init_app(
    app: Flask,
    settings: Settings | None = None,
    url_prefix: str = "/files",
    hooks: Hooks | None = None,
) -> Services:
    """Register rindle on ``app``: settings in ``app.config["RINDLE"]``, blueprint at
    ``url_prefix``, ``flask rindle ...`` commands, the app's ``hooks``. Returns the
    shared services."""
    from rindle.blueprint import blueprint
    from rindle.cli import cli

    settings = settings or app.config.get("RINDLE") or Settings.from_env()
    app.config["RINDLE"] = settings
    services = Services(settings, app, hooks)
    app.extensions["rindle"] = services
    app.register_blueprint(blueprint, url_prefix=url_prefix)
    app.cli.add_command(cli)
    app.wsgi_app = MethodOverride(app.wsgi_app, url_prefix)  # type: ignore[method-assign]
    if settings.cors_origins:
        # flask-cors: preflights, Vary: Origin and credentials done right; we only say
        # which tus headers a browser may send and read.
        CORS(
            app,
            resources={rf"{url_prefix}(/.*)?": {}},
            origins=list(settings.cors_origins),
            methods=list(protocol.METHODS),
            allow_headers=list(protocol.REQUEST_HEADERS),
            expose_headers=list(protocol.RESPONSE_HEADERS),
            max_age=86400,
        )
    return services
