"""An upload as Redis records it, and the states it goes through."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    """created → receiving → assembling → completed; terminated, expired or failed end it
    early. Values are what Redis stores (a str, so comparisons with text work)."""

    CREATED = "created"
    RECEIVING = "receiving"
    ASSEMBLING = "assembling"
    COMPLETED = "completed"
    TERMINATED = "terminated"
    EXPIRED = "expired"
    FAILED = "failed"


WRITABLE = (State.CREATED, State.RECEIVING)  # may take bytes
ENDED = (State.TERMINATED, State.EXPIRED, State.FAILED)  # a tombstone: 410
OPEN = (*WRITABLE, State.ASSEMBLING)  # still needs its multipart upload


Segment = tuple[str, str, int]  # a shared copy of buffered bytes: (key, ETag, size)


def segments_size(segments: Iterable[Segment]) -> int:
    """Bytes the segments hold together."""
    return sum(size for _, _, size in segments)


@dataclass(frozen=True)
class Upload:
    id: str  # the tus id, in the upload's URL
    state: State
    length: int | None  # None until a deferred length is declared
    offset: int
    committed: int  # bytes in committed parts
    part_size: int
    key: str  # the object key in the bucket
    metadata: str  # the canonical Upload-Metadata header
    s3_upload_id: str  # S3's UploadId of the multipart upload ("" before the first part)
    node: str  # the node whose tail holds the buffered bytes
    created_at: float
    expires_at: float
    concat: str = ""  # "", "partial", or "final" ...
    partials: tuple[str, ...] = ()  # ... with the ids of its partial uploads, in order
    # The shared copy of the buffered bytes in S3 (RINDLE_TAIL_STORE=s3): one segment
    # (key, ETag, size) per PATCH that left bytes buffered, in order, since the last part.
    tail_segments: tuple[Segment, ...] = ()
    # The segments recorded before a part replaced them, kept while a failover could
    # still roll the record back to them.
    prev_tail_keys: tuple[str, ...] = ()
    # The ETag of the object this upload wrote at its key ("" until it wrote one): only
    # that object is ever deleted on its behalf.
    object_etag: str = ""

    @property
    def is_final(self) -> bool:
        return self.concat == "final"

    @property
    def shared_keys(self) -> set[str]:
        """Every shared copy this record still needs (current and previous segments)."""
        return {key for key, _, _ in self.tail_segments} | set(self.prev_tail_keys)

    @property
    def buffered(self) -> int:
        """Bytes Redis says the tail holds: acknowledged but not yet in a part."""
        return self.offset - self.committed

    @classmethod
    def from_record(cls, upload_id: str, record: dict[str, str]) -> Upload:
        """From the Redis hash (field ``upload_id`` is S3's UploadId, kept for old data)."""
        return cls(
            id=upload_id,
            state=State(record["state"]),
            length=int(record["length"]) if record["length"] else None,
            offset=int(record["offset"]),
            committed=int(record["committed"]),
            part_size=int(record["part_size"]),
            key=record["key"],
            metadata=record.get("metadata", ""),
            s3_upload_id=record.get("upload_id", ""),
            node=record.get("node", ""),
            created_at=float(record["created_at"]),
            expires_at=float(record["expires_at"]),
            concat=record.get("concat", ""),
            partials=tuple(record.get("partials", "").split()),
            tail_segments=_segments(record),
            prev_tail_keys=tuple(record.get("prev_tail_key", "").split()),
            object_etag=record.get("object_etag", ""),
        )


def _segments(record: dict[str, str]) -> tuple[Segment, ...]:
    """Fields ``tail_key``, ``tail_etag`` and ``tail_sizes``: one word per segment. A
    record written before segments has one copy of all buffered bytes and no sizes."""
    keys, etags = record.get("tail_key", "").split(), record.get("tail_etag", "").split()
    if "tail_sizes" in record:
        sizes = [int(size) for size in record["tail_sizes"].split()]
    else:
        sizes = [int(record["offset"]) - int(record["committed"])] * len(keys)
    return tuple(zip(keys, etags, sizes, strict=True))
