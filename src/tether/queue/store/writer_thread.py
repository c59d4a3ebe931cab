"""`WriterThread`: the journal's own thread, where every file operation of an open journal
runs (recovery, batches, syncs, rewrites, close), one job at a time in the order posted.

It replaces a 1-worker ThreadPoolExecutor, whose every job cost a concurrent Future (a
Condition and a lock), a work item, an idle-semaphore check, a done callback and a lambda.
Here a job is one tuple put on a SimpleQueue (C, one lock); its outcome goes on a deque,
and the loop is woken with one `call_soon_threadsafe` for all the outcomes that collected
while it was busy (never one per record, and not one per batch when batches finish faster
than the loop drains them). `then(arg, result, error)` runs on the loop, in job order.

The batch write itself (journal_io.write_records) releases the GIL for the framing CRCs,
the write and the fdatasync, so the loop runs Python (the next batch's senders) meanwhile.
"""
from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

_STOP = object()


class WriterThread:
    """One daemon thread running posted jobs in order; outcomes reported on `loop`."""

    __slots__ = ("_loop", "_jobs", "_done", "_woken", "_thread", "_stopped", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str = "tether-journal") -> None:
        self._loop = loop
        self._jobs: SimpleQueue = SimpleQueue()
        self._done: deque = deque()
        self._woken = False          # a drain is queued on the loop
        self._stopped = False
        # A daemon: a process that exits without closing its journal is not held up by it
        # (a batch still being written was not acknowledged to anyone).
        self._thread = threading.Thread(target=_run, args=(self._jobs, self._finished), name=name, daemon=True)
        self._thread.start()

    def post(self, fn: Callable[..., Any], args: tuple, then: Callable[[Any, Any, BaseException | None], None],
             arg: Any) -> None:
        """Run `fn(*args)` on the thread after every job posted before; then, on the loop,
        `then(arg, result, None)`, or `then(arg, None, error)` if it raised."""
        if self._stopped:
            raise RuntimeError("the journal's writer thread is stopped")
        self._jobs.put((fn, args, then, arg))

    def call(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """`fn(*args)` on the thread, in order; a loop future with its outcome."""
        future = self._loop.create_future()
        self.post(fn, args, _settle, future)
        return future

    def stop(self) -> None:
        """The thread ends once every job posted so far has run."""
        if not self._stopped:
            self._stopped = True
            self._jobs.put(_STOP)

    @property
    def ident(self) -> int | None:
        """The thread's identifier (tests)."""
        return self._thread.ident

    # ---- the writer thread's side ----

    def _finished(self, outcome: tuple) -> None:
        self._done.append(outcome)
        if not self._woken:
            self._woken = True
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:
                pass            # the loop was closed under a running journal; nobody is left to wake

    # ---- the loop's side ----

    def _drain(self) -> None:
        self._woken = False     # before draining: an outcome added from now on wakes us again
        done = self._done
        try:
            while done:
                then, arg, result, error = done.popleft()
                then(arg, result, error)
        finally:
            if done and not self._woken:      # a callback raised: the rest run next
                self._woken = True
                self._loop.call_soon(self._drain)


def _run(jobs: SimpleQueue, finished: Callable[[tuple], None]) -> None:
    get = jobs.get
    while True:
        job = get()
        if job is _STOP:
            return
        fn, args, then, arg = job
        try:
            result = fn(*args)
        except BaseException as exc:
            finished((then, arg, None, exc))
        else:
            finished((then, arg, result, None))
        del job, fn, args, then, arg


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
