"""A simulated clock and network: seeded, so a seed replays exactly.

`Clock` is an event heap (ties broken by insertion order, so nothing depends on hashing or
identity). `Direction` carries packets one way with delay, jitter, loss, duplication,
reordering, a bandwidth-limited drop-tail queue and partitions; in TCP mode it delivers in
order without loss, and `cut()` loses what is in flight on the connection.
"""
from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class Clock:
    """Simulated time and the events scheduled on it."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list = []
        self._seq = itertools.count()

    def at(self, when: float, callback: Callable[..., None], *args: Any) -> None:
        """Run callback(*args) at `when` (never in the past)."""
        heapq.heappush(self._heap, (max(when, self.now), next(self._seq), callback, args))

    def after(self, delay: float, callback: Callable[..., None], *args: Any) -> None:
        self.at(self.now + delay, callback, *args)

    def step(self) -> bool:
        """Advance to the next event and run it; False when nothing is scheduled."""
        if not self._heap:
            return False
        when, _, callback, args = heapq.heappop(self._heap)
        self.now = when
        callback(*args)
        return True

    @property
    def next_time(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)


@dataclass(frozen=True)
class Conditions:
    """How one direction of a path treats packets."""

    delay: float = 0.005           # fixed one-way delay, seconds
    jitter: float = 0.0            # plus uniform 0..jitter
    loss: float = 0.0              # probability a packet is dropped
    duplicate: float = 0.0         # probability a packet arrives twice
    reorder: float = 0.0           # probability a packet gets an extra random delay
    reorder_delay: float = 0.05    # that extra delay is uniform 0..reorder_delay
    bandwidth: float | None = None  # bytes/s of a bottleneck queue; None: unlimited
    queue_limit: float = 0.05      # drop-tail: a packet that would wait longer is dropped
    corrupt: float = 0.0           # probability a packet gets a byte overwritten (hostile path)

    def describe(self) -> str:
        parts = [f"delay={self.delay * 1000:.1f}ms"]
        for name in ("jitter", "reorder_delay"):
            value = getattr(self, name)
            if value and (name != "reorder_delay" or self.reorder):
                parts.append(f"{name}={value * 1000:.1f}ms")
        for name in ("loss", "duplicate", "reorder", "corrupt"):
            value = getattr(self, name)
            if value:
                parts.append(f"{name}={value:.3f}")
        if self.bandwidth:
            parts.append(f"bandwidth={self.bandwidth / 1e6:.2f}MB/s queue={self.queue_limit * 1000:.0f}ms")
        return " ".join(parts)


@dataclass(frozen=True)
class Interval:
    """[start, end): end may be math.inf (a permanent partition)."""

    start: float
    end: float = math.inf

    def covers(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass
class DirectionStats:
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    partitioned: int = 0
    duplicated: int = 0
    reordered: int = 0
    queue_drops: int = 0
    cut: int = 0
    corrupted: int = 0
    misaddressed: int = 0


class Direction:
    """One direction of a path between a client and the server.

    `transmit(body, src, dst)` schedules `deliver(body, src, dst)` at the arrival time.
    UDP mode: each packet independently lost, duplicated, delayed, reordered. TCP mode
    (`reliable=True`): FIFO, no loss; a partition stalls delivery until it ends; `cut()`
    drops what is in flight (the connection broke).
    """

    def __init__(self, name: str, clock: Clock, rng: random.Random, conditions: Conditions,
                 deliver: Callable[[bytes, Any, Any], None], *, reliable: bool = False,
                 partitions: tuple[Interval, ...] = ()) -> None:
        self.name = name
        self.clock = clock
        self.rng = rng
        self.conditions = conditions
        self.deliver = deliver
        self.reliable = reliable
        self.partitions = list(partitions)
        self.stats = DirectionStats()
        self.epoch = 0                 # TCP: bumped by cut(); older packets are lost
        self._queue_free_at = 0.0      # when the bottleneck finishes its current backlog
        self._last_arrival = 0.0       # TCP: FIFO

    def partitioned(self, t: float) -> bool:
        return any(p.covers(t) for p in self.partitions)

    def partition_end(self, t: float) -> float:
        end = t
        for p in self.partitions:
            if p.covers(end):
                end = p.end
        return end

    @property
    def last_arrival(self) -> float:
        """TCP: when the last packet sent so far arrives."""
        return max(self._last_arrival, self.clock.now)

    def cut(self) -> None:
        """TCP: the connection broke; everything in flight is lost."""
        self.epoch += 1

    def transmit(self, body: bytes, src: Any, dst: Any) -> None:
        c = self.conditions
        now = self.clock.now
        rng = self.rng
        self.stats.sent += 1
        if self.reliable:
            arrival = now + c.delay + (rng.random() * c.jitter if c.jitter else 0.0)
            arrival = self._through_queue(len(body), now, arrival, drop=False)
            if self.partitioned(arrival):
                arrival = self.partition_end(arrival)  # TCP retransmits across a stall
            arrival = max(arrival, self._last_arrival)
            if math.isinf(arrival):
                self.stats.partitioned += 1
                return
            self._last_arrival = arrival
            self.clock.at(arrival, self._arrive, body, src, dst, self.epoch)
            return
        if self.partitioned(now):
            self.stats.partitioned += 1
            return
        if c.loss and rng.random() < c.loss:
            self.stats.lost += 1
            return
        if c.corrupt and rng.random() < c.corrupt and body:
            body = _corrupt(body, rng)
            self.stats.corrupted += 1
        copies = 2 if (c.duplicate and rng.random() < c.duplicate) else 1
        if copies == 2:
            self.stats.duplicated += 1
        for _ in range(copies):
            arrival = now + c.delay
            if c.jitter:
                arrival += rng.random() * c.jitter
            if c.reorder and rng.random() < c.reorder:
                arrival += rng.random() * c.reorder_delay
                self.stats.reordered += 1
            arrival = self._through_queue(len(body), now, arrival, drop=True)
            if arrival is None:
                self.stats.queue_drops += 1
                continue
            self.clock.at(arrival, self._arrive, body, src, dst, self.epoch)

    def _through_queue(self, size: int, now: float, arrival: float, drop: bool) -> float | None:
        c = self.conditions
        if not c.bandwidth:
            return arrival
        start = max(now, self._queue_free_at)
        if drop and start - now > c.queue_limit:
            return None
        self._queue_free_at = start + size / c.bandwidth
        return arrival + (self._queue_free_at - now)

    def _arrive(self, body: bytes, src: Any, dst: Any, epoch: int) -> None:
        if epoch != self.epoch:
            self.stats.cut += 1
            return
        if not self.reliable and self.partitioned(self.clock.now):
            self.stats.partitioned += 1
            return
        self.stats.delivered += 1
        self.deliver(body, src, dst)


def _corrupt(body: bytes, rng: random.Random) -> bytes:
    """A hostile edit: overwrite one to three bytes, or truncate."""
    data = bytearray(body)
    if rng.random() < 0.2 and len(data) > 1:
        return bytes(data[:rng.randrange(1, len(data))])
    for _ in range(rng.randint(1, 3)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


@dataclass
class Path:
    """A client's two directions to the server, and (TCP) whether its connection is up."""

    up: Direction
    down: Direction
    connected: bool = True
    cuts: int = 0
    stats: dict = field(default_factory=dict)

    def cut(self) -> None:
        self.up.cut()
        self.down.cut()
        self.connected = False
        self.cuts += 1
