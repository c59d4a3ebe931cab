"""Group commit: many concurrent writers share one write and one sync.

Records handed to `GroupCommit.add` from any number of tasks collect in a pending list;
one batch at a time goes to the disk while the next batch collects. Every task waiting on a
batch is woken when that batch is done, with its result or its error. The event loop never
blocks on the disk.

Two ways to the disk, one at a time (a batch of one way never overlaps one of the other):

* the fast path (`fast`, a FastPath: the journal's files and a journal_io.BatchWriter):
  under the "always" and "never" policies, while the journal is healthy and the batch fits
  in the current segment, the batch goes to the BatchWriter's thread, which frames, writes
  and fdatasyncs it without ever taking the GIL, and signals an eventfd the loop reads
  (`loop.add_reader`) when batches are done. The loop then accounts the bytes in the files.
* the writer thread (writer_thread.WriterThread) runs everything else in Python: batches
  that start a segment, the "interval" policy, the restore after a failed write (a failed
  fast batch is restored there, and the batches queued behind it, not run, go again after
  it), rewrites and close (`run_exclusive`).

`add_then(record, callback, arg)` is `add` without a future: `callback(arg, error)` runs on
the loop right when the batch is done (the durable store uses it, saving a future and a
loop iteration per batch).

Pipelining, adaptively (max_in_flight >= 2, the durable store's choice). A closed loop of
senders -- each waiting for its send before sending again -- settles into one cohort: every
sender in one batch, so the disk idles while the loop runs the senders' Python and the loop
idles while the disk syncs. Split into cohorts, one cohort's Python runs while another's
batch syncs, which wins when a sync takes less time than the loop's turn (`write_seconds` <
`turn_seconds`, both moving averages measured as they go), and loses up to half the
throughput when it takes longer (more syncs, each as slow). So:

* pipelined (a sync is quicker than a turn): up to max_in_flight batches in flight, and
  `cut_early` tells the record writer to cut a record before its loop turn ends once the
  turn has run as long as a sync takes and the disk is (probably) free: the disk starts on
  the first senders while the rest of the turn runs;
* otherwise: one batch in flight; records that arrive meanwhile wait, and when it is done
  they go one loop turn later, with the record of the senders it woke (cohorts merge).

Once split, a cohort's turn is only its share of the loop's round (the senders' Python for
every cohort), so staying pipelined compares a sync with max_in_flight turns, not one:
splitting wins while a sync is quicker than the whole round (the round takes max(Python,
cohorts x sync) split, Python + sync merged). Comparing with one turn made the state flip
back and forth whenever a sync took between one cohort's turn and the round, merging the
cohorts each time, and the disk and the loop waited for each other again.

`run_exclusive(fn)` runs `fn` on the writer thread after every record added before the
call is written, and holds every record added meanwhile until `fn` has returned: the
ordering a journal rewrite or close needs.

Zero-filling ahead (segment_files, preallocation): while no batch of the writer thread is in
flight, the loop asks the files for a zero job after each fast batch is submitted or done,
and posts it to the writer thread, where it runs beside the fast path's batches (which the
files keep below the region it fills).
"""
from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from ...errors import StorageError
from ...histogram import Histogram
from .writer_thread import WriterThread

T = TypeVar("T")

# weight of a new sample in the moving averages
_WEIGHT = 0.2


class FastPath(Protocol):
    """What the fast path needs from the journal's files (segment_files.SegmentFiles);
    called on the loop, only while no batch of the writer thread is in flight."""

    salt: int
    policy: str
    mark: bool        # each fast batch starts with a sync mark

    def fast_fd(self, size: int, in_flight: int) -> int:
        """The fd a batch of `size` framed bytes may be written to the fast way, behind
        `in_flight` bytes of fast batches not yet done; -1 if it must take the slow way."""

    def fast_written(self, size: int) -> None:
        """A fast batch of `size` bytes is written (and synced under "always")."""

    def fast_failed(self, err: int, step: str, message: str) -> StorageError:
        """Writer thread: a fast batch failed at `step` with errno `err` (`message`: its
        text); restore, and return the StorageError for the batch."""

    def zero_plan(self, in_flight: int) -> tuple[int, int, int] | None:
        """The zero job to post now, or None."""

    def zero_ahead(self, seq: int, start: int, stop: int) -> bool | None:
        """Writer thread: the zero job."""

    def zero_done(self, arg: object, done: bool | None, error: BaseException | None) -> None:
        """Loop: the zero job is over."""


class GroupCommit:
    """Batches records for `write_batch`, which runs on `thread` (the writer thread), or
    for the fast path's BatchWriter (`writer`, with `fast`; see the module docstring).

    `write_batch(records)` must write the records in order and raise on failure; its
    exception is raised in every task whose record was in that batch. `after_batch()`, if
    given, runs on the loop after each batch (the journal arms its interval sync there).
    """

    __slots__ = ("_loop", "_thread", "_write_batch", "_after_batch", "_records", "_waiters",
                 "_in_flight", "_scheduled", "_hold", "batch_count", "record_count", "max_in_flight",
                 "write_seconds", "turn_seconds", "_completed_at", "_early", "_last_submit",
                 "_fast", "_writer", "_fast_jobs", "_fast_bytes", "_slow_in_flight", "_token",
                 "_restoring", "_retry_records", "_retry_waiters", "_idle_waiters", "_closed", "sync_seconds",
                 "_split")

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: WriterThread,
                 write_batch: Callable[[list[bytes]], None],
                 after_batch: Callable[[], None] | None = None, max_in_flight: int = 1,
                 fast: FastPath | None = None, writer: Any = None, sync_seconds: Histogram | None = None) -> None:
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
        self._in_flight = 0          # batches handed to either way, not yet done
        self._slow_in_flight = 0     # ... of them, to the writer thread
        self._scheduled = False      # a _start is queued with call_soon
        self._hold = 0               # exclusive jobs running: batches wait for them
        self.batch_count = 0         # batches written (for the benchmark's average batch size)
        self.record_count = 0
        # moving averages (seconds): a batch's write + sync, and the loop's turn from a
        # batch's completion to the record of the senders it woke
        self.write_seconds = 0.0
        self.turn_seconds = 0.0
        self._split = False          # pipelined at the last look (senders split into cohorts)
        self._completed_at = 0.0     # when the last batch's completion ran (0: sampled)
        self._early = False          # the next add_then is a record cut early (not a turn)
        self._last_submit = 0.0
        self._fast = fast if writer is not None else None
        self._writer = writer
        self._fast_jobs: deque = deque()   # (token, records, waiters, size) submitted, in order
        self._fast_bytes = 0         # framed bytes of those
        self._token = 0
        self._restoring = False      # a failed fast batch is being restored
        # fast batches skipped after a failure, to write again (first) once it is restored
        self._retry_records: list[bytes] = []
        self._retry_waiters: list = []
        self._idle_waiters: list[asyncio.Future] = []
        self._closed = False
        #: every batch's write + fdatasync seconds, when each batch is synced ("always")
        self.sync_seconds = sync_seconds
        if self._writer is not None:
            loop.add_reader(writer.event_fd, self._fast_finished)

    def add(self, record: bytes) -> asyncio.Future:
        """Queue one record; the returned future completes when its batch is written."""
        self._records.append(record)
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        if not (self._scheduled or self._blocked()):
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
        if self._completed_at:
            if self._early:
                self._early = False
            else:
                sample = time.monotonic() - self._completed_at
                self._completed_at = 0.0
                self.turn_seconds += (sample - self.turn_seconds) * _WEIGHT
        if not self._blocked():
            self._submit()

    def add_many(self, records: list[bytes]) -> asyncio.Future:
        """Queue several records, written together in one batch, in order."""
        self._records.extend(records)
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        if not (self._scheduled or self._blocked()):
            self._schedule()
        return waiter

    @property
    def in_flight(self) -> int:
        """Batches handed to the writer and not yet done (on the loop's side)."""
        return self._in_flight

    @property
    def pipelined(self) -> bool:
        """More than one batch may be in flight: a sync is quicker than the loop's turn (one
        turn to split the senders into cohorts, max_in_flight turns to stay split: see the
        module docstring)."""
        if self.max_in_flight <= 1:
            return False
        turn = self.turn_seconds
        self._split = self.write_seconds < (turn * self.max_in_flight if self._split else turn)
        return self._split

    def _limit(self) -> int:
        return self.max_in_flight if self.pipelined else 1

    def _blocked(self) -> bool:
        return self._in_flight >= self._limit() or self._hold > 0 or self._restoring

    def cut_early(self, busy_for: float) -> bool:
        """True when a record the loop has been filling for `busy_for` seconds had better
        go now than at the end of the loop's turn: pipelined, nothing pending, room for a
        batch, the turn has run as long as a batch's write and sync take, and so has the
        time since the last batch went (the disk is probably free)."""
        if self._records or self._blocked() or not self.pipelined:
            return False
        seconds = self.write_seconds
        if busy_for < seconds or (self._in_flight and time.monotonic() - self._last_submit < seconds):
            return False
        self._early = True
        return True

    async def run_exclusive(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the writer thread, ordered after every record added before
        this call and before every record added after it. Returns what `fn` returns."""
        self._hold += 1
        try:
            # Whatever is pending now was added before us: it goes to the writer ahead of
            # fn, even if another batch is still in flight (the writer thread keeps FIFO
            # order), once the fast path has nothing in flight. Records added from now on
            # wait until fn has returned.
            before, waiters = self._take()
            while self._fast_jobs or self._restoring:
                waiter = self._loop.create_future()
                self._idle_waiters.append(waiter)
                await waiter
            # fast batches skipped after a failure (they came back while we waited) were
            # submitted before the records pending at our call, which go before fn
            before = self._retry_records + before
            waiters = self._retry_waiters + waiters
            self._retry_records, self._retry_waiters = [], []
            if before:
                self._submit_slow(before, waiters)
            return await self._thread.call(fn, *args)
        finally:
            self._hold -= 1
            if self._records and not (self._scheduled or self._blocked()):
                self._schedule()

    def close(self) -> None:
        """Stop reading the fast path's eventfd (after the last run_exclusive)."""
        if not self._closed:
            self._closed = True
            if self._writer is not None:
                self._loop.remove_reader(self._writer.event_fd)

    def _schedule(self) -> None:
        # call_soon, not an immediate start: every task that is ready to run this loop
        # iteration (for instance all those woken by the last batch) joins the batch.
        self._scheduled = True
        self._loop.call_soon(self._start)

    def _start(self) -> None:
        self._scheduled = False
        if self._records and not self._blocked():
            self._submit()

    def _start_later(self) -> None:
        # one more hop: the tasks the last batch woke run first, and their record joins
        self._loop.call_soon(self._start)

    def _take(self) -> tuple[list[bytes], list]:
        records, waiters = self._records, self._waiters
        self._records, self._waiters = [], []
        return records, waiters

    def _submit(self) -> None:
        fast = self._fast
        if fast is not None and not self._slow_in_flight:
            records = self._records
            mark = fast.mark
            size = sum(map(len, records)) + 12 * (len(records) + mark)
            fd = fast.fast_fd(size, self._fast_bytes)
            if fd >= 0:
                records, waiters = self._take()
                self._token += 1
                self._writer.submit(self._token, fd, records, fast.salt, fast.policy == "always", mark)
                self._fast_jobs.append((self._token, records, waiters, size))
                self._fast_bytes += size
                self._in_flight += 1
                self._last_submit = time.monotonic()
                self._zero_ahead()
                return
            if self._fast_jobs:
                return      # the slow way, once the fast batches in flight are done
        self._submit_slow(*self._take())

    def _zero_ahead(self) -> None:
        if self._slow_in_flight or self._hold or self._restoring or self._closed:
            return
        plan = self._fast.zero_plan(self._fast_bytes)
        if plan is not None:
            self._thread.post(self._fast.zero_ahead, plan, self._fast.zero_done, None)

    def _submit_slow(self, records: list[bytes], waiters: list) -> None:
        self._in_flight += 1
        self._slow_in_flight += 1
        self._last_submit = time.monotonic()
        self._thread.post(self._timed_write, (records,), self._slow_done, (waiters, len(records)))

    def _timed_write(self, records: list[bytes]) -> float:
        # on the writer thread; a float store is atomic for the loop that reads it
        start = time.monotonic()
        self._write_batch(records)
        seconds = time.monotonic() - start
        self.write_seconds += (seconds - self.write_seconds) * _WEIGHT
        return seconds      # observed by the loop (_slow_done): one thread writes the histogram

    def _slow_done(self, batch: tuple, result: float | None, error: BaseException | None) -> None:
        self._slow_in_flight -= 1
        if error is None and self.sync_seconds is not None and result is not None:
            self.sync_seconds.observe(result)
        self._done(batch, None, error)

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
        if waiters and error is None:
            self._completed_at = time.monotonic()
            self._early = False
        if self._after_batch is not None:
            self._after_batch()
        self._kick()

    def _kick(self) -> None:
        if self._records and not (self._scheduled or self._blocked()):
            self._scheduled = True
            if self.max_in_flight > 1 and not self.pipelined:
                self._loop.call_soon(self._start_later)     # merge with the woken senders' record
            else:
                self._loop.call_soon(self._start)

    # ---- the fast path's completions (the eventfd is readable) ----

    def _fast_finished(self) -> None:
        fast = self._fast
        for token, written, err, step, seconds, message in self._writer.finished():
            job_token, records, waiters, size = self._fast_jobs.popleft()
            assert job_token == token, (job_token, token)
            self._fast_bytes -= size
            if step is None:
                fast.fast_written(written)
                self.write_seconds += (seconds - self.write_seconds) * _WEIGHT
                if self.sync_seconds is not None:
                    self.sync_seconds.observe(seconds)
                self._done((waiters, len(records)), None, None)
            elif step == "skipped":
                self._in_flight -= 1
                self._retry_records += records
                self._retry_waiters += waiters
            else:
                # restore on the writer thread; the batches behind this one come back skipped
                self._restoring = True
                self._slow_in_flight += 1
                self._thread.post(fast.fast_failed, (err, step, message), self._fast_restored, (waiters, len(records)))
        self._maybe_resume()
        if not self._fast_jobs and not self._restoring:
            self._wake_idle()
            self._kick()
        self._zero_ahead()

    def _fast_restored(self, batch: tuple, error: StorageError | None, raised: BaseException | None) -> None:
        self._slow_in_flight -= 1
        self._restoring = False
        self._done(batch, None, raised if raised is not None else error)
        self._maybe_resume()
        if not self._fast_jobs:
            self._wake_idle()
            self._kick()

    def _maybe_resume(self) -> None:
        # every fast batch submitted before the failure is back: the skipped ones go again,
        # ahead of what is pending, and the BatchWriter runs batches again
        if not self._restoring and not self._fast_jobs and self._writer.stopped:
            if self._retry_records and not self._hold:
                self._records[:0] = self._retry_records
                self._waiters[:0] = self._retry_waiters
                self._retry_records, self._retry_waiters = [], []
            self._writer.resume()

    def _wake_idle(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


def fast_path_enabled() -> bool:
    """The fast path is used unless TETHER_JOURNAL_FAST=0 (for measuring without it)."""
    return os.environ.get("TETHER_JOURNAL_FAST", "1") != "0"
