"""`Transaction`: receives and sends that take effect together, or not at all.

    async with qm.transaction() as tx:
        m = await tx.receive("orders")
        await tx.send("billing", m.body)

Leaving the block normally commits: the received messages are removed and the sends queued
in ONE journal record, so a crash leaves all or nothing. An exception (or cancellation)
rolls back: the sends are discarded and the received messages return to their queue as a
failed delivery (their delivery_count increased, the poison rule applied).
"""
from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

from ..errors import TransactionError
from .message import Message

if TYPE_CHECKING:
    from .manager import QueueManager
    from .queue import Queue

ACTIVE = "active"
COMMITTED = "committed"
ROLLED_BACK = "rolled back"


class Transaction:
    """A group of receives and sends on one queue manager (see the module docstring)."""

    def __init__(self, manager: "QueueManager") -> None:
        self._manager = manager
        self._received: list[Message] = []
        self._sends: list[tuple["Queue", Message]] = []
        self.state = ACTIVE

    def _check_active(self) -> None:
        if self.state != ACTIVE:
            raise TransactionError(f"the transaction is already {self.state}")

    async def receive(self, name: str, timeout: float | None = None) -> Message | None:
        """Like QueueManager.receive(); the message is settled by commit or rollback."""
        self._check_active()
        queue = self._manager._receivable(name)
        self._manager._check_transactional(queue.main)
        message = await self._manager._receive(queue, self, timeout)
        if message is not None:
            if self.state != ACTIVE:  # the transaction ended while we waited
                await self._manager._rollback([message], self)
                self._check_active()
            self._received.append(message)
        return message

    async def send(self, address: str, body: bytes, *, headers: dict | None = None,
                   time_to_live: float | None = None) -> str:
        """Like QueueManager.send(), but the message is queued only at commit. Returns its id."""
        self._check_active()
        queue, destination = await self._manager._sending_queue(address)
        self._manager._check_transactional(queue)
        message = self._manager._new_message(queue, body, headers, time_to_live, destination)
        self._sends.append((queue, message))
        return message.id

    @property
    def received(self) -> list[Message]:
        """The messages received so far in this transaction."""
        return list(self._received)

    async def commit(self) -> None:
        """Make every receive and send of the transaction take effect, atomically and
        durably. Raises TransactionError (after rolling back) when a peek-lock expired,
        QueueFull when a send does not fit."""
        self._check_active()
        self.state = COMMITTED
        try:
            await self._manager._commit(self._received, self._sends, self)
        except BaseException:
            self.state = ROLLED_BACK
            raise

    async def rollback(self) -> None:
        """Discard the sends; return the received messages as failed deliveries."""
        self._check_active()
        self.state = ROLLED_BACK
        self._sends.clear()
        await self._manager._rollback(self._received, self)

    # a message received in a transaction is settled by the transaction
    async def complete_message(self, message: Message) -> None:
        raise TransactionError(f"message {message.id} belongs to a transaction: it is completed by commit()")

    async def abandon_message(self, message: Message) -> None:
        raise TransactionError(f"message {message.id} belongs to a transaction: it is returned by rollback()")

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
