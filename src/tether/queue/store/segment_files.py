"""The segment files of one open journal, on its writer thread: writing batches, syncing per
the fsync policy, starting segments, rewriting, closing, and getting back to a good state
after a failed write.

A failed write or sync fails its batch with StorageError, and the current segment is
restored before anything else is written: cut back (ftruncate) to the bytes known good --
the size at the last successful sync, or under "never" (which trusts the page cache) the
size before the failed batch -- then, under "interval", the batches written since that sync
(already acknowledged) are written again from our own copy, then fsync. Nothing written
before a failed fdatasync is relied on: the kernel may have dropped those dirty pages and
reported the error just once, so the page cache no longer says what the disk holds. The same
restore removes a segment a failed rollover half-created and the segments a failed rewrite
renamed into place, and finishes a rewrite that was committed but not cleaned up.

If the restore fails too, the journal is failed: each batch fails at once with StorageError,
and the restore is tried again before a later batch (at most once per `retry_interval`, and
also by the interval policy's timer) until it succeeds; then appends go on.
"""
from __future__ import annotations

import errno
import logging
import os
import time

from ... import layer1
from ...errors import StorageError
from .files import datasync, fsync_directory, open_file, unlink_quietly, write_all
from .rewrite import write_new_journal
from .segment import HEADER_SIZE, RECORD_HEADER_SIZE, close_marker, encode_header, new_salt, segment_name

# The batch write (framing, write, fdatasync): tether._native.journal_io, or its twin.
journal_io = layer1.module("journal_io")

logger = logging.getLogger("tether.journal")


def describe_os_error(exc: OSError) -> str:
    """An OSError's text and errno name, e.g. "No space left on device (ENOSPC)"."""
    name = errno.errorcode.get(exc.errno or 0)
    text = exc.strerror or str(exc)
    return f"{text} ({name})" if name else text


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass    # the fd is released all the same; its data was synced or is given up


class SegmentFiles:
    """The segment files of one open journal. Writer thread only; the event loop reads the
    counters and flags (plain attributes) and nothing else."""

    def __init__(self, directory: str, lock_fd: int, policy: str, interval: float,
                 segment_size: int, retry_interval: float) -> None:
        self.directory = directory
        self.policy = policy
        self.interval = interval
        self.segment_size = segment_size
        self.retry_interval = retry_interval
        self._lock_fd = lock_fd
        self._sizes: dict[int, int] = {}     # seq -> bytes, every live segment
        self.base = 0                        # seq of the segment that starts the journal
        self.seq = 0                         # seq of the segment appended to
        self.salt = 0                        # the journal's record CRC salt
        self._fd = -1
        self._size = 0                       # bytes in the current segment
        self._good_size = 0                  # bytes of it a restore keeps (see the docstring)
        self._unsynced: list[bytes] = []     # "interval": batches written since the last sync
        self._stray: list[str] = []          # files a failed step of ours left behind
        self._obsolete: list[int] = []       # old segments a committed rewrite has yet to delete
        self.broken: OSError | None = None   # set while the journal is failed
        self.retry_at = 0.0                  # while failed: no restore before this (monotonic)
        self.total_bytes = 0
        self.segment_count = 0
        self.dirty = False                   # written but not yet synced
        self.last_sync = time.monotonic()
        self.sync_count = 0

    def _path(self, seq: int) -> str:
        return os.path.join(self.directory, segment_name(seq))

    @property
    def last_size(self) -> int:
        """Bytes in the current (last) segment."""
        return self._size

    # ---- opening ----

    def adopt(self, seq: int, base: int, salt: int, size: int) -> None:
        """Recovery: count an existing segment (in seq order; the last becomes current)."""
        self._sizes[seq] = size
        self.total_bytes += size
        self.segment_count += 1
        self.seq, self.base, self.salt, self._size, self._good_size = seq, base, salt, size, size

    def open_current(self) -> None:
        """Recovery: open the last adopted segment for appending, or start the journal."""
        if not self._sizes:
            self.salt = new_salt()
            self._start_segment(1, 1, 0)
            return
        self._fd = open_file(self._path(self.seq), os.O_WRONLY | os.O_APPEND)

    def _start_segment(self, seq: int, base: int, prev_size: int) -> None:
        path = self._path(seq)
        fd = open_file(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND)
        try:
            write_all(fd, encode_header(seq, base, prev_size, self.salt))
            datasync(fd)
            fsync_directory(self.directory)
        except OSError:
            _close_quietly(fd)
            self._stray.append(path)     # ours, half made: the restore removes it
            raise
        if self._fd >= 0:
            _close_quietly(self._fd)
        self._fd, self.seq, self.base = fd, seq, base
        self._size = self._good_size = HEADER_SIZE
        self._unsynced = []
        self._sizes[seq] = HEADER_SIZE
        self.total_bytes += HEADER_SIZE
        self.segment_count += 1

    # ---- writing ----

    def write_batch(self, records: list[bytes]) -> None:
        """Write one batch, then sync it per the policy. Raises StorageError if that fails
        (the batch is then not in the journal) or if the journal is failed.

        Under "always" and "never" the framing, the write and the fdatasync are one call
        of journal_io (native: the GIL is released for all three)."""
        if self._fd < 0:
            raise ValueError("journal is closed")
        if self.broken is not None:
            self._restore_or_refuse()
        size = sum(map(len, records)) + RECORD_HEADER_SIZE * len(records)
        step = "write to"
        try:
            if self._size > HEADER_SIZE and self._size + size > self.segment_size:
                # Flush the full segment first so a crash keeps a prefix of the journal.
                if self.policy != "never":
                    step = "sync"
                    self._sync()
                step = "start a segment of"
                self._start_segment(self.seq + 1, self.base, self._size)
                step = "write to"
            if self.policy == "interval":
                data = journal_io.frame_records(records, self.salt)
                write_all(self._fd, data)
                self._grew(size)
                if time.monotonic() - self.last_sync >= self.interval:
                    step = "sync"
                    self._sync()
                else:
                    self._unsynced.append(data)
                    self.dirty = True
                return
            always = self.policy == "always"
            try:
                journal_io.write_records(self._fd, records, self.salt, always)
            except OSError as exc:
                if getattr(exc, "journal_step", None) == "sync":
                    step = "sync"
                raise
            self._grew(size)
            if always:
                self.sync_count += 1
                self.dirty = False
                self.last_sync = time.monotonic()
                self._unsynced = []
            self._good_size = self._size
        except OSError as exc:
            raise self._failed(exc, step) from exc

    # ---- the fast path (group_commit): these three run while no slow batch is in flight ----

    def fast_fd(self, size: int, in_flight: int) -> int:
        """Loop: the fd a batch of `size` framed bytes may be written to by the BatchWriter,
        behind `in_flight` bytes of its batches not yet done; -1 if the batch must go
        through write_batch (a new segment, the interval policy, a failed journal)."""
        if self._fd < 0 or self.broken is not None or self.policy == "interval":
            return -1
        end = self._size + in_flight
        if end > HEADER_SIZE and end + size > self.segment_size:
            return -1
        return self._fd

    def fast_written(self, size: int) -> None:
        """Loop: the BatchWriter wrote a batch of `size` bytes (and synced it under "always")."""
        self._grew(size)
        if self.policy == "always":
            self.sync_count += 1
            self.dirty = False
            self.last_sync = time.monotonic()
        self._good_size = self._size

    def fast_failed(self, err: int, step: str, message: str) -> StorageError:
        """Writer thread: a batch of the BatchWriter failed at `step` ("write" or "sync")
        with errno `err` (`message`: its text). Restores the last good state as for a failed
        write_batch and returns the StorageError for the batch."""
        exc = OSError(err, message)
        error = self._failed(exc, "write to" if step == "write" else "sync")
        error.__cause__ = exc
        return error

    def _grew(self, size: int) -> None:
        self._size += size
        self._sizes[self.seq] = self._size
        self.total_bytes += size

    def _sync(self) -> None:
        datasync(self._fd)
        self.sync_count += 1
        self.dirty = False
        self.last_sync = time.monotonic()
        self._good_size = self._size
        self._unsynced = []

    def sync_if_due(self) -> None:
        """The interval policy's timer: sync what was written since the last sync if that is
        at least an interval ago, or retry the restore of a failed journal when it is due."""
        if self._fd < 0:
            return
        now = time.monotonic()
        if self.broken is not None:
            if now >= self.retry_at:
                self._retry_restore()
            return
        if self.dirty and now - self.last_sync >= self.interval:
            try:
                self._sync()
            except OSError as exc:
                self._failed(exc, "sync")     # logged; the batches are written again by the restore

    # ---- failing and restoring ----

    def _failed(self, exc: OSError, step: str) -> StorageError:
        """After `step` failed with `exc`: restore at once (or mark the journal failed) and
        return the StorageError for the batch."""
        what = f"could not {step} the journal in {self.directory}: {describe_os_error(exc)}"
        self.broken = exc
        try:
            self._restore()
        except OSError as again:
            self._mark_failed(again)
            logger.error("journal in %s: %s failed (%s), and restoring its last good state failed too (%s): "
                         "appends fail until a retry (at most every %s s) succeeds", self.directory, step,
                         describe_os_error(exc), describe_os_error(again), self.retry_interval)
            return StorageError(f"{what}; restoring its last good state failed too ({describe_os_error(again)}): "
                                f"appends fail until that succeeds")
        logger.warning("journal in %s: %s failed (%s); its last good state is restored (segment %s, %d bytes) "
                       "and appends go on", self.directory, step, describe_os_error(exc), segment_name(self.seq),
                       self._size)
        return StorageError(what)

    def _mark_failed(self, exc: OSError) -> None:
        self.broken = exc
        self.retry_at = time.monotonic() + self.retry_interval

    def _retry_restore(self) -> bool:
        try:
            self._restore()
        except OSError as exc:
            self._mark_failed(exc)
            return False
        logger.warning("journal in %s: its last good state is restored; appends go on", self.directory)
        return True

    def _restore_or_refuse(self) -> None:
        """Before a batch or rewrite of a failed journal: restore if a retry is due, else (or
        if the restore fails again) raise StorageError at once."""
        if time.monotonic() < self.retry_at or not self._retry_restore():
            broken = self.broken
            assert broken is not None
            raise StorageError(f"the journal in {self.directory} cannot write since a write failed "
                               f"({describe_os_error(broken)}); it retries restoring its last good state "
                               f"at most every {self.retry_interval} s") from broken

    def _restore(self) -> None:
        """Make the files what the journal's state says they are; see the module docstring."""
        if self._stray:
            for path in self._stray:
                unlink_quietly(path)
            fsync_directory(self.directory)
            self._stray = []
        if self._obsolete:
            fsync_directory(self.directory)       # the rewrite's renames, before the deletions
            for seq in self._obsolete:
                unlink_quietly(self._path(seq))
            fsync_directory(self.directory)
            self._obsolete = []
        redo = b"".join(self._unsynced)
        os.ftruncate(self._fd, self._good_size)
        if redo:
            write_all(self._fd, redo)
        os.fsync(self._fd)
        size = self._good_size + len(redo)
        self.total_bytes += size - self._size
        self._size = self._good_size = self._sizes[self.seq] = size
        self._unsynced = []
        self.dirty = False
        self.last_sync = time.monotonic()
        self.broken = None

    # ---- compaction ----

    def rewrite(self, records: list[bytes]) -> None:
        """Write `records` as a new journal start after the current segment, then delete
        every older segment (see rewrite.py). Raises StorageError if that fails: before the
        new start is in place the old journal is unchanged; after it, the new journal is
        the journal and the cleanup is finished by the restore."""
        if self._fd < 0:
            raise ValueError("journal is closed")
        if self.broken is not None:
            self._restore_or_refuse()
        try:
            new = write_new_journal(self.directory, self.seq + 1, new_salt(), records, self.segment_size,
                                    self._stray)
        except OSError as exc:
            if self._stray:
                raise self._failed(exc, "rewrite") from exc
            raise StorageError(f"could not rewrite the journal in {self.directory}: {describe_os_error(exc)}; "
                               f"the journal is unchanged") from exc
        old = sorted(self._sizes)
        _close_quietly(self._fd)
        self._fd = new.fd
        self._sizes = dict(new.sizes)
        self.base, self.salt, self.seq = new.base, new.salt, max(new.sizes)
        self._size = self._good_size = new.sizes[self.seq]
        self._unsynced = []
        self.dirty = False
        self.total_bytes = sum(new.sizes.values())
        self.segment_count = len(new.sizes)
        self._obsolete = old
        try:
            fsync_directory(self.directory)
            for seq in old:
                unlink_quietly(self._path(seq))
            fsync_directory(self.directory)
            self._obsolete = []
        except OSError as exc:
            error = self._failed(exc, "finish rewriting")
            if self.broken is not None:
                raise error from exc
        logger.info("journal in %s rewritten: %d records in %d segments, %d older segments deleted",
                    self.directory, len(records), len(new.sizes), len(old))

    # ---- closing ----

    def close(self) -> None:
        """Sync what was written (unless the policy is "never"), mark the clean close, and
        close the files. Raises StorageError if batches acknowledged under "interval" could
        not be made durable."""
        lost: StorageError | None = None
        try:
            if self._fd >= 0:
                if self.broken is not None:
                    self._retry_restore()
                if self.broken is None and self.policy != "never":
                    try:
                        if self.dirty:
                            self._sync()
                        write_all(self._fd, close_marker(self.salt))
                        datasync(self._fd)
                    except OSError as exc:
                        self._failed(exc, "close")
                if self.broken is not None and self._unsynced:
                    lost = StorageError(f"the journal in {self.directory} closed with {len(self._unsynced)} written "
                                        f"batch(es) it could not sync: {describe_os_error(self.broken)}")
                    logger.error("%s", lost)
                os.close(self._fd)
        finally:
            self._fd = -1
            if self._lock_fd >= 0:
                os.close(self._lock_fd)   # releases the flock
                self._lock_fd = -1
        if lost is not None:
            raise lost from self.broken
