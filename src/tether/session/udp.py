"""The UDP adapter: datagram protocols that feed session engines. A client owns a connected
socket for its one session; a server socket carries many sessions, told apart by session id,
each sending to its peer's validated address (the Demux decides which: demux.py)."""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any, Callable

from .demux import Demux
from .timers import clock

# Loopback carries 64 KiB datagrams; elsewhere stay under a common Ethernet MTU
# (1500 - 40 IPv6 - 8 UDP) so datagrams are not IP-fragmented.
LOOPBACK_DATAGRAM = 65000
NETWORK_DATAGRAM = 1452
# Large socket buffers absorb bursts of a full window (the kernel caps them at rmem_max).
SOCKET_BUFFER = 4 * 1024 * 1024


def datagram_size(host: str) -> int:
    """The packet size to use towards `host`."""
    try:
        return LOOPBACK_DATAGRAM if ipaddress.ip_address(host).is_loopback else NETWORK_DATAGRAM
    except ValueError:
        return LOOPBACK_DATAGRAM if host == "localhost" else NETWORK_DATAGRAM


def tune_socket(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        except OSError:
            pass


class UdpClientProtocol(asyncio.DatagramProtocol):
    """A client's connected socket: every datagram is for its one session."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.session = None
        self.errors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        tune_socket(transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.session is not None:
            self.session.feed(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable while the server restarts: retransmission copes
        self.errors += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    # Link
    def transmit(self, packets: list[bytes]) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        sendto = transport.sendto
        for packet in packets:
            sendto(packet)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self.transport is None:
            return default
        return self.transport.get_extra_info(name, default)


class UdpPeerLink:
    """A server session's way back to its peer: the shared socket and the peer's validated
    address (updated when the peer moved and answered the server's path challenge)."""

    __slots__ = ("endpoint", "addr")

    def __init__(self, endpoint: "UdpServerProtocol", addr: Any) -> None:
        self.endpoint = endpoint
        self.addr = addr

    def transmit(self, packets: list[bytes]) -> None:
        transport = self.endpoint.transport
        if transport is None or transport.is_closing():
            return
        addr = self.addr
        sendto = transport.sendto
        for packet in packets:
            sendto(packet, addr)

    def close(self) -> None:
        """The socket is shared; nothing to close per session."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self.addr
        transport = self.endpoint.transport
        return default if transport is None else transport.get_extra_info(name, default)


class UdpServerProtocol(asyncio.DatagramProtocol):
    """A server socket: routes each datagram through the Demux by session id."""

    def __init__(self, demux: Demux, loop: asyncio.AbstractEventLoop,
                 on_new: Callable[[Any, UdpPeerLink], Any], sessions: dict) -> None:
        self.demux = demux
        self.loop = loop
        self.on_new = on_new          # (engine, link) -> Session
        self.sessions = sessions      # session id -> Session
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        tune_socket(transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        routed = self.demux.route(data, clock(), source=addr)
        if routed.replies and self.transport is not None:
            for reply in routed.replies:
                self.transport.sendto(reply, addr)
        engine = routed.engine
        if engine is None:
            return
        if routed.created:
            session = self.on_new(engine, UdpPeerLink(self, routed.address))
        else:
            session = self.sessions.get(engine.session_id)
            if session is None:
                return
            link = session.link
            if link is not None and link.addr != routed.address:
                link.addr = routed.address  # the peer moved and proved it receives there
        session.pump()

    def error_received(self, exc: Exception) -> None:
        pass  # a peer went away; its session times out or retransmits

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
