"""Pure-Python twin of tether._native.journal_io (ext/journal_io.pyx): the journal's batch
write, records framed with the segment format record header (after a sync mark if asked),
written and fdatasync'ed.
Same API, same bytes, same errors. It calls os.write and os.fdatasync (looked up on each
call), so tests can fail them with monkeypatch."""
from __future__ import annotations

import os
import struct
import threading
import time
import zlib
from collections import deque

__all__ = [
    "CRC_SEED",
    "MAX_RECORD_SIZE",
    "RECORD_HEADER_SIZE",
    "SYNC_LENGTH",
    "BatchWriter",
    "fail_next",
    "frame_records",
    "framed_size",
    "write_records",
]

CRC_SEED = 0x5EED_1E55
MAX_RECORD_SIZE = 0x7FFF_FFFF
RECORD_HEADER_SIZE = 12
SYNC_LENGTH = 0xFFFF_FFFE

_LENGTH_AND_CRC = struct.Struct("<II")
_CRC = struct.Struct("<I")

# test failpoints, as in the native twin: step -> [errno, times]
_failing = {"write": [0, 0], "sync": [0, 0]}


def fail_next(step: str, err: int, times: int = 1) -> None:
    """Tests only: the next `times` calls of `step` ("write" or "sync") made by
    write_records fail with errno `err` (times 0 clears it)."""
    if step not in _failing:
        raise ValueError(f"step must be 'write' or 'sync', got {step!r}")
    _failing[step] = [err, times]


def _failpoint(step: str) -> None:
    err, times = _failing[step]
    if times > 0:
        _failing[step][1] = times - 1
        raise OSError(err, os.strerror(err))


def _key(salt: object) -> int:
    if isinstance(salt, bool) or not isinstance(salt, int):
        raise TypeError(f"salt must be an int, got {type(salt).__name__}")
    if salt < 0 or salt > 0xFFFF_FFFF:
        raise ValueError(f"salt must be in 0..2**32-1, got {salt}")
    return salt ^ CRC_SEED


def _records(records: object) -> tuple:
    if not isinstance(records, (list, tuple)):
        raise TypeError(f"records must be a list of bytes, got {type(records).__name__}")
    items = tuple(records)
    for i, item in enumerate(items):
        if type(item) is not bytes:
            raise TypeError(f"records[{i}] must be bytes, got {type(item).__name__}")
        if len(item) > MAX_RECORD_SIZE:
            raise ValueError(f"records[{i}] is {len(item)} bytes; the limit is {MAX_RECORD_SIZE}")
    return items


def framed_size(records: list) -> int:
    """Bytes `records` take framed: their lengths plus a 12-byte header each."""
    return sum(len(r) + RECORD_HEADER_SIZE for r in _records(records))


def frame_records(records: list, salt: int, mark: bool = False) -> bytes:
    """The on-disk bytes of `records` (a list of bytes), framed for a segment with `salt`,
    in order, after a sync mark if `mark`: identical to segment.encode_records (with
    segment.sync_mark before)."""
    key = _key(salt)
    parts: list[bytes] = []
    if mark:
        head = _LENGTH_AND_CRC.pack(SYNC_LENGTH, key)     # an empty payload's CRC is the key
        parts.append(head)
        parts.append(_CRC.pack(zlib.crc32(head, key)))
    for payload in _records(records):
        head = _LENGTH_AND_CRC.pack(len(payload), zlib.crc32(payload, key))
        parts.append(head)
        parts.append(_CRC.pack(zlib.crc32(head, key)))
        parts.append(payload)
    return b"".join(parts)


def write_records(fd: int, records: list, salt: int, sync: bool, mark: bool = False) -> int:
    """Frame `records` for `salt` (after a sync mark if `mark`), write them at `fd`'s
    position (a short write goes on where it stopped), then fdatasync(fd) if `sync`.
    Returns the bytes written.

    A failed write or sync raises OSError (errno, strerror) whose `journal_step` is "write"
    or "sync"; how much of a failed write reached the file is unknown."""
    data = frame_records(records, salt, bool(mark))
    if isinstance(fd, bool) or not isinstance(fd, int):
        raise TypeError(f"fd must be an int, got {type(fd).__name__}")
    if fd < 0 or fd > 0x7FFF_FFFF:
        raise ValueError(f"fd must be in 0..2**31-1, got {fd}")
    try:
        _failpoint("write")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:
        exc.journal_step = "write"
        raise
    if sync:
        try:
            _failpoint("sync")
            os.fdatasync(fd)
        except OSError as exc:
            exc.journal_step = "sync"
            raise
    return len(data)


class BatchWriter:
    """write_records on a thread of its own: the loop submits a batch and goes on; the
    thread frames, writes and fdatasyncs the batches one at a time in submission order,
    and `event_fd` (an eventfd) becomes readable when jobs have finished; `finished()`
    collects them. After a failed job the writer stops: the jobs queued behind it are not
    run (reported "skipped") until `resume()`. (The native twin's thread never takes the
    GIL; this one is a Python thread.)

    `background=True` runs the thread under SCHED_BATCH: waking it never preempts the
    submitting thread (see the native twin)."""

    def __init__(self, background: bool = False) -> None:
        if not isinstance(background, bool):
            raise TypeError(f"background must be a bool, got {type(background).__name__}")
        self._background = background
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: deque = deque()
        self._done: list = []
        self._stopping = False
        self._stopped = False
        self._running = True
        self.event_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._thread = threading.Thread(target=self._main, name="tether-journal-io", daemon=True)
        self._thread.start()

    def submit(self, token: int, fd: int, records: list, salt: int, sync: bool, mark: bool = False) -> int:
        """Queue a job writing `records` framed for `salt` (after a sync mark if `mark`) at
        `fd`, then fdatasync(fd) if `sync`; returns the bytes it writes. `token` (an int)
        names it in finished()."""
        data = frame_records(records, salt, bool(mark))
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError(f"fd must be an int, got {type(fd).__name__}")
        if fd < 0 or fd > 0x7FFF_FFFF:
            raise ValueError(f"fd must be in 0..2**31-1, got {fd}")
        if not self._running:
            raise ValueError("the writer is closed")
        with self._lock:
            self._pending.append((int(token), fd, data, bool(sync)))
            self._wake.notify()
        return len(data)

    def _main(self) -> None:
        if self._background:
            try:
                os.sched_setscheduler(threading.get_native_id(), os.SCHED_BATCH, os.sched_param(0))
            except OSError:
                pass        # best effort, as in the native twin: the thread runs as before
        while True:
            with self._lock:
                while not self._pending and not self._stopping:
                    self._wake.wait()
                if not self._pending:
                    return
                token, fd, data, sync = self._pending.popleft()
                skip = self._stopped
            if skip:
                outcome = (token, 0, 0, "skipped", 0.0, None)
            else:
                start = time.monotonic()
                outcome = (token, len(data), 0, None)
                message = None
                step = "write"
                try:
                    _failpoint("write")
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    if sync:
                        step = "sync"
                        _failpoint("sync")
                        os.fdatasync(fd)
                except OSError as exc:
                    outcome = (token, 0, exc.errno or 0, step)
                    message = exc.strerror or str(exc)
                outcome += (time.monotonic() - start, message)
            with self._lock:
                if outcome[3] in ("write", "sync"):
                    self._stopped = True
                was_empty = not self._done
                self._done.append(outcome)
                if was_empty:
                    os.eventfd_write(self.event_fd, 1)

    def finished(self) -> list:
        """The jobs finished since the last call, in submission order: (token, bytes, errno,
        step, seconds, message) with step None (written, and synced if asked), "write" or
        "sync" (failed with errno; message: the error's text) or "skipped" (not run: an
        earlier job failed); seconds: how long its write and sync took (0.0 when skipped)."""
        if self.event_fd < 0:
            return []
        try:
            os.eventfd_read(self.event_fd)
        except BlockingIOError:
            pass
        with self._lock:
            done, self._done = self._done, []
        return done

    def resume(self) -> None:
        """After a failed job: run the jobs submitted from now on again."""
        with self._lock:
            self._stopped = False

    @property
    def stopped(self) -> bool:
        """True after a failed job, until resume()."""
        return self._stopped

    def close(self) -> None:
        """Run what is queued, end the thread, close event_fd. Unfinished jobs' outcomes
        are dropped (collect them with finished() first). Idempotent."""
        if not self._running:
            return
        self._running = False
        with self._lock:
            self._stopping = True
            self._wake.notify()
        self._thread.join()
        os.close(self.event_fd)
        self.event_fd = -1
        self._done = []
