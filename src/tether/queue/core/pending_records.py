"""Journal records being built and written: how a journaled operation waits for its write.

The core never changes its state for a journaled operation before the journal has it: it
adds the operation's journal ops to the *open* record with an `apply` (run once the record
is written) and an `undo` (run if the write failed), and tells the caller the record's
number. The adapter closes the open record (`cut`), writes it, and reports back
(`written` / `failed`), in order. Everything submitted between two cuts is one record, so
concurrent operations share one write and one fsync (group commit), and the ops of one
operation are always in one record (atomic).

While no record is in flight, the in-memory state is exactly the journaled state plus the
open record's effects still to come: the moment a compaction snapshot may be taken.
"""
from __future__ import annotations

from collections.abc import Callable

Effect = Callable[[float], None]     # called with `now`


class _Record:
    __slots__ = ("number", "ops", "applies", "undos", "run")

    def __init__(self, number: int) -> None:
        self.number = number
        self.ops: list[list] = []
        self.applies: list[Effect] = []
        self.undos: list[Effect] = []
        self.run: tuple[Callable, list] | None = None     # the last effect, if a run (add_to_run)


class PendingRecords:
    """The open record and the records cut but not yet reported written."""

    __slots__ = ("_open", "_next", "_in_flight", "open_number")

    def __init__(self) -> None:
        self._open: _Record | None = None
        self._next = 1
        self._in_flight: dict[int, _Record] = {}
        #: the open record's number, or None when nothing waits to be cut
        self.open_number: int | None = None

    def add(self, ops: list[list], apply: Effect | None, undo: Effect | None) -> int:
        """Put `ops` in the open record; returns its number."""
        record = self._open
        if record is None:
            record = self._open = _Record(self._next)
            self.open_number = record.number
            self._next += 1
        record.ops.extend(ops)
        if apply is not None:
            record.applies.append(apply)
            record.run = None
        if undo is not None:
            record.undos.append(undo)
        return record.number

    def add_to_run(self, op: list, kind: Callable[[list, float], None],
                   undo: Callable[[list, float], None], item: object) -> int:
        """Put `op` in the open record, and `item` in a *run*: consecutive operations of
        the same kind share one apply, `kind(items, now)`, and one undo, `undo(items, now)`,
        instead of a closure each (every plain send is one). The order of effects is kept:
        another effect in between starts a new run."""
        record = self._open
        if record is None:
            record = self._open = _Record(self._next)
            self.open_number = record.number
            self._next += 1
        record.ops.append(op)
        run = record.run
        if run is not None and run[0] is kind:
            run[1].append(item)
        else:
            items = [item]
            record.applies.append(lambda now: kind(items, now))
            record.undos.append(lambda now: undo(items, now))
            record.run = (kind, items)
        return record.number

    def add_op(self, op: list) -> int:
        """One op with no effect of its own (it was applied already; the journal catches up)."""
        return self.add([op], None, None)

    @property
    def upcoming(self) -> int:
        """The number of the record the next add() puts its ops in (the open one, or the
        next to open): a core call knows its record before it adds (none is cut meanwhile)."""
        return self._open.number if self._open is not None else self._next

    @property
    def open_effects(self) -> int:
        """How many applies the open record will run (a run counts once); 0 when none is open."""
        return 0 if self._open is None else len(self._open.applies)

    @property
    def in_flight(self) -> int:
        """Records cut and not yet reported written or failed."""
        return len(self._in_flight)

    def cut(self) -> tuple[int, list[list]] | None:
        """Close the open record: (number, ops) to write, or None when there is none."""
        record = self._open
        if record is None:
            return None
        self._open = None
        self.open_number = None
        self._in_flight[record.number] = record
        return record.number, record.ops

    def written(self, number: int, now: float) -> None:
        """Record `number` is durable: run its applies, in submission order."""
        record = self._in_flight.pop(number)
        for apply in record.applies:
            apply(now)

    def failed(self, number: int, now: float) -> None:
        """Record `number` could not be written: run its undos, last first."""
        record = self._in_flight.pop(number)
        for undo in reversed(record.undos):
            undo(now)
