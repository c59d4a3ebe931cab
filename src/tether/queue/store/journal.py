"""The durable store's journal: an append-only, segmented log of opaque records.

`Journal.open(directory)` recovers whatever a previous run left (see recovery.py: only a torn
tail is repaired; damage anywhere else raises JournalCorrupt and changes nothing), then
appends records with group commit (`group_commit.GroupCommit`): concurrent `append` calls
share one write and one fdatasync on a single writer thread. `rewrite(snapshot)` compacts:
the owner's snapshot becomes the new start of the journal and every older segment is
deleted. A failed write fails its batch with StorageError and the journal restores its last
good state by itself (segment_files.py). The on-disk format is in `segment`.

Everything under `SegmentFiles` runs on the writer thread, except that the loop asks it
where a fast batch may go and counts the bytes the BatchWriter (journal_io) wrote, both
while no job of the writer thread is in flight (group_commit).
"""
from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from ...histogram import Histogram
from . import segment_files
from .files import LOCK_NAME  # noqa: F401  (re-exported: the lock file's name)
from .group_commit import GroupCommit, fast_path_enabled
from .recovery import recover
from .segment import MAX_RECORD_SIZE
from .segment_files import SegmentFiles
from .writer_thread import WriterThread, _settle

FSYNC_POLICIES = ("always", "interval", "never")
DEFAULT_SEGMENT_SIZE = 64 * 1024 * 1024
MIN_SEGMENT_SIZE = 256
MAX_SEGMENT_SIZE = 1 << 40
DEFAULT_RETRY_INTERVAL = 0.5


class Journal:
    """An open journal. Create it with `await Journal.open(directory, ...)`.

    Attributes set by recovery: `recovered` (the records that survived, in append order;
    the owner replays them and may then drop the list) and `recovery_log` (one line per
    repair recovery made, also logged at WARNING on the "tether.journal" logger).

    A write or sync that fails (a full disk, an I/O error) fails the records of its batch
    with StorageError; the journal then restores its files to their last good state and
    later appends work again. Under "interval" a failed background sync loses nothing that
    was acknowledged: the batches written since the last good sync are written again from
    memory by the restore (they are lost only if the process ends while every restore
    fails, just as an OS crash under this policy loses them). See segment_files.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: WriterThread,
                 files: SegmentFiles, recovered: list[bytes], recovery_log: list[str],
                 max_in_flight: int = 1) -> None:
        # Use Journal.open(): construction needs recovery to have run on the writer thread.
        self._loop = loop
        self._thread = thread
        self._files = files
        self.recovered: list[bytes] = recovered
        self.recovery_log: list[str] = recovery_log
        # the fast path: batches framed, written and synced by a thread that never takes
        # the GIL (journal_io.BatchWriter; not under "interval", which keeps its batches)
        self._writer = None
        if files.policy != "interval" and fast_path_enabled():
            # Under "never" no append waits for a sync, so the writer need not run the
            # moment it is woken: in the background it does not preempt the loop at each
            # batch. Under "always" each batch's sync latency is what appends wait for.
            self._writer = segment_files.journal_io.BatchWriter(background=files.policy == "never")
        # "always" syncs every batch: its write + sync time is the sync's latency
        sync_seconds = Histogram() if files.policy == "always" else None
        self._commit = GroupCommit(loop, thread, files.write_batch,
                                   self._after_batch if files.policy == "interval" else None,
                                   max_in_flight, files if self._writer is not None else None, self._writer,
                                   sync_seconds)
        self._closed = False
        self._close_job: asyncio.Future | None = None
        self._sync_timer: asyncio.TimerHandle | None = None

    @classmethod
    async def open(cls, directory: str | os.PathLike, *, fsync: str = "always",
                   fsync_interval: float = 0.05, segment_size: int = DEFAULT_SEGMENT_SIZE,
                   max_in_flight: int = 1, retry_interval: float = DEFAULT_RETRY_INTERVAL,
                   preallocate: bool = True) -> Journal:
        """Open (creating if needed) the journal in `directory` and recover it.

        fsync: "always" (an append returns once its bytes are fdatasync'ed), "interval"
        (fdatasync at most every `fsync_interval` seconds; an append returns once written)
        or "never" (write only). A new segment starts when the current one would grow past
        `segment_size` bytes. `max_in_flight`: batches in flight at once
        when a sync is quicker than the loop's turn (2 lets the next batch's write start
        while the loop runs the previous one's senders; see group_commit, pipelining).
        `retry_interval`: seconds between attempts to restore the files after a failed write
        left them in an unknown state (appends fail at once meanwhile). `preallocate` (fsync
        "always" only): zero-fill the segment ahead of its records in the background, so each
        batch's fdatasync overwrites written blocks instead of growing the file (cheaper on
        ext4 and most filesystems); False appends as before, for a filesystem where writing
        zeros ahead does not pay (copy-on-write ones such as btrfs or ZFS).

        The directory is made 0700 and files in it 0600; none is opened through a symbolic
        link. Recovery repairs a torn tail only (the unsynced end of the last batch; one line
        in `recovery_log`); any other damage raises JournalCorrupt naming the file and byte
        offset, and nothing is changed (`tether qm repair` salvages such a journal). Raises
        ValueError naming a bad argument, QueueError if another Journal holds the directory,
        OSError on I/O failure or a symbolic link in place of a journal file."""
        path = _check_directory(directory)
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(map(repr, FSYNC_POLICIES))}, got {fsync!r}")
        if isinstance(fsync_interval, bool) or not isinstance(fsync_interval, (int, float)) \
                or not math.isfinite(fsync_interval) or fsync_interval <= 0:
            raise ValueError(f"fsync_interval must be a finite number of seconds > 0, got {fsync_interval!r}")
        if isinstance(segment_size, bool) or not isinstance(segment_size, int) \
                or not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
            raise ValueError(f"segment_size must be an int from {MIN_SEGMENT_SIZE} to {MAX_SEGMENT_SIZE}, "
                             f"got {segment_size!r}")
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ValueError(f"max_in_flight must be an int >= 1, got {max_in_flight!r}")
        if isinstance(retry_interval, bool) or not isinstance(retry_interval, (int, float)) \
                or not math.isfinite(retry_interval) or retry_interval <= 0:
            raise ValueError(f"retry_interval must be a finite number of seconds > 0, got {retry_interval!r}")
        if not isinstance(preallocate, bool):
            raise ValueError(f"preallocate must be True or False, got {preallocate!r}")
        loop = asyncio.get_running_loop()
        thread = WriterThread(loop)
        opened = loop.create_future()
        thread.post(recover, (path, segment_size, fsync, float(fsync_interval), float(retry_interval), preallocate),
                    _opened, opened)
        try:
            files, recovered, recovery_log = await opened
        except BaseException:
            # Cancelled while recovery ran on: _opened releases what it opens once it finishes.
            thread.stop()
            raise
        return cls(loop, thread, files, recovered, recovery_log, max_in_flight)

    # ---- appending ----

    async def append(self, record: bytes) -> None:
        """Append one record; returns when it is durable per the fsync policy.

        Concurrent appends are group-committed. Cancelling the call does not withdraw the
        record: it may still be written. Raises ValueError if the journal is closed or the
        record is not bytes-like or too large, and StorageError if its batch could not be
        written (then it is not in the journal)."""
        if self._closed:
            raise ValueError("journal is closed")
        if type(record) is not bytes:
            record = _as_record(record, "record")
        elif len(record) > MAX_RECORD_SIZE:
            raise ValueError(f"record is {len(record)} bytes; the limit is {MAX_RECORD_SIZE}")
        await self._commit.add(record)

    def append_then(self, record: bytes, callback: Callable[[object, BaseException | None], None],
                    arg: object) -> None:
        """Append one record without a future: `callback(arg, None)` runs on the loop
        once it is durable per the fsync policy, `callback(arg, error)` if writing it
        failed (error is a StorageError); callbacks run in append order. The record goes
        to the writer thread at once (the caller batches; see group_commit). Raises ValueError at once if the
        journal is closed or the record is not bytes or too large."""
        if self._closed:
            raise ValueError("journal is closed")
        if type(record) is not bytes:
            raise ValueError(f"record must be bytes, got {type(record).__name__}")
        if len(record) > MAX_RECORD_SIZE:
            raise ValueError(f"record is {len(record)} bytes; the limit is {MAX_RECORD_SIZE}")
        self._commit.add_then(record, callback, arg)

    def cut_early(self, busy_for: float) -> bool:
        """True when a record its owner has been filling for `busy_for` seconds of the
        loop's turn had better be appended now than at the end of the turn (the journal is
        idle and a sync is quicker than the turn: see group_commit, pipelining)."""
        return self._commit.cut_early(busy_for)

    @property
    def batches_in_flight(self) -> int:
        """Batches handed to the writer thread and not yet reported done."""
        return self._commit.in_flight

    async def append_many(self, records: list[bytes]) -> None:
        """Append several records in one batch, in order; returns when all are durable.
        Not atomic: after a crash a prefix of them may survive. Raises as `append`."""
        if self._closed:
            raise ValueError("journal is closed")
        checked = _as_records(records, "records")
        if not checked:
            return
        await self._commit.add_many(checked)

    # ---- compaction ----

    async def rewrite(self, snapshot: Callable[[], list[bytes]]) -> None:
        """Compact the journal: `snapshot()` is called at once, synchronously, before this
        coroutine first yields, so its records must cover every record appended before the
        call (including appends still in flight). They become the new start of the journal
        (written to fresh segments, fsync'ed, directory fsync'ed) and every older segment is
        deleted. Appends made while the rewrite runs are written after it. Raises
        ValueError for a closed journal or a bad snapshot, StorageError if writing fails:
        before the new segments are in place the journal is then unchanged and usable;
        after it the new journal stands, and the journal finishes deleting the old segments
        (appends wait for that, as after any failed write)."""
        if self._closed:
            raise ValueError("journal is closed")
        if not callable(snapshot):
            raise ValueError(f"snapshot must be a callable returning a list of bytes, got {snapshot!r}")
        records = _as_records(snapshot(), "snapshot()")
        await self._commit.run_exclusive(self._files.rewrite, records)

    # ---- closing ----

    async def close(self) -> None:
        """Write and sync every pending append, mark the clean close, then close the files.
        Idempotent. Raises StorageError if appends acknowledged under the "interval" policy
        could not be made durable."""
        if self._close_job is None:
            self._closed = True
            if self._sync_timer is not None:
                self._sync_timer.cancel()
                self._sync_timer = None
            self._close_job = asyncio.ensure_future(self._close())
        await asyncio.shield(self._close_job)

    async def _close(self) -> None:
        try:
            await self._commit.run_exclusive(self._files.close)
        finally:
            self._commit.close()
            if self._writer is not None:
                self._writer.close()
            self._thread.stop()

    async def __aenter__(self) -> Journal:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---- state ----

    @property
    def closed(self) -> bool:
        """True once close() has been called."""
        return self._closed

    @property
    def directory(self) -> str:
        """The journal's directory (absolute)."""
        return self._files.directory

    @property
    def fsync(self) -> str:
        """The fsync policy: "always", "interval" or "never"."""
        return self._files.policy

    @property
    def fsync_interval(self) -> float:
        """Seconds between syncs under the "interval" policy."""
        return self._files.interval

    @property
    def segment_size(self) -> int:
        """Bytes after which a new segment is started."""
        return self._files.segment_size

    @property
    def size_bytes(self) -> int:
        """Bytes of records (and segment headers) across all segments; the zero-filled
        space ahead of the records is not counted."""
        return self._files.total_bytes

    @property
    def segment_count(self) -> int:
        """Number of segment files."""
        return self._files.segment_count

    @property
    def batch_count(self) -> int:
        """Batches written since open (record_count / batch_count is the average batch)."""
        return self._commit.batch_count

    @property
    def record_count(self) -> int:
        """Records written since open by append/append_many."""
        return self._commit.record_count

    @property
    def sync_seconds(self) -> Histogram | None:
        """How long each batch took to write and fdatasync, under fsync="always" (None
        under "interval" and "never", which do not sync each batch)."""
        return self._commit.sync_seconds

    @property
    def sync_count(self) -> int:
        """fdatasync calls made for appended data since open."""
        return self._files.sync_count

    # ---- interval policy ----

    def _after_batch(self) -> None:
        # Written but not synced, or failed with written batches to restore: make sure a
        # sync (or a restore) follows once the interval is up.
        files = self._files
        if (files.dirty or files.broken is not None) and self._sync_timer is None and not self._closed:
            now = time.monotonic()
            if files.broken is not None:
                # + 2 ms: loop timers may fire a little early, and a retry not yet due re-arms
                delay = max(0.0, files.retry_at - now) + 0.002
            else:
                delay = max(0.0, files.interval - (now - files.last_sync))
            self._sync_timer = self._loop.call_later(delay, self._interval_sync)

    def _interval_sync(self) -> None:
        self._sync_timer = None
        if self._closed:
            return
        self._thread.post(self._files.sync_if_due, (), _synced, self)


def _synced(journal: Journal, _result: None, _error: BaseException | None) -> None:
    journal._after_batch()


def _opened(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        if result is not None:
            result[0].close()      # Journal.open was cancelled: release what recovery opened
        return
    _settle(future, result, error)


def _check_directory(directory: object) -> str:
    if not isinstance(directory, (str, os.PathLike)):
        raise ValueError(f"directory must be a str or os.PathLike, got {directory!r}")
    path = os.fspath(directory)
    if not isinstance(path, str) or not path:
        raise ValueError(f"directory must be a non-empty str path, got {directory!r}")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"directory {path!r} exists and is not a directory")
    return os.path.abspath(path)


def _as_record(record: object, what: str) -> bytes:
    if isinstance(record, bytes):
        data = record
    elif isinstance(record, (bytearray, memoryview)):
        data = bytes(record)   # a copy: the caller may reuse its buffer before we write
    else:
        raise ValueError(f"{what} must be bytes-like, got {type(record).__name__}")
    if len(data) > MAX_RECORD_SIZE:
        raise ValueError(f"{what} is {len(data)} bytes; the limit is {MAX_RECORD_SIZE}")
    return data


def _as_records(records: object, what: str) -> list[bytes]:
    if isinstance(records, (bytes, bytearray, memoryview, str)) or not isinstance(records, Iterable):
        raise ValueError(f"{what} must be a list of bytes, got {type(records).__name__}")
    return [r if type(r) is bytes and len(r) <= MAX_RECORD_SIZE else _as_record(r, f"{what}[{i}]")
            for i, r in enumerate(records)]
