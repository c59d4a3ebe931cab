"""`Group`: the messages of one `group_id` in one application queue (sessions over queues).

A group's ready messages wait in a heap by key, which is send order (keys are assigned as
messages are sent), so a message that comes back (released, abandoned, back from `;retry`)
is the next one again. A group is received only whole: a consumer *holds* it
(`QueueCore.accept_group`) and only the holder takes its messages (`QueueCore.take_group`).

A group may be handed to a new holder only when it is *available*: nobody holds it, it has
a ready message, none of its messages is locked or being settled (`inflight`: an earlier
message still on its way back must not be overtaken), and none waits in `;retry`
(`retrying`). The holder itself takes nothing while one of its messages waits in `;retry`
or is being settled (`settling`).

A data structure only: the engine decides (engine.py), the queue holds the groups
(queue.py).
"""
from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from .entry import Entry
from .lifecycle import READY, SETTLING

# ties between heap items of one key (an old, stale item and the entry back from ;retry)
# are broken by this counter, never by comparing entries
_TIES = itertools.count()


class Group:
    """One group of an application queue (see the module docstring)."""

    __slots__ = ("group_id", "queue", "heap", "depth", "holder", "inflight", "retrying", "waiters")

    def __init__(self, group_id: str, queue: Any) -> None:
        self.group_id = group_id
        self.queue = queue
        self.heap: list[tuple[int, int, Entry]] = []    # (key, tie, entry) of READY entries, cleaned lazily
        self.depth = 0                             # READY entries in the heap
        self.holder: Any = None                    # who holds it (an adapter's token), or None
        self.inflight: dict[int, Entry] = {}       # key -> entry locked (or settling from locked)
        self.retrying = 0                          # its messages waiting in ;retry
        #: the holder's receives waiting for its next message (hand / fail, as queue Waiters)
        self.waiters: OrderedDict[Any, None] = OrderedDict()

    def push(self, entry: Entry) -> None:
        heapq.heappush(self.heap, (entry.key, next(_TIES), entry))
        self.depth += 1

    def _clean(self) -> None:
        heap, queue = self.heap, self.queue
        while heap and not _live(heap[0][2], queue):
            # a settling entry loses its slot here; if its write fails it is offered again
            heapq.heappop(heap)[2].in_ready = False

    def pop(self) -> Entry | None:
        """The READY entry sent first (the caller locks it), or None."""
        self._clean()
        if not self.heap:
            return None
        entry = heapq.heappop(self.heap)[2]
        entry.in_ready = False
        self.depth -= 1
        return entry

    def ready_entries(self) -> Iterator[Entry]:
        """The READY entries in the order the holder gets them."""
        queue = self.queue
        seen = set()
        for _, _, entry in sorted(self.heap, key=lambda item: item[:2]):
            if _live(entry, queue) and id(entry) not in seen:
                seen.add(id(entry))
                yield entry

    @property
    def blocked(self) -> bool:
        """A message of the group waits in ;retry: nothing after it may be delivered."""
        return self.retrying > 0

    @property
    def settling(self) -> bool:
        """One of its messages is being settled (its completion, its way back, its move is
        being written): the holder takes nothing meanwhile, so an abandoned message cannot
        be overtaken on its way back."""
        return any(entry.state == SETTLING for entry in self.inflight.values())

    @property
    def available(self) -> bool:
        """May be handed to a new holder now."""
        return self.holder is None and self.depth > 0 and not self.inflight and not self.retrying

    @property
    def idle(self) -> bool:
        """Holds nothing and nobody: it may be forgotten."""
        return (self.holder is None and self.depth == 0 and not self.inflight and not self.retrying
                and not self.waiters)

    def __repr__(self) -> str:
        return (f"<Group {self.group_id!r} ready={self.depth} inflight={len(self.inflight)} "
                f"retrying={self.retrying} held={self.holder is not None}>")


def _live(entry: Entry, queue: Any) -> bool:
    return entry.state == READY and entry.queue is queue and entry.in_ready
