"""The sans-IO engine's entry points (docs/architecture.md, "The sans-IO session engine"):
packets (a UDP datagram is one), and a byte stream for TCP."""
from __future__ import annotations

import os

from tether.session.sansio.demux import Demux
from tether.session.sansio.engine import SessionEngine
from tether.session.sansio.events import MessagesDelivered, SessionEnded
from tether.session.sansio.settings import SessionSettings


def pair(reliable: bool):
    settings = SessionSettings(max_transfer_window=16)
    client = SessionEngine.client(settings, session_id=42, token=os.urandom(16), now=0.0,
                                  reliable_transport=reliable, max_packet_size=65000)
    demux = Demux(settings, reliable_transport=reliable, max_packet_size=65000)
    client.start(0.0)
    return client, demux


def delivered(engine) -> list:
    return [m for e in engine.events() if isinstance(e, MessagesDelivered) for m in e.messages]


def test_udp_datagram_names():
    client, demux = pair(False)
    server = None
    now = 0.0
    for _ in range(3):
        replies = []
        for d in client.packets_to_send(now):
            routed = demux.route(d, now, source=("127.0.0.1", 40000))
            replies += routed.replies       # first the Retry: the handshake takes two trips
            server = routed.engine or server
        for d in replies + (server.packets_to_send(now) if server else []):
            client.receive_packet(d, now)
        now += 0.001
    client.send([b"one", b"two"], now)
    for d in client.packets_to_send(now):
        server.receive_packet(d, now)
    assert delivered(server) == [b"one", b"two"]


def test_tcp_stream_names_split_anywhere():
    client, demux = pair(True)
    first = client.data_to_send(0.0)
    assert int.from_bytes(first[:4], "big") == len(first) - 4
    server = demux.route(first[4:], 0.0).engine
    client.receive_data(server.data_to_send(0.0), 0.0)
    client.send([b"x" * 100, b"y" * 100], 0.1)
    stream = client.data_to_send(0.1)
    for i in range(0, len(stream), 7):  # any chunking of the stream gives the same packets
        server.receive_data(stream[i:i + 7], 0.1)
    assert delivered(server) == [b"x" * 100, b"y" * 100]
    server.receive_data(b"\xff\xff\xff\xff", 0.2)  # a length no packet may have
    assert any(isinstance(e, SessionEnded) and e.error.code == "protocol-error" for e in server.events())


def test_mtu_sized_datagrams_keep_most_of_the_packet_for_data():
    settings = SessionSettings(max_transfer_window=8)
    client = SessionEngine.client(settings, session_id=1, token=os.urandom(16), now=0.0,
                                  reliable_transport=False, max_packet_size=1452)
    # a quarter of the datagram is kept for a piggybacked ack, not a fixed kilobyte
    assert client.fragment_size >= 1000
    client.start(0.0)
    client.packets_to_send(0.0)
    assert client.unacknowledged_bytes == 0
    client.send([b"z" * 5000], 0.0)
    assert client.unacknowledged_bytes == 5000


def test_every_frame_type_has_exactly_one_handler():
    from tether.session.sansio.engine import _HANDLERS
    from tether.session.sansio.frames import FrameType

    assert set(_HANDLERS) == {t.value for t in FrameType}
    assert not hasattr(SessionEngine, "receive_datagram")    # one name per entry point


def test_frame_type_numbers_are_the_codecs():
    # The codec twins define the wire numbers (C constants in the native one); the engine
    # names them through FrameType: the two must never drift apart.
    from conftest import twins
    from tether.session.sansio.frames import FrameType

    for codec in twins("codec"):
        assert {t.value: t.name for t in FrameType} == codec.FRAME_NAMES
        for t in FrameType:
            assert getattr(codec, t.name) == t.value
