"""Server side, sans-IO: routes packets to sessions by session id (never by address, so a
UDP peer that changes address keeps its session, as aioquic's server does by connection id),
creates sessions on CreateSequence up to max_pending_channels, and answers frames for
sessions it does not know."""
from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from ..errors import ProtocolError, UnknownSequence
from .core import Core, default
from .engine import MAX_FRAMES_PER_PACKET, SessionEngine
from .frames import FrameType as F
from .settings import SessionSettings

# Sessions that ended gracefully are remembered (a bounded number, for a while) so that a
# peer which missed our TerminateSequence - lost, or we gave up resending it - hears it
# again on its next packet rather than UnknownSequence, and a late duplicate CreateSequence
# does not open the ended session anew. (TCP's TIME_WAIT does this for a connection.)
ENDED_REMEMBERED = 16384
ENDED_LINGER = 120.0   # seconds after the first late packet; keepalives come every <= 30 s


@dataclass(slots=True)
class Routed:
    """Where a packet went: the session it fed (None if none), whether that session was just
    created, and replies to send back to the packet's source."""

    engine: SessionEngine | None = None
    created: bool = False
    replies: list = field(default_factory=list)


class Demux:
    """All sessions of one server endpoint."""

    def __init__(self, settings: SessionSettings, *, reliable_transport: bool,
                 max_packet_size: int, core: Core | None = None) -> None:
        self.settings = settings
        self.reliable_transport = reliable_transport
        self.max_packet_size = max_packet_size
        self.core = core or default()
        self._codec = self.core.codec
        self.sessions: dict[int, SessionEngine] = {}
        # handshaken sessions the application has not accepted yet (max_pending_channels)
        self.unaccepted = 0
        self.dropped_packets = 0
        self.closing = False  # the server is shutting down: refuse new sessions
        # session id -> [last message number sent, time of the first late packet or None]
        self._ended: dict[int, list] = {}

    def route(self, body: bytes, now: float, opening: bool = False) -> Routed:
        """Decode one packet and hand it to its session. A packet that does not decode names
        no session reliably, so it is dropped (counted); it never reaches another session.

        `opening`: the first packet of a new TCP connection, which binds the connection to
        the session it names. For a session that exists it must begin with a Resume or a
        CreateSequence carrying the session's token; anything else is refused unread, so
        nobody takes over a session or injects into it by naming its id."""
        try:
            frames = self._codec.decode_packet(body, self.settings.max_message_size,
                                               MAX_FRAMES_PER_PACKET)
        except ProtocolError:
            self.dropped_packets += 1
            return Routed()
        if not frames:
            self.dropped_packets += 1
            return Routed()
        kind, session_id = frames[0][0], frames[0][1]
        engine = self.sessions.get(session_id)
        if engine is not None:
            if kind == F.RESUME and not self.token_matches(engine, frames[0][2]):
                return Routed(replies=[self.refusal(session_id, "resume refused: wrong token")])
            if opening and not (kind == F.RESUME or (
                    kind == F.CREATE_SEQUENCE and self.token_matches(engine, frames[0][2]))):
                return Routed(replies=[self.refusal(
                    session_id, "a new connection must start with Resume (or CreateSequence) "
                                "carrying the session's token")])
            engine.receive_frames(frames, now)
            return Routed(engine)
        if session_id in self._ended and kind not in (F.TERMINATE_SEQUENCE, F.TERMINATE_SEQUENCE_RESPONSE,
                                                      F.FAULT):
            ended = self._ended[session_id]
            if ended[1] is None:
                ended[1] = now
            if now - ended[1] <= ENDED_LINGER:
                return Routed(replies=[self._codec.encode_frame(
                    (F.TERMINATE_SEQUENCE, session_id, ended[0]))])
            del self._ended[session_id]
        if kind == F.CREATE_SEQUENCE:
            return self._create(frames, now)
        if kind == F.TERMINATE_SEQUENCE:
            # the session already ended here and our response was lost: answer again
            return Routed(replies=[self._codec.encode_frame((F.TERMINATE_SEQUENCE_RESPONSE, session_id))])
        if kind in (F.TERMINATE_SEQUENCE_RESPONSE, F.FAULT, F.CREATE_SEQUENCE_REFUSED,
                    F.CREATE_SEQUENCE_RESPONSE):
            return Routed()  # nothing to answer; answering a fault could loop
        if kind == F.RESUME:
            return Routed(replies=[self.refusal(session_id, "resume refused: unknown session")])
        error = UnknownSequence(f"no session {session_id:#x} here")
        return Routed(replies=[self._codec.encode_frame((F.FAULT, session_id, error.code, str(error)))])

    def _create(self, frames: list, now: float) -> Routed:
        session_id = frames[0][1]
        if self.closing:
            return Routed(replies=[self.refusal(session_id, "the server is closing")])
        limit = self.settings.max_pending_channels
        if self.unaccepted >= limit:
            return Routed(replies=[self.refusal(
                session_id, f"too many sessions waiting to be accepted (max_pending_channels={limit})")])
        try:
            engine = SessionEngine.accept(
                frames[0], self.settings, now=now, reliable_transport=self.reliable_transport,
                max_packet_size=self.max_packet_size, core=self.core)
        except ProtocolError as exc:
            return Routed(replies=[self.refusal(session_id, str(exc))])
        self.sessions[session_id] = engine
        self.unaccepted += 1
        if len(frames) > 1:
            engine.receive_frames(frames[1:], now)
        return Routed(engine, created=True)

    def refusal(self, session_id: int, reason: str) -> bytes:
        return self._codec.encode_frame((F.CREATE_SEQUENCE_REFUSED, session_id, reason))

    @staticmethod
    def token_matches(engine: SessionEngine, token: bytes) -> bool:
        return hmac.compare_digest(token, engine.token)

    def accepted(self, engine: SessionEngine) -> None:
        """The application took this session (accept() or the handler)."""
        self.unaccepted = max(0, self.unaccepted - 1)

    def remove(self, engine: SessionEngine, was_accepted: bool) -> None:
        """Forget a finished session."""
        if self.sessions.get(engine.session_id) is engine:
            del self.sessions[engine.session_id]
            if not was_accepted:
                self.unaccepted = max(0, self.unaccepted - 1)
            if engine.is_finished and engine.error is None:   # ended gracefully
                ended = self._ended
                ended[engine.session_id] = [engine.stats["sent"], None]
                if len(ended) > ENDED_REMEMBERED:
                    del ended[next(iter(ended))]

