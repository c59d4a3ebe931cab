"""Group commit: many concurrent writers share one write and one sync.

Records handed to `GroupCommit.add` from any number of tasks collect in a pending list;
one batch at a time goes to the journal's writer thread (writer_thread.WriterThread), which
writes and syncs it while the next batch collects. Every task waiting on a batch is woken when that
batch is done, with its result or its error. The event loop never blocks on the disk.

`add_then(record, callback, arg)` is `add` without a future: `callback(arg, error)` runs on
the loop right when the batch is done (the durable store uses it, saving a future and a
loop iteration per batch).

With `max_in_flight` 2 (the durable store's choice) a batch that collects while one is
being written goes to the writer at once, queued behind it: the writer starts on it the
moment the previous fdatasync returns, while the loop wakes that batch's senders, instead
of sitting idle until they ran.

`run_exclusive(fn)` runs `fn` on the writer thread after every record added before the
call is written, and holds every record added meanwhile until `fn` has returned: the
ordering a journal rewrite or close needs.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable, TypeVar

from .writer_thread import WriterThread

T = TypeVar("T")


class GroupCommit:
    """Batches records for `write_batch`, which runs on `thread` (the writer thread).

    `write_batch(records)` must write the records in order and raise on failure; its
    exception is raised in every task whose record was in that batch. `after_batch()`, if
    given, runs on the loop after each batch (the journal arms its interval sync there).
    """

    __slots__ = ("_loop", "_thread", "_write_batch", "_after_batch", "_records", "_waiters",
                 "_in_flight", "_scheduled", "_hold", "batch_count", "record_count", "max_in_flight")

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: WriterThread,
                 write_batch: Callable[[list[bytes]], None],
                 after_batch: Callable[[], None] | None = None, max_in_flight: int = 1) -> None:
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ValueError(f"max_in_flight must be an int >= 1, got {max_in_flight!r}")
        self.max_in_flight = max_in_flight
        self._loop = loop
        self._thread = thread
        self._write_batch = write_batch
        self._after_batch = after_batch
        self._records: list[bytes] = []
        # asyncio futures (add) or (callback, arg) tuples (add_then), in record order
        self._waiters: list = []
        self._in_flight = 0          # batches handed to the writer thread, not yet done
        self._scheduled = False      # a _start is queued with call_soon
        self._hold = 0               # exclusive jobs running: batches wait for them
        self.batch_count = 0         # batches written (for the benchmark's average batch size)
        self.record_count = 0

    def add(self, record: bytes) -> asyncio.Future:
        """Queue one record; the returned future completes when its batch is written."""
        self._records.append(record)
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        if not (self._scheduled or self._in_flight >= self.max_in_flight or self._hold):
            self._schedule()
        return waiter

    def add_then(self, record: bytes, callback: Callable[[Any, BaseException | None], None],
                 arg: Any) -> None:
        """Queue one record; `callback(arg, None)` runs on the loop once its batch is
        written, `callback(arg, error)` if the batch failed. Callbacks run in record order.
        Unlike `add`, the record goes to the writer at once when fewer than `max_in_flight`
        batches are being written: the caller has done its own batching."""
        self._records.append(record)
        self._waiters.append((callback, arg))
        if not (self._in_flight >= self.max_in_flight or self._hold):
            self._submit()

    def add_many(self, records: list[bytes]) -> asyncio.Future:
        """Queue several records, written together in one batch, in order."""
        self._records.extend(records)
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        if not (self._scheduled or self._in_flight >= self.max_in_flight or self._hold):
            self._schedule()
        return waiter

    @property
    def in_flight(self) -> int:
        """Batches handed to the writer and not yet done (on the loop's side)."""
        return self._in_flight

    async def run_exclusive(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the writer thread, ordered after every record added before
        this call and before every record added after it. Returns what `fn` returns."""
        self._hold += 1
        try:
            # Whatever is pending was added before us: it goes to the writer ahead of fn,
            # even if another batch is still in flight (the writer thread keeps FIFO order).
            if self._records:
                self._submit()
            return await self._thread.call(fn, *args)
        finally:
            self._hold -= 1
            if self._records and not (self._scheduled or self._in_flight >= self.max_in_flight or self._hold):
                self._schedule()

    def _schedule(self) -> None:
        # call_soon, not an immediate start: every task that is ready to run this loop
        # iteration (for instance all those woken by the last batch) joins the batch.
        self._scheduled = True
        self._loop.call_soon(self._start)

    def _start(self) -> None:
        self._scheduled = False
        if self._records and not (self._in_flight >= self.max_in_flight or self._hold):
            self._submit()

    def _submit(self) -> None:
        records, waiters = self._records, self._waiters
        self._records, self._waiters = [], []
        self._in_flight += 1
        self._thread.post(self._write_batch, (records,), self._done, (waiters, len(records)))

    def _done(self, batch: tuple, _result: None, error: BaseException | None) -> None:
        waiters, count = batch
        self._in_flight -= 1
        if error is None:
            self.batch_count += 1
            self.record_count += count
        for waiter in waiters:
            if waiter.__class__ is tuple:
                waiter[0](waiter[1], error)
            elif waiter.done():         # a cancelled append: its record is written anyway
                pass
            elif error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)
        if self._after_batch is not None:
            self._after_batch()
        if self._records and not (self._scheduled or self._in_flight >= self.max_in_flight or self._hold):
            self._schedule()
