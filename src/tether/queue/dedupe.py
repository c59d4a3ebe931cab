"""Duplicate detection for store-and-forward: the ids a queue manager has accepted.

A forwarder retries a transfer it is not sure arrived (a lost acknowledgement, a crash
on either side), so the target remembers every forwarded message id it accepted, with
the time it was first seen, journaled with the message (records.SEEN), and refuses the
same id again (DESIGN.md "Queues": "de-duplicates by message id"). An id is forgotten
when the sender says it will never send it again (records.FORGET), or after `window`
seconds, or when more than `max_entries` ids are held (oldest first).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Iterator

DEFAULT_WINDOW = 86400.0          # seconds an accepted id is remembered at most
DEFAULT_MAX_ENTRIES = 1_000_000   # memory bound: the oldest ids are forgotten first


class DedupeWindow:
    """Message ids accepted recently, each with the time it was first seen."""

    __slots__ = ("window", "max_entries", "_seen")

    def __init__(self, window: float = DEFAULT_WINDOW, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if not window > 0:
            raise ValueError(f"dedupe_window must be > 0 seconds, not {window!r}")
        if max_entries < 1:
            raise ValueError(f"dedupe max_entries must be >= 1, not {max_entries!r}")
        self.window = window
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()

    def __contains__(self, message_id: str) -> bool:
        return message_id in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, message_id: str, when: float, now: float) -> None:
        """Remember an id first seen at `when`; forget expired and surplus entries."""
        if message_id not in self._seen:
            self._seen[message_id] = when
        self.prune(now)

    def forget(self, message_ids: Iterable[str]) -> None:
        """Drop these ids (their sender will never send them again)."""
        for message_id in message_ids:
            self._seen.pop(message_id, None)

    def prune(self, now: float) -> None:
        """Drop ids older than `window` seconds, and the oldest beyond `max_entries`."""
        seen = self._seen
        oldest = now - self.window
        while seen and (len(seen) > self.max_entries or next(iter(seen.values())) < oldest):
            seen.popitem(last=False)

    def items(self) -> Iterator[tuple[str, float]]:
        """(id, first seen) of every remembered id, oldest first."""
        return iter(self._seen.items())
