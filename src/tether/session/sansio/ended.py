"""What a server remembers of sessions that ended: enough to answer their late packets, and
to never open a session with an ended session's id again.

Two memories, both bounded:

- Sessions that ended gracefully keep their last message number for a while, like TCP's
  TIME_WAIT: a peer that missed our TerminateSequence (lost, or we gave up resending it)
  hears it again on its next packet rather than UnknownSequence. At most
  `ENDED_REMEMBERED`, each until `ENDED_LINGER` seconds after its first late packet.
- The ids of all ended sessions, gracefully or not: a CreateSequence naming one (a late
  duplicate, or a replay) must not open a new session under it, which would take the old
  session's late packets as its own and call the handler for a session its client has
  given up. At most `ENDED_IDS`, each for `ENDED_ID_LIFETIME` seconds; beyond that bound
  the oldest are forgotten first. About 100 bytes each, so at most about 6.5 MiB, and only
  sessions that really ended fill it: creating one takes a validated address (a Retry
  answered), so forged datagrams cannot.
"""
from __future__ import annotations

ENDED_REMEMBERED = 16384
ENDED_LINGER = 120.0   # seconds after the first late packet; keepalives come every <= 30 s
ENDED_IDS = 65536
# An hour: far beyond the default inactivity timeout (600 s), so the client of an ended
# session has given up long before its id could be reused.
ENDED_ID_LIFETIME = 3600.0


class EndedSessions:
    """Sessions that ended on one server endpoint (the Demux holds one)."""

    __slots__ = ("_graceful", "_ids")

    def __init__(self) -> None:
        # session id -> [last message number sent, time of the first late packet or None]
        self._graceful: dict[int, list] = {}
        # session id -> when it ended; insertion order is time order (the clock is monotonic)
        self._ids: dict[int, float] = {}

    def add(self, session_id: int, now: float, last_number: int | None) -> None:
        """The session ended at `now`: gracefully after sending `last_number` messages, or
        by a fault when `last_number` is None."""
        ids = self._ids
        ids.pop(session_id, None)
        ids[session_id] = now
        while ids:
            oldest, ended_at = next(iter(ids.items()))
            if len(ids) <= ENDED_IDS and now - ended_at <= ENDED_ID_LIFETIME:
                break
            del ids[oldest]
        if last_number is not None:
            graceful = self._graceful
            graceful[session_id] = [last_number, None]
            if len(graceful) > ENDED_REMEMBERED:
                del graceful[next(iter(graceful))]

    def terminate_number(self, session_id: int, now: float) -> int | None:
        """For a late packet of a session that ended gracefully here: the last number to
        answer it with, in a TerminateSequence; None once it is forgotten (ENDED_LINGER after
        its first late packet) or when it did not end gracefully."""
        ended = self._graceful.get(session_id)
        if ended is None:
            return None
        if ended[1] is None:
            ended[1] = now
        if now - ended[1] <= ENDED_LINGER:
            return ended[0]
        del self._graceful[session_id]
        return None

    def ended(self, session_id: int, now: float) -> bool:
        """Whether a session with this id ended here within ENDED_ID_LIFETIME (and is
        among the last ENDED_IDS to end)."""
        ended_at = self._ids.get(session_id)
        return ended_at is not None and now - ended_at <= ENDED_ID_LIFETIME

    def __len__(self) -> int:
        return len(self._ids)
