"""`ExpiryIndex`: the entries of one queue by `expires_at`, for the time-to-live timer."""
from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterator

from .entry import Entry

# A compaction drops stale index entries once they outnumber live entries by this much.
_STALE_SLACK = 1024


class ExpiryIndex:
    """The messages of one queue by `expires_at`, for the TTL timer.

    Appends are O(1) while expiry times arrive in order (one time_to_live per queue, the
    common case); out-of-order times go to a heap. Entries are removed lazily: the caller
    checks that a due message is still waiting in its queue, and `compact()` drops stale
    entries once they outnumber live messages, so memory stays proportional to the queue.
    """

    __slots__ = ("fifo", "_heap", "tail", "_seq")

    def __init__(self) -> None:
        # `fifo` and `tail` are public so the hot path (Queue.accept) can append inline
        self.fifo: deque[Entry] = deque()
        self._heap: list[tuple[float, int, Entry]] = []
        self.tail = float("-inf")
        self._seq = 0

    def add(self, message: Entry) -> None:
        """Index a message that has an `expires_at`."""
        expires_at = message.expires_at
        if expires_at >= self.tail:
            self.fifo.append(message)
            self.tail = expires_at
        else:
            self._seq += 1
            heapq.heappush(self._heap, (expires_at, self._seq, message))

    def __len__(self) -> int:
        return len(self.fifo) + len(self._heap)

    def next_deadline(self) -> float | None:
        """The earliest indexed expiry (perhaps of a message that left since)."""
        best = None
        if self.fifo:
            best = self.fifo[0].expires_at
        if self._heap and (best is None or self._heap[0][0] < best):
            best = self._heap[0][0]
        return best

    def pop_due(self, now: float) -> list[Entry]:
        """Every indexed message with expires_at <= now, removed from the index."""
        due = []
        fifo = self.fifo
        while fifo and fifo[0].expires_at <= now:
            due.append(fifo.popleft())
        heap = self._heap
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap)[2])
        if not fifo:
            self.tail = float("-inf")
        return due

    def maybe_compact(self, live: int, keep: Callable[[Entry], bool]) -> None:
        """Drop entries for which keep() is false, when stale ones clearly dominate."""
        if len(self.fifo) + len(self._heap) <= 2 * live + _STALE_SLACK:
            return
        self.fifo = deque(m for m in self.fifo if keep(m))
        self._heap = [e for e in self._heap if keep(e[2])]
        heapq.heapify(self._heap)
        self.tail = self.fifo[-1].expires_at if self.fifo else float("-inf")

    def __iter__(self) -> Iterator[Entry]:
        yield from self.fifo
        for entry in self._heap:
            yield entry[2]
