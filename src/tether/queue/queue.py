"""One queue (or sub-queue): the FIFO ready list, peek-locks, receive waiters, counts.

A `Queue` only keeps messages in order and under lock; what happens to a message that
fails, expires or finishes a retry delay is decided by its owner (the queue manager, via
`QueueHooks`), because that may move it to another queue and must be journaled first.

Messages leave the ready list lazily: one that expires while waiting stays in the deque,
marked, and is skipped by `take()`; stale entries are compacted once they dominate.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Iterator, Protocol

from ..errors import PoisonMessage
from .deadletter import ExpiryIndex
from .message import GONE, LOCKED, READY, SETTLING, Message
from .settings import QueueSettings

MAIN = "main"
RETRY = "retry"
POISON = "poison"

_INF = float("inf")
_STALE_SLACK = 1024


class QueueHooks(Protocol):
    """What a queue asks of its queue manager."""

    def schedule(self, deadline: float, queue: "Queue") -> None: ...

    def expire(self, queue: "Queue", message: Message, now: float) -> None: ...

    def lock_expired(self, queue: "Queue", message: Message, now: float) -> None: ...

    def retry_due(self, queue: "Queue", message: Message, now: float) -> None: ...

    def count_dead_letter(self, source: str, delta: int) -> None: ...


class Queue:
    """Messages of one queue: ready (FIFO), in flight (peek-locked), and who waits."""

    __slots__ = (
        "name", "settings", "kind", "parent", "journaled", "ready", "depth", "inflight",
        "held", "bytes", "reserved", "waiters", "expiry", "retry", "poison", "deleted",
        "faulted", "_hooks", "_timer_at", "_validity", "_indexes_expiry", "_sweep_countdown",
    )

    def __init__(self, name: str, settings: QueueSettings, hooks: QueueHooks, *,
                 journaled: bool, kind: str = MAIN, parent: "Queue | None" = None) -> None:
        self.name = name
        self.settings = settings
        self.kind = kind
        self.parent = parent
        self.journaled = journaled
        self.ready: deque[Message] = deque()
        self.depth = 0                      # READY messages in `ready`
        self.inflight: dict[str, Message] = {}   # locked or settling, in lock order
        self.held = 0                       # every message whose home is this queue
        self.bytes = 0                      # their body bytes
        self.reserved = 0                   # sends submitted to the journal, not yet here
        self.waiters: deque[tuple[asyncio.Future, Any]] = deque()
        self.expiry = ExpiryIndex()
        self.retry: Queue | None = None
        self.poison: Queue | None = None
        self.deleted = False
        #: receive_error_handling="fault" and a poison message awaits handling in ;poison
        self.faulted = False
        self._hooks = hooks
        self._timer_at = _INF
        self._validity = settings.validity_duration
        # dead letters sitting in ;poison do not expire; everything else with a TTL does
        self._indexes_expiry = kind != POISON
        self._sweep_countdown = _STALE_SLACK

    # ---- names and state ----

    @property
    def main(self) -> "Queue":
        """The main queue this (sub-)queue belongs to."""
        return self.parent if self.parent is not None else self

    def _poison_changed(self) -> None:
        """Our ;poison sub-queue gained or lost a message: fault or resume delivery."""
        self.faulted = (self.settings.receive_error_handling == "fault"
                        and self.poison is not None and self.poison.held > 0)
        if self.faulted and self.waiters:
            self.fail_waiters(self.poison_error())

    def poison_error(self) -> PoisonMessage:
        """The PoisonMessage that receivers of a faulted queue get."""
        first = next(iter(self.poison.messages()), None)
        message_id = first.id if first is not None else None
        return PoisonMessage(
            f"queue {self.name!r} stopped delivering: message {message_id} failed "
            f"{self.settings.attempts_per_message} deliveries; receive it from "
            f"{self.name + ';poison'!r} to resume", message_id=message_id, queue=self.name)

    def messages(self) -> Iterator[Message]:
        """Every message held here (in flight first, then ready), oldest first."""
        for message in self.inflight.values():
            yield message
        for message in self.ready:
            if message._home is self and message._state != GONE:
                yield message

    # ---- arriving ----

    def accept(self, message: Message) -> None:
        """Add a message at the back (a send, a move from another queue)."""
        # the hot path of every send: _track() and the ExpiryIndex append are inlined
        message._home = self
        message._state = READY
        message._owner = None
        self.held += 1
        self.bytes += len(message.body)
        if message.dead_letter_source is not None:
            self._hooks.count_dead_letter(message.dead_letter_source, 1)
        expires_at = message.expires_at
        if expires_at is not None and self._indexes_expiry:
            expiry = self.expiry
            if expires_at >= expiry.tail:
                expiry.fifo.append(message)
                expiry.tail = expires_at
            else:
                expiry.add(message)
            if expires_at < self._timer_at:
                self._schedule(expires_at)
        if self.kind is not MAIN:
            self._track_subqueue(message)
        if self.waiters and self._hand_off(message):
            return
        self.ready.append(message)
        self.depth += 1

    def _track_subqueue(self, message: Message) -> None:
        if self.kind == POISON:
            self.parent._poison_changed()
        elif message.retry_at is not None and message.retry_at < self._timer_at:
            self._schedule(message.retry_at)

    def accept_reserved(self, message: Message) -> None:
        """accept() for a send whose slot was reserved (max_length) before journaling."""
        self.reserved -= 1
        if not self.deleted:
            self.accept(message)

    def _track(self, message: Message) -> None:
        """Index a message (back in the queue) for its expiry and retry time."""
        expires_at = message.expires_at
        if expires_at is not None and self._indexes_expiry:
            self.expiry.add(message)
            if expires_at < self._timer_at:
                self._schedule(expires_at)
        if self.kind == RETRY and message.retry_at is not None and message.retry_at < self._timer_at:
            self._schedule(message.retry_at)

    def returned(self, old: Message, fresh: Message) -> None:
        """`fresh` replaces the locked `old` and is redelivered first (an immediate retry)."""
        if self.inflight.get(old.id) is old:
            del self.inflight[old.id]
        old._state = GONE
        fresh._home = self
        fresh._state = READY
        fresh._owner = None
        self._track(fresh)
        if self.waiters and self._hand_off(fresh):
            return
        self.ready.appendleft(fresh)
        self.depth += 1

    def _hand_off(self, message: Message) -> bool:
        """Give a message to the longest-waiting receiver; False when none is waiting."""
        if self.faulted:
            return False
        waiters = self.waiters
        while waiters:
            future, owner = waiters.popleft()
            if future.done():
                continue
            self.lock(message, owner, time.time())
            future.set_result(message)
            return True
        return False

    # ---- receiving ----

    def take(self, owner: Any, now: float) -> Message | None:
        """The first ready message, now locked by `owner`; None when there is none."""
        ready = self.ready
        while ready:
            message = ready.popleft()
            if message._state == READY and message._home is self:
                self.depth -= 1
                # lock() inlined: this is the hot path of every receive
                message._state = LOCKED
                message._owner = owner
                message.delivery_count += 1
                deadline = message._lock_deadline = now + self._validity
                self.inflight[message.id] = message
                if deadline < self._timer_at:
                    self._schedule(deadline)
                return message
        return None

    def lock(self, message: Message, owner: Any, now: float) -> None:
        """Peek-lock a message for `owner` until now + validity_duration."""
        message._state = LOCKED
        message._owner = owner
        message.delivery_count += 1
        deadline = message._lock_deadline = now + self._validity
        self.inflight[message.id] = message
        if deadline < self._timer_at:
            self._schedule(deadline)

    def unlock_undelivered(self, message: Message) -> None:
        """Undo a lock whose receiver vanished before seeing the message (cancelled)."""
        if message._state != LOCKED or self.inflight.get(message.id) is not message:
            return
        del self.inflight[message.id]
        message.delivery_count -= 1
        message._state = READY
        message._owner = None
        if self.waiters and self._hand_off(message):
            return
        self.ready.appendleft(message)
        self.depth += 1

    def wait(self, owner: Any, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        """A future that a later message (locked for `owner`) or an error resolves."""
        future = loop.create_future()
        self.waiters.append((future, owner))
        return future

    def forget_waiter(self, future: asyncio.Future) -> None:
        """Remove a timed-out or cancelled waiter."""
        for i, (f, _) in enumerate(self.waiters):
            if f is future:
                del self.waiters[i]
                return

    def fail_waiters(self, error: BaseException) -> None:
        """Every waiting receiver gets `error` (fault, deletion, shutdown)."""
        waiters, self.waiters = self.waiters, deque()
        for future, _ in waiters:
            if not future.done():
                future.set_exception(error)

    # ---- leaving ----

    def settle_ready(self, message: Message) -> None:
        """A waiting message is being moved away (expiry, retry due): no longer takeable."""
        message._state = SETTLING
        self.depth -= 1

    def remove(self, message: Message) -> None:
        """The message left this queue for good (completed, moved, dropped)."""
        if message._home is not self or message._state == GONE:
            return
        if self.inflight.pop(message.id, None) is None and message._state == READY:
            self.depth -= 1          # dropped while waiting (stays in the deque as stale)
        message._state = GONE
        self.held -= 1
        self.bytes -= len(message.body)
        if message.dead_letter_source is not None:
            self._hooks.count_dead_letter(message.dead_letter_source, -1)
        if self.kind is POISON:
            self.parent._poison_changed()
        self._sweep_countdown -= 1
        if not self._sweep_countdown:
            self._sweep()

    def _sweep(self) -> None:
        """Drop stale index and ready-list entries once they clearly outnumber live ones
        (checked every _STALE_SLACK removals, so memory follows the live messages)."""
        self._sweep_countdown = _STALE_SLACK
        held = self.held
        expiry = self.expiry
        fifo = expiry.fifo
        # Messages mostly leave in the order they came: drop the stale head of the expiry
        # FIFO in place (cheap), so the full rebuild below rarely has anything to do.
        while fifo and (fifo[0]._home is not self or fifo[0]._state != READY):
            fifo.popleft()
        if not fifo:
            expiry.tail = -_INF
        expiry.maybe_compact(held, self._still_waiting)
        if len(self.ready) > 2 * self.depth + _STALE_SLACK:
            self.ready = deque(m for m in self.ready if m._home is self and m._state != GONE)

    def _still_waiting(self, message: Message) -> bool:
        return message._home is self and message._state == READY

    def drop_all(self, error: BaseException) -> None:
        """The queue is deleted: every message is gone, every waiter gets `error`."""
        self.deleted = True
        for message in list(self.messages()):
            self.remove(message)
        self.ready.clear()
        self.depth = 0
        self.fail_waiters(error)

    # ---- time ----

    def _schedule(self, deadline: float) -> None:
        self._timer_at = deadline
        self._hooks.schedule(deadline, self)

    def next_deadline(self) -> float | None:
        """The earliest time something may be due here."""
        best = self.expiry.next_deadline() if self._indexes_expiry else None
        for message in self.inflight.values():
            if message._state == LOCKED:
                if best is None or message._lock_deadline < best:
                    best = message._lock_deadline
                break
        if self.kind == RETRY:
            ready = self.ready
            while ready and not (ready[0]._home is self and ready[0]._state != GONE):
                ready.popleft()
            for message in ready:
                if message._state == READY:
                    if best is None or message.retry_at < best:
                        best = message.retry_at
                    break
        return best

    def on_timer(self, now: float) -> None:
        """Handle whatever is due: expired TTLs, expired locks, finished retry delays."""
        self._timer_at = _INF
        if self.deleted:
            return
        hooks = self._hooks
        for message in self.expiry.pop_due(now):
            if message._home is self and message._state == READY:
                hooks.expire(self, message, now)
        expired_locks = []
        for message in self.inflight.values():
            if message._state != LOCKED:
                continue
            if message._lock_deadline > now:
                break
            expired_locks.append(message)
        for message in expired_locks:
            hooks.lock_expired(self, message, now)
        if self.kind == RETRY:
            due = []
            for message in self.ready:      # in retry_at order
                if message._home is self and message._state == READY:
                    if message.retry_at is not None and message.retry_at > now:
                        break
                    due.append(message)
            for message in due:
                hooks.retry_due(self, message, now)
        deadline = self.next_deadline()
        if deadline is not None and deadline < self._timer_at:
            self._schedule(deadline)

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} depth={self.depth} in_flight={len(self.inflight)}>"
