"""Redis key names, shared by the upload store and the writer lease.

Keys of one upload share a cluster hash tag, so that one transaction can watch them all:
  rindle:upload:{id}           hash: state, length, offset, committed, part_size, ...
  rindle:upload:{id}:parts     hash: part number -> "<size> <etag>" (a commit is O(1))
  rindle:upload:{id}:writer    the writer lease: a token with a TTL kept by Redis
  rindle:upload:{id}:release   a pending request to the writer to let go
"""

from __future__ import annotations

# Sorted set: upload id -> when the expiry sweep should look at it.
EXPIRY_INDEX = "rindle:expiry"
# Pub/sub channel on which a request asks the writer of an upload to let go.
RELEASE_CHANNEL = "rindle:release"
# Hash: upload lifecycle event (created, completed...) -> count, for the metrics.
UPLOAD_COUNTERS = "rindle:metrics:uploads"
_PREFIX = "rindle:upload:{"


def upload_key(upload_id: str) -> str:
    return f"{_PREFIX}{upload_id}}}"


def parts_key(upload_id: str) -> str:
    return f"{upload_key(upload_id)}:parts"


def writer_key(upload_id: str) -> str:
    return f"{upload_key(upload_id)}:writer"


def release_key(upload_id: str) -> str:
    return f"{upload_key(upload_id)}:release"


def upload_id_of(key: str) -> str | None:
    """The id in an upload's hash key, None for any other key."""
    if key.startswith(_PREFIX) and key.endswith("}"):
        return key[len(_PREFIX) : -1]
    return None


UPLOAD_KEY_PATTERN = f"{_PREFIX}*}}"
