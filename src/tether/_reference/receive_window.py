"""Pure-Python twin of tether._native.receive_window: de-duplication and re-ordering of
received message numbers, bounded by the window.

Written for clarity, not speed; the tests compare every result with the native module.
Everything below `floor` has been received; above it, `_seen` holds the numbers received
(and in ordered mode `_waiting` their payloads until the gap below them closes).
"""
from __future__ import annotations

from .arguments import MAX_NUMBER, _int, _number

__all__ = ["MAX_CAPACITY", "MAX_NUMBER", "ReceiveWindow"]

MAX_CAPACITY = 65536


class ReceiveWindow:
    """Exactly-once delivery of numbered messages, in order or on arrival, holding at most
    `capacity` messages (re-order buffer plus delivered-but-unreleased)."""

    def __init__(self, capacity: int, ordered: bool = True, first_number: int = 1) -> None:
        capacity = _int(capacity, "capacity")
        if not 1 <= capacity <= MAX_CAPACITY:
            raise ValueError(f"capacity must be in 1..{MAX_CAPACITY}, got {capacity}")
        first = _number(first_number, "first_number")
        if first == 0:
            raise ValueError("first_number must be in 1..2**64-1 (number 0 is never accepted), got 0")
        self._capacity = capacity
        self._ordered = bool(ordered)
        self._first = first
        self._floor = first  # lowest number not yet received; 2**64 once all were
        self._highest = first - 1
        self._seen: set[int] = set()  # received numbers above floor
        self._waiting: dict[int, object] = {}  # ordered mode: their payloads
        self._held = 0
        self._duplicates = 0
        self._refused = 0
        self._delivered = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def ordered(self) -> bool:
        return self._ordered

    @property
    def held(self) -> int:
        """Delivered, not yet released by the application."""
        return self._held

    @property
    def buffered(self) -> int:
        """Received out of order and waiting for the gap below (0 when unordered)."""
        return len(self._waiting)

    @property
    def buffer_remaining(self) -> int:
        return self._capacity - self._held - len(self._waiting)

    @property
    def floor(self) -> int:
        return self._floor

    @property
    def highest(self) -> int:
        return self._highest

    @property
    def duplicates(self) -> int:
        return self._duplicates

    @property
    def refused(self) -> int:
        return self._refused

    @property
    def delivered(self) -> int:
        return self._delivered

    @property
    def has_gap(self) -> bool:
        return bool(self._seen)

    def accept(self, first_number: int, payloads: list) -> list:
        """Take payloads numbered first_number, first_number+1, ...; returns what became
        deliverable (ordered: the in-order run; unordered: new messages in arrival order)."""
        first = _number(first_number, "first_number")
        if not isinstance(payloads, list):
            raise TypeError(f"payloads must be a list, got {type(payloads).__name__}")
        if payloads and first + len(payloads) - 1 > MAX_NUMBER:
            raise ValueError(
                f"first_number {first} with {len(payloads)} payloads runs past 2**64-1"
            )
        out: list = []
        for i, payload in enumerate(payloads):
            number = first + i
            if number < self._floor or number in self._seen:
                self._duplicates += 1
                continue
            if number >= self._floor + self._capacity:
                self._refused += 1  # beyond the span of numbers tracked
                continue
            # Ordered: `held` counts messages below the floor, so the span shrinks by it.
            # Unordered: messages delivered above the floor are in `held` too; bound memory by
            # held alone, so every number inside an advertised floor + capacity - held fits.
            if (number >= self._floor + self._capacity - self._held if self._ordered
                    else self._held >= self._capacity):
                self._refused += 1  # not acknowledged: the sender will resend it
                continue
            self._highest = max(self._highest, number)
            if number == self._floor:
                out.append(payload)
                self._held += 1
                self._floor += 1
                while self._floor in self._seen:  # the gap closed: the run above follows
                    self._seen.remove(self._floor)
                    if self._ordered:
                        out.append(self._waiting.pop(self._floor))
                        self._held += 1
                    self._floor += 1
            else:
                self._seen.add(number)
                if self._ordered:
                    self._waiting[number] = payload
                else:
                    out.append(payload)
                    self._held += 1
        self._delivered += len(out)
        return out

    def release(self, n: int) -> None:
        """The application consumed `n` delivered messages, freeing their window slots."""
        n = _int(n, "n")
        if not 0 <= n <= self._held:
            raise ValueError(f"n must be in 0..{self._held} (held), got {n}")
        self._held -= n

    def ack_ranges(self, max_ranges: int) -> list[tuple[int, int]]:
        """Received numbers as ascending closed ranges; when there are more than
        max_ranges, the lowest max_ranges (a resent message keeps its old number: ranges
        around it must not be crowded out by newer ones)."""
        max_ranges = _int(max_ranges, "max_ranges")
        if max_ranges < 1:
            raise ValueError(f"max_ranges must be >= 1, got {max_ranges}")
        ranges: list[tuple[int, int]] = []
        if self._floor > self._first:
            ranges.append((self._first, self._floor - 1))
        for number in sorted(self._seen):
            if ranges and ranges[-1][1] == number - 1:
                ranges[-1] = (ranges[-1][0], number)
            else:
                ranges.append((number, number))
        return ranges[:max_ranges]

    def __repr__(self) -> str:
        return (
            f"<ReceiveWindow floor={self._floor} highest={self._highest} held={self._held} "
            f"buffered={self.buffered} capacity={self._capacity}>"
        )
