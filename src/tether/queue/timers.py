"""One asyncio timer per queue manager, driven by a heap of deadlines.

Every time-based event of the queues (time-to-live, peek-lock expiry, the end of a retry
delay) is a deadline in wall-clock seconds (time.time(): they are journaled and must mean
the same after a restart). A queue asks to be woken at its earliest deadline; the heap
keeps one entry per request and the single `loop.call_at` timer is re-armed only when a
new deadline is earlier than the armed one, so a busy queue costs no timer churn.
"""
from __future__ import annotations

import asyncio
import heapq
import logging
import time
from typing import Callable, Protocol

log = logging.getLogger("tether.queue")


class TimerTarget(Protocol):
    """What DeadlineScheduler wakes: a queue."""

    def on_timer(self, now: float) -> None: ...


class DeadlineScheduler:
    """Wakes `target.on_timer(now)` at (or soon after) each scheduled deadline."""

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Callable[[], float] = time.time) -> None:
        self._loop = loop
        self._clock = clock
        self._heap: list[tuple[float, int, TimerTarget]] = []
        self._seq = 0
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = float("inf")
        self._closed = False

    def schedule(self, deadline: float, target: TimerTarget) -> None:
        """Call target.on_timer(now) once, at deadline (wall-clock seconds)."""
        if self._closed:
            return
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, target))
        if deadline < self._armed_at:
            self._arm(deadline)

    def __len__(self) -> int:
        return len(self._heap)

    def _arm(self, deadline: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = deadline
        delay = max(0.0, deadline - self._clock())
        self._handle = self._loop.call_at(self._loop.time() + delay, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed_at = float("inf")
        now = self._clock()
        heap = self._heap
        woken = []
        while heap and heap[0][0] <= now:
            target = heapq.heappop(heap)[2]
            if not any(t is target for t in woken):
                woken.append(target)
        for target in woken:
            try:
                target.on_timer(now)
            except Exception:  # one queue's failure must not stop the others' timers
                log.exception("queue timer failed for %r", target)
        # on_timer() may have armed a later deadline than one still waiting in the heap
        if heap and not self._closed and heap[0][0] < self._armed_at:
            self._arm(heap[0][0])

    def close(self) -> None:
        """Cancel the timer; later schedule() calls are ignored."""
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._heap.clear()
