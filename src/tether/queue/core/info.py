"""`QueueInfo`: the counts `QueueManager.queue_info()` reports.

The contract is the keys `depth`, `in_flight`, `dead` and `poison`; the others are extra.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class QueueInfo(Mapping):
    """Counts of one queue; reads as a dict too (`info["depth"]`, `dict(info)`)."""

    name: str
    durable: bool
    depth: int            # messages ready to be received
    in_flight: int        # received under a peek-lock, not yet completed or abandoned
    retrying: int         # waiting in the ;retry sub-queue
    dead: int             # messages from this queue now in a dead-letter queue
    poison: int           # in the ;poison sub-queue
    bytes: int            # body bytes held by the queue and its sub-queues
    faulted: bool         # receive_error_handling="fault" stopped delivery
    waiting: int = 0      # receivers waiting for a message
    scheduled: int = 0    # sent with a delivery time still to come (invisible until then)
    groups: int = 0       # groups with messages ready, locked, or waiting in ;retry

    def __getitem__(self, key: str) -> Any:
        if key not in _FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(_FIELDS)

    def __len__(self) -> int:
        return len(_FIELDS)


_FIELDS = tuple(f.name for f in fields(QueueInfo))
