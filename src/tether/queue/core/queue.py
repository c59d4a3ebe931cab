"""`Queue`: one queue or sub-queue of the core: its ready lists (one FIFO per priority in an
application queue, one FIFO elsewhere), its scheduled entries (a heap by delivery time), its
locked entries, its receive waiters and its counts. A data structure only: what happens to an entry that
fails, expires or ends a retry delay is decided by the engine (engine.py), which may move
it to another queue and must journal that first.

Entries leave the ready list lazily: one that is settled while waiting keeps its slot
(`in_ready`) and is skipped by `take()`; stale slots are swept once they dominate, so memory
follows the live entries.
"""
from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from collections.abc import Iterator
from typing import Protocol

from .entry import MAX_PRIORITY, Entry
from .expiry import ExpiryIndex
from .groups import Group
from .lifecycle import GONE, LOCKED, READY, SCHEDULED
from .settings import QueueSettings

MAIN = "main"
RETRY = "retry"
POISON = "poison"

_STALE_SLACK = 1024
_INF = float("inf")


class Waiter(Protocol):
    """A receiver waiting for a message (the adapter's: a future, a simulated consumer)."""

    def hand(self, entry: Entry) -> None:
        """`entry` is now locked for this waiter (its `tag` names the lock)."""

    def fail(self, error: BaseException) -> None:
        """The wait ended with `error` (the queue faulted, was deleted, or the core closed)."""


class Queue:
    """Entries of one queue: ready (FIFO per priority), scheduled (by delivery time), locked
    (in lock order), and who waits."""

    __slots__ = (
        "name", "settings", "kind", "parent", "journaled", "app", "levels", "top", "scheduled", "groups",
        "available", "group_waiters", "depth",
        "inflight", "held",
        "bytes", "reserved", "waiters", "expiry", "retry", "poison", "deleted", "faulted",
        "timer_at", "validity", "indexes_expiry", "numbered", "next_sequence", "numbers", "_sweep_countdown",
        "sent", "received",
    )

    def __init__(self, name: str, settings: QueueSettings, *, journaled: bool, kind: str = MAIN,
                 parent: Queue | None = None) -> None:
        self.name = name
        self.settings = settings
        self.kind = kind
        self.parent = parent
        self.journaled = journaled
        #: an application queue: priorities order it and delivery times hold messages back
        #: (sub-queues, $dead, transmission and return queues are plain FIFOs)
        self.app = kind == MAIN and not name.startswith("$")
        #: the ready lists: by priority (index = priority) in an application queue, else one
        self.levels: list[deque[Entry]] = [deque() for _ in range(MAX_PRIORITY + 1 if self.app else 1)]
        self.top = 0                                # no list above this index holds anything
        #: SCHEDULED entries: (deliver_at, key, entry), a heap
        self.scheduled: list[tuple[float, int, Entry]] = []
        #: an application queue's groups (groups.py) by group_id; those available to a new
        #: holder, in the order they became so; and who waits for one (accept_group)
        self.groups: dict[str, Group] = {}
        self.available: OrderedDict[Group, None] = OrderedDict()
        self.group_waiters: OrderedDict[Waiter, None] = OrderedDict()
        self.depth = 0                              # READY entries in the ready lists
        self.inflight: dict[int, Entry] = {}        # key -> locked (or settling) entry, lock order
        self.held = 0                               # every entry whose queue is this one
        self.bytes = 0                              # their body bytes
        self.reserved = 0                           # sends being journaled, not yet here
        self.waiters: OrderedDict[Waiter, None] = OrderedDict()   # O(1) removal of any waiter
        self.expiry = ExpiryIndex()
        self.retry: Queue | None = None
        self.poison: Queue | None = None
        self.deleted = False
        #: receive_error_handling="fault" and a poison message waits in ;poison
        self.faulted = False
        self.timer_at = float("inf")                # the deadline armed for this queue
        self.validity = settings.validity_duration
        # dead letters sitting in ;poison do not expire; everything else with a TTL does
        self.indexes_expiry = kind != POISON
        #: a transmission queue numbers what joins it (the forwarder's producer sequence)
        self.numbered = False
        self.next_sequence = 1
        #: a transmission queue and its ;retry: (sequence, id, entry) of every entry held
        #: or being sent there, a heap cleaned lazily (the forwarder's floor, lowest_sequence)
        self.numbers: list[tuple[int, int, Entry]] | None = None
        self._sweep_countdown = _STALE_SLACK
        #: messages that joined this queue by a send (or a forward, or a commit), and that
        #: left it completed by a receiver, since the core started (tether.metrics reads them)
        self.sent = 0
        self.received = 0

    @property
    def main(self) -> Queue:
        """The main queue this (sub-)queue belongs to."""
        return self.parent if self.parent is not None else self

    def entries(self) -> Iterator[Entry]:
        """Every entry held here, once (locked or settling first, then ready, then scheduled).
        (One settling after READY keeps its ready-list slot; it is listed as settling.)"""
        yield from self.inflight.values()
        yield from self.ready_entries()
        for _, _, entry in sorted(self.scheduled, key=lambda s: (s[0], s[1])):
            if entry.queue is self and entry.state == SCHEDULED:
                yield entry

    def ready_entries(self) -> Iterator[Entry]:
        """The entries waiting to be taken, in the order they will be (then each group's,
        in its order)."""
        for level in range(len(self.levels) - 1, -1, -1):
            for entry in self.levels[level]:
                if entry.queue is self and entry.state == READY:
                    yield entry
        for group in list(self.groups.values()):
            yield from group.ready_entries()

    def group_of(self, entry: Entry, create: bool = True) -> Group | None:
        """The group `entry` belongs to here (made on first use), or None: only messages of
        application queues sent with a group_id are grouped (a dead letter never is)."""
        group_id = entry.group_id
        if group_id is None or not self.app or entry.dead_letter_reason is not None:
            return None
        group = self.groups.get(group_id)
        if group is None and create:
            group = self.groups[group_id] = Group(group_id, self)
        return group

    def forget_group(self, group: Group) -> None:
        """Drop an idle group (it is made again by its next message)."""
        if group.idle and self.groups.get(group.group_id) is group:
            del self.groups[group.group_id]
            self.available.pop(group, None)

    # ---- arriving ----

    def add(self, entry: Entry, *, front: bool = False) -> None:
        """Hold `entry` (READY) at the back of the ready list, or at the front."""
        entry.queue = self
        self.held += 1
        self.bytes += len(entry.body)
        self.index(entry)
        self.push_ready(entry, front)

    def push_ready(self, entry: Entry, front: bool = False) -> None:
        """Put a READY entry of this queue in its ready list (it has no slot there): at the
        back of its priority's list, or at the front."""
        entry.in_ready = True
        self.depth += 1
        if entry.group_id is not None and self.app and entry.dead_letter_reason is None:
            self.group_of(entry).push(entry)        # (the engine offers the group)
            return
        level = entry.priority if self.app else 0
        if level > self.top:
            self.top = level
        if front:
            self.levels[level].appendleft(entry)
        else:
            self.levels[level].append(entry)

    def admit_ready(self, entries: list[Entry], start: int) -> tuple[int, float]:
        """In an application queue nobody waits on: hold entries[start:] as add() each
        would, READY at the back of their priority's list and indexed for expiry, until one
        that is not plain (a delivery time, a group, a dead-letter source: the engine
        admits that one). Returns (the index after the last one held, the earliest
        expires_at indexed or inf). One call for a written batch of sends."""
        levels = self.levels
        top = self.top
        index_expiry = self.expiry.add
        earliest = _INF
        size = 0
        i = start
        n = len(entries)
        while i < n:
            entry = entries[i]
            if entry.deliver_at is not None or entry.group_id is not None or entry.dead_letter_source is not None:
                break
            entry.state = READY
            entry.queue = self
            entry.in_ready = True
            size += len(entry.body)
            expires_at = entry.expires_at
            if expires_at is not None:          # (no application queue is numbered: it expires here)
                index_expiry(entry)
                if expires_at < earliest:
                    earliest = expires_at
            level = entry.priority
            if level > top:
                top = level
            levels[level].append(entry)
            i += 1
        self.top = top
        count = i - start
        self.held += count
        self.depth += count
        self.bytes += size
        return i, earliest

    def schedule(self, entry: Entry) -> None:
        """Hold a SCHEDULED entry until its deliver_at."""
        heapq.heappush(self.scheduled, (entry.deliver_at, entry.key, entry))

    def scheduled_due(self, now: float) -> list[Entry]:
        """The SCHEDULED entries whose delivery time came by `now`, earliest first (they
        leave the heap: the caller makes them READY)."""
        due = []
        scheduled = self.scheduled
        while scheduled and scheduled[0][0] <= now:
            entry = heapq.heappop(scheduled)[2]
            if entry.queue is self and entry.state == SCHEDULED:
                due.append(entry)
        return due

    def expires(self, entry: Entry) -> bool:
        """True when `entry`'s time-to-live is enforced here. Not in ;poison (dead letters
        wait), and not for a message a transmission queue (or its ;retry) ever handed out:
        it may have reached its target, which alone knows, so the forwarder sends it and
        the target answers "expired" only if it never had it."""
        if entry.expires_at is None or not self.indexes_expiry:
            return False
        return not (entry.handed and self.main.numbers is not None)

    def index(self, entry: Entry) -> None:
        """Index `entry` for its expiry time."""
        if self.expires(entry):
            self.expiry.add(entry)

    # ---- taking ----

    def take(self) -> Entry | None:
        """Pop the first READY entry of the highest priority (the caller locks it); None
        when there is none."""
        levels = self.levels
        level = self.top
        while level >= 0:
            ready = levels[level]
            while ready:
                entry = ready.popleft()
                entry.in_ready = False
                if entry.state == READY and entry.queue is self:
                    self.depth -= 1
                    self.top = level
                    return entry
            level -= 1
        self.top = 0
        return None

    def lock(self, entry: Entry, tag: int, now: float) -> None:
        """Record `entry` (already LOCKED) as locked until now + validity_duration."""
        entry.tag = tag
        entry.delivery_count += 1
        entry.lock_deadline = now + self.validity
        self.inflight[entry.key] = entry

    def relock(self, entry: Entry, now: float) -> None:
        """Extend `entry`'s lock to now + validity_duration. It moves to the end of the
        locked entries, which stay in deadline order (expired_locks relies on it)."""
        entry.lock_deadline = now + self.validity
        del self.inflight[entry.key]
        self.inflight[entry.key] = entry

    def unlock(self, entry: Entry) -> None:
        """`entry` is no longer locked (released, or returned for an immediate retry)."""
        self.inflight.pop(entry.key, None)

    def waiting(self, entry: Entry) -> None:
        """A READY entry stops being takeable while its move is journaled."""
        self.depth -= 1
        group = self.group_of(entry, create=False)
        if group is not None:
            group.depth -= 1
            # its heap slot goes stale: if the move fails it is offered to the group afresh
            # (the group may have been forgotten meanwhile)
            entry.in_ready = False
            if not group.depth:
                self.available.pop(group, None)

    def waiting_again(self, entry: Entry) -> None:
        """A READY entry that kept its slot (waiting()) is takeable again (its move failed)."""
        self.depth += 1

    # ---- leaving ----

    def remove(self, entry: Entry) -> None:
        """`entry` left this queue for good (its state is GONE)."""
        self.inflight.pop(entry.key, None)
        self.held -= 1
        self.bytes -= len(entry.body)
        self._sweep_countdown -= 1
        if not self._sweep_countdown:
            self._sweep()

    def _sweep(self) -> None:
        """Drop stale index and ready-list slots once they clearly outnumber live ones."""
        self._sweep_countdown = _STALE_SLACK
        expiry = self.expiry
        fifo = expiry.fifo
        # entries mostly leave in the order they came: drop the stale head in place first
        while fifo and not self._still_held(fifo[0]):
            fifo.popleft()
        if not fifo:
            expiry.tail = -float("inf")
        expiry.maybe_compact(self.held, self._still_held)
        if sum(map(len, self.levels)) > 2 * self.depth + _STALE_SLACK:
            for level, ready in enumerate(self.levels):
                keep = deque()
                for entry in ready:
                    if entry.queue is self and entry.state != GONE and entry.in_ready:
                        keep.append(entry)
                    else:
                        entry.in_ready = False
                self.levels[level] = keep

    def _still_held(self, entry: Entry) -> bool:
        # a locked (or settling) entry keeps its expiry: it may come back READY
        return entry.queue is self and entry.state != GONE

    # ---- waiters ----

    def add_waiter(self, waiter: Waiter) -> None:
        self.waiters[waiter] = None

    def remove_waiter(self, waiter: Waiter) -> bool:
        """Forget a waiter (timed out, cancelled); O(1). False if it was not waiting."""
        return self.waiters.pop(waiter, 0) is None

    def next_waiter(self) -> Waiter | None:
        """Pop the longest-waiting receiver, or None."""
        if not self.waiters:
            return None
        return self.waiters.popitem(last=False)[0]

    def fail_waiters(self, error: BaseException) -> None:
        """Every waiting receiver gets `error` (those waiting for a group, or in one, too)."""
        waiters, self.waiters = self.waiters, OrderedDict()
        for waiter in waiters:
            waiter.fail(error)
        waiters, self.group_waiters = self.group_waiters, OrderedDict()
        for waiter in waiters:
            waiter.fail(error)
        for group in list(self.groups.values()):
            waiters, group.waiters = group.waiters, OrderedDict()
            for waiter in waiters:
                waiter.fail(error)

    # ---- time ----

    def next_deadline(self) -> float | None:
        """The earliest time something may be due here: an expiry, a lock, a retry delay, a
        delivery time."""
        best = self.expiry.next_deadline() if self.indexes_expiry else None
        if self.scheduled and (best is None or self.scheduled[0][0] < best):
            best = self.scheduled[0][0]
        for entry in self.inflight.values():
            if entry.state == LOCKED:
                if best is None or entry.lock_deadline < best:
                    best = entry.lock_deadline
                break
        if self.kind == RETRY:
            for entry in self.ready_entries():
                if entry.retry_at is not None and (best is None or entry.retry_at < best):
                    best = entry.retry_at
                break
        return best

    def number(self, entry: Entry) -> None:
        """Keep `entry`'s sequence among this queue's numbers (held, or being sent here).
        (A message back from ;retry is a new entry with the same key and sequence: ties
        are broken by identity, never by comparing entries.)"""
        heapq.heappush(self.numbers, (entry.sequence, id(entry), entry))

    def lowest_sequence(self) -> int | None:
        """The lowest `sequence` of an entry held here or in ;retry, in any state, or being
        sent here (;poison is left out): the order entries sit in says nothing about it
        (a released one goes to the front, one back from ;retry to the back)."""
        best = None
        for queue in (self, self.retry):
            numbers = queue.numbers
            while numbers and not queue._holds(numbers[0][2]):
                heapq.heappop(numbers)
            if len(numbers) > 2 * (queue.held + queue.reserved) + _STALE_SLACK:
                numbers[:] = [n for n in numbers if queue._holds(n[2])]
                heapq.heapify(numbers)
            if numbers and (best is None or numbers[0][0] < best):
                best = numbers[0][0]
        return best

    def _holds(self, entry: Entry) -> bool:
        return entry.queue is self and entry.state != GONE

    def expired_locks(self, now: float) -> list[Entry]:
        """Locked entries whose peek-lock ran out by `now`."""
        due = []
        for entry in self.inflight.values():
            if entry.state != LOCKED:
                continue
            if entry.lock_deadline > now:
                break
            due.append(entry)
        return due

    def retries_due(self, now: float) -> list[Entry]:
        """In a `;retry` sub-queue: the entries whose retry delay ended by `now`."""
        due = []
        for entry in self.ready_entries():
            if entry.retry_at is not None and entry.retry_at > now:
                break
            due.append(entry)
        return due

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} depth={self.depth} in_flight={len(self.inflight)}>"

