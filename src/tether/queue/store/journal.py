"""The durable store's journal: an append-only, segmented log of opaque records.

`Journal.open(directory)` recovers whatever a previous run left (see `_recover`), then
appends records with group commit (`group_commit.GroupCommit`): concurrent `append` calls
share one write and one fdatasync on a single writer thread. `rewrite(snapshot)` compacts:
the owner's snapshot becomes the new start of the journal and every older segment is
deleted. The on-disk format is in `segment`.

Everything under `_SegmentFiles` runs on the writer thread only; the event loop reads its
counters (plain ints) and nothing else.
"""
from __future__ import annotations

import asyncio
import fcntl
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

from ...errors import QueueError
from .group_commit import GroupCommit
from .segment import (
    HEADER_SIZE,
    MAX_RECORD_SIZE,
    RECORD_HEADER_SIZE,
    TMP_SUFFIX,
    BadHeader,
    SegmentHeader,
    create_segment,
    datasync,
    decode_header,
    encode_header,
    encode_records,
    fsync_directory,
    parse_segment_name,
    scan_records,
    segment_name,
    write_all,
)

logger = logging.getLogger("tether.journal")

FSYNC_POLICIES = ("always", "interval", "never")
DEFAULT_SEGMENT_SIZE = 64 * 1024 * 1024
MIN_SEGMENT_SIZE = 256
MAX_SEGMENT_SIZE = 1 << 40
LOCK_NAME = "LOCK"


class Journal:
    """An open journal. Create it with `await Journal.open(directory, ...)`.

    Attributes set by recovery: `recovered` (the records that survived, in append order;
    the owner replays them and may then drop the list) and `recovery_log` (one line per
    repair recovery made, also logged at WARNING on the "tether.journal" logger).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor,
                 files: "_SegmentFiles", recovered: list[bytes], recovery_log: list[str],
                 max_in_flight: int = 1) -> None:
        # Use Journal.open(): construction needs recovery to have run on the writer thread.
        self._loop = loop
        self._executor = executor
        self._files = files
        self.recovered: list[bytes] = recovered
        self.recovery_log: list[str] = recovery_log
        self._commit = GroupCommit(loop, executor, files.write_batch,
                                   self._after_batch if files.policy == "interval" else None,
                                   max_in_flight)
        self._closed = False
        self._close_job: asyncio.Future | None = None
        self._sync_timer: asyncio.TimerHandle | None = None

    @classmethod
    async def open(cls, directory: str | os.PathLike, *, fsync: str = "always",
                   fsync_interval: float = 0.05,
                   segment_size: int = DEFAULT_SEGMENT_SIZE, max_in_flight: int = 1) -> "Journal":
        """Open (creating if needed) the journal in `directory` and recover it.

        fsync: "always" (an append returns once its bytes are fdatasync'ed), "interval"
        (fdatasync at most every `fsync_interval` seconds; an append returns once written)
        or "never" (write only). A new segment starts when the current one would grow past
        `segment_size` bytes. `max_in_flight`: batches handed to the writer thread at once
        (2 lets the next batch's write start as soon as the previous fdatasync returns;
        see group_commit). Raises ValueError naming a bad argument, QueueError if another
        Journal holds the directory, JournalCorrupt if it holds a newer format, OSError on
        I/O failure."""
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
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tether-journal")
        job = executor.submit(_recover, path, segment_size, fsync, float(fsync_interval))
        try:
            files, recovered, recovery_log = await asyncio.wrap_future(job, loop=loop)
        except BaseException:
            # Cancelled while recovery ran on: release what it opens once it finishes.
            job.add_done_callback(_close_abandoned)
            executor.shutdown(wait=False)
            raise
        return cls(loop, executor, files, recovered, recovery_log, max_in_flight)

    # ---- appending ----

    async def append(self, record: bytes) -> None:
        """Append one record; returns when it is durable per the fsync policy.

        Concurrent appends are group-committed. Cancelling the call does not withdraw the
        record: it may still be written. Raises ValueError if the journal is closed or the
        record is not bytes-like or too large, and the writer's OSError (then QueueError on
        every later append) if the disk fails."""
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
        failed; callbacks run in append order. The record goes to the writer thread at
        once (the caller batches; see group_commit). Raises ValueError at once if the
        journal is closed or the record is not bytes or too large."""
        if self._closed:
            raise ValueError("journal is closed")
        if type(record) is not bytes:
            raise ValueError(f"record must be bytes, got {type(record).__name__}")
        if len(record) > MAX_RECORD_SIZE:
            raise ValueError(f"record is {len(record)} bytes; the limit is {MAX_RECORD_SIZE}")
        self._commit.add_then(record, callback, arg)

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
        ValueError for a closed journal or a bad snapshot; on an I/O error before the new
        segments are in place the journal is unchanged and usable."""
        if self._closed:
            raise ValueError("journal is closed")
        if not callable(snapshot):
            raise ValueError(f"snapshot must be a callable returning a list of bytes, got {snapshot!r}")
        records = _as_records(snapshot(), "snapshot()")
        await self._commit.run_exclusive(self._files.rewrite, records)

    # ---- closing ----

    async def close(self) -> None:
        """Write and sync every pending append, then close the files. Idempotent."""
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
            self._executor.shutdown(wait=False)

    async def __aenter__(self) -> "Journal":
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
        """Bytes on disk across all segments."""
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
    def sync_count(self) -> int:
        """fdatasync calls made for appended data since open."""
        return self._files.sync_count

    # ---- interval policy ----

    def _after_batch(self) -> None:
        # Written but not synced: make sure a sync follows once the interval is up.
        files = self._files
        if files.dirty and self._sync_timer is None and not self._closed:
            delay = max(0.0, files.interval - (time.monotonic() - files.last_sync))
            self._sync_timer = self._loop.call_later(delay, self._interval_sync)

    def _interval_sync(self) -> None:
        self._sync_timer = None
        if self._closed:
            return
        job = self._executor.submit(self._files.sync_if_due)
        job.add_done_callback(lambda _done: _call_on_loop(self._loop, self._after_batch))


def _call_on_loop(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    try:
        loop.call_soon_threadsafe(callback)
    except RuntimeError:
        pass   # the loop was closed under a running journal


def _close_abandoned(job) -> None:
    if not job.cancelled() and job.exception() is None:
        job.result()[0].close()


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


class _SegmentFiles:
    """The segment files of one open journal. Writer thread only."""

    def __init__(self, directory: str, lock_fd: int, policy: str, interval: float,
                 segment_size: int) -> None:
        self.directory = directory
        self.policy = policy
        self.interval = interval
        self.segment_size = segment_size
        self._lock_fd = lock_fd
        self._sizes: dict[int, int] = {}     # seq -> bytes, every live segment
        self.base = 0                        # seq of the segment that starts the journal
        self.seq = 0                         # seq of the segment appended to
        self._fd = -1
        self._size = 0                       # bytes in the current segment
        self.total_bytes = 0
        self.segment_count = 0
        self.failure: BaseException | None = None
        self.dirty = False                   # written but not yet synced
        self.last_sync = time.monotonic()
        self.sync_count = 0

    def _path(self, seq: int) -> str:
        return os.path.join(self.directory, segment_name(seq))

    @property
    def last_size(self) -> int:
        """Bytes in the current (last) segment."""
        return self._size

    def adopt(self, seq: int, base: int, size: int) -> None:
        """Recovery: count an existing segment (in seq order; the last becomes current)."""
        self._sizes[seq] = size
        self.total_bytes += size
        self.segment_count += 1
        self.seq, self.base, self._size = seq, base, size

    def open_current(self) -> None:
        """Recovery: open the last adopted segment for appending, or start the journal."""
        if not self._sizes:
            self._start_segment(1, 1, 0)
            return
        self._fd = os.open(self._path(self.seq), os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))

    def _start_segment(self, seq: int, base: int, prev_size: int) -> None:
        fd = create_segment(self._path(seq), seq, base, prev_size)
        fsync_directory(self.directory)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self.seq, self.base, self._size = fd, seq, base, HEADER_SIZE
        self._sizes[seq] = HEADER_SIZE
        self.total_bytes += HEADER_SIZE
        self.segment_count += 1

    def _check_usable(self) -> None:
        if self.failure is not None:
            raise QueueError(f"journal in {self.directory} is unusable after an I/O error: "
                             f"{self.failure}") from self.failure
        if self._fd < 0:
            raise ValueError("journal is closed")

    def write_batch(self, records: list[bytes]) -> None:
        """Write one batch, then sync it per the policy."""
        self._check_usable()
        data = encode_records(records)
        try:
            if self._size > HEADER_SIZE and self._size + len(data) > self.segment_size:
                # Flush the full segment first so a crash keeps a prefix of the journal.
                if self.policy != "never":
                    self._sync()
                self._start_segment(self.seq + 1, self.base, self._size)
            write_all(self._fd, data)
            self._size += len(data)
            self._sizes[self.seq] = self._size
            self.total_bytes += len(data)
            if self.policy == "always":
                self._sync()
            elif self.policy == "interval":
                self.dirty = True
                if time.monotonic() - self.last_sync >= self.interval:
                    self._sync()
        except OSError as exc:
            # After a failed write or fdatasync the file's state is unknown (and a retried
            # fdatasync may falsely succeed): refuse everything from now on.
            self.failure = exc
            raise

    def _sync(self) -> None:
        datasync(self._fd)
        self.sync_count += 1
        self.dirty = False
        self.last_sync = time.monotonic()

    def sync_if_due(self) -> None:
        """The interval policy's timer: sync what was written since the last sync, if the
        last sync is at least an interval ago (else the loop re-arms the timer)."""
        if self.dirty and self.failure is None and self._fd >= 0 \
                and time.monotonic() - self.last_sync >= self.interval:
            try:
                self._sync()
            except OSError as exc:
                self.failure = exc
                logger.error("journal in %s: fdatasync failed: %s", self.directory, exc)

    def rewrite(self, records: list[bytes]) -> None:
        """Write `records` as a new journal start after the current segment, then delete
        every older segment. Crash-safe: see `_recover` for how each step is undone or
        finished."""
        self._check_usable()
        base = self.seq + 1
        chunks = self._plan_chunks(records)
        tmp_paths: list[str] = []
        sizes: dict[int, int] = {}
        fd = -1
        prev_size = 0
        try:
            for i, chunk in enumerate(chunks):
                seq = base + i
                path = self._path(seq) + TMP_SUFFIX
                if fd >= 0:
                    os.close(fd)
                    fd = -1
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND
                             | getattr(os, "O_CLOEXEC", 0), 0o644)
                tmp_paths.append(path)
                data = encode_header(seq, base, prev_size) + chunk
                write_all(fd, data)
                datasync(fd)
                sizes[seq] = prev_size = len(data)
        except OSError:
            # Nothing is in place yet: the old journal stands and stays usable.
            if fd >= 0:
                os.close(fd)
            for path in tmp_paths:
                _unlink_quietly(path)
            raise
        try:
            # Members first, then (after they are durable) the start segment: once the
            # start exists, the whole new journal does.
            for i in range(len(chunks) - 1, 0, -1):
                os.rename(tmp_paths[i], self._path(base + i))
            if len(chunks) > 1:
                fsync_directory(self.directory)
            os.rename(tmp_paths[0], self._path(base))
            fsync_directory(self.directory)
            old = sorted(self._sizes)
            os.close(self._fd)
            self._fd = fd
            fd = -1
            for seq in old:
                os.unlink(self._path(seq))
            fsync_directory(self.directory)
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            self.failure = exc
            raise
        last = base + len(chunks) - 1
        self._sizes = sizes
        self.base, self.seq, self._size = base, last, sizes[last]
        self.total_bytes = sum(sizes.values())
        self.segment_count = len(sizes)
        self.dirty = False
        logger.info("journal in %s rewritten: %d records in %d segments, %d older segments deleted",
                    self.directory, len(records), len(chunks), len(old))

    def _plan_chunks(self, records: list[bytes]) -> list[bytes]:
        """The encoded records of each new segment: as many whole records as fit in
        segment_size (at least one each), and at least one segment."""
        chunks: list[bytes] = []
        current: list[bytes] = []
        size = HEADER_SIZE
        for record in records:
            framed = RECORD_HEADER_SIZE + len(record)
            if current and size + framed > self.segment_size:
                chunks.append(encode_records(current))
                current, size = [], HEADER_SIZE
            current.append(record)
            size += framed
        if current or not chunks:
            chunks.append(encode_records(current))
        return chunks

    def close(self) -> None:
        """Sync what was written (unless the policy is "never") and close the files."""
        try:
            if self._fd >= 0:
                if self.failure is None and self.policy != "never":
                    self._sync()
                os.close(self._fd)
        finally:
            self._fd = -1
            if self._lock_fd >= 0:
                os.close(self._lock_fd)   # releases the flock
                self._lock_fd = -1


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _lock_directory(directory: str) -> int:
    fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise QueueError(f"journal directory {directory} is in use by another Journal") from None
    return fd


def _recover(directory: str, segment_size: int, policy: str,
             interval: float) -> tuple[_SegmentFiles, list[bytes], list[str]]:
    """Recovery, on the writer thread. Returns the open segment files, the surviving
    records, and one line per repair.

    1. `*.seg.tmp` files are a rewrite that crashed before its start segment was renamed
       into place: deleted.
    2. The journal starts at the newest segment whose header has base == seq. Older
       segments are leftovers of a rewrite that finished: deleted. Newer segments that
       name another base belong to a rewrite that did not finish: deleted.
    3. From the start, segments must follow each other (seq + 1) with intact headers. At a
       missing number or a short/damaged header (a crash while a segment was created, or
       damage) that segment and every later one are dropped.
    4. Records are read in order and checked. At the first torn or corrupt record its
       segment is truncated there and every later segment dropped: the journal keeps the
       longest intact prefix, which holds every acknowledged append.
    """
    try:
        os.makedirs(directory)
    except FileExistsError:
        pass
    else:
        fsync_directory(os.path.dirname(directory))   # the new directory's own entry
    lock_fd = _lock_directory(directory)
    try:
        return _recover_locked(directory, lock_fd, segment_size, policy, interval)
    except BaseException:
        os.close(lock_fd)
        raise


def _recover_locked(directory: str, lock_fd: int, segment_size: int, policy: str,
                    interval: float) -> tuple[_SegmentFiles, list[bytes], list[str]]:
    log: list[str] = []

    def note(line: str) -> None:
        log.append(line)
        logger.warning("journal in %s: %s", directory, line)

    doomed: list[str] = []   # files to delete
    names = sorted(os.listdir(directory))
    # Files of a rewrite that did not finish: its .tmp files and any segments it renamed.
    unfinished = [name for name in names if parse_segment_name(name, ".seg" + TMP_SUFFIX) is not None]

    # seq -> header, or the reason it is unreadable
    headers: dict[int, SegmentHeader | str] = {}
    for name in names:
        seq = parse_segment_name(name)
        if seq is None:
            continue
        with open(os.path.join(directory, name), "rb") as f:
            head = f.read(HEADER_SIZE)
        try:
            headers[seq] = decode_header(head, seq)
        except BadHeader as exc:
            headers[seq] = str(exc)
    seqs = sorted(headers)

    starts = [s for s in seqs if isinstance(headers[s], SegmentHeader) and headers[s].base == s]
    chain: list[int] = []
    if seqs:
        start = starts[-1] if starts else seqs[0]
        first = headers[start]
        base = first.base if isinstance(first, SegmentHeader) else start
        if base != start:
            # Never made by a crash (old segments go only after the new start is durable).
            note(f"the journal's first segment {segment_name(base)} is missing: "
                 f"reading what remains from {segment_name(start)} on")
        obsolete = [s for s in seqs if s < start]
        if obsolete:
            doomed.extend(segment_name(s) for s in obsolete)
            if starts:
                note(f"removed {len(obsolete)} segment(s) {segment_name(obsolete[0])}..{segment_name(obsolete[-1])}: "
                     f"replaced by a rewrite that finished before the journal stopped")
        later = []
        for s in seqs:
            header = headers[s]
            if s < start:
                continue
            if s > start and isinstance(header, SegmentHeader) and header.base != base:
                unfinished.append(segment_name(s))
                continue
            later.append(s)
        expected = start
        for i, s in enumerate(later):
            header = headers[s]
            rest = later[i + 1:]
            dropped = f" and the {len(rest)} segment(s) after it" if rest else ""
            if s != expected:
                note(f"segment {segment_name(expected)} is missing: dropped {len(later) - i} later segment(s) "
                     f"{segment_name(s)}..{segment_name(later[-1])}")
                doomed.extend(segment_name(x) for x in later[i:])
                break
            if isinstance(header, str):
                why = ("it was being created when the journal stopped" if not rest
                       else "the journal is damaged")
                note(f"segment {segment_name(s)}: {header}: removed{dropped} ({why})")
                doomed.extend(segment_name(x) for x in later[i:])
                break
            chain.append(s)
            expected += 1

    if unfinished:
        doomed.extend(unfinished)
        note(f"removed {len(unfinished)} file(s) of a rewrite interrupted before it finished: "
             + (unfinished[0] if len(unfinished) == 1 else f"{unfinished[0]} .. {unfinished[-1]}"))

    files = _SegmentFiles(directory, lock_fd, policy, interval, segment_size)
    records: list[bytes] = []
    for i, s in enumerate(chain):
        header = headers[s]
        if i and header.prev_size != files.last_size:
            # The previous segment lost (or gained) bytes after this one was started: its
            # records end early, so this segment no longer follows them.
            rest = chain[i:]
            note(f"segment {segment_name(chain[i - 1])} holds {files.last_size} bytes but held "
                 f"{header.prev_size} when {segment_name(s)} was started: dropped {len(rest)} segment(s) "
                 f"{segment_name(s)}..{segment_name(rest[-1])}")
            doomed.extend(segment_name(x) for x in rest)
            break
        path = os.path.join(directory, segment_name(s))
        with open(path, "rb") as f:
            data = f.read()
        scan = scan_records(data)
        records.extend(scan.records)
        if scan.problem is not None:
            rest = chain[i + 1:]
            dropped = f" and the {len(rest)} later segment(s)" if rest else ""
            note(f"segment {segment_name(s)}: {scan.problem} at offset {scan.end}: truncated to {scan.end} "
                 f"bytes, dropping {len(data) - scan.end} bytes{dropped}; {len(scan.records)} record(s) of "
                 f"this segment kept")
            fd = os.open(path, os.O_WRONLY)
            try:
                os.ftruncate(fd, scan.end)
                os.fsync(fd)
            finally:
                os.close(fd)
            doomed.extend(segment_name(x) for x in rest)
            files.adopt(s, headers[s].base, scan.end)
            break
        files.adopt(s, headers[s].base, len(data))

    for name in doomed:
        _unlink_quietly(os.path.join(directory, name))
    if doomed:
        fsync_directory(directory)
    files.open_current()
    logger.info("journal in %s opened: %d records in %d segment(s)%s", directory, len(records),
                files.segment_count, f", {len(log)} repair(s)" if log else "")
    return files, records, log
