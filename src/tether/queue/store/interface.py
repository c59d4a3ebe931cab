"""`Store`: what the queue manager needs from wherever queue state is kept.

The queue core decides; a store keeps its journal records. A store is opened (recovering
what it held), replays its records once into the core, appends new records in order with a
callback each, and may be asked to rewrite itself as a snapshot (compaction). Two stores
implement it that way: `MemoryStore` (nothing kept: the queue manager runs without a data
directory) and `JournalStore` (the segmented journal on local disk).

A third, `PostgresStore` (postgres.py), is `shared`: several queue managers work on the
state it holds, so no one process's core can be the authority over it, and records of one
core would be wrong the moment another manager took a message. Such a store takes
operations instead (claim, settle, fail: shared_operations.py, which has the methods of
QueueOperations); its record methods are there but never used, and the core is kept only
as the catalogue of queue definitions and to check messages before they are sent.
"""
from __future__ import annotations

from typing import Callable, Protocol

from ...histogram import Histogram


class Store(Protocol):
    """A place for the queue core's journal records."""

    #: False: nothing is kept, every queue is volatile and no record is ever appended
    durable: bool

    #: True: the store holds the message state itself, shared with other queue managers
    #: (PostgreSQL): operations go to it through SharedQueueOperations, never as records
    shared: bool

    @property
    def recovered(self) -> list[bytes]:
        """The records found at open, in append order (replayed once, then released)."""

    @property
    def recovery_log(self) -> list[str]:
        """One line per repair recovery made at open (a torn tail)."""

    @property
    def size_bytes(self) -> int:
        """Bytes the store takes."""

    @property
    def sync_seconds(self) -> Histogram | None:
        """How long each sync of a batch took (None: the store does not sync each batch)."""

    def release_recovered(self) -> None:
        """The recovered records were replayed: let them go."""

    def append(self, record: bytes, done: Callable[[BaseException | None], None]) -> None:
        """Append one encoded record; `done(None)` once it is durable, `done(StorageError)`
        if it could not be written. Callbacks run on the event loop, in append order."""

    def cut_early(self, busy_for: float) -> bool:
        """True when a record the loop has been filling for `busy_for` seconds of its turn
        had better be appended now than at the turn's end (the store is idle and would
        finish a write sooner than the turn). Optional: a store without it is never asked."""

    def wants_compaction(self, live_bytes: int) -> bool:
        """True when a rewrite would shrink the store a lot (`live_bytes`: the state's size)."""

    async def rewrite(self, records: list[bytes], taken: Callable[[], None]) -> None:
        """Replace everything appended so far with `records` (a snapshot). `taken()` runs
        (on the loop) once the snapshot is ordered before every later append; appends made
        after that are kept after it."""

    async def close(self) -> None:
        """Finish pending appends and release the store."""
