"""`QueueManager`: the queues of one process, embedded, over asyncio.

    async with QueueManager.open("./data") as qm:          # or: qm = await QueueManager.open(...)
        await qm.create_queue("orders", receive_error_handling="move")
        await qm.send("orders", b"...")
        msg = await qm.receive("orders", timeout=5)
        await msg.complete()

The manager is the asyncio adapter of the queue core (core/): every decision about a
message is made there, with the wall clock's `now`; the manager opens the store, replays it
into the core, and runs the core through `QueueOperations` (operations.py), which the
service, the client-facing transactions and the forwarders share. Durable queues journal
every change before it takes effect (store/journal_store.py); a manager opened without a
data directory keeps everything in memory.

Addresses: a plain name is a local queue; `tether://host:port/queue` goes to the
transmission queue for that queue manager (`route()`), where a forwarder picks it up
(forwarder.py: one per transmission queue, started when the queue is defined or
recovered) and reaches it as `remotes` says (remotes.py: tcp:// or tls://, which
credentials). `listen()` (or `open(listen=URL)`) serves this manager to remote clients and
other queue managers (service.py), over TLS with `ssl=`, to the `users` given.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from ssl import SSLContext
from typing import TYPE_CHECKING, Any, Unpack, cast

from .. import census
from ..errors import QueueError, QueueNotFound
from ..opening import Opening
from ..session.sansio.settings import SessionOptions
from .auth import Users
from .core import QueueCore, QueueInfo, QueueSettings
from .core.address import RemoteAddress, is_remote, parse_remote, split_subqueue, validate_queue_name
from .core.engine import DEFAULT_MAX_QUEUES
from .core.replay import ReplayState
from .core.settings import QueueOptions
from .core.source_journal import DEFAULT_JOURNAL_MAX_LENGTH, DEFAULT_JOURNAL_TIME_TO_LIVE, JournalSettings
from .core.system_queues import RETURN_PREFIX, TRANSMISSION_PREFIX, settings_for
from .group import AcceptGroup, LocalGroups, check_accept
from .limits import ServiceLimits
from .message import Message
from .operations import QueueOperations
from .receive_batch import ReceiveBatch, check_batch, more_in_turn
from .remotes import DIRECT, Remote, validate_remotes
from .statistics import ManagerStatistics, gather
from .store.interface import Store
from .store.journal_store import (
    DEFAULT_COMPACT_MIN_BYTES,
    DEFAULT_COMPACT_RATIO,
    DEFAULT_SEGMENT_SIZE,
    JournalStore,
)
from .store.memory import MemoryStore
from .store.postgres import DEFAULT_CLIENT_GRACE, PostgresStore, is_postgres_url, redacted
from .transaction import Transaction

if TYPE_CHECKING:
    from .service import QueueService

log = logging.getLogger("tether.queue")

#: Producers silent this long are forgotten by default (see core/producers.py).
DEFAULT_DEDUPE_WINDOW = 86400.0



class ListenOptions(SessionOptions, total=False):
    """`listen()`'s settings: the service's and its sessions' (SessionSettings' fields)."""

    client_grace: float
    limits: ServiceLimits

class QueueManager:
    """The queues of this process. Create it with `await QueueManager.open(data_dir)`."""

    def __init__(self, operations: QueueOperations, data_dir: str | None,
                 remotes: Mapping[str, Remote] | None = None) -> None:
        # Use QueueManager.open(): the store must be opened and replayed first.
        self.operations = operations
        self.data_dir = data_dir
        self.remotes: dict[str, Remote] = validate_remotes(remotes)
        self._core = operations.core
        self._closed = False
        self._closing = False                  # close() has begun: start no more forwarders
        self._services: list[Any] = []         # service.QueueService, see listen()
        self._forwarders: dict[str, Any] = {}  # transmission queue name -> forwarder.Forwarder
        census.managers.add(self)              # tether.metrics reports it while it is open

    # ---- opening and closing ----

    @classmethod
    def open(cls, data_dir: str | os.PathLike[str] | None = None, *, listen: str | None = None,
             ssl: SSLContext | None = None, users: Users | Mapping[str, Any] | None = None,
             allow_anonymous: bool = False, remotes: Mapping[str, Remote] | None = None,
             fsync: str = "always", fsync_interval: float = 0.05, segment_size: int = DEFAULT_SEGMENT_SIZE,
             compact_ratio: float = DEFAULT_COMPACT_RATIO, compact_min_bytes: int = DEFAULT_COMPACT_MIN_BYTES,
             dedupe_window: float = DEFAULT_DEDUPE_WINDOW, max_queues: int = DEFAULT_MAX_QUEUES,
             max_disk_bytes: int | None = None, source_journal: bool = False,
             journal_max_length: int | None = DEFAULT_JOURNAL_MAX_LENGTH,
             journal_time_to_live: float | None = DEFAULT_JOURNAL_TIME_TO_LIVE,
             client_grace: float = DEFAULT_CLIENT_GRACE,
             clock: Callable[[], float] | None = None) -> Opening[QueueManager]:
        """Open the queue manager whose journal is in `data_dir` (created if missing, 0700),
        recovering its queues and durable messages. Without `data_dir` everything is in
        memory. `data_dir` may instead be a PostgreSQL URL ("postgresql://user@host/db",
        with the `tether[postgres]` extra): then the queues live in that database and every
        queue manager opened on it serves the same queues (docs/storage.md); a manager that
        stops renewing its lease there for `client_grace` seconds (killed, cut off) has its
        peek-locks returned by the others. `fsync`: "always" (a durable send returns once fdatasync'ed), "interval"
        (at most every `fsync_interval` s), "never". The journal is compacted when it is
        `compact_ratio` times the live data and over `compact_min_bytes`. A producer
        (a remote client, another queue manager's forwarder) silent for `dedupe_window`
        seconds is forgotten, with what it takes to de-duplicate its resends. At most
        `max_queues` queues are defined (transmission queues included); while the journal
        is larger than `max_disk_bytes` (None: no limit) durable sends are refused with
        LimitExceeded. `source_journal`: keep a copy of every message forwarded to another
        queue manager, once it acknowledged it, in `$journal` (a send's `journal=` decides
        for itself), at most `journal_max_length` copies (the oldest go) for
        `journal_time_to_live` seconds (None: no such bound). `clock` (epoch seconds; default
        the wall clock) stamps messages and keeps their deadlines; on a PostgreSQL store the
        statements take their `now` from it too, instead of the database's clock (the
        simulation drives every manager of one database on one simulated clock).

        Raises JournalCorrupt when the journal is damaged beyond a torn tail (nothing is
        changed; see `tether qm check` and `tether qm repair`), QueueError when another
        process holds the directory, ValueError naming a bad setting.

        With `listen` (e.g. "tcp://127.0.0.1:7600") it also serves remote clients and other
        queue managers' forwarders there, with `ssl`, `users` and `allow_anonymous` (see
        `listen()`). `remotes` maps "HOST:PORT" to the `Remote` that says how to reach the
        queue manager there (tls, credentials) when a message is sent to
        tether://HOST:PORT/queue; an address without one is reached over plain TCP,
        anonymously. ValueError/TypeError naming a bad remote.

        Await it (`qm = await QueueManager.open(d)`) or use it as an async context manager
        (`async with QueueManager.open(d) as qm:`), which closes on exit."""
        if isinstance(dedupe_window, bool) or not isinstance(dedupe_window, (int, float)) \
                or not (dedupe_window > 0 and math.isfinite(dedupe_window)):
            raise ValueError(f"dedupe_window must be a finite number of seconds > 0, not {dedupe_window!r}")
        if isinstance(client_grace, bool) or not isinstance(client_grace, (int, float)) \
                or not (client_grace > 0 and math.isfinite(client_grace)):
            raise ValueError(f"client_grace must be a finite number of seconds > 0, not {client_grace!r}")
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a callable returning epoch seconds, or None, not {clock!r}")
        checked_remotes = validate_remotes(remotes)
        journal = JournalSettings.create(source_journal, journal_max_length, journal_time_to_live)

        async def opening() -> QueueManager:
            if is_postgres_url(data_dir):
                return await cls._open_shared(str(data_dir), float(dedupe_window), max_queues, journal,
                                              checked_remotes, client_grace, listen,
                                              dict(ssl=ssl, users=users, allow_anonymous=allow_anonymous), clock)
            store: Store
            if data_dir is None:
                store = MemoryStore()
            else:
                store = await JournalStore.open(data_dir, fsync=fsync, fsync_interval=fsync_interval,
                                                segment_size=segment_size, compact_ratio=compact_ratio,
                                                compact_min_bytes=compact_min_bytes)
            try:
                operations = _recover(store, float(dedupe_window), max_queues, max_disk_bytes, journal, clock)
                await operations.wait_for(operations.core.start())
            except BaseException:
                await store.close()
                raise
            manager = cls(operations, None if data_dir is None else os.fspath(data_dir), checked_remotes)
            for name in operations.core.queue_names():
                manager._start_forwarder(name)
            if store.durable:
                log.info("queue manager recovered %d queues from %s", len(operations.core.queue_names()), data_dir)
            if listen is not None:
                try:
                    await manager.listen(listen, ssl=ssl, users=users, allow_anonymous=allow_anonymous)
                except BaseException:
                    await manager.close()
                    raise
            return manager

        return Opening(opening, _close_manager)

    @classmethod
    async def _open_shared(cls, url: str, dedupe_window: float, max_queues: int, journal: JournalSettings,
                           remotes: dict[str, Remote], client_grace: float, listen: str | None,
                           serving: dict[str, Any], clock: Callable[[], float] | None = None) -> QueueManager:
        """A manager on a shared (PostgreSQL) store: its operations are the database's."""
        from .shared_operations import SharedQueueOperations

        store = await PostgresStore.open(url, client_grace=client_grace, clock=clock)
        try:
            core = QueueCore(store.owner, journaled=False, producer_expiry=dedupe_window, max_queues=max_queues,
                             journal=journal)
            operations = await SharedQueueOperations.start(core, store, dedupe_window)
        except BaseException:
            await store.close()
            raise
        # SharedQueueOperations has QueueOperations' methods (duck-typed: no Protocol names them yet)
        manager = cls(cast(QueueOperations, operations), redacted(url), remotes)
        # transmission queues, made by any manager of the database: each gets its forwarder
        operations.on_defined = manager._start_forwarder
        for name in core.queue_names():
            manager._start_forwarder(name)
        log.info("queue manager on %s: %d queues", redacted(url), len(core.queue_names()))
        if listen is not None:
            try:
                await manager.listen(listen, **serving)
            except BaseException:
                await manager.close()
                raise
        return manager

    @property
    def recovery_log(self) -> list[str]:
        """What recovery of the journal repaired by itself (torn tails), if anything."""
        return list(self.operations.store.recovery_log)

    @property
    def manager_id(self) -> bytes:
        """This queue manager's identity (kept in its journal; random without one)."""
        return self._core.manager_id

    async def close(self) -> None:
        """Stop serving and forwarding, fail waiting receivers, write what is pending and
        close the journal. Messages still locked are not completed: a durable one is
        redelivered after reopening."""
        if self._closed:
            return
        self._closing = True
        for service in self._services:       # first: remote transactions roll back
            await service.close()
        for forwarder in list(self._forwarders.values()):
            await forwarder.close()
        self._closed = True
        await self.operations.close()

    def statistics(self) -> ManagerStatistics:
        """Every queue's counts, what went through each since the manager opened (sent,
        received, dead-lettered by reason), the journal's size and sync times, and how many
        clients its services know: what tether.metrics reports. QueueError once closed."""
        self._check_open()
        return gather(self.operations, self._services)

    async def __aenter__(self) -> QueueManager:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise QueueError("the queue manager is closed")

    # ---- queue definitions ----

    async def create_queue(self, name: str, **settings: Unpack[QueueOptions]) -> QueueSettings:
        """Create a queue with these settings (durably: definitions survive a restart).
        Creating an existing queue with the same settings does nothing; different settings
        raise QueueExists. Returns the validated settings."""
        self._check_open()
        validate_queue_name(name)
        validated = QueueSettings.from_kwargs(**settings)
        await self.operations.define(name, validated)
        return validated

    async def delete_queue(self, name: str) -> None:
        """Delete a queue, its sub-queues and every message in them (durably). Receivers
        waiting on it get QueueNotFound; locked messages can no longer be completed. A
        transmission queue (`$xmit:HOST:PORT`, its forwarder stopped first) or a return
        queue may be deleted too; `$dead` may not."""
        self._check_open()
        if isinstance(name, str) and name.startswith((TRANSMISSION_PREFIX, RETURN_PREFIX)):
            if name not in self._core.queue_names():
                raise QueueNotFound(f"no queue named {name!r}")
            forwarder = self._forwarders.pop(name, None)
            if forwarder is not None:
                await forwarder.close()     # its messages in flight go back first
        else:
            validate_queue_name(name)
        await self.operations.delete(name)

    async def queues(self) -> list[str]:
        """Names of every queue (application, `$dead`, transmission queues), sub-queues excluded."""
        self._check_open()
        return self._core.queue_names()

    async def settings(self, name: str) -> QueueSettings:
        """The settings of a queue (QueueNotFound if there is none)."""
        self._check_open()
        return self._core.settings(name)

    async def queue_info(self, name: str) -> QueueInfo:
        """Counts of a queue (or sub-queue). The keys `depth` (ready), `in_flight` (locked),
        `dead` (its messages now in a dead-letter queue) and `poison` (in `;poison`) are the
        contract; `retrying`, `bytes`, `faulted` and `waiting` come with them."""
        self._check_open()
        return await self.operations.info(name)

    async def queue_infos(self) -> list[QueueInfo]:
        """queue_info() of every queue (transmission queues included)."""
        self._check_open()
        return [await self.operations.info(name) for name in self._core.queue_names()]

    async def purge_queue(self, name: str) -> int:
        """Remove every message waiting in a queue (or sub-queue: `orders;poison`), durably;
        returns how many. Messages locked by receivers stay theirs. QueueNotFound."""
        self._check_open()
        return await self.operations.purge(name)

    # ---- addresses ----

    async def route(self, address: str) -> str:
        """The local queue that takes a message sent to `address`: the queue itself, or for
        `tether://host:port/queue` the transmission queue of that queue manager (defined,
        and its forwarder started, on first use). QueueNotFound, ValueError."""
        if not isinstance(address, str):
            raise TypeError(f"queue address must be a string, not {address!r}")
        if is_remote(address):
            return await self.transmission_queue(parse_remote(address))
        base, sub = split_subqueue(address)
        if sub is not None:
            raise ValueError(f"cannot send to sub-queue {address!r}; send to {base!r}")
        validate_queue_name(base)
        if not self._core.has_queue(base):
            raise QueueNotFound(f"no queue named {base!r}")
        return base

    async def transmission_queue(self, remote: RemoteAddress) -> str:
        """The (durable) transmission queue holding messages bound for `remote`'s queue manager."""
        return await self._system_queue(TRANSMISSION_PREFIX + remote.authority)

    async def return_queue(self, origin: str) -> str:
        """The (durable) queue of rejected messages to send back to the forwarder `origin`."""
        return await self._system_queue(RETURN_PREFIX + origin)

    async def _system_queue(self, name: str) -> str:
        if not self._core.has_queue(name):
            self._check_open()
            settings = settings_for(name)
            assert settings is not None, name       # only system queues come here
            await self.operations.define(name, settings)
            self._start_forwarder(name)
        return name

    def _start_forwarder(self, name: str) -> None:
        if not name.startswith(TRANSMISSION_PREFIX) or name in self._forwarders or self._closing:
            return      # (one started while close() waits for the others would never close)
        from .forwarder import Forwarder
        from .shared_forwarder import SharedForwarder

        authority = name[len(TRANSMISSION_PREFIX):]
        # on a shared store every manager runs one; the one holding the queue forwards it
        start = SharedForwarder.start if self.operations.store.shared else Forwarder.start
        self._forwarders[name] = start(self.operations, name, authority, self._core.manager_id,
                                                 self.remotes.get(authority, DIRECT))

    @property
    def forwarders(self) -> list[Any]:
        """The running forwarders, one per transmission queue."""
        return list(self._forwarders.values())

    # ---- sending ----

    async def send(self, address: str, body: bytes, *, headers: dict[str, Any] | None = None,
                   time_to_live: float | None = None, priority: int = 3, delay: float | None = None,
                   deliver_at: float | None = None, group_id: str | None = None,
                   journal: bool | None = None) -> str:
        """Queue a message; returns its id once it is durable (durable queue) or queued
        (volatile). `time_to_live` (seconds) overrides the queue's. `priority` 0..7 (higher
        is received first, FIFO within one). `delay` (seconds) or `deliver_at` (epoch
        seconds): the message is invisible until then. `group_id`: the message is one of
        that group, received whole through accept_group(). `journal=True`: keep a copy
        in `$journal` once the message is acknowledged (forwarded: by the queue manager it
        went to; local: by being queued); None: as the manager's source_journal says for
        forwarded messages. Raises QueueNotFound, QueueFull
        (max_length), MessageTooLarge (max_message_size, headers included), StorageError
        (the journal could not write it: it is not queued), TypeError/ValueError naming a bad
        argument."""
        if self._closed:
            self._check_open()
        operations = self.operations
        if self._core.sendable(address):
            if headers is None and time_to_live is None and priority == 3 and delay is None \
                    and deliver_at is None and group_id is None and journal is None and priority.__class__ is int:
                return await operations.send_body(address, body)      # the common case
            destination = None
            name = address
        else:
            name = await self.route(address)
            destination = address if name != address else None
        entry = operations.prepare(name, body, headers=headers, time_to_live=time_to_live, destination=destination,
                                   priority=priority, delay=delay, deliver_at=deliver_at, group_id=group_id,
                                   journal=journal)
        return await operations.send_one(entry)

    async def send_many(self, address: str, bodies: list[bytes], *, headers: dict[str, Any] | None = None,
                        time_to_live: float | None = None, priority: int = 3, delay: float | None = None,
                        deliver_at: float | None = None, group_id: str | None = None,
                        journal: bool | None = None) -> list[str]:
        """Queue many messages to one address with one durable write; their ids, in order.
        The keyword arguments (as send()'s) apply to each. Nothing is queued when one is
        refused (the first refusal is raised)."""
        self._check_open()
        if isinstance(bodies, (bytes, bytearray, memoryview, str)):
            raise TypeError("send_many takes a list of message bodies, not one body")
        name = await self.route(address)
        destination = address if name != address else None
        entries = [self.operations.prepare(name, body, headers=headers, time_to_live=time_to_live,
                                           destination=destination, priority=priority, delay=delay,
                                           deliver_at=deliver_at, group_id=group_id, journal=journal)
                   for body in bodies]
        if not entries:
            return []
        await self.operations.commit([], entries)
        return [entry.id for entry in entries]

    # ---- receiving ----

    async def receive(self, name: str, timeout: float | None = None) -> Message | None:
        """The next message of a queue (or sub-queue: `orders;poison`), peek-locked for
        validity_duration: complete() or abandon() it. Waits up to `timeout` seconds (None:
        until one arrives; 0: no wait) and returns None if none came. Raises PoisonMessage
        when the queue faulted on a poison message, QueueNotFound."""
        if self._closed:
            self._check_open()
        entry = self.operations.take_now(name)        # no coroutine when one is ready
        if entry is None:
            entry = await self.operations.take(name, timeout)     # (timeout <= 0: no wait)
            if entry is None:
                return None
        return Message.of_entry(entry, self)

    async def consume(self, name: str, *, timeout: float | None = None) -> AsyncIterator[Message]:
        """`async for msg in qm.consume(name):` every message of a queue as it comes, each
        peek-locked as receive() gives it (settle it, e.g. with `async with msg:`). Ends when
        the manager closes, or when no message came for `timeout` seconds (None: never)."""
        while True:
            try:
                message = await self.receive(name, timeout=timeout)
            except QueueError:
                if self._closed:
                    return
                raise
            if message is None:
                return
            yield message

    async def peek(self, name: str, count: int = 1) -> list[Message]:
        """Up to `count` messages of a queue (or sub-queue) in the order receivers would
        get them, without locking them or counting a delivery (they cannot be settled).
        QueueNotFound, ValueError for a count < 1."""
        self._check_open()
        return [Message.peeked(entry) for entry in await self.operations.peek(name, count)]

    # Message.complete() / Message.abandon() / Message.renew_lock() land here
    async def complete_message(self, message: Message) -> None:
        """Remove a received message (durably on a durable queue). LockLost if the lock expired."""
        if self._closed:
            self._check_open()
        await self.operations.complete(message._entry, message._tag)

    async def abandon_message(self, message: Message) -> None:
        """Return a received message as a failed delivery (retry, delay or poison per its queue)."""
        self._check_open()
        await self.operations.abandon(message._entry, message._tag)

    async def renew_message(self, message: Message) -> None:
        """Extend a received message's peek-lock by validity_duration from now. LockLost."""
        self._check_open()
        message._lock_deadline = await self.operations.renew(message._entry, message._tag)

    # ---- transactions ----

    def transaction(self) -> Transaction:
        """`async with qm.transaction() as tx:` receives and sends that commit together."""
        self._check_open()
        return Transaction(self.operations, self.route)

    def accept_group(self, name: str, timeout: float | None = None) -> AcceptGroup:
        """`async with qm.accept_group(name, timeout) as group:` hold the next free group of
        a queue (messages sent with one group_id): while the block runs nobody else gets its
        messages; `group.receive()` / `async for msg in group` give them in send order.
        TimeoutError when no group is free within `timeout` seconds (None: wait). Leaving
        the block abandons what is still locked and lets the group go (group.py)."""
        self._check_open()
        return AcceptGroup(LocalGroups(self), name, check_accept(timeout))

    def receive_batch(self, name: str, max_messages: int, timeout: float | None = None) -> ReceiveBatch:
        """`async with qm.receive_batch(name, max_messages, timeout) as batch:` up to
        `max_messages` messages received in one transaction (the first waited for up to
        `timeout` seconds, the rest taken if ready), completed in one journal record when
        the block ends, returned as failed deliveries if it raises (receive_batch.py)."""
        self._check_open()
        max_messages, timeout = check_batch(max_messages, timeout)
        return ReceiveBatch(self.transaction(), name, max_messages, timeout, more_in_turn)

    # ---- serving ----

    async def listen(self, url: str, *, ssl: SSLContext | None = None,
                     users: Users | Mapping[str, Any] | None = None, allow_anonymous: bool = False,
                     **settings: Unpack[ListenOptions]) -> QueueService:
        """Serve this manager at `url` (tcp://HOST:PORT, or tls://HOST:PORT with `ssl`, a
        server `ssl.SSLContext`; port 0: any free port) with the protocol of `tether qm
        serve`, for QueueClients and other queue managers' forwarders. Returns the
        `QueueService` (its `.address`, `.url`); closed with the manager.

        `users` (a `tether.queue.auth.Users`, or the dict of a `[users]` table): every
        client authenticates as one of them and may do what their permissions say. Without
        users, clients are anonymous with every permission, and serving an address that is
        not loopback is refused (ValueError naming it) unless `allow_anonymous`.
        `settings`: client_grace, limits (a ServiceLimits) and session settings."""
        self._check_open()
        from .service import QueueService

        service = await QueueService.start(self, url, ssl=ssl, users=users, allow_anonymous=allow_anonymous,
                                           **settings)
        self._services.append(service)
        return service

    @property
    def services(self) -> list[Any]:
        """The QueueServices serving this manager (see `listen()`)."""
        return list(self._services)

    # ---- the journal ----

    @property
    def journal_bytes(self) -> int:
        """Bytes the journal takes on disk (0 without a data directory)."""
        return self.operations.store.size_bytes

    async def compact(self) -> None:
        """Rewrite the journal as a snapshot of the live data now (it also happens by itself)."""
        self._check_open()
        if self.operations.store.durable and not self.operations.store.shared:
            await self.operations.writer.compact()

    def __repr__(self) -> str:
        where = self.data_dir or "memory"
        return f"<QueueManager {where} {len(self._core.queue_names())} queues>"


def _recover(store: Store, dedupe_window: float, max_queues: int, max_disk_bytes: int | None,
             journal: JournalSettings | None = None, clock: Callable[[], float] | None = None) -> QueueOperations:
    """A core with the store's records replayed into it, and its operations glue."""
    state = ReplayState()
    state.apply_records(store.recovered)
    store.release_recovered()
    core = QueueCore(state.manager_id or os.urandom(16), journaled=store.durable, producer_expiry=dedupe_window,
                     max_queues=max_queues, journal=journal)
    operations = QueueOperations(core, store, clock or time.time, max_disk_bytes=max_disk_bytes)
    now = operations.now()
    core.load(state, now)
    core.handle_timer(now)      # what fell due while the manager was down, before anyone receives
    operations.settle()
    return operations


async def _close_manager(manager: QueueManager) -> None:
    await manager.close()
