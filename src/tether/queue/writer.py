"""`RecordWriter`: gets the queue core's journal records onto the store, and reports back.

Whatever the core journals in one loop iteration becomes one record: the first operation
that opens a record schedules a cut with `call_soon`, so every task ready to run this
iteration (for instance all those the last write woke) joins it. One exception: when the
store says so (`cut_early`: it is idle, and the turn has run longer than its write takes),
a record holding a multiple of EARLY_CUT_MIN operations' waiters is cut at once, so the disk
starts on them while the rest of the turn runs (the store's pipelining, group_commit.py).
A cut always falls between two operations: an operation's ops are all in before it waits.
The record goes to the store; when the store reports it durable (or failed), the core
applies (or undoes) what it holds, and the tasks waiting on it wake with the outcome
(StorageError if it failed).

Compaction: when no record is in flight, the core's state is exactly the journaled state,
so a snapshot can be taken and the store rewritten from it. New records wait until the
store has ordered the snapshot before them; under a steady load, new cuts pause until the
records in flight have landed, so a compaction is never starved.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from time import monotonic

from ..errors import StorageError
from .core import QueueCore
from .core import records as R
from .store.interface import Store

log = logging.getLogger("tether.queue")

#: An early cut needs at least this many waiters on the open record (and is considered at
#: each multiple of it).
EARLY_CUT_MIN = 8

#: Snapshot records are cut at about this size, so that no single record is huge.
SNAPSHOT_RECORD_BYTES = 256 * 1024


class RecordWriter:
    """Moves the core's records to `store` (see the module docstring). `after()` runs once
    the core has applied (or undone) a record, so the owner can wake and re-arm."""

    def __init__(self, core: QueueCore, store: Store, loop: asyncio.AbstractEventLoop,
                 after: Callable[[], None], clock: Callable[[], float] = time.time) -> None:
        self._core = core
        self._store = store
        self._loop = loop
        self._after = after
        self._clock = clock
        self._packer = R.encoder()
        self._waiters: dict[int, list[asyncio.Future]] = {}
        self._cut_scheduled = False
        self._last_cut = 0            # number of the last record handed to the store
        self._last_done = 0           # ... and of the last one reported back
        self._flushers: list[tuple[int, asyncio.Future]] = []
        self._gate = False            # a compaction is ordering its snapshot: hold new records
        self._compact_wanted = False  # a compaction waits for the records in flight
        self._compaction: asyncio.Task | None = None
        self._closed = False
        self._cut_early = getattr(store, "cut_early", None)
        self._opened_at = 0.0         # when the open record got its first waiter

    # ---- records ----

    def wait(self, record: int) -> asyncio.Future:
        """A future that completes when `record` is durable, or fails with StorageError."""
        future = self._loop.create_future()
        waiters = self._waiters.get(record)
        if waiters is None:
            self._waiters[record] = [future]
            self._opened_at = monotonic()
        else:
            waiters.append(future)
            # asked at every EARLY_CUT_MIN-th waiter only: the store's answer takes a few
            # calls, and a turn's worth of senders is many times that many
            if not len(waiters) % EARLY_CUT_MIN and self._cut_early is not None \
                    and record == self._core.pending_record and not (self._gate or self._compact_wanted) \
                    and self._cut_early(monotonic() - self._opened_at):
                self._cut()
                return future
        if not self._cut_scheduled:
            self._cut_scheduled = True
            self._loop.call_soon(self._cut)
        return future

    def kick(self) -> None:
        """The core has an open record: cut it soon."""
        if not self._cut_scheduled and self._core.pending_record is not None:
            self._cut_scheduled = True
            self._loop.call_soon(self._cut)

    def _cut(self) -> None:
        self._cut_scheduled = False
        if self._gate or self._compact_wanted:
            return      # a compaction re-cuts once its snapshot is in place
        cut = self._core.cut()
        if cut is None:
            return
        number, ops = cut
        self._last_cut = number
        try:
            record = self._packer.pack(ops)
            self._store.append(record, lambda error: self._done(number, error))
        except StorageError as exc:
            self._done(number, exc)
        except (TypeError, ValueError, OverflowError) as exc:     # a bug: never write it half
            log.exception("a queue journal record could not be encoded")
            self._done(number, StorageError(f"a journal record could not be encoded: {exc}"))

    def _done(self, number: int, error: BaseException | None) -> None:
        now = self._clock()
        if error is None:
            self._core.written(number, now)
        else:
            log.error("journal write failed: %s", error)
            self._core.failed(number, now)
        self._last_done = number
        for future in self._waiters.pop(number, ()):
            if future.done():               # its waiter was cancelled: the outcome stands
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
        if self._flushers:
            self._wake_flushers()
        self._after()
        if self._core.records_in_flight == 0 and self._compaction is None and not self._closed:
            if self._compact_wanted or self._store.wants_compaction(self._core.live_bytes()):
                self._compact()
        elif self._compaction is None and not self._compact_wanted and not self._closed \
                and self._store.wants_compaction(self._core.live_bytes()):
            self._compact_wanted = True     # hold new records until those in flight land

    # ---- compaction ----

    def _compact(self) -> asyncio.Task:
        """Rewrite the store from a snapshot now (no record is in flight)."""
        self._compact_wanted = False
        self._gate = True
        records = self._snapshot_records()
        task = self._compaction = self._loop.create_task(self._rewrite(records))
        return task

    async def _rewrite(self, records: list[bytes]) -> None:
        before = self._store.size_bytes
        try:
            await self._store.rewrite(records, self._open_gate)
            log.info("journal compacted: %d -> %d bytes", before, self._store.size_bytes)
        except Exception:
            log.exception("journal compaction failed; the journal is left as it was")
        finally:
            self._compaction = None
            self._open_gate()

    def _open_gate(self) -> None:
        if self._gate:
            self._gate = False
            self.kick()

    def _snapshot_records(self) -> list[bytes]:
        out: list[bytes] = []
        chunk: list = []
        size = 0
        for op in self._core.snapshot():
            chunk.append(op)
            size += 64 + (len(op[2][2]) if op[0] == R.ENQUEUE else 0)
            if size >= SNAPSHOT_RECORD_BYTES:
                out.append(self._packer.pack(chunk))
                chunk, size = [], 0
        if chunk:
            out.append(self._packer.pack(chunk))
        return out

    async def compact(self) -> None:
        """Compact now (waiting for the records in flight first) and wait for it."""
        while True:
            await self.flush()
            if self._compaction is not None:
                await asyncio.shield(self._compaction)
                continue
            if self._core.records_in_flight == 0 and self._core.pending_record is None:
                break
        await asyncio.shield(self._compact())

    # ---- waiting for everything ----

    async def flush(self) -> None:
        """Until everything journaled so far is written (or failed) and applied."""
        while True:
            if self._core.pending_record is not None and not (self._gate or self._compact_wanted):
                self._cut()
            target = self._last_cut
            if self._core.pending_record is None and self._last_done >= target:
                return
            if self._last_done >= target and self._compaction is not None:
                await asyncio.shield(self._compaction)
                continue
            waiter = self._loop.create_future()
            self._flushers.append((max(target, self._last_done + 1), waiter))
            await waiter

    def _wake_flushers(self) -> None:
        waiting = []
        for target, waiter in self._flushers:
            if target > self._last_done:
                waiting.append((target, waiter))
            elif not waiter.done():
                waiter.set_result(None)
        self._flushers = waiting

    async def close(self) -> None:
        """Write what is pending, finish a running compaction, close the store."""
        if self._closed:
            return
        try:
            await self.flush()
            while self._compaction is not None:
                await asyncio.shield(self._compaction)
                await self.flush()
        finally:
            self._closed = True
            await self._store.close()
