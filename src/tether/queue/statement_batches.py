"""`StatementBatches`: calls made while a statement is on its way join the next one.

A shared store pays a round trip and, for what must be durable, a WAL flush per statement;
the journal pays one fdatasync per batch of records (group commit). This is the same idea
for the database: a call (one send, one complete) waits in a list; at most `in_flight`
statements run at once, each taking everything that waited, so under load many callers
share one statement and one commit, and an idle store runs a lone call at once.
"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Generic, TypeVar

T = TypeVar("T")

#: Most calls one statement takes.
MAX_BATCH = 1000


class StatementBatches(Generic[T]):
    """Batches calls for `run(items) -> per item a result or an exception` (see above)."""

    def __init__(self, run: Callable[[list[T]], Awaitable[list[Any]]], in_flight: int = 2) -> None:
        self._run = run
        self._in_flight = in_flight
        self._running = 0
        self._waiting: list[tuple[T, asyncio.Future]] = []

    async def __call__(self, item: T) -> Any:
        """`item`'s result, once the statement that took it is done (its exception raised)."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._running < self._in_flight:
            self._running += 1
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[:MAX_BATCH]
                del self._waiting[:MAX_BATCH]
                try:
                    results = await self._run([item for item, _ in batch])
                except BaseException as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                        raise
                    continue
                for (_, future), result in zip(batch, results):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._running -= 1
