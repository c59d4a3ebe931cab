"""`Histogram`: counts of observed durations in fixed buckets, for tether.metrics to read.

The parts that observe (the journal's group commit) must not depend on a metrics library
and must stay cheap: one bisect and three additions per observation. tether.metrics turns
a Histogram into Prometheus' cumulative buckets when it is scraped.
"""
from __future__ import annotations

from bisect import bisect_left

#: Bucket upper bounds (seconds) for disk syncs: 50 µs (a cache) to 10 s (a dying disk).
SYNC_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5, 10.0)


class Histogram:
    """Observations counted in the buckets `bounds` (upper bounds, ascending; a last,
    unbounded bucket takes the rest), with their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = SYNC_BUCKETS) -> None:
        if not bounds or any(not b > a for a, b in zip(bounds, bounds[1:])) or not bounds[0] > 0:
            raise ValueError(f"histogram bounds must be ascending numbers > 0, not {bounds!r}")
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (a value equal to a bound falls in that bound's bucket)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        """Observations so far."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= it) for every bound, then (inf, all of them)."""
        out = []
        total = 0
        for bound, count in zip(self.bounds + (float("inf"),), self.counts):
            total += count
            out.append((bound, total))
        return out

    def add(self, other: Histogram) -> None:
        """Add `other`'s observations (same bounds) to these."""
        if other.bounds != self.bounds:
            raise ValueError("cannot add histograms with different bounds")
        for i, count in enumerate(other.counts):
            self.counts[i] += count
        self.sum += other.sum
