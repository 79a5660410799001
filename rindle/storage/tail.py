"""The tail: bytes after the last full part, kept in a node-local file.

``tail_path`` is the one place that maps an upload id to a file name; the writer, the
reaper and the tests all go through it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import os
import stat
import tempfile
from collections.abc import Iterator

from rindle.config import default_tmp_dir
from rindle.errors import TailMissing


class TailLocked(Exception):
    """Another writer of this node holds the tail file (its flock)."""


def tail_path(session_id: str, root: str | None = None) -> str:
    """``<root>/tus/<urlsafe base64 of the id, no padding>.tail``; root defaults to the
    configured tmp dir. The raw id never reaches the disk."""
    name = base64.urlsafe_b64encode(session_id.encode("utf-8")).rstrip(b"=").decode("ascii")
    return os.path.join(root or default_tmp_dir(), "tus", f"{name}.tail")


def check_tail_dir(root: str | None = None) -> str:
    """Create ``<root>/tus`` (mode 0700), or check that the one there is this user's
    and writable by nobody else: tails are read back into uploads, so nobody else may
    plant or swap them. Returns its path; OSError when it is not safe."""
    path = os.path.dirname(tail_path("x", root))
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise OSError(f"{path} must be a directory, not a link or a file")
    if info.st_uid != os.geteuid():
        raise OSError(f"{path} belongs to uid {info.st_uid}, not to this process's user")
    if info.st_mode & 0o022:
        raise OSError(f"{path} is writable by other users (mode {info.st_mode & 0o777:o})")
    return path


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
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        # Until the lock was ours another reaper may have removed this file, and a writer
        # made a new one at the path: only the file this lock holds may go.
        try:
            now = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            return False
        os.unlink(path)
        return True
    finally:
        os.close(fd)


def scan_tails(root: str | None = None) -> list[os.DirEntry[str]]:
    """The entries of ``<root>/tus`` (not only tails: check each with
    ``upload_id_from_tail``); none when the directory is not there."""
    try:
        return list(os.scandir(os.path.dirname(tail_path("x", root))))
    except FileNotFoundError:
        return []


class SpoolFile:
    """An open file of bytes on their way to S3: written in order, read back by
    position (``slice``) while more arrives."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.size = os.lseek(fd, 0, os.SEEK_END)

    @classmethod
    def anonymous(cls, root: str | None = None) -> SpoolFile:
        """A nameless file beside the tails (same disk, same free-space check): a crash
        leaves nothing behind to reap, and its space is freed when it is closed."""
        folder = os.path.dirname(tail_path("x", root))  # made by check_tail_dir
        try:
            fd = os.open(folder, os.O_TMPFILE | os.O_RDWR, 0o600)
        except (AttributeError, OSError):  # a file system without O_TMPFILE
            fd, path = tempfile.mkstemp(dir=folder, suffix=".spool")
            os.unlink(path)
        return cls(fd)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self.size += len(data)

    def slice(self, start: int, size: int) -> FileSlice:
        """A seekable read handle on ``size`` bytes from ``start`` (an S3 request body).
        It reads through this file's descriptor (pread), so it works even after a DELETE
        unlinked the file."""
        return FileSlice(self._fd, start, size)

    def copy_to(self, target: SpoolFile) -> None:
        """Append all of this file's bytes to ``target``."""
        for chunk in self._chunks(0, self.size):
            target.write(chunk)

    def _chunks(self, start: int, size: int) -> Iterator[bytes]:
        """``size`` bytes from ``start``, 1 MiB at a time; OSError if the file is shorter."""
        done = 0
        while done < size:
            chunk = os.pread(self._fd, min(1 << 20, size - done), start + done)
            if not chunk:
                raise OSError(f"{start + size} bytes expected, the file is shorter")
            yield chunk
            done += len(chunk)

    def truncate(self, size: int) -> None:
        """Cut the file back to its first ``size`` bytes (drop bytes never acknowledged)."""
        os.ftruncate(self._fd, size)
        os.lseek(self._fd, size, os.SEEK_SET)
        self.size = size

    def sync(self) -> None:
        os.fsync(self._fd)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases a flock; frees an anonymous file
            self._fd = -1


# Extended attribute naming the upload offset of a tail's first byte.
START_XATTR = "user.rindle.start"


class Tail(SpoolFile):
    """An open tail file, held under an exclusive flock for one writer on this node.

    It names the upload offset of its first byte (an extended attribute): after a Redis
    failover that lost commits, the record may expect bytes from an earlier offset, and
    bytes from a later one must never pass for them."""

    def __init__(self, path: str, fd: int) -> None:
        super().__init__(fd)
        self.path = path

    @classmethod
    def open(cls, session_id: str, expected: int, root: str | None = None, start: int = 0) -> Tail:
        """Open and reconcile the tail with what Redis says it holds (``expected`` bytes
        from upload offset ``start``).

        No file while bytes are expected, a shorter file, or one whose bytes start
        elsewhere: TailMissing (never re-slice). A longer file holds leftovers beyond the
        committed offset (a crash, a commit rolled back): cut them off.
        """
        path = tail_path(session_id, root)
        if expected > 0 and not os.path.exists(path):
            raise TailMissing(session_id, expected, None)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        # Never through a symlink someone planted: the file must be our own.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise TailLocked(session_id) from None
        size = os.fstat(fd).st_size
        starts_at = _start_of(fd) if expected else None
        if size < expected or starts_at not in (None, start):
            os.close(fd)
            raise TailMissing(session_id, expected, size, starts_at=starts_at)
        if size > expected:
            os.ftruncate(fd, expected)
        tail = cls(path, fd)
        if not expected:
            tail.mark_start(start)  # an old mark of other bytes must not linger
        return tail

    def mark_start(self, offset: int) -> None:
        """Record that the first byte is at upload offset ``offset`` (before a commit
        that leaves bytes buffered). A file system without extended attributes keeps
        no mark: the tail is then trusted as before."""
        with contextlib.suppress(OSError):
            os.setxattr(self._fd, START_XATTR, str(offset).encode())

    def drop_front(self, count: int) -> None:
        """Drop the first ``count`` bytes (shipped as parts), keeping the rest in order."""
        keep = self.size - count
        copied = 0
        for chunk in self._chunks(count, keep):  # forward: the source is ahead of the target
            view = memoryview(chunk)
            while view:
                written = os.pwrite(self._fd, view, copied)
                view = view[written:]
                copied += written
        self.truncate(keep)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _start_of(fd: int) -> int | None:
    """The upload offset a tail marks as its first byte's; None without a mark."""
    try:
        return int(os.getxattr(fd, START_XATTR))
    except (OSError, ValueError):
        return None


class FileSlice(io.RawIOBase):
    """A window onto part of an open file, seekable, so that boto3 can sign and retry
    it. Positional reads (pread): the file's own offset is left alone."""

    PIECE = 64 * 1024

    def __init__(self, fd: int, start: int, size: int) -> None:
        super().__init__()
        self._fd = fd
        self._start = start
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        """Up to ``n`` bytes (all that is left for -1), at most PIECE for a positive
        ``n``, as a raw stream may: boto3 hashes a body in 1 MiB reads, and a few hundred
        uploads finishing at once each held such a buffer (~1 MiB of RSS apiece)."""
        left = self._size - self._pos
        n = left if n is None or n < 0 else min(n, left, self.PIECE)
        data = os.pread(self._fd, n, self._start + self._pos) if n > 0 else b""
        self._pos += len(data)
        return data

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, min(self._size, base + offset))
        return self._pos

    def tell(self) -> int:
        return self._pos
