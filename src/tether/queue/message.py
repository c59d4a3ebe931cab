"""`Message`: one queued message, as a receiver sees it.

`complete()` and `abandon()` delegate to whoever delivered the message (its owner: the
local queue manager, a transaction, or a remote client), so a remote client hands out
the very same class.
"""
from __future__ import annotations

from typing import Any, Awaitable, Protocol

from ..errors import LockLost


class MessageOwner(Protocol):
    """Whoever delivered a message under a peek-lock and settles it."""

    async def complete_message(self, message: "Message") -> None: ...

    async def abandon_message(self, message: "Message") -> None: ...


# Where a message is (internal; `Message._state`).
READY = 0        # waiting in a queue's ready list
LOCKED = 1       # delivered under a peek-lock
SETTLING = 2     # complete/abandon/expiry decided, waiting for the journal
GONE = 3         # completed, moved away or dropped: no longer in the queue that held it


class Message:
    """A message: `id`, `body`, `headers`, `delivery_count`, `enqueued_at`, `expires_at`,
    and on a dead-letter queue `dead_letter_reason` and `dead_letter_source`."""

    __slots__ = (
        "id", "body", "headers", "delivery_count", "enqueued_at", "expires_at",
        "dead_letter_reason", "dead_letter_source", "destination",
        "attempts", "retry_at", "_owner", "_home", "_state", "_lock_deadline",
    )

    def __init__(self, id: str, body: bytes, headers: dict | None = None,
                 delivery_count: int = 0, enqueued_at: float = 0.0,
                 expires_at: float | None = None, dead_letter_reason: str | None = None,
                 dead_letter_source: str | None = None, destination: str | None = None,
                 attempts: int = 0, retry_at: float | None = None) -> None:
        self.id = id
        self.body = body
        self.headers = headers if headers is not None else {}
        #: how many times the message has been delivered (this delivery included)
        self.delivery_count = delivery_count
        #: wall-clock time (time.time()) the message was first queued
        self.enqueued_at = enqueued_at
        #: wall-clock time after which it goes to the dead-letter queue; None: never
        self.expires_at = expires_at
        self.dead_letter_reason = dead_letter_reason
        self.dead_letter_source = dead_letter_source
        #: for a message in a transmission queue: the `tether://` address it is bound for
        self.destination = destination
        #: failed deliveries from the main queue, for the poison rule (see poison.py)
        self.attempts = attempts
        #: in a `;retry` sub-queue: wall-clock time it returns to the main queue
        self.retry_at = retry_at
        self._owner: MessageOwner | None = None
        self._home: Any = None
        self._state = READY
        self._lock_deadline = 0.0

    @property
    def queue(self) -> str | None:
        """Name of the queue (or sub-queue) holding the message, when known."""
        home = self._home
        return home.name if home is not None else None

    def complete(self) -> Awaitable[None]:
        """Remove the message from its queue (durably, on a durable queue). Await it.

        Raises `LockLost` when the peek-lock expired first (the message went back to the
        queue) or the message was not received under a lock."""
        owner = self._owner
        if owner is None:
            return _raise(LockLost(f"message {self.id} is not locked by a receiver"))
        # the owner's coroutine itself, not a wrapper: one coroutine less per message
        return owner.complete_message(self)

    def abandon(self) -> Awaitable[None]:
        """Give the message back: it is redelivered (or retried later, or handled as
        poison once every retry failed). Await it. Raises `LockLost` like `complete()`."""
        owner = self._owner
        if owner is None:
            return _raise(LockLost(f"message {self.id} is not locked by a receiver"))
        return owner.abandon_message(self)

    def redelivery_copy(self) -> "Message":
        """A fresh, unlocked copy to put back in a queue. The receiver keeps the old
        object, whose lock is then lost: its complete()/abandon() raise LockLost."""
        return Message(self.id, self.body, self.headers, delivery_count=self.delivery_count,
                       enqueued_at=self.enqueued_at, expires_at=self.expires_at,
                       dead_letter_reason=self.dead_letter_reason,
                       dead_letter_source=self.dead_letter_source, destination=self.destination,
                       attempts=self.attempts, retry_at=self.retry_at)

    # ---- journal form ----

    def to_record(self) -> list:
        """The fields as a msgpack-ready list (see `from_record`); delivery_count is at
        index 5."""
        return [self.id, self.body, self.headers or None, self.enqueued_at, self.expires_at,
                self.delivery_count, self.attempts, self.dead_letter_reason,
                self.dead_letter_source, self.destination, self.retry_at]

    @classmethod
    def from_record(cls, record: list) -> "Message":
        """A message from `to_record()` output."""
        (id, body, headers, enqueued_at, expires_at, delivery_count, attempts,
         reason, source, destination, retry_at) = record
        return cls(id, body, headers, delivery_count=delivery_count, enqueued_at=enqueued_at,
                   expires_at=expires_at, dead_letter_reason=reason, dead_letter_source=source,
                   destination=destination, attempts=attempts, retry_at=retry_at)

    def __repr__(self) -> str:
        extra = ""
        if self.dead_letter_reason:
            extra = f" dead_letter_reason={self.dead_letter_reason!r} source={self.dead_letter_source!r}"
        return (f"<Message id={self.id!r} {len(self.body)} bytes "
                f"delivery_count={self.delivery_count}{extra}>")


async def _raise(error: BaseException) -> None:
    raise error
