"""Every state of a session and every transition between them, in tables (after h11's
_state.py): a reader finds here what a session may do next. `State` is the session's;
`Sending` and `Receiving` are its close handshake, one per direction: our sequence and the
peer's (docs/wire-protocol.md, "Closing")."""
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


# ---- the close handshake, per direction ----

class Sending(enum.Enum):
    """Our sequence. close_sending() closes it alone (a half-close); close() closes it and
    then terminates the session."""

    OPEN = "open"                       # messages may be sent
    FLUSHING = "flushing"               # close asked: what is queued goes out and is acknowledged
    CLOSE_SENT = "close-sent"           # CloseSequence sent, awaiting CloseSequenceResponse
    CLOSED = "closed"                   # the peer confirmed it holds every message
    TERMINATE_SENT = "terminate-sent"   # close(): TerminateSequence sent, awaiting its response


class SendingEvent(enum.Enum):
    CLOSE_ASKED = "close-asked"         # close_sending() or close()
    FLUSHED = "flushed"                 # nothing queued, in flight or awaiting a response
    CLOSE_CONFIRMED = "close-confirmed"  # CloseSequenceResponse received
    TERMINATE = "terminate"             # close(), our sequence closed: TerminateSequence sent


SENDING_TRANSITIONS: dict[tuple[Sending, SendingEvent], Sending] = {
    (Sending.OPEN, SendingEvent.CLOSE_ASKED): Sending.FLUSHING,
    (Sending.FLUSHING, SendingEvent.FLUSHED): Sending.CLOSE_SENT,
    (Sending.CLOSE_SENT, SendingEvent.CLOSE_CONFIRMED): Sending.CLOSED,
    (Sending.CLOSED, SendingEvent.TERMINATE): Sending.TERMINATE_SENT,
}


class Receiving(enum.Enum):
    """The peer's sequence."""

    OPEN = "open"                       # the peer may send more
    CLOSE_RECEIVED = "close-received"   # CloseSequence named its last message; response owed
    COMPLETE = "complete"               # every message up to it arrived; response sent


class ReceivingEvent(enum.Enum):
    CLOSE_SEQUENCE = "close-sequence"   # CloseSequence received (again: our response was lost)
    ALL_RECEIVED = "all-received"       # every message up to its last one is here


RECEIVING_TRANSITIONS: dict[tuple[Receiving, ReceivingEvent], Receiving] = {
    (Receiving.OPEN, ReceivingEvent.CLOSE_SEQUENCE): Receiving.CLOSE_RECEIVED,
    (Receiving.CLOSE_RECEIVED, ReceivingEvent.CLOSE_SEQUENCE): Receiving.CLOSE_RECEIVED,
    (Receiving.COMPLETE, ReceivingEvent.CLOSE_SEQUENCE): Receiving.CLOSE_RECEIVED,  # answer again
    (Receiving.CLOSE_RECEIVED, ReceivingEvent.ALL_RECEIVED): Receiving.COMPLETE,
}


def next_sending(state: Sending, event: SendingEvent) -> Sending:
    """Our sequence's state after `event`; one not in the table is a bug in the engine."""
    try:
        return SENDING_TRANSITIONS[(state, event)]
    except KeyError:
        raise RuntimeError(f"our sequence cannot take {event.value} while {state.value}") from None


def next_receiving(state: Receiving, event: ReceivingEvent) -> Receiving:
    """The peer's sequence's state after `event`; one not in the table is a bug in the engine."""
    try:
        return RECEIVING_TRANSITIONS[(state, event)]
    except KeyError:
        raise RuntimeError(f"the peer's sequence cannot take {event.value} while {state.value}") from None
