"""The durable store: queue operations journaled before they take effect.

`submit(op, apply, arg)` queues an operation and returns a future; everything submitted
in one loop iteration becomes ONE journal record (so a transaction, always submitted
whole, is atomic), handed to the journal with a callback (`Journal.append_then`); once
the journal says it is durable that callback runs each `apply(arg)` in submission order
and resolves the futures, with no task or future per batch. Each operation has its
own plain future (not one shared by the batch: cancelling one waiter must not cancel the
others, and awaiting an exact asyncio.Future is the fast path of the C Task). A cancelled
waiter's operation still happens. Applying only after the write keeps the in-memory state
equal to the journaled state whenever no record is in flight, which is what a compaction
snapshot needs (a due compaction holds new records until those in flight have landed).

Compaction: when the journal is `compact_ratio` times larger than the live data (and over
`compact_min_bytes`), `journal.rewrite()` replaces it with a snapshot of the live state, so
disk use stays proportional to the messages actually held.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Callable, Iterable

from ..errors import JournalCorrupt
from . import records

log = logging.getLogger("tether.queue")

# Snapshot records are cut at about this size, so no single record is huge.
SNAPSHOT_RECORD_BYTES = 256 * 1024


class DurableStore:
    """Operations batched into journal records; applied in order once durable."""

    durable = True

    def __init__(self, journal: Any, *, compact_ratio: float, compact_min_bytes: int) -> None:
        self._journal = journal
        self._loop = asyncio.get_running_loop()
        self._packer = records.encoder()
        self._ops: list = []
        self._applies: list = []
        self._args: list = []
        self._futures: list[asyncio.Future] = []
        self._cut_scheduled = False     # a _cut is queued with call_soon
        self._cut_count = 0             # records handed to the journal
        self._done_count = 0            # ... and reported written (or failed)
        # flush() callers: (the cut count they wait for, their future)
        self._flushers: list[tuple[int, asyncio.Future]] = []
        self._compact_wanted = False    # a compaction waits for the batches in flight
        self._rewrite_task: asyncio.Task | None = None
        self._gate: asyncio.Future | None = None
        self._failed: BaseException | None = None
        self._closed = False
        self._snapshot: Callable[[], Iterable[list]] | None = None
        self._live_bytes: Callable[[], int] = lambda: 0
        self.compact_ratio = compact_ratio
        self.compact_min_bytes = compact_min_bytes
        self.compactions = 0
        #: the records that survived recovery, to replay once (then dropped)
        self.recovered: list[bytes] = list(journal.recovered)
        self.recovery_log: list[str] = list(getattr(journal, "recovery_log", []))

    @classmethod
    async def open(cls, directory: str | os.PathLike, *, fsync: str = "always",
                   fsync_interval: float = 0.05, segment_size: int = 64 * 1024 * 1024,
                   compact_ratio: float = 4.0, compact_min_bytes: int = 16 * 1024 * 1024) -> "DurableStore":
        """Open (recovering) the journal in `directory`."""
        from .store.journal import Journal

        if not compact_ratio > 1:
            raise ValueError(f"compact_ratio must be > 1, not {compact_ratio!r}")
        if compact_min_bytes < 0:
            raise ValueError(f"compact_min_bytes must be >= 0, not {compact_min_bytes!r}")
        # max_in_flight 2: the next batch's write starts as soon as the previous fdatasync
        # returns, while the loop is still applying that batch and waking its senders
        journal = await Journal.open(directory, fsync=fsync, fsync_interval=fsync_interval,
                                     segment_size=segment_size, max_in_flight=2)
        return cls(journal, compact_ratio=compact_ratio, compact_min_bytes=compact_min_bytes)

    @property
    def size_bytes(self) -> int:
        """Bytes the journal takes on disk."""
        return self._journal.size_bytes

    @property
    def journal(self) -> Any:
        """The underlying `Journal` (for its counters)."""
        return self._journal

    def set_snapshot(self, snapshot: Callable[[], Iterable[list]], live_bytes: Callable[[], int]) -> None:
        """`snapshot()` gives the operations that rebuild the live state; `live_bytes()`
        estimates its size (for the compaction trigger)."""
        self._snapshot = snapshot
        self._live_bytes = live_bytes

    # ---- writing ----

    def submit(self, op: list, apply: Callable[[Any], None] | None, arg: Any) -> asyncio.Future:
        """Journal `op` in the next batch; then call apply(arg). Await the result for
        durability (it raises if the journal write failed)."""
        if self._failed is not None or self._closed:
            return self._refused()
        self._ops.append(op)
        self._applies.append(apply)
        self._args.append(arg)
        future = self._loop.create_future()
        self._futures.append(future)
        if not self._cut_scheduled:
            self._schedule_cut()
        return future

    def submit_many(self, ops: Iterable[list], apply: Callable[[Any], None] | None, arg: Any) -> asyncio.Future:
        """Several operations in the same record (atomic), one apply(arg) after them."""
        if self._failed is not None or self._closed:
            return self._refused()
        self._ops.extend(ops)
        self._applies.append(apply)
        self._args.append(arg)
        future = self._loop.create_future()
        self._futures.append(future)
        if not self._cut_scheduled:
            self._schedule_cut()
        return future

    def _refused(self) -> asyncio.Future:
        future = self._loop.create_future()
        if self._closed:
            future.set_exception(ValueError("the queue store is closed"))
        else:
            future.set_exception(JournalCorrupt(f"the journal failed earlier: {self._failed!r}"))
        return future

    def _schedule_cut(self) -> None:
        # call_soon: every task ready to run this iteration (for instance all those the
        # last batch woke) submits first, and the batch holds them all.
        self._cut_scheduled = True
        self._loop.call_soon(self._cut)

    def _cut(self) -> None:
        """Make the operations submitted so far one journal record and hand it over."""
        self._cut_scheduled = False
        if not self._ops or self._gate is not None or self._compact_wanted or self._failed is not None:
            return      # nothing to do, or a compaction is taking its snapshot: it re-cuts
        ops, applies, args, futures = self._ops, self._applies, self._args, self._futures
        self._ops, self._applies, self._args, self._futures = [], [], [], []
        self._hand(ops, (applies, args, futures))

    def _hand(self, ops: list, batch: tuple[list, list, list]) -> None:
        self._cut_count += 1
        try:
            self._journal.append_then(self._packer.pack(ops), self._written, batch)
        except Exception as exc:    # closed under us, or a record over the size limit
            self._written(batch, exc)

    def _written(self, batch: tuple[list, list, list], error: BaseException | None) -> None:
        """The journal's callback (on the loop, in cut order): apply, then wake the senders."""
        self._done_count += 1
        applies, args, futures = batch
        if error is not None:
            self._fail(error, futures)
        else:
            for apply, arg in zip(applies, args):
                if apply is not None:
                    try:
                        apply(arg)
                    except Exception:  # a bug in one apply must not lose the others
                        log.exception("applying a journaled queue operation failed")
            for future in futures:
                if not future.done():      # done: its waiter was cancelled
                    future.set_result(None)
        idle = self._done_count == self._cut_count
        if self._flushers:
            self._wake_flushers()
        if self._failed is None and self._rewrite_task is None and self._gate is None:
            if self._compact_wanted or self._should_compact():
                if idle:
                    # nothing of ours is in flight: the in-memory state is the journaled one
                    self._compact_wanted = False
                    self._start_compaction()
                else:
                    self._compact_wanted = True   # hold new batches until the others land

    def _wake_flushers(self) -> None:
        done, waiting = self._done_count, []
        for target, waiter in self._flushers:
            if target > done and self._failed is None:
                waiting.append((target, waiter))
            elif not waiter.done():
                waiter.set_result(None)
        self._flushers = waiting

    def _fail(self, exc: BaseException, futures: list[asyncio.Future]) -> None:
        if self._failed is None:
            log.error("journal write failed; the queue manager stops accepting durable work: %r", exc)
            self._failed = exc
        error = exc if isinstance(exc, Exception) else JournalCorrupt(f"journal write interrupted: {exc!r}")
        futures = futures + self._futures
        self._ops, self._applies, self._args, self._futures = [], [], [], []
        for f in futures:
            if not f.done():
                f.set_exception(error)
                f.exception()  # logged above; do not warn again if nobody awaited it

    # ---- compaction ----

    def _should_compact(self) -> bool:
        if self._snapshot is None:
            return False
        size = self._journal.size_bytes
        return size >= self.compact_min_bytes and size >= self.compact_ratio * self._live_bytes()

    def _start_compaction(self) -> asyncio.Task:
        """Begin journal.rewrite() with the live state. Must be called when no record of
        ours is in flight (every cut written and applied): then the in-memory state is
        exactly the journaled state. New records wait behind `_gate` until the journal
        took the snapshot, so the snapshot is ordered before every later append."""
        loop = self._loop
        gate = self._gate = loop.create_future()
        snapshot_records = self._snapshot_records()

        def open_gate() -> None:
            if not gate.done():
                gate.set_result(None)
            if self._gate is gate:
                self._gate = None
                if self._ops and not self._cut_scheduled:
                    self._schedule_cut()   # what was held back behind the snapshot

        def snapshot() -> list[bytes]:
            try:
                return snapshot_records
            finally:
                try:
                    on_loop = asyncio.get_running_loop() is loop
                except RuntimeError:
                    on_loop = False
                if on_loop:
                    open_gate()
                else:   # the journal may call it from its writer thread
                    loop.call_soon_threadsafe(open_gate)

        task = self._rewrite_task = loop.create_task(self._rewrite(snapshot))
        task.add_done_callback(lambda _: open_gate())
        return task

    async def _rewrite(self, snapshot: Callable[[], list[bytes]]) -> None:
        before = self._journal.size_bytes
        try:
            await self._journal.rewrite(snapshot)
            self.compactions += 1
            log.info("journal compacted: %d -> %d bytes", before, self._journal.size_bytes)
        except Exception:
            log.exception("journal compaction failed; the journal is left as it was")
        finally:
            self._rewrite_task = None

    def _snapshot_records(self) -> list[bytes]:
        out: list[bytes] = []
        chunk: list = []
        size = 0
        for op in self._snapshot():
            chunk.append(op)
            size += 64 + (len(op[2][1]) if op[0] == records.ENQUEUE else 0)
            if size >= SNAPSHOT_RECORD_BYTES:
                out.append(self._packer.pack(chunk))
                chunk, size = [], 0
        if chunk:
            out.append(self._packer.pack(chunk))
        return out

    async def compact(self) -> None:
        """Rewrite the journal now as a snapshot of the live state, and wait for it."""
        if self._snapshot is None:
            return
        while True:
            await self.flush()
            if self._rewrite_task is not None:
                await asyncio.shield(self._rewrite_task)
                continue
            if self._done_count == self._cut_count and self._gate is None:
                break               # between batches: safe to snapshot
        self._compact_wanted = False
        task = self._start_compaction()
        await asyncio.shield(task)

    # ---- shutdown ----

    async def flush(self) -> None:
        """Wait until everything submitted so far is journaled and applied."""
        while self._ops and self._failed is None:
            if self._gate is not None:
                await asyncio.shield(self._gate)    # a compaction takes its snapshot first
            elif self._compact_wanted:
                await self._wait_for_cut(self._done_count + 1)   # the batches in flight land
            else:
                self._cut()         # hand the pending operations over now
        await self._wait_for_cut(self._cut_count)

    async def _wait_for_cut(self, target: int) -> None:
        """Until `target` records were handed over and reported written (or failed)."""
        while self._done_count < target and self._failed is None:
            waiter = self._loop.create_future()
            self._flushers.append((target, waiter))
            await waiter

    async def close(self) -> None:
        """Flush pending operations, finish a running compaction, close the journal."""
        if self._closed:
            return
        try:
            await self.flush()
            while self._rewrite_task is not None:
                await asyncio.shield(self._rewrite_task)
                await self.flush()
        finally:
            self._closed = True
            await self._journal.close()
