"""Pure-Python twin of tether._native.rangeset: a set of 64-bit message numbers kept as
sorted, disjoint, non-adjacent closed ranges (a sorted list of (lo, hi) tuples + bisect).

Written for clarity, not speed; the tests compare every result with the native module.
"""
from __future__ import annotations

import operator
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator

__all__ = ["MAX_NUMBER", "RangeSet"]

MAX_NUMBER = 2**64 - 1  # message numbers are unsigned 64-bit


def _number(value: object, name: str) -> int:
    """`value` as an int in 0..MAX_NUMBER, or TypeError/ValueError naming `name`."""
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if n < 0 or n > MAX_NUMBER:
        raise ValueError(f"{name} must be in 0..2**64-1, got {n}")
    return n


def _count_arg(value: object, name: str) -> int:
    """`value` as an int >= 0 (a count such as max_ranges)."""
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if n < 0:
        raise ValueError(f"{name} must be >= 0, got {n}")
    return n


def _iterate(value: object, name: str) -> Iterator:
    try:
        return iter(value)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"{name} must be an iterable, got {type(value).__name__}") from None


def _pair(value: object, name: str) -> tuple[int, int]:
    """`value` as a (lo, hi) pair of numbers with lo <= hi."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a (lo, hi) pair, got {type(value).__name__}")
    lo = _number(value[0], f"{name}[0]")
    hi = _number(value[1], f"{name}[1]")
    if lo > hi:
        raise ValueError(f"{name} must have lo <= hi, got ({lo}, {hi})")
    return lo, hi


class RangeSet:
    """Sorted, disjoint, non-adjacent closed ranges [lo, hi] of numbers in 0..2**64-1."""

    __slots__ = ("_ranges",)
    __hash__ = None  # type: ignore[assignment]  # mutable

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        """The union of `ranges` ((lo, hi) pairs in any order, may overlap)."""
        pairs = [_pair(r, f"ranges[{i}]") for i, r in enumerate(_iterate(ranges, "ranges"))]
        self._ranges: list[tuple[int, int]] = []
        for lo, hi in pairs:
            self._add_range(lo, hi)

    # ---- adding ----

    def add(self, n: int) -> bool:
        """Add n; True when it was not present."""
        n = _number(n, "n")
        return self._add_range(n, n) == 1

    def add_range(self, lo: int, hi: int) -> int:
        """Add every number of [lo, hi]; how many were new. lo > hi -> ValueError."""
        lo = _number(lo, "lo")
        hi = _number(hi, "hi")
        if lo > hi:
            raise ValueError(f"lo must be <= hi, got lo={lo}, hi={hi}")
        return self._add_range(lo, hi)

    def add_many(self, numbers: Iterable[int]) -> int:
        """Add every number of the batch; how many were new. Nothing is added when any
        number is invalid (the error names it as numbers[i])."""
        batch = [_number(n, f"numbers[{i}]") for i, n in enumerate(_iterate(numbers, "numbers"))]
        return sum(self._add_range(n, n) for n in batch)

    def _add_range(self, lo: int, hi: int) -> int:
        ranges = self._ranges
        # The ranges that overlap or touch [lo, hi] (hi' >= lo - 1 and lo' <= hi + 1) are
        # replaced by one range covering them all.
        first = bisect_left(ranges, lo - 1, key=lambda r: r[1])
        last = bisect_right(ranges, hi + 1, key=lambda r: r[0])
        merged = ranges[first:last]
        if merged:
            lo = min(lo, merged[0][0])
            hi = max(hi, merged[-1][1])
        ranges[first:last] = [(lo, hi)]
        # The merged ranges lie inside the new one, so the rest of it is new.
        return (hi - lo + 1) - sum(high - low + 1 for low, high in merged)

    # ---- removing ----

    def remove_below(self, floor: int) -> None:
        """Drop every number < floor."""
        floor = _number(floor, "floor")
        kept = [(max(lo, floor), hi) for lo, hi in self._ranges if hi >= floor]
        self._ranges = kept

    # ---- queries ----

    def contains(self, n: int) -> bool:
        """True when n is in the set."""
        n = _number(n, "n")
        i = bisect_right(self._ranges, n, key=lambda r: r[0])  # ranges[i-1] is the last with lo <= n
        return i > 0 and self._ranges[i - 1][1] >= n

    __contains__ = contains

    def first_missing(self, floor: int = 0) -> int | None:
        """The smallest number >= floor not in the set; None when the set holds all of
        floor..2**64-1."""
        floor = _number(floor, "floor")
        i = bisect_left(self._ranges, floor, key=lambda r: r[1])  # the first range with hi >= floor
        if i == len(self._ranges) or self._ranges[i][0] > floor:
            return floor
        hi = self._ranges[i][1]
        return hi + 1 if hi < MAX_NUMBER else None  # ranges never touch: hi + 1 is missing

    # No __len__: iteration yields ranges, and list(rs) would preallocate len(rs) slots
    # (MemoryError on a set of a few big ranges). The count is .count, the ranges .range_count.

    @property
    def count(self) -> int:
        """How many numbers the set holds (up to 2**64, beyond a C ssize_t)."""
        return sum(hi - lo + 1 for lo, hi in self._ranges)

    @property
    def range_count(self) -> int:
        """How many ranges."""
        return len(self._ranges)

    @property
    def min(self) -> int | None:
        """The smallest number, None when empty."""
        return self._ranges[0][0] if self._ranges else None

    @property
    def max(self) -> int | None:
        """The largest number, None when empty."""
        return self._ranges[-1][1] if self._ranges else None

    def ranges(self) -> list[tuple[int, int]]:
        """Every range as a (lo, hi) tuple, ascending."""
        return list(self._ranges)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.ranges())

    def encode(self, max_ranges: int) -> list[tuple[int, int]]:
        """The `max_ranges` ranges nearest the top, ascending (an ack carries a bounded
        number of ranges); max_ranges < 0 -> ValueError."""
        max_ranges = _count_arg(max_ranges, "max_ranges")
        if max_ranges == 0:
            return []
        return self._ranges[-max_ranges:]

    # ---- the rest of the set protocol ----

    def copy(self) -> RangeSet:
        """An independent RangeSet with the same numbers."""
        other = RangeSet()
        other._ranges = list(self._ranges)
        return other

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RangeSet):
            return NotImplemented
        return self._ranges == other._ranges

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def __repr__(self) -> str:
        return f"RangeSet({self._ranges!r})"

    def __reduce__(self):
        return (RangeSet, (self._ranges,))
