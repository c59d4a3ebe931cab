"""The life of a queued message: its states and every transition between them, in one table.

Where a message is (a main queue, its `;retry` or `;poison` sub-queue, a dead-letter queue)
is the queue holding it; *what* can happen to it is its state:

    READY      waiting in a queue: a receiver may take it (in `;retry`, the retry timer
               moves it back to its main queue at `retry_at`; in a dead-letter queue it
               waits for someone to deal with it)
    LOCKED     delivered under a peek-lock: the lock holder completes or abandons it, or
               the lock expires (validity_duration)
    SETTLING   its next step (complete, a move, an update after a failed delivery) is being
               journaled: nobody may take or settle it until the write is done or failed
    GONE       completed, moved to another queue (as a new life there), or dropped
    SCHEDULED  in an application queue before its `deliver_at`: invisible to receivers (and
               to peek and purge) until the timer makes it READY

Every state change in the core goes through `advance()`, so the table below is the whole
truth about what may happen to a message (after h11's `_state.py`).
"""
from __future__ import annotations

from typing import Final, Protocol

READY: Final = 0
LOCKED: Final = 1
SETTLING: Final = 2
GONE: Final = 3
SCHEDULED: Final = 4

STATE_NAMES = {READY: "ready", LOCKED: "locked", SETTLING: "settling", GONE: "gone", SCHEDULED: "scheduled"}

# events
SCHEDULE = "schedule"            # it arrives with a delivery time still to come
DUE = "due"                      # its delivery time came: receivers may take it
TAKE = "take"                    # a receiver takes it (receive, hand-off to a waiter)
RELEASE = "release"              # taken but never seen by the application: back, uncounted
RENEW = "renew"                  # the lock holder extends the peek-lock
SETTLE = "settle"                # complete, abandon, lock expiry, rollback, dead-letter: journal it
EXPIRE = "expire"                # time-to-live ran out while it waited, or its retry delay ended
PURGE = "purge"                  # its queue is being purged: the removal is journaled
POISON_GROUP = "poison-group"    # a message of its group failed for good: it goes the same way
WRITTEN_GONE = "written-gone"    # the journal has the removal or move: it left this queue
WRITTEN_BACK = "written-back"    # the journal has the update: it waits again (an immediate retry)
WRITE_FAILED_LOCKED = "write-failed-locked"  # the journal refused the write: still locked
WRITE_FAILED_READY = "write-failed-ready"    # the journal refused the write: still waiting
DROP = "drop"                    # its queue was deleted (or, never queued, its send failed)

TRANSITIONS: Final[dict[str, dict[int, int]]] = {
    SCHEDULE: {READY: SCHEDULED},
    DUE: {SCHEDULED: READY},
    TAKE: {READY: LOCKED},
    RELEASE: {LOCKED: READY},
    RENEW: {LOCKED: LOCKED},
    SETTLE: {LOCKED: SETTLING},
    EXPIRE: {READY: SETTLING},
    PURGE: {READY: SETTLING},
    POISON_GROUP: {READY: SETTLING},
    WRITTEN_GONE: {SETTLING: GONE},
    WRITTEN_BACK: {SETTLING: READY},
    WRITE_FAILED_LOCKED: {SETTLING: LOCKED},
    WRITE_FAILED_READY: {SETTLING: READY},
    DROP: {READY: GONE, LOCKED: GONE, SETTLING: GONE, SCHEDULED: GONE},
}


class HasState(Protocol):
    """What advance() needs: a mutable `state` (and an `id` for the error message)."""

    state: int


class InvalidTransition(RuntimeError):
    """A message was asked to make a move the table does not allow (a bug in the core)."""


def advance(entry: HasState, event: str) -> None:
    """Move `entry` to its next state for `event`; InvalidTransition if the table forbids it."""
    target = TRANSITIONS[event].get(entry.state)
    if target is None:
        raise InvalidTransition(f"message {getattr(entry, 'id', '?')}: {event} is not allowed "
                                f"when {STATE_NAMES.get(entry.state, entry.state)}")
    entry.state = target

