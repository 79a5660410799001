"""The tail: bytes after the last full part, kept in a node-local file.

``tail_path`` is the one place that maps an upload id to a file name; the writer, the
reaper and the tests all go through it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
from typing import BinaryIO

from rindle.config import default_tmp_dir
from rindle.errors import LeaseHeld, TailMissing


def tail_path(session_id: str, root: str | None = None) -> str:
    """``<root>/tus/<urlsafe base64 of the id, no padding>.tail``; root defaults to the
    configured tmp dir. The raw id never reaches the disk."""
    name = base64.urlsafe_b64encode(session_id.encode("utf-8")).rstrip(b"=").decode("ascii")
    return os.path.join(root or default_tmp_dir(), "tus", f"{name}.tail")


def upload_id_from_tail(path: str, root: str | None = None) -> str | None:
    """The upload id whose tail is at ``path``, or None if no id maps there.

    The name is decoded, then re-encoded through ``tail_path``: only a file that
    ``tail_path`` itself would name counts as a tail.
    """
    name = os.path.basename(path)
    if not name.endswith(".tail"):
        return None
    encoded = name[: -len(".tail")]
    try:
        upload_id = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    if tail_path(upload_id, root) != os.path.join(root or default_tmp_dir(), "tus", name):
        return None
    return upload_id


def try_remove_idle_tail(path: str) -> bool:
    """Delete a tail unless a writer holds it (its flock); True when deleted."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        os.unlink(path)
        return True
    finally:
        os.close(fd)


class Tail:
    """An open tail file, held under an exclusive flock for one writer on this node."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd = fd
        self.size = os.lseek(fd, 0, os.SEEK_END)

    @classmethod
    def open(cls, session_id: str, expected: int, root: str | None = None) -> Tail:
        """Open and reconcile the tail with what Redis says it holds (``expected`` bytes).

        No file while bytes are expected, or a shorter file: TailMissing (never re-slice).
        A longer file holds crash leftovers beyond the committed offset: cut them off.
        """
        path = tail_path(session_id, root)
        if expected > 0 and not os.path.exists(path):
            raise TailMissing(session_id, expected, None)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LeaseHeld(session_id) from None
        size = os.fstat(fd).st_size
        if size < expected:
            os.close(fd)
            raise TailMissing(session_id, expected, size)
        if size > expected:
            os.ftruncate(fd, expected)
        return cls(path, fd)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self.size += len(data)

    def reader(self) -> BinaryIO:
        """A fresh read handle on the whole tail (for an UploadPart or PutObject body)."""
        return open(self.path, "rb")

    def sync(self) -> None:
        os.fsync(self._fd)

    def clear(self) -> None:
        """Drop the bytes once they are committed as a part."""
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        self.size = 0

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the flock
            self._fd = -1
