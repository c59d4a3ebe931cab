"""`ManagerStatistics`: what a queue manager has counted, read in one synchronous call
(tether.metrics reads it when it is scraped; nothing here is computed per message).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..histogram import Histogram
from .core import QueueInfo


@dataclass(frozen=True)
class ManagerStatistics:
    """A queue manager's counts at one instant."""

    #: queue_info() of every queue (transmission, return and system queues too)
    queues: list[QueueInfo]
    #: queue -> (messages sent to it, messages received from it and completed), since open
    traffic: dict[str, tuple[int, int]]
    #: (queue, reason) -> messages of that queue dead-lettered for that reason, since open
    dead_lettered: dict[tuple[str, str], int]
    #: bytes the journal takes on disk (0 without a data directory)
    journal_bytes: int
    #: each journal batch's write + fdatasync seconds (None unless fsync="always")
    sync_seconds: Histogram | None
    #: clients the manager's services know (connected, or away within client_grace)
    clients: int
    #: the shared store's address (a database URL) when the queues live there, else None:
    #: several managers of one process on the same database report its queues once
    shared_store: str | None = None


def gather(operations: Any, services: list[Any]) -> ManagerStatistics:
    """The statistics of the queues `operations` runs and the `services` serving them."""
    core = operations.core
    store = operations.store
    # a shared store's operations count what this process did; a journal's core counts it all
    counts = operations if store.shared else core
    return ManagerStatistics(
        queues=[operations.info_now(name) for name in core.queue_names()],
        traffic=counts.traffic(),
        dead_lettered=dict(counts.dead_lettered),
        journal_bytes=store.size_bytes,
        sync_seconds=store.sync_seconds,
        clients=sum(len(service.clients) for service in services),
        shared_store=store.url if store.shared else None,
    )
