"""Every state of a session and every transition between them, in one table (after h11's
_state.py): a reader finds here what a session may do next."""
from __future__ import annotations

import enum


class State(enum.Enum):
    CONNECTING = "connecting"     # client: CreateSequence sent, no response yet
    ESTABLISHED = "established"   # both sequences open
    CLOSING = "closing"           # close() called: flushing, then CloseSequence, TerminateSequence
    CLOSED = "closed"             # terminated gracefully (by either side)
    FAULTED = "faulted"           # ended by a fault (local or the peer's)


class Event(enum.Enum):
    HANDSHAKE_DONE = "handshake-done"
    CLOSE = "close"
    TERMINATED = "terminated"
    FAULT = "fault"


TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.CONNECTING, Event.HANDSHAKE_DONE): State.ESTABLISHED,
    (State.CONNECTING, Event.FAULT): State.FAULTED,
    (State.CONNECTING, Event.CLOSE): State.CLOSED,
    (State.ESTABLISHED, Event.CLOSE): State.CLOSING,
    (State.ESTABLISHED, Event.TERMINATED): State.CLOSED,
    (State.ESTABLISHED, Event.FAULT): State.FAULTED,
    (State.CLOSING, Event.TERMINATED): State.CLOSED,
    (State.CLOSING, Event.FAULT): State.FAULTED,
}

# States in which data may still flow (sent or received).
OPEN_STATES = frozenset({State.ESTABLISHED, State.CLOSING})
FINAL_STATES = frozenset({State.CLOSED, State.FAULTED})


def next_state(state: State, event: Event) -> State:
    """The state after `event`; a final state absorbs everything, anything else not in the
    table is a bug in the engine (it never comes from the wire)."""
    if state in FINAL_STATES:
        return state
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise RuntimeError(f"session cannot {event.value} while {state.value}") from None
