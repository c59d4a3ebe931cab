"""`Backoff`: capped exponential delays between attempts (reconnecting, a paused forwarder).

    backoff = Backoff(first=0.05, cap=2.0)
    delay = backoff.next()     # 0.05, 0.1, 0.2, ... never above 2.0
    backoff.reset()            # after a success
"""
from __future__ import annotations

import math


class Backoff:
    """Delays that double from `first` up to `cap` seconds."""

    __slots__ = ("first", "cap", "_next")

    def __init__(self, first: float, cap: float) -> None:
        if not (0 < first <= cap and math.isfinite(cap)):
            raise ValueError(f"backoff needs 0 < first <= cap (finite), not first={first!r} cap={cap!r}")
        self.first = first
        self.cap = cap
        self._next = first

    def next(self) -> float:
        """The delay before the next attempt (then the one after doubles)."""
        delay = self._next
        self._next = min(delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        """The last attempt worked: start again from `first`."""
        self._next = self.first
