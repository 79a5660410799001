"""Shared copies of tails in S3 (``RINDLE_TAIL_STORE=s3``), so that any node can resume.

One object per generation, never overwritten: ``<prefix>.tails/<upload id>/<generation>``.
A writer puts a new generation, then commits it in Redis with the offset it covers, then
deletes the one before; a crash between leaves an extra object (removed with the upload),
never a record pointing at bytes that changed. A fetch asks for the exact ETag recorded,
so a stale or replaced copy is refused, never used.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

from botocore.exceptions import ClientError

from rindle.storage.s3 import S3_ERRORS, S3Storage, error_code

TAILS_DIR = ".tails/"  # under RINDLE_S3_PREFIX; no object key of an upload may start so
_GONE = ("NoSuchKey", "404", "NotFound", "PreconditionFailed", "412")


class SharedTailMissing(Exception):
    """The recorded generation is not in S3 (deleted, or replaced by other bytes)."""


@dataclass(frozen=True)
class Generation:
    """One shared copy of a tail: where it is, its ETag and its size."""

    key: str
    etag: str
    size: int


class SharedTails:
    def __init__(self, s3: S3Storage, prefix: str) -> None:
        self.s3 = s3
        self.root = prefix + TAILS_DIR

    def owns(self, key: str) -> bool:
        """Whether ``key`` is in the tails' key space (an upload's object must not be)."""
        return key.startswith(self.root)

    def _dir(self, upload_id: str) -> str:
        return f"{self.root}{upload_id}/"

    def put(self, upload_id: str, body: BinaryIO, size: int, offset: int) -> Generation:
        """Store ``size`` bytes as a new generation (named by the offset it ends at)."""
        key = f"{self._dir(upload_id)}{offset}-{secrets.token_hex(6)}"
        etag = self.s3.put_object(key, body, size)
        return Generation(key, etag, size)

    def fetch(
        self, generation: Generation, write: Callable[[bytes], None], chunk: int = 1 << 20
    ) -> None:
        """Pass the generation's bytes to ``write``; SharedTailMissing when S3 does not
        hold exactly that generation (gone, another ETag, another size)."""
        try:
            obj = self.s3.get_object(generation.key, if_match=generation.etag)
        except ClientError as exc:
            if error_code(exc) in _GONE:
                raise SharedTailMissing(generation.key) from exc
            raise
        # Checked here too: not every S3-compatible store honours If-Match.
        if obj.get("ETag") != generation.etag or int(obj["ContentLength"]) != generation.size:
            obj["Body"].close()
            raise SharedTailMissing(f"{generation.key}: another generation's bytes")
        for data in obj["Body"].iter_chunks(chunk):
            write(data)

    def delete(self, key: str) -> None:
        self.s3.delete_objects([key])

    def delete_quietly(self, key: str) -> None:
        """Best effort (the upload's clean-up and the orphan sweep catch what is left)."""
        with contextlib.suppress(S3_ERRORS):
            self.delete(key)

    def delete_all(self, upload_id: str) -> int:
        """Every generation of an upload; how many there were."""
        keys = [key for key, _ in self.s3.list_objects(self._dir(upload_id))]
        for start in range(0, len(keys), 1000):
            self.s3.delete_objects(keys[start : start + 1000])
        return len(keys)

    def listing(self) -> Iterator[tuple[str, str, datetime]]:
        """Every shared tail: (upload id, key, last modified)."""
        for key, modified in self.s3.list_objects(self.root):
            upload_id, _, _ = key[len(self.root) :].partition("/")
            yield upload_id, key, modified
