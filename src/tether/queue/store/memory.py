"""`MemoryStore`: the store of a queue manager opened without a data directory.

Every queue is volatile there, so the core never journals anything and nothing is kept.
"""
from __future__ import annotations

from typing import Callable


class MemoryStore:
    """Keeps nothing (see the module docstring)."""

    durable = False
    shared = False

    def __init__(self) -> None:
        self.recovered: list[bytes] = []
        self.recovery_log: list[str] = []
        self.size_bytes = 0
        self.sync_seconds = None        # nothing is ever synced

    def release_recovered(self) -> None:
        """Nothing was recovered."""

    def append(self, record: bytes, done: Callable[[BaseException | None], None]) -> None:
        """Never called: a core without a journal makes no records."""
        raise RuntimeError("the memory store keeps no records")

    def wants_compaction(self, live_bytes: int) -> bool:
        """Never: there is nothing to compact."""
        return False

    async def rewrite(self, records: list[bytes], taken: Callable[[], None]) -> None:
        """Nothing to rewrite."""
        taken()

    async def close(self) -> None:
        """Nothing to release."""
