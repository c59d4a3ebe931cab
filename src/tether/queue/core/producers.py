"""Idempotent producers: a resent message is queued once, and only its own producer can say so.

The model is Kafka's idempotent producer. A producer (a `QueueClient`, or another queue
manager's forwarder) names itself with a stable id and gets a small producer number (`pid`)
from this queue manager, and an *epoch*: a new instance of a producer (epoch 0 in its hello)
bumps the epoch, which fences every older instance still talking (`ProducerFenced`); a
reconnecting instance presents its epoch and carries on. Every message a producer sends
carries a sequence number of the producer's; the queue manager keeps, per (target queue,
producer), the set of sequences it accepted (a RangeSet: contiguous runs cost one range), so
a message resent after a lost reply or a crash on either side is recognised and not queued
again. De-duplication is scoped: no producer can suppress, overwrite or "forget" another's
messages, because nothing one producer sends touches another's sets.

The producer tells the queue manager its *floor*: every sequence below it is settled at the
producer (answered, never sent again), so the sets are trimmed below it and stay small.
A producer restarted with the same id learns where to continue (`next_sequence`), so it
never reuses a sequence of its earlier life. Producers silent for `expiry` seconds are
forgotten (Kafka's producer id expiration).
"""
from __future__ import annotations

from collections.abc import Iterator

from ...errors import ProducerFenced
from ...layer1 import RangeSet

NEW = 0            # a sequence never seen: queue it
DUPLICATE = 1      # accepted before: answer as accepted, queue nothing

MAX_PRODUCER_NAME = 64


class Producer:
    """One producer's state at this queue manager."""

    __slots__ = ("pid", "name", "epoch", "floor", "accepted", "pending", "last_seen")

    def __init__(self, pid: int, name: bytes, epoch: int, now: float) -> None:
        self.pid = pid
        self.name = name
        self.epoch = epoch
        self.floor = 0                               # sequences below it are settled
        self.accepted: dict[str, RangeSet] = {}      # queue -> sequences queued there
        self.pending: dict[tuple[str, int], int] = {}   # (queue, sequence) -> record being written
        self.last_seen = now

    @property
    def next_sequence(self) -> int:
        """The first sequence this producer has never used (where a restarted one continues)."""
        high = self.floor
        for ranges in self.accepted.values():
            top = ranges.max
            if top is not None and top + 1 > high:
                high = top + 1
        for _, sequence in self.pending:
            if sequence + 1 > high:
                high = sequence + 1
        return high

    def __repr__(self) -> str:
        return f"<Producer {self.pid} epoch={self.epoch} floor={self.floor}>"


class ProducerTable:
    """Every producer this queue manager knows, by name and by number."""

    def __init__(self) -> None:
        self.by_name: dict[bytes, Producer] = {}
        self.by_pid: dict[int, Producer] = {}
        self.next_pid = 1

    def __len__(self) -> int:
        return len(self.by_pid)

    def open(self, name: bytes, epoch: int, now: float) -> tuple[Producer, int | None, bool]:
        """The producer `name` saying hello with `epoch` (0: a new instance). Returns it,
        its epoch before (None: it is new), and whether its registration changed (a new
        producer or epoch: journal it before answering). ProducerFenced when `epoch` is
        older than the current one."""
        producer = self.by_name.get(name)
        if producer is None:
            producer = self.register(name, self.next_pid, max(epoch, 1), now)
            return producer, None, True
        producer.last_seen = now
        before = producer.epoch
        if epoch == 0:
            producer.epoch += 1
            return producer, before, True
        if epoch < producer.epoch:
            raise ProducerFenced(f"producer epoch {epoch} was fenced: a newer instance of this "
                                 f"producer connected (epoch {producer.epoch})")
        if epoch > producer.epoch:
            producer.epoch = epoch
            return producer, before, True
        return producer, before, False

    def undo_open(self, producer: Producer, before: int | None) -> None:
        """The registration open() made could not be journaled: take it back (a new
        producer is forgotten; its number is never used again)."""
        if before is None:
            if self.by_pid.get(producer.pid) is producer and not producer.pending and not producer.accepted:
                del self.by_pid[producer.pid]
                del self.by_name[producer.name]
        elif producer.epoch > before:
            producer.epoch = before

    def register(self, name: bytes, pid: int, epoch: int, now: float) -> Producer:
        """Add (or update, in replay) a producer's registration."""
        producer = self.by_pid.get(pid)
        if producer is None:
            producer = Producer(pid, name, epoch, now)
            self.by_pid[pid] = producer
            self.by_name[name] = producer
        else:
            producer.epoch = max(producer.epoch, epoch)
        if pid >= self.next_pid:
            self.next_pid = pid + 1
        return producer

    def check_epoch(self, producer: Producer, epoch: int) -> None:
        """ProducerFenced unless `epoch` is the producer's current one."""
        if epoch != producer.epoch:
            raise ProducerFenced(f"producer epoch {epoch} was fenced (current epoch {producer.epoch})")

    @staticmethod
    def classify(producer: Producer, queue: str, sequence: int) -> int | tuple[int]:
        """NEW, DUPLICATE, or (record,) when the same sequence is being written now (its
        outcome decides this one's)."""
        if sequence < producer.floor:
            return DUPLICATE
        accepted = producer.accepted.get(queue)
        if accepted is not None and accepted.contains(sequence):
            return DUPLICATE
        record = producer.pending.get((queue, sequence))
        if record is not None:
            return (record,)
        return NEW

    @staticmethod
    def reserve(producer: Producer, queue: str, sequence: int, record: int) -> None:
        """`sequence` is in the journal record `record`, being written."""
        producer.pending[(queue, sequence)] = record

    @staticmethod
    def accept(producer: Producer, queue: str, sequence: int, now: float) -> None:
        """`sequence` is queued on `queue` (its record was written, or in replay)."""
        producer.pending.pop((queue, sequence), None)
        if sequence < producer.floor:
            return
        _accepted(producer, queue).add(sequence)
        producer.last_seen = now

    @staticmethod
    def unreserve(producer: Producer, queue: str, sequence: int) -> None:
        """The record holding `sequence` failed: it was never queued."""
        producer.pending.pop((queue, sequence), None)

    # ---- a batch's: one call each for all of its (queue, sequence) keys ----

    @staticmethod
    def reserve_many(producer: Producer, keys: list[tuple[str, int]], record: int) -> None:
        """reserve() of every (queue, sequence) in `keys`, all in record `record`."""
        producer.pending.update(dict.fromkeys(keys, record))

    @staticmethod
    def accept_many(producer: Producer, keys: list[tuple[str, int]], now: float) -> None:
        """accept() of every (queue, sequence) in `keys`, in order: consecutive sequences
        of one queue join its set as one range."""
        pending = producer.pending
        floor = producer.floor
        run_queue: str | None = None
        lo = hi = 0
        for key in keys:
            pending.pop(key, None)
            queue, sequence = key
            if sequence < floor:
                continue
            if queue == run_queue and sequence == hi + 1:
                hi = sequence
                continue
            if run_queue is not None:
                _accepted(producer, run_queue).add_range(lo, hi)
            run_queue, lo, hi = queue, sequence, sequence
        if run_queue is not None:
            _accepted(producer, run_queue).add_range(lo, hi)
            producer.last_seen = now

    @staticmethod
    def unreserve_many(producer: Producer, keys: list[tuple[str, int]]) -> None:
        """unreserve() of every (queue, sequence) in `keys`."""
        pending = producer.pending
        for key in keys:
            pending.pop(key, None)

    @staticmethod
    def raise_floor(producer: Producer, floor: int) -> bool:
        """The producer settled everything below `floor`: trim. False if it is not higher."""
        if floor <= producer.floor:
            return False
        producer.floor = floor
        for queue in list(producer.accepted):
            ranges = producer.accepted[queue]
            ranges.remove_below(floor)
            if not ranges:
                del producer.accepted[queue]
        return True

    def forget_queue(self, queue: str) -> None:
        """A queue was deleted: its sequence sets go with it."""
        for producer in self.by_pid.values():
            producer.accepted.pop(queue, None)

    def expire(self, now: float, expiry: float) -> list[int]:
        """Forget producers silent for `expiry` seconds with nothing in flight; their pids."""
        gone = [p for p in self.by_pid.values() if p.last_seen + expiry <= now and not p.pending]
        for producer in gone:
            del self.by_pid[producer.pid]
            del self.by_name[producer.name]
        return [p.pid for p in gone]

    def __iter__(self) -> Iterator[Producer]:
        return iter(self.by_pid.values())


def _accepted(producer: Producer, queue: str) -> RangeSet:
    """The producer's set of sequences queued on `queue` (made on first use)."""
    accepted = producer.accepted.get(queue)
    if accepted is None:
        accepted = producer.accepted[queue] = RangeSet()
    return accepted
