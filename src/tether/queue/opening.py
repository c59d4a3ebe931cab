"""`Opening`: what `QueueManager.open()` and `QueueClient.connect()` return: await it for
the object, or use it as an async context manager that closes the object on exit."""
from __future__ import annotations

from typing import Any, Awaitable, Callable, Generator, Generic, TypeVar

T = TypeVar("T")


class Opening(Generic[T]):
    """Awaitable (giving the opened object) and an async context manager (closing it)."""

    def __init__(self, open: Callable[[], Awaitable[T]], close: Callable[[T], Awaitable[None]]) -> None:
        self._open = open
        self._close = close
        self._opened: T | None = None

    def __await__(self) -> Generator[Any, None, T]:
        return self._open().__await__()

    async def __aenter__(self) -> T:
        self._opened = await self._open()
        return self._opened

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._opened is not None:
            await self._close(self._opened)
