"""File operations of the journal: private modes, no symbolic links, durable writes.

The journal's directory is 0700 and every file in it (segments, the LOCK file, a rewrite's
.tmp files, quarantined bytes) is created 0600: queue messages are nobody else's business,
and the records' CRC salt must stay unknown to clients. Files are opened with O_NOFOLLOW,
so a symbolic link planted in the directory is refused rather than written through.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat

from ...errors import QueueError

logger = logging.getLogger("tether.journal")

FILE_MODE = 0o600
DIR_MODE = 0o700
LOCK_NAME = "LOCK"
_NOFOLLOW = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def open_file(path: str, flags: int, mode: int = FILE_MODE) -> int:
    """os.open(path, flags | O_NOFOLLOW | O_CLOEXEC, mode); a symbolic link raises an
    OSError that names the file."""
    try:
        return os.open(path, flags | _NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "is a symbolic link: journal files are never opened through a "
                                       "link", path) from None
        raise


def _open_regular(path: str) -> int:
    fd = open_file(path, os.O_RDONLY | os.O_NONBLOCK)    # O_NONBLOCK: a planted FIFO must not hang us
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "is not a regular file: journal files must be", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_file(path: str) -> bytes:
    """The whole content of the regular file `path` (not through a symbolic link)."""
    with os.fdopen(_open_regular(path), "rb") as f:
        return f.read()


def read_head(path: str, count: int) -> tuple[bytes, int]:
    """The first `count` bytes of the regular file `path`, and its size."""
    with os.fdopen(_open_regular(path), "rb") as f:
        return f.read(count), os.fstat(f.fileno()).st_size


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte of `data` is written (a regular-file write may be short)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def datasync(fd: int) -> None:
    """Flush `fd`'s data (and the metadata needed to read it back) to the disk."""
    # Looked up on each call so tests can count the calls with monkeypatch.
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # pragma: no cover - macOS has no fdatasync
        os.fsync(fd)


def fsync_directory(directory: str) -> None:
    """Make file creations, renames and deletions in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def truncate_file(path: str, size: int) -> None:
    """Cut the file `path` to `size` bytes, durably."""
    fd = open_file(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_file(path: str, data: bytes) -> None:
    """Create (or replace) the file `path` (0600) holding `data`, synced."""
    fd = open_file(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quietly(path: str) -> None:
    """Remove `path`; a file already gone is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def make_private_directory(path: str) -> None:
    """Create the directory `path` (0700, parents as needed, its entry synced), or make an
    existing one 0700 if group or others had access."""
    try:
        os.makedirs(path, mode=DIR_MODE)
    except FileExistsError:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o077:
            os.chmod(path, DIR_MODE)
            logger.info("journal directory %s had mode %04o: changed to %04o (journal files are "
                        "private to their owner)", path, mode, DIR_MODE)
    else:
        fsync_directory(os.path.dirname(path))


def lock_directory(directory: str, *, create: bool = True) -> int:
    """Take the journal directory's lock (an flock on its LOCK file) and return its fd; the
    lock is held until the fd is closed. With create=False a missing LOCK file is not made
    (nobody holds it) and -1 is returned. Raises QueueError if another Journal holds it."""
    path = os.path.join(directory, LOCK_NAME)
    try:
        fd = open_file(path, (os.O_RDWR | os.O_CREAT) if create else os.O_RDONLY)
    except FileNotFoundError:
        if create:
            raise
        return -1
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise QueueError(f"journal directory {directory} is in use by another Journal "
                         f"(a running queue manager?)") from None
    return fd
