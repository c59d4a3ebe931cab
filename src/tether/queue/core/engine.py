"""`QueueCore`: every decision about every message of one queue manager, sans-IO.

Requests come in with `now` (wall-clock seconds: deadlines are journaled and must mean the
same after a restart); out come journal records (`cut()`), hand-offs to waiting receivers
(`Waiter.hand`), log lines (`events`) and the next deadline (`next_deadline()`). The core
never reads a clock, opens a file or touches asyncio: `QueueManager` (manager.py) is its
asyncio adapter, and the queue simulation (tests/qsim/) drives it with a simulated clock,
journal and network.

Durability: a journaled operation changes nothing until the journal has it (see
pending_records.py); the caller waits for the record number it is given. A volatile
queue's operations take effect at once (no record, None is returned).

The rules live in their own files: message states and transitions in lifecycle.py, the
retry/poison rule in retry_rule.py, dead-letter targets in deadletter.py, idempotent
producers in producers.py, the journal operations in records.py and their replay in
replay.py.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

from ...errors import (
    LimitExceeded,
    LockLost,
    PoisonMessage,
    QueueError,
    QueueExists,
    QueueFull,
    QueueMessageTooLarge,
    QueueNotFound,
    TetherError,
    TransactionError,
)
from ...layer1 import RangeSet, module
from . import records as R
from .address import split_subqueue, validate_queue_name
from .deadletter import EXPIRED, REJECTED, dead_letter_queue_name
from .entry import DEFAULT_PRIORITY, MAX_PRIORITY, RECORD_FIELDS, Entry
from .headers import HeadersTooLarge, encode_headers
from .info import QueueInfo
from .lifecycle import (
    DROP,
    DUE,
    EXPIRE,
    GONE,
    LOCKED,
    POISON_GROUP,
    PURGE,
    READY,
    RELEASE,
    RENEW,
    SCHEDULE,
    SETTLE,
    SETTLING,
    TAKE,
    WRITE_FAILED_LOCKED,
    WRITE_FAILED_READY,
    WRITTEN_BACK,
    WRITTEN_GONE,
    advance,
)
from .pending_records import PendingRecords
from .producers import DUPLICATE, NEW, Producer, ProducerTable
from .queue import MAIN, POISON, RETRY, Queue, Waiter
from .replay import ReplayState
from .retry_rule import POISON as POISON_STEP
from .retry_rule import RETRY_LATER, RETRY_NOW, after_failure
from .settings import SYSTEM_DEAD_LETTER_QUEUE, QueueSettings
from .source_journal import JournalSettings
from .system_queues import JOURNAL_QUEUE, RETURN_PREFIX, TRANSMISSION_PREFIX, settings_for

DeadlineHeap = module("rtt").DeadlineHeap

#: After a journal write failed, timer-driven work on that queue waits this long to retry.
STORAGE_RETRY_DELAY = 1.0
#: Producers silent this long are forgotten (their sequences with them).
DEFAULT_PRODUCER_EXPIRY = 86400.0
#: Most queues one queue manager defines (system queues included: each remote address a
#: message is sent to is a transmission queue).
DEFAULT_MAX_QUEUES = 10000
_INF = float("inf")


class QueueCore:
    """The queues of one queue manager (see the module docstring)."""

    def __init__(self, manager_id: bytes, *, journaled: bool,
                 producer_expiry: float = DEFAULT_PRODUCER_EXPIRY, max_queues: int = DEFAULT_MAX_QUEUES,
                 journal: JournalSettings | None = None) -> None:
        if manager_id.__class__ is not bytes or not 8 <= len(manager_id) <= 64:
            raise ValueError(f"manager_id must be 8..64 bytes, not {manager_id!r}")
        if not (producer_expiry > 0 and math.isfinite(producer_expiry)):
            raise ValueError(f"producer_expiry must be a finite number of seconds > 0, not {producer_expiry!r}")
        if isinstance(max_queues, bool) or not isinstance(max_queues, int) or max_queues < 1:
            raise ValueError(f"max_queues must be an integer >= 1, not {max_queues!r}")
        self.max_queues = max_queues
        self.journaled = journaled
        self.manager_id = manager_id
        self.id_prefix = manager_id[:8].hex() + "-"
        self.producer_expiry = float(producer_expiry)
        self.producers = ProducerTable()
        #: (level, text) lines for the adapter's log: "info" or "warning"
        self.events: list[tuple[str, str]] = []
        #: journaled operations waiting for their record (`records.open_number`: the open one)
        self.records = PendingRecords()
        self._queues: dict[str, Queue] = {}          # every queue and sub-queue by name
        self._sendable: dict[str, Queue] = {}        # application queues by name (the send fast path)
        self._definitions: dict[str, QueueSettings] = {}      # defined main queues, in order
        self._defining: dict[str, tuple[QueueSettings, int]] = {}   # being journaled: record
        self._timers = DeadlineHeap()
        #: set whenever a deadline earlier than the ones before may have appeared: the
        #: adapter re-arms its timer then (reading next_deadline() on every call costs)
        self.deadline_moved = False
        self._hold: dict[Queue, float] = {}           # queue -> no timer work before (storage failed)
        self._dead_counts: Counter[str] = Counter()
        #: (queue, reason) -> messages of that queue dead-lettered for that reason since the
        #: core started (moved to a dead-letter or return queue, or dropped by "none")
        self.dead_lettered: Counter[tuple[str, str]] = Counter()
        self._next_key = 1
        self._tags = 0
        #: where a transmission queue's numbering starts in this life (load()): see _define
        self._numbering_floor = 1
        self._producer_sweep_at = _INF
        self._identity_journaled = False
        self._closed = False
        # the effects of a run of plain sends (send_one), bound once: a record continues a
        # run only while the effect is the same object (PendingRecords.add_to_run), and a
        # bound method made per call never is -- every send would cost a closure pair
        self._arrived_run = self._arrived_reserved
        self._unreserved_run = self._unreserved
        self._define(SYSTEM_DEAD_LETTER_QUEUE, settings_for(SYSTEM_DEAD_LETTER_QUEUE))
        #: the source journal's settings, and its queue (source_journal.py)
        self.journal_settings = journal if journal is not None else JournalSettings()
        self._journal_queue = self._define(JOURNAL_QUEUE, settings_for(JOURNAL_QUEUE))

    # ------------------------------------------------------------------ recovery

    def load(self, state: ReplayState, now: float) -> None:
        """Take over the state a journal described (replay.py); call once, before anything else."""
        # A transmission queue's numbers are the forwarder's producer sequences at its
        # target. A restored older copy of this journal must not number new messages with
        # sequences its lost later life already forwarded (the target would take them for
        # resends): each life numbers from at least the time it opened, in microseconds,
        # which no earlier life reached unless it forwarded over a million messages a second.
        self._numbering_floor = max(1, int(now * 1_000_000))
        if state.manager_id is not None:
            self.manager_id = state.manager_id
            self.id_prefix = state.manager_id[:8].hex() + "-"
            self._identity_journaled = True
        self._next_key = max(self._next_key, state.next_key)
        self.producers.next_pid = max(self.producers.next_pid, state.next_pid)
        for name, settings in state.definitions.items():
            self._define(name, QueueSettings.from_dict(settings))
        for replayed in state.producers.values():
            producer = self.producers.register(replayed.name, replayed.pid, replayed.epoch, now)
            producer.floor = replayed.floor
            for queue, ranges in replayed.accepted.items():
                accepted = producer.accepted.setdefault(queue, RangeSet())
                for lo, hi in ranges:
                    if hi >= producer.floor:
                        accepted.add_range(max(lo, producer.floor), hi)
                if not accepted:
                    del producer.accepted[queue]
        for name, next_sequence in state.counters.items():
            queue = self._queues.get(name)
            if queue is not None and queue.numbered:
                queue.next_sequence = max(queue.next_sequence, next_sequence)
        for name, entries in state.entries.items():
            queue = self._queues.get(name)
            if queue is None:
                if entries:
                    self.events.append(("warning", f"the journal holds {len(entries)} messages for the "
                                                   f"deleted queue {name!r}; dropped"))
                continue
            numbered = queue.main.numbers is not None
            for entry in entries.values():
                # a transmission queue's messages may have been sent before the restart
                entry.handed = numbered
                if queue.app and entry.deliver_at is not None and entry.deliver_at > now:
                    self._admit_scheduled(queue, entry)
                    continue
                self._admit(queue, entry)
                queue.push_ready(entry)
                if queue.kind == RETRY and queue.parent.app and entry.group_id is not None \
                        and entry.dead_letter_reason is None:
                    queue.parent.group_of(entry).retrying += 1      # its group waits for it
                if entry.key >= self._next_key:
                    self._next_key = entry.key + 1
            self._rearm(queue)
            if queue.kind == POISON:
                self._poison_changed(queue.main)
        for queue in list(self._queues.values()):
            for group in list(queue.groups.values()):
                self._group_changed(queue, group, now)
        self._trim_journal(now)       # (journal_max_length may be lower than before)
        if self.producers.by_pid:
            self._producer_sweep_at = now + self._producer_sweep_interval()

    def start(self) -> int | None:
        """After load(): journal the identity of a new journal. Returns the record to wait for."""
        if not self.journaled or self._identity_journaled:
            return None
        self._identity_journaled = True
        return self.records.add_op(self._identity_op())

    def _identity_op(self) -> list:
        return [R.IDENTITY, self.manager_id, self._next_key, self.producers.next_pid, R.FORMAT]

    # ------------------------------------------------------------------ journal records

    def cut(self) -> tuple[int, list[list]] | None:
        """The open record to write now, as (number, ops), or None."""
        return self.records.cut()

    def written(self, number: int, now: float) -> None:
        """Record `number` is durable: apply what it holds (hand-offs follow)."""
        self.records.written(number, now)

    def failed(self, number: int, now: float) -> None:
        """Record `number` could not be written: nothing it holds took effect."""
        self.records.failed(number, now)

    @property
    def pending_record(self) -> int | None:
        """The number of the open record (operations waiting for a cut), or None."""
        return self.records.open_number

    @property
    def records_in_flight(self) -> int:
        """Records cut and not yet reported written or failed."""
        return self.records.in_flight

    def _journal(self, queue: Queue | None, ops: list[list], apply: Any, undo: Any, now: float) -> int | None:
        """Journal `ops` and apply later, or (queue not journaled) apply at once."""
        if (queue is not None and not queue.journaled) or not ops:
            apply(now)
            return None
        return self.records.add(ops, apply, undo)

    # ------------------------------------------------------------------ definitions

    def define(self, name: str, settings: QueueSettings) -> int | None:
        """Define queue `name` (durably). Returns the record to wait for; None when it is
        defined already (or at once, in a core without a journal). QueueExists when it is
        defined (or being defined) with other settings."""
        self._check_open()
        existing = self._definitions.get(name)
        if existing is not None:
            if existing != settings:
                raise QueueExists(f"queue {name!r} exists with different settings")
            return None
        pending = self._defining.get(name)
        if pending is not None:
            if pending[0] != settings:
                raise QueueExists(f"queue {name!r} exists with different settings")
            return pending[1]
        if settings.dead_letter_queue == name:
            raise ValueError(f"queue setting dead_letter_queue: queue {name!r} cannot be its own dead-letter queue")
        if len(self._definitions) + len(self._defining) >= self.max_queues:
            raise LimitExceeded(f"cannot define queue {name!r}: the queue manager holds max_queues="
                                f"{self.max_queues} queues")

        def apply(now: float) -> None:
            self._defining.pop(name, None)
            self._define(name, settings)

        def undo(now: float) -> None:
            self._defining.pop(name, None)

        if not self.journaled:
            apply(0.0)
            return None
        record = self.records.add([[R.DEFINE, name, settings.as_dict()]], apply, undo)
        self._defining[name] = (settings, record)
        return record

    def _define(self, name: str, settings: QueueSettings) -> Queue:
        if name in self._queues:
            return self._queues[name]
        journaled = self.journaled and settings.durable
        main = Queue(name, settings, journaled=journaled)
        main.retry = Queue(name + ";retry", settings, journaled=journaled, kind=RETRY, parent=main)
        main.poison = Queue(name + ";poison", settings, journaled=journaled, kind=POISON, parent=main)
        for queue in (main, main.retry, main.poison):
            self._queues[queue.name] = queue
        if name != SYSTEM_DEAD_LETTER_QUEUE and name != JOURNAL_QUEUE:
            self._definitions[name] = settings
        if not name.startswith("$"):
            self._sendable[name] = main
        elif name.startswith(TRANSMISSION_PREFIX):
            main.numbered = True
            main.next_sequence = self._numbering_floor
            main.numbers, main.retry.numbers = [], []
        return main

    def delete(self, name: str) -> int | None:
        """Delete queue `name`, its sub-queues and every entry in them (durably)."""
        self._check_open()
        if name not in self._definitions:
            raise QueueNotFound(f"no queue named {name!r}")

        def apply(now: float) -> None:
            main = self._queues.get(name)
            if main is None:
                return
            error = QueueNotFound(f"queue {name!r} was deleted")
            if main.numbered:
                # the target has seen this queue's numbers: a queue of the same name made
                # later in this life numbers above them, or its messages would be dropped
                # there as resends
                self._numbering_floor = max(self._numbering_floor, main.next_sequence)
            for queue in (main, main.retry, main.poison):
                queue.deleted = True
                for entry in list(queue.entries()):
                    advance(entry, DROP)
                    self._remove(queue, entry, now)
                for ready in queue.levels:
                    ready.clear()
                queue.scheduled.clear()
                queue.groups.clear()
                queue.available.clear()
                queue.depth = 0
                queue.fail_waiters(error)
                self._timers.cancel(queue)
                self._hold.pop(queue, None)
                del self._queues[queue.name]
            self._sendable.pop(name, None)
            self._definitions.pop(name, None)
            self.producers.forget_queue(name)

        if not self.journaled:
            apply(0.0)
            return None
        return self.records.add([[R.DELETE, name]], apply, None)

    def queue_names(self) -> list[str]:
        """Every main queue (application, `$dead`, transmission and return queues)."""
        return [name for name, queue in self._queues.items() if queue.kind == MAIN]

    def traffic(self) -> dict[str, tuple[int, int]]:
        """Per main queue: (messages sent to it, messages received from it and its
        sub-queues, completed) since the core started."""
        out = {}
        for name, queue in self._queues.items():
            if queue.kind == MAIN:
                received = queue.received
                for sub in (queue.retry, queue.poison):
                    if sub is not None:
                        received += sub.received
                out[name] = (queue.sent, received)
        return out

    def sendable(self, name: Any) -> bool:
        """True when `name` is an application queue (a send's fast path)."""
        return name in self._sendable

    def has_queue(self, name: str) -> bool:
        """True when `name` is a queue or sub-queue (being defined does not count)."""
        return name in self._queues

    def settings(self, name: str) -> QueueSettings:
        """The settings of a queue or sub-queue; QueueNotFound if there is none."""
        return self._queue(name).settings

    def _queue(self, name: str) -> Queue:
        queue = self._queues.get(name)
        if queue is None:
            if not isinstance(name, str):
                raise TypeError(f"queue name must be a string, not {name!r}")
            split_subqueue(name)    # a clear error for an unknown sub-queue
            raise QueueNotFound(f"no queue named {name!r}")
        return queue

    def info(self, name: str) -> QueueInfo:
        """Counts of a queue (or sub-queue)."""
        queue = self._queue(name)
        if queue.kind != MAIN:
            return QueueInfo(queue.name, queue.settings.durable, queue.depth, _locked(queue), 0, 0, 0,
                             queue.bytes, False, len(queue.waiters), 0, 0)
        return QueueInfo(
            name=queue.name, durable=queue.settings.durable, depth=queue.depth, in_flight=_locked(queue),
            retrying=queue.retry.held, dead=self._dead_counts.get(queue.name, 0),
            poison=queue.poison.held, bytes=queue.bytes + queue.retry.bytes + queue.poison.bytes,
            faulted=queue.faulted, waiting=len(queue.waiters), scheduled=len(queue.scheduled),
            groups=len(queue.groups))

    # ------------------------------------------------------------------ sending

    def prepare(self, name: str, body: Any, now: float, *, headers: Any = None,
                time_to_live: Any = None, destination: str | None = None, id: str | None = None,
                enqueued_at: float | None = None, expires_at: Any = ..., origin: str | None = None,
                priority: Any = None, delay: Any = None, deliver_at: Any = None, group_id: Any = None,
                journal: Any = None) -> Entry:
        """A new entry for queue `name` (an application queue, or a system queue the adapter
        routes to), checked: TypeError/ValueError for a bad body, headers, time-to-live,
        priority (0..7, default 3) or delivery time (`delay` seconds from now, or
        `deliver_at` wall-clock seconds; not both) or group_id (a string of 1..255
        characters, or None) or journal (True, False, or None: the manager's
        source_journal, for a `destination`), QueueMessageTooLarge over
        max_message_size, QueueNotFound. It joins the queue through send() or commit().
        `expires_at` (when given) overrides the time-to-live; `id`, `enqueued_at` and
        `origin` are kept from another queue manager when forwarded."""
        queue = self._sendable.get(name)
        if queue is None:
            queue = self._send_target(name)
        settings = queue.settings
        if body.__class__ is not bytes:
            if isinstance(body, (bytearray, memoryview)):
                body = bytes(body)
            else:
                raise TypeError(f"message body must be bytes, not {type(body).__name__}")
        limit = settings.max_message_size
        if len(body) > limit:
            raise QueueMessageTooLarge(f"message of {len(body)} bytes is over max_message_size "
                                       f"{limit} of queue {queue.name!r}")
        encoded = None
        if headers is not None:
            try:
                encoded = encode_headers(headers, limit)
            except HeadersTooLarge as exc:
                raise QueueMessageTooLarge(f"queue {queue.name!r}: {exc}") from None
        if expires_at is ...:
            ttl = settings.time_to_live if time_to_live is None else _seconds("time_to_live", time_to_live)
            expires_at = None if ttl is None else now + ttl
        elif expires_at is not None:
            expires_at = float(expires_at)
        priority = DEFAULT_PRIORITY if priority is None else check_priority(priority)
        deliver_at = delivery_time(delay, deliver_at, now)
        if group_id is not None:
            check_group_id(group_id)
        journal = self.journal_settings.wanted(journal, destination)
        key = self._next_key
        self._next_key = key + 1
        entry = Entry(key, id if id is not None else f"{self.id_prefix}{key:x}", body, encoded,
                      now if enqueued_at is None else float(enqueued_at), expires_at,
                      destination=destination, origin=origin, priority=priority, deliver_at=deliver_at,
                      group_id=group_id, journal=journal)
        entry.queue = queue
        return entry

    def _send_target(self, name: str) -> Queue:
        if not isinstance(name, str):
            raise TypeError(f"queue address must be a string, not {name!r}")
        queue = self._queues.get(name)
        if queue is not None and queue.kind == MAIN and name.startswith("$"):
            return queue                            # a system queue the adapter routes to
        base, sub = split_subqueue(name)
        if sub is not None:
            raise ValueError(f"cannot send to sub-queue {name!r}; send to {base!r}")
        validate_queue_name(base)
        raise QueueNotFound(f"no queue named {base!r}")

    def send(self, entries: list[Entry], now: float, *, producer: Producer | None = None,
             epoch: int = 0, sequences: list[int] | None = None,
             keep_ids: bool = False) -> tuple[list[str | BaseException], list[int | None]]:
        """Queue prepared entries: (per entry its id or the exception refusing it (QueueFull),
        per entry the record to wait for or None: queued already, or refused). With
        `producer` (and its current `epoch`; ProducerFenced otherwise), entry i carries
        sequence `sequences[i]`: on an exactly_once queue a sequence queued before is
        answered with its id and queued nowhere (one being written now is answered with that
        write's record). A producer's message is named by its sequence unless `keep_ids`
        (forwarded messages keep the id their first queue manager gave).

        Priced per batch: the answers are two flat lists, what depends on the queue alone is
        looked up once per run of entries to one queue, the producer's reservations and
        acceptances go in one call each, the entries join their queues in one call once
        written (_arrive_all), and every journaled entry waits for the record this call
        fills (its number is known before: no record is cut inside a core call)."""
        self._check_open()
        producers = self.producers
        pid = 0
        pid_prefix = ""
        floor = 0
        pending: dict[tuple[str, int], int] = {}
        if producer is not None:
            producers.check_epoch(producer, epoch)
            if sequences is None or len(sequences) != len(entries):
                raise ValueError("send with a producer needs one sequence per entry")
            pid = producer.pid
            pid_prefix = f"{self.id_prefix}{pid:x}."
            floor = producer.floor
            pending = producer.pending
        record = self.records.upcoming          # the record this call's ops join
        ids: list[str | BaseException] = []
        waits: list[int | None] = []
        ops: list[list] = []
        journaled: list[Entry] = []
        keys: list[tuple[str, int]] = []             # (queue, sequence) de-duplicated, journaled
        copied: list[Entry] = []                      # local, sent with journal=True: copies
        added: dict[Queue, int] = {}
        in_batch: set[tuple[str, int]] = set()
        high = -1                 # no sequence above it is in in_batch
        enqueue = R.ENQUEUE
        # looked up once per run of entries to one queue (the queue before's, first none)
        current: Queue | None = None
        name = ""
        journaled_queue = exactly = numbered = False
        limit: int | None = None
        count = 0                 # the current queue's entries added so far in this call
        top: int | None = None    # the highest sequence the producer has queued on it
        for i, entry in enumerate(entries):
            queue = entry.queue
            if queue is not current:
                if current is not None:
                    added[current] = count
                current = queue
                count = added.get(queue, 0)
                settings = queue.settings
                name = queue.name
                limit = settings.max_length
                journaled_queue = queue.journaled
                numbered = queue.numbered
                exactly = producer is not None and settings.exactly_once
                if exactly:
                    accepted = producer.accepted.get(name)      # type: ignore[union-attr]
                    top = None if accepted is None else accepted.max
            key = None
            if producer is not None:
                sequence = sequences[i]        # type: ignore[index]
                entry.producer = pid
                entry.sequence = sequence
                if not keep_ids:
                    entry.id = f"{pid_prefix}{sequence:x}"
                if exactly:
                    key = (name, sequence)
                    if sequence <= high and key in in_batch:      # twice in this call: one write
                        ids.append(entry.id)
                        waits.append(record if journaled_queue else None)
                        continue
                    # above every sequence queued there, at or over the floor and not being
                    # written: new (the common case, decided without a call). A journaled
                    # queue's set does not change during this call; a volatile one's does.
                    if not (journaled_queue and sequence >= floor and (top is None or sequence > top)
                            and (not pending or key not in pending)):
                        seen = producers.classify(producer, name, sequence)   # type: ignore[arg-type]
                        if seen is DUPLICATE:
                            ids.append(entry.id)
                            waits.append(None)
                            continue
                        if seen is not NEW:                # being written now: its outcome decides
                            ids.append(entry.id)
                            waits.append(seen[0])
                            continue
            if limit is not None and queue.held + queue.reserved + count >= limit:
                ids.append(QueueFull(f"queue {name!r} holds max_length={limit} messages"))
                waits.append(None)
                continue
            if queue.deleted:
                ids.append(QueueNotFound(f"queue {name!r} was deleted"))
                waits.append(None)
                continue
            if key is not None:
                in_batch.add(key)
                if key[1] > high:
                    high = key[1]
            if numbered:
                self._number(queue, entry)
            elif entry.journal:
                copied.append(entry)
            ids.append(entry.id)
            if journaled_queue:
                count += 1
                if key is None:
                    ops.append([enqueue, name, entry.to_record()])
                else:
                    ops.append([enqueue, name, entry.to_record(), key[1]])
                    keys.append(key)
                journaled.append(entry)
                waits.append(record)
            else:
                if key is not None:
                    producers.accept(producer, name, key[1], now)     # type: ignore[arg-type]
                queue.sent += 1
                self._arrive(queue, entry, now)
                waits.append(None)
        if current is not None:
            added[current] = count
        if not journaled:
            self._copy_to_journal(copied, now)
            return ids, waits
        added = {queue: count for queue, count in added.items() if count}
        for queue, count in added.items():
            queue.reserved += count

        def apply(now: float) -> None:
            for queue, count in added.items():
                queue.reserved -= count
            if keys:
                producers.accept_many(producer, keys, now)      # type: ignore[arg-type]
            self._arrive_all(journaled, now)

        def undo(now: float) -> None:
            for queue, count in added.items():
                queue.reserved -= count
            for entry in journaled:
                advance(entry, DROP)        # never queued (and no longer a number to forward)
            if keys:
                producers.unreserve_many(producer, keys)        # type: ignore[arg-type]

        if self.records.add(ops, apply, undo) != record:
            raise AssertionError("a send's ops went into another record than the one it answered with")
        self._copy_to_journal(copied, now)          # the same record
        if keys:
            producers.reserve_many(producer, keys, record)      # type: ignore[arg-type]
        return ids, waits

    def prepare_plain(self, name: str, body: Any, now: float) -> Entry:
        """prepare() of a plain message (no headers, the queue's time-to-live) for an
        application or system queue `name`: the common case, without keyword handling."""
        queue = self._sendable.get(name)
        if queue is None or body.__class__ is not bytes or len(body) > queue.settings.max_message_size:
            return self.prepare(name, body, now)       # the checks, with their errors
        key = self._next_key
        self._next_key = key + 1
        ttl = queue.settings.time_to_live
        entry = Entry(key, f"{self.id_prefix}{key:x}", body, None, now, None if ttl is None else now + ttl)
        entry.queue = queue
        return entry

    def prepare_plain_many(self, name: str, bodies: list[Any], now: float) -> tuple[list[Entry], Exception | None]:
        """prepare_plain() of each body in turn, stopping at the first one refused: (the
        entries prepared, in order; the exception refusing the body after them, or None when
        every one was prepared). The queue, its limit and its time-to-live are looked up
        once for the whole run (a service's batch of plain sends)."""
        entries: list[Entry] = []
        add = entries.append
        queue = self._sendable.get(name)
        if queue is None:           # a system queue, or none: prepare()'s checks, one at a time
            for body in bodies:
                try:
                    add(self.prepare(name, body, now))
                except (TetherError, ValueError, TypeError) as exc:
                    return entries, exc
            return entries, None
        settings = queue.settings
        limit = settings.max_message_size
        ttl = settings.time_to_live
        expires_at = None if ttl is None else now + ttl
        prefix = self.id_prefix
        key = self._next_key
        for body in bodies:
            if body.__class__ is not bytes or len(body) > limit:
                self._next_key = key
                try:
                    entry = self.prepare(name, body, now)       # converts, or refuses with its error
                except (TetherError, ValueError, TypeError) as exc:
                    return entries, exc
                key = self._next_key
                add(entry)
                continue
            entry = Entry(key, f"{prefix}{key:x}", body, None, now, expires_at)
            entry.queue = queue
            add(entry)
            key += 1
        self._next_key = key
        return entries, None

    def send_body(self, name: str, body: Any, now: float) -> tuple[str, int | None]:
        """prepare() and send_one() of a plain send to application queue `name` (no
        headers, the queue's time-to-live): the common case, in one call. Returns the id and
        the record to wait for (None: queued)."""
        entry = self.prepare_plain(name, body, now)
        return entry.id, self.send_one(entry, now)

    def send_one(self, entry: Entry, now: float) -> int | None:
        """send() of one prepared entry without a producer (the embedded send's fast path):
        the record to wait for, or None when it is queued. Raises QueueFull."""
        if self._closed:
            self._check_open()
        queue = entry.queue
        limit = queue.settings.max_length
        if limit is not None and queue.held + queue.reserved >= limit:
            raise QueueFull(f"queue {queue.name!r} holds max_length={limit} messages")
        if queue.deleted:
            raise QueueNotFound(f"queue {queue.name!r} was deleted")
        if queue.numbered:
            self._number(queue, entry)
        if entry.journal and not queue.numbered:
            return self.commit([], [entry], now)        # with its $journal copy, in one record
        if not queue.journaled:
            queue.sent += 1
            self._arrive(queue, entry, now)
            return None
        queue.reserved += 1
        return self.records.add_to_run([R.ENQUEUE, queue.name, entry.to_record()], self._arrived_run,
                                       self._unreserved_run, entry)

    def _journal_copy(self, entry: Entry, now: float) -> Entry:
        """The $journal copy of a message sent with journal=True to a local queue."""
        key = self._next_key
        self._next_key = key + 1
        copy = Entry(key, entry.id, entry.body, entry.headers, entry.enqueued_at,
                     self.journal_settings.expires_at(now), destination=entry.queue.name,
                     priority=entry.priority)
        copy.queue = self._journal_queue
        return copy

    def _copy_to_journal(self, entries: list[Entry], now: float) -> None:
        """The $journal copies of local messages sent with journal=True, joining the open
        record (the one their messages are in) or at once."""
        if entries:
            self.commit([], [self._journal_copy(entry, now) for entry in entries], now)

    def _arrived_reserved(self, entries: list[Entry], now: float) -> None:
        """A run of send_one() entries is written: they join their queues (_arrive_all),
        each no longer reserved there."""
        self._arrive_all(entries, now, reserved=True)

    def _unreserved(self, entries: list[Entry], now: float) -> None:
        for entry in entries:
            self._unreserve(entry.queue, entry)

    @staticmethod
    def _number(queue: Queue, entry: Entry) -> None:
        """A message joining a transmission queue gets the forwarder's next sequence, in the
        order messages join; it counts for the floor (lowest_sequence) from now on, while
        its send is being written too."""
        entry.sequence = queue.next_sequence
        queue.next_sequence += 1
        queue.number(entry)

    def lowest_sequence(self, name: str) -> int:
        """A transmission queue's lowest sequence still to be forwarded (its `next_sequence`
        when none is): every sequence below it is settled."""
        queue = self._queue(name)
        lowest = queue.lowest_sequence()
        return queue.next_sequence if lowest is None else lowest

    def raise_numbering(self, name: str, next_sequence: int) -> tuple[int, int | None] | None:
        """The forwarder of transmission queue `name` learned that its target has seen
        sequences up to `next_sequence` - 1 from it (a restored older copy of this journal,
        or a clock set back): number from there on, durably. Returns (the numbering it
        had, the record to wait for), or None when it numbered from there already."""
        queue = self._queue(name)
        if not queue.numbered:
            raise ValueError(f"{name!r} is not a transmission queue")
        before = queue.next_sequence
        if next_sequence <= before:
            return None
        queue.next_sequence = next_sequence
        return before, self.records.add_op([R.COUNTER, name, next_sequence]) if queue.journaled else None

    @staticmethod
    def _unreserve(queue: Queue, entry: Entry) -> None:
        queue.reserved -= 1
        advance(entry, DROP)        # never queued

    # ------------------------------------------------------------------ producers

    def open_producer(self, name: bytes, epoch: int, now: float) -> tuple[Producer, int | None]:
        """A producer says hello (epoch 0: a new instance, which fences older ones). Returns
        it and the record to wait for before answering (None: nothing changed).
        ProducerFenced when `epoch` is older than the producer's current epoch."""
        self._check_open()
        if name.__class__ is not bytes or not 8 <= len(name) <= 64:
            raise ValueError(f"producer id must be 8..64 bytes, not {name!r:.80}")
        if epoch.__class__ is not int or epoch < 0:
            raise ValueError(f"producer epoch must be an integer >= 0, not {epoch!r}")
        producer, before, changed = self.producers.open(name, epoch, now)
        if self._producer_sweep_at == _INF:
            self._producer_sweep_at = now + self._producer_sweep_interval()
            self.deadline_moved = True
        if not changed or not self.journaled:
            return producer, None
        return producer, self.records.add([[R.PRODUCER, producer.name, producer.pid, producer.epoch]], None,
                                           lambda now: self.producers.undo_open(producer, before))

    def raise_floor(self, producer: Producer, floor: int) -> None:
        """The producer settled every sequence below `floor`: its sets shrink (journaled with
        the next record; losing it in a crash only keeps more than needed)."""
        if self.producers.raise_floor(producer, floor) and self.journaled:
            self.records.add_op([R.FLOOR, producer.pid, floor])

    def _producer_sweep_interval(self) -> float:
        return min(self.producer_expiry / 4, 3600.0)

    # ------------------------------------------------------------------ receiving

    def take(self, name: str, now: float) -> Entry | None:
        """The first ready entry of queue `name`, peek-locked for validity_duration (its
        `tag` names the lock); None when none is ready. QueueNotFound, PoisonMessage."""
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queue(name)
        if queue.faulted:
            raise self._poison_error(queue)
        if queue.timer_at <= now and self._hold.get(queue, 0.0) <= now:
            if queue.scheduled:
                self._scheduled_due(queue, now)      # due before the timer got to them
            self._expire_due(queue, now)     # before the timer got to them: never delivered
        entry = queue.take()
        if entry is None:
            return None
        # _lock(), inlined: the hot path of every receive
        if entry.state != READY:
            advance(entry, TAKE)        # raises InvalidTransition
        entry.state = LOCKED
        if queue.numbers is not None:
            entry.handed = True
        self._tags += 1
        entry.tag = self._tags
        entry.delivery_count += 1
        deadline = entry.lock_deadline = now + queue.validity
        queue.inflight[entry.key] = entry
        if deadline < queue.timer_at:
            self._schedule(queue, deadline)
        return entry

    def peek(self, name: str, count: int, now: float) -> list[Entry]:
        """Up to `count` entries of queue (or sub-queue) `name` that a receiver would get
        next, in that order: not locked, no delivery counted. QueueNotFound."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"peek count must be an integer >= 1, not {count!r}")
        queue = self._queue(name)
        out = []
        for entry in queue.ready_entries():
            if queue.expires(entry) and entry.expires_at <= now:
                continue            # the expiry timer takes it: nobody receives it
            out.append(entry)
            if len(out) == count:
                break
        return out

    def purge(self, name: str, now: float) -> tuple[int, int | None]:
        """Remove every message waiting in queue (or sub-queue) `name` (locked ones stay with
        their receivers), durably: (how many, the record to wait for or None)."""
        self._check_open()
        queue = self._queue(name)
        entries = list(queue.ready_entries())
        if not entries:
            return 0, None
        return len(entries), self._drop_ready(queue, entries, now)

    def _drop_ready(self, queue: Queue, entries: list[Entry], now: float) -> int | None:
        """Remove READY `entries` of `queue`, durably: the record to wait for, or None."""
        for entry in entries:
            self._settle_ready(queue, entry, PURGE)

        def apply(now: float) -> None:
            for entry in entries:
                if entry.state == SETTLING:
                    advance(entry, WRITTEN_GONE)
                    self._remove(queue, entry, now)
            self._rearm(queue)

        def undo(now: float) -> None:
            for entry in entries:
                self._unsettle(entry, now)

        ops = [[R.REMOVE, queue.name, entry.key] for entry in entries]
        return self._journal(queue, ops, apply, undo, now)

    def wait(self, name: str, waiter: Waiter) -> None:
        """`waiter` gets the next entry of queue `name` that becomes ready (waiters are served
        oldest first). Check take() first. QueueNotFound, PoisonMessage."""
        self._check_open()
        queue = self._queue(name)
        if queue.faulted:
            raise self._poison_error(queue)
        queue.add_waiter(waiter)

    def stop_waiting(self, name: str, waiter: Waiter) -> None:
        """`waiter` no longer waits (timed out, cancelled); O(1)."""
        queue = self._queues.get(name)
        if queue is not None:
            queue.remove_waiter(waiter)

    def _lock(self, queue: Queue, entry: Entry, now: float) -> None:
        if entry.state == READY:
            entry.state = LOCKED        # the table's TAKE, inlined: every receive passes here
        else:
            advance(entry, TAKE)        # raises InvalidTransition
        if queue.numbers is not None:
            entry.handed = True
        self._tags += 1
        queue.lock(entry, self._tags, now)
        if entry.lock_deadline < queue.timer_at:
            self._schedule(queue, entry.lock_deadline)

    def _arrive(self, queue: Queue, entry: Entry, now: float, front: bool = False) -> None:
        """`entry` joins `queue` (READY): handed to the longest waiter, or queued; or, when
        its delivery time is still to come in an application queue, SCHEDULED until then."""
        entry.state = READY
        if queue.app and entry.deliver_at is not None and entry.deliver_at > now:
            self._admit_scheduled(queue, entry)
            return
        self._admit(queue, entry)
        if queue is self._journal_queue:
            self._trim_journal(now)
        if queue.kind == POISON:
            self._poison_changed(queue.main)
        self._offer(queue, entry, now, front)

    def _arrive_all(self, entries: list[Entry], now: float, reserved: bool = False) -> None:
        """Sent entries, written, join their queues in order (one whose queue was deleted
        meanwhile is dropped, with a log line); each run of entries to one queue in one
        call (_arrive_run). `reserved`: each was counted in its queue's `reserved` (send_one)."""
        run: list[Entry] = []
        add = run.append
        run_queue = None
        for entry in entries:
            queue = entry.queue
            if queue is not run_queue:
                if run:
                    self._arrive_run(run_queue, run, now, reserved)     # type: ignore[arg-type]
                    run = []
                    add = run.append
                run_queue = queue
            add(entry)
        if run:
            self._arrive_run(run_queue, run, now, reserved)     # type: ignore[arg-type]

    def _arrive_run(self, queue: Queue, entries: list[Entry], now: float, reserved: bool) -> None:
        """Sent entries join `queue`, in order, as _arrive() each. While nobody waits on an
        application queue, its plain entries (no delivery time, group or dead-letter
        source) go straight to the back of their ready lists (Queue.admit_ready); any other
        one takes _arrive()'s way."""
        if reserved:
            queue.reserved -= len(entries)
        if queue.deleted:
            events = self.events
            for entry in entries:
                events.append(("info", f"message {entry.id} dropped: queue {queue.name!r} was deleted"))
            return
        queue.sent += len(entries)
        i = 0
        n = len(entries)
        while i < n:
            if queue.app and not queue.waiters:
                i, earliest = queue.admit_ready(entries, i)
                if earliest < queue.timer_at:
                    self._schedule(queue, earliest)
                if i == n:
                    return
            self._arrive(queue, entries[i], now)
            i += 1

    def _admit_scheduled(self, queue: Queue, entry: Entry) -> None:
        """A READY `entry` is held in application queue `queue` until its deliver_at (its
        time-to-live is looked at once it is due)."""
        entry.queue = queue
        queue.held += 1
        queue.bytes += len(entry.body)
        advance(entry, SCHEDULE)
        queue.schedule(entry)
        if entry.deliver_at < queue.timer_at:
            self._schedule(queue, entry.deliver_at)

    def _scheduled_due(self, queue: Queue, now: float) -> None:
        """Scheduled entries whose delivery time came: READY, to a waiter or the ready list
        (one whose time-to-live ran out meanwhile is left to the expiry timer)."""
        for entry in queue.scheduled_due(now):
            advance(entry, DUE)
            if queue.expires(entry):
                queue.expiry.add(entry)
                if entry.expires_at < queue.timer_at:
                    self._schedule(queue, entry.expires_at)
            self._offer(queue, entry, now, False)

    def _admit(self, queue: Queue, entry: Entry) -> None:
        entry.queue = queue
        queue.held += 1
        queue.bytes += len(entry.body)
        if queue.numbers is not None:
            queue.number(entry)
        if entry.dead_letter_source is not None:
            self._dead_counts[entry.dead_letter_source] += 1
        if queue.expires(entry):
            queue.expiry.add(entry)
            if entry.expires_at < queue.timer_at:
                self._schedule(queue, entry.expires_at)
        if queue.kind == RETRY and entry.retry_at is not None and entry.retry_at < queue.timer_at:
            self._schedule(queue, entry.retry_at)

    def _offer(self, queue: Queue, entry: Entry, now: float, front: bool) -> None:
        """A READY entry of `queue` without a ready-list slot: to a waiter, or into the list
        (where one whose time-to-live ran out waits for the expiry timer)."""
        if entry.group_id is not None and queue.app and entry.dead_letter_reason is None:
            queue.push_ready(entry, front)          # into its group: received whole
            self._group_changed(queue, queue.groups[entry.group_id], now)
            return
        expired = queue.expires(entry) and entry.expires_at <= now
        if queue.waiters and not queue.faulted and not expired:
            waiter = queue.next_waiter()
            self._lock(queue, entry, now)
            waiter.hand(entry)
            return
        queue.push_ready(entry, front)

    def _remove(self, queue: Queue, entry: Entry, now: float) -> None:
        """`entry` (GONE) leaves `queue`."""
        queue.remove(entry)
        if entry.dead_letter_source is not None or queue.kind == POISON:
            self._removed_special(queue, entry)
        if entry.group_id is not None:
            self._group_left(queue, entry, now)

    def _removed_special(self, queue: Queue, entry: Entry) -> None:
        """A dead letter left (its source's count drops), or a poison message (the queue
        may resume)."""
        if entry.dead_letter_source is not None:
            self._dead_counts[entry.dead_letter_source] -= 1
        if queue.kind == POISON:
            self._poison_changed(queue.main)

    # ------------------------------------------------------------------ settling

    def _locked_entry(self, entry: Entry, tag: int, now: float) -> Queue:
        queue = entry.queue
        if entry.state != LOCKED or entry.tag != tag or queue is None or queue.deleted:
            raise LockLost(f"message {entry.id}: the peek-lock was lost (expired, settled or queue deleted)")
        if entry.lock_deadline < now:
            raise LockLost(f"message {entry.id}: the peek-lock expired (validity_duration)")
        return queue

    def lock_valid(self, entry: Entry, tag: int, now: float) -> bool:
        """True while the lock `tag` on `entry` holds."""
        queue = entry.queue
        return (entry.state == LOCKED and entry.tag == tag and queue is not None and not queue.deleted
                and entry.lock_deadline >= now)

    def complete(self, entry: Entry, tag: int, now: float) -> int | None:
        """Remove a received entry (durably on a journaled queue): the record to wait for, or
        None when it is gone already. LockLost when the lock `tag` no longer holds."""
        if entry.state != LOCKED or entry.tag != tag or entry.lock_deadline < now:
            self._locked_entry(entry, tag, now)
        queue = entry.queue
        if queue.deleted:
            self._locked_entry(entry, tag, now)
        entry.state = SETTLING          # the table's SETTLE (LOCKED was checked above)
        entry.before = LOCKED
        # counted now, not once written: an integer add is all the metrics cost here (a
        # write that fails leaves the message locked, and completing it again counts again)
        queue.received += 1
        if not queue.journaled:
            self._gone(queue, entry, now)
            return None
        return self.records.add([[R.REMOVE, queue.name, entry.key]],
                                 lambda now: self._gone(queue, entry, now), lambda now: self._unsettle(entry, now))

    def complete_many(self, receipts: list[tuple[Entry, int]], now: float) -> tuple[int | None, list[LockLost | None]]:
        """complete() of many entries in one record: the record to wait for, and per entry
        None or the LockLost refusing it."""
        return self._each(self.complete, receipts, now)

    def forwarded(self, entry: Entry, tag: int, now: float) -> int | None:
        """A transmission queue's message was accepted by its target: complete it, or, when
        it is to be journaled, move it to $journal in the same record (source_journal.py).
        The record to wait for, or None. LockLost."""
        queue = entry.queue
        if not entry.journal or queue is None or not queue.numbered:
            return self.complete(entry, tag, now)
        queue = self._locked_entry(entry, tag, now)
        advance(entry, SETTLE)
        entry.before = LOCKED
        queue.received += 1
        return self._move(queue, entry, self._journal_queue, now, expires_at=self.journal_settings.expires_at(now),
                          retry_at=None, journal=False, deliver_at=None, group_id=None)

    def forwarded_many(self, receipts: list[tuple[Entry, int]], now: float) -> tuple[int | None, list[LockLost | None]]:
        """forwarded() of many entries in one record (as complete_many)."""
        return self._each(self.forwarded, receipts, now)

    @staticmethod
    def _each(settle: Callable[[Entry, int, float], int | None], receipts: list[tuple[Entry, int]],
              now: float) -> tuple[int | None, list[LockLost | None]]:
        """`settle` for every receipt, the records joined: the last record to wait for, and
        per entry None or the LockLost refusing it."""
        errors: list[LockLost | None] = []
        record = None
        for entry, tag in receipts:
            try:
                number = settle(entry, tag, now)
            except LockLost as exc:
                errors.append(exc)
                continue
            errors.append(None)
            if number is not None:
                record = number
        return record, errors

    def _trim_journal(self, now: float) -> None:
        """$journal holds at most journal_max_length copies: the oldest go."""
        queue = self._journal_queue
        limit = self.journal_settings.journal_max_length
        if limit is None or queue.deleted:
            return
        going = sum(1 for entry in queue.inflight.values() if entry.state == SETTLING)
        excess = queue.held - going - limit
        if excess <= 0:
            return
        oldest = []
        for entry in queue.ready_entries():
            oldest.append(entry)
            if len(oldest) == excess:
                break
        if oldest:
            self._drop_ready(queue, oldest, now)

    def _gone(self, queue: Queue, entry: Entry, now: float) -> None:
        state = entry.state
        if state == GONE:
            return       # its queue was deleted meanwhile
        if state == SETTLING:
            entry.state = GONE          # the table's WRITTEN_GONE, inlined: every complete
        else:
            advance(entry, WRITTEN_GONE)
        queue.remove(entry)
        if entry.dead_letter_source is not None or queue.kind == POISON:
            self._removed_special(queue, entry)
        if entry.group_id is not None:
            self._group_left(queue, entry, now)


    def _settle_ready(self, queue: Queue, entry: Entry, event: str = EXPIRE) -> None:
        """A READY entry is about to move (expiry, retry delay over) or go (purge): not
        takeable meanwhile."""
        advance(entry, event)
        entry.before = READY
        queue.waiting(entry)
        queue.inflight[entry.key] = entry      # enumerable (snapshot, delete) while it settles

    def _unsettle(self, entry: Entry, now: float) -> None:
        """A write about `entry` failed: it is as it was before (locked, or ready), and its
        queue's timer work waits STORAGE_RETRY_DELAY before trying again."""
        if entry.state != SETTLING:
            return       # dropped meanwhile (its queue was deleted)
        queue = entry.queue
        self._hold[queue] = now + STORAGE_RETRY_DELAY
        if entry.before == LOCKED:
            advance(entry, WRITE_FAILED_LOCKED)
            if entry.group is not None:          # its holder may take the next one now
                self._group_changed(queue, entry.group, now)
        else:
            advance(entry, WRITE_FAILED_READY)
            del queue.inflight[entry.key]
            if queue.expires(entry):
                queue.expiry.add(entry)
            if entry.in_ready:
                queue.waiting_again(entry)
            else:
                self._offer(queue, entry, now, True)
        self._rearm(queue)

    def release(self, entry: Entry, tag: int, now: float) -> bool:
        """An entry taken but never seen by the application (a prefetch given back, a
        receiver gone): back to the front of its queue, the delivery not counted. False when
        the lock had gone already."""
        queue = entry.queue
        if entry.state != LOCKED or entry.tag != tag or queue is None or queue.deleted:
            return False
        advance(entry, RELEASE)
        entry.delivery_count -= 1
        queue.unlock(entry)
        if entry.group is not None:
            self._ungroup(entry)
        self._back(queue, entry, now)
        return True

    def _back(self, queue: Queue, entry: Entry, now: float) -> None:
        """A locked entry is READY again (released, or back for an immediate retry): to the
        front of its queue, or to a waiter. The expiry timer passed it by while it was
        locked: if its time-to-live ran out, the timer must see it again."""
        if queue.expires(entry) and entry.expires_at <= now:
            queue.expiry.add(entry)
            self._schedule(queue, entry.expires_at)
        self._offer(queue, entry, now, True)

    def renew(self, entry: Entry, tag: int, now: float) -> float:
        """Extend a peek-lock by validity_duration from now; the new deadline. LockLost."""
        queue = self._locked_entry(entry, tag, now)
        advance(entry, RENEW)
        queue.relock(entry, now)
        return entry.lock_deadline

    def abandon(self, entry: Entry, tag: int, now: float) -> int | None:
        """Give a received entry back as a failed delivery (retried, delayed or poison, per
        the queue's settings): the record to wait for, or None. LockLost."""
        queue = self._locked_entry(entry, tag, now)
        return self._fail(queue, entry, now)

    def dead_letter(self, entry: Entry, tag: int, reason: str, now: float) -> int | None:
        """Settle a received entry by moving it to its queue's dead-letter queue with
        `reason` (a forwarder's definitive refusals). LockLost."""
        if not isinstance(reason, str) or not reason:
            raise ValueError(f"dead-letter reason must be a non-empty string, not {reason!r}")
        queue = self._locked_entry(entry, tag, now)
        advance(entry, SETTLE)
        entry.before = LOCKED
        return self._dead_letter(queue, entry, reason, now)


    # ------------------------------------------------------------------ groups

    def accept_group(self, name: str, holder: Any, now: float) -> Any:
        """Hold the first available group of application queue `name` for `holder` (an
        adapter's token): the Group (its `group_id`), or None when none is available (wait
        with wait_group). QueueNotFound, PoisonMessage, ValueError for a queue without groups."""
        self._check_open()
        queue = self._group_queue(name)
        if queue.timer_at <= now and self._hold.get(queue, 0.0) <= now:
            if queue.scheduled:
                self._scheduled_due(queue, now)
            self._expire_due(queue, now)
        while queue.available:
            group = next(iter(queue.available))
            del queue.available[group]
            if group.available:
                group.holder = holder
                return group
        return None

    def wait_group(self, name: str, waiter: Any) -> None:
        """`waiter` (hand_group(group) / fail(error)) gets the next group of `name` that
        becomes available, held for it. Check accept_group first."""
        self._check_open()
        queue = self._group_queue(name)
        queue.group_waiters[waiter] = None

    def stop_waiting_group(self, name: str, waiter: Any) -> bool:
        """`waiter` no longer waits for a group; False if it was not waiting."""
        queue = self._queues.get(name)
        return queue is not None and queue.group_waiters.pop(waiter, 0) is None

    def take_group(self, group: Any, holder: Any, now: float) -> Entry | None:
        """The next message of a held group, in send order, peek-locked; None when none is
        ready (or one waits in ;retry: nothing after it may come first). LockLost when
        `holder` does not hold the group; QueueNotFound, PoisonMessage."""
        queue = self._held(group, holder)
        if queue.timer_at <= now and self._hold.get(queue, 0.0) <= now:
            if queue.scheduled:
                self._scheduled_due(queue, now)
            self._expire_due(queue, now)
        if group.blocked or group.settling:
            return None
        entry = self._pop_group(queue, group, now)
        if entry is not None:
            self._lock_in_group(queue, group, entry, now)
        return entry

    def wait_in_group(self, group: Any, holder: Any, waiter: Waiter) -> None:
        """`waiter` gets the held group's next message as it becomes ready. Check take_group first."""
        self._held(group, holder)
        group.waiters[waiter] = None

    def stop_waiting_in_group(self, group: Any, waiter: Waiter) -> bool:
        """`waiter` no longer waits for the group's next message."""
        return group.waiters.pop(waiter, 0) is None

    def release_group(self, group: Any, holder: Any, now: float, *, abandon: bool) -> list[int]:
        """`holder` lets go of `group`: its messages still locked are abandoned (failed
        deliveries) or, without `abandon`, released uncounted; the group returns to the queue
        once they are back. The records to wait for."""
        if group.holder is not holder:
            return []
        group.holder = None
        queue = group.queue
        waiters, group.waiters = group.waiters, type(group.waiters)()
        for waiter in waiters:
            waiter.fail(LockLost(f"group {group.group_id!r} was released"))
        records: list[int] = []
        if not queue.deleted:
            for entry in list(group.inflight.values()):
                if entry.state != LOCKED:
                    continue
                if abandon:
                    record = self._fail(queue, entry, now)
                    if record is not None and record not in records:
                        records.append(record)
                else:
                    self.release(entry, entry.tag, now)
        self._group_changed(queue, group, now)
        return records

    def _group_queue(self, name: str) -> Queue:
        queue = self._queue(name)
        if not queue.app:
            raise ValueError(f"queue {name!r} has no groups: groups are in application queues only")
        if queue.faulted:
            raise self._poison_error(queue)
        return queue

    def _held(self, group: Any, holder: Any) -> Queue:
        queue = group.queue
        if queue.deleted:
            raise QueueNotFound(f"queue {queue.name!r} was deleted")
        if group.holder is not holder:
            raise LockLost(f"group {group.group_id!r} is not held (released, or its holder went away)")
        if queue.faulted:
            raise self._poison_error(queue)
        return queue

    def _pop_group(self, queue: Queue, group: Any, now: float) -> Entry | None:
        """The group's first ready entry, out of the ready count; None when there is none or
        it expired (the expiry timer dead-letters it, then the next one comes)."""
        entry = group.pop()
        if entry is None:
            return None
        if queue.expires(entry) and entry.expires_at <= now:
            entry.in_ready = True
            group.push(entry)
            return None
        queue.depth -= 1
        return entry

    def _lock_in_group(self, queue: Queue, group: Any, entry: Entry, now: float) -> None:
        self._lock(queue, entry, now)
        entry.group = group
        group.inflight[entry.key] = entry

    def _ungroup(self, entry: Entry) -> None:
        """A locked group entry is locked no more (released, back, gone)."""
        group = entry.group
        entry.group = None
        group.inflight.pop(entry.key, None)

    def _group_left(self, queue: Queue, entry: Entry, now: float) -> None:
        """A message of a group left its lock or the queue: the group may be offered again."""
        group = entry.group
        if group is not None:
            self._ungroup(entry)
        else:
            group = queue.group_of(entry, create=False)
        if group is not None:
            self._group_changed(group.queue, group, now)

    def _group_moves(self, source: Queue, target: Queue, fresh: Entry) -> None:
        """A group's message goes to ;retry (the group waits for it) or comes back."""
        if target.kind == RETRY and source.app and fresh.dead_letter_reason is None:
            source.group_of(fresh).retrying += 1
        elif source.kind == RETRY and target.app and fresh.dead_letter_reason is None:
            group = target.group_of(fresh)
            group.retrying = max(0, group.retrying - 1)

    def _group_changed(self, queue: Queue, group: Any, now: float) -> None:
        """Hand what a group can give now: its next messages to its holder's waiting
        receives, or the group itself to a consumer waiting to accept one."""
        if queue.deleted:
            return
        if group.holder is not None:
            while group.waiters and group.depth and not group.blocked and not group.settling \
                    and not queue.faulted:
                entry = self._pop_group(queue, group, now)
                if entry is None:
                    break
                waiter = group.waiters.popitem(last=False)[0]
                self._lock_in_group(queue, group, entry, now)
                waiter.hand(entry)
        elif group.available and not queue.faulted:
            if queue.group_waiters:
                waiter = queue.group_waiters.popitem(last=False)[0]
                queue.available.pop(group, None)
                group.holder = waiter
                waiter.hand_group(group)
            else:
                queue.available[group] = None
        else:
            queue.available.pop(group, None)
        queue.forget_group(group)

    # ------------------------------------------------------------------ failed deliveries and moves

    def _fail(self, queue: Queue, entry: Entry, now: float) -> int | None:
        """A delivery of the LOCKED `entry` failed (abandon, lock expiry, rollback): retry it
        now, delay it, or handle it as poison, per its queue's settings."""
        advance(entry, SETTLE)
        entry.before = LOCKED
        if queue.kind != MAIN:
            # read from ;retry or ;poison by hand: it simply goes back there
            return self._update(queue, entry, entry.attempts, now)
        if queue.expires(entry) and entry.expires_at <= now:
            return self._dead_letter(queue, entry, EXPIRED, now)
        settings = queue.settings
        attempts = entry.attempts + 1
        step = after_failure(settings, attempts)
        if step == RETRY_NOW:
            return self._update(queue, entry, attempts, now)
        if step == RETRY_LATER:
            return self._move(queue, entry, queue.retry, now, attempts=attempts,
                              retry_at=now + settings.retry_cycle_delay)
        assert step == POISON_STEP
        mode = settings.receive_error_handling
        self.events.append(("warning", f"poison message {entry.id} in queue {queue.name!r} after "
                                       f"{attempts} deliveries: {mode}"))
        group = entry.group
        if group is not None:
            # a group is poisoned as a whole: its waiting messages go the same way, in the
            # same record (one still locked by its holder follows when it fails)
            others = list(group.ready_entries())
            if others:
                self.events.append(("warning", f"group {group.group_id!r} of queue {queue.name!r} goes with it: "
                                               f"{len(others)} more messages: {mode}"))
            record = self._poison(queue, entry, attempts, mode, now)
            for other in others:
                self._settle_ready(queue, other, POISON_GROUP)
                number = self._poison(queue, other, other.attempts, mode, now)
                record = number if number is not None else record
            return record
        return self._poison(queue, entry, attempts, mode, now)

    def _poison(self, queue: Queue, entry: Entry, attempts: int, mode: str, now: float) -> int | None:
        """The SETTLING `entry` failed for good: `receive_error_handling` `mode` applies."""
        if mode == "drop":
            return self._journal(queue, [[R.REMOVE, queue.name, entry.key]],
                                 lambda now: self._gone(queue, entry, now), lambda now: self._unsettle(entry, now), now)
        if mode == "reject":
            back = self._queues.get(RETURN_PREFIX + entry.origin) if entry.origin else None
            if back is not None:        # forwarded in: the negative acknowledgement goes home
                return self._move(queue, entry, back, now, expires_at=None, dead_letter_reason=REJECTED,
                                  dead_letter_source=queue.main.name, retry_at=None, deliver_at=None)
            return self._dead_letter(queue, entry, REJECTED, now)
        # "move", and "fault" (which also stops the queue while ;poison holds it)
        return self._move(queue, entry, queue.poison, now, attempts=attempts, retry_at=None)

    def _update(self, queue: Queue, entry: Entry, attempts: int, now: float) -> int | None:
        """The SETTLING `entry` goes back to the front of `queue` for another delivery."""
        def apply(now: float) -> None:
            if entry.state != SETTLING:
                return
            advance(entry, WRITTEN_BACK)
            entry.attempts = attempts
            queue.unlock(entry)
            if entry.group is not None:
                self._ungroup(entry)
            self._back(queue, entry, now)
            self._rearm(queue)

        return self._journal(queue, [[R.UPDATE, queue.name, entry.key, entry.delivery_count, attempts]],
                             apply, lambda now: self._unsettle(entry, now), now)

    def _dead_letter(self, queue: Queue, entry: Entry, reason: str, now: float) -> int | None:
        """Move the SETTLING `entry` to its dead-letter queue with `reason`, or drop it when
        the queue's dead_letter_queue is "none"."""
        main = queue.main
        source = entry.destination or main.name
        target_name = dead_letter_queue_name(main.settings)
        if target_name is None:
            self.events.append(("info", f"message {entry.id} of queue {main.name!r} dropped ({reason}, "
                                        f"dead_letter_queue none)"))

            def dropped(now: float) -> None:
                self.dead_lettered[main.name, reason] += 1
                self._gone(queue, entry, now)

            return self._journal(queue, [[R.REMOVE, queue.name, entry.key]], dropped,
                                 lambda now: self._unsettle(entry, now), now)
        target = self._queues.get(target_name)
        if target is None or target is main:
            self.events.append(("warning", f"dead-letter queue {target_name!r} of {main.name!r} does not exist; "
                                           f"using {SYSTEM_DEAD_LETTER_QUEUE}"))
            target = self._queues[SYSTEM_DEAD_LETTER_QUEUE]
        return self._move(queue, entry, target, now, expires_at=None, dead_letter_reason=reason,
                          dead_letter_source=source, retry_at=None, deliver_at=None)

    def _move(self, source: Queue, entry: Entry, target: Queue, now: float, **changes: Any) -> int | None:
        """The SETTLING `entry` leaves `source`; a copy with `changes` joins `target` (a new
        life there: whoever held the old one has lost its lock)."""
        fresh = Entry(*[changes.get(name, getattr(entry, name)) for name in RECORD_FIELDS])
        fresh.handed = entry.handed

        def apply(now: float) -> None:
            if entry.state != SETTLING:
                return
            advance(entry, WRITTEN_GONE)
            if fresh.group_id is not None:
                self._group_moves(source, target, fresh)
            self._remove(source, entry, now)
            if fresh.dead_letter_reason is not None and entry.dead_letter_reason is None:
                self.dead_lettered[source.main.name, fresh.dead_letter_reason] += 1
            if target.deleted:
                self.events.append(("warning", f"message {fresh.id} dropped: queue {target.name!r} was deleted"))
            else:
                self._arrive(target, fresh, now)
            self._rearm(source)

        ops = []
        if source.journaled:
            ops.append([R.REMOVE, source.name, entry.key])
        if target.journaled:
            ops.append([R.ENQUEUE, target.name, fresh.to_record()])
        if not ops:
            apply(now)
            return None
        return self.records.add(ops, apply, lambda now: self._unsettle(entry, now))

    # ------------------------------------------------------------------ transactions

    def commit(self, receipts: list[tuple[Entry, int]], entries: list[Entry], now: float) -> int | None:
        """A transaction's receives (completed) and sends (queued), in one record: the record
        to wait for, or None. TransactionError when a lock was lost, QueueFull when a send
        does not fit; either way nothing happened (roll back)."""
        self._check_open()
        for entry, tag in receipts:
            if not self.lock_valid(entry, tag, now):
                raise TransactionError(f"cannot commit: the peek-lock of message {entry.id} was lost")
        copies = [self._journal_copy(e, now) for e in entries if e.journal and not e.queue.numbered]
        if copies:
            entries = entries + copies      # a local message sent with journal=True: its copy
        added: Counter[Queue] = Counter(entry.queue for entry in entries)
        for queue, count in added.items():
            if queue.deleted:
                raise TransactionError(f"cannot commit: queue {queue.name!r} was deleted")
            limit = queue.settings.max_length
            if limit is not None and queue.held + queue.reserved + count > limit:
                raise QueueFull(f"cannot commit: queue {queue.name!r} would exceed max_length={limit}")
        ops: list[list] = []
        for entry, _ in receipts:
            advance(entry, SETTLE)
            entry.before = LOCKED
            if entry.queue.journaled:
                ops.append([R.REMOVE, entry.queue.name, entry.key])
        for entry in entries:
            if entry.queue.numbered:
                self._number(entry.queue, entry)
            if entry.queue.journaled:
                ops.append([R.ENQUEUE, entry.queue.name, entry.to_record()])
        for queue, count in added.items():
            queue.reserved += count

        def apply(now: float) -> None:
            for entry, _ in receipts:
                entry.queue.received += 1
                self._gone(entry.queue, entry, now)
            for queue, count in added.items():
                queue.reserved -= count
            self._arrive_all(entries, now)

        def undo(now: float) -> None:
            for queue, count in added.items():
                queue.reserved -= count
            for entry in entries:
                advance(entry, DROP)        # never queued
            for entry, _ in receipts:
                self._unsettle(entry, now)

        if not ops:
            apply(now)
            return None
        return self.records.add(ops, apply, undo)

    def rollback(self, receipts: list[tuple[Entry, int]], now: float) -> list[int]:
        """A transaction's receives return as failed deliveries: the records to wait for."""
        waits = []
        # last first: each goes back to the front of its queue, so they keep their order
        for entry, tag in reversed(receipts):
            # an expired lock the timer has not handled yet fails here just the same
            if entry.state == LOCKED and entry.tag == tag and not entry.queue.deleted:
                record = self._fail(entry.queue, entry, now)
                if record is not None and record not in waits:
                    waits.append(record)
        return waits

    # ------------------------------------------------------------------ time

    def next_deadline(self) -> float | None:
        """The earliest time handle_timer() has something to do, or None."""
        best = self._timers.next_deadline
        if self._producer_sweep_at < _INF and (best is None or self._producer_sweep_at < best):
            best = self._producer_sweep_at
        return best

    def handle_timer(self, now: float) -> None:
        """Do what is due by `now`: expired time-to-lives, expired locks, ended retry delays."""
        for queue in self._timers.pop_due(now):
            queue.timer_at = _INF
            if queue.deleted:
                continue
            hold = self._hold.get(queue)
            if hold is not None:
                if hold > now:
                    self._schedule(queue, hold)
                    continue
                del self._hold[queue]
            self._due(queue, now)
            self._rearm(queue)
        if self._producer_sweep_at <= now:
            gone = self.producers.expire(now, self.producer_expiry)
            if gone:
                self.events.append(("info", f"forgot {len(gone)} producer(s) silent for "
                                            f"{self.producer_expiry:g} s"))
            self._producer_sweep_at = now + self._producer_sweep_interval() if self.producers.by_pid else _INF

    def _due(self, queue: Queue, now: float) -> None:
        if queue.scheduled:
            self._scheduled_due(queue, now)
        self._expire_due(queue, now)
        for entry in queue.expired_locks(now):
            self._fail(queue, entry, now)
        if queue.kind == RETRY:
            for entry in queue.retries_due(now):
                self._settle_ready(queue, entry)
                self._move(queue, entry, queue.parent, now, retry_at=None)

    def _expire_due(self, queue: Queue, now: float) -> None:
        """Dead-letter every waiting entry of `queue` whose time-to-live ran out by `now`."""
        for entry in queue.expiry.pop_due(now):
            # (indexed when it arrived: a transmission queue may have handed it out since)
            if entry.queue is queue and entry.state == READY and queue.expires(entry):
                self._settle_ready(queue, entry)
                self._dead_letter(queue, entry, EXPIRED, now)

    def _schedule(self, queue: Queue, deadline: float) -> None:
        hold = self._hold.get(queue)
        if hold is not None and deadline < hold:
            deadline = hold
        if deadline < queue.timer_at:
            queue.timer_at = deadline
            self._timers.set(queue, deadline)
            self.deadline_moved = True

    def _rearm(self, queue: Queue) -> None:
        deadline = queue.next_deadline()
        if deadline is not None:
            self._schedule(queue, deadline)

    # ------------------------------------------------------------------ poison

    def _poison_changed(self, main: Queue) -> None:
        """`main`'s ;poison gained or lost an entry: fault or resume delivery."""
        main.faulted = main.settings.receive_error_handling == "fault" and main.poison.held > 0
        if main.faulted and main.waiters:
            main.fail_waiters(self._poison_error(main))

    def _poison_error(self, queue: Queue) -> PoisonMessage:
        first = next(iter(queue.poison.entries()), None)
        message_id = first.id if first is not None else None
        return PoisonMessage(
            f"queue {queue.name!r} stopped delivering: message {message_id} failed "
            f"{queue.settings.attempts_per_message} deliveries; receive it from "
            f"{queue.name + ';poison'!r} to resume", message_id=message_id, queue=queue.name)

    # ------------------------------------------------------------------ the journal's view

    def snapshot(self) -> Iterator[list]:
        """The operations that rebuild the journaled state now. Valid only while no record is
        in flight (records_in_flight == 0): then the state is exactly the journaled one."""
        if self.records.in_flight:
            raise RuntimeError("a snapshot needs every record written first")
        yield self._identity_op()
        for name, settings in self._definitions.items():
            yield [R.DEFINE, name, settings.as_dict()]
        for producer in self.producers:
            yield [R.PRODUCER, producer.name, producer.pid, producer.epoch]
            if producer.floor:
                yield [R.FLOOR, producer.pid, producer.floor]
            for queue, accepted in producer.accepted.items():
                yield [R.ACCEPTED, producer.pid, queue, [list(r) for r in accepted.ranges()]]
        for queue in self._queues.values():
            if queue.numbered:
                yield [R.COUNTER, queue.name, queue.next_sequence]
            if not queue.journaled:
                continue
            for entry in queue.entries():
                record = entry.to_record()
                if entry.state == LOCKED or (entry.state == SETTLING and entry.before == LOCKED):
                    # as journaled: the delivery in progress is not (receives are not journaled)
                    record[RECORD_FIELDS.index("delivery_count")] = entry.delivery_count - 1
                yield [R.ENQUEUE, queue.name, record]

    def live_bytes(self) -> int:
        """About how many bytes a snapshot takes (the compaction trigger's yardstick)."""
        return sum(q.bytes + 96 * q.held for q in self._queues.values() if q.journaled)

    # ------------------------------------------------------------------ closing

    def close(self, error: BaseException) -> None:
        """Refuse everything from now on; every waiter gets `error`."""
        self._closed = True
        for queue in self._queues.values():
            queue.fail_waiters(error)

    @property
    def closed(self) -> bool:
        """True once close() was called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise QueueError("the queue manager is closed")


def _locked(queue: Queue) -> int:
    return len(queue.inflight)


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number of seconds > 0, not {value!r}")
    return float(value)



def check_priority(value: Any) -> int:
    """A message priority: an integer 0..7 (TypeError/ValueError naming `priority`)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"priority must be an integer 0..{MAX_PRIORITY}, not {value!r}")
    if not 0 <= value <= MAX_PRIORITY:
        raise ValueError(f"priority must be 0..{MAX_PRIORITY} (higher is received first), not {value!r}")
    return value


def delivery_time(delay: Any, deliver_at: Any, now: float) -> float | None:
    """The wall-clock time a message becomes visible: `delay` seconds (>= 0) from `now`, or
    `deliver_at` (seconds since the epoch, or an aware datetime); None for at once.
    TypeError/ValueError naming the argument; both given is a ValueError."""
    if delay is not None and deliver_at is not None:
        raise ValueError("give delay or deliver_at, not both")
    if delay is not None:
        if isinstance(delay, timedelta):
            delay = delay.total_seconds()
        if isinstance(delay, bool) or not isinstance(delay, (int, float)):
            raise TypeError(f"delay must be a number of seconds, not {delay!r}")
        if not (delay >= 0 and math.isfinite(delay)):
            raise ValueError(f"delay must be a finite number of seconds >= 0, not {delay!r}")
        return now + float(delay) if delay > 0 else None
    if deliver_at is not None:
        if isinstance(deliver_at, datetime):
            if deliver_at.tzinfo is None:
                raise ValueError("deliver_at must be an aware datetime (with a time zone) or epoch seconds")
            deliver_at = deliver_at.timestamp()
        if isinstance(deliver_at, bool) or not isinstance(deliver_at, (int, float)):
            raise TypeError(f"deliver_at must be epoch seconds (a number) or a datetime, not {deliver_at!r}")
        if not math.isfinite(deliver_at):
            raise ValueError(f"deliver_at must be finite, not {deliver_at!r}")
        return float(deliver_at) if deliver_at > now else None
    return None


#: The longest group_id.
MAX_GROUP_ID = 255


def check_group_id(value: Any) -> str:
    """A group id: a string of 1..255 characters without control characters."""
    if not isinstance(value, str):
        raise TypeError(f"group_id must be a string, not {value!r:.80}")
    if not 0 < len(value) <= MAX_GROUP_ID or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"group_id must be 1..{MAX_GROUP_ID} characters, none of them a control "
                         f"character, not {value!r:.80}")
    return value
