"""The TCP adapter: length-prefixed packets on a stream (a TCP connection, or TLS over one
for tls://). A connection carries one session; when it drops, the client reconnects with
capped backoff and resumes the session by its token, and both sides resend what is
unacknowledged."""
from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

from ...errors import ProtocolError
from ..sansio.core import default as default_core
from ..sansio.demux import Demux
from .timers import clock

# TCP packets batch many messages; one message alone may be larger (up to max_message_size).
TCP_PACKET = 256 * 1024
FRAMING_OVERHEAD = 4096
# A peer that stops reading while it keeps asking for acks would grow our write buffer;
# data is bounded by the send window, so far beyond that the peer is hostile or stuck.
MAX_WRITE_BUFFER = 64 * 1024 * 1024
# Reconnect backoff: first retry soon, never more than a couple of seconds between tries.
RECONNECT_FIRST = 0.05
RECONNECT_CAP = 2.0

_LENGTH = struct.Struct(">I")


def max_packet_size(max_message_size: int) -> int:
    """Largest packet a TCP peer may send: a batch, or one whole message plus framing."""
    return max(TCP_PACKET, max_message_size + FRAMING_OVERHEAD)


class TcpConnection(asyncio.Protocol):
    """One TCP connection of a session (client or server side)."""

    def __init__(self, max_packet: int, on_packet: Callable[[bytes], None],
                 on_lost: Callable[[TcpConnection, Exception | None], None],
                 on_error: Callable[[ProtocolError], None]) -> None:
        self._reader = default_core().codec.PacketReader(max_packet)
        self.on_packet = on_packet
        # once the connection is bound to its session: every packet of a read in one call
        # (Session.feed_many: one engine call and one pump per read, not per packet)
        self.on_packets: Callable[[list[bytes]], None] | None = None
        self.on_lost = on_lost
        self.on_error = on_error
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            packets = self._reader.feed(data)
        except ProtocolError as exc:
            self.on_error(exc)
            self.close()
            return
        for index, body in enumerate(packets):
            if self.closed:
                return
            if self.on_packets is not None:
                self.on_packets(packets[index:] if index else packets)
                return
            self.on_packet(body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        was_closed, self.closed = self.closed, True
        self.on_lost(self, None if was_closed else (exc or ConnectionResetError("connection closed by the peer")))

    # Link
    def transmit(self, packets: list[bytes]) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        chunks = []
        for body in packets:
            chunks.append(_LENGTH.pack(len(body)))
            chunks.append(body)
        transport.writelines(chunks)
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self.on_error(ProtocolError(
                f"the peer stopped reading: over {MAX_WRITE_BUFFER} bytes wait to be written"))
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self.transport is None:
            return default
        return self.transport.get_extra_info(name, default)


class TcpServerConnection(TcpConnection):
    """A server connection: its first packet (CreateSequence or Resume) binds it to a
    session through the Demux; after that its packets go straight to that session."""

    def __init__(self, demux: Demux, loop: asyncio.AbstractEventLoop,
                 on_new: Callable[[Any, TcpServerConnection], Any], sessions: dict) -> None:
        super().__init__(max_packet_size(demux.settings.max_message_size), self._first_packet,
                         self._lost, self._error)
        self.demux = demux
        self.loop = loop
        self.on_new = on_new
        self.sessions = sessions
        self.session = None
        self._first_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.closed:
            # the server closed while this connection's TLS handshake was running
            transport.close()
            return
        # A connection that names no session holds a socket and a partial-packet buffer;
        # a real client sends its first packet at once, so give it connect_timeout.
        self._first_deadline = self.loop.call_later(
            self.demux.settings.connect_timeout, self._no_first_packet)

    def _no_first_packet(self) -> None:
        self._first_deadline = None
        if self.session is None:
            self.close()

    def _first_packet(self, body: bytes) -> None:
        if self._first_deadline is not None:
            self._first_deadline.cancel()
            self._first_deadline = None
        routed = self.demux.route(body, clock(), opening=True)
        if routed.replies:
            self.transmit(routed.replies)
        engine = routed.engine
        if engine is None:
            self.close()  # refused, unknown, or not our protocol
            return
        if routed.created:
            session = self.on_new(engine, self)
        else:
            session = self.sessions.get(engine.session_id)
            if session is None:
                self.close()
                return
            old = session.link
            session.attach(self)
            if old is not None and old is not self:
                old.close()  # the client resumed on this connection
        self.session = session
        self.on_packets = session.feed_many
        session.pump()

    def _lost(self, conn: TcpConnection, exc: Exception | None) -> None:
        if self._first_deadline is not None:
            self._first_deadline.cancel()
            self._first_deadline = None
        session = self.session
        if session is not None and session.link is self:
            session.attach(None)  # wait for a Resume (or the inactivity timeout)

    def _error(self, exc: ProtocolError) -> None:
        session = self.session
        if session is not None:  # a bound session faults; the server stays up
            session.fail(exc)
