"""`SharedQueueOperations`: the queue operations of a queue manager whose store is shared.

With the journal, one process's queue core (core/engine.py) is the authority over every
message and the store keeps its records. With PostgreSQL (store/postgres.py) several queue
managers on several hosts serve the same queues, so no process's memory can be the
authority: every operation is a statement on the database, and the database decides who
gets what. This class has the methods of `QueueOperations` (operations.py), so the manager,
transactions, groups and the service use either without knowing which; the local queue
core is kept only as the catalogue of queue definitions (mirrored from `tether_queues`) and
to check and build a message before it is sent (`prepare`), the same checks as ever.

How each feature keeps its meaning (docs/storage.md, "The PostgreSQL store"):
- receive: `SELECT ... FOR UPDATE SKIP LOCKED` in an UPDATE that writes the peek-lock
  (owner, a lock number from a sequence, `lock_until`), so each message goes to exactly one
  consumer across every manager; higher priority first, FIFO (key order) within one.
- settle: a statement that matches the lock number and owner, and a lock not yet run out;
  no row matched is `LockLost`.
- failures (abandon, rollback, an expired lock) follow the queue's retry rule
  (core/retry_rule.py), in the same transaction as the row lock.
- time: the sweeper (`_sweep`), run by every manager at the earliest deadline the database
  holds (and at least every client_grace / 3), dead-letters expired messages, fails
  expired peek-locks, moves `;retry` messages back when due, returns the locks and groups of
  managers whose lease ran out, and forgets old de-duplication keys. Each step takes its
  rows with SKIP LOCKED, so managers sweeping at once never do a row twice.
- waiting receivers wait on `LISTEN tether_q` (a send NOTIFYs its queue in its own
  transaction), not by polling.
- dedupe: (queue, producer, sequence) is a primary key, inserted in the same statement as
  the messages: a resend through any manager is answered and not queued again.
- store-and-forward: a message bound for a transmission queue is numbered in its sending
  transaction (shared_forwarding.py); one manager at a time forwards each such queue
  (shared_forwarder.py).
- metrics: `sent`, `received` and `dead_lettered` count this process's operations.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import asyncpg

from ..errors import (
    LockLost,
    PoisonMessage,
    QueueError,
    QueueExists,
    QueueFull,
    QueueNotFound,
    StorageError,
    TransactionError,
)
from . import shared_forwarding
from .core import Entry, QueueCore, QueueInfo, QueueSettings
from .core.address import split_subqueue
from .core.deadletter import EXPIRED, REJECTED, dead_letter_queue_name
from .core.lifecycle import LOCKED
from .core.producers import Producer
from .core.retry_rule import POISON, RETRY_LATER, RETRY_NOW, after_failure
from .core.settings import SYSTEM_DEAD_LETTER_QUEUE
from .core.system_queues import JOURNAL_QUEUE, RETURN_PREFIX, TRANSMISSION_PREFIX
from .statement_batches import StatementBatches
from .store.postgres import PostgresStore
from .store.postgres_schema import MESSAGE_COLUMNS, NOW

log = logging.getLogger("tether.queue")
T = TypeVar("T")

_COLUMNS = ", ".join(MESSAGE_COLUMNS)
_M_COLUMNS = ", ".join("m." + c for c in MESSAGE_COLUMNS)
#: Rows one sweep step takes per statement.
SWEEP_BATCH = 500
_UNLOCK = "lock_owner = NULL, lock_tag = NULL, lock_until = NULL"

# one statement for a batch of sends: dedupe keys, messages and the NOTIFY, in one round trip
_INSERT = f"""
WITH u AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[], $5::float8[], $6::float8[],
                         $7::int4[], $8::text[], $9::text[], $10::text[], $11::float8[], $12::int8[],
                         $13::text[], $14::int2[], $15::float8[], $16::text[], $17::int4[], $19::int8[],
                         $20::bool[])
        AS u(queue, id, body, headers, enqueued_at, expires_at, attempts, dead_letter_reason,
             dead_letter_source, destination, retry_at, sequence, origin, priority, visible_at, group_id, n,
             dedupe, journal)),
d AS (
    INSERT INTO tether_dedupe (queue, producer, sequence, message_id, at)
    SELECT queue, $18, dedupe, id, {NOW} FROM u WHERE $18::bytea IS NOT NULL AND dedupe > 0
    ON CONFLICT DO NOTHING RETURNING queue, sequence),
ins AS (
    INSERT INTO tether_messages (queue, id, body, headers, enqueued_at, expires_at, attempts, dead_letter_reason,
                                 dead_letter_source, destination, retry_at, sequence, origin, priority,
                                 visible_at, group_id, journal)
    SELECT queue, id, body, headers, enqueued_at, expires_at, attempts, dead_letter_reason, dead_letter_source,
           destination, retry_at, sequence, origin, priority, visible_at, group_id,
           journal AND starts_with(queue, $21)
    FROM u WHERE $18::bytea IS NULL OR dedupe = 0
                 OR EXISTS (SELECT 1 FROM d WHERE d.queue = u.queue AND d.sequence = u.dedupe)
    RETURNING queue, id, body, headers, enqueued_at, priority, journal),
-- journal=True to a local queue: its $journal copy, once queued (not for a resend)
jc AS (
    INSERT INTO tether_messages (queue, id, body, headers, enqueued_at, expires_at, destination, priority)
    SELECT '{JOURNAL_QUEUE}', i.id, i.body, i.headers, i.enqueued_at, $22, i.queue, i.priority
    FROM ins i JOIN u ON u.queue = i.queue AND u.id = i.id WHERE u.journal AND NOT starts_with(i.queue, $21)
    RETURNING 1),
nt AS (SELECT pg_notify('tether_q', q) FROM (SELECT DISTINCT queue AS q FROM ins) s)
SELECT u.n, old.message_id, (SELECT count(*) FROM nt) AS notified, (SELECT count(*) FROM jc) AS copied
FROM u LEFT JOIN tether_dedupe old ON $18::bytea IS NOT NULL AND old.queue = u.queue AND old.producer = $18
                                      AND old.sequence = u.dedupe
ORDER BY u.n
"""

# $journal holds at most $1 copies: the oldest unlocked ones go
_TRIM_JOURNAL = f"""
DELETE FROM tether_messages WHERE key IN (
    SELECT key FROM (SELECT key, lock_owner, row_number() OVER (ORDER BY key DESC) AS n FROM tether_messages
                     WHERE queue = '{JOURNAL_QUEUE}') j
    WHERE j.n > $1 AND j.lock_owner IS NULL)
"""

# the claim: up to $2 ready messages of queue $1, locked for $4 seconds by owner $3
_CLAIM = f"""
WITH c AS (
    SELECT key FROM tether_messages
    WHERE queue = $1 AND lock_owner IS NULL AND visible_at <= {NOW}
      AND (expires_at IS NULL OR expires_at > {NOW}) AND ($5 OR group_id IS NULL)
      AND NOT EXISTS (SELECT 1 FROM tether_messages p WHERE p.queue = $6)
    ORDER BY priority DESC, key LIMIT $2 FOR UPDATE SKIP LOCKED)
UPDATE tether_messages m SET lock_owner = $3, lock_tag = nextval('tether_lock_tags'),
    lock_until = {NOW} + $4, delivery_count = m.delivery_count + 1
FROM c WHERE m.key = c.key RETURNING {_M_COLUMNS}
"""

# the next message of a group held by owner $3 with holder tag $7 (send order)
_CLAIM_GROUP = f"""
WITH c AS (
    SELECT key FROM tether_messages
    WHERE queue = $1 AND group_id = $2 AND lock_owner IS NULL AND visible_at <= {NOW}
      AND (expires_at IS NULL OR expires_at > {NOW})
      AND EXISTS (SELECT 1 FROM tether_groups g WHERE g.queue = $1 AND g.group_id = $2 AND g.holder = $3
                  AND g.holder_tag = $5)
      AND NOT EXISTS (SELECT 1 FROM tether_messages r WHERE r.queue = $1 || ';retry' AND r.group_id = $2)
    ORDER BY key LIMIT 1 FOR UPDATE SKIP LOCKED)
UPDATE tether_messages m SET lock_owner = $3, lock_tag = nextval('tether_lock_tags'),
    lock_until = {NOW} + $4, delivery_count = m.delivery_count + 1
FROM c WHERE m.key = c.key RETURNING {_M_COLUMNS}
"""

# a free group of queue $1: ready messages, nobody holds it, none locked or in ;retry
_ACCEPT_GROUP = f"""
WITH g AS (
    SELECT m.group_id FROM tether_messages m
    WHERE m.queue = $1 AND m.group_id IS NOT NULL AND m.lock_owner IS NULL AND m.visible_at <= {NOW}
      AND NOT EXISTS (SELECT 1 FROM tether_groups h WHERE h.queue = $1 AND h.group_id = m.group_id)
      AND NOT EXISTS (SELECT 1 FROM tether_messages l WHERE l.group_id = m.group_id
                      AND (l.queue = $1 AND l.lock_owner IS NOT NULL OR l.queue = $1 || ';retry'))
    ORDER BY m.key LIMIT 1)
INSERT INTO tether_groups (queue, group_id, holder, holder_tag)
SELECT $1, group_id, $2, nextval('tether_lock_tags') FROM g
ON CONFLICT DO NOTHING RETURNING group_id, holder_tag
"""


def _database(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """The database's own failures (connection lost, server errors) as StorageError, a
    QueueError like every other refusal; tether's errors pass as they are."""
    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> T:
        try:
            return await method(*args, **kwargs)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError,
                OSError) as exc:
            raise StorageError(f"the database failed: {exc.__class__.__name__}: {exc}") from exc
    return call


class SharedGroup:
    """A group held through the database: its `group_id`, its queue and the holder's tag."""

    __slots__ = ("group_id", "queue", "tag")

    def __init__(self, group_id: str, queue: str, tag: int) -> None:
        self.group_id = group_id
        self.queue = queue
        self.tag = tag


class _QueueName:
    """What a message knows of the queue it was received from: its name."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class SharedQueueOperations:
    """QueueOperations over a shared store (see the module docstring)."""

    def __init__(self, core: QueueCore, store: PostgresStore, clock: Callable[[], float] = time.time,
                 dedupe_window: float = 86400.0) -> None:
        self.core = core
        self.store = store
        self.max_disk_bytes = None
        self.dedupe_window = dedupe_window
        self._pool = store.pool
        self._owner = store.owner
        self._loop = asyncio.get_running_loop()
        self._clock = clock
        #: per queue, its receivers' wake-ups in the order they began waiting (a dict, not a
        #: set: a NOTIFY wakes them in that order, the same in every run)
        self._waiters: dict[str, dict[asyncio.Future, None]] = {}
        self._asking: dict[str, list[asyncio.Future]] = {}     # receives joining the next claim
        self._claiming: set[str] = set()                        # queues with a claim on its way
        self._names: dict[str, _QueueName] = {}
        self._tasks: set[asyncio.Task] = set()
        self._info_cache: dict[str, QueueInfo] = {}     # info() per queue, for info_now()
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = float("inf")
        self._sweeping: asyncio.Task | None = None
        self._sweep_again = False
        self._refreshing: asyncio.Task | None = None
        self._local_changes = 0       # definitions this manager made or deleted
        #: what this process's operations did (the metrics' _total counters; other managers
        #: of the database count their own): per main queue messages sent, and received
        #: and completed; per (queue, reason) messages dead-lettered
        self.sent: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.dead_lettered: Counter[tuple[str, str]] = Counter()
        self._dying: dict[Any, list[tuple[str, str]]] = {}     # per connection, until its commit
        #: times this manager's lease ran out while it ran (its locks were returned)
        self.lease_losses = 0
        #: called with the name of every queue the mirror gains (the manager starts forwarders)
        self.on_defined: Callable[[str], None] | None = None
        self._closed = False
        # single sends and completes share statements (and commits) under load
        self._sends = StatementBatches(self.send)
        self._completes = StatementBatches(self.complete_many)
        #: claims, renewals and uncounted releases: not flushed to disk at commit (a
        #: database crash returns such a lock to the queue, as the journal does not
        #: journal receives); everything else is durable at commit
        self._lock_pool = store.lock_pool

    @classmethod
    async def start(cls, core: QueueCore, store: PostgresStore, dedupe_window: float) -> SharedQueueOperations:
        """Operations on `store`: definitions loaded, notifications listened to, a first sweep."""
        operations = cls(core, store, store.clock or time.time, dedupe_window=dedupe_window)
        await store.listen(operations._notified, operations._definitions_changed, operations._lease_lost)
        await operations.refresh_definitions()
        await operations._sweep()
        return operations

    # ---- plumbing ----

    def now(self) -> float:
        """The wall clock messages are stamped with."""
        return self._clock()

    def settle(self, force: bool = False) -> None:
        """Nothing to cut or re-arm from the core: the database holds the state."""

    async def wait_for(self, record: int | None) -> None:
        """No records: the core of a shared store journals nothing."""

    def _spawn(self, coroutine: Any) -> asyncio.Task:
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("a queue operation in the background failed: %s", task.exception())

    def _name(self, name: str) -> _QueueName:
        ref = self._names.get(name)
        if ref is None:
            ref = self._names[name] = _QueueName(name)
        return ref

    def _entry(self, row: Any) -> Entry:
        (key, queue, id, body, headers, enqueued_at, expires_at, delivery_count, attempts, reason, source,
         destination, retry_at, sequence, origin, priority, visible_at, group_id, journal, tag, until) = row
        entry = Entry(key, id, body, headers, enqueued_at, expires_at, delivery_count, attempts, reason, source,
                      destination, retry_at, 0, sequence, origin, priority, visible_at or None, group_id, journal)
        entry.queue = self._name(queue)
        if tag is not None:
            entry.state = LOCKED
            entry.tag = tag
            entry.lock_deadline = until
        return entry

    def _check_open(self) -> None:
        if self._closed:
            raise QueueError("the queue manager is closed")

    # ---- notifications ----

    def _notified(self, name: str) -> None:
        waiters = self._waiters.get(name)
        if waiters:
            for future in waiters:
                if not future.done():
                    future.set_result(None)
        main, sub = split_subqueue(name) if ";" in name else (name, None)
        if sub == "poison":     # a faulting queue's receivers learn of it
            self._notified(main)

    def _definitions_changed(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = self._spawn(self.refresh_definitions())

    def _lease_lost(self) -> None:
        self.lease_losses += 1
        log.warning("peek-locks held through this queue manager were returned to their queues")

    @_database
    async def refresh_definitions(self) -> None:
        """Mirror `tether_queues` into the core's catalogue (queues defined or deleted by any
        manager)."""
        while True:
            changes = self._local_changes
            rows = await self._pool.fetch("SELECT name, settings FROM tether_queues")
            if changes == self._local_changes:
                break       # (else this manager defined or deleted one meanwhile: read again)
        found = {name: QueueSettings.from_dict(json.loads(settings)) for name, settings in rows}
        for name, settings in found.items():
            if not self.core.has_queue(name):
                self.core.define(name, settings)
                if self.on_defined is not None:
                    self.on_defined(name)
        for name in self.core.queue_names():
            if name not in found and (not name.startswith("$")
                                      or name.startswith((TRANSMISSION_PREFIX, RETURN_PREFIX))):
                try:
                    self.core.delete(name)
                except QueueNotFound:
                    pass
                self._notified(name)

    # ---- the sweeper ----

    def _arm(self, deadline: float) -> None:
        if deadline >= self._armed_at or self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = deadline
        delay = max(0.0, deadline - self._clock())
        self._timer = self._loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._armed_at = float("inf")
        if self._closed:
            return
        if self._sweeping is not None and not self._sweeping.done():
            self._sweep_again = True
            return
        self._sweeping = self._spawn(self._sweep())

    async def _sweep(self) -> None:
        """Everything due by now (see the module docstring), then the timer at the next deadline."""
        try:
            while True:
                self._sweep_again = False
                await self._sweep_once()
                if not self._sweep_again:
                    break
        except Exception as exc:
            if not self._closed:
                log.warning("queue sweep failed (retried): %s", exc)
                self._arm(self._clock() + 1.0)
            return
        if self._closed:
            return
        next_at = await self._pool.fetchval(f"""
            SELECT min(t) FROM (
                SELECT min(lock_until) AS t FROM tether_messages WHERE lock_owner IS NOT NULL
                UNION ALL SELECT min(expires_at) FROM tether_messages
                    WHERE lock_owner IS NULL AND expires_at IS NOT NULL
                UNION ALL SELECT min(retry_at) FROM tether_messages WHERE retry_at IS NOT NULL
                UNION ALL SELECT min(visible_at) FROM tether_messages WHERE visible_at > {NOW}
                UNION ALL SELECT min(expires_at) FROM tether_owners WHERE owner <> $1) s""", self._owner)
        # the clocks: deadlines are the database's; the timer runs on ours (a small skew
        # only moves the sweep a little), and never later than the lease check
        db_now = await self._pool.fetchval(f"SELECT {NOW}")
        wait = self.store.client_grace / 3
        if next_at is not None:
            wait = min(wait, max(0.0, next_at - db_now) + 0.005)
        self._arm(self._clock() + wait)

    async def _sweep_once(self) -> None:
        notify: set[str] = set()
        async with self._pool.acquire() as conn:
            # managers whose lease ran out: their locks return uncounted, their groups go
            async with conn.transaction():
                dead = [r[0] for r in await conn.fetch(
                    f"DELETE FROM tether_owners WHERE expires_at < {NOW} AND owner <> $1 RETURNING owner",
                    self._owner)]
                if dead:
                    rows = await conn.fetch(
                        f"UPDATE tether_messages SET {_UNLOCK}, delivery_count = greatest(delivery_count - 1, 0) "
                        f"WHERE lock_owner = ANY($1::bytea[]) RETURNING queue", dead)
                    notify.update(r[0] for r in rows)
                    rows = await conn.fetch("DELETE FROM tether_groups WHERE holder = ANY($1::bytea[]) "
                                            "RETURNING queue", dead)
                    notify.update(r[0] for r in rows)
                    log.info("returned %d peek-locks of %d queue manager(s) whose lease ran out", len(rows), len(dead))
            # expired peek-locks: failed deliveries
            while True:
                async with self._counted(conn):
                    rows = await conn.fetch(
                        f"SELECT {_COLUMNS} FROM tether_messages WHERE lock_owner IS NOT NULL "
                        f"AND lock_until <= {NOW} ORDER BY lock_until LIMIT {SWEEP_BATCH} FOR UPDATE SKIP LOCKED")
                    for row in rows:
                        notify.update(await self._fail(conn, row))
                if len(rows) < SWEEP_BATCH:
                    break
            # expired time-to-lives: dead letters (not in ;poison: dead letters wait)
            while True:
                async with self._counted(conn):
                    rows = await conn.fetch(
                        f"SELECT {_COLUMNS} FROM tether_messages WHERE lock_owner IS NULL AND expires_at <= {NOW} "
                        f"AND queue NOT LIKE '%;poison' ORDER BY expires_at LIMIT {SWEEP_BATCH} "
                        f"FOR UPDATE SKIP LOCKED")
                    for row in rows:
                        notify.update(await self._dead_letter(conn, row, EXPIRED))
                if len(rows) < SWEEP_BATCH:
                    break
            # ;retry messages whose delay ended go back to their main queue
            rows = await conn.fetch(
                f"""WITH c AS (SELECT key FROM tether_messages WHERE retry_at <= {NOW} AND lock_owner IS NULL
                               AND queue LIKE '%;retry' FOR UPDATE SKIP LOCKED)
                    UPDATE tether_messages m SET queue = left(m.queue, -6), retry_at = NULL FROM c
                    WHERE m.key = c.key RETURNING m.queue""")
            notify.update(r[0] for r in rows)
            # scheduled messages that became visible: wake their receivers
            rows = await conn.fetch(
                f"SELECT DISTINCT queue FROM tether_messages WHERE visible_at > 0 AND visible_at <= {NOW}")
            if rows:
                await conn.execute(f"UPDATE tether_messages SET visible_at = 0 WHERE visible_at > 0 "
                                   f"AND visible_at <= {NOW}")
                notify.update(r[0] for r in rows)
            await conn.execute(f"DELETE FROM tether_dedupe WHERE at < {NOW} - $1", self.dedupe_window)
            if notify:
                await conn.execute("SELECT pg_notify('tether_q', q) FROM unnest($1::text[]) q", sorted(notify))
            self.store.size_bytes = await conn.fetchval(
                "SELECT pg_total_relation_size('tether_messages') + pg_total_relation_size('tether_dedupe')")

    # ---- the retry rule, dead letters ----

    @contextlib.asynccontextmanager
    async def _counted(self, conn: Any) -> AsyncIterator[None]:
        """`conn.transaction()`, counting the dead letters it made once it committed."""
        self._dying[conn] = dying = []
        try:
            async with conn.transaction():
                yield
        finally:
            del self._dying[conn]
        self.dead_lettered.update(dying)

    def traffic(self) -> dict[str, tuple[int, int]]:
        """Per main queue (sent, received and completed) by this process's operations (as
        QueueCore.traffic counts a journal-backed manager's)."""
        return {name: (self.sent[name], self.received[name]) for name in self.core.traffic()}

    def _count_received(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            name = entry.queue.name
            self.received[split_subqueue(name)[0] if ";" in name else name] += 1

    def _count_sent(self, entries: list[Entry], rows: list[Any]) -> None:
        """`rows` (the insert's) say which entries were queued (a resend was not) and how
        many $journal copies were made."""
        for entry, row in zip(entries, rows):
            if row[1] is None:
                self.sent[entry.queue.name] += 1
        if rows and rows[0][3]:
            self.sent[JOURNAL_QUEUE] += rows[0][3]

    async def _fail(self, conn: Any, row: Any) -> set[str]:
        """A delivery of the locked message `row` failed: retry it now, later, or handle it
        as poison, per its queue's settings (in `conn`'s transaction). The queues to notify."""
        key, name = row[0], row[1]
        main, sub = split_subqueue(name) if ";" in name else (name, None)
        if not self.core.has_queue(main):
            await conn.execute("DELETE FROM tether_messages WHERE key = $1", key)
            return set()
        settings = self.core.settings(main)
        expires_at, attempts = row[6], row[8]
        if sub is not None:
            # read from ;retry or ;poison by hand: it simply goes back there
            await conn.execute(f"UPDATE tether_messages SET {_UNLOCK} WHERE key = $1", key)
            return {name}
        if expires_at is not None and expires_at <= self._clock():
            return await self._dead_letter(conn, row, EXPIRED)
        attempts += 1
        step = after_failure(settings, attempts)
        if step == RETRY_NOW:
            await conn.execute(f"UPDATE tether_messages SET {_UNLOCK}, attempts = $2 WHERE key = $1", key, attempts)
            return {name}
        if step == RETRY_LATER:
            await conn.execute(f"UPDATE tether_messages SET {_UNLOCK}, attempts = $2, queue = $3, "
                               f"retry_at = {NOW} + $4 WHERE key = $1", key, attempts, main + ";retry",
                               settings.retry_cycle_delay)
            self._arm(self._clock() + settings.retry_cycle_delay)
            return set()
        assert step == POISON
        mode = settings.receive_error_handling
        log.warning("poison message %s in queue %r after %d deliveries: %s", row[2], main, attempts, mode)
        notify = await self._poison(conn, row, main, attempts, mode)
        group_id = row[17]
        if group_id is not None:
            # a group is poisoned as a whole (as in the journal's core): its waiting
            # messages go the same way, in send order; one still locked follows when it fails
            others = await conn.fetch(f"SELECT {_COLUMNS} FROM tether_messages WHERE queue = $1 AND group_id = $2 "
                                      f"AND lock_owner IS NULL ORDER BY key FOR UPDATE", main, group_id)
            if others:
                log.warning("group %r of queue %r goes with it: %d more messages: %s", group_id, main,
                            len(others), mode)
            for other in others:
                notify |= await self._poison(conn, other, main, other[8], mode)
        return notify

    async def _poison(self, conn: Any, row: Any, main: str, attempts: int, mode: str) -> set[str]:
        """The message `row` of queue `main` failed for good: `receive_error_handling` `mode`."""
        key = row[0]
        if mode == "drop":
            await conn.execute("DELETE FROM tether_messages WHERE key = $1", key)
            return set()
        if mode == "reject":
            return await self._dead_letter(conn, row, REJECTED)
        await conn.execute(f"UPDATE tether_messages SET {_UNLOCK}, attempts = $2, queue = $3, retry_at = NULL "
                           f"WHERE key = $1", key, attempts, main + ";poison")
        return {main + ";poison", main}

    async def _dead_letter(self, conn: Any, row: Any, reason: str) -> set[str]:
        """Move the message `row` to its queue's dead-letter queue with `reason`."""
        key, name, destination = row[0], row[1], row[11]
        main = split_subqueue(name)[0] if ";" in name else name
        target = dead_letter_queue_name(self.core.settings(main)) if self.core.has_queue(main) \
            else SYSTEM_DEAD_LETTER_QUEUE
        if row[9] is None:       # (a dead letter moved on is not counted again)
            self._dying[conn].append((main, reason))
        if target is None:
            log.info("message %s of queue %r dropped (%s, dead_letter_queue none)", row[2], main, reason)
            await conn.execute("DELETE FROM tether_messages WHERE key = $1", key)
            return set()
        if target == main or not self.core.has_queue(target):
            target = SYSTEM_DEAD_LETTER_QUEUE
        await conn.execute(
            f"UPDATE tether_messages SET {_UNLOCK}, queue = $2, expires_at = NULL, dead_letter_reason = $3, "
            f"dead_letter_source = $4, retry_at = NULL, visible_at = 0 WHERE key = $1",
            key, target, reason, destination or main)
        return {target}

    # ---- definitions ----

    @_database
    async def define(self, name: str, settings: QueueSettings) -> None:
        """Define a queue for every manager of the database (QueueExists for other settings)."""
        self._check_open()
        if self.core.has_queue(name) and self.core.settings(name) == settings:
            return          # (the mirror is the database's: defined there with these settings)
        encoded = json.dumps(settings.as_dict())
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute("INSERT INTO tether_queues VALUES ($1, $2::jsonb) ON CONFLICT DO NOTHING",
                                   name, encoded)
                stored = await conn.fetchval("SELECT settings FROM tether_queues WHERE name = $1", name)
                if QueueSettings.from_dict(json.loads(stored)) != settings:
                    raise QueueExists(f"queue {name!r} exists with different settings")
                if shared_forwarding.is_transmission(name):
                    await shared_forwarding.define(conn, name)
                await conn.execute("SELECT pg_notify('tether_defs', $1)", name)
        self._local_changes += 1
        if not self.core.has_queue(name):
            self.core.define(name, settings)

    @_database
    async def delete(self, name: str) -> None:
        """Delete a queue, its sub-queues and every message in them, for every manager."""
        self._check_open()
        if name not in self.core.queue_names() or name == SYSTEM_DEAD_LETTER_QUEUE:
            self.core.delete(name)      # raises the core's error (QueueNotFound)
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute("DELETE FROM tether_queues WHERE name = $1", name)
                await conn.execute("DELETE FROM tether_messages WHERE queue = ANY($1::text[])",
                                   [name, name + ";retry", name + ";poison"])
                await conn.execute("DELETE FROM tether_groups WHERE queue = $1", name)
                await shared_forwarding.delete(conn, name)
                await conn.execute("SELECT pg_notify('tether_defs', $1)", name)
        self._local_changes += 1
        if self.core.has_queue(name):   # (a refresh on our own NOTIFY may have mirrored it already)
            self.core.delete(name)
        self._notified(name)

    def info_now(self, name: str) -> QueueInfo:
        """The counts the last info() of `name` read (a metrics scrape cannot wait for the
        database), and a fresh read started in the background for the next scrape; zeros
        before the first. QueueNotFound."""
        settings = self.core.settings(name)       # QueueNotFound
        if not self._closed:
            self._spawn(self.info(name))
        cached = self._info_cache.get(name)
        return cached if cached is not None else QueueInfo(name, settings.durable, 0, 0, 0, 0, 0, 0, False)

    async def info(self, name: str) -> QueueInfo:
        """Counts of a queue or sub-queue, from the database."""
        info = await self._count(name)
        self._info_cache[name] = info
        return info

    @_database
    async def _count(self, name: str) -> QueueInfo:
        self._check_open()
        settings = self.core.settings(name)       # QueueNotFound
        sub = ";" in name
        row = await self._pool.fetchrow(f"""
            SELECT count(*) FILTER (WHERE queue = $1 AND lock_owner IS NULL AND visible_at <= {NOW}),
                   count(*) FILTER (WHERE queue = $1 AND lock_owner IS NOT NULL),
                   count(*) FILTER (WHERE queue = $2),
                   count(*) FILTER (WHERE queue = $3),
                   coalesce(sum(length(body)) FILTER (WHERE queue = ANY(ARRAY[$1, $2, $3])), 0),
                   count(*) FILTER (WHERE queue = $1 AND visible_at > {NOW}),
                   count(DISTINCT group_id) FILTER (WHERE queue = $1),
                   (SELECT count(*) FROM tether_messages WHERE dead_letter_source = $1)
            FROM tether_messages WHERE queue = ANY(ARRAY[$1, $2, $3])""",
                                       name, "" if sub else name + ";retry", "" if sub else name + ";poison")
        depth, in_flight, retrying, poison, size, scheduled, groups, dead = row
        waiting = len(self._waiters.get(name, ()))
        if sub:
            return QueueInfo(name, settings.durable, depth, in_flight, 0, 0, 0, size, False, waiting, 0, 0)
        faulted = settings.receive_error_handling == "fault" and poison > 0
        return QueueInfo(name, settings.durable, depth, in_flight, retrying, dead, poison, size, faulted,
                         waiting, scheduled, groups)

    @_database
    async def purge(self, name: str) -> int:
        """Remove every message waiting (unlocked) in a queue or sub-queue; how many."""
        self._check_open()
        self.core.settings(name)
        done = await self._pool.execute("DELETE FROM tether_messages WHERE queue = $1 AND lock_owner IS NULL", name)
        return int(done.split()[-1])

    @_database
    async def peek(self, name: str, count: int) -> list[Entry]:
        """The next `count` messages a receiver would get, unlocked and uncounted."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"peek count must be an integer >= 1, not {count!r}")
        self._check_open()
        self.core.settings(name)
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM tether_messages WHERE queue = $1 AND lock_owner IS NULL "
            f"AND visible_at <= {NOW} AND (expires_at IS NULL OR expires_at > {NOW}) "
            f"ORDER BY group_id IS NOT NULL, priority DESC, key LIMIT $2", name, count)
        return [self._entry(row) for row in rows]

    # ---- sending ----

    def prepare(self, name: str, body: Any, **fields: Any) -> Entry:
        """A checked entry for queue `name` (see QueueCore.prepare)."""
        return self.core.prepare(name, body, self._clock(), **fields)

    async def send_one(self, entry: Entry) -> str:
        """Queue one prepared entry; its id once committed (sends asked together share a
        statement; one to a queue with max_length goes alone, so a full queue refuses only it)."""
        if entry.queue.settings.max_length is not None:
            result = (await self.send([entry]))[0]
            if isinstance(result, BaseException):
                raise result
            return result
        return await self._sends(entry)

    async def send_body(self, name: str, body: Any) -> str:
        """A plain send to application queue `name`."""
        return await self.send_one(self.core.prepare_plain(name, body, self._clock()))

    @_database
    async def send(self, entries: list[Entry], *, producer: Producer | None = None, epoch: int = 0,
                   sequences: list[int] | None = None, keep_ids: bool = False) -> list[str | BaseException]:
        """Queue prepared entries in one statement: per entry its id once committed (the id
        it was first queued under, for a producer's resend), or the exception refusing it."""
        self._check_open()
        if not entries:
            return []
        if producer is not None and producer.epoch != epoch:
            error = QueueError(f"producer fenced: a newer instance (epoch {producer.epoch}) took over")
            return [error] * len(entries)
        limited = {e.queue.name for e in entries if e.queue.settings.max_length is not None}
        async with self._pool.acquire() as conn:
            if limited or self._numbered(entries):
                async with conn.transaction():
                    if limited:
                        await self._check_lengths(conn, entries, limited)
                    rows = await self._insert(conn, entries, producer, sequences)
            else:
                rows = await self._insert(conn, entries, producer, sequences)
        self._count_sent(entries, rows)
        return [row[1] if row[1] is not None else entry.id for entry, row in zip(entries, rows)]

    async def _check_lengths(self, conn: Any, entries: list[Entry], names: set[str]) -> None:
        """QueueFull when `entries` would take a queue over its max_length (the queues' rows
        locked in this transaction, so managers check one after another)."""
        await conn.execute("SELECT 1 FROM tether_queues WHERE name = ANY($1::text[]) ORDER BY name FOR UPDATE",
                           sorted(names))
        held = dict(await conn.fetch("SELECT queue, count(*) FROM tether_messages WHERE queue = ANY($1::text[]) "
                                     "GROUP BY queue", sorted(names)))
        for name in sorted(names):
            limit = self.core.settings(name).max_length
            adding = sum(1 for e in entries if e.queue.name == name)
            if held.get(name, 0) + adding > limit:
                raise QueueFull(f"queue {name!r} is full (max_length={limit})")

    @staticmethod
    def _numbered(entries: list[Entry]) -> bool:
        """True when some entry goes to a transmission queue (numbered in the transaction)."""
        return any(shared_forwarding.is_transmission(e.queue.name) for e in entries)

    async def _insert(self, conn: Any, entries: list[Entry], producer: Producer | None,
                      sequences: list[int] | None) -> list[Any]:
        """Insert `entries` (in `conn`'s transaction when some go to a transmission queue:
        they are numbered under its row's lock). A message's `sequence` is the producer's
        (its de-duplication key), or in a transmission queue the forwarder's numbering."""
        if self._numbered(entries):
            await shared_forwarding.number(conn, entries)
        columns: list[list] = [[] for _ in range(19)]
        for n, e in enumerate(entries):
            dedupe = (sequences[n] if sequences is not None else e.sequence) or 0
            sequence = e.sequence if shared_forwarding.is_transmission(e.queue.name) else dedupe
            for column, value in zip(columns, (
                    e.queue.name, e.id, e.body, e.headers, e.enqueued_at, e.expires_at, e.attempts,
                    e.dead_letter_reason, e.dead_letter_source, e.destination, e.retry_at, sequence,
                    e.origin, e.priority, e.deliver_at or 0.0, e.group_id, n, dedupe, e.journal)):
                column.append(value)
        journal = self.core.journal_settings
        rows = await conn.fetch(_INSERT, *columns[:17], None if producer is None else producer.name,
                                *columns[17:], TRANSMISSION_PREFIX, journal.expires_at(self._clock()))
        if rows and rows[0][3] and journal.journal_max_length is not None:
            await conn.execute(_TRIM_JOURNAL, journal.journal_max_length)
        soonest = min((e.deliver_at for e in entries if e.deliver_at), default=None)
        expiring = min((e.expires_at for e in entries if e.expires_at), default=None)
        for deadline in (soonest, expiring):
            if deadline is not None:
                self._arm(deadline + 0.005)
        return rows

    # ---- producers ----

    @_database
    async def open_producer(self, name: bytes, epoch: int) -> tuple[Producer, int]:
        """A producer's hello: its de-duplication keys are in the database, under its name."""
        producer, _ = self.core.open_producer(name, epoch, self._clock())
        return producer, producer.epoch

    def raise_floor(self, producer: Producer, floor: int) -> None:
        """The producer settled every sequence below `floor`: those keys may go."""
        self.core.raise_floor(producer, floor)
        self._spawn(self._pool.execute("DELETE FROM tether_dedupe WHERE producer = $1 AND sequence < $2",
                                       producer.name, floor))

    # ---- receiving ----

    def take_now(self, name: str) -> Entry | None:
        """Never ready without a round trip: the caller awaits take()."""
        self._check_open()
        return None

    def _claim_args(self, name: str) -> tuple[float, bool, str | None]:
        settings = self.core.settings(name)     # QueueNotFound
        app = ";" not in name and not name.startswith("$")
        poison = name + ";poison" if app and settings.receive_error_handling == "fault" else None
        return settings.validity_duration, not app, poison

    @_database
    async def take_many(self, name: str, count: int, max_bytes: int | None = None) -> list[Entry]:
        """Up to `count` ready messages of `name`, locked, in one statement (no wait); past
        `max_bytes` of bodies the rest go back at once, uncounted (as QueueOperations)."""
        self._check_open()
        validity, grouped_too, poison = self._claim_args(name)
        rows = await self._lock_pool.fetch(_CLAIM, name, count, self._owner, validity, grouped_too, poison)
        if not rows and poison is not None:
            first = await self._pool.fetchval("SELECT id FROM tether_messages WHERE queue = $1 ORDER BY key LIMIT 1",
                                              poison)
            if first is not None:
                settings = self.core.settings(name)
                raise PoisonMessage(f"queue {name!r} stopped delivering: message {first} failed "
                                    f"{settings.attempts_per_message} deliveries; receive it from "
                                    f"{poison!r} to resume", message_id=first, queue=name)
        if rows:
            self._arm(self._clock() + validity + 0.005)
        entries = [self._entry(row) for row in rows]
        entries.sort(key=lambda e: (-e.priority, e.key))
        if max_bytes is not None:
            size = 0
            for keep, entry in enumerate(entries):
                if size >= max_bytes:
                    for extra in entries[keep:]:
                        self.release(extra, extra.tag)
                    return entries[:keep]
                size += len(entry.body)
        return entries

    @_database
    async def take(self, name: str, timeout: float | None) -> Entry | None:
        """The next message of queue `name`, locked; waits up to `timeout` seconds (None:
        until one comes; <= 0: no wait) for a NOTIFY. None on timeout."""
        entries = await self._wait(name, timeout, lambda: self._claim_one(name))
        return entries

    async def _claim_one(self, name: str) -> Entry | None:
        """One message of `name`. The receives of one queue that ask while a claim is on its
        way join the next claim, one statement for all of them, and get its messages in
        queue order, in the order they asked (so a batch of receives keeps FIFO)."""
        future = self._loop.create_future()
        asking = self._asking.setdefault(name, [])
        asking.append(future)
        if name not in self._claiming:
            self._claiming.add(name)
            self._spawn(self._claims(name))
        return await future

    async def _claims(self, name: str) -> None:
        asking = self._asking[name]
        try:
            while asking:
                batch = asking[:]
                asking.clear()
                try:
                    entries = await self.take_many(name, len(batch))
                except BaseException as exc:
                    for future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for n, future in enumerate(batch):
                    entry = entries[n] if n < len(entries) else None
                    if not future.done():
                        future.set_result(entry)
                    elif entry is not None:     # its receive was cancelled meanwhile
                        self.release(entry, entry.tag)
                for entry in entries[len(batch):]:
                    self.release(entry, entry.tag)
        finally:
            self._claiming.discard(name)

    async def _wait(self, name: str, timeout: float | None, attempt: Callable[[], Any]) -> Any:
        """`attempt()` until it gives something, waiting for a NOTIFY of `name` between
        tries, up to `timeout` seconds. None on timeout. A result that arrives after the
        caller was cancelled is given back."""
        self._check_open()
        if timeout is not None:
            timeout = float(timeout)
            if timeout != timeout:
                raise ValueError("receive timeout must be a number of seconds or None, not nan")
        end = None if timeout is None else self._loop.time() + max(0.0, timeout)
        waiters = self._waiters.setdefault(name, {})
        while True:
            wake = self._loop.create_future()
            waiters[wake] = None   # before the attempt: a NOTIFY during it is not missed
            try:
                attempt_task = self._loop.create_task(attempt())
                try:
                    got = await asyncio.shield(attempt_task)
                except asyncio.CancelledError:
                    attempt_task.add_done_callback(self._give_back_late)
                    raise
                if got is not None:
                    return got
                if not self.core.has_queue(split_subqueue(name)[0] if ";" in name else name):
                    raise QueueNotFound(f"queue {name!r} was deleted")
                remaining = None if end is None else end - self._loop.time()
                if remaining is not None and remaining <= 0:
                    return None
                try:
                    await asyncio.wait_for(wake, remaining)
                except TimeoutError:
                    return None
                self._check_open()
            finally:
                waiters.pop(wake, None)

    def _give_back_late(self, task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        got = task.result()
        if isinstance(got, Entry):
            self.release(got, got.tag)
        elif isinstance(got, tuple) and got and isinstance(got[0], SharedGroup):
            self.release_group_now(*got)

    def release(self, entry: Entry, tag: int) -> bool:
        """Give back a message nobody saw (uncounted), in the background."""
        self._spawn(self._release(entry.key, tag))
        return True

    async def _release(self, key: int, tag: int) -> None:
        await self._lock_pool.execute(
            f"WITH r AS (UPDATE tether_messages SET {_UNLOCK}, delivery_count = greatest(delivery_count - 1, 0) "
            f"WHERE key = $1 AND lock_tag = $2 AND lock_owner = $3 RETURNING queue) "
            f"SELECT pg_notify('tether_q', queue) FROM r", key, tag, self._owner)

    def complete_now(self, entry: Entry, tag: int) -> None:
        """Not available without a round trip: use complete()."""
        raise QueueError("a shared store completes messages with await complete()")

    @_database
    async def complete(self, entry: Entry, tag: int) -> None:
        """Remove a locked message. LockLost when the lock is not (or no longer) ours."""
        self._check_open()
        await self._completes((entry, tag))     # (completes asked together share a statement)

    @_database
    async def complete_many(self, receipts: list[tuple[Entry, int]]) -> list[BaseException | None]:
        """complete() of many in one statement; per pair None or LockLost."""
        self._check_open()
        if not receipts:
            return []
        rows = await self._pool.fetch(
            f"DELETE FROM tether_messages m USING unnest($1::int8[], $2::int8[]) AS r(key, tag) "
            f"WHERE m.key = r.key AND m.lock_tag = r.tag AND m.lock_owner = $3 AND m.lock_until > {NOW} "
            f"RETURNING m.key", [e.key for e, _ in receipts], [t for _, t in receipts], self._owner)
        gone = {r[0] for r in rows}
        self._count_received(e for e, _ in receipts if e.key in gone)
        return [None if e.key in gone else LockLost(f"message {e.id}: the peek-lock was lost (expired, or "
                                                    f"settled already)") for e, _ in receipts]

    @_database
    async def forwarded_many(self, receipts: list[tuple[Entry, int]]) -> list[BaseException | None]:
        """Settle forwarded messages their target accepted, in one statement: completed, or
        (sent with journal=True) moved to $journal; per pair None or LockLost."""
        self._check_open()
        if not receipts:
            return []
        journal = self.core.journal_settings
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                rows = await conn.fetch(
                    f"""WITH r AS (SELECT m.key, m.journal FROM tether_messages m
                                   JOIN unnest($1::int8[], $2::int8[]) AS r(key, tag) ON m.key = r.key
                                   AND m.lock_tag = r.tag
                                   WHERE m.lock_owner = $3 AND m.lock_until > {NOW} FOR UPDATE OF m),
                        gone AS (DELETE FROM tether_messages m USING r WHERE m.key = r.key AND NOT r.journal
                                 RETURNING m.key),
                        kept AS (UPDATE tether_messages m SET {_UNLOCK}, queue = '{JOURNAL_QUEUE}', journal = false,
                                        expires_at = $4, retry_at = NULL, visible_at = 0, group_id = NULL
                                 FROM r WHERE m.key = r.key AND r.journal RETURNING m.key)
                        SELECT key, false FROM gone UNION ALL SELECT key, true FROM kept""",
                    [e.key for e, _ in receipts], [t for _, t in receipts], self._owner,
                    journal.expires_at(self._clock()))
                if any(row[1] for row in rows) and journal.journal_max_length is not None:
                    await conn.execute(_TRIM_JOURNAL, journal.journal_max_length)
        done = {row[0] for row in rows}
        self._count_received(e for e, _ in receipts if e.key in done)
        return [None if e.key in done else LockLost(f"message {e.id}: the peek-lock was lost (expired, or "
                                                    f"settled already)") for e, _ in receipts]

    # ---- forwarding out of the database (shared_forwarding.py) ----

    @_database
    async def lowest_sequence(self, name: str) -> int:
        """Transmission queue `name`'s lowest sequence still to be forwarded (every one below
        is settled), read from the database."""
        async with self._pool.acquire() as conn:
            return await shared_forwarding.lowest_sequence(conn, name)

    @_database
    async def raise_numbering(self, name: str, next_sequence: int) -> int | None:
        """Number `name`'s messages from `next_sequence` on; the numbering before, or None."""
        self._check_open()
        async with self._pool.acquire() as conn:
            return await shared_forwarding.raise_numbering(conn, name, next_sequence)

    @_database
    async def hold_forwarding(self, name: str) -> bytes | None:
        """Become the one forwarder of transmission queue `name` if nobody alive is: the
        producer id to show its target, or None."""
        self._check_open()
        async with self._pool.acquire() as conn:
            return await shared_forwarding.hold(conn, name, self._owner)

    @_database
    async def holds_forwarding(self, name: str) -> bool:
        """True while this manager is the forwarder of `name` (and its lease alive)."""
        async with self._pool.acquire() as conn:
            return await shared_forwarding.holds(conn, name, self._owner)

    async def _locked_row(self, conn: Any, entry: Entry, tag: int, valid_only: bool = True) -> Any:
        valid = f" AND lock_until > {NOW}" if valid_only else ""
        row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM tether_messages WHERE key = $1 AND lock_tag = $2 "
                                  f"AND lock_owner = $3{valid} FOR UPDATE", entry.key, tag, self._owner)
        if row is None:
            raise LockLost(f"message {entry.id}: the peek-lock was lost (expired, or settled already)")
        return row

    async def _notify(self, conn: Any, names: Iterable[str]) -> None:
        names = sorted(set(names))
        if names:
            await conn.execute("SELECT pg_notify('tether_q', q) FROM unnest($1::text[]) q", names)

    @_database
    async def abandon(self, entry: Entry, tag: int) -> None:
        """A failed delivery: retry, delay or poison per the queue. LockLost."""
        self._check_open()
        async with self._pool.acquire() as conn:
            async with self._counted(conn):
                row = await self._locked_row(conn, entry, tag)
                await self._notify(conn, await self._fail(conn, row))

    @_database
    async def dead_letter(self, entry: Entry, tag: int, reason: str) -> None:
        """Move a locked message to its dead-letter queue with `reason`. LockLost."""
        self._check_open()
        async with self._pool.acquire() as conn:
            async with self._counted(conn):
                row = await self._locked_row(conn, entry, tag)
                await self._notify(conn, await self._dead_letter(conn, row, reason))

    @_database
    async def renew(self, entry: Entry, tag: int) -> float:
        """Extend a peek-lock by the queue's validity_duration from now; the new deadline."""
        self._check_open()
        validity = self.core.settings(entry.queue.name).validity_duration
        until = await self._lock_pool.fetchval(
            f"UPDATE tether_messages SET lock_until = {NOW} + $4 WHERE key = $1 AND lock_tag = $2 "
            f"AND lock_owner = $3 AND lock_until > {NOW} RETURNING lock_until", entry.key, tag, self._owner, validity)
        if until is None:
            raise LockLost(f"message {entry.id}: the peek-lock was lost (expired, or settled already)")
        entry.lock_deadline = until
        self._arm(self._clock() + validity + 0.005)
        return until

    # ---- groups ----

    @_database
    async def accept_group(self, name: str, timeout: float | None) -> tuple[SharedGroup, Any] | None:
        """Hold the next free group of queue `name` (waiting up to `timeout` seconds for one):
        (the group, None), or None on timeout."""
        self._check_open()
        self.core.settings(name)
        if ";" in name or name.startswith("$"):
            raise ValueError(f"groups are received from an application queue, not {name!r}")

        async def attempt() -> tuple[SharedGroup, Any] | None:
            row = await self._pool.fetchrow(_ACCEPT_GROUP, name, self._owner)
            return None if row is None else (SharedGroup(row[0], name, row[1]), None)

        from .operations import _timeout
        return await self._wait(name, _timeout(timeout), attempt)

    @_database
    async def take_group(self, group: SharedGroup, holder: Any, timeout: float | None) -> Entry | None:
        """The held group's next message, locked (send order); waits up to `timeout`. LockLost
        when the group is no longer held (this manager's lease ran out)."""
        self._check_open()
        validity = self.core.settings(group.queue).validity_duration

        async def attempt() -> Entry | None:
            row = await self._lock_pool.fetchrow(_CLAIM_GROUP, group.queue, group.group_id, self._owner, validity,
                                            group.tag)
            if row is not None:
                self._arm(self._clock() + validity + 0.005)
                return self._entry(row)
            held = await self._pool.fetchval("SELECT 1 FROM tether_groups WHERE queue = $1 AND group_id = $2 "
                                             "AND holder = $3 AND holder_tag = $4", group.queue, group.group_id,
                                             self._owner, group.tag)
            if held is None:
                raise LockLost(f"group {group.group_id!r} of queue {group.queue!r} is no longer held")
            return None

        from .operations import _timeout
        return await self._wait(group.queue, _timeout(timeout), attempt)

    def release_group_now(self, group: SharedGroup, holder: Any) -> None:
        """Let go of a group nobody used (in the background; its locked messages released)."""
        self._spawn(self.release_group(group, holder, abandon=False))

    @_database
    async def release_group(self, group: SharedGroup, holder: Any, *, abandon: bool) -> None:
        """Let go of a held group; its messages still locked are abandoned (or released)."""
        if self._closed:
            return
        async with self._pool.acquire() as conn:
            async with self._counted(conn):
                rows = await conn.fetch(f"SELECT {_COLUMNS} FROM tether_messages WHERE queue = $1 AND group_id = $2 "
                                        f"AND lock_owner = $3 ORDER BY key FOR UPDATE", group.queue, group.group_id,
                                        self._owner)
                notify = {group.queue}
                for row in rows:
                    if abandon:
                        notify.update(await self._fail(conn, row))
                    else:
                        await conn.execute(f"UPDATE tether_messages SET {_UNLOCK}, delivery_count = "
                                           f"greatest(delivery_count - 1, 0) WHERE key = $1", row[0])
                await conn.execute("DELETE FROM tether_groups WHERE queue = $1 AND group_id = $2 AND holder = $3 "
                                   "AND holder_tag = $4", group.queue, group.group_id, self._owner, group.tag)
                await self._notify(conn, notify)

    # ---- transactions ----

    @_database
    async def commit(self, receipts: list[tuple[Entry, int]], entries: list[Entry]) -> None:
        """Complete `receipts` and queue `entries` in one database transaction
        (TransactionError when a lock was lost, QueueFull): all or nothing."""
        self._check_open()
        limited = {e.queue.name for e in entries if e.queue.settings.max_length is not None}
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                if receipts:
                    rows = await conn.fetch(
                        f"DELETE FROM tether_messages m USING unnest($1::int8[], $2::int8[]) AS r(key, tag) "
                        f"WHERE m.key = r.key AND m.lock_tag = r.tag AND m.lock_owner = $3 "
                        f"AND m.lock_until > {NOW} RETURNING m.key",
                        [e.key for e, _ in receipts], [t for _, t in receipts], self._owner)
                    if len(rows) != len(receipts):
                        gone = {r[0] for r in rows}
                        lost = next(e for e, _ in receipts if e.key not in gone)
                        raise TransactionError(f"cannot commit: the peek-lock of message {lost.id} was lost")
                rows = []
                if entries:
                    if limited:
                        await self._check_lengths(conn, entries, limited)
                    rows = await self._insert(conn, entries, None, None)
        self._count_received(e for e, _ in receipts)
        self._count_sent(entries, rows)

    @_database
    async def rollback(self, receipts: list[tuple[Entry, int]]) -> None:
        """Return `receipts` as failed deliveries (those whose lock is still ours)."""
        if not receipts or self._closed:
            return
        async with self._pool.acquire() as conn:
            async with self._counted(conn):
                rows = await conn.fetch(
                    f"SELECT {', '.join('m.' + c for c in MESSAGE_COLUMNS)} FROM tether_messages m "
                    f"JOIN unnest($1::int8[], $2::int8[]) AS r(key, tag) ON m.key = r.key AND m.lock_tag = r.tag "
                    f"WHERE m.lock_owner = $3 ORDER BY m.key FOR UPDATE OF m",
                    [e.key for e, _ in receipts], [t for _, t in receipts], self._owner)
                notify: set[str] = set()
                for row in rows:
                    notify.update(await self._fail(conn, row))
                await self._notify(conn, notify)

    # ---- closing ----

    def abort(self) -> None:
        """End at once as a crash would: waiters fail, nothing is given back, the store's
        connections drop and its lease is left to run out (PostgresStore.abort)."""
        self._closed = True
        self.core.close(QueueError("the queue manager is closed"))
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        for waiters in self._waiters.values():
            for future in waiters:
                if not future.done():
                    future.set_result(None)
        self.store.abort()

    async def close(self) -> None:
        """Fail waiting receivers, stop the timer, give up the lease, close the store."""
        if self._closed:
            return
        self._closed = True
        self.core.close(QueueError("the queue manager is closed"))
        for waiters in self._waiters.values():
            for future in waiters:
                if not future.done():
                    future.set_result(None)
        if self._timer is not None:
            self._timer.cancel()
        tasks = list(self._tasks)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.store.close()
