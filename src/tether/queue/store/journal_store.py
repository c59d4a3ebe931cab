"""`JournalStore`: queue state kept in the segmented journal on local disk (journal.py).

It appends each record the queue core cuts, reports back when the journal has it
(`Journal.append_then`: group commit, fdatasync per the fsync policy), and tells when a
compaction is worth it: when the journal is `compact_ratio` times the live state and over
`compact_min_bytes`, a snapshot of the live state replaces it, so disk use follows the
messages actually held.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable

from ...errors import StorageError
from ...histogram import Histogram
from .journal import Journal

DEFAULT_SEGMENT_SIZE = 64 * 1024 * 1024
DEFAULT_COMPACT_RATIO = 4.0
DEFAULT_COMPACT_MIN_BYTES = 16 * 1024 * 1024


class JournalStore:
    """The journal as a Store (store/interface.py)."""

    durable = True
    shared = False

    def __init__(self, journal: Journal, *, compact_ratio: float, compact_min_bytes: int) -> None:
        self.journal = journal
        self.compact_ratio = compact_ratio
        self.compact_min_bytes = compact_min_bytes
        self.compactions = 0
        self.recovered: list[bytes] = journal.recovered
        self.recovery_log: list[str] = list(journal.recovery_log)

    @classmethod
    async def open(cls, directory: str | os.PathLike, *, fsync: str = "always", fsync_interval: float = 0.05,
                   segment_size: int = DEFAULT_SEGMENT_SIZE, compact_ratio: float = DEFAULT_COMPACT_RATIO,
                   compact_min_bytes: int = DEFAULT_COMPACT_MIN_BYTES, preallocate: bool = True) -> JournalStore:
        """Open (recovering) the journal in `directory`. ValueError naming a bad setting;
        JournalCorrupt for damage beyond a torn tail; QueueError if another process holds it.
        `preallocate`: see Journal.open."""
        if isinstance(compact_ratio, bool) or not isinstance(compact_ratio, (int, float)) \
                or not (compact_ratio > 1 and math.isfinite(compact_ratio)):
            raise ValueError(f"compact_ratio must be a finite number > 1, not {compact_ratio!r}")
        if isinstance(compact_min_bytes, bool) or not isinstance(compact_min_bytes, int) or compact_min_bytes < 0:
            raise ValueError(f"compact_min_bytes must be an integer >= 0, not {compact_min_bytes!r}")
        # max_in_flight 2: when a sync is quicker than the loop's turn, a second batch may
        # be written while the loop still runs the first one's senders (group_commit.py,
        # pipelining); when it is slower, one batch at a time and what waited merges
        journal = await Journal.open(directory, fsync=fsync, fsync_interval=fsync_interval,
                                     segment_size=segment_size, max_in_flight=2, preallocate=preallocate)
        return cls(journal, compact_ratio=float(compact_ratio), compact_min_bytes=compact_min_bytes)

    @property
    def size_bytes(self) -> int:
        """Bytes the journal takes on disk."""
        return self.journal.size_bytes

    @property
    def sync_seconds(self) -> Histogram | None:
        """Each batch's write + fdatasync seconds under fsync="always" (Journal.sync_seconds)."""
        return self.journal.sync_seconds

    def release_recovered(self) -> None:
        """The recovered records were replayed: let them go."""
        self.recovered = []
        self.journal.recovered = []

    def append(self, record: bytes, done: Callable[[BaseException | None], None]) -> None:
        """Append one record (see Store.append)."""
        try:
            self.journal.append_then(record, _report, done)
        except ValueError as exc:       # closed, or a record over the journal's limit
            raise StorageError(f"the journal refused a record: {exc}") from exc

    def cut_early(self, busy_for: float) -> bool:
        """True when the record the loop has been filling for `busy_for` seconds had better
        be appended now, before the loop's turn ends (see Journal.cut_early)."""
        return self.journal.cut_early(busy_for)

    def wants_compaction(self, live_bytes: int) -> bool:
        """True when the journal is compact_ratio times the live state (and big enough)."""
        size = self.journal.size_bytes
        return size >= self.compact_min_bytes and size >= self.compact_ratio * live_bytes

    async def rewrite(self, records: list[bytes], taken: Callable[[], None]) -> None:
        """Replace the journal with `records` (a snapshot of the live state). `taken()` runs
        once the journal has ordered the snapshot before every later append."""
        def snapshot() -> list[bytes]:
            taken()
            return records

        await self.journal.rewrite(snapshot)
        self.compactions += 1

    async def close(self) -> None:
        """Write and sync what is pending; close the journal."""
        await self.journal.close()


def _report(done: Callable[[BaseException | None], None], error: BaseException | None) -> None:
    if error is not None and not isinstance(error, StorageError):
        error = StorageError(f"the journal write failed: {error}")
    done(error)
