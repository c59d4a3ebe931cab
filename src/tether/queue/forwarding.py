"""`ForwardingRules` and `ForwardEngine`: what a forwarder does with each answer from the
target, and everything else it decides, sans-IO.

`ForwardEngine` (below) holds every other decision of a forwarder, so the asyncio
`Forwarder` (forwarder.py) and the queue simulation run the same logic.

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

from typing import Any

from ..backoff import Backoff
from ..errors import LockLost
from .core.deadletter import EXPIRED, MESSAGE_TOO_LARGE, QUEUE_NOT_FOUND, REJECTED
from .core.entry import Entry

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


#: Messages sent and not yet answered, at most.
MAX_IN_FLIGHT = 4096
#: The answer code of a message whose time-to-live ran out before it was sent.
EXPIRED_CODE = "expired"


class Settlement:
    """What to do with a batch of answers (ForwardEngine.settle): `dead_letters` as
    (entry, tag, reason, error), `releases` as (entry, tag) in the order to release them
    (each to the front of the transmission queue, so the first sent ends up first), and
    `delivered` as (entry, tag) to complete in one record."""

    __slots__ = ("delivered", "dead_letters", "releases")

    def __init__(self) -> None:
        self.delivered: list[tuple[Entry, int]] = []
        self.dead_letters: list[tuple[Entry, int, str, BaseException | None]] = []
        self.releases: list[tuple[Entry, int]] = []

    def __bool__(self) -> bool:
        return bool(self.delivered or self.dead_letters or self.releases)


class ForwardEngine:
    """Every decision of one forwarder, sans-IO: which taken messages go out, what each
    answer means (ForwardingRules), when sending pauses, and the floor to tell the target.
    The asyncio `Forwarder` (forwarder.py) and the queue simulation (tests/qsim/) drive it.

    A message taken from the transmission queue (under peek-lock) is `sent()`: in flight,
    by its sequence, until its answer is settled. Answers (`answered()`) pile up until
    `settle()` turns them into a Settlement; dead letters and releases leave the in-flight
    map at once, deliveries once `completed()` says their completion was journaled (or
    not: a delivered message whose completion failed is still locked here and is sent
    again after its lock runs out; the target de-duplicates it)."""

    def __init__(self, queue: str, *, max_in_flight: int = MAX_IN_FLIGHT,
                 rules: ForwardingRules | None = None) -> None:
        self.queue = queue
        self.max_in_flight = max_in_flight
        self.rules = rules if rules is not None else ForwardingRules()
        #: sequence -> (entry, lock tag), in send order
        self.in_flight: dict[int, tuple[Entry, int]] = {}
        self.answers: list[tuple[Entry, int, str | None, BaseException | None]] = []
        self.forwarded = 0
        self.dead_lettered = 0

    # ---- sending ----

    def may_send(self, now: float) -> bool:
        """False while a transient refusal's pause lasts."""
        return self.rules.may_send(now)

    def pause(self, now: float) -> float:
        """Seconds until sending may go on (0: now)."""
        return max(0.0, self.rules.paused_until - now)

    @property
    def full(self) -> bool:
        """True when max_in_flight messages wait for their answer."""
        return len(self.in_flight) >= self.max_in_flight

    def has_room(self, now: float) -> bool:
        """True when another message may be taken and sent now."""
        return len(self.in_flight) < self.max_in_flight and self.rules.may_send(now)

    def room(self, now: float) -> int:
        """How many more messages may be taken and sent now."""
        return max(0, self.max_in_flight - len(self.in_flight)) if self.rules.may_send(now) else 0

    def sent(self, entry: Entry, now: float) -> bool:
        """A message taken (locked) from the transmission queue is in flight now: True.
        Even one whose time-to-live ran out is sent: it may have reached the target before
        (a lost answer, a restart), and only the target knows; it answers "expired" for one
        it never had, and the message is dead-lettered here then."""
        self.in_flight[entry.sequence] = (entry, entry.tag)
        return True

    def unanswered(self) -> list[tuple[Entry, int]]:
        """The messages in flight, in send order (their locks are renewed meanwhile)."""
        return list(self.in_flight.values())

    # ---- answers ----

    def answered(self, entry: Entry, tag: int, code: str | None, error: BaseException | None = None) -> None:
        """The target answered the message sent under lock `tag`: `code` None (accepted) or
        the error code of its refusal."""
        self.answers.append((entry, tag, code, error))

    def settle(self, now: float) -> Settlement:
        """The answers so far, decided (see Settlement). A transient refusal pauses sending."""
        answers, self.answers = self.answers, []
        plan = Settlement()
        retry = []
        for entry, tag, code, error in answers:
            outcome, reason = self.rules.outcome(code, now)
            if outcome == DELIVERED:
                plan.delivered.append((entry, tag))
            elif outcome == DEAD_LETTER:
                self.in_flight.pop(entry.sequence, None)
                plan.dead_letters.append((entry, tag, reason, error))
            else:
                self.in_flight.pop(entry.sequence, None)
                retry.append((entry, tag))
        plan.releases = retry[::-1]
        return plan

    def completed(self, delivered: list[tuple[Entry, int]], errors: list[BaseException | None],
                  now: float) -> list[tuple[Entry, int]]:
        """The completion of `delivered` is journaled (errors[i] None) or failed: they are no
        longer in flight. Returns those to give back to the transmission queue: a completion
        the journal refused leaves its message locked here, so it is released (uncounted),
        sending pauses as after a transient refusal, and the message is sent again: the
        target, which has it, answers it as a duplicate. (One whose lock was lost is back in
        the queue already.)"""
        give_back = []
        for (entry, tag), error in zip(delivered, errors):
            self.in_flight.pop(entry.sequence, None)
            if error is None:
                self.forwarded += 1
            elif not isinstance(error, LockLost):
                give_back.append((entry, tag))
        if give_back:
            self.rules.outcome("storage-error", now)       # pause before sending them again
        return give_back[::-1]

    def floor(self, core: Any) -> int:
        """The floor to tell the target once completions are durable: every sequence of the
        transmission queue below it is settled here (QueueCore.lowest_sequence)."""
        return core.lowest_sequence(self.queue)

    def give_back(self) -> list[tuple[Entry, int]]:
        """Closing: every message in flight, in the order to release them (the first sent
        ends up at the front of the transmission queue)."""
        out = list(self.in_flight.values())[::-1]
        self.in_flight.clear()
        return out
