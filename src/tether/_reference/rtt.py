"""Pure-Python twin of tether._native.rtt: the RFC 6298 retransmission timer and a heap of
deadlines so one asyncio timer can serve many sessions.

The arithmetic is written in exactly the order the native module uses, so both give
bit-identical floats (the differential tests compare them with ==).
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Hashable, Iterable

__all__ = ["ALPHA", "BETA", "DeadlineHeap", "K", "RttEstimator"]

# RFC 6298 section 2.3: the smoothing gains and the variance multiplier.
ALPHA = 1.0 / 8.0
BETA = 1.0 / 4.0
K = 4.0


def _real(value: object, name: str) -> float:
    """`value` as a float; TypeError naming `name` unless it is an int or a float."""
    if type(value) is float:
        return value  # type: ignore[return-value]
    if isinstance(value, (int, float)):
        return float(value)
    raise TypeError(f"{name} must be a real number, not {type(value).__name__}")


def _finite(value: object, name: str) -> float:
    """`value` as a finite float; ValueError naming `name` when it is inf or NaN."""
    result = _real(value, name)
    if not math.isfinite(result):
        raise ValueError(f"{name} must be finite, got {result!r}")
    return result


def _sample(value: object) -> float:
    """One RTT sample, checked: a finite number >= 0."""
    result = _real(value, "sample")
    if not (math.isfinite(result) and result >= 0.0):
        raise ValueError(f"sample must be a finite number >= 0, got {result!r}")
    return result


class RttEstimator:
    """Smoothed RTT and retransmission timeout per RFC 6298.

    Feed it RTT samples taken only from messages sent once (Karn's rule, RFC 6298 section 3;
    the send window already does that). `rto` is what a retransmission timer should wait,
    including any `backoff()` since the last sample.
    """

    def __init__(
        self,
        initial_rto: float = 1.0,
        min_rto: float = 0.2,
        max_rto: float = 60.0,
        granularity: float = 0.001,
    ) -> None:
        """Raises TypeError for a non-number and ValueError naming the argument when
        min_rto <= 0, max_rto < min_rto, initial_rto is outside [min_rto, max_rto],
        granularity < 0, or any of them is not finite."""
        initial_rto = _finite(initial_rto, "initial_rto")
        min_rto = _finite(min_rto, "min_rto")
        max_rto = _finite(max_rto, "max_rto")
        granularity = _finite(granularity, "granularity")
        if min_rto <= 0.0:
            raise ValueError(f"min_rto must be > 0, got {min_rto!r}")
        if max_rto < min_rto:
            raise ValueError(f"max_rto must be >= min_rto ({min_rto!r}), got {max_rto!r}")
        if not (min_rto <= initial_rto <= max_rto):
            raise ValueError(
                f"initial_rto must be within [min_rto, max_rto] = [{min_rto!r}, {max_rto!r}],"
                f" got {initial_rto!r}"
            )
        if granularity < 0.0:
            raise ValueError(f"granularity must be >= 0, got {granularity!r}")
        self._initial_rto = initial_rto
        self._min_rto = min_rto
        self._max_rto = max_rto
        self._granularity = granularity
        self._srtt = 0.0
        self._rttvar = 0.0
        self._samples = 0
        # RFC 6298 section 2.1: until a sample arrives the RTO is the initial value.
        self._rto = initial_rto

    def update(self, sample: float) -> None:
        """Apply one RTT sample in seconds; clears any backoff.
        A negative or non-finite sample raises ValueError."""
        self._apply(_sample(sample))

    def update_many(self, samples: Iterable[float]) -> None:
        """Apply samples in order, as if by update() each. All are checked first: one bad
        sample raises ValueError (TypeError for a non-number) and nothing is applied."""
        checked = [_sample(sample) for sample in samples]
        for sample in checked:
            self._apply(sample)

    def _apply(self, r: float) -> None:
        if self._samples == 0:
            # RFC 6298 section 2.2: the first measurement.
            self._srtt = r
            self._rttvar = r / 2.0
        else:
            # RFC 6298 section 2.3: RTTVAR first, from the SRTT before this sample.
            self._rttvar = (1.0 - BETA) * self._rttvar + BETA * abs(self._srtt - r)
            self._srtt = (1.0 - ALPHA) * self._srtt + ALPHA * r
        self._samples += 1
        rto = self._srtt + max(self._granularity, K * self._rttvar)
        # RFC 6298 sections 2.4 and 2.5: clamp to the configured floor and ceiling.
        self._rto = min(max(rto, self._min_rto), self._max_rto)

    def backoff(self) -> float:
        """Double the RTO after a retransmission timeout (RFC 6298 section 5.5), capped at
        max_rto; the next sample recomputes it. Returns the new RTO."""
        self._rto = min(self._rto * 2.0, self._max_rto)
        return self._rto

    @property
    def srtt(self) -> float | None:
        """Smoothed RTT in seconds; None before the first sample."""
        return self._srtt if self._samples else None

    @property
    def rttvar(self) -> float | None:
        """RTT variation in seconds; None before the first sample."""
        return self._rttvar if self._samples else None

    @property
    def rto(self) -> float:
        """Current retransmission timeout in seconds, backoff included."""
        return self._rto

    @property
    def samples(self) -> int:
        """How many samples have been applied."""
        return self._samples

    @property
    def initial_rto(self) -> float:
        """The RTO used before the first sample."""
        return self._initial_rto

    @property
    def min_rto(self) -> float:
        """Floor of the RTO (RFC 6298 section 2.4)."""
        return self._min_rto

    @property
    def max_rto(self) -> float:
        """Ceiling of the RTO, backoff included (RFC 6298 section 2.5)."""
        return self._max_rto

    @property
    def granularity(self) -> float:
        """Clock granularity G in RFC 6298 section 2.2: the least variance term."""
        return self._granularity

    def __repr__(self) -> str:
        return (
            f"RttEstimator(srtt={self.srtt!r}, rttvar={self.rttvar!r}, rto={self._rto!r},"
            f" samples={self._samples})"
        )


class DeadlineHeap:
    """The earliest of many deadlines, so one `loop.call_at` can serve many timers.

    Each key has at most one deadline. Keys are any hashables, compared as dict keys are (a
    key keeps the object it was first set with). Equal deadlines come out in the order they
    were set. A heap of (deadline, seq, key) with lazy deletion: a moved or cancelled key
    leaves a stale entry behind, recognised by its seq; when stale entries outnumber live
    ones the heap is rebuilt, so memory stays proportional to the live keys.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Hashable]] = []
        # key -> (deadline, seq, the key object first set); the heap entry with this seq is live
        self._live: dict[Hashable, tuple[float, int, Hashable]] = {}
        self._seq = 0

    def set(self, key: Hashable, deadline: float) -> None:
        """Add `key` with `deadline`, or move it there. A non-finite deadline raises ValueError."""
        deadline = _finite(deadline, "deadline")
        previous = self._live.get(key)
        stored = key if previous is None else previous[2]
        self._seq += 1
        self._live[key] = (deadline, self._seq, stored)
        heapq.heappush(self._heap, (deadline, self._seq, stored))
        self._compact_if_stale()

    def cancel(self, key: Hashable) -> bool:
        """Forget `key`; True when it had a deadline."""
        if key not in self._live:
            return False
        del self._live[key]
        self._compact_if_stale()
        return True

    def get(self, key: Hashable) -> float | None:
        """The deadline of `key`, or None."""
        entry = self._live.get(key)
        return None if entry is None else entry[0]

    def peek(self) -> tuple[float, Hashable] | None:
        """(deadline, key) of the earliest deadline, or None when empty."""
        self._drop_stale_top()
        if not self._heap:
            return None
        deadline, _, key = self._heap[0]
        return deadline, key

    @property
    def next_deadline(self) -> float | None:
        """The earliest deadline, or None when empty."""
        self._drop_stale_top()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list:
        """Remove and return the keys whose deadline is <= now, earliest first."""
        now = _finite(now, "now")
        due = []
        while True:
            self._drop_stale_top()
            if not self._heap or self._heap[0][0] > now:
                return due
            _, _, key = heapq.heappop(self._heap)
            del self._live[key]
            due.append(key)

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: object) -> bool:
        return key in self._live

    def __repr__(self) -> str:
        return f"DeadlineHeap(len={len(self._live)}, next_deadline={self.next_deadline!r})"

    def _is_live(self, entry: tuple[float, int, Hashable]) -> bool:
        live = self._live.get(entry[2])
        return live is not None and live[1] == entry[1]

    def _drop_stale_top(self) -> None:
        heap = self._heap
        while heap and not self._is_live(heap[0]):
            heapq.heappop(heap)

    def _compact_if_stale(self) -> None:
        # Rebuild once stale entries outnumber live ones: O(n) work per n stale entries, so
        # re-setting one key forever costs O(log n) amortised and bounded memory.
        if len(self._heap) > 2 * len(self._live) + 1:
            self._heap = [(deadline, seq, key) for deadline, seq, key in self._live.values()]
            heapq.heapify(self._heap)
