"""Replay: the state a journal describes, rebuilt from its operations (records.py) in order.

`ReplayState` is plain data (definitions, entries per queue in arrival order, producers,
the identity); `QueueCore.load()` turns it into live queues. Replay never decides anything:
the journal holds the outcome of every decision, so replaying it is bookkeeping.
"""
from __future__ import annotations

from collections.abc import Iterable

from ...errors import JournalCorrupt
from . import records as R
from .entry import Entry


class ReplayedProducer:
    """A producer as the journal left it."""

    __slots__ = ("name", "pid", "epoch", "floor", "accepted")

    def __init__(self, name: bytes, pid: int, epoch: int) -> None:
        self.name = name
        self.pid = pid
        self.epoch = epoch
        self.floor = 0
        self.accepted: dict[str, list[tuple[int, int]]] = {}   # queue -> ranges, or single numbers


class ReplayState:
    """Everything a journal describes, in journal order."""

    def __init__(self) -> None:
        self.manager_id: bytes | None = None
        self.next_key = 1
        self.next_pid = 1
        self.definitions: dict[str, dict] = {}
        self.entries: dict[str, dict[int, Entry]] = {}
        self.producers: dict[int, ReplayedProducer] = {}
        #: transmission queue -> the next sequence it numbers a message with
        self.counters: dict[str, int] = {}
        self.ops = 0

    def apply_records(self, records: Iterable[bytes]) -> None:
        """Replay encoded journal records in order; JournalCorrupt for a malformed one."""
        for record in records:
            for op in R.decode(record):
                self.apply(op)

    def apply(self, op: list) -> None:
        """Replay one operation (records.py lists the forms)."""
        kind = R.check_op(op)
        if self.ops == 0 and kind != R.IDENTITY:
            raise JournalCorrupt("the journal does not start with its identity record "
                                 "(written by another tether version?)")
        self.ops += 1
        try:
            self._apply(kind, op)
        except (IndexError, TypeError, KeyError, ValueError, AttributeError) as exc:
            raise JournalCorrupt(f"malformed journal operation {op!r:.200}: {exc}") from None

    def _apply(self, kind: str, op: list) -> None:
        if kind == R.ENQUEUE:
            entry = Entry.from_record(op[2])
            self.entries.setdefault(op[1], {})[entry.key] = entry
            if entry.key >= self.next_key:
                self.next_key = entry.key + 1
            if entry.sequence >= self.counters.get(op[1], 0):
                self.counters[op[1]] = entry.sequence + 1
            if len(op) == 4 and entry.producer:      # a de-duplicated send: op[3] is its sequence
                producer = self.producers.get(entry.producer)
                sequence = int(op[3])
                if producer is not None and sequence >= producer.floor:
                    producer.accepted.setdefault(op[1], []).append((sequence, sequence))
        elif kind == R.REMOVE:
            queue = self.entries.get(op[1])
            if queue is not None:
                queue.pop(op[2], None)
        elif kind == R.UPDATE:
            entry = self.entries.get(op[1], {}).get(op[2])
            if entry is not None:
                entry.delivery_count = int(op[3])
                entry.attempts = int(op[4])
        elif kind == R.IDENTITY:
            manager_id, next_key, next_pid, fmt = op[1:]
            if fmt not in R.READABLE_FORMATS:
                raise JournalCorrupt(f"the journal has format {fmt}; this tether reads formats "
                                     f"{', '.join(map(str, R.READABLE_FORMATS))}")
            if manager_id.__class__ is not bytes or not 8 <= len(manager_id) <= 64:
                raise JournalCorrupt(f"the journal's manager id is malformed: {manager_id!r:.80}")
            self.manager_id = manager_id
            self.next_key = max(self.next_key, int(next_key))
            self.next_pid = max(self.next_pid, int(next_pid))
        elif kind == R.DEFINE:
            self.definitions[op[1]] = op[2]
        elif kind == R.DELETE:
            name = op[1]
            self.definitions.pop(name, None)
            for queue in (name, name + ";retry", name + ";poison"):
                self.entries.pop(queue, None)
            for producer in self.producers.values():
                producer.accepted.pop(name, None)
        elif kind == R.PRODUCER:
            name, pid, epoch = op[1], int(op[2]), int(op[3])
            producer = self.producers.get(pid)
            if producer is None:
                self.producers[pid] = ReplayedProducer(name, pid, epoch)
            else:
                producer.epoch = max(producer.epoch, epoch)
            self.next_pid = max(self.next_pid, pid + 1)
        elif kind == R.FLOOR:
            producer = self.producers.get(op[1])
            if producer is not None and op[2] > producer.floor:
                producer.floor = int(op[2])
        elif kind == R.COUNTER:
            self.counters[op[1]] = max(self.counters.get(op[1], 0), int(op[2]))
        elif kind == R.ACCEPTED:
            producer = self.producers.get(op[1])
            if producer is not None:
                producer.accepted.setdefault(op[2], []).extend((int(lo), int(hi)) for lo, hi in op[3])
