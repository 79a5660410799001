"""rindle's Prometheus metrics, counted where things happen (no web framework here).

Process-local metrics are ``prometheus_client`` objects: with ``PROMETHEUS_MULTIPROC_DIR``
set they live in files of that directory, one per process, and a scrape of any gunicorn
worker adds up all of them (``prometheus_client``'s multiprocess mode; gunicorn's
``child_exit`` hook drops a dead worker's live gauges). The lifecycle of uploads (created,
completed, terminated, expired, failed) is counted in Redis instead (``UploadCounters``):
completions, expiries and failures happen in RQ work horses, which live one job long and
often on other machines. The web layer reads those counters, the queue and the tails on
disk when it is scraped (``rindle.web.metrics``).

Counting costs microseconds; exposing the metrics is what ``RINDLE_METRICS=1`` (or
mounting ``rindle.web.metrics``) switches on.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import redis
from prometheus_client import Counter, Gauge, Histogram

from rindle.config import metrics_dir
from rindle.keys import UPLOAD_COUNTERS

log = logging.getLogger("rindle")

# prometheus_client opens its files there as soon as a metric is defined (below): a
# process started without gunicorn.conf.py (the RQ worker, the CLI) would fail to import.
if _directory := metrics_dir():
    os.makedirs(_directory, exist_ok=True)

REQUESTS = Counter(
    "rindle_requests",
    "tus requests answered, by method and status code",
    ["method", "status"],
)
RECEIVED_BYTES = Counter(
    "rindle_received_bytes",
    "bytes received and acknowledged (PATCH, and POST with creation-with-upload)",
)
PATCHES_IN_PROGRESS = Gauge(
    "rindle_patches_in_progress",
    "PATCH requests (and POSTs with a body) receiving bytes now",
    multiprocess_mode="livesum",
)
PART_UPLOAD_SECONDS = Histogram(
    "rindle_part_upload_seconds",
    "duration of one S3 UploadPart call",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120),
)
S3_ERRORS = Counter(
    "rindle_s3_errors",
    "S3 calls that failed (an error answer other than 404, or no answer), by S3 operation",
    ["operation"],
)
REDIS_ERRORS = Counter(
    "rindle_redis_errors",
    "Redis failures that reached a request or a scrape, by rindle operation",
    ["operation"],
)
LOCKED = Counter(
    "rindle_locked",
    "requests answered 423 upload_locked (another request kept the upload)",
)
RELEASE_REQUESTS = Counter(
    "rindle_release_requests",
    "requests that asked another request to let go of an upload, by kind (now, idle)",
    ["kind"],
)
TAIL_MISSES = Counter(
    "rindle_tail_misses",
    "resumes refused with tus_tail_missing (the buffered bytes are on another node)",
)

# S3 operations whose 404 is an answer, not a failure (HeadObject of a missing object,
# AbortMultipartUpload of an upload already gone...): every operation, for rindle.
NOT_FAILURES = (404,)
_STARTED = "rindle_started"
_OPERATION = "rindle_operation"


def instrument_s3(client: Any) -> None:
    """Time UploadPart and count failed calls by operation, through botocore's events
    (``before-call`` / ``after-call`` / ``after-call-error``) on this client. Each
    fires once per call, whatever the retries made inside it."""
    events = client.meta.events

    def before(model: Any, context: dict[str, Any], **_: Any) -> None:
        context[_STARTED] = time.monotonic()
        context[_OPERATION] = model.name

    def after(model: Any, http_response: Any, context: dict[str, Any], **_: Any) -> None:
        status = getattr(http_response, "status_code", 0)
        if status >= 400 and status not in NOT_FAILURES:
            S3_ERRORS.labels(model.name).inc()
        elif model.name == "UploadPart" and _STARTED in context:
            PART_UPLOAD_SECONDS.observe(time.monotonic() - context[_STARTED])

    def failed(context: dict[str, Any], **_: Any) -> None:
        # No answer at all (connection refused, timeout): the operation came with before.
        S3_ERRORS.labels(context.get(_OPERATION, "unknown")).inc()

    events.register("before-call.s3", before)
    events.register("after-call.s3", after)
    events.register("after-call-error.s3", failed)


EVENTS = ("created", "completed", "terminated", "expired", "failed")


class UploadCounters:
    """The lifecycle of uploads, counted in one Redis hash (event -> count) for the whole
    deployment: the same numbers on every node."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def count(self, event: str) -> None:
        """One more upload reached ``event``; a failure is logged, never raised."""
        try:
            self.redis.hincrby(UPLOAD_COUNTERS, event, 1)
        except redis.RedisError as exc:
            log.warning("metrics: could not count an upload %s: %s", event, exc)

    def read(self) -> dict[str, int]:
        return self.parse(self.redis.hgetall(UPLOAD_COUNTERS))

    @staticmethod
    def parse(raw: dict[str, str]) -> dict[str, int]:
        """The counters from the hash as Redis returns it (every event, 0 if absent)."""
        return {event: int(raw.get(event, 0)) for event in EVENTS}
