"""Redis errors that pass, and waiting them out.

A managed Redis drops connections during maintenance, refuses writes while a replica is
promoted (READONLY, MASTERDOWN), answers LOADING after a restart, and a busy process waits
for a pooled connection: none of that says anything about an upload. A caller retries
such errors with backoff until a deadline it chooses (a writer: while its lease lasts),
and only then gives up. Any other error (a refusal, a wrong password) is final at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    MasterDownError,
    ReadOnlyError,
    TryAgainError,
)

log = logging.getLogger("rindle")
T = TypeVar("T")

# Backoff between tries: from FIRST_DELAY, doubling, at most MAX_DELAY seconds.
FIRST_DELAY = 0.05
MAX_DELAY = 2.0


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` may go away by itself: a dropped or refused connection, a timeout
    (also waiting for a pooled connection), a Redis loading its data or failing over."""
    if isinstance(exc, AuthenticationError | AuthorizationError):
        return False  # a setting to fix, not a moment to wait out
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return True  # (LOADING is a ConnectionError in redis-py)
    if isinstance(exc, ReadOnlyError | MasterDownError | TryAgainError):
        return True
    if not isinstance(exc, redis.ResponseError):
        return False
    # A full server refuses new connections with a plain error reply; a blocking command
    # (RQ's dequeue) is cut when its server becomes a replica.
    return "max number of clients" in str(exc) or str(exc).startswith("UNBLOCKED")


def wait_out(call: Callable[[], T], until: float, what: str) -> T:
    """``call()``, tried again after transient Redis errors until the monotonic time
    ``until``; the last error is raised when time is up, any other error at once."""
    delay = FIRST_DELAY
    tries = 0
    while True:
        try:
            return call()
        except redis.RedisError as exc:
            tries += 1
            if not is_transient(exc) or time.monotonic() + delay > until:
                raise
            if tries == 1 or delay == MAX_DELAY:  # not a line per quick retry
                log.warning("%s: Redis unavailable (%s), retrying", what, exc)
            time.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)
