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

Preallocation (under "always", with `preallocate`): the current segment is zero-filled ahead
of its last record -- zeros really written, then synced -- so that a batch's fdatasync
overwrites blocks the file already has and need not commit a new size (on ext4 an append's
sync costs about twice an overwrite's). The zeroing runs on the writer thread as a job of
its own (`zero_ahead`, through an fd of its own: see there), a chunk at a time (64 KiB --
an eighth of a smaller segment, none under 32 KiB -- growing with the segment up to 4 MiB,
about one chunk ahead), while
the fast path's batches go on below it: the loop plans it (`zero_plan`) and keeps fast
batches below the planned start until it is done. Records are written at the fd's position
(never O_APPEND, whose writes would go after the zeros), which the writes advance and every
cut sets again. A finished segment is cut to its last record before the next one starts,
and `close()` cuts the zero tail before its marker. The restore cuts the zero tail too (it
ftruncates to the good size); zeroing then starts again from there.

Sync marks (segment.py): every batch under "always", and under "interval" a batch written
after a completed sync of everything before it, starts with one. What makes them true:
recovery syncs the last segment before the first append, a new segment's header is synced,
and a restore ends with a sync.
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
from .segment import (
    HEADER_SIZE,
    RECORD_HEADER_SIZE,
    close_marker,
    encode_header,
    new_salt,
    segment_name,
)

# The batch write (framing, write, fdatasync): tether._native.journal_io, or its twin.
journal_io = layer1.module("journal_io")

logger = logging.getLogger("tether.journal")

# Zero-filling ahead: the first chunk of a segment, the largest, and the size of each write
# (pieces keep the inode lock, which a batch's write also takes, for a short time only).
ZERO_MIN_CHUNK = 64 * 1024
ZERO_MAX_CHUNK = 4 * 1024 * 1024
ZERO_PIECE = 256 * 1024
ZERO_SMALLEST = 4096
_ZEROS = bytes(ZERO_PIECE)


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
                 segment_size: int, retry_interval: float, preallocate: bool = True) -> None:
        self.directory = directory
        self.policy = policy
        # new segments are preallocated (see the module docstring): "always" only, the one
        # policy whose appends wait for each sync
        self.preallocate = preallocate and policy == "always"
        self.interval = interval
        self.segment_size = segment_size
        self.retry_interval = retry_interval
        self._lock_fd = lock_fd
        self._sizes: dict[int, int] = {}     # seq -> bytes, every live segment
        self.base = 0                        # seq of the segment that starts the journal
        self.seq = 0                         # seq of the segment appended to
        self.salt = 0                        # the journal's record CRC salt
        self._fd = -1
        self._flagged = False                # the current segment is flagged preallocated
        self._size = 0                       # bytes in the current segment (its records)
        # the current segment's file size as far as zero jobs know (writer thread): > _size
        # while zero-filled space is ahead of the records
        self._zeroed = 0
        self._zeroing = -1                   # loop: start of the zero job in flight (-1: none)
        self._zero_retry_at = 0.0            # loop: no zero job before this after one failed
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

    @property
    def mark(self) -> bool:
        """Each fast batch starts with a sync mark: "always", in a preallocated segment."""
        return self._flagged and self.policy == "always"

    # ---- opening ----

    def adopt(self, seq: int, base: int, salt: int, size: int, file_size: int | None = None,
              preallocated: bool = False) -> None:
        """Recovery: count an existing segment (in seq order; the last becomes current):
        `size` bytes of records in a file of `file_size` bytes (zeros after the records),
        flagged `preallocated`. The last segment goes on in its own mode; new segments get
        the journal's."""
        self._sizes[seq] = size
        self.total_bytes += size
        self.segment_count += 1
        self.seq, self.base, self.salt, self._size, self._good_size = seq, base, salt, size, size
        self._zeroed = size if file_size is None else file_size
        self._flagged = preallocated

    def open_current(self) -> None:
        """Recovery: open the last adopted segment for appending, or start the journal."""
        if not self._sizes:
            self.salt = new_salt()
            self._start_segment(1, 1, 0)
            return
        fd = open_file(self._path(self.seq), os.O_WRONLY)
        try:
            # What recovery kept may be in the page cache only (the process was killed
            # before its sync): durable now, so the next batch's sync mark says the truth.
            os.fsync(fd)
            os.lseek(fd, self._size, os.SEEK_SET)
        except OSError:
            _close_quietly(fd)
            raise
        self._fd = fd

    def _cut_zero_tail(self) -> None:
        """Cut the current segment's zero-filled space off (before it is finished or closed),
        and sync that. The file's own size decides: `_zeroed` may lag behind it (the loop
        and the writer thread both move the sizes)."""
        if os.fstat(self._fd).st_size > self._size:
            os.ftruncate(self._fd, self._size)
            datasync(self._fd)
        self._zeroed = self._size

    def _start_segment(self, seq: int, base: int, prev_size: int) -> None:
        if self._fd >= 0:
            self._cut_zero_tail()      # prev_size is the finished segment's size on disk
        path = self._path(seq)
        fd = open_file(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            write_all(fd, encode_header(seq, base, prev_size, self.salt, self.preallocate))
            datasync(fd)
            fsync_directory(self.directory)
        except OSError:
            _close_quietly(fd)
            self._stray.append(path)     # ours, half made: the restore removes it
            raise
        if self._fd >= 0:
            _close_quietly(self._fd)
        self._fd, self.seq, self.base, self._flagged = fd, seq, base, self.preallocate
        self._size = self._good_size = self._zeroed = HEADER_SIZE
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
                # a mark when everything before was synced (nothing written since)
                mark = self._flagged and not self.dirty
                data = journal_io.frame_records(records, self.salt, mark)
                write_all(self._fd, data)
                self._grew(len(data))
                if time.monotonic() - self.last_sync >= self.interval:
                    step = "sync"
                    self._sync()
                else:
                    self._unsynced.append(data)
                    self.dirty = True
                return
            always = self.policy == "always"
            try:
                written = journal_io.write_records(self._fd, records, self.salt, always, self.mark)
            except OSError as exc:
                if getattr(exc, "journal_step", None) == "sync":
                    step = "sync"
                raise
            self._grew(written)
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
        if 0 <= self._zeroing < end + size:
            return -1       # it would reach the region being zero-filled
        return self._fd

    def zero_plan(self, in_flight: int) -> tuple[int, int, int] | None:
        """Loop, with no batch of the writer thread in flight: the zero job to post now
        (seq, start, stop) -- the next chunk, once less than a chunk is zero-filled ahead of
        the records and `in_flight` bytes of fast batches -- or None. Until `zero_done`, fast
        batches stay below `start`."""
        if not (self.preallocate and self._flagged) or self._zeroing >= 0 or self._fd < 0 or self.broken is not None:
            return None
        end = self._size + in_flight
        zeroed = self._zeroed
        first = min(ZERO_MIN_CHUNK, self.segment_size // 8)
        if first < ZERO_SMALLEST:
            return None         # segments under 32 KiB: a sync per few records is no gain
        chunk = min(max(first, end - HEADER_SIZE), ZERO_MAX_CHUNK)     # grows with the segment
        if zeroed - end >= chunk or time.monotonic() < self._zero_retry_at:
            return None
        # caught up (a new segment): leave a gap, which batches fill by appending meanwhile
        start = max(zeroed, end + chunk // 4)
        stop = min(start + chunk, self.segment_size)
        if stop - start < first // 2:
            return None         # the segment is (nearly) full: the next one gets zeros
        self._zeroing = start
        return self.seq, start, stop

    def zero_ahead(self, seq: int, start: int, stop: int) -> bool | None:
        """Writer thread: write zeros over [start, stop) of segment `seq` and sync them;
        None (nothing done) if that is no longer the current segment, or its records have
        reached `start` meanwhile (a batch of this thread), or the journal is failed. True
        if done; a failure is logged and False (zeroing is tried again after
        `retry_interval`)."""
        if seq != self.seq or self._fd < 0 or self.broken is not None or self._size > start:
            return None
        try:
            # An open file description of its own: this fsync also writes back the batches'
            # pages, and Linux reports a failed writeback once per file description. Through
            # the batches' fd, an error this job logs and goes past would never reach the
            # fdatasync of the batch whose pages were lost, which would be acknowledged.
            fd = open_file(self._path(seq), os.O_WRONLY)
            try:
                for offset in range(start, stop, ZERO_PIECE):
                    os.pwrite(fd, _ZEROS[:min(ZERO_PIECE, stop - offset)], offset)
                # fsync, not fdatasync: the new size must be committed anyway, and so the
                # fdatasync calls stay one per batch (tests count them)
                os.fsync(fd)
            finally:
                _close_quietly(fd)
        except OSError as exc:
            logger.warning("journal in %s: zero-filling %d bytes ahead of the records of segment %s failed (%s); "
                           "batches go on appending", self.directory, stop - start, segment_name(seq),
                           describe_os_error(exc))
            return False
        self._zeroed = max(self._zeroed, stop)
        return True

    def zero_done(self, _arg: object, done: bool | None, error: BaseException | None) -> None:
        """Loop: the zero job planned last is over (`done`: True, or None if skipped, or
        False if it failed)."""
        self._zeroing = -1
        if done is False or error is not None:
            self._zero_retry_at = time.monotonic() + self.retry_interval

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
        # also cuts the zero-filled space (and whatever a failed write left in it)
        os.ftruncate(self._fd, self._good_size)
        os.lseek(self._fd, self._good_size, os.SEEK_SET)
        self._zeroed = self._good_size
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
                                    self._stray, self.preallocate)
        except OSError as exc:
            if self._stray:
                raise self._failed(exc, "rewrite") from exc
            raise StorageError(f"could not rewrite the journal in {self.directory}: {describe_os_error(exc)}; "
                               f"the journal is unchanged") from exc
        old = sorted(self._sizes)
        _close_quietly(self._fd)
        self._fd = new.fd
        self._sizes = dict(new.sizes)
        self.base, self.salt, self.seq, self._flagged = new.base, new.salt, max(new.sizes), self.preallocate
        self._size = self._good_size = self._zeroed = new.sizes[self.seq]
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
                        # the cut is synced before the marker is written: a marker with
                        # zeros still after it would read as damage after a power loss
                        self._cut_zero_tail()
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
