"""The application on each side of a simulated session: what it sends (random batch sizes,
sometimes messages large enough to fragment), how fast it consumes, and when it closes.

Every message carries who sent it and its index, and a body the receiver can recompute,
so the harness checks exactly-once, order and content of every delivery.
"""
from __future__ import annotations

import random
import struct
from dataclasses import dataclass

HEADER = struct.Struct(">BI")   # side (0 client, 1 server), index
HEADER_SIZE = HEADER.size
# One random block per run: a message body is a slice of it, so the receiver can rebuild
# the expected bytes from the header alone and catch reassembly that reorders pieces.
BLOCK_SIZE = 1 << 17


@dataclass(frozen=True)
class AppPlan:
    """What one side's application does. Times in seconds of simulated time."""

    total: int = 100                   # messages to send
    batch_max: int = 16                # send_many() of 1..batch_max messages
    gap: float = 0.002                 # mean pause between batches (exponential)
    small_max: int = 64                # small messages: HEADER_SIZE..small_max bytes
    large_rate: float = 0.0            # probability a message is large
    large_max: int = 0                 # large messages: up to this many bytes
    consume: str = "eager"             # "eager" | "slow" | "stalling"
    consume_interval: float = 0.001    # slow: one message per interval (exponential)
    stall_rate: float = 0.0            # stalling: probability a consume step stalls
    stall_time: float = 1.0            # ... for up to this long
    start_delay: float = 0.0           # before the first batch
    close_role: str = "closer"         # "closer" | "half" (close_sending, then wait) | "none"

    def describe(self) -> str:
        s = f"total={self.total} batch<={self.batch_max} gap={self.gap * 1000:.1f}ms"
        if self.large_rate:
            s += f" large={self.large_rate:.2f}x{self.large_max}B"
        s += f" consume={self.consume}"
        if self.consume != "eager":
            s += f"/{self.consume_interval * 1000:.1f}ms"
        if self.stall_rate:
            s += f" stall={self.stall_rate:.3f}x{self.stall_time:.1f}s"
        return s + f" close={self.close_role}"


class Bodies:
    """Message bodies of a run, rebuilt identically on the receiving side."""

    def __init__(self, seed: int) -> None:
        self.block = random.Random(f"{seed}-block").randbytes(BLOCK_SIZE)

    def make(self, side: int, index: int, size: int) -> bytes:
        size = max(HEADER_SIZE, size)
        body = size - HEADER_SIZE
        start = (index * 7919 + side * 104729) % (BLOCK_SIZE - body) if body < BLOCK_SIZE else 0
        return HEADER.pack(side, index) + self.block[start:start + body]

    def check(self, message: bytes) -> tuple[int, int, bool]:
        """(side, index, body is the one sent)."""
        if len(message) < HEADER_SIZE:
            return -1, -1, False
        side, index = HEADER.unpack_from(message)
        return side, index, self.make(side, index, len(message)) == message


class App:
    """One side's application state: its plan, what it sent and what it received."""

    def __init__(self, side: int, plan: AppPlan, rng: random.Random, bodies: Bodies,
                 max_message: int) -> None:
        self.side = side
        self.plan = plan
        self.rng = rng
        self.bodies = bodies
        self.max_message = max_message
        self.next_index = 0                  # next message to create
        self.handed = 0                      # messages accepted by engine.send()
        self.batch: list[bytes] = []         # the rest of the current send_many()
        self.blocked = False                 # waiting for send_capacity
        self.send_scheduled = False
        self.inbox: list[bytes] = []         # delivered, not yet consumed
        self.inbox_head = 0
        self.consumed = 0                    # consumed, not yet released to the engine
        self.consume_scheduled = False
        self.received = 0                    # messages delivered to this side
        self.next_expected = 0               # ordered: index of the next delivery
        self.seen: set[int] = set()          # unordered: indices delivered
        self.peer_closed = False
        self.close_sending_called = False
        self.close_called = False
        self.ended = False
        self.error = None
        self.end_time: float | None = None

    @property
    def done_sending(self) -> bool:
        return self.handed >= self.plan.total and not self.batch

    @property
    def waiting(self) -> int:
        return len(self.inbox) - self.inbox_head

    def next_batch(self) -> list[bytes]:
        """The messages of the next send_many() call."""
        plan, rng = self.plan, self.rng
        count = min(rng.randint(1, plan.batch_max), plan.total - self.next_index)
        batch = []
        for _ in range(count):
            if plan.large_rate and rng.random() < plan.large_rate:
                size = rng.randint(plan.small_max + 1, max(plan.small_max + 1, plan.large_max))
            else:
                size = rng.randint(HEADER_SIZE, plan.small_max)
            batch.append(self.bodies.make(self.side, self.next_index, min(size, self.max_message)))
            self.next_index += 1
        return batch

    def next_gap(self) -> float:
        return self.rng.expovariate(1.0 / self.plan.gap) if self.plan.gap > 0 else 0.0

    def next_consume_delay(self) -> float:
        plan, rng = self.plan, self.rng
        delay = rng.expovariate(1.0 / plan.consume_interval) if plan.consume_interval > 0 else 0.0
        if plan.consume == "stalling" and rng.random() < plan.stall_rate:
            delay += rng.random() * plan.stall_time
        return delay
