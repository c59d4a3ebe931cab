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


def gather(operations: Any, services: list[Any]) -> ManagerStatistics:
    """The statistics of the queues `operations` runs and the `services` serving them."""
    core = operations.core
    store = operations.store
    return ManagerStatistics(
        queues=[operations.info(name) for name in core.queue_names()],
        traffic=core.traffic(),
        dead_lettered=dict(core.dead_lettered),
        journal_bytes=store.size_bytes,
        sync_seconds=store.sync_seconds,
        clients=sum(len(service.clients) for service in services),
    )
