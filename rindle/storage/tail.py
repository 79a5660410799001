"""The tail: bytes after the last full part, kept in a node-local file.

``tail_path`` is the one place that maps an upload id to a file name; the writer, the
reaper and the tests all go through it.

The directory ``<root>/tus`` is opened once per process (``tail_dir_fd``: at start-up,
by ``check_tail_dir``), after every component of its path was checked, and files are
opened relative to that descriptor: tails are read back into uploads, so another user
who could swap a directory on the way for a link would plant or steal bytes. Swapping
``tus`` after start-up sends nothing elsewhere; the directory is never made again at run
time.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import io
import logging
import os
import secrets
import stat
import threading
from collections.abc import Iterator

from rindle.config import default_tmp_dir
from rindle.errors import TailMissing

log = logging.getLogger("rindle")

# Directories only, never through a link; O_PATH (Linux): a directory this user may pass
# through but not list (mode 711) opens too.
DIR_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class TailLocked(Exception):
    """Another writer of this node holds the tail file (its flock)."""


def tail_path(session_id: str, root: str | None = None) -> str:
    """``<root>/tus/<urlsafe base64 of the id, no padding>.tail``; root defaults to the
    configured tmp dir. The raw id never reaches the disk."""
    name = base64.urlsafe_b64encode(session_id.encode("utf-8")).rstrip(b"=").decode("ascii")
    return os.path.join(root or default_tmp_dir(), "tus", f"{name}.tail")


def check_tail_dir(root: str | None = None) -> str:
    """Open ``<root>/tus`` for this process, making what is missing (mode 0700), after
    checking every directory on its path: none is a link (those above the root are
    resolved first: /tmp may be one), those above the root belong to this user or root
    and others may not write them unless sticky (/tmp), the root and ``tus`` belong to
    this user and only this user may write them. Returns its path; OSError naming the
    directory when it is not safe."""
    path = _tus_dir(root)
    fd = _open_checked(path)
    with _dirs_lock:
        old = _dirs.get(path)
        if old is not None and _same_file(os.fstat(old), os.fstat(fd)):
            os.close(fd)  # checked again, and still the one opened before
        else:
            _dirs[path] = fd  # a replaced one stays open: a Tail may still use it
    return path


def tail_dir_fd(root: str | None = None) -> int:
    """A descriptor of ``<root>/tus``, opened once per process (``check_tail_dir``, at
    start-up; else at first use). Tails are opened relative to it."""
    path = _tus_dir(root)
    with _dirs_lock:
        fd = _dirs.get(path)
    if fd is None:
        check_tail_dir(root)
        with _dirs_lock:
            fd = _dirs[path]
    return fd


# The tail directories this process opened: absolute path of ``<root>/tus`` -> its fd
# (one in a server process; the tests make many).
_dirs: dict[str, int] = {}
_dirs_lock = threading.Lock()


def _new_lock_after_fork() -> None:
    global _dirs_lock
    _dirs_lock = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_new_lock_after_fork)


def _tus_dir(root: str | None) -> str:
    return os.path.abspath(os.path.dirname(tail_path("x", root)))


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _open_checked(tus: str) -> int:
    """Walk down to ``tus`` from /, one directory at a time (O_NOFOLLOW), checking each;
    the root and ``tus`` are made if missing. The fd of ``tus``."""
    root = os.path.dirname(tus)
    above = os.path.realpath(os.path.dirname(root))  # the system's part: /tmp, /var/...
    names = [name for name in above.split(os.sep) if name]
    own = len(names)  # names[own:] are rindle's: the root and tus
    names += [os.path.basename(root), "tus"]
    fd = os.open("/", DIR_FLAGS)
    where = "/"
    try:
        _check_dir(fd, where, own=False)
        for i, name in enumerate(names):
            where = os.path.join(where, name)
            child = _open_dir(fd, name, where)
            os.close(fd)
            fd = child
            _check_dir(fd, where, own=i >= own)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_dir(parent: int, name: str, where: str) -> int:
    """Open the directory ``name`` in ``parent`` (made, 0700, if missing), never a link."""
    for attempt in range(2):
        try:
            return os.open(name, DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if attempt:
                raise
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise OSError(f"{where} must be a directory, not a link or a file") from None
            raise
    raise AssertionError("unreachable")


def _check_dir(fd: int, where: str, own: bool) -> None:
    """``own``: the root or ``tus``, this user's alone. Above them: this user's or
    root's, and others may write only a sticky one (where they cannot rename ours)."""
    info = os.fstat(fd)
    uid, mode = info.st_uid, info.st_mode
    if own and uid != os.geteuid():
        raise OSError(f"{where} belongs to uid {uid}, not to this process's user")
    if not own and uid not in (0, os.geteuid()):
        raise OSError(f"{where} belongs to uid {uid}, neither this process's user nor root")
    if mode & 0o022 and (own or not mode & stat.S_ISVTX):
        raise OSError(f"{where} is writable by other users (mode {mode & 0o7777:o})")


def _open_in(dir_fd: int, name: str, flags: int, folder: str) -> int:
    """Open ``name`` in the tail directory, never through a link; a directory removed
    since it was opened is an error that says so (it is never made again meanwhile)."""
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except FileNotFoundError:
        if os.fstat(dir_fd).st_nlink == 0:
            raise OSError(
                errno.ENOENT,
                f"{folder} was removed after start-up (it is not made again while running): "
                "restart the process",
            ) from None
        raise


def _located(path: str) -> tuple[int | None, str]:
    """``path`` as (fd of an opened tail directory, name in it) when it is in one, else
    (None, path)."""
    folder = os.path.abspath(os.path.dirname(path))
    with _dirs_lock:
        fd = _dirs.get(folder)
    return (fd, os.path.basename(path)) if fd is not None else (None, path)


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
    """Delete a tail unless a writer holds it (its flock); True when deleted. A tail
    named in an opened tail directory is reached through that directory's descriptor."""
    dir_fd, name = _located(path)
    try:
        fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
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
            now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not _same_file(now, os.fstat(fd)):
            return False
        os.unlink(name, dir_fd=dir_fd)
        return True
    finally:
        os.close(fd)


def scan_tails(root: str | None = None) -> list[os.DirEntry[str]]:
    """The entries of ``<root>/tus`` (not only tails: check each with
    ``upload_id_from_tail``); none when the directory is not there, or when it is no
    longer the one this process opened (swapped: nothing in it is ours to judge)."""
    path = _tus_dir(root)
    with _dirs_lock:
        opened = _dirs.get(path)
    try:
        if opened is not None and not _same_file(
            os.stat(path, follow_symlinks=False), os.fstat(opened)
        ):
            log.error("%s is no longer the tail directory opened at start-up", path)
            return []
        return list(os.scandir(path))
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
        dir_fd, folder = tail_dir_fd(root), _tus_dir(root)
        try:
            fd = os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        except (AttributeError, OSError):  # a file system without O_TMPFILE
            name = f".{secrets.token_hex(8)}.spool"
            fd = _open_in(dir_fd, name, os.O_RDWR | os.O_CREAT | os.O_EXCL, folder)
            os.unlink(name, dir_fd=dir_fd)
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
        self.path = path  # the name it has (logs); reached through its directory's fd

    @classmethod
    def open(cls, session_id: str, expected: int, root: str | None = None, start: int = 0) -> Tail:
        """Open and reconcile the tail with what Redis says it holds (``expected`` bytes
        from upload offset ``start``).

        No file while bytes are expected, a shorter file, or one whose bytes start
        elsewhere: TailMissing (never re-slice). A longer file holds leftovers beyond the
        committed offset (a crash, a commit rolled back): cut them off.
        """
        path = tail_path(session_id, root)
        dir_fd, name = tail_dir_fd(root), os.path.basename(path)
        if expected > 0:
            try:
                os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                raise TailMissing(session_id, expected, None) from None
        # In the directory opened at start-up, never through a link someone planted.
        fd = _open_in(dir_fd, name, os.O_RDWR | os.O_CREAT, os.path.dirname(path))
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
        dir_fd, name = _located(self.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)


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
