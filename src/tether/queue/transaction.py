"""`Transaction`: receives and sends that take effect together, or not at all.

    async with qm.transaction() as tx:
        m = await tx.receive("orders")
        await tx.send("billing", m.body)

Leaving the block normally commits: the received messages are removed and the sends queued
in ONE journal record, so a crash leaves all or nothing. An exception (or cancellation)
rolls back: the sends are discarded and the received messages return to their queue as a
failed delivery (their delivery_count increased, the retry rule applied).
"""
from __future__ import annotations

from types import TracebackType
from typing import Awaitable, Callable

from ..errors import TransactionError
from .core import Entry
from .message import Message
from .operations import QueueOperations

ACTIVE = "active"
COMMITTED = "committed"
ROLLED_BACK = "rolled back"


class Transaction:
    """A group of receives and sends on one queue manager (see the module docstring).
    `route(address)` names the local queue a send address goes to."""

    def __init__(self, operations: QueueOperations, route: Callable[[str], Awaitable[str]]) -> None:
        self._operations = operations
        self._route = route
        self._received: list[Message] = []
        self._sends: list[Entry] = []
        self.state = ACTIVE

    def _check_active(self) -> None:
        if self.state != ACTIVE:
            raise TransactionError(f"the transaction is already {self.state}")

    def _check_transactional(self, name: str) -> None:
        if not self._operations.core.settings(name).exactly_once:
            raise TransactionError(f"queue {name!r} has exactly_once=False: it takes no transactions")

    async def receive(self, name: str, timeout: float | None = None) -> Message | None:
        """Like QueueManager.receive(); the message is settled by commit or rollback."""
        self._check_active()
        self._check_transactional(name)
        entry = await self._operations.take(name, timeout)
        if entry is None:
            return None
        message = Message.of_entry(entry, self)
        if self.state != ACTIVE:      # the transaction ended while we waited
            await self._operations.rollback([(entry, entry.tag)])
            self._check_active()
        self._received.append(message)
        return message

    async def receive_many(self, name: str, count: int) -> list[Message]:
        """Up to `count` messages of `name` that are ready now (no wait), in this
        transaction: one claim for all of them on a shared store."""
        self._check_active()
        self._check_transactional(name)
        messages = [Message.of_entry(entry, self) for entry in await self._operations.take_many(name, count)]
        if self.state != ACTIVE:      # the transaction ended while we waited
            await self._operations.rollback([(m._entry, m._tag) for m in messages])
            self._check_active()
        self._received.extend(messages)
        return messages

    async def send(self, address: str, body: bytes, *, headers: dict | None = None,
                   time_to_live: float | None = None, priority: int = 3, delay: float | None = None,
                   deliver_at: float | None = None, group_id: str | None = None,
                   journal: bool | None = None) -> str:
        """Like QueueManager.send(), but the message is queued only at commit. Returns its id."""
        self._check_active()
        name = await self._route(address)
        self._check_transactional(name)
        entry = self._operations.prepare(name, body, headers=headers, time_to_live=time_to_live,
                                         destination=address if name != address else None,
                                         priority=priority, delay=delay, deliver_at=deliver_at,
                                         group_id=group_id, journal=journal)
        self._sends.append(entry)
        return entry.id

    def give_back(self, message: Message) -> bool:
        """A message received in this transaction never reached its receiver (the service
        could not send it): it leaves the transaction and goes back to its queue,
        uncounted. False when it is not one of this transaction's."""
        if self.state != ACTIVE or message not in self._received:
            return False
        self._received.remove(message)
        return self._operations.release(message._entry, message._tag)

    @property
    def received(self) -> list[Message]:
        """The messages received so far in this transaction."""
        return list(self._received)

    def _receipts(self) -> list[tuple[Entry, int]]:
        return [(m._entry, m._tag) for m in self._received]

    async def commit(self) -> None:
        """Make every receive and send of the transaction take effect, atomically and
        durably. Raises TransactionError (after rolling back) when a peek-lock was lost,
        QueueFull when a send does not fit, StorageError when the journal failed."""
        self._check_active()
        self.state = COMMITTED
        try:
            await self._operations.commit(self._receipts(), self._sends)
        except BaseException:
            self.state = ROLLED_BACK
            await self._operations.rollback(self._receipts())
            raise

    async def rollback(self) -> None:
        """Discard the sends; return the received messages as failed deliveries."""
        self._check_active()
        self.state = ROLLED_BACK
        self._sends.clear()
        await self._operations.rollback(self._receipts())

    # a message received in a transaction is settled by the transaction
    async def complete_message(self, message: Message) -> None:
        raise TransactionError(f"message {message.id} belongs to a transaction: it is completed by commit()")

    async def abandon_message(self, message: Message) -> None:
        raise TransactionError(f"message {message.id} belongs to a transaction: it is returned by rollback()")

    async def renew_message(self, message: Message) -> None:
        """A message of this transaction keeps its lock longer (until commit or rollback)."""
        self._check_active()
        message._lock_deadline = await self._operations.renew(message._entry, message._tag)

    async def __aenter__(self) -> "Transaction":
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        if self.state != ACTIVE:
            return False
        if exc_type is None:
            await self.commit()
        else:
            await self.rollback()
        return False


