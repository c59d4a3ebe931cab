"""One asyncio timer for many sessions: a deadline heap (tether._native.rtt.DeadlineHeap)
and a single loop timer, re-armed only when the earliest deadline moves.

Sessions run on `clock()` (time.monotonic), not loop.time(): uvloop's loop.time() is the
libuv time cached once per loop iteration in whole milliseconds, which turns loopback RTT
samples into zeros. The loop timer is armed relative to that clock with call_later."""
from __future__ import annotations

import asyncio
import time
import weakref
from typing import Protocol

from ..sansio.core import default as default_core


clock = time.monotonic


class TimerClient(Protocol):
    def on_timer(self, now: float) -> None: ...


class TimerService:
    """Deadlines of every session on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap = default_core().DeadlineHeap()
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at: float | None = None

    def set(self, client: TimerClient, deadline: float | None) -> None:
        """Call client.on_timer(now) at `deadline` (None cancels)."""
        heap = self._heap
        if deadline is None:
            if heap.cancel(client):
                self._rearm()
            return
        if heap.get(client) == deadline:
            return
        heap.set(client, deadline)
        armed = self._armed_at
        if armed is None or deadline < armed:
            self._rearm()

    def cancel(self, client: TimerClient) -> None:
        self.set(client, None)

    def __len__(self) -> int:
        return len(self._heap)

    def _rearm(self) -> None:
        earliest = self._heap.next_deadline
        if earliest == self._armed_at:
            return
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._armed_at = earliest
        if earliest is not None:
            self._handle = self._loop.call_later(max(0.0, earliest - clock()), self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed_at = None
        now = clock()
        try:
            for client in self._heap.pop_due(now):
                try:
                    client.on_timer(now)
                except Exception as exc:
                    # one broken session must not cost every other session on this loop
                    # its timers (the rest of the due batch, and the re-arm below)
                    self._loop.call_exception_handler({
                        "message": "a session's timer callback failed",
                        "exception": exc, "client": client})
        finally:
            self._rearm()


_services: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TimerService]" = weakref.WeakKeyDictionary()


def timer_service(loop: asyncio.AbstractEventLoop) -> TimerService:
    """The TimerService of `loop` (one per loop)."""
    service = _services.get(loop)
    if service is None:
        service = _services[loop] = TimerService(loop)
    return service
