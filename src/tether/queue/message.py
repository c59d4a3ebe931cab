"""`Message`: one received (or peeked) message, as the application sees it.

`async with msg:` settles it by how the block ends: complete on success, abandon on an
exception.

A message is a snapshot of the queued entry at delivery, plus what is needed to settle it:
who delivered it (its *settler*: the local queue manager, a transaction, or a remote client)
and the number of the peek-lock it was delivered under. `complete()` and `abandon()` hand
it back to that settler; once the lock is gone (expired, settled, redelivered) they raise
LockLost, because the lock number no longer matches.

Headers are read-only: a receiver's changes could otherwise reach the stored message.
"""
from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

from ..errors import LockLost, TetherError
from .core.headers import decode_headers


class Settler(Protocol):
    """Whoever delivered a message under a peek-lock and settles it."""

    async def complete_message(self, message: Message) -> None: ...

    async def abandon_message(self, message: Message) -> None: ...

    async def renew_message(self, message: Message) -> None: ...


class Message:
    """A received message: `id`, `body`, `headers` (read-only), `delivery_count`,
    `enqueued_at`, `expires_at`, `priority`, `group_id`, and on a dead-letter queue `dead_letter_reason` and
    `dead_letter_source`. Settle it with `await complete()` or `await abandon()`."""

    __slots__ = ("id", "body", "_headers", "_encoded_headers", "delivery_count", "enqueued_at", "expires_at",
                 "dead_letter_reason", "dead_letter_source", "destination", "retry_at", "attempts", "sequence", "queue",
                 "priority", "group_id", "_settled",
                 "_settler", "_entry", "_tag", "_lock_deadline")

    def __init__(self, id: str, body: bytes, headers: bytes | None = None, delivery_count: int = 0,
                 enqueued_at: float = 0.0, expires_at: float | None = None,
                 dead_letter_reason: str | None = None, dead_letter_source: str | None = None,
                 destination: str | None = None, retry_at: float | None = None,
                 attempts: int = 0, queue: str | None = None, sequence: int = 0, priority: int = 3,
                 group_id: str | None = None) -> None:
        self.id = id
        self.body = body
        self._encoded_headers = headers
        self._headers: Mapping[str, Any] | None = None
        #: how many times the message has been delivered (this delivery included)
        self.delivery_count = delivery_count
        #: wall-clock time (time.time()) the message was first queued
        self.enqueued_at = enqueued_at
        #: wall-clock time after which it is dead-lettered as expired; None: never
        self.expires_at = expires_at
        self.dead_letter_reason = dead_letter_reason
        self.dead_letter_source = dead_letter_source
        #: in a transmission queue: the tether:// address it is bound for
        self.destination = destination
        #: in a `;retry` sub-queue: when it goes back to its main queue
        self.retry_at = retry_at
        #: failed deliveries from its main queue so far (the retry rule counts these)
        self.attempts = attempts
        #: the queue (or sub-queue) it was received from
        self.queue = queue
        #: its producer's sequence number (0 when it came without one)
        self.sequence = sequence
        #: 0..7, higher received first (3 unless the sender said otherwise)
        self.priority = priority
        #: the group it was sent in (group_id=), or None
        self.group_id = group_id
        self._settled = False
        self._settler: Settler | None = None
        self._entry: Any = None
        self._tag = 0
        self._lock_deadline = 0.0

    @classmethod
    def of_entry(cls, entry: Any, settler: Settler | None) -> Message:
        """A message for a locked core entry (its lock number is the entry's tag now)."""
        # every field set here without __init__'s keyword handling: once per receive
        message = cls.__new__(cls)
        message.id = entry.id
        message.body = entry.body
        message._encoded_headers = entry.headers
        message._headers = None
        message.delivery_count = entry.delivery_count
        message.enqueued_at = entry.enqueued_at
        message.expires_at = entry.expires_at
        message.dead_letter_reason = entry.dead_letter_reason
        message.dead_letter_source = entry.dead_letter_source
        message.destination = entry.destination
        message.retry_at = entry.retry_at
        message.attempts = entry.attempts
        message.queue = entry.queue.name
        message.sequence = entry.sequence
        message.priority = entry.priority
        message.group_id = entry.group_id
        message._settled = False
        message._settler = settler
        message._entry = entry
        message._tag = entry.tag
        message._lock_deadline = entry.lock_deadline
        return message

    @classmethod
    def peeked(cls, entry: Any) -> Message:
        """A message for a core entry that was only looked at: no lock, nothing to settle."""
        message = cls.of_entry(entry, None)
        message._entry = None
        message._tag = 0
        message._lock_deadline = 0.0
        return message

    @property
    def headers(self) -> Mapping[str, Any]:
        """The headers, read-only (nested maps read-only too, arrays as tuples)."""
        headers = self._headers
        if headers is None:
            headers = self._headers = decode_headers(self._encoded_headers)
        return headers

    @property
    def lock_deadline(self) -> float:
        """Wall-clock time the peek-lock runs out (0.0 when not received under a lock)."""
        return self._lock_deadline

    def complete(self) -> Awaitable[None]:
        """Remove the message from its queue (durably, on a durable queue). Await it.

        Raises `LockLost` when the peek-lock expired first (the message went back to the
        queue) or the message was not received under a lock."""
        settler = self._settler
        if settler is None:
            return _raise(LockLost(f"message {self.id} is not locked by a receiver"))
        self._settled = True
        return settler.complete_message(self)

    def abandon(self) -> Awaitable[None]:
        """Give the message back: it is redelivered (or retried later, or handled as
        poison once every retry failed). Await it. Raises `LockLost` like `complete()`."""
        settler = self._settler
        if settler is None:
            return _raise(LockLost(f"message {self.id} is not locked by a receiver"))
        self._settled = True
        return settler.abandon_message(self)

    def renew_lock(self) -> Awaitable[None]:
        """Extend the peek-lock by the queue's validity_duration from now (`lock_deadline`
        moves). Await it. Raises `LockLost` like `complete()`."""
        settler = self._settler
        if settler is None:
            return _raise(LockLost(f"message {self.id} is not locked by a receiver"))
        return settler.renew_message(self)

    async def __aenter__(self) -> Message:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        """`async with msg:` completes the message when the block ends normally and abandons
        it (a failed delivery) when it raises; nothing when the block settled it itself.
        The block's exception propagates; if the abandon fails too (the lock was lost: the
        message is redelivered anyway), that failure is not raised in its place."""
        if self._settled:
            return False
        if exc_type is None:
            await self.complete()
            return False
        try:
            await self.abandon()
        except TetherError:
            pass
        return False

    def __repr__(self) -> str:
        extra = ""
        if self.dead_letter_reason:
            extra = f" dead_letter_reason={self.dead_letter_reason!r} source={self.dead_letter_source!r}"
        return (f"<Message id={self.id!r} {len(self.body)} bytes "
                f"delivery_count={self.delivery_count}{extra}>")


async def _raise(error: BaseException) -> None:
    raise error
