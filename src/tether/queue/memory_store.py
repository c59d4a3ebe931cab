"""The in-memory store: the same interface as the durable store, keeping nothing.

A queue manager opened without a data directory uses it, so every queue is volatile and
nothing touches the disk; operations apply at once.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable, Iterable


class MemoryStore:
    """Applies every operation immediately; nothing survives close()."""

    durable = False

    def __init__(self) -> None:
        self.recovered: list[bytes] = []
        self.recovery_log: list[str] = []
        self.size_bytes = 0

    @classmethod
    async def open(cls) -> "MemoryStore":
        """A new, empty store (the same call shape as DurableStore.open)."""
        return cls()

    def set_snapshot(self, snapshot: Callable[[], Iterable[list]], live_bytes: Callable[[], int]) -> None:
        """Unused: there is no journal to compact."""

    def submit(self, op: list, apply: Callable[[Any], None] | None, arg: Any) -> asyncio.Future:
        """Apply at once; the returned future is already done."""
        return self.submit_many((op,), apply, arg)

    def submit_many(self, ops: Iterable[list], apply: Callable[[Any], None] | None, arg: Any) -> asyncio.Future:
        """Apply at once (the operations are not kept); the returned future is done."""
        if apply is not None:
            apply(arg)
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    async def flush(self) -> None:
        """Nothing is ever pending."""

    async def close(self) -> None:
        """Nothing to release."""
