"""The UDP adapter: sockets that feed session engines. A client owns a connected socket for
its one session; a server socket carries many sessions, told apart by session id, each
sending to its peer's validated address (the Demux decides which: demux.py).

The adapter drives its own non-blocking socket from the event loop (`loop.add_reader`)
rather than the loop's datagram transport, because it needs ancillary data both ways
(Linux UDP segmentation offload) and wants to read and hand over datagrams in batches:

- **Receiving**: every time the socket is readable, up to RECV_BATCH reads, several per
  `recvmmsg` call (layer 1's `udp_io.DatagramReader`). With UDP_GRO on, the kernel may
  hand over several datagrams of one sender coalesced into one buffer, and says the
  segment size in a cmsg; the buffer is cut back into the datagrams at that size, in C
  (each is a whole packet: GRO only joins datagrams of the same size, the last may be
  shorter). The whole batch then goes to the engine (client)
  or the Demux (server) in one call, and each session is pumped once per batch, so one
  ack answers a batch rather than every second datagram.
- **Sending**: a burst of packets is cut into runs of equal-sized packets
  (`codec.segment_runs`) and each run goes out in one `sendmsg` with a UDP_SEGMENT cmsg:
  the kernel (or the NIC) splits it into the datagrams again, so the receiver sees exactly
  the packets the engine made. What the sessions send while a received batch is handled
  (each one's ack, data, the Demux's replies) is kept and goes out at the end of the
  batch in one `sendmmsg` (`udp_io.send_runs`): one system call per batch, however many
  sessions it reached.
- **Fallback**: where the kernel or socket lacks GSO or GRO (detected once per address
  family and logged at DEBUG, or when a GSO send fails), one `send` per datagram and one
  datagram per read, as before. TETHER_UDP_OFFLOAD=0 forces the fallback.
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ... import layer1
from ..sansio.core import default as default_core
from ..sansio.demux import Demux
from .timers import clock

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger(__name__)

# Loopback carries 64 KiB datagrams; elsewhere stay under a common Ethernet MTU
# (1500 - 40 IPv6 - 8 UDP) so datagrams are not IP-fragmented.
LOOPBACK_DATAGRAM = 65000
NETWORK_DATAGRAM = 1452
# Large socket buffers absorb bursts of a full window (SO_RCVBUFFORCE where permitted,
# else the kernel caps SO_RCVBUF at rmem_max).
SOCKET_BUFFER = 16 * 1024 * 1024
# Python's socket module does not name these (include/uapi/asm-generic/socket.h); without
# them a root process got only rmem_max (the kernel's default cap, often 4 MB, doubled), and
# a full window of 1 KiB messages in separate datagrams overflowed the receive buffer.
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33 if os.uname().sysname == "Linux" else None)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32 if os.uname().sysname == "Linux" else None)

# Linux UDP segmentation offload (include/uapi/linux/udp.h); Python names them from 3.12.
SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
UDP_GRO = getattr(socket, "UDP_GRO", 104)
# At most this many segments per GSO send (UDP_MAX_SEGMENTS is 64 on older kernels) and
# this many bytes (a UDP payload is at most 65507 bytes over IPv4).
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000
# Reads per wake-up, and datagrams, before the batch is handed on: the batch is acked
# once, so it must stay well under a window, and the loop gets to run other work (32 reads
# as libuv does for its own UDP handles, so a peer on the same loop is not outpaced).
RECV_BATCH = 32
RECV_BATCH_DATAGRAMS = 256
# Bytes held for a full socket before further datagrams are dropped (retransmission copes).
SEND_QUEUE_LIMIT = 16 * 1024 * 1024
# A GSO send failing with one of these means the path cannot segment: send datagrams.
_GSO_FAILURES = frozenset({errno.EIO, errno.EINVAL, errno.EMSGSIZE, errno.ENOPROTOOPT,
                           errno.EOPNOTSUPP})

_offload: dict[int, tuple[bool, bool]] = {}


def datagram_size(host: str) -> int:
    """The packet size to use towards `host`."""
    try:
        return LOOPBACK_DATAGRAM if ipaddress.ip_address(host).is_loopback else NETWORK_DATAGRAM
    except ValueError:
        return LOOPBACK_DATAGRAM if host == "localhost" else NETWORK_DATAGRAM


def offload_support(family: int) -> tuple[bool, bool]:
    """(GSO, GRO): whether this kernel takes UDP_SEGMENT and UDP_GRO on a socket of
    `family`. Probed once per family; TETHER_UDP_OFFLOAD=0 says neither."""
    if os.environ.get("TETHER_UDP_OFFLOAD", "1") == "0":
        return False, False
    found = _offload.get(family)
    if found is None:
        gso = gro = False
        try:
            probe = socket.socket(family, socket.SOCK_DGRAM)
        except OSError:
            probe = None
        if probe is not None:
            with probe:
                try:
                    probe.setsockopt(SOL_UDP, UDP_SEGMENT, 1200)
                    gso = True
                except OSError:
                    pass
                try:
                    probe.setsockopt(SOL_UDP, UDP_GRO, 1)
                    gro = True
                except OSError:
                    pass
        found = _offload[family] = (gso, gro)
        log.debug("UDP offload for address family %s: GSO %s, GRO %s", int(family),
                  "yes" if gso else "no", "yes" if gro else "no")
    return found


def tune_socket(transport: Any) -> None:
    """Raise a socket's buffers (a transport's, or a socket itself): SO_RCVBUFFORCE and
    SO_SNDBUFFORCE where permitted (CAP_NET_ADMIN), else as far as rmem_max/wmem_max allow."""
    sock = transport if isinstance(transport, socket.socket) else transport.get_extra_info("socket")
    if sock is None:
        return
    for forced, option in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        for name in (forced, option):
            if name is None:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, name, SOCKET_BUFFER)
                break
            except OSError:
                pass


class UdpEndpoint:
    """A non-blocking UDP socket on the event loop, read and written in batches.
    `on_batch(batch)` gets, per wake-up, a list of (bodies, address) in arrival order,
    consecutive datagrams of one address together."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 on_batch: Callable[[list], None], *, connected: bool,
                 offload: tuple[bool, bool] | None = None) -> None:
        self._loop = loop
        self._sock = sock
        self._on_batch = on_batch
        self._connected = connected
        sock.setblocking(False)
        tune_socket(sock)
        gso, gro = offload_support(sock.family) if offload is None else offload
        if gro:
            try:
                sock.setsockopt(SOL_UDP, UDP_GRO, 1)
            except OSError:
                gro = False
        self.gso = gso
        self.gro = gro
        self._runs = default_core().codec.segment_runs
        udp_io = layer1.module("udp_io")
        self._reader = udp_io.DatagramReader(
            sock, gro=gro, max_reads=RECV_BATCH, max_datagrams=RECV_BATCH_DATAGRAMS)
        self._send_many = udp_io.send_runs
        self._held: list | None = None    # runs kept between hold() and flush()
        self._cmsgs: dict[int, list] = {}
        self._queue: deque = deque()      # (buffer, segment size, count, address) waiting for room
        self._queued_bytes = 0
        self._closed = False
        self._send_errors = 0
        self.dropped = 0         # datagrams dropped because the send queue was full
        self.gso_sends = 0       # sends that carried a run of several datagrams (GSO)
        self.sockname = sock.getsockname()
        loop.add_reader(sock.fileno(), self._read)

    @property
    def closed(self) -> bool:
        return self._closed

    # ---- receiving ----

    def _read(self) -> None:
        batch = self._reader.read()
        if batch:
            self._on_batch(batch)

    @property
    def errors(self) -> int:
        """Send or receive errors (ICMP unreachable, ...): retransmission copes."""
        return self._send_errors + self._reader.errors

    @property
    def coalesced(self) -> int:
        """Reads that handed over several datagrams at once (GRO)."""
        return self._reader.coalesced

    # ---- sending ----

    def send(self, packets: list[bytes], address: Any = None) -> None:
        """Send packets as datagrams, in order: runs of equal-sized packets in one GSO
        send each where the kernel segments, one datagram per send otherwise. Between
        hold() and flush() they wait, to go with the rest of the turn's. When the socket
        is full they wait (the writer drains them), up to SEND_QUEUE_LIMIT bytes."""
        if self._closed or not packets:
            return
        if self.gso and len(packets) > 1:
            runs = [(buffer, segment, count, address)
                    for buffer, segment, count in self._runs(packets, GSO_MAX_SEGMENTS, GSO_MAX_BYTES)]
        else:
            runs = [(p, len(p), 1, address) for p in packets]
        if self._held is not None:
            self._held.extend(runs)
        elif self._queue:
            for run in runs:
                self._enqueue(*run)
        else:
            self._transmit(runs)

    def hold(self) -> None:
        """From now until flush(), keep what send() is given: the packets of a whole turn
        (every session's acks and data, the Demux's replies) then go in one system call."""
        if self._held is None:
            self._held = []

    def flush(self) -> None:
        """Send what was kept since hold(), in order, as many runs per system call as the
        socket takes (udp_io.send_runs: sendmmsg)."""
        runs, self._held = self._held, None
        if not runs or self._closed:
            return
        if self._queue:
            for run in runs:
                self._enqueue(*run)
            return
        sent, error = self._send_many(self._sock, runs, self._connected)
        self.gso_sends += sum(1 for run in runs[:sent] if run[2] > 1)
        if error == 0:
            return
        rest = runs[sent:]
        if error in (errno.EAGAIN, errno.EWOULDBLOCK):
            for run in rest:
                self._enqueue(*run)
            self._loop.add_writer(self._sock.fileno(), self._write)
            return
        # the run that failed goes again on its own: a GSO failure falls back to datagrams
        # there, any other error is counted there
        self._transmit(rest)

    def _transmit(self, runs: list) -> None:
        """Send runs one system call each, in order; queue them from the first that does
        not fit the socket."""
        for i, (buffer, segment, count, address) in enumerate(runs):
            if not self._send_run(buffer, segment, count, address):
                for run in runs[i:]:
                    self._enqueue(*run)
                self._loop.add_writer(self._sock.fileno(), self._write)
                return

    def _send_run(self, buffer: bytes, segment: int, count: int, address: Any) -> bool:
        """Send one run; False when the socket is full (nothing of the run was sent)."""
        sock = self._sock
        try:
            if count > 1:
                cmsg = self._cmsgs.get(segment)
                if cmsg is None:
                    cmsg = self._cmsgs[segment] = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", segment))]
                if self._connected:
                    sock.sendmsg((buffer,), cmsg)
                else:
                    sock.sendmsg((buffer,), cmsg, 0, address)
                self.gso_sends += 1
            elif self._connected:
                sock.send(buffer)
            else:
                sock.sendto(buffer, address)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if count > 1 and exc.errno in _GSO_FAILURES:
                # this path cannot segment: from now on one datagram per send
                log.debug("UDP GSO send failed (%s); sending datagrams one by one", exc)
                self.gso = False
                pieces = [buffer[i:i + segment] for i in range(0, len(buffer), segment)]
                for j, piece in enumerate(pieces):
                    if not self._send_run(piece, len(piece), 1, address):
                        for rest in pieces[j:]:
                            self._enqueue(rest, len(rest), 1, address)
                        self._loop.add_writer(sock.fileno(), self._write)
                        break
                return True
            self._send_errors += 1    # ICMP unreachable (connected socket), no route: retransmission copes
        return True

    def _enqueue(self, buffer: bytes, segment: int, count: int, address: Any) -> None:
        if self._queued_bytes + len(buffer) > SEND_QUEUE_LIMIT:
            self.dropped += count
            return
        self._queue.append((buffer, segment, count, address))
        self._queued_bytes += len(buffer)

    def _write(self) -> None:
        queue = self._queue
        while queue:
            buffer, segment, count, address = queue[0]
            if count > 1 and not self.gso:
                # GSO failed meanwhile: this run goes as datagrams
                queue.popleft()
                self._queued_bytes -= len(buffer)
                for i in reversed(range(0, len(buffer), segment)):
                    piece = buffer[i:i + segment]
                    queue.appendleft((piece, segment, 1, address))
                    self._queued_bytes += len(piece)
                continue
            if not self._send_run(buffer, segment, count, address):
                return
            queue.popleft()
            self._queued_bytes -= len(buffer)
        self._loop.remove_writer(self._sock.fileno())

    # ---- the rest of a transport ----

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        fd = self._sock.fileno()
        if fd >= 0:
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
        self._queue.clear()
        self._queued_bytes = 0
        self._sock.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self._sock
        if name == "sockname":
            return self.sockname
        if name == "peername" and self._connected:
            try:
                return self._sock.getpeername()
            except OSError:
                return default
        return default


async def _socket_for(loop: asyncio.AbstractEventLoop, host: str, port: int, *,
                      passive: bool) -> tuple[socket.socket, Any]:
    """A UDP socket for host:port, and the address resolved (the first getaddrinfo gives
    that a socket can be made for)."""
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM,
                                   flags=socket.AI_PASSIVE if passive else 0)
    error: OSError | None = None
    for family, kind, proto, _, address in infos:
        try:
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            error = exc
            continue
        try:
            if passive:
                sock.bind(address)
            else:
                sock.connect(address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        return sock, address
    raise error or OSError(f"getaddrinfo gave no address for {host}:{port}")


class UdpClientProtocol:
    """A client's connected socket: every datagram is for its one session."""

    def __init__(self) -> None:
        self.endpoint: UdpEndpoint | None = None
        self.session: Session | None = None

    @classmethod
    async def open(cls, host: str, port: int,
                   offload: tuple[bool, bool] | None = None) -> UdpClientProtocol:
        loop = asyncio.get_running_loop()
        sock, _ = await _socket_for(loop, host, port, passive=False)
        protocol = cls()
        protocol.endpoint = UdpEndpoint(loop, sock, protocol._received, connected=True,
                                        offload=offload)
        return protocol

    @property
    def errors(self) -> int:
        return 0 if self.endpoint is None else self.endpoint.errors

    def _received(self, batch: list) -> None:
        session = self.session
        endpoint = self.endpoint
        if session is None or endpoint is None:
            return
        endpoint.hold()
        try:
            if len(batch) == 1:
                session.feed_many(batch[0][0])
            else:
                session.feed_many([body for bodies, _ in batch for body in bodies])
        finally:
            endpoint.flush()

    # Link
    def transmit(self, packets: list[bytes]) -> None:
        endpoint = self.endpoint
        if endpoint is not None:
            endpoint.send(packets)

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self.endpoint is None or self.endpoint.closed:
            return default
        return self.endpoint.get_extra_info(name, default)


class UdpPeerLink:
    """A server session's way back to its peer: the shared socket and the peer's validated
    address (updated when the peer moved and answered the server's path challenge)."""

    __slots__ = ("endpoint", "addr")

    def __init__(self, endpoint: UdpServerProtocol, addr: Any) -> None:
        self.endpoint = endpoint
        self.addr = addr

    def transmit(self, packets: list[bytes]) -> None:
        endpoint = self.endpoint.endpoint
        if endpoint is not None:
            endpoint.send(packets, self.addr)

    def close(self) -> None:
        """The socket is shared; nothing to close per session."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self.addr
        endpoint = self.endpoint.endpoint
        return default if endpoint is None else endpoint.get_extra_info(name, default)


class UdpServerProtocol:
    """A server socket: routes each batch of datagrams through the Demux by session id and
    pumps each session it reached once."""

    def __init__(self, demux: Demux, loop: asyncio.AbstractEventLoop,
                 on_new: Callable[[Any, UdpPeerLink], Any], sessions: dict) -> None:
        self.demux = demux
        self.loop = loop
        self.on_new = on_new          # (engine, link) -> Session
        self.sessions = sessions      # session id -> Session
        self.endpoint: UdpEndpoint | None = None

    async def listen(self, host: str, port: int,
                     offload: tuple[bool, bool] | None = None) -> UdpEndpoint:
        sock, _ = await _socket_for(self.loop, host, port, passive=True)
        self.endpoint = UdpEndpoint(self.loop, sock, self._received, connected=False,
                                    offload=offload)
        return self.endpoint

    def _received(self, batch: list) -> None:
        endpoint = self.endpoint
        if endpoint is None:
            return
        endpoint.hold()
        try:
            self._route(endpoint, batch)
        finally:
            endpoint.flush()

    def _route(self, endpoint: UdpEndpoint, batch: list) -> None:
        """Route a batch through the Demux, then pump each session it reached once: what
        they send then waits in the endpoint until the turn is over (hold/flush)."""
        now = clock()
        touched: dict = {}
        for bodies, address in batch:
            for routed in self.demux.route_many(bodies, now, source=address):
                if routed.replies:
                    endpoint.send(routed.replies, address)
                engine = routed.engine
                if engine is None:
                    continue
                if routed.created:
                    session = self.on_new(engine, UdpPeerLink(self, routed.address))
                else:
                    session = self.sessions.get(engine.session_id)
                    if session is None:
                        continue
                    link = session.link
                    if link is not None and link.addr != routed.address:
                        link.addr = routed.address  # the peer moved and proved it receives there
                touched[session] = None
        for session in touched:
            session.pump()
