"""``/metrics``: rindle's Prometheus metrics (``rindle.metrics``) for a scraper.

``init_app`` mounts it when ``RINDLE_METRICS=1``; an app that wants it elsewhere, or
behind its own auth, calls ``mount(app, path)`` itself (or serves ``render(rindle)``).
With ``RINDLE_METRICS_TOKEN`` set, a scrape must send ``Authorization: Bearer <token>``
(else 401): a router such as Heroku's cannot keep a path off the internet.
Mounting also counts the lifecycle of uploads in Redis (the app's signals), in the web
process and in the RQ worker, which imports the same app.

With ``PROMETHEUS_MULTIPROC_DIR`` set, a scrape adds up the counts of every process that
writes there (``prometheus_client``'s multiprocess mode: every gunicorn worker); else it
shows this process's own. A scrape also reads the upload counters and the RQ queue from
Redis (the same on every node), in one round trip, and this node's tails on disk, which
costs a stat() per tail: that count is kept ``TAILS_CACHE_SECONDS`` per process.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import redis
from flask import Flask, Response, jsonify, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from rindle import hooks, metrics
from rindle.core import Rindle
from rindle.keys import UPLOAD_COUNTERS
from rindle.storage import scan_tails, upload_id_from_tail
from rindle.web.context import EXTENSION

log = logging.getLogger("rindle")

SIGNALS = {
    "created": hooks.upload_created,
    "completed": hooks.upload_completed,
    "terminated": hooks.upload_terminated,
    "expired": hooks.upload_expired,
    "failed": hooks.upload_failed,
}
HELP = {
    "created": "uploads created (POST)",
    "completed": "uploads assembled and checked in S3",
    "terminated": "uploads ended by DELETE",
    "expired": "uploads ended by the expiry sweep",
    "failed": "uploads that failed for good (S3 refused or lost their parts)",
}


# How long one count of this node's tails serves scrapes: counting stats every tail.
TAILS_CACHE_SECONDS = 30.0
REALM = "rindle metrics"


def mount(app: Flask, path: str = "/metrics", token: str | None = None) -> None:
    """Serve the metrics at ``path`` and count uploads' lifecycle (call after init_app).
    ``token`` (default RINDLE_METRICS_TOKEN): when set, a scrape without
    ``Authorization: Bearer <token>`` is answered 401."""
    rindle: Rindle = app.extensions[EXTENSION]
    count_lifecycle(app, rindle)
    expected = rindle.settings.metrics_token if token is None else token

    def view() -> Response:
        if expected and not bearer_matches(request.headers.get("Authorization", ""), expected):
            response = jsonify(error="unauthorized", message="a bearer token is required")
            response.status_code = 401
            response.headers["WWW-Authenticate"] = f'Bearer realm="{REALM}"'
            return response
        return Response(render(rindle), content_type=CONTENT_TYPE_LATEST)

    app.add_url_rule(path, "rindle_metrics", view, methods=["GET"])


def bearer_matches(header: str, token: str) -> bool:
    """Whether an Authorization header carries ``token`` (compared in constant time)."""
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def count_lifecycle(app: Flask, rindle: Rindle) -> None:
    """Count each upload event of this app in Redis (``metrics.UploadCounters``)."""
    for event, signal in SIGNALS.items():

        def receiver(sender: Any, event: str = event, **_: Any) -> None:
            metrics.UploadCounters(rindle.redis).count(event)

        signal.connect(receiver, sender=app, weak=False)


def render(rindle: Rindle) -> bytes:
    """The text exposition of every metric, as of now."""
    registry = CollectorRegistry(auto_describe=False)
    if rindle.settings.metrics_dir:
        MultiProcessCollector(registry, rindle.settings.metrics_dir)
    else:
        registry.register(REGISTRY)  # type: ignore[arg-type]  # this process's own
    registry.register(ScrapeCollector(rindle))  # type: ignore[arg-type]
    return generate_latest(registry)


class ScrapeCollector:
    """What is read when scraped: this node's tails (``TailCount``), and from Redis the
    upload counters and the queue. Without Redis those are left out and the failure
    counted."""

    def __init__(self, rindle: Rindle) -> None:
        self.rindle = rindle

    def collect(self) -> Iterator[Metric]:
        count, size = tail_count(self.rindle).read()
        yield GaugeMetricFamily("rindle_tails", "tail files on this node's disk", value=count)
        yield GaugeMetricFamily(
            "rindle_tail_bytes", "bytes in tail files on this node's disk", value=size
        )
        try:
            counts, jobs = read_redis(self.rindle)
        except redis.RedisError as exc:
            log.warning("metrics: Redis unavailable for a scrape: %s", exc)
            metrics.REDIS_ERRORS.labels("scrape").inc()
            return
        for event, value in counts.items():
            yield CounterMetricFamily(
                f"rindle_uploads_{event}", f"{HELP[event]} (deployment-wide)", value=value
            )
        family = GaugeMetricFamily(
            "rindle_queue_jobs", "jobs of rindle's RQ queue, by state", labels=["state"]
        )
        for state, value in jobs.items():
            family.add_metric([state], value)
        yield family


class TailCount:
    """(count, bytes) of this node's tails, counted again at most every
    ``TAILS_CACHE_SECONDS``; scrapes meanwhile (any thread) get the last count."""

    def __init__(self, tmp_dir: str) -> None:
        self.tmp_dir = tmp_dir
        self._lock = threading.Lock()
        self._value = (0, 0)
        self._counted_at: float | None = None

    def read(self) -> tuple[int, int]:
        with self._lock:  # concurrent scrapes count once
            now = time.monotonic()
            if self._counted_at is None or now - self._counted_at >= TAILS_CACHE_SECONDS:
                self._value = tails_on_disk(self.tmp_dir)
                self._counted_at = now
            return self._value


_tail_counts: weakref.WeakKeyDictionary[Rindle, TailCount] = weakref.WeakKeyDictionary()
_tail_counts_lock = threading.Lock()


def tail_count(rindle: Rindle) -> TailCount:
    """The one ``TailCount`` of ``rindle`` in this process."""
    with _tail_counts_lock:
        counter = _tail_counts.get(rindle)
        if counter is None:
            counter = _tail_counts[rindle] = TailCount(rindle.settings.tmp_dir)
        return counter


def tails_on_disk(tmp_dir: str) -> tuple[int, int]:
    """(count, bytes) of the tail files under ``<tmp_dir>/tus``."""
    count = size = 0
    for entry in scan_tails(tmp_dir):
        if upload_id_from_tail(entry.path, tmp_dir) is None:
            continue
        try:
            size += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:  # removed meanwhile
            continue
        count += 1
    return count, size


def read_redis(rindle: Rindle) -> tuple[dict[str, int], dict[str, int]]:
    """The upload counters and rindle's queue jobs by state, in one round trip (read
    only: no registry clean-up on a scrape)."""
    queue = rindle.jobs.queue
    registries = {
        "started": queue.started_job_registry,
        "scheduled": queue.scheduled_job_registry,
        "deferred": queue.deferred_job_registry,
        "failed": queue.failed_job_registry,
    }
    pipe = rindle.redis.pipeline(transaction=False)
    pipe.hgetall(UPLOAD_COUNTERS)
    pipe.llen(queue.key)
    for registry in registries.values():
        pipe.zcard(registry.key)
    raw, queued, *sizes = pipe.execute()
    jobs = {"queued": int(queued), **{s: int(n) for s, n in zip(registries, sizes, strict=True)}}
    return metrics.UploadCounters.parse(raw), jobs
