"""`accept_group()`: a consumer takes a whole group of messages (sessions over queues).

    async with qm.accept_group("orders", timeout=5) as group:   # TimeoutError if none comes
        group.group_id
        async for msg in group:           # the group's ready messages, in send order
            async with msg:
                handle(msg.body)

While the block runs, this consumer holds the group: nobody else receives any of its
messages, and new ones sent with its group_id come to it (`await group.receive(timeout)`
waits for the next). `async for` ends when the group has no message ready. Leaving the block
lets the group go: its messages still locked (received, not settled) are abandoned, and the
group is offered to the next consumer once they are back. The rules are the core's
(core/groups.py); this is their async face, over the embedded manager or a QueueClient (a
`GroupBackend` each).
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Protocol

from .message import Message


class GroupBackend(Protocol):
    """How a held group is reached: the embedded manager's operations, or a client."""

    async def accept(self, name: str, timeout: float | None) -> tuple[str, Any] | None:
        """(group_id, handle) of a group now held, or None on timeout."""

    async def receive(self, handle: Any, timeout: float | None) -> Message | None: ...

    async def release(self, handle: Any) -> None: ...


class GroupReceiver:
    """A held group: `group_id`, `receive(timeout)`, `async for` (see the module docstring)."""

    def __init__(self, backend: GroupBackend, group_id: str, handle: Any) -> None:
        self._backend = backend
        self._handle = handle
        self.group_id = group_id
        self.released = False

    async def receive(self, timeout: float | None = None) -> Message | None:
        """The group's next message in send order, peek-locked: complete() or abandon() it.
        Waits up to `timeout` seconds (None: until one comes; 0: only one ready now) and
        returns None if none came. LockLost once the group was let go."""
        return await self._backend.receive(self._handle, timeout)

    async def __aiter__(self) -> AsyncIterator[Message]:
        while True:
            message = await self.receive(0)
            if message is None:
                return
            yield message

    def __repr__(self) -> str:
        return f"<GroupReceiver {self.group_id!r}{' released' if self.released else ''}>"


class AcceptGroup:
    """What accept_group() returns: an async context manager holding one group."""

    def __init__(self, backend: GroupBackend, name: str, timeout: float | None) -> None:
        self._backend = backend
        self._name = name
        self._timeout = timeout
        self._receiver: GroupReceiver | None = None

    async def __aenter__(self) -> GroupReceiver:
        if self._receiver is not None:
            raise RuntimeError("an accept_group() is entered once")
        accepted = await self._backend.accept(self._name, self._timeout)
        if accepted is None:
            raise TimeoutError(f"no group of queue {self._name!r} was free within {self._timeout:g} s")
        self._receiver = GroupReceiver(self._backend, *accepted)
        return self._receiver

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        receiver = self._receiver
        if receiver is not None and not receiver.released:
            receiver.released = True
            await self._backend.release(receiver._handle)
        return False


def check_accept(timeout: Any) -> float | None:
    """accept_group's timeout, checked: None or seconds >= 0 (TypeError/ValueError naming it)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
    if not timeout >= 0 or timeout == float("inf"):
        raise ValueError(f"timeout must be a finite number of seconds >= 0 or None, not {timeout!r}")
    return float(timeout)


class LocalGroups:
    """The GroupBackend of the embedded manager."""

    def __init__(self, manager: Any) -> None:
        self._manager = manager
        self._operations = manager.operations

    async def accept(self, name: str, timeout: float | None) -> tuple[str, Any] | None:
        self._manager._check_open()
        accepted = await self._operations.accept_group(name, timeout)
        if accepted is None:
            return None
        group, holder = accepted
        return group.group_id, (group, holder)

    async def receive(self, handle: Any, timeout: float | None) -> Message | None:
        self._manager._check_open()
        group, holder = handle
        entry = await self._operations.take_group(group, holder, timeout)
        return None if entry is None else Message.of_entry(entry, self._manager)

    async def release(self, handle: Any) -> None:
        group, holder = handle
        await self._operations.release_group(group, holder, abandon=True)
