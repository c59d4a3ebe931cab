"""`SharedForwarder`: store-and-forward out of a shared (PostgreSQL) store.

Every queue manager on the database runs one per transmission queue, but only the one that
holds the queue's row in `tether_forwarders` (shared_forwarding.py) forwards it: it runs a
`Forwarder` (forwarder.py) under the producer id kept in that row, so the target sees one
producer whichever manager forwards. The others wait, asking every `client_grace / 3`
seconds; when the holder's lease has gone (killed, or cut off from the database for
`client_grace`), the sweep that deleted it has already returned its peek-locks, and the
first to ask takes the queue over and starts from its front. Its HELLO at the target fences
the old holder's session there (a new epoch of the same producer), and the messages the old
holder had sent are resent under their numbers, so the target drops the ones it has.

The holder checks every `client_grace / 3` seconds that it still holds the queue and that
its lease never ran out meanwhile; otherwise it stops forwarding and waits like the others.
It lets go only by closing: the store's close returns its locks and ends its lease in one
transaction, so whoever takes over finds every message it had back in the queue.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..errors import TetherError
from .forwarder import Forwarder
from .remotes import DIRECT, Remote

log = logging.getLogger("tether.queue.forwarder")


class SharedForwarder:
    """Forwards transmission queue `queue` whenever this manager holds it (see above)."""

    def __init__(self, operations: Any, queue: str, authority: str, manager_id: bytes,
                 remote: Remote = DIRECT) -> None:
        self.operations = operations
        self.queue = queue
        self.authority = authority
        self.manager_id = manager_id
        self.remote = remote
        self.check_every = operations.store.client_grace / 3
        #: the Forwarder running while this manager holds the queue
        self.forwarder: Forwarder | None = None
        self._forwarded = 0          # by earlier holds of this manager
        self._dead_lettered = 0
        self._task: asyncio.Task | None = None
        self._closed = False

    @classmethod
    def start(cls, operations: Any, queue: str, authority: str, manager_id: bytes,
              remote: Remote = DIRECT) -> SharedForwarder:
        """A running SharedForwarder for transmission queue `queue` (bound for `authority`)."""
        forwarder = cls(operations, queue, authority, manager_id, remote)
        forwarder._task = asyncio.get_running_loop().create_task(forwarder._run())
        return forwarder

    @property
    def holding(self) -> bool:
        """True while this manager forwards the queue."""
        return self.forwarder is not None

    @property
    def forwarded(self) -> int:
        """Messages this manager forwarded (the target has them), completed here."""
        return self._forwarded + (self.forwarder.forwarded if self.forwarder is not None else 0)

    @property
    def dead_lettered(self) -> int:
        """Messages this manager's forwarding moved to the dead-letter queue."""
        return self._dead_lettered + (self.forwarder.dead_lettered if self.forwarder is not None else 0)

    async def _run(self) -> None:
        operations = self.operations
        while True:
            producer = None
            if operations.core.has_queue(self.queue):      # (deleted: it may be made again)
                try:
                    producer = await operations.hold_forwarding(self.queue)
                except TetherError as exc:       # the database is away: ask again
                    log.info("forwarding %s: cannot ask the database who forwards it: %s", self.queue, exc)
            if producer is None:
                await asyncio.sleep(self.check_every)
                continue
            losses = operations.lease_losses
            log.info("forwarding %s from this queue manager", self.queue)
            self.forwarder = Forwarder.start(operations, self.queue, self.authority, self.manager_id, self.remote,
                                             client_id=bytes(producer))
            try:
                await self._while_held(losses)
            finally:
                await self._stop_forwarder()

    async def _while_held(self, losses: int) -> None:
        """Return once this manager no longer holds the queue (or the queue went)."""
        operations = self.operations
        while True:
            await asyncio.sleep(self.check_every)
            if operations.lease_losses != losses or not operations.core.has_queue(self.queue):
                log.warning("forwarding %s: this queue manager's lease ran out; stopped", self.queue)
                return
            try:
                held = await operations.holds_forwarding(self.queue)
            except TetherError:
                continue        # the database is away: a lease that runs out shows next time
            if not held:
                log.warning("forwarding %s: another queue manager took it over; stopped", self.queue)
                return

    async def _stop_forwarder(self) -> None:
        forwarder, self.forwarder = self.forwarder, None
        if forwarder is not None:
            self._forwarded += forwarder.forwarded
            self._dead_lettered += forwarder.dead_lettered
            await forwarder.close()

    async def close(self) -> None:
        """Stop (the queue is let go when the store closes: see the module docstring)."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        await self._stop_forwarder()

    def __repr__(self) -> str:
        return f"<SharedForwarder {self.queue} holding={self.holding} forwarded={self.forwarded}>"
