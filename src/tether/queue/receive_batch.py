"""`ReceiveBatch`: many messages received in one transaction (WCF's TransactedBatching).

    async with qm.receive_batch("orders", max_messages=100, timeout=1) as batch:
        for msg in batch:
            handle(msg.body)

Entering waits up to `timeout` seconds for a first message, then takes whatever else is
ready at once, up to `max_messages`, all in one transaction (local or at the service). The
block ending normally commits: every message is completed in ONE journal record, one fsync
for the whole batch. An exception rolls back: every message returns as a failed delivery
(its delivery count up, the retry rule applied). A batch that got nothing is an empty list.
The messages belong to the transaction: `complete()` or `abandon()` of one raises
TransactionError.

It works the same over any transaction with `receive(name, timeout)`, `commit()` and
`rollback()`; `more(transaction, name, n)` takes up to `n` further messages without waiting
(a loop locally, one frame of requests to a service).
"""
from __future__ import annotations

from types import TracebackType
from typing import Any, Awaitable, Callable

from .message import Message

#: The most messages one batch may take.
MAX_BATCH = 4096


def check_batch(max_messages: Any, timeout: Any) -> tuple[int, float | None]:
    """(max_messages, timeout) checked: TypeError/ValueError naming the argument."""
    if isinstance(max_messages, bool) or not isinstance(max_messages, int):
        raise TypeError(f"max_messages must be an integer 1..{MAX_BATCH}, not {max_messages!r}")
    if not 1 <= max_messages <= MAX_BATCH:
        raise ValueError(f"max_messages must be 1..{MAX_BATCH}, not {max_messages!r}")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
        if not timeout >= 0:        # nan too
            raise ValueError(f"timeout must be a number of seconds >= 0 or None, not {timeout!r}")
        timeout = float(timeout)
    return max_messages, timeout


class ReceiveBatch:
    """The async context manager `receive_batch()` returns (see the module docstring)."""

    def __init__(self, transaction: Any, name: str, max_messages: int, timeout: float | None,
                 more: Callable[[Any, str, int], Awaitable[list[Message]]]) -> None:
        self._transaction = transaction
        self._name = name
        self._max = max_messages
        self._timeout = timeout
        self._more = more
        self._entered = False
        #: the messages of the batch, once entered
        self.messages: list[Message] = []

    async def __aenter__(self) -> list[Message]:
        if self._entered:
            raise RuntimeError("a receive_batch() is entered once")
        self._entered = True
        tx = self._transaction
        try:
            first = await tx.receive(self._name, self._timeout)
            if first is not None:
                self.messages.append(first)
                if self._max > 1:
                    self.messages.extend(await self._more(tx, self._name, self._max - 1))
        except BaseException:
            if tx.state == "active":
                await tx.rollback()
            raise
        return list(self.messages)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        tx = self._transaction
        if tx.state != "active":
            return False
        if exc_type is None:
            await tx.commit()
        else:
            await tx.rollback()
        return False


async def more_in_turn(transaction: Any, name: str, n: int) -> list[Message]:
    """Up to `n` more messages of `name` that are ready now (one claim on a shared store)."""
    return await transaction.receive_many(name, n)
