"""A RINDLE_ON_COMPLETE target for the hook tests: records its call in Redis."""

from __future__ import annotations

import json
import os

import redis


def record_completion(upload_id: str, key: str, size: int, metadata: dict) -> None:
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    client.rpush(
        "test:on-complete",
        json.dumps({"upload_id": upload_id, "key": key, "size": size, "metadata": metadata}),
    )


def fail_naming_the_file(upload_id: str, key: str, size: int, metadata: dict) -> None:
    """A hook whose error message carries the client's file name (as many would)."""
    raise ValueError(f"cannot process {metadata.get('filename')}")
