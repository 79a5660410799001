"""The Flask extension: settings, clients and the blueprint of one app."""

from __future__ import annotations

from functools import cached_property

import redis
from flask import Flask
from rq import Queue, Retry

from rindle.config import Settings
from rindle.storage import S3Storage, make_s3_client
from rindle.store import SessionStore
from rindle.writer import Writer

COMPLETE_JOB = "workers.jobs.complete_upload"
# Completion retries: S3 hiccups are short, an outage may not be.
COMPLETE_RETRY_INTERVALS = [2, 10, 30, 120, 600]


def completion_job_id(upload_id: str) -> str:
    return f"rindle-complete-{upload_id}"


class Services:
    """Clients of one app, built on first use: after gunicorn forks, then shared by the
    request threads (boto3 clients and redis-py pools are thread-safe)."""

    def __init__(self, settings: Settings, s3_pool: int = 32) -> None:
        self.settings = settings
        self.s3_pool = s3_pool

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
    def queue(self) -> Queue:
        # rq stores pickled payloads: it needs a client that does not decode.
        return Queue(self.settings.queue, connection=redis.Redis.from_url(self.settings.redis_url))

    @cached_property
    def store(self) -> SessionStore:
        return SessionStore(self.redis, self.settings.expiration, self.settings.lease_seconds)

    @cached_property
    def storage(self) -> S3Storage:
        return S3Storage(make_s3_client(self.s3_pool), self.settings.s3_bucket)

    @cached_property
    def writer(self) -> Writer:
        return Writer(self.store, self.storage, self.settings, self.enqueue_completion)

    def enqueue_completion(self, upload_id: str) -> None:
        """One job per upload (a fixed id); the job itself is idempotent."""
        self.queue.enqueue(
            COMPLETE_JOB,
            upload_id,
            job_id=completion_job_id(upload_id),
            retry=Retry(max=len(COMPLETE_RETRY_INTERVALS), interval=COMPLETE_RETRY_INTERVALS),
            job_timeout=3600,
            failure_ttl=30 * 24 * 3600,
        )


def init_app(app: Flask, settings: Settings | None = None, url_prefix: str = "/files") -> Services:
    """Register rindle on ``app``: settings in ``app.config["RINDLE"]``, blueprint at
    ``url_prefix``. Returns the shared services (Redis, S3, the queue)."""
    from rindle.blueprint import blueprint

    settings = settings or app.config.get("RINDLE") or Settings.from_env()
    app.config["RINDLE"] = settings
    services = Services(settings)
    app.extensions["rindle"] = services
    app.register_blueprint(blueprint, url_prefix=url_prefix)
    return services
