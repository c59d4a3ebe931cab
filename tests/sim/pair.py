"""A client engine and a server Demux wired in memory, moved by hand (after h11's
ConnectionPair and aioquic's roundtrip()): for focused tests of one engine behaviour."""
from __future__ import annotations

from typing import Callable

from tether.session.sansio.core import Core, native
from tether.session.sansio.demux import Demux
from tether.session.sansio.engine import SessionEngine
from tether.session.sansio.events import MessagesDelivered
from tether.session.sansio.frames import FrameType
from tether.session.sansio.settings import SessionSettings

SESSION_ID = 0x7E7E
TOKEN = bytes(range(16))
DATAGRAM = 1452
CLIENT_ADDRESS = ("client", 1)


class Pair:
    """`client` (a SessionEngine), `demux` and, once created, `server`. Every event either
    side emits is kept in `client_events` / `server_events`; delivered messages in
    `client_got` / `server_got`, released at once when `auto_release` is set. Over UDP the
    client's packets come from `address` (change it to move the client); the handshake goes
    through the server's Retry like any UDP client's."""

    def __init__(self, *, client: dict | None = None, server: dict | None = None,
                 tcp: bool = False, packet: int = DATAGRAM, core: Core | None = None,
                 handshake: bool = True, auto_release: bool = True) -> None:
        self.core = core or native()
        self.now = 0.0
        self.tcp = tcp
        self.auto_release = auto_release
        self.client = SessionEngine.client(
            SessionSettings(**(client or {})), session_id=SESSION_ID, token=TOKEN, now=0.0,
            reliable_transport=tcp, max_packet_size=packet, core=self.core)
        self.demux = Demux(SessionSettings(**(server or {})), reliable_transport=tcp,
                           max_packet_size=packet, core=self.core)
        self.server: SessionEngine | None = None
        self.client_events: list = []
        self.server_events: list = []
        self.client_got: list[bytes] = []
        self.server_got: list[bytes] = []
        self.replies: list[bytes] = []       # demux answers to the client
        self.address = CLIENT_ADDRESS
        if handshake:
            self.client.start(self.now)
            self.exchange()

    def create(self) -> None:
        """Start the client and take its CreateSequence through the demux: over UDP the
        first one earns a Retry, which reaches the client, which repeats CreateSequence with
        the token. The server session exists afterwards; its response is not yet sent."""
        self.client.start(self.now)
        self.to_server()
        if not self.tcp:
            assert self.server is None and self.kinds(self.replies) == [FrameType.RETRY]
            for body in self.replies:
                self.client.receive_packet(body, self.now)
            self.replies.clear()
            self.to_server()
        assert self.server is not None

    # ---- moving packets ----

    def to_server(self, drop: Callable[[bytes], bool] | None = None) -> list[bytes]:
        """Client packets to the server (through the demux); returns them."""
        packets = self.client.packets_to_send(self.now)
        for body in packets:
            if drop is not None and drop(body):
                continue
            self.route(body)
        self._collect()
        return packets

    def route(self, body: bytes, source=None):
        """One packet to the demux, from `source` (default: the client's address)."""
        routed = self.demux.route(body, self.now, source=self.address if source is None else source)
        self.replies.extend(routed.replies)
        if routed.engine is not None:
            if routed.created:
                self.server = routed.engine
                self.demux.accepted(routed.engine)
        self._collect()
        return routed

    def to_client(self, drop: Callable[[bytes], bool] | None = None) -> list[bytes]:
        """Server packets (and demux replies) to the client; returns them."""
        packets = list(self.replies)
        self.replies.clear()
        if self.server is not None:
            packets += self.server.packets_to_send(self.now)
        for body in packets:
            if drop is None or not drop(body):
                self.client.receive_packet(body, self.now)
        self._collect()
        return packets

    def exchange(self, rounds: int = 100) -> int:
        """Move packets both ways until neither side has anything to send; how many moved."""
        moved = 0
        for _ in range(rounds):
            n = len(self.to_server()) + len(self.to_client())
            moved += n
            if n == 0:
                return moved
        raise AssertionError(f"still exchanging packets after {rounds} rounds")

    def fire(self, engine: SessionEngine) -> float:
        """Advance the clock to engine's next timer and run it; returns the new time."""
        deadline = engine.next_timer()
        assert deadline is not None, "the engine has no timer"
        self.now = max(self.now, deadline)
        engine.handle_timer(self.now)
        self._collect()
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    # ---- events ----

    def _collect(self) -> None:
        self._take(self.client, self.client_events, self.client_got)
        if self.server is not None:
            self._take(self.server, self.server_events, self.server_got)

    def _take(self, engine: SessionEngine, events: list, got: list) -> None:
        for event in engine.events():
            events.append(event)
            if isinstance(event, MessagesDelivered):
                got.extend(event.messages)
                if self.auto_release:
                    engine.release(len(event.messages), self.now)

    def frames(self, packets: list[bytes]) -> list[tuple]:
        """Every frame of `packets`, decoded."""
        out: list[tuple] = []
        for body in packets:
            out.extend(self.core.codec.decode_packet(body, 1 << 24, 1 << 16))
        return out

    def kinds(self, packets: list[bytes]) -> list[int]:
        return [f[0] for f in self.frames(packets)]
