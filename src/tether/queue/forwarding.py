"""`ForwardingRules`: what a forwarder does with each answer from the target, sans-IO.

A forwarder sends the messages of one transmission queue to the queue manager that owns
their target queues. Each message is sent under the forwarder's producer id with the
sequence its transmission queue gave it, so the target queues it once however often it is
resent. Every answer leads to one of three outcomes, decided here:

    delivered      the target has it durably: complete it here
    dead-letter    a definitive refusal (no such queue, too large, expired, malformed for
                   the target): move it to the dead-letter queue here, with the reason
    retry          anything else (the target's storage failed, its queue is full, it is
                   unavailable, an error we do not know): give it back to the transmission
                   queue uncounted and pause sending, with capped exponential backoff

The forwarder tells the target its *floor* (every sequence below is settled here) only
from the transmission queue's state after the local completions are durable, so a
message whose completion failed, and that will be sent again, is never below it.
"""
from __future__ import annotations

from ..backoff import Backoff
from .core.deadletter import EXPIRED, MESSAGE_TOO_LARGE, QUEUE_NOT_FOUND, REJECTED

DELIVERED = "delivered"
DEAD_LETTER = "dead-letter"
RETRY = "retry"

#: Error codes that end a message's transfer, and the dead-letter reason each gives.
DEFINITIVE = {
    "queue-not-found": QUEUE_NOT_FOUND,
    "message-too-large": MESSAGE_TOO_LARGE,
    "expired": EXPIRED,
    "value-error": REJECTED,        # the target found the message itself malformed
    "type-error": REJECTED,
}

RETRY_FIRST = 0.1
RETRY_CAP = 30.0


class ForwardingRules:
    """The outcome of each answer, and when sending may go on after a transient refusal."""

    def __init__(self, first: float = RETRY_FIRST, cap: float = RETRY_CAP) -> None:
        self._backoff = Backoff(first, cap)
        self.paused_until = 0.0

    def outcome(self, code: str | None, now: float) -> tuple[str, str | None]:
        """(DELIVERED, None), (DEAD_LETTER, reason) or (RETRY, None) for an answer whose
        error code is `code` (None: accepted). A RETRY pauses sending (see `paused_until`)."""
        if code is None:
            self._backoff.reset()
            return DELIVERED, None
        reason = DEFINITIVE.get(code)
        if reason is not None:
            return DEAD_LETTER, reason
        self.paused_until = max(self.paused_until, now + self._backoff.next())
        return RETRY, None

    def may_send(self, now: float) -> bool:
        """False while a transient refusal's pause lasts."""
        return now >= self.paused_until
