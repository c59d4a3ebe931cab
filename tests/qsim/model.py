"""The reference model of one queue manager: what `QueueCore` should do, worked out on its
own from the documented rules (retry rule, dead-letter targets, idempotent producers,
journal-before-effect), message by message.

The harness asks the model first and the core second, and compares: every answer (a
record number, an error, a take), every hand-off to a waiting receiver, every counter.
Where the core may choose (which of several messages arriving in one record a waiter
gets), the model checks that the choice is legal instead of predicting it.

Each message also has a *durable* view: where the journal has it, with which counts.
Effects reach it when their record is written (or survives a crash); a crash turns the
durable view into the live one, which is what recovery must rebuild.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tether.errors import LockLost, ProducerFenced, QueueFull, QueueMessageTooLarge, QueueNotFound, TransactionError
from tether.queue.core.engine import STORAGE_RETRY_DELAY
from tether.queue.core.settings import QueueSettings
from tether.queue.core.system_queues import DEAD_LETTER_SETTINGS

READY = "ready"
LOCKED = "locked"
SETTLING = "settling"
MAIN = "main"
RETRY = "retry"
POISON = "poison"

DEAD = "$dead"
XMIT = "$xmit:"
RETURN = "$return:"

# outcomes of a message copy that left every queue
COMPLETED = "completed"
DROPPED_POISON = "dropped: poison (drop)"
DROPPED_EXPIRED = "dropped: expired (dead_letter_queue none)"
DROPPED_REJECTED = "dropped: rejected (dead_letter_queue none)"
LOST_VOLATILE = "lost: volatile queue, crash"


class Expected(Exception):
    """The error the model expects from the core (compared by class)."""

    def __init__(self, kind: type) -> None:
        super().__init__(kind.__name__)
        self.kind = kind


class Msg:
    """One message in one queue manager, as the model sees it."""

    __slots__ = (
        "mid", "sender", "index", "producer", "seq", "number", "queue", "state", "before", "attempts",
        "deliveries", "expires_at", "retry_at", "reason", "source", "origin", "destination", "tag",
        "lock_deadline", "holder", "durable", "acked", "outcome", "taken", "handed", "poisoned",
        "body", "sent_to", "sending", "sent_expires_at", "durable_outcome", "left_xmit",
    )

    def __init__(self, mid: int, body: bytes, sender: str) -> None:
        self.mid = mid
        self.body = body
        self.sender = sender          # who sent it first (order is checked per sender)
        self.index = -1               # its place in arrival order (sends only)
        self.producer: bytes | None = None
        self.seq = -1                 # producer sequence
        self.number = 0               # transmission-queue sequence
        self.queue: str | None = None
        self.state = READY
        self.before = READY
        self.attempts = 0
        self.deliveries = 0           # mirrors Entry.delivery_count
        self.expires_at: float | None = None
        self.retry_at: float | None = None
        self.reason: str | None = None
        self.source: str | None = None
        self.origin: str | None = None
        self.destination: str | None = None
        self.tag = 0
        self.lock_deadline = 0.0
        self.holder: Any = None
        #: (queue, attempts, deliveries, expires_at, retry_at, reason, source) in the journal
        self.durable: tuple | None = None
        self.durable_outcome: str | None = None   # how the journal says it left (durable None)
        #: taken from a transmission queue at least once: it may have reached its target,
        #: so only the target decides whether it expired (QueueCore: Entry.handed)
        self.left_xmit = False
        self.acked = False            # its sender was told it is queued
        self.outcome: str | None = None
        self.taken = False            # delivered at least once (first-delivery order)
        self.handed = 0               # deliveries the application really got (this life)
        self.poisoned = False         # receive_error_handling applied to it
        self.sent_to: str | None = None   # the queue it was sent (or forwarded) to, once queued
        self.sending = False          # its send is in a record not yet written
        self.sent_expires_at: float | None = None   # the expiry it was sent with

    def __repr__(self) -> str:
        return (f"<m{self.mid} {self.queue} {self.state} attempts={self.attempts} deliveries={self.deliveries}"
                f" outcome={self.outcome}>")


class MQueue:
    """One queue or sub-queue."""

    __slots__ = ("name", "settings", "kind", "main", "journaled", "members", "reserved", "waiters", "hold",
                 "numbered", "next_number", "durable_number")

    def __init__(self, name: str, settings: QueueSettings, kind: str, main: str, journaled: bool) -> None:
        self.name = name
        self.settings = settings
        self.kind = kind
        self.main = main
        self.journaled = journaled
        self.members: dict[int, Msg] = {}
        self.reserved = 0
        self.waiters: dict[Any, None] = {}      # in arrival order
        self.hold = 0.0
        self.numbered = name.startswith(XMIT) and kind == MAIN
        self.next_number = 1
        self.durable_number = 1

    def count(self, state: str) -> int:
        return sum(1 for m in self.members.values() if m.state == state)


class MProducer:
    """One idempotent producer's state at this queue manager: live and durable."""

    __slots__ = ("name", "epoch", "floor", "accepted", "pending", "owners", "durable_epoch", "durable_floor",
                 "durable_accepted", "durable_owners")

    def __init__(self, name: bytes, epoch: int) -> None:
        self.name = name
        self.epoch = epoch
        self.floor = 0
        self.accepted: dict[str, set[int]] = {}       # trimmed below the floor, as the core's
        self.pending: dict[tuple[str, int], int] = {}
        self.owners: dict[tuple[str, int], int] = {}  # (queue, seq) -> mid queued with it, never trimmed
        self.durable_epoch: int | None = None
        self.durable_floor = 0
        self.durable_accepted: dict[str, set[int]] = {}
        self.durable_owners: dict[tuple[str, int], int] = {}

    @property
    def next_sequence(self) -> int:
        high = self.floor
        for seqs in self.accepted.values():
            if seqs:
                high = max(high, max(seqs) + 1)
        for _, seq in self.pending:
            high = max(high, seq + 1)
        return high


class Pending:
    """The model's side of one journal record: effects to apply once it is written, to
    make durable when it is (or survives a crash), to undo when it failed."""

    __slots__ = ("number", "applies", "durables", "undos")

    def __init__(self, number: int) -> None:
        self.number = number
        self.applies: list[Callable[[float], None]] = []
        self.durables: list[Callable[[], None]] = []
        self.undos: list[Callable[[float], None]] = []


class Model:
    """Everything one queue manager holds, as it should be (see the module docstring).
    `fail(text)` reports a rule the model itself sees broken (a poison message delivered
    too often, a message queued twice)."""

    def __init__(self, fail: Callable[[str], None], journaled: bool = True) -> None:
        self.fail = fail
        self.journaled = journaled
        self.queues: dict[str, MQueue] = {}
        self.defined: dict[str, QueueSettings] = {}            # live definitions (main queues)
        self.durable_defined: dict[str, QueueSettings] = {}
        self.msgs: dict[int, Msg] = {}
        self.producers: dict[bytes, MProducer] = {}
        self.records: dict[int, Pending] = {}
        self.open: Pending | None = None
        self.next_number = 1
        #: where a transmission queue's numbering starts in this life (opened())
        self.numbering_floor = 1
        self.arrivals = 0
        self.crashed_once = False
        self.releases = 0
        self.defining: dict[str, int] = {}         # definitions being journaled: record
        #: waiters the core must fail now (their queue faulted), checked by the harness
        self.failing_waiters: dict[Any, None] = {}
        self._make(DEAD, DEAD_LETTER_SETTINGS)

    # ---------------------------------------------------------------- records

    def _record(self) -> Pending:
        if self.open is None:
            self.open = Pending(self.next_number)
            self.next_number += 1
        return self.open

    def journal(self, apply: Callable[[float], None] | None, durable: Callable[[], None] | None,
                undo: Callable[[float], None] | None) -> int:
        """Effects of one operation joining the open record; its number."""
        record = self._record()
        if apply is not None:
            record.applies.append(apply)
        if durable is not None:
            record.durables.append(durable)
        if undo is not None:
            record.undos.append(undo)
        return record.number

    def cut(self) -> int | None:
        record, self.open = self.open, None
        if record is None:
            return None
        self.records[record.number] = record
        return record.number

    def written(self, number: int, now: float) -> None:
        record = self.records.pop(number)
        for durable in record.durables:
            durable()
        for apply in record.applies:
            apply(now)

    def failed(self, number: int, now: float) -> None:
        record = self.records.pop(number)
        for undo in reversed(record.undos):
            undo(now)

    def survived(self, number: int) -> None:
        """A record in flight at a crash made it to disk after all."""
        record = self.records.pop(number)
        for durable in record.durables:
            durable()

    # ---------------------------------------------------------------- queues

    def opened(self, now: float) -> None:
        """The queue manager opened at `now`: its transmission queues number from at least
        `now` in microseconds (so a restored older journal never reuses a number)."""
        self.numbering_floor = max(1, int(now * 1_000_000))
        for q in self.queues.values():
            if q.numbered:
                q.next_number = max(q.next_number, self.numbering_floor)

    def _make(self, name: str, settings: QueueSettings) -> None:
        journaled = self.journaled and settings.durable
        self.queues[name] = MQueue(name, settings, MAIN, name, journaled)
        if self.queues[name].numbered:
            self.queues[name].next_number = self.numbering_floor
        self.queues[name + ";retry"] = MQueue(name + ";retry", settings, RETRY, name, journaled)
        self.queues[name + ";poison"] = MQueue(name + ";poison", settings, POISON, name, journaled)

    def define(self, name: str, settings: QueueSettings) -> int | None:
        if name in self.defined:
            return None
        if name in self.defining:
            return self.defining[name]

        def apply(now: float) -> None:
            self.defining.pop(name, None)
            self.defined[name] = settings
            self._make(name, settings)

        def durable() -> None:
            self.durable_defined[name] = settings

        def undo(now: float) -> None:
            self.defining.pop(name, None)

        number = self.journal(apply, durable, undo)
        self.defining[name] = number
        return number

    def main(self, queue: MQueue) -> MQueue:
        return self.queues[queue.main]

    def faulted(self, queue: MQueue) -> bool:
        main = self.main(queue)
        return (queue.kind == MAIN and main.settings.receive_error_handling == "fault"
                and len(self.queues[main.name + ";poison"].members) > 0)

    def held(self, queue: MQueue) -> int:
        return len(queue.members)

    # ---------------------------------------------------------------- arriving and leaving

    def arrive(self, msg: Msg, queue: MQueue) -> None:
        """`msg` joins `queue` (READY); the harness checks who it is handed to."""
        msg.queue = queue.name
        msg.state = READY
        msg.tag = 0
        msg.holder = None
        queue.members[msg.mid] = msg
        if queue.kind == POISON:
            self._poison_changed(self.main(queue))

    def _poison_changed(self, main: MQueue) -> None:
        if self.faulted(main) and main.waiters:
            self.expect_waiters_failed(main)

    def expect_waiters_failed(self, main: MQueue) -> None:
        """The core fails every waiter of a faulted queue; the harness checks each call."""
        self.failing_waiters.update(main.waiters)
        main.waiters.clear()

    def leave(self, msg: Msg, outcome: str | None) -> None:
        queue = self.queues[msg.queue]
        del queue.members[msg.mid]
        msg.queue = None
        msg.holder = None
        if outcome is not None:
            msg.outcome = outcome
        if queue.kind == POISON:
            self._poison_changed(self.main(queue))

    # ---------------------------------------------------------------- sending

    def new_message(self, mid: int, body: bytes, sender: str) -> Msg:
        msg = Msg(mid, body, sender)
        self.msgs[mid] = msg
        return msg

    def prepare(self, msg: Msg, queue: str, now: float, ttl: float | None = None,
                expires_at: Any = ..., destination: str | None = None,
                origin: str | None = None) -> tuple[MQueue, float | None]:
        """The queue an entry for `msg` goes to and its expiry (the message itself changes
        only if the entry is queued: a resend's entry is not, when its first one was)."""
        q = self.queues.get(queue)
        if q is None or q.kind != MAIN:
            raise Expected(QueueNotFound)
        if len(msg.body) > q.settings.max_message_size:
            raise Expected(QueueMessageTooLarge)
        if expires_at is ...:
            ttl = q.settings.time_to_live if ttl is None else ttl
            expires_at = None if ttl is None else now + ttl
        if msg.sent_to is None and not msg.sending:
            msg.sent_expires_at = expires_at
        msg.destination = destination
        msg.origin = origin
        return q, expires_at

    def _full(self, q: MQueue, extra: int = 0) -> bool:
        limit = q.settings.max_length
        return limit is not None and self.held(q) + q.reserved + extra >= limit

    def _number(self, q: MQueue, msg: Msg) -> None:
        msg.number = q.next_number
        q.next_number += 1

    def _sent(self, msg: Msg, q: MQueue) -> None:
        """A send took effect: `msg` is queued and its sender is told."""
        if msg.acked and msg.outcome != LOST_VOLATILE:
            self.fail(f"m{msg.mid} is queued a second time (in {q.name}; it was queued before"
                      f"{', as ' + msg.outcome if msg.outcome else ' in ' + str(msg.queue)})")
        msg.acked = True
        msg.outcome = None
        if msg.index < 0:
            self.arrivals += 1
            msg.index = self.arrivals
        msg.sent_to = q.name
        self.arrive(msg, q)

    def _send_durable(self, msg: Msg, q: MQueue) -> Callable[[], None]:
        def durable() -> None:
            msg.durable = (q.name, 0, 0, msg.expires_at, None, None, None)
            msg.durable_outcome = None
            if msg.sent_to is None:         # queued now, whether or not its sender hears of it
                msg.sent_to = q.name
                self.arrivals += 1
                msg.index = self.arrivals
            if q.numbered:
                q.durable_number = max(q.durable_number, msg.number + 1)
        return durable

    def send_one(self, msg: Msg, q: MQueue, expires_at: float | None) -> int | None:
        """An embedded send without a producer: the record, None (volatile), or Expected."""
        if self._full(q):
            raise Expected(QueueFull)
        msg.expires_at = expires_at
        if q.numbered:
            self._number(q, msg)
        if not q.journaled:
            self._sent(msg, q)
            return None
        q.reserved += 1
        msg.sending = True

        def apply(now: float) -> None:
            q.reserved -= 1
            msg.sending = False
            self._sent(msg, q)

        def undo(now: float) -> None:
            q.reserved -= 1
            msg.sending = False

        return self.journal(apply, self._send_durable(msg, q), undo)

    def send(self, msgs: list[tuple[Msg, MQueue, float | None]], producer: MProducer | None, epoch: int,
             seqs: list[int] | None) -> list[tuple[str, int | None] | Expected]:
        """QueueCore.send: per message ("new", record), ("duplicate", None), ("pending",
        record), or an Expected error; raises Expected(ProducerFenced) for a stale epoch."""
        if producer is not None and epoch != producer.epoch:
            raise Expected(ProducerFenced)
        results: list[Any] = []
        journaled: list[tuple[Msg, MQueue, int]] = []
        added: dict[str, int] = {}
        for i, (msg, q, expires_at) in enumerate(msgs):
            dedupe = -1
            if producer is not None:
                seq = seqs[i]
                msg.producer = producer.name
                msg.seq = seq
                if q.settings.exactly_once:
                    key = (q.name, seq)
                    if seq < producer.floor or seq in producer.accepted.get(q.name, ()):
                        results.append(("duplicate", None))
                        continue
                    if key in producer.pending:
                        results.append(("pending", producer.pending[key]))
                        continue
                    dedupe = seq
            if self._full(q, added.get(q.name, 0)):
                results.append(Expected(QueueFull))
                continue
            msg.expires_at = expires_at
            if q.numbered:
                self._number(q, msg)
            if q.journaled:
                added[q.name] = added.get(q.name, 0) + 1
                journaled.append((msg, q, dedupe))
                results.append(("new", 0))
            else:
                if dedupe >= 0:
                    self._accept(producer, q.name, dedupe, msg)
                self._sent(msg, q)
                results.append(("new", None))
        if not journaled:
            return results
        for name, count in added.items():
            self.queues[name].reserved += count

        def apply(now: float) -> None:
            for name, count in added.items():
                self.queues[name].reserved -= count
            for msg, q, dedupe in journaled:
                msg.sending = False
                if dedupe >= 0:
                    self._accept(producer, q.name, dedupe, msg)
                self._sent(msg, q)

        def durable() -> None:
            for msg, q, dedupe in journaled:
                self._send_durable(msg, q)()
                if dedupe >= 0:
                    producer.durable_accepted.setdefault(q.name, set()).add(dedupe)
                    producer.durable_owners[(q.name, dedupe)] = msg.mid

        def undo(now: float) -> None:
            for name, count in added.items():
                self.queues[name].reserved -= count
            for msg, q, dedupe in journaled:
                msg.sending = False
                if dedupe >= 0:
                    producer.pending.pop((q.name, dedupe), None)

        number = self.journal(apply, durable, undo)
        for msg, q, dedupe in journaled:
            msg.sending = True
            if dedupe >= 0:
                producer.pending[(q.name, dedupe)] = number
        return [("new", number) if r == ("new", 0) else r for r in results]

    @staticmethod
    def _accept(producer: MProducer, queue: str, seq: int, msg: Msg) -> None:
        producer.pending.pop((queue, seq), None)
        producer.owners[(queue, seq)] = msg.mid
        if seq >= producer.floor:
            producer.accepted.setdefault(queue, set()).add(seq)

    # ---------------------------------------------------------------- producers

    def open_producer(self, name: bytes, epoch: int) -> tuple[MProducer, int | None]:
        producer = self.producers.get(name)
        changed = True
        before = None if producer is None else producer.epoch
        if producer is None:
            producer = self.producers[name] = MProducer(name, max(epoch, 1))
        elif epoch == 0:
            producer.epoch += 1
        elif epoch < producer.epoch:
            raise Expected(ProducerFenced)
        elif epoch > producer.epoch:
            producer.epoch = epoch
        else:
            changed = False
        if not changed or not self.journaled:
            return producer, None
        value = producer.epoch

        def durable() -> None:
            producer.durable_epoch = max(producer.durable_epoch or 0, value)

        def undo(now: float) -> None:
            # a registration that could not be written is taken back: a new producer is
            # forgotten, an epoch bump undone
            if before is None:
                if self.producers.get(name) is producer and not producer.pending and not producer.accepted:
                    del self.producers[name]
            elif producer.epoch > before:
                producer.epoch = before

        return producer, self.journal(None, durable, undo)

    def raise_floor(self, producer: MProducer, floor: int) -> int | None:
        if floor <= producer.floor:
            return None
        producer.floor = floor
        for queue in list(producer.accepted):
            producer.accepted[queue] = {s for s in producer.accepted[queue] if s >= floor}
            if not producer.accepted[queue]:
                del producer.accepted[queue]
        if not self.journaled:
            return None

        def durable() -> None:
            if producer.durable_epoch is not None:
                producer.durable_floor = max(producer.durable_floor, floor)

        return self.journal(None, durable, None)

    # ---------------------------------------------------------------- receiving

    def lock(self, msg: Msg, tag: int, now: float, holder: Any) -> None:
        msg.state = LOCKED
        msg.tag = tag
        msg.deliveries += 1
        msg.lock_deadline = now + self.queues[msg.queue].settings.validity_duration
        msg.holder = holder
        msg.taken = True
        msg.handed += 1
        if msg.queue.startswith(XMIT):
            msg.left_xmit = True

    def lock_valid(self, msg: Msg, tag: int, now: float) -> bool:
        return msg.state == LOCKED and msg.tag == tag and msg.queue is not None and msg.lock_deadline >= now

    def _check_lock(self, msg: Msg, tag: int, now: float) -> MQueue:
        if not self.lock_valid(msg, tag, now):
            raise Expected(LockLost)
        return self.queues[msg.queue]

    def complete(self, msg: Msg, tag: int, now: float) -> int | None:
        q = self._check_lock(msg, tag, now)
        msg.state = SETTLING
        msg.before = LOCKED
        if not q.journaled:
            self.leave(msg, COMPLETED)
            return None
        return self.journal(self._gone_apply(msg, COMPLETED), self._gone_durable(msg, COMPLETED),
                            self._unsettle(msg))

    def release(self, msg: Msg, tag: int) -> bool:
        if msg.state != LOCKED or msg.tag != tag or msg.queue is None:
            return False
        msg.state = READY
        msg.deliveries -= 1
        msg.handed -= 1
        msg.tag = 0
        msg.holder = None
        self.releases += 1
        return True

    def renew(self, msg: Msg, tag: int, now: float) -> float:
        q = self._check_lock(msg, tag, now)
        msg.lock_deadline = now + q.settings.validity_duration
        return msg.lock_deadline

    def abandon(self, msg: Msg, tag: int, now: float) -> int | None:
        q = self._check_lock(msg, tag, now)
        return self._fail(q, msg, now)

    def dead_letter(self, msg: Msg, tag: int, reason: str, now: float) -> int | None:
        q = self._check_lock(msg, tag, now)
        msg.state = SETTLING
        msg.before = LOCKED
        return self._dead_letter(q, msg, reason, now)

    # ---------------------------------------------------------------- effects

    def _gone_apply(self, msg: Msg, outcome: str) -> Callable[[float], None]:
        def apply(now: float) -> None:
            if msg.state == SETTLING and msg.queue is not None:
                self.leave(msg, outcome)
        return apply

    def _gone_durable(self, msg: Msg, outcome: str) -> Callable[[], None]:
        def durable() -> None:
            msg.durable = None
            msg.durable_outcome = outcome
        return durable

    def _unsettle(self, msg: Msg) -> Callable[[float], None]:
        def undo(now: float) -> None:
            if msg.state != SETTLING:
                return
            self.queues[msg.queue].hold = now + STORAGE_RETRY_DELAY
            msg.state = msg.before
        return undo

    def _fail(self, q: MQueue, msg: Msg, now: float) -> int | None:
        """A delivery of the LOCKED `msg` failed: the retry rule, written out again."""
        msg.state = SETTLING
        msg.before = LOCKED
        if q.kind != MAIN:
            return self._update(q, msg, msg.attempts)
        if expired_here(msg, q, now):
            return self._dead_letter(q, msg, "expired", now)
        s = q.settings
        attempts = msg.attempts + 1
        per_cycle = s.receive_retry_count + 1
        if attempts % per_cycle:
            return self._update(q, msg, attempts)
        if attempts // per_cycle <= s.max_retry_cycles:
            return self._move(q, msg, self.queues[q.name + ";retry"], attempts=attempts,
                              retry_at=now + s.retry_cycle_delay)
        # every retry failed: receive_error_handling, after exactly attempts_per_message failures
        if attempts != s.attempts_per_message:
            self.fail(f"m{msg.mid}: poison after {attempts} failed deliveries, not {s.attempts_per_message}")
        if msg.deliveries != s.attempts_per_message:
            self.fail(f"m{msg.mid}: poison with delivery_count {msg.deliveries}, not {s.attempts_per_message}")
        if not self.crashed_once and msg.handed != s.attempts_per_message:
            self.fail(f"m{msg.mid}: poison after {msg.handed} deliveries, not {s.attempts_per_message}")
        msg.poisoned = True
        mode = s.receive_error_handling
        if mode == "drop":
            return self._remove(q, msg, DROPPED_POISON)
        if mode == "reject":
            back = self.queues.get(RETURN + msg.origin) if msg.origin else None
            if back is not None:
                return self._move(q, msg, back, expires_at=None, reason="rejected", source=q.main, retry_at=None)
            return self._dead_letter(q, msg, "rejected", now)
        return self._move(q, msg, self.queues[q.name + ";poison"], attempts=attempts, retry_at=None)

    def _update(self, q: MQueue, msg: Msg, attempts: int) -> int | None:
        deliveries = msg.deliveries

        def apply(now: float) -> None:
            if msg.state != SETTLING:
                return
            msg.attempts = attempts
            msg.state = READY
            msg.tag = 0
            msg.holder = None

        def durable() -> None:
            if msg.durable is not None:
                msg.durable = (msg.durable[0], attempts, deliveries) + msg.durable[3:]

        if not q.journaled:
            apply(0.0)
            return None
        return self.journal(apply, durable, self._unsettle(msg))

    def _remove(self, q: MQueue, msg: Msg, outcome: str) -> int | None:
        if not q.journaled:
            self.leave(msg, outcome)
            return None
        return self.journal(self._gone_apply(msg, outcome), self._gone_durable(msg, outcome), self._unsettle(msg))

    def dead_letter_target(self, q: MQueue) -> MQueue | None:
        main = self.main(q)
        target = main.settings.dead_letter_queue
        if target == "none":
            return None
        if target == "system":
            return self.queues[DEAD]
        queue = self.queues.get(target)
        if queue is None or queue is main or queue.kind != MAIN:
            return self.queues[DEAD]
        return queue

    def _dead_letter(self, q: MQueue, msg: Msg, reason: str, now: float) -> int | None:
        main = self.main(q)
        source = msg.destination or main.name
        target = self.dead_letter_target(q)
        if target is None:
            outcome = DROPPED_EXPIRED if reason == "expired" else DROPPED_REJECTED
            return self._remove(q, msg, outcome)
        return self._move(q, msg, target, expires_at=None, reason=reason, source=source, retry_at=None)

    def _move(self, src: MQueue, msg: Msg, dst: MQueue, **changes: Any) -> int | None:
        fields = dict(attempts=msg.attempts, expires_at=msg.expires_at, retry_at=msg.retry_at, reason=msg.reason,
                      source=msg.source)
        fields.update(changes)
        deliveries = msg.deliveries

        def apply(now: float) -> None:
            if msg.state != SETTLING:
                return
            self.leave(msg, None)
            for name, value in fields.items():
                setattr(msg, name, value)
            self.arrive(msg, dst)

        def durable() -> None:
            msg.durable = ((dst.name, fields["attempts"], deliveries, fields["expires_at"], fields["retry_at"],
                            fields["reason"], fields["source"]) if dst.journaled else None)
            msg.durable_outcome = None if dst.journaled else LOST_VOLATILE

        if not (src.journaled or dst.journaled):
            apply(0.0)
            return None
        return self.journal(apply, durable, self._unsettle(msg))

    # ---------------------------------------------------------------- transactions

    def commit(self, receipts: list[tuple[Msg, int]], sends: list[tuple[Msg, MQueue, float | None]],
               now: float) -> int | None:
        for msg, tag in receipts:
            if not self.lock_valid(msg, tag, now):
                raise Expected(TransactionError)
        added: dict[str, int] = {}
        for _, q, _ in sends:
            added[q.name] = added.get(q.name, 0) + 1
        for name, count in added.items():
            q = self.queues[name]
            limit = q.settings.max_length
            if limit is not None and self.held(q) + q.reserved + count > limit:
                raise Expected(QueueFull)
        journaled = False
        for msg, _ in receipts:
            msg.state = SETTLING
            msg.before = LOCKED
            journaled |= self.queues[msg.queue].journaled
        for msg, q, expires_at in sends:
            msg.expires_at = expires_at
            if q.numbered:
                self._number(q, msg)
            journaled |= q.journaled
        sends = [(msg, q) for msg, q, _ in sends]
        for name, count in added.items():
            self.queues[name].reserved += count
        for msg, _q in sends:
            msg.sending = journaled

        def apply(now: float) -> None:
            for msg, _ in receipts:
                if msg.state == SETTLING and msg.queue is not None:
                    self.leave(msg, COMPLETED)
            for name, count in added.items():
                self.queues[name].reserved -= count
            for msg, q in sends:
                msg.sending = False
                self._sent(msg, q)

        def durable() -> None:
            for msg, _ in receipts:
                msg.durable = None
                msg.durable_outcome = COMPLETED
            for msg, q in sends:
                if q.journaled:
                    self._send_durable(msg, q)()

        def undo(now: float) -> None:
            for name, count in added.items():
                self.queues[name].reserved -= count
            for msg, _q in sends:
                msg.sending = False
            for msg, _ in receipts:
                self._unsettle(msg)(now)

        if not journaled:
            apply(now)
            return None
        return self.journal(apply, durable, undo)

    def rollback(self, receipts: list[tuple[Msg, int]], now: float) -> list[int]:
        waits = []
        for msg, tag in receipts:
            if msg.state == LOCKED and msg.tag == tag and msg.queue is not None:
                record = self._fail(self.queues[msg.queue], msg, now)
                if record is not None and record not in waits:
                    waits.append(record)
        return waits

    # ---------------------------------------------------------------- time

    def due(self, now: float) -> bool:
        """True when handle_timer(now) has message work to do (some queue is due)."""
        for q in self.queues.values():
            if q.hold > now:
                continue
            for m in q.members.values():
                if m.state == READY and expired_here(m, q, now):
                    return True
                if m.state == LOCKED and m.lock_deadline <= now:
                    return True
                if m.state == READY and q.kind == RETRY and m.retry_at is not None and m.retry_at <= now:
                    return True
        return False

    def handle_timer(self, now: float) -> None:
        """What QueueCore.handle_timer(now), called until nothing is due at `now`, does to
        messages: for every queue not held after a failed write, expiries, then expired
        locks, then ended retry delays (work one pass makes due is done by the next)."""
        while self._timer_pass(now):
            pass

    def expire_on_take(self, name: str, now: float) -> None:
        """QueueCore.take: first the queue's own expiries (unless it is held after a failed
        write), as the timer would do them."""
        q = self.queues[name]
        if q.hold > now or q.kind == POISON:
            return
        for m in [m for m in q.members.values()
                  if m.state == READY and expired_here(m, q, now)]:
            m.state = SETTLING
            m.before = READY
            self._dead_letter(q, m, "expired", now)

    def _timer_pass(self, now: float) -> bool:
        work = []
        for q in self.queues.values():
            if q.hold > now:
                continue
            expired = [] if q.kind == POISON else [
                m for m in q.members.values()
                if m.state == READY and expired_here(m, q, now)]
            locks = sorted((m for m in q.members.values() if m.state == LOCKED and m.lock_deadline <= now),
                           key=lambda m: m.lock_deadline)
            retries = [] if q.kind != RETRY else [
                m for m in q.members.values()
                if m.state == READY and m.retry_at is not None and m.retry_at <= now and m not in expired]
            if expired or locks or retries:
                work.append((q, expired, locks, retries))
        for q, expired, locks, retries in work:
            for m in expired:
                m.state = SETTLING
                m.before = READY
                self._dead_letter(q, m, "expired", now)
            for m in locks:
                self._fail(q, m, now)
            for m in retries:
                m.state = SETTLING
                m.before = READY
                self._move(q, m, self.queues[q.main], retry_at=None)
        return bool(work)

    # ---------------------------------------------------------------- crash

    def crash(self) -> None:
        """The process died: what the journal holds is all there is."""
        self.crashed_once = True
        self.open = None
        self.records.clear()
        self.next_number = 1
        for name in list(self.defined):
            if name not in self.durable_defined:
                del self.defined[name]
        for name in list(self.queues):
            main = self.queues[name].main
            if main != DEAD and main not in self.durable_defined:
                del self.queues[name]
        for name, settings in self.durable_defined.items():
            if name not in self.queues:
                self._make(name, settings)
            self.defined[name] = settings
        self.defining.clear()
        for q in self.queues.values():
            q.members.clear()
            q.reserved = 0
            q.waiters.clear()
            q.hold = 0.0
            if q.numbered:
                q.next_number = q.durable_number
        for msg in self.msgs.values():
            msg.sending = False
            if msg.durable is not None:
                (queue, msg.attempts, msg.deliveries, msg.expires_at, msg.retry_at, msg.reason,
                 msg.source) = msg.durable
                if queue not in self.queues:
                    self.fail(f"m{msg.mid}: journaled in {queue!r}, a queue the journal does not define")
                    continue
                msg.queue = queue
                msg.state = READY
                msg.tag = 0
                msg.holder = None
                msg.handed = 0
                msg.left_xmit = queue.startswith(XMIT)    # it may have been sent before the crash
                msg.outcome = None
                self.queues[queue].members[msg.mid] = msg
            elif msg.durable_outcome is not None:
                if msg.queue is not None or msg.outcome is None:
                    msg.outcome = msg.durable_outcome    # what the journal says happened to it
                msg.queue = None
            elif msg.queue is not None:
                if msg.acked:
                    msg.outcome = LOST_VOLATILE
                msg.queue = None
        for producer in list(self.producers.values()):
            if producer.durable_epoch is None:
                del self.producers[producer.name]
                continue
            producer.epoch = producer.durable_epoch
            producer.floor = producer.durable_floor
            producer.accepted = {q: {s for s in seqs if s >= producer.floor}
                                 for q, seqs in producer.durable_accepted.items()}
            producer.accepted = {q: s for q, s in producer.accepted.items() if s}
            producer.pending.clear()
            producer.owners = dict(producer.durable_owners)

    def compacted(self) -> None:
        """The journal was replaced by a snapshot of the state now (no record in flight):
        what the core applied eagerly (epochs, floors, numbering) is durable now."""
        for producer in self.producers.values():
            producer.durable_epoch = producer.epoch
            producer.durable_floor = producer.floor
        for q in self.queues.values():
            if q.numbered:
                q.durable_number = max(q.durable_number, q.next_number)

    # ---------------------------------------------------------------- counts

    def counts(self, name: str) -> tuple:
        """(depth, in_flight, retrying, poison, waiting) as QueueInfo reports them."""
        q = self.queues[name]
        depth = q.count(READY)
        in_flight = len(q.members) - depth
        if q.kind != MAIN:
            return depth, in_flight, 0, 0, len(q.waiters)
        return (depth, in_flight, len(self.queues[name + ";retry"].members),
                len(self.queues[name + ";poison"].members), len(q.waiters))


def expired_here(m: Msg, q: MQueue, now: float) -> bool:
    """Past its time-to-live, where the time-to-live is enforced: not in ;poison, and not
    for a message that left a transmission queue once (the target decides for it)."""
    if m.expires_at is None or m.expires_at > now or q.kind == POISON:
        return False
    return not (m.left_xmit and q.name.startswith(XMIT))
