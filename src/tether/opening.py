"""`Opening`: what `connect()`, `serve()`, `QueueManager.open()` and `QueueClient.connect()`
return: await it for the object, or use it as an async context manager that closes the
object on exit."""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Opening(Generic[T]):
    """Awaitable (giving the opened object) and an async context manager (closing it on
    exit: with `close(obj)`, or without `close` by the object's own `__aexit__`, which sees
    the exception that ended the block)."""

    def __init__(self, open: Callable[[], Awaitable[T]],
                 close: Callable[[T], Awaitable[None]] | None = None) -> None:
        self._open = open
        self._close = close
        self._opened: T | None = None

    def __await__(self) -> Generator[Any, None, T]:
        return self._open().__await__()

    async def __aenter__(self) -> T:
        self._opened = await self._open()
        return self._opened

    async def __aexit__(self, *exc_info: Any) -> None:
        opened, self._opened = self._opened, None
        if opened is None:
            return
        if self._close is not None:
            await self._close(opened)
        else:
            await opened.__aexit__(*exc_info)  # type: ignore[attr-defined]
