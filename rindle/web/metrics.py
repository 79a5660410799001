"""``/metrics``: rindle's Prometheus metrics (``rindle.metrics``) for a scraper.

``init_app`` mounts it when ``RINDLE_METRICS=1``; an app that wants it elsewhere, or
behind its own auth, calls ``mount(app, path)`` itself (or serves ``render(rindle)``).
Mounting also counts the lifecycle of uploads in Redis (the app's signals), in the web
process and in the RQ worker, which imports the same app.

With ``PROMETHEUS_MULTIPROC_DIR`` set, a scrape adds up the counts of every process that
writes there (``prometheus_client``'s multiprocess mode: every gunicorn worker); else it
shows this process's own. A scrape also reads, at that moment: the upload counters and
the RQ queue from Redis (the same on every node), and this node's tails on disk.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import redis
from flask import Flask, Response
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


def mount(app: Flask, path: str = "/metrics") -> None:
    """Serve the metrics at ``path`` and count uploads' lifecycle (call after init_app)."""
    rindle: Rindle = app.extensions[EXTENSION]
    count_lifecycle(app, rindle)

    def view() -> Response:
        return Response(render(rindle), content_type=CONTENT_TYPE_LATEST)

    app.add_url_rule(path, "rindle_metrics", view, methods=["GET"])


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
    """What is read when scraped: this node's tails, and from Redis the upload counters
    and the queue. Without Redis those are left out and the failure counted."""

    def __init__(self, rindle: Rindle) -> None:
        self.rindle = rindle

    def collect(self) -> Iterator[Metric]:
        count, size = tails_on_disk(self.rindle.settings.tmp_dir)
        yield GaugeMetricFamily("rindle_tails", "tail files on this node's disk", value=count)
        yield GaugeMetricFamily(
            "rindle_tail_bytes", "bytes in tail files on this node's disk", value=size
        )
        try:
            counts = metrics.UploadCounters(self.rindle.redis).read()
            jobs = queue_jobs(self.rindle)
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


def queue_jobs(rindle: Rindle) -> dict[str, int]:
    """Jobs of rindle's queue by state (read only: no registry clean-up on a scrape)."""
    queue = rindle.jobs.queue
    registries = {
        "started": queue.started_job_registry,
        "scheduled": queue.scheduled_job_registry,
        "deferred": queue.deferred_job_registry,
        "failed": queue.failed_job_registry,
    }
    jobs = {"queued": queue.count}
    for state, registry in registries.items():
        jobs[state] = registry.get_job_count(cleanup=False)
    return jobs
