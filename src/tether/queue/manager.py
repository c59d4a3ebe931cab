"""`QueueManager`: the queues of one process, embedded (DESIGN.md "Queues", "Public API").

    async with QueueManager.open("./data") as qm:          # or: qm = await QueueManager.open(...)
        await qm.create_queue("orders", receive_error_handling="move")
        await qm.send("orders", b"...")
        msg = await qm.receive("orders", timeout=5)
        await msg.complete()

Durable queues journal every change before it takes effect (durable_store.py) and are
rebuilt from the journal on open; volatile queues (durable=False) and a manager opened
without a data directory never touch the disk. Timers (time-to-live, peek-locks, retry
delays) share one asyncio timer (timers.py). What happens to a failed delivery is decided
here, with the rule of poison.py, because it may move the message to another queue.

Addresses: a plain name is a local queue; `tether://host:port/queue` goes to the
transmission queue for that queue manager (`route()`), where a forwarder picks it up
(forwarder.py: one per transmission queue, started when the queue is defined or recovered).
`listen()` (or `open(listen=URL)`) serves this manager to remote clients (service.py).
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import Counter
from datetime import timedelta
from typing import Any, Awaitable, Callable, Generator, Iterator

import msgpack

from ..errors import LockLost, MessageTooLarge, QueueError, QueueExists, QueueFull, QueueNotFound, TransactionError
from . import records
from .address import RemoteAddress, is_remote, parse_remote, split_subqueue, validate_queue_name
from .deadletter import EXPIRED, REJECTED, as_dead_letter, dead_letter_queue_name
from .dedupe import DEFAULT_WINDOW, DedupeWindow
from .info import QueueInfo
from .memory_store import MemoryStore
from .message import GONE, LOCKED, SETTLING, Message
from .poison import POISON, RETRY_LATER, RETRY_NOW, after_failure
from .queue import MAIN
from .queue import POISON as POISON_QUEUE
from .queue import RETRY as RETRY_QUEUE
from .queue import Queue
from .settings import SYSTEM_DEAD_LETTER_QUEUE, QueueSettings
from .timers import DeadlineScheduler
from .transaction import Transaction

log = logging.getLogger("tether.queue")
_time = time.time
ENQUEUE = records.ENQUEUE
REMOVE = records.REMOVE

#: The system dead-letter queue's settings: dead letters never expire and never move on.
DEAD_LETTER_SETTINGS = QueueSettings(time_to_live=None, dead_letter_queue="none",
                                     receive_error_handling="move")
#: Transmission queues (store-and-forward) are named TRANSMISSION_PREFIX + "host:port".
TRANSMISSION_PREFIX = "$xmit:"
TRANSMISSION_SETTINGS = QueueSettings(receive_error_handling="move")
#: Store-and-forward rejects: a forwarded message that receive_error_handling="reject"
#: refuses goes (as a dead letter) to RETURN_PREFIX + its origin, the header ORIGIN_HEADER
#: the target set on arrival; the origin's forwarder takes it back to its own $dead.
RETURN_PREFIX = "$return:"
ORIGIN_HEADER = "tether.origin"
RETURN_SETTINGS = QueueSettings(time_to_live=None, dead_letter_queue="none", receive_error_handling="move")


def _call(apply: Callable[[], None]) -> None:
    apply()


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number of seconds > 0, not {value!r}")
    return float(value)


class QueueManager:
    """The queues of this process. Create it with `await QueueManager.open(data_dir)`."""

    def __init__(self, store: Any, data_dir: str | None, dedupe_window: float = DEFAULT_WINDOW) -> None:
        self._store = store
        self._loop = asyncio.get_running_loop()
        self.data_dir = data_dir
        self._queues: dict[str, Queue] = {}        # every queue and sub-queue by name
        self._sendable: dict[str, Queue] = {}      # application queues by name (fast path)
        self._definitions: dict[str, QueueSettings] = {}   # journaled definitions, in order
        self._defining: dict[str, QueueSettings] = {}      # definitions being journaled
        self._scheduler = DeadlineScheduler(self._loop)
        self._dead_counts: Counter[str] = Counter()
        self._dedupe = DedupeWindow(dedupe_window)
        self._dedupe_pending: set[str] = set()
        self._id_prefix = os.urandom(8).hex() + "-"
        self._id_counter = 0
        self._closed = False
        self._closing = False                 # close() has begun: start no more forwarders
        self._services: list[Any] = []        # service.QueueService, see listen()
        self._forwarders: dict[str, Any] = {}  # transmission queue name -> forwarder.Forwarder
        self._define_queue(SYSTEM_DEAD_LETTER_QUEUE, DEAD_LETTER_SETTINGS)

    # ---- opening and closing ----

    @classmethod
    def open(cls, data_dir: str | os.PathLike | None = None, *, listen: str | None = None,
             fsync: str = "always",
             fsync_interval: float = 0.05, segment_size: int = 64 * 1024 * 1024,
             compact_ratio: float = 4.0, compact_min_bytes: int = 16 * 1024 * 1024,
             dedupe_window: float = DEFAULT_WINDOW) -> "_Opening":
        """Open the queue manager whose journal is in `data_dir` (created if missing),
        recovering its queues and durable messages. Without `data_dir` everything is in
        memory. `fsync`: "always" (a durable send returns once fdatasync'ed), "interval"
        (at most every `fsync_interval` s), "never". The journal is compacted when it is
        `compact_ratio` times the live data and over `compact_min_bytes`. Forwarded
        message ids are remembered for `dedupe_window` seconds (see `accept_forwarded`).

        With `listen` (e.g. "tcp://127.0.0.1:7600") it also serves remote clients and other
        queue managers' forwarders there (see `listen()`).

        Await it (`qm = await QueueManager.open(d)`) or use it as an async context
        manager (`async with QueueManager.open(d) as qm:`), which closes on exit."""
        async def opening() -> "QueueManager":
            if data_dir is None:
                store = MemoryStore()
            else:
                from .durable_store import DurableStore

                path = os.fspath(data_dir)
                os.makedirs(path, exist_ok=True)
                store = await DurableStore.open(path, fsync=fsync, fsync_interval=fsync_interval,
                                                segment_size=segment_size, compact_ratio=compact_ratio,
                                                compact_min_bytes=compact_min_bytes)
            manager = cls(store, None if data_dir is None else os.fspath(data_dir), dedupe_window)
            try:
                manager._recover()
            except BaseException:
                await store.close()
                raise
            if listen is not None:
                try:
                    await manager.listen(listen)
                except BaseException:
                    await manager.close()
                    raise
            return manager

        return _Opening(opening)

    def _recover(self) -> None:
        state = records.ReplayState()
        state.apply_records(self._store.recovered)
        self._store.recovered = []
        for name, settings in state.definitions.items():
            self._define_queue(name, QueueSettings.from_dict(settings))
        restored = 0
        for name, messages in state.messages.items():
            queue = self._queues.get(name)
            if queue is None:
                if messages:
                    log.warning("journal holds %d messages for deleted queue %r; dropped", len(messages), name)
                continue
            for fields in messages.values():
                queue.accept(Message.from_record(fields))
            restored += len(messages)
        now = time.time()
        for message_id, when in state.seen.items():
            self._dedupe.add(message_id, when, now)
        self._store.set_snapshot(self._snapshot_ops, self._live_bytes)
        if self._store.durable:
            log.info("queue manager recovered %d queues and %d messages from %s",
                     len(self._definitions), restored, self.data_dir)

    @property
    def recovery_log(self) -> list[str]:
        """What recovery of the journal had to repair (torn tails, corrupt records), if anything."""
        return list(self._store.recovery_log)

    async def close(self) -> None:
        """Stop timers, fail waiting receivers, flush and close the journal. Messages
        still locked are not completed: a durable one is redelivered after reopening."""
        if self._closed:
            return
        self._closing = True
        for service in self._services:      # first: remote transactions roll back
            await service.close()
        for forwarder in list(self._forwarders.values()):
            await forwarder.close()
        self._closed = True
        self._scheduler.close()
        error = QueueError("the queue manager is closed")
        for queue in self._queues.values():
            queue.fail_waiters(error)
        await self._store.close()

    async def __aenter__(self) -> "QueueManager":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise QueueError("the queue manager is closed")

    # ---- queue definitions ----

    async def create_queue(self, name: str, **settings: Any) -> QueueSettings:
        """Create a queue with the settings of DESIGN.md's table (durably: definitions
        survive a restart). Creating an existing queue with the same settings does nothing;
        different settings raise QueueExists. Returns the validated settings."""
        self._check_open()
        validate_queue_name(name)
        validated = QueueSettings.from_kwargs(**settings)
        if validated.dead_letter_queue == name:
            raise ValueError(f"queue setting dead_letter_queue: queue {name!r} cannot be its own dead-letter queue")
        existing = self._definitions.get(name) or self._defining.get(name)
        if existing is not None:
            if existing == validated:
                if name in self._defining:      # another task is journaling it: wait for that
                    await self._store.flush()
                return existing
            raise QueueExists(f"queue {name!r} exists with different settings")
        await self._journal_definition(name, validated)
        return validated

    async def _journal_definition(self, name: str, settings: QueueSettings) -> None:
        self._defining[name] = settings
        try:
            await self._store.submit([records.DEFINE, name, settings.as_dict()],
                                     self._apply_definition, (name, settings))
        finally:
            self._defining.pop(name, None)

    def _apply_definition(self, item: tuple[str, QueueSettings]) -> None:
        self._define_queue(*item)

    def _define_queue(self, name: str, settings: QueueSettings) -> Queue:
        if name in self._queues:
            return self._queues[name]
        journaled = self._store.durable and settings.durable
        main = Queue(name, settings, self, journaled=journaled)
        main.retry = Queue(name + ";retry", settings, self, journaled=journaled, kind=RETRY_QUEUE, parent=main)
        main.poison = Queue(name + ";poison", settings, self, journaled=journaled, kind=POISON_QUEUE, parent=main)
        for queue in (main, main.retry, main.poison):
            self._queues[queue.name] = queue
        if name != SYSTEM_DEAD_LETTER_QUEUE:
            self._definitions[name] = settings
        if not name.startswith("$"):
            self._sendable[name] = main
        elif name.startswith(TRANSMISSION_PREFIX) and not self._closing:
            # (one defined while close() waits for the others would never be closed; the
            # next open starts it from the journal)
            from .forwarder import Forwarder

            self._forwarders[name] = Forwarder.start(self, main, name[len(TRANSMISSION_PREFIX):])
        return main

    async def delete_queue(self, name: str) -> None:
        """Delete a queue, its sub-queues and every message in them (durably). Receivers
        waiting on it get QueueNotFound; locked messages can no longer be completed."""
        self._check_open()
        validate_queue_name(name)
        if name not in self._definitions:
            raise QueueNotFound(f"no queue named {name!r}")
        await self._store.submit([records.DELETE, name], self._apply_delete, name)

    def _apply_delete(self, name: str) -> None:
        main = self._queues.get(name)
        if main is None:
            return
        error = QueueNotFound(f"queue {name!r} was deleted")
        for queue in (main, main.retry, main.poison):
            queue.drop_all(error)
            self._queues.pop(queue.name, None)
        self._sendable.pop(name, None)
        self._definitions.pop(name, None)

    def queues(self) -> list[str]:
        """Names of every queue (application, `$dead`, transmission queues), sub-queues excluded."""
        return [name for name, queue in self._queues.items() if queue.kind == MAIN]

    def settings(self, name: str) -> QueueSettings:
        """The settings of a queue (QueueNotFound if there is none)."""
        return self._receivable(name).main.settings

    # ---- addresses ----

    async def route(self, address: str) -> tuple[Queue, str | None]:
        """The local queue that takes a message sent to `address`, and the remote address
        it is bound for (None for a local queue). A `tether://host:port/queue` address
        goes to the transmission queue of that queue manager, created on first use."""
        if not isinstance(address, str):
            raise TypeError(f"queue address must be a string, not {address!r}")
        if is_remote(address):
            remote = parse_remote(address)
            return await self.transmission_queue(remote), str(remote)
        base, sub = split_subqueue(address)
        if sub is not None:
            raise ValueError(f"cannot send to sub-queue {address!r}; send to {base!r}")
        validate_queue_name(base)
        queue = self._sendable.get(base)
        if queue is None:
            raise QueueNotFound(f"no queue named {base!r}")
        return queue, None

    async def transmission_queue(self, remote: RemoteAddress) -> Queue:
        """The (durable) transmission queue holding messages bound for `remote`'s queue manager."""
        name = TRANSMISSION_PREFIX + remote.authority
        queue = self._queues.get(name)
        if queue is None:
            if name not in self._defining:
                await self._journal_definition(name, TRANSMISSION_SETTINGS)
            else:
                await self._store.flush()
            queue = self._queues[name]
        return queue

    async def return_queue(self, origin: str) -> Queue:
        """The (durable) queue of rejected messages to send back to queue manager `origin`."""
        name = RETURN_PREFIX + origin
        queue = self._queues.get(name)
        if queue is None:
            if name not in self._defining:
                await self._journal_definition(name, RETURN_SETTINGS)
            else:
                await self._store.flush()
            queue = self._queues[name]
        return queue

    async def _sending_queue(self, address: str) -> tuple[Queue, str | None]:
        queue = self._sendable.get(address)
        if queue is not None:
            return queue, None
        return await self.route(address)

    def _receivable(self, name: str) -> Queue:
        queue = self._queues.get(name)
        if queue is None:
            if not isinstance(name, str):
                raise TypeError(f"queue name must be a string, not {name!r}")
            split_subqueue(name)    # a clear error for an unknown sub-queue
            raise QueueNotFound(f"no queue named {name!r}")
        return queue

    def _check_transactional(self, queue: Queue) -> None:
        if not queue.settings.exactly_once:
            raise TransactionError(f"queue {queue.name!r} has exactly_once=False: it takes no transactions")

    # ---- sending ----

    def _new_message(self, queue: Queue, body: Any, headers: dict | None,
                     time_to_live: float | None, destination: str | None) -> Message:
        settings = queue.settings
        if body.__class__ is not bytes:
            if isinstance(body, (bytearray, memoryview)):
                body = bytes(body)
            else:
                raise TypeError(f"message body must be bytes, not {type(body).__name__}")
        if len(body) > settings.max_message_size:
            raise MessageTooLarge(f"message of {len(body)} bytes is over max_message_size "
                                  f"{settings.max_message_size} of queue {queue.name!r}")
        if headers is not None:
            check_headers(headers)
        now = _time()
        ttl = settings.time_to_live if time_to_live is None else _seconds("time_to_live", time_to_live)
        self._id_counter += 1
        # positional: the hot path of every send
        return Message(f"{self._id_prefix}{self._id_counter:x}", body, headers, 0, now,
                       None if ttl is None else now + ttl, None, None, destination)

    async def send(self, address: str, body: bytes, *, headers: dict | None = None,
                   time_to_live: float | None = None) -> str:
        """Queue a message; returns its id once it is durable (durable queue) or queued
        (volatile). `time_to_live` (seconds) overrides the queue's. Raises QueueNotFound,
        QueueFull (max_length), MessageTooLarge (max_message_size), TypeError/ValueError."""
        if self._closed:
            self._check_open()
        queue = self._sendable.get(address)
        settings = queue.settings if queue is not None else None
        if (settings is not None and body.__class__ is bytes and headers is None and time_to_live is None
                and len(body) <= settings.max_message_size):
            # the common case, inlined (_new_message() does the same with every check)
            now = _time()
            ttl = settings.time_to_live
            self._id_counter += 1
            message = Message(f"{self._id_prefix}{self._id_counter:x}", body, None, 0, now,
                              None if ttl is None else now + ttl)
        else:
            destination = None
            if queue is None:
                queue, destination = await self.route(address)
                settings = queue.settings
            message = self._new_message(queue, body, headers, time_to_live, destination)
        max_length = settings.max_length
        if max_length is not None and queue.held + queue.reserved >= max_length:
            raise QueueFull(f"queue {queue.name!r} holds max_length={max_length} messages")
        if queue.journaled:
            queue.reserved += 1
            await self._store.submit([ENQUEUE, queue.name, message.to_record()],
                                     queue.accept_reserved, message)
        else:
            queue.accept(message)
        return message.id

    async def accept_forwarded(self, queue_name: str, message_id: str, body: bytes, *,
                               headers: dict | None = None, enqueued_at: float | None = None,
                               expires_at: float | None = None) -> bool:
        """The target side of store-and-forward: queue a message another queue manager
        forwarded, keeping its id, enqueue time and expiry. Returns once it is durable
        (durable queue); False, storing nothing, when this id was accepted before (within
        the dedupe window, which survives a restart) on an exactly_once queue, so a
        retried transfer delivers once. Raises QueueNotFound, QueueFull, MessageTooLarge."""
        self._check_open()
        if not isinstance(message_id, str) or not message_id:
            raise TypeError(f"message_id must be a non-empty string, not {message_id!r}")
        queue = self._sendable.get(queue_name)
        if queue is None:
            queue, _ = await self.route(queue_name)
        message = self._new_message(queue, body, headers, None, None)
        message.id = message_id
        if enqueued_at is not None:
            message.enqueued_at = float(enqueued_at)
        message.expires_at = None if expires_at is None else float(expires_at)
        dedupe = queue.settings.exactly_once
        if dedupe and (message_id in self._dedupe or message_id in self._dedupe_pending):
            return False
        max_length = queue.settings.max_length
        if max_length is not None and queue.held + queue.reserved >= max_length:
            raise QueueFull(f"queue {queue.name!r} holds max_length={max_length} messages")
        now = time.time()
        steps = [(queue, [ENQUEUE, queue.name, message.to_record()])]
        if dedupe:
            self._dedupe_pending.add(message_id)
            steps.append((queue, [records.SEEN, [message_id], now]))
        queue.reserved += 1

        def apply() -> None:
            if dedupe:
                self._dedupe_pending.discard(message_id)
                self._dedupe.add(message_id, now, now)
            queue.accept_reserved(message)

        try:
            pending = self._perform(steps, apply)
            if pending is not None:
                await pending
        except asyncio.CancelledError:
            raise       # the write goes on: its apply() settles the id
        except BaseException:
            self._dedupe_pending.discard(message_id)   # the journal failed: nothing stored
            raise
        return True

    async def forget_forwarded(self, message_ids: list[str]) -> None:
        """Forget accepted forwarded ids (the sender will never send them again), durably."""
        self._check_open()
        ids = [i for i in message_ids if i in self._dedupe]
        if not ids:
            return
        if self._store.durable:
            await self._store.submit([records.FORGET, ids], self._dedupe.forget, ids)
        else:
            self._dedupe.forget(ids)

    async def dead_letter_message(self, message: Message, reason: str) -> None:
        """Settle a received message by moving it to its queue's dead-letter queue with
        `reason` (a forwarder does this for "rejected" and "queue-not-found"; the source
        is its destination address, or its queue). LockLost if the lock was lost."""
        self._check_open()
        if not isinstance(reason, str) or not reason:
            raise ValueError(f"dead-letter reason must be a non-empty string, not {reason!r}")
        queue = self._check_lock(message, self)
        message._state = SETTLING
        pending = self._dead_letter(queue, message, reason)
        if pending is not None:
            await pending

    async def listen(self, url: str, **settings: Any) -> Any:
        """Serve this manager at `url` (tcp://HOST:PORT, port 0: any free port) with the
        protocol of `tether qm serve`, for QueueClients and other queue managers'
        forwarders. Returns the `QueueService` (its `.address`, `.url`); closed with the
        manager. `settings`: client_grace and session settings."""
        self._check_open()
        from .service import QueueService

        service = await QueueService.start(self, url, **settings)
        self._services.append(service)
        return service

    @property
    def services(self) -> list[Any]:
        """The QueueServices serving this manager (see `listen()`)."""
        return list(self._services)

    # ---- receiving ----

    async def receive(self, name: str, timeout: float | None = None) -> Message | None:
        """The next message of a queue (or sub-queue: `orders;poison`), peek-locked for
        validity_duration: complete() or abandon() it. Waits up to `timeout` seconds
        (None: until one arrives; 0: no wait) and returns None if none came. Raises
        PoisonMessage when the queue faulted on a poison message, QueueNotFound."""
        if self._closed:
            self._check_open()
        queue = self._queues.get(name)
        if queue is None:
            queue = self._receivable(name)
        if queue.faulted:
            raise queue.poison_error()
        message = queue.take(self, _time())
        if message is not None:
            return message
        return await self._wait(queue, self, timeout)

    async def _receive(self, queue: Queue, owner: Any, timeout: float | None) -> Message | None:
        self._check_open()
        if queue.faulted:
            raise queue.poison_error()
        message = queue.take(owner, time.time())
        if message is not None:
            return message
        return await self._wait(queue, owner, timeout)

    async def _wait(self, queue: Queue, owner: Any, timeout: float | None) -> Message | None:
        if timeout is not None:
            timeout = float(timeout)
            if timeout != timeout:
                # checked before the waiter is queued: a waiter nobody awaits would take
                # (and lock) the next message, hiding it until its lock expired
                raise ValueError("receive timeout must be a number of seconds or None, not nan")
            if timeout <= 0:
                return None
        future = queue.wait(owner, self._loop)
        handle = None
        if timeout is not None:
            handle = self._loop.call_later(timeout, _wait_timed_out, queue, future)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                message = future.result()
                if message is not None:   # handed over just as we were cancelled: give it back
                    queue.unlock_undelivered(message)
            else:
                queue.forget_waiter(future)
            raise
        finally:
            if handle is not None:
                handle.cancel()

    # ---- settling (Message.complete / Message.abandon land here) ----

    def _check_lock(self, message: Message, owner: Any) -> Queue:
        if message._state != LOCKED or message._owner is not owner or message._home.deleted:
            raise LockLost(f"message {message.id}: the peek-lock was lost (expired, settled or queue deleted)")
        if message._lock_deadline < time.time():
            raise LockLost(f"message {message.id}: the peek-lock expired (validity_duration)")
        return message._home

    async def complete_message(self, message: Message) -> None:
        """Remove a received message (durably on a durable queue). LockLost if the lock expired."""
        # _check_lock() inlined: this is the hot path of every complete
        if message._state != LOCKED or message._owner is not self or message._lock_deadline < _time():
            self._check_lock(message, self)
        if self._closed:
            self._check_open()
        queue = message._home
        if queue.journaled:
            message._state = SETTLING
            await self._store.submit([REMOVE, queue.name, message.id], queue.remove, message)
        else:
            if queue.deleted:
                self._check_lock(message, self)
            queue.remove(message)

    async def abandon_message(self, message: Message) -> None:
        """Return a received message as a failed delivery (see poison.py)."""
        self._check_open()
        queue = self._check_lock(message, self)
        pending = self._fail(queue, message, time.time())
        if pending is not None:
            await pending

    def _perform(self, steps: list[tuple[Queue, list]], apply: Callable[[], None]) -> Awaitable | None:
        """Journal the operations of `steps` whose queue is journaled, in one record, then
        apply(); at once when none is. Returns what to await for durability, or None."""
        ops = [op for queue, op in steps if queue.journaled]
        if ops:
            return self._store.submit_many(ops, _call, apply)
        apply()
        return None

    def _move(self, source: Queue, old: Message, target: Queue, fresh: Message) -> Awaitable | None:
        """`old` leaves `source`; `fresh` (its copy) joins `target`."""
        def apply() -> None:
            source.remove(old)
            if target.deleted:
                log.warning("message %s dropped: queue %r was deleted", fresh.id, target.name)
            else:
                target.accept(fresh)

        return self._perform([(source, [records.REMOVE, source.name, old.id]),
                              (target, [records.ENQUEUE, target.name, fresh.to_record()])], apply)

    def _drop(self, queue: Queue, old: Message) -> Awaitable | None:
        return self._perform([(queue, [records.REMOVE, queue.name, old.id])], lambda: queue.remove(old))

    def _fail(self, queue: Queue, old: Message, now: float) -> Awaitable | None:
        """A delivery of `old` failed (abandon, lock expiry, rollback): retry it, delay it,
        or handle it as poison, per the queue's settings."""
        old._state = SETTLING
        fresh = old.redelivery_copy()
        if queue.kind != MAIN:
            # read from ;retry or ;poison by hand: it simply goes back there
            return self._perform(
                [(queue, [records.UPDATE, queue.name, old.id, fresh.delivery_count, fresh.attempts])],
                lambda: queue.returned(old, fresh))
        if fresh.expires_at is not None and fresh.expires_at <= now:
            return self._dead_letter(queue, old, EXPIRED)
        settings = queue.settings
        fresh.attempts += 1
        step = after_failure(settings, fresh.attempts)
        if step == RETRY_NOW:
            return self._perform(
                [(queue, [records.UPDATE, queue.name, old.id, fresh.delivery_count, fresh.attempts])],
                lambda: queue.returned(old, fresh))
        if step == RETRY_LATER:
            fresh.retry_at = now + settings.retry_cycle_delay
            return self._move(queue, old, queue.retry, fresh)
        assert step == POISON
        mode = settings.receive_error_handling
        log.warning("poison message %s in queue %r after %d deliveries: %s",
                    old.id, queue.name, fresh.attempts, mode)
        if mode == "drop":
            return self._drop(queue, old)
        if mode == "reject":
            origin = old.headers.get(ORIGIN_HEADER) if old.headers else None
            back = self._queues.get(RETURN_PREFIX + origin) if isinstance(origin, str) else None
            if back is not None:        # forwarded: the negative acknowledgement goes home
                return self._move(queue, old, back, as_dead_letter(old, REJECTED, queue.main.name))
            return self._dead_letter(queue, old, REJECTED)
        return self._move(queue, old, queue.poison, fresh)   # "move", and "fault" (which also stops the queue)

    def _dead_letter(self, queue: Queue, old: Message, reason: str) -> Awaitable | None:
        """Move `old` from `queue` to its dead-letter queue with `reason` (or drop it when
        the queue's dead_letter_queue is "none")."""
        main = queue.main
        source = old.destination or main.name
        target_name = dead_letter_queue_name(main.settings)
        if target_name is None:
            log.info("message %s of queue %r dropped (%s, dead_letter_queue none)", old.id, main.name, reason)
            return self._drop(queue, old)
        target = self._queues.get(target_name)
        if target is None or target is main:
            log.warning("dead-letter queue %r of %r does not exist; using %s",
                        target_name, main.name, SYSTEM_DEAD_LETTER_QUEUE)
            target = self._queues[SYSTEM_DEAD_LETTER_QUEUE]
        return self._move(queue, old, target, as_dead_letter(old, reason, source))

    # ---- QueueHooks: called by queues ----

    def schedule(self, deadline: float, queue: Queue) -> None:
        """QueueHooks: wake `queue.on_timer` at `deadline` (wall-clock seconds)."""
        self._scheduler.schedule(deadline, queue)

    def expire(self, queue: Queue, message: Message, now: float) -> None:
        """QueueHooks: a waiting message's time-to-live ran out: dead-letter it (expired)."""
        queue.settle_ready(message)
        self._dead_letter(queue, message, EXPIRED)

    def lock_expired(self, queue: Queue, message: Message, now: float) -> None:
        """QueueHooks: a peek-lock expired: a failed delivery (see poison.py)."""
        self._fail(queue, message, now)

    def retry_due(self, queue: Queue, message: Message, now: float) -> None:
        """QueueHooks: a message's retry delay ended: back from ;retry to its main queue."""
        queue.settle_ready(message)
        fresh = message.redelivery_copy()
        fresh.retry_at = None
        self._move(queue, message, queue.parent, fresh)

    def count_dead_letter(self, source: str, delta: int) -> None:
        """QueueHooks: a dead letter from queue `source` arrived (+1) or left (-1)."""
        self._dead_counts[source] += delta

    # ---- transactions ----

    def transaction(self) -> Transaction:
        """`async with qm.transaction() as tx:` receives and sends that commit together."""
        self._check_open()
        return Transaction(self)

    async def _commit(self, received: list[Message], sends: list[tuple[Queue, Message]], owner: Any) -> None:
        self._check_open()
        now = time.time()
        for message in received:
            if message._state != LOCKED or message._owner is not owner or message._lock_deadline < now \
                    or message._home.deleted:
                await self._rollback(received, owner)
                raise TransactionError(f"cannot commit: the peek-lock of message {message.id} was lost")
        added = Counter(queue for queue, _ in sends)
        for queue, count in added.items():
            limit = queue.settings.max_length
            if limit is not None and queue.held + queue.reserved + count > limit:
                await self._rollback(received, owner)
                raise QueueFull(f"cannot commit: queue {queue.name!r} would exceed max_length={limit}")
        steps = []
        for message in received:
            message._state = SETTLING
            queue = message._home
            steps.append((queue, [records.REMOVE, queue.name, message.id]))
        for queue, message in sends:
            queue.reserved += 1
            steps.append((queue, [records.ENQUEUE, queue.name, message.to_record()]))

        def apply() -> None:
            for message in received:
                message._home.remove(message)
            for queue, message in sends:
                queue.accept_reserved(message)

        pending = self._perform(steps, apply)
        if pending is not None:
            await pending

    async def _rollback(self, received: list[Message], owner: Any) -> None:
        now = time.time()
        pending = [self._fail(m._home, m, now) for m in received
                   if m._state == LOCKED and m._owner is owner and not m._home.deleted]
        for p in pending:
            if p is not None:
                await p

    # ---- information ----

    async def queue_info(self, name: str) -> QueueInfo:
        """Counts of a queue: depth, in_flight, retrying, dead_lettered, poison, bytes."""
        self._check_open()
        queue = self._receivable(name)
        if queue.kind != MAIN:
            return QueueInfo(queue.name, queue.settings.durable, queue.depth, len(queue.inflight),
                             0, 0, 0, queue.bytes, False)
        return QueueInfo(
            name=queue.name, durable=queue.settings.durable, depth=queue.depth,
            in_flight=len(queue.inflight), retrying=queue.retry.held,
            dead_lettered=self._dead_counts.get(queue.name, 0), poison=queue.poison.held,
            bytes=queue.bytes + queue.retry.bytes + queue.poison.bytes, faulted=queue.faulted)

    @property
    def journal_bytes(self) -> int:
        """Bytes the journal takes on disk (0 without a data directory)."""
        return self._store.size_bytes

    async def compact(self) -> None:
        """Rewrite the journal as a snapshot of the live data now (it also happens by itself)."""
        if self._store.durable:
            await self._store.compact()

    # ---- the durable store's view of the state ----

    def _snapshot_ops(self) -> Iterator[list]:
        for name, settings in self._definitions.items():
            yield [records.DEFINE, name, settings.as_dict()]
        for queue in self._queues.values():
            if queue.journaled:
                name = queue.name
                for message in queue.inflight.values():
                    # as journaled: the delivery in progress is not (receives are not journaled)
                    record = message.to_record()
                    record[5] -= 1
                    yield [records.ENQUEUE, name, record]
                for message in queue.ready:
                    if message._home is queue and message._state != GONE:
                        yield [records.ENQUEUE, name, message.to_record()]
        if self._store.durable:
            yield from self._snapshot_seen()

    def _snapshot_seen(self) -> Iterator[list]:
        for message_id, when in self._dedupe.items():
            yield [records.SEEN, [message_id], when]

    def _live_bytes(self) -> int:
        return sum(q.bytes + 96 * q.held for q in self._queues.values() if q.journaled)


def _wait_timed_out(queue: Queue, future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
        queue.forget_waiter(future)


# One reused Packer: msgpack.packb builds a new one per call (0.9 us against 0.2 us per
# send with headers); a Packer resets its buffer after a failed pack, and with no `default`
# callback pack() runs in C under the GIL, so loops in other threads cannot interleave.
_header_packer = msgpack.Packer(use_bin_type=True)


def check_headers(headers: Any) -> None:
    """TypeError unless `headers` is a dict of str keys to msgpack-serializable values."""
    if not isinstance(headers, dict):
        raise TypeError(f"headers must be a dict, not {type(headers).__name__}")
    for key in headers:
        if not isinstance(key, str):
            raise TypeError(f"header names must be strings, not {key!r}")
    try:
        _header_packer.pack(headers)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"headers must hold msgpack-serializable values: {exc}") from None


class _Opening:
    """What QueueManager.open() returns: awaitable, or an async context manager."""

    def __init__(self, open: Callable[[], Awaitable[QueueManager]]) -> None:
        self._open = open
        self._manager: QueueManager | None = None

    def __await__(self) -> Generator[Any, None, QueueManager]:
        return self._open().__await__()

    async def __aenter__(self) -> QueueManager:
        self._manager = await self._open()
        return self._manager

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._manager is not None:
            await self._manager.close()
