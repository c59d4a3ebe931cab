"""Fuzz target 2: the sans-IO session engine and the server's Demux fed hostile packets.

An input is one config byte and packets separated by `SEPARATOR`. The config byte picks
the side and the transport:

- server: a fresh `Demux` routes every packet (the first one of a TCP connection with
  `opening=True`, as tcp.py does); on TCP, once the first packet bound a session, the later
  parts are raw stream bytes for `SessionEngine.receive_data`, length prefixes included;
- client: an established client `SessionEngine` (its handshake answered by the harness)
  gets every packet through `receive_packet` (UDP) or the parts as raw stream bytes
  through `receive_data` (TCP).

Either side has sent a few messages of its own first, so hostile ACKs and NACKs meet a
send window with something in it. After every packet the harness does what an adapter
does: takes the packets to send, the events, the next timer, fires the timer, releases the
delivered messages. The same input runs on the compiled layer 1 and on the pure-Python
twins (`tether.session.sansio.core`), and both must tell the same story.

The property: nothing raises out of the engine or the Demux; a session that ends on a
hostile packet ends with a session fault (a `TetherError` in `SessionEnded` and
`engine.error`); every packet it sends decodes; a UDP packet fits `max_packet_size`.
"""
from __future__ import annotations

import math

from fuzz.mutators import SEPARATOR_DEFAULT, Layout

from tether._native import codec
from tether.errors import ProtocolError, TetherError
from tether.session.sansio import core as cores
from tether.session.sansio.demux import Demux
from tether.session.sansio.engine import SessionEngine
from tether.session.sansio.events import MessagesDelivered, SessionEnded
from tether.session.sansio.settings import SessionSettings
from tether.session.sansio.state import State

SEPARATOR = SEPARATOR_DEFAULT
SESSION_ID = 0x5EED
TOKEN = bytes(range(16))
PEER = ("192.0.2.1", 4000)     # the UDP source address of every packet
WINDOWS = [1, 2, 8, 64]
OWN_MESSAGES = [b"first", b"second" * 10, b"third" * 50]    # within the smaller max_message_size


def settings_for(config: int) -> SessionSettings:
    return SessionSettings(
        ordered=not config & 0x04,
        flow_control=not config & 0x08,
        max_transfer_window=WINDOWS[(config >> 4) & 3],
        max_message_size=300 if config & 0x40 else 65536,
        max_retry_count=3,
        ack_interval=0.0 if config & 0x20 else 0.2,
    )


def own_messages(engine: SessionEngine) -> list[bytes]:
    """The side's own messages, cut to what the peer said it accepts (a hostile
    CreateSequence may say 1 byte): sending more is the application's error, not the peer's."""
    limit = min(engine.settings.max_message_size, engine.peer_max_message_size)
    return [message[:limit] for message in OWN_MESSAGES]


class Story:
    """What one run did, step by step, in a form both layer-1 implementations must share."""

    def __init__(self) -> None:
        self.steps: list = []

    def note(self, *what) -> None:
        self.steps.append(what)


def check_packets(packets: list[bytes], max_packet: int, udp: bool) -> list:
    """Every packet the engine sends decodes; over UDP it fits a datagram. The frames come
    back with a Fault's or a refusal's reason left out: the twins word errors differently."""
    decoded = []
    for body in packets:
        frames = codec.decode_packet(body, 2**32 - 1, 2**32 - 1)
        if udp:
            assert len(body) <= max_packet, f"a {len(body)}-byte datagram over {max_packet}"
        decoded.append([f[:3] if f[0] in (3, 12) else f for f in frames])
    return decoded


def check_events(engine: SessionEngine, story: Story) -> None:
    for event in engine.events():
        if isinstance(event, SessionEnded):
            assert event.error is None or isinstance(event.error, TetherError), repr(event.error)
            story.note("ended", type(event.error).__name__)
        elif isinstance(event, MessagesDelivered):
            story.note("delivered", list(event.messages))
        else:
            story.note(type(event).__name__)
    if engine.state is State.FAULTED:
        assert isinstance(engine.error, TetherError), repr(engine.error)


def service(engine: SessionEngine, now: float, udp: bool, story: Story) -> None:
    """What an adapter does after a packet: output, events, the timer, the app's release."""
    packets = engine.packets_to_send(now)
    story.note("sent", check_packets(packets, engine.max_packet_size, udp))
    check_events(engine, story)
    delivered = [s for s in story.steps[-3:] if s[0] == "delivered"]
    if delivered:
        engine.release(sum(len(s[1]) for s in delivered), now)
    deadline = engine.next_timer()
    story.note("timer", engine.state.name, deadline is None)
    if deadline is not None:
        assert isinstance(deadline, float) and math.isfinite(deadline), f"next_timer gave {deadline!r}"
        engine.handle_timer(max(deadline, now))
        packets = engine.packets_to_send(max(deadline, now))
        story.note("sent on timer", check_packets(packets, engine.max_packet_size, udp))
        check_events(engine, story)


def run_server(config: int, parts: list[bytes], core) -> Story:
    udp = not config & 0x01
    max_packet = 1452 if config & 0x80 else 65000
    # fixed server keys, so both twins issue the same address tokens and challenges
    demux = Demux(settings_for(config), reliable_transport=not udp, max_packet_size=max_packet, core=core,
                  entropy=bytes)
    story = Story()
    now = 1.0
    engine = None
    for i, part in enumerate(parts):
        now += 0.01 * (1 + i % 3)
        if engine is not None and not udp:
            engine.receive_data(part, now)       # a TCP connection, bound: raw stream bytes
        else:
            routed = demux.route(part, now, opening=not udp and i == 0, source=PEER if udp else None)
            story.note("routed", routed.engine is not None, routed.created,
                       check_packets(routed.replies, max_packet, udp), demux.dropped_packets)
            echo = udp and routed.engine is None and with_address_token(part, routed.replies)
            if echo:        # a UDP client answers the Retry: CreateSequence again, with its token
                routed = demux.route(echo, now, source=PEER)
                story.note("routed echo", routed.engine is not None, routed.created,
                           check_packets(routed.replies, max_packet, udp), demux.dropped_packets)
            if routed.engine is not None:
                engine = routed.engine
                if routed.created and engine.is_open:
                    demux.accepted(engine)
                    engine.send(own_messages(engine), now)
        if engine is not None:
            service(engine, now, udp, story)
    if engine is not None:
        story.note("end", engine.state.name, type(engine.error).__name__, engine.stats)
    return story


def with_address_token(part: bytes, replies: list[bytes]) -> bytes | None:
    """`part` again with the address token of the Retry in `replies` added to its first
    frame, if that is a CreateSequence (what a UDP client does on a Retry); else None."""
    retries = [reply for reply in replies if reply[:2] == b"\x93\x0f"]
    if not retries:
        return None
    try:
        frames = codec.decode_packet(part)
        retry = codec.decode_packet(retries[0])[0]
    except ProtocolError:
        return None
    first = frames[0]
    if first[0] != 1 or len(first) < 6:
        return None
    ack_delay = first[6] if len(first) > 6 else 200_000
    return b"".join(codec.encode_frame(frame)
                    for frame in [(*first[:6], ack_delay, retry[2]), *frames[1:]])


def run_client(config: int, parts: list[bytes], core) -> Story:
    udp = not config & 0x01
    max_packet = 1452 if config & 0x80 else 65000
    settings = settings_for(config)
    engine = SessionEngine.client(settings, session_id=SESSION_ID, token=TOKEN, now=1.0,
                                  reliable_transport=not udp, max_packet_size=max_packet, core=core)
    engine.start(1.0)
    engine.packets_to_send(1.0)
    engine.receive_packet(codec.encode_frame((2, SESSION_ID, 16, 65536)), 1.001)
    assert engine.state is State.ESTABLISHED
    engine.send(own_messages(engine), 1.001)
    story = Story()
    service(engine, 1.002, udp, story)
    now = 1.01
    for i, part in enumerate(parts):
        now += 0.01 * (1 + i % 3)
        if udp:
            engine.receive_packet(part, now)
        else:
            engine.receive_data(part, now)
        service(engine, now, udp, story)
    story.note("end", engine.state.name, type(engine.error).__name__, engine.stats)
    return story


class Target:
    layout = Layout(header=1, separator=SEPARATOR)

    def __init__(self, seed: int = 1) -> None:
        self.native = cores.native()
        self.reference = cores.reference()
        self.counts = {"server": 0, "client": 0, "faulted": 0, "sessions_created": 0}

    def seeds(self) -> list[bytes]:
        return seed_inputs()

    def one(self, data: bytes) -> None:
        if not data:
            return
        config, parts = self.layout.split(data)
        config = config[0]
        parts = parts[:64]
        run = run_client if config & 0x02 else run_server
        story = run(config, parts, self.native)
        twin = run(config, parts, self.reference)
        assert story.steps == twin.steps, first_difference(story.steps, twin.steps)
        self.counts["client" if config & 0x02 else "server"] += 1
        last = story.steps[-1] if story.steps else ()
        if last and last[0] == "end":
            self.counts["faulted"] += last[1] == "FAULTED"
            self.counts["sessions_created"] += run is run_server

    def checkpoint(self) -> None:
        pass

    def figures(self) -> dict:
        return dict(self.counts)


def first_difference(a: list, b: list) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"native and reference engines differ at step {i}: {x!r:.300} != {y!r:.300}"
    return f"native and reference engines took {len(a)} and {len(b)} steps"


def seed_inputs() -> list[bytes]:
    """Valid conversations for each side and transport, packets built by the codec."""
    enc = codec.encode_frame
    sid = SESSION_ID
    create = enc((1, sid, TOKEN, 8, 65536, True))
    data = codec.encode_data(sid, 1, [b"a", b"bb", b"ccc"])
    more = codec.encode_data(sid, 4, [b"d" * 100])
    gap = codec.encode_data(sid, 7, [b"late"])
    fragments = codec.encode_data(sid, 5, [b"f1", b"f2"], fragments=[(0, 0, 2), (1, 1, 2)])
    ack = codec.encode_ack(sid, [(1, 3)], 8, False)
    ack_all = codec.encode_ack(sid, [(1, 2), (3, 3)], 8, False)
    conversation = [
        data + enc((7, sid)), ack, more, gap, fragments, ack_all,
        enc((8, sid, 6)), enc((9, sid, 3)), enc((10, sid, 6)), enc((11, sid)),
    ]
    others = [enc((12, sid, "protocol-error", "bad")), enc((13, sid, TOKEN)), enc((14, sid)),
              enc((3, sid, "refused")), enc((2, sid, 8, 65536)),
              codec.encode_data(sid + 1, 1, [b"other session"])]
    seeds = []
    for config in (0x00, 0x01, 0x02, 0x03, 0x84, 0x19, 0x6a, 0x2b):
        udp = not config & 0x01
        client = config & 0x02
        packets = ([] if client else [create]) + conversation
        if not udp:
            # TCP: the opening packet alone, then the rest as one length-prefixed stream,
            # cut at an awkward place
            stream = b"".join(codec.frame_packet(p) for p in packets[0 if client else 1:])
            packets = ([] if client else [packets[0]]) + [stream[:7], stream[7:]]
        seeds.append(bytes([config]) + SEPARATOR.join(packets))
        for other in others:
            body = other if udp else codec.frame_packet(other)
            seeds.append(bytes([config]) + SEPARATOR.join(([] if client else [create]) + [body]))
    return seeds
