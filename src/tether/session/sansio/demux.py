"""Server side, sans-IO: routes packets to sessions by session id (so a UDP peer that changes
address keeps its session, as aioquic's server does by connection id), creates sessions on
CreateSequence up to max_pending_channels, and answers frames for sessions it does not know.

Over UDP it also checks addresses, after QUIC (RFC 9000 8.1, 8.2, 10.3), since any datagram's
source address may be forged:

- a session is created only for a CreateSequence carrying a valid address token, which the
  client got in a Retry sent to its address (address_validation.py): until then the server
  keeps nothing, runs no handler and sends only the Retry;
- whatever the server sends without a session (a Retry, a refusal, a Fault, a late
  TerminateSequence) is at most three times the datagram it answers;
- a session takes packets only from its validated address; one from another address makes
  the server challenge that address, and the session moves there once it answers
  (path_validation.py). So a Fault, TerminateSequence or CloseSequence from anywhere else is
  never acted on;
- no session id is used twice (ended.py).
"""
from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from ...errors import ProtocolError, UnknownSequence
from .address_validation import AMPLIFICATION_LIMIT, AddressTokens, within_limit
from .core import Core, default
from .ended import EndedSessions
from .engine import MAX_FRAMES_PER_PACKET, SessionEngine, full_packet_size
from .frames import FrameType as F
from .path_validation import PathChallenges, PeerPath
from .settings import SessionSettings

# Plain ints for the per-packet checks (comparing with an IntEnum member is slower).
_RESUME = int(F.RESUME)


@dataclass(slots=True)
class Routed:
    """Where a packet went: the session it fed (None if none), whether that session was just
    created, replies to send back to the packet's source, and (UDP) the address the
    session's packets go to now: the validated one, which changes only when a path
    challenge was answered."""

    engine: SessionEngine | None = None
    created: bool = False
    replies: list = field(default_factory=list)
    address: Any = None


class Demux:
    """All sessions of one server endpoint. `entropy(n)` gives n random bytes (the keys of
    address tokens and path challenges; the simulation passes a seeded one)."""

    def __init__(self, settings: SessionSettings, *, reliable_transport: bool,
                 max_packet_size: int, core: Core | None = None,
                 entropy: Callable[[int], bytes] = os.urandom) -> None:
        self.settings = settings
        self.reliable_transport = reliable_transport
        self.max_packet_size = max_packet_size
        self.core = core or default()
        self._codec = self.core.codec
        self._full_packet = full_packet_size(max_packet_size)
        self.sessions: dict[int, SessionEngine] = {}
        # UDP: each session's validated peer address and the addresses it may move to
        self._paths: dict[int, PeerPath] = {}
        self._tokens = AddressTokens(entropy)
        self._challenges = PathChallenges(entropy)
        self._ended = EndedSessions()
        # handshaken sessions the application has not accepted yet (max_pending_channels)
        self.unaccepted = 0
        self.dropped_packets = 0      # did not decode: they name no session reliably
        self.retries_sent = 0         # CreateSequence answered with a Retry (UDP)
        self.off_path_packets = 0     # named a session from an address it has not validated
        self.migrations = 0           # sessions moved to an address that answered a challenge
        self.closing = False  # the server is shutting down: refuse new sessions
        self._now = 0.0       # the time of the latest packet (a session's end is dated by it)

    def route(self, body: bytes, now: float, opening: bool = False, *,
              source: Hashable = None) -> Routed:
        """Decode one packet and hand it to its session. A packet that does not decode names
        no session reliably, so it is dropped (counted); it never reaches another session.

        `source` (UDP): the address the packet came from, as the socket reports it (any
        hashable value). Replies go back to it.

        `opening`: the first packet of a new TCP connection, which binds the connection to
        the session it names. For a session that exists it must begin with a Resume or a
        CreateSequence carrying the session's token; anything else is refused unread, so
        nobody takes over a session or injects into it by naming its id."""
        self._now = now
        try:
            frames = self._codec.decode_packet(body, self.settings.max_message_size,
                                               MAX_FRAMES_PER_PACKET)
        except ProtocolError:
            self.dropped_packets += 1
            return Routed()
        return self._route_frames(frames, len(body), now, opening, source)

    def route_many(self, bodies: list, now: float, *, source: Hashable = None) -> list[Routed]:
        """UDP: a batch of datagrams from one source address, in arrival order: the same as
        route() for each, with the bodies decoded in one call, split natively into runs
        naming one session (codec.session_groups), and each run that goes on path to its
        session handed to it in one call (receive_frames_many); a datagram that does not
        decode is dropped without ending a run. Returns a Routed for each run of packets
        that reached a session, and for each packet that was answered or went elsewhere
        (created a session, moved one, was refused)."""
        self._now = now
        codec = self._codec
        decoded = codec.decode_packets(bodies, self.settings.max_message_size,
                                       MAX_FRAMES_PER_PACKET)
        out: list[Routed] = []
        sessions, paths = self.sessions, self._paths
        for session_id, packets, sizes, full in codec.session_groups(decoded, bodies,
                                                                     self._full_packet):
            if session_id is None:
                self.dropped_packets += 1
                continue
            engine = sessions.get(session_id)
            if (engine is not None and not self.reliable_transport
                    and paths[session_id].address == source and packets[0][0][0] != _RESUME):
                engine.receive_frames_many(packets, now, sizes, full_packets=full)
                out.append(Routed(engine, False, [], source))
                continue
            # off path, unknown, or a Resume: packet by packet (a path answered or a
            # session created on the way changes what the next packet finds)
            for frames, size in zip(packets, sizes):
                out.append(self._route_frames(frames, size, now, False, source))
        return out

    def _route_frames(self, frames: list, size: int, now: float, opening: bool,
                      source: Hashable) -> Routed:
        if not frames:
            self.dropped_packets += 1
            return Routed()
        kind, session_id = frames[0][0], frames[0][1]
        engine = self.sessions.get(session_id)
        if engine is not None:
            if self.reliable_transport:
                return self._route_tcp(engine, frames, kind, now, opening, size)
            address = self._paths[session_id].address
            if source != address:
                return self._off_path(engine, self._paths[session_id], frames, size, source, now)
            if kind == _RESUME and not self.token_matches(engine, frames[0][2]):
                return Routed(replies=self._limited(
                    (F.CREATE_SEQUENCE_REFUSED, session_id, "resume refused: wrong token"), size))
            engine.receive_frames(frames, now, size)
            return Routed(engine, False, [], address)
        return self._stateless(frames, kind, session_id, size, source, now)

    def _route_tcp(self, engine: SessionEngine, frames: list, kind: int, now: float,
                   opening: bool, size: int) -> Routed:
        session_id = engine.session_id
        if kind == F.RESUME and not self.token_matches(engine, frames[0][2]):
            return Routed(replies=[self.refusal(session_id, "resume refused: wrong token")])
        if opening and not (kind == F.RESUME or (
                kind == F.CREATE_SEQUENCE and self.token_matches(engine, frames[0][2]))):
            return Routed(replies=[self.refusal(
                session_id, "a new connection must start with Resume (or CreateSequence) "
                            "carrying the session's token")])
        engine.receive_frames(frames, now, size)
        return Routed(engine)

    def _off_path(self, engine: SessionEngine, path: PeerPath, frames: list, size: int,
                  source: Hashable, now: float) -> Routed:
        """A packet naming a UDP session from an address the session has not validated: a
        peer that moved, or anyone who learned the session id. Nothing of it reaches the
        session unless it answers a challenge sent to that address; otherwise it can only
        earn that address a PathChallenge, within the amplification limit."""
        self.off_path_packets += 1
        sid = engine.session_id
        for frame in frames:
            if frame[0] == F.PATH_RESPONSE and path.answered(source, frame[2], now, sid,
                                                             self._challenges):
                # The peer receives at its new address: move, and take the rest of its packet.
                self.migrations += 1
                engine.receive_frames(frames, now, size)
                engine.peer_moved(now)
                return Routed(engine, address=source)
        challenge = path.probe(
            source, size, now, engine.rto, sid, self._challenges,
            lambda data: self._codec.encode_frame((F.PATH_CHALLENGE, sid, data)))
        return Routed(replies=[] if challenge is None else [challenge])

    def _stateless(self, frames: list, kind: int, session_id: int, size: int,
                   source: Hashable, now: float) -> Routed:
        """A packet naming no live session: answered, if at all, without keeping state for
        it, and (UDP) with at most three times its size."""
        if kind not in (F.TERMINATE_SEQUENCE, F.TERMINATE_SEQUENCE_RESPONSE, F.FAULT):
            last = self._ended.terminate_number(session_id, now)
            if last is not None:
                return Routed(replies=self._limited((F.TERMINATE_SEQUENCE, session_id, last), size))
        if kind == F.CREATE_SEQUENCE and not self._ended.ended(session_id, now):
            # (one naming a session that ended, a late duplicate or a replay, is answered
            # as any late packet of it below: the id is never used again, so the old
            # session's late packets can never reach a new one)
            return self._create(frames, size, source, now)
        if kind == F.TERMINATE_SEQUENCE:
            # the session already ended here and our response was lost: answer again
            return Routed(replies=self._limited((F.TERMINATE_SEQUENCE_RESPONSE, session_id), size))
        if kind in (F.TERMINATE_SEQUENCE_RESPONSE, F.FAULT, F.CREATE_SEQUENCE_REFUSED,
                    F.CREATE_SEQUENCE_RESPONSE, F.RETRY, F.PATH_CHALLENGE, F.PATH_RESPONSE):
            return Routed()  # nothing to answer; answering a fault could loop
        if kind == F.RESUME:
            return Routed(replies=self._limited(
                (F.CREATE_SEQUENCE_REFUSED, session_id, "resume refused: unknown session"), size))
        error = UnknownSequence(f"no session {session_id:#x} here")
        return Routed(replies=self._limited((F.FAULT, session_id, error.code, str(error)), size))

    def _create(self, frames: list, size: int, source: Hashable, now: float) -> Routed:
        offer = frames[0]
        session_id = offer[1]
        if self.closing:
            return Routed(replies=self._limited(
                (F.CREATE_SEQUENCE_REFUSED, session_id, "the server is closing"), size))
        limit = self.settings.max_pending_channels
        if self.unaccepted >= limit:
            return Routed(replies=self._limited((
                F.CREATE_SEQUENCE_REFUSED, session_id,
                f"too many sessions waiting to be accepted (max_pending_channels={limit})"), size))
        try:
            SessionEngine.check_offer(offer)
        except ProtocolError as exc:
            return Routed(replies=self._limited((F.CREATE_SEQUENCE_REFUSED, session_id, str(exc)), size))
        if not self.reliable_transport:
            token = offer[7] if len(offer) > 7 else None
            if token is None or not self._tokens.valid(token, source, session_id, offer[2], now):
                # Keep nothing: the client proves its address by echoing this token.
                self.retries_sent += 1
                retry = (F.RETRY, session_id, self._tokens.issue(source, session_id, offer[2], now))
                return Routed(replies=self._limited(retry, size))
        engine = SessionEngine.accept(
            offer, self.settings, now=now, reliable_transport=self.reliable_transport,
            max_packet_size=self.max_packet_size, core=self.core)
        self.sessions[session_id] = engine
        if not self.reliable_transport:
            self._paths[session_id] = PeerPath(source)
        self.unaccepted += 1
        if len(frames) > 1:
            engine.receive_frames(frames[1:], now, size)
        return Routed(engine, created=True, address=None if self.reliable_transport else source)

    def _limited(self, frame: tuple, received: int) -> list[bytes]:
        """`frame` encoded as a reply to a packet of `received` bytes: over UDP at most three
        times that (RFC 9000 8.1, 10.3), the reason text of a Fault or refusal cut to fit,
        or no reply at all. TCP validated the address already: no limit."""
        body = self._codec.encode_frame(frame)
        if self.reliable_transport or within_limit(len(body), received):
            return [body]
        kind = frame[0]
        if kind in (F.FAULT, F.CREATE_SEQUENCE_REFUSED):
            reason = frame[-1].encode()
            keep = len(reason) - (len(body) - AMPLIFICATION_LIMIT * received)
            if keep >= 0:
                shorter = frame[:-1] + (reason[:keep].decode("utf-8", "ignore"),)
                body = self._codec.encode_frame(shorter)
                if within_limit(len(body), received):
                    return [body]
        return []

    def refusal(self, session_id: int, reason: str) -> bytes:
        return self._codec.encode_frame((F.CREATE_SEQUENCE_REFUSED, session_id, reason))

    @staticmethod
    def token_matches(engine: SessionEngine, token: bytes) -> bool:
        return hmac.compare_digest(token, engine.token)

    def peer_address(self, session_id: int) -> Any:
        """UDP: the validated address of a session's peer (None over TCP, or if unknown)."""
        path = self._paths.get(session_id)
        return None if path is None else path.address

    def accepted(self, engine: SessionEngine) -> None:
        """The application took this session (accept() or the handler)."""
        self.unaccepted = max(0, self.unaccepted - 1)

    def remove(self, engine: SessionEngine, was_accepted: bool) -> None:
        """Forget a finished session; its id is remembered as ended (ended.py)."""
        if self.sessions.get(engine.session_id) is engine:
            del self.sessions[engine.session_id]
            self._paths.pop(engine.session_id, None)
            if not was_accepted:
                self.unaccepted = max(0, self.unaccepted - 1)
            graceful = engine.is_finished and engine.error is None
            self._ended.add(engine.session_id, self._now,
                            engine.stats["sent"] if graceful else None)
