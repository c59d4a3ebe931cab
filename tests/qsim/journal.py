"""`SimJournal`: one queue manager's journal, simulated.

Records are appended in the order the core cuts them and complete in that order, each after
a delay, as written or failed. What a crash leaves is every record written before it, and
perhaps a prefix of the records still in flight (a write that reached the disk just before
the process died, its completion never reported); a record whose write failed never
survives. A compaction replaces everything written by a snapshot of the state.
"""
from __future__ import annotations

from collections import deque

from tether.queue.core import records as R


class InFlight:
    """A record handed to the simulated disk, not yet reported back."""

    __slots__ = ("number", "encoded", "done_at", "fails")

    def __init__(self, number: int, encoded: bytes, done_at: float, fails: bool) -> None:
        self.number = number
        self.encoded = encoded
        self.done_at = done_at
        self.fails = fails


class SimJournal:
    """The records of one queue manager that survive a crash (see the module docstring)."""

    def __init__(self) -> None:
        self.durable: list[bytes] = []
        self.in_flight: deque[InFlight] = deque()
        self._packer = R.encoder()
        self.writes = 0          # records reported written
        self.failures = 0        # records reported failed
        self.compactions = 0
        self.survivors = 0       # in-flight records a crash left on disk

    def append(self, number: int, ops: list[list], done_at: float, fails: bool) -> InFlight:
        """A record cut by the core; it completes at `done_at` (never before the one ahead)."""
        if self.in_flight:
            done_at = max(done_at, self.in_flight[-1].done_at)
        record = InFlight(number, self._packer.pack(ops), done_at, fails)
        self.in_flight.append(record)
        return record

    def complete(self) -> InFlight:
        """The oldest record in flight is done: kept if it did not fail."""
        record = self.in_flight.popleft()
        if record.fails:
            self.failures += 1
        else:
            self.durable.append(record.encoded)
            self.writes += 1
        return record

    def crash(self, keep: int) -> list[int]:
        """The process died: up to `keep` records in flight reached the disk anyway (a
        prefix, stopping at one that fails). Returns their numbers."""
        kept = []
        for record in self.in_flight:
            if len(kept) >= keep or record.fails:
                break
            self.durable.append(record.encoded)
            kept.append(record.number)
        self.survivors += len(kept)
        self.in_flight.clear()
        return kept

    def compact(self, snapshot: list[list]) -> None:
        """Replace the journal by `snapshot` (no record is in flight)."""
        assert not self.in_flight
        self.durable = [self._packer.pack(snapshot)]
        self.compactions += 1
