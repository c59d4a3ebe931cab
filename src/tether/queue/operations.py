"""`QueueOperations`: the queue core's asyncio glue, shared by every adapter.

Each call runs the core with the wall clock's `now`, waits for the journal when the core
says so (writer.py), wakes receivers the core handed messages to, re-arms the one loop
timer at the core's next deadline, and logs what the core reported. `QueueManager`'s
public methods, transactions, the service and the forwarders all go through here, so there
is one send path, one receive path and one settle path.

Waiting receivers: a receive with nothing ready parks a `_Receiver` (a future) in the core;
the core hands it a locked entry or an error. Removing one that timed out is O(1).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ..errors import LimitExceeded, QueueError
from .core import Entry, QueueCore, QueueInfo, QueueSettings, SendResult
from .core.producers import Producer
from .store.interface import Store
from .writer import RecordWriter

log = logging.getLogger("tether.queue")

_LOG_LEVELS = {"info": logging.INFO, "warning": logging.WARNING}


class _Receiver:
    """A receive waiting in the core: the core calls hand() or fail()."""

    __slots__ = ("future", "give_back")

    def __init__(self, future: asyncio.Future, give_back: Callable[[Entry], None]) -> None:
        self.future = future
        self.give_back = give_back

    def hand(self, entry: Entry) -> None:
        if self.future.done():
            # the receive was cancelled (its future at once) but leaves the core's waiters
            # only when its task next runs (a client's consumer stopped while the same core
            # call releases that client's locks): the entry, locked for nobody, goes back
            self.give_back(entry)
            return
        self.future.set_result(entry)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class GroupHolder:
    """Who holds a group (the core's token), and the accept that waits for one: the core
    calls hand_group() or fail()."""

    __slots__ = ("future", "give_back")

    def __init__(self, future: asyncio.Future | None, give_back: Callable[[Any, GroupHolder], None]) -> None:
        self.future = future
        self.give_back = give_back

    def hand_group(self, group: Any) -> None:
        if self.future is None or self.future.done():
            self.give_back(group, self)      # the accept was cancelled: nobody holds it
            return
        self.future.set_result(group)

    def fail(self, error: BaseException) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_exception(error)


class QueueOperations:
    """The core, the store and the loop, tied together (see the module docstring)."""

    def __init__(self, core: QueueCore, store: Store, clock: Callable[[], float] = time.time,
                 max_disk_bytes: int | None = None) -> None:
        if max_disk_bytes is not None and (isinstance(max_disk_bytes, bool) or not isinstance(max_disk_bytes, int)
                                           or max_disk_bytes < 1):
            raise ValueError(f"max_disk_bytes must be an integer >= 1 or None, not {max_disk_bytes!r}")
        self.core = core
        self.store = store
        #: durable sends are refused (LimitExceeded) while the journal is larger than this
        self.max_disk_bytes = max_disk_bytes
        self._loop = asyncio.get_running_loop()
        self._clock = clock
        self.writer = RecordWriter(core, store, self._loop, self._after_write, clock)
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = float("inf")
        self._closed = False

    # ---- plumbing ----

    def settle(self, force: bool = False) -> None:
        """After a core call: cut its open record soon, log its events, re-arm the timer
        (when the core's earliest deadline may have moved, or `force`)."""
        core = self.core
        if core.records.open_number is not None:
            self.writer.kick()
        if core.events:
            self._log_events()
        if core.deadline_moved or force:
            core.deadline_moved = False
            deadline = core.next_deadline()
            if deadline is not None and deadline < self._armed_at and not self._closed:
                self._arm(deadline)

    def _after_write(self) -> None:
        self.settle()

    def _log_events(self) -> None:
        events, self.core.events = self.core.events, []
        for level, text in events:
            log.log(_LOG_LEVELS.get(level, logging.INFO), "%s", text)

    async def wait_for(self, record: int | None) -> None:
        """Until `record` is durable (StorageError if it could not be written)."""
        if record is not None:
            await self.writer.wait(record)

    def now(self) -> float:
        """The wall clock the core runs on."""
        return self._clock()

    # ---- the timer ----

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = deadline
        delay = max(0.0, deadline - self._clock())
        self._timer = self._loop.call_at(self._loop.time() + delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._armed_at = float("inf")
        if self._closed:
            return
        try:
            self.core.handle_timer(self._clock())
        except Exception:    # a bug must not stop every later timer
            log.exception("queue timer handling failed")
        self.settle(force=True)

    # ---- definitions ----

    async def define(self, name: str, settings: QueueSettings) -> None:
        """Define a queue durably (QueueExists for other settings)."""
        record = self.core.define(name, settings)
        self.settle()
        await self.wait_for(record)

    async def delete(self, name: str) -> None:
        """Delete a queue and everything in it, durably."""
        record = self.core.delete(name)
        self.settle()
        await self.wait_for(record)

    async def info(self, name: str) -> QueueInfo:
        """Counts of a queue or sub-queue (async: a shared store counts in the database)."""
        return self.core.info(name)

    def info_now(self, name: str) -> QueueInfo:
        """Counts of a queue without waiting (what a metrics scrape reads): the core's own."""
        return self.core.info(name)

    async def purge(self, name: str) -> int:
        """Remove every message waiting in a queue, durably; how many."""
        count, record = self.core.purge(name, self._clock())
        self.settle()
        await self.wait_for(record)
        return count

    async def peek(self, name: str, count: int) -> list[Entry]:
        """The next `count` entries a receiver would get, unlocked (see QueueCore.peek)."""
        if self._closed:
            raise QueueError("the queue manager is closed")
        return self.core.peek(name, count, self._clock())

    # ---- sending ----

    def prepare(self, name: str, body: Any, **fields: Any) -> Entry:
        """A checked entry for queue `name` (see QueueCore.prepare)."""
        return self.core.prepare(name, body, self._clock(), **fields)

    def _check_disk(self, entries: list[Entry]) -> None:
        if any(e.queue.journaled for e in entries):
            self._check_disk_bytes()

    def _check_disk_bytes(self) -> None:
        limit = self.max_disk_bytes
        if limit is not None and self.store.size_bytes >= limit:
            raise LimitExceeded(f"the journal holds {self.store.size_bytes} bytes, over max_disk_bytes={limit}: "
                                f"durable sends are refused until messages are received and it is compacted")

    async def send_one(self, entry: Entry) -> str:
        """Queue one prepared entry; its id once durable (or queued, when volatile)."""
        if self.max_disk_bytes is not None:
            self._check_disk([entry])
        record = self.core.send_one(entry, self._clock())
        self.settle()
        if record is not None:
            await self.writer.wait(record)
        return entry.id

    async def send_body(self, name: str, body: Any) -> str:
        """A plain send to application queue `name` (no headers, its time-to-live): the
        common case's fast path. Its id once durable (or queued, when volatile)."""
        if self.max_disk_bytes is not None and self.core.settings(name).durable:
            self._check_disk_bytes()
        message_id, record = self.core.send_body(name, body, self._clock())
        self.settle()
        if record is not None:
            await self.writer.wait(record)
        return message_id

    async def send(self, entries: list[Entry], *, producer: Producer | None = None, epoch: int = 0,
                   sequences: list[int] | None = None, keep_ids: bool = False) -> list[str | BaseException]:
        """Queue prepared entries (see QueueCore.send): per entry its id once durable, or
        the exception refusing it. A failed write fails the entries it held."""
        if self.max_disk_bytes is not None:
            self._check_disk(entries)
        results = self.core.send(entries, self._clock(), producer=producer, epoch=epoch, sequences=sequences,
                                 keep_ids=keep_ids)
        self.settle()
        records = {r.record for r in results if r.__class__ is SendResult and r.record is not None}
        outcome: dict[int, BaseException | None] = {}
        for record in records:
            try:
                await self.writer.wait(record)
                outcome[record] = None
            except QueueError as exc:
                outcome[record] = exc
        out: list[str | BaseException] = []
        for result in results:
            if result.__class__ is SendResult:
                error = outcome.get(result.record) if result.record is not None else None
                out.append(result.id if error is None else error)
            else:
                out.append(result)
        return out

    # ---- producers ----

    async def open_producer(self, name: bytes, epoch: int) -> tuple[Producer, int]:
        """A producer's hello (epoch 0: a new instance): the producer and the epoch this
        hello was given, once durable (the producer's own epoch may be newer by then: a
        newer instance said hello meanwhile, and fenced this one)."""
        producer, record = self.core.open_producer(name, epoch, self._clock())
        granted = producer.epoch
        self.settle()
        await self.wait_for(record)
        return producer, granted

    def raise_floor(self, producer: Producer, floor: int) -> None:
        """The producer settled every sequence below `floor`."""
        self.core.raise_floor(producer, floor)
        self.settle()

    async def raise_numbering(self, name: str, next_sequence: int) -> int | None:
        """Transmission queue `name` numbers from `next_sequence` on (durably, on return):
        the numbering it had, or None when it was there already (QueueCore.raise_numbering)."""
        raised = self.core.raise_numbering(name, next_sequence)
        if raised is None:
            return None
        before, record = raised
        self.settle()
        await self.wait_for(record)
        return before

    async def lowest_sequence(self, name: str) -> int:
        """Transmission queue `name`'s floor: every sequence below it is settled
        (QueueCore.lowest_sequence; async as a shared store's, which asks its database)."""
        return self.core.lowest_sequence(name)

    # ---- receiving ----

    def take_now(self, name: str) -> Entry | None:
        """The next entry of queue `name` if one is ready now (locked), else None."""
        if self._closed:
            raise QueueError("the queue manager is closed")
        entry = self.core.take(name, self._clock())
        if entry is not None:
            self.settle()
        return entry

    async def take_many(self, name: str, count: int, max_bytes: int | None = None) -> list[Entry]:
        """Up to `count` entries of queue `name` that are ready now (each locked), in one
        pass, stopping once their bodies reach `max_bytes` (None: no bound); [] when none is
        (no wait). A consumer's deliveries under its credit, a forwarder's run, a transaction's
        receive_many. QueueNotFound, PoisonMessage when the first fails."""
        if self._closed:
            raise QueueError("the queue manager is closed")
        take = self.core.take
        now = self._clock()
        entries: list[Entry] = []
        size = 0
        while len(entries) < count and (max_bytes is None or size < max_bytes):
            try:
                entry = take(name, now)
            except QueueError:
                if not entries:
                    raise
                break           # those taken are delivered; the next call raises it
            if entry is None:
                break
            entries.append(entry)
            size += len(entry.body)
        if entries:
            self.settle()
        return entries

    async def take(self, name: str, timeout: float | None) -> Entry | None:
        """The next entry of queue `name`, locked; waits up to `timeout` seconds (None:
        until one comes; <= 0: no wait). None on timeout. QueueNotFound, PoisonMessage."""
        if self._closed:
            raise QueueError("the queue manager is closed")
        core = self.core
        entry = core.take(name, self._clock())
        if entry is not None:
            self.settle()
            return entry
        if timeout is not None:
            timeout = float(timeout)
            if timeout != timeout:
                raise ValueError("receive timeout must be a number of seconds or None, not nan")
            if timeout <= 0:
                return None
        return await self._wait(timeout, lambda receiver: core.wait(name, receiver),
                                lambda receiver: core.stop_waiting(name, receiver))

    async def _wait(self, timeout: float | None, start: Callable[[_Receiver], None],
                    stop: Callable[[_Receiver], None]) -> Entry | None:
        """Wait in the core (`start` registers the receiver, `stop` removes it) up to
        `timeout` seconds for an entry; None on timeout."""
        future = self._loop.create_future()
        receiver = _Receiver(future, self._give_back)
        start(receiver)
        handle = None
        if timeout is not None:
            handle = self._loop.call_later(timeout, self._timed_out, stop, receiver)
        try:
            entry = await future
        except asyncio.CancelledError:
            stop(receiver)
            if future.done() and not future.cancelled() and future.exception() is None:
                entry = future.result()
                if entry is not None:    # handed over just as we were cancelled: give it back
                    self.core.release(entry, entry.tag, self._clock())
                    self.settle()
            raise
        finally:
            if handle is not None:
                handle.cancel()
        self.settle()
        return entry

    def _give_back(self, entry: Entry) -> None:
        """Release, once the core call that handed it is over, an entry handed to a receive
        that was already cancelled (uncounted: nobody saw it)."""
        self._loop.call_soon(self._release_unseen, entry, entry.tag)

    def _release_unseen(self, entry: Entry, tag: int) -> None:
        if not self._closed:
            self.release(entry, tag)

    @staticmethod
    def _timed_out(stop: Callable[[_Receiver], None], receiver: _Receiver) -> None:
        if not receiver.future.done():
            stop(receiver)
            receiver.future.set_result(None)

    def release(self, entry: Entry, tag: int) -> bool:
        """Give back an entry nobody saw (uncounted). False if its lock had gone."""
        released = self.core.release(entry, tag, self._clock())
        self.settle()
        return released

    def complete_now(self, entry: Entry, tag: int) -> int | None:
        """Start removing a locked entry: the record to wait for (None: gone already). LockLost."""
        record = self.core.complete(entry, tag, self._clock())
        self.settle()
        return record

    async def complete(self, entry: Entry, tag: int) -> None:
        """Remove a locked entry, durably. LockLost."""
        record = self.complete_now(entry, tag)
        if record is not None:
            await self.writer.wait(record)

    async def complete_many(self, receipts: list[tuple[Entry, int]]) -> list[BaseException | None]:
        """complete() of many (entry, tag) pairs in one record; per pair None or the error."""
        return await self._settled(*self.core.complete_many(receipts, self._clock()))

    async def forwarded_many(self, receipts: list[tuple[Entry, int]]) -> list[BaseException | None]:
        """Settle forwarded messages their target accepted (completed, or moved to $journal),
        in one record; per pair None or the error."""
        return await self._settled(*self.core.forwarded_many(receipts, self._clock()))

    async def _settled(self, record: int | None, errors: list) -> list[BaseException | None]:
        """Wait for the record settling many entries: per entry None or its error (the
        record's own failure for those the core took)."""
        self.settle()
        if record is not None:
            try:
                await self.writer.wait(record)
            except QueueError as exc:
                return [exc if e is None else e for e in errors]
        return list(errors)

    async def abandon(self, entry: Entry, tag: int) -> None:
        """A failed delivery (retry, delay or poison per the queue). LockLost."""
        record = self.core.abandon(entry, tag, self._clock())
        self.settle()
        await self.wait_for(record)

    async def dead_letter(self, entry: Entry, tag: int, reason: str) -> None:
        """Move a locked entry to its dead-letter queue with `reason`. LockLost."""
        record = self.core.dead_letter(entry, tag, reason, self._clock())
        self.settle()
        await self.wait_for(record)

    async def renew(self, entry: Entry, tag: int) -> float:
        """Extend a peek-lock; the new deadline. LockLost."""
        deadline = self.core.renew(entry, tag, self._clock())
        self.settle()
        return deadline

    # ---- groups ----

    async def accept_group(self, name: str, timeout: float | None) -> tuple[Any, GroupHolder] | None:
        """Hold the next available group of queue `name`, waiting up to `timeout` seconds
        (None: until one comes): (the group, its holder token), or None on timeout."""
        if self._closed:
            raise QueueError("the queue manager is closed")
        timeout = _timeout(timeout)
        core = self.core
        future = self._loop.create_future()
        holder = GroupHolder(future, self._give_back_group)
        group = core.accept_group(name, holder, self._clock())
        if group is not None:
            holder.future = None
            self.settle()
            return group, holder
        if timeout is not None and timeout <= 0:
            return None
        core.wait_group(name, holder)
        handle = None
        if timeout is not None:
            handle = self._loop.call_later(timeout, self._group_timed_out, name, holder)
        try:
            group = await future
        except asyncio.CancelledError:
            core.stop_waiting_group(name, holder)
            if future.done() and not future.cancelled() and future.exception() is None \
                    and future.result() is not None:
                self.release_group_now(future.result(), holder)
            raise
        finally:
            if handle is not None:
                handle.cancel()
        holder.future = None
        self.settle()
        return None if group is None else (group, holder)

    def _group_timed_out(self, name: str, holder: GroupHolder) -> None:
        if holder.future is not None and not holder.future.done():
            self.core.stop_waiting_group(name, holder)
            holder.future.set_result(None)

    def _give_back_group(self, group: Any, holder: GroupHolder) -> None:
        self._loop.call_soon(self.release_group_now, group, holder)

    def release_group_now(self, group: Any, holder: GroupHolder) -> None:
        """Let go of a group nobody used (its locked messages released, uncounted)."""
        if not self._closed:
            self.core.release_group(group, holder, self._clock(), abandon=False)
            self.settle()

    async def release_group(self, group: Any, holder: GroupHolder, *, abandon: bool) -> None:
        """Let go of a held group; its messages still locked are abandoned (or released)."""
        if self._closed:
            return
        records = self.core.release_group(group, holder, self._clock(), abandon=abandon)
        self.settle()
        for record in records:
            await self.writer.wait(record)

    async def take_group(self, group: Any, holder: GroupHolder, timeout: float | None) -> Entry | None:
        """The held group's next message, locked; waits up to `timeout` (None: until one
        comes; <= 0: no wait). None on timeout. LockLost when the group is not held."""
        if self._closed:
            raise QueueError("the queue manager is closed")
        timeout = _timeout(timeout)
        core = self.core
        entry = core.take_group(group, holder, self._clock())
        if entry is not None:
            self.settle()
            return entry
        if timeout is not None and timeout <= 0:
            return None
        return await self._wait(timeout, lambda receiver: core.wait_in_group(group, holder, receiver),
                                lambda receiver: core.stop_waiting_in_group(group, receiver))

    # ---- transactions ----

    async def commit(self, receipts: list[tuple[Entry, int]], entries: list[Entry]) -> None:
        """Complete `receipts` and queue `entries` in one record (TransactionError, QueueFull)."""
        if self.max_disk_bytes is not None and entries:
            self._check_disk(entries)
        record = self.core.commit(receipts, entries, self._clock())
        self.settle()
        await self.wait_for(record)

    async def rollback(self, receipts: list[tuple[Entry, int]]) -> None:
        """Return `receipts` as failed deliveries."""
        records = self.core.rollback(receipts, self._clock())
        self.settle()
        for record in records:
            await self.writer.wait(record)

    # ---- closing ----

    async def close(self) -> None:
        """Fail waiting receivers, stop the timer, write what is pending, close the store."""
        if self._closed:
            return
        self._closed = True
        self.core.close(QueueError("the queue manager is closed"))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.writer.close()


def _timeout(timeout: Any) -> float | None:
    """A receive's timeout: None, or seconds (a negative one: no wait)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
    timeout = float(timeout)
    if timeout != timeout:
        raise ValueError("timeout must be a number of seconds or None, not nan")
    return timeout
