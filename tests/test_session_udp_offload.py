"""The UDP I/O path (src/tether/session/adapters/udp.py): runs of packets sent with UDP_SEGMENT (GSO)
arrive as exactly the packets sent, whether the receiver reads them coalesced (UDP_GRO, cut
at the segment size) or one by one; the plain path (no offload, forced) and the fall back
when a GSO send fails deliver the same; sessions work over every combination. And the
batch entry points: an engine fed a batch of packets (receive_packets, Demux.route_many)
ends exactly where one fed them one by one does, on both cores."""
from __future__ import annotations

import asyncio
import errno
import os
import random
import socket

import pytest
from udp_tools import drain

import tether
from tether.session.adapters import api, udp
from tether.session.sansio.core import native, reference
from tether.session.sansio.demux import Demux
from tether.session.sansio.engine import SessionEngine
from tether.session.sansio.events import MessagesDelivered
from tether.session.sansio.settings import SessionSettings

GSO, GRO = udp.offload_support(socket.AF_INET)
needs_offload = pytest.mark.skipif(not (GSO and GRO), reason="kernel lacks UDP GSO/GRO")


class Collector:
    """The receiving end: every batch an endpoint hands over."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.batches = 0
        self.arrived = asyncio.Event()
        self.want = 0

    def __call__(self, batch: list) -> None:
        self.batches += 1
        for bodies, _address in batch:
            self.bodies.extend(bodies)
        if len(self.bodies) >= self.want:
            self.arrived.set()


def burst() -> list[bytes]:
    """Runs of equal-sized packets (what a burst of DATA looks like), shorter ones that end
    runs, and a bigger one that starts a new run; every packet distinct."""
    rng = random.Random(7)
    sizes = [1452] * 50 + [700] + [1452] * 3 + [100, 1452, 1452, 9] + [1200] * 70 + [1300]
    return [bytes([i % 251]) * 4 + rng.randbytes(size - 4) for i, size in enumerate(sizes)]


async def transfer(sender_offload, receiver_offload, packets, *, break_gso=False):
    loop = asyncio.get_running_loop()
    got = Collector()
    got.want = len(packets)
    rsock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rsock.bind(("127.0.0.1", 0))
    receiver = udp.UdpEndpoint(loop, rsock, got, connected=False, offload=receiver_offload)
    ssock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ssock.connect(rsock.getsockname())
    sender = udp.UdpEndpoint(loop, ssock, lambda batch: None, connected=True,
                             offload=sender_offload)
    if break_gso:
        sender._sock = _NoGso(ssock)
    try:
        for i in range(0, len(packets), 40):      # bursts, as pump() hands them over
            sender.send(packets[i:i + 40])
        await asyncio.wait_for(got.arrived.wait(), 5)
        return got, sender, receiver
    finally:
        sender.close()
        receiver.close()


class _NoGso:
    """A socket whose GSO sends fail as on a device that cannot segment."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def sendmsg(self, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    def __getattr__(self, name):
        return getattr(self._sock, name)


@needs_offload
async def test_gso_runs_arrive_coalesced_and_are_cut_back_into_the_packets_sent():
    packets = burst()
    got, sender, receiver = await transfer((True, True), (True, True), packets)
    assert got.bodies == packets
    assert receiver.coalesced > 0, "GRO never handed over a coalesced buffer"
    assert sender.gso_sends > 0 and sender.gso_sends < len(packets) // 4


@needs_offload
async def test_gso_to_a_receiver_without_gro_arrives_datagram_by_datagram():
    packets = burst()
    got, sender, receiver = await transfer((True, True), (False, False), packets)
    assert got.bodies == packets
    assert receiver.coalesced == 0 and sender.gso_sends > 0


async def test_forced_fallback_sends_and_reads_one_datagram_at_a_time():
    packets = burst()
    got, sender, receiver = await transfer((False, False), (False, False), packets)
    assert got.bodies == packets
    assert sender.gso_sends == 0 and receiver.coalesced == 0


async def test_the_environment_variable_forces_the_fallback(monkeypatch):
    monkeypatch.setenv("TETHER_UDP_OFFLOAD", "0")
    assert udp.offload_support(socket.AF_INET) == (False, False)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    endpoint = udp.UdpEndpoint(loop, sock, lambda batch: None, connected=False)
    assert (endpoint.gso, endpoint.gro) == (False, False)
    endpoint.close()


@needs_offload
async def test_a_failing_gso_send_falls_back_to_datagrams_and_loses_nothing():
    packets = burst()
    got, sender, receiver = await transfer((True, True), (True, True), packets, break_gso=True)
    assert got.bodies == packets
    assert sender.gso is False


async def _held_endpoint(receivers: int, sock=None):
    loop = asyncio.get_running_loop()
    targets = []
    for _ in range(receivers):
        r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        r.bind(("127.0.0.1", 0))
        r.setblocking(False)
        targets.append(r)
    if sock is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
    endpoint = udp.UdpEndpoint(loop, sock, lambda batch: None, connected=False,
                               offload=(GSO, GRO))
    return endpoint, targets


class _Spy:
    """Counts the calls of a function (optionally answering the first ones itself)."""

    def __init__(self, wrapped, answers=()):
        self.wrapped, self.answers, self.calls = wrapped, list(answers), []

    def __call__(self, *args):
        self.calls.append(args[1])
        if self.answers:
            return self.answers.pop(0)
        return self.wrapped(*args)


async def test_what_a_turn_sends_to_several_peers_goes_in_one_system_call():
    """hold() .. flush(): acks and data for three peers (one each, as a server's turn
    reaching three sessions makes them) leave in one send_runs call, in order, and no
    send of their own."""
    endpoint, targets = await _held_endpoint(3)
    spy = endpoint._send_many = _Spy(endpoint._send_many)
    singles = []
    endpoint._send_run = lambda *args: singles.append(args) or True
    try:
        endpoint.hold()
        sent = {}
        for i, t in enumerate(targets):
            packets = [bytes([i]) * 1452] * 3 + [bytes([i]) * 40]     # a burst, then its ack
            endpoint.send(packets, t.getsockname())
            sent[t.getsockname()] = packets
        assert spy.calls == [] and all(drain(t) == [] for t in targets)    # held
        endpoint.flush()
        assert len(spy.calls) == 1 and singles == []
        await asyncio.sleep(0.01)
        assert {t.getsockname(): drain(t) for t in targets} == sent
        endpoint.flush()                           # nothing held: nothing sent
        assert len(spy.calls) == 1
        endpoint.send([b"after"], targets[0].getsockname())    # not held: sent at once
        assert singles and len(spy.calls) == 1
    finally:
        endpoint.close()
        for t in targets:
            t.close()


async def test_a_full_socket_during_flush_queues_the_rest_and_the_writer_drains_it():
    endpoint, targets = await _held_endpoint(1)
    to = targets[0].getsockname()

    def full_after_one(sock, runs, connected):
        # the first run goes, then the socket is full
        sock.sendto(runs[0][0], runs[0][3])
        return 1, errno.EAGAIN

    endpoint._send_many = full_after_one
    try:
        endpoint.hold()
        for letter in b"abc":
            endpoint.send([bytes([letter]) * 10], to)
        endpoint.flush()
        assert len(endpoint._queue) == 2      # b and c wait for room; the writer sends them
        for _ in range(100):
            await asyncio.sleep(0.005)
            if not endpoint._queue:
                break
        assert drain(targets[0]) == [b"a" * 10, b"b" * 10, b"c" * 10]
    finally:
        endpoint.close()
        targets[0].close()


@needs_offload
async def test_a_gso_failure_during_flush_falls_back_to_datagrams():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    endpoint, targets = await _held_endpoint(1, sock=sock)
    endpoint._sock = _NoGso(sock)
    endpoint._send_many = _Spy(endpoint._send_many, answers=[(0, errno.EIO)])
    to = targets[0].getsockname()
    packets = [bytes([i]) * 1000 for i in range(5)]
    try:
        endpoint.hold()
        endpoint.send(packets, to)
        endpoint.flush()
        await asyncio.sleep(0.01)
        assert drain(targets[0]) == packets and endpoint.gso is False
    finally:
        endpoint.close()
        targets[0].close()


@pytest.mark.parametrize("offload", ["on", "off"])
@pytest.mark.parametrize("size", [64, 1024, 5000])
async def test_sessions_with_mtu_sized_datagrams_over_loopback(monkeypatch, offload, size):
    """A session on loopback with 1452-byte datagrams (as off loopback), so bursts go as
    GSO runs and arrive through GRO (offload on) or datagram by datagram (off); 5000-byte
    messages travel as fragments."""
    if offload == "off":
        monkeypatch.setenv("TETHER_UDP_OFFLOAD", "0")
    elif not (GSO and GRO):
        pytest.skip("kernel lacks UDP GSO/GRO")
    monkeypatch.setattr(api, "datagram_size", lambda host: udp.NETWORK_DATAGRAM)
    count = 3000 if size < 5000 else 300
    messages = [i.to_bytes(4, "big") * (size // 4) for i in range(count)]
    async with await tether.serve(None, "udp://127.0.0.1:0", max_transfer_window=512) as server:
        host, port = server.address
        async with tether.connect(f"udp://{host}:{port}", max_transfer_window=512) as client:
            peer = await server.accept()
            got: list[bytes] = []

            async def receive() -> None:
                while len(got) < count:
                    got.extend(await peer.recv_many())

            receiver = asyncio.ensure_future(receive())
            await asyncio.wait_for(client.send_many(messages), 20)
            await asyncio.wait_for(receiver, 20)
            assert got == messages
            await client.flush()
            endpoint = server._udp
            assert (endpoint.gso, endpoint.gro) == ((True, True) if offload == "on" else (False, False))
            if offload == "on":
                assert endpoint.coalesced > 0 and client.link.endpoint.gso_sends > 0


# ---------------------------------------------------------------- batches into the engine

def _engines(core, window=64, ack_interval=0.2, *, tcp=False):
    """A client engine and two identical server engines for the same session (over UDP,
    or with tcp=True over TCP)."""
    settings = SessionSettings(max_transfer_window=window, ack_interval=ack_interval)
    packet = 256 * 1024 if tcp else 1452
    client = SessionEngine.client(settings, session_id=0x51, token=bytes(16), now=0.0,
                                  reliable_transport=tcp, max_packet_size=packet, core=core)
    client.start(0.0)
    offer = core.codec.decode_packet(client.packets_to_send(0.0)[0])[0]
    servers = [SessionEngine.accept(offer, SessionSettings(max_transfer_window=window),
                                    now=0.0, reliable_transport=tcp, max_packet_size=packet,
                                    core=core) for _ in range(2)]
    response = servers[0].packets_to_send(0.0)
    assert response == servers[1].packets_to_send(0.0)
    for body in response:
        client.receive_packet(body, 0.001)
    return client, servers


def _feed_both(one, batched, packets, now, delivered) -> None:
    """`packets` to `one` packet by packet and to `batched` in one call; the messages each
    delivered added to delivered[id(engine)]."""
    for body in packets:
        one.receive_packet(body, now)
    batched.receive_packets(packets, now)
    for engine in (one, batched):
        for event in engine.events():
            if type(event) is MessagesDelivered:
                delivered[id(engine)].extend(event.messages)


def _state(engine) -> tuple:
    return engine.stats, engine._ack_now, engine._ack_deadline, engine.packets_ignored


@pytest.mark.parametrize("core", [native(), reference()], ids=["native", "reference"])
@pytest.mark.parametrize("seed", range(12))
def test_receive_packets_is_receive_packet_one_by_one(core, seed):
    """Lost, duplicated and reordered datagrams, large (fragmented) messages, cut
    into random batches: the batched engine (through codec.data_runs when a batch is plain
    DATA) ends every batch exactly where the one fed packet by packet, frame by frame,
    does (stats, ack state, delivered messages, the packets it sends)."""
    rng = random.Random(seed)
    client, (one, batched) = _engines(core, ack_interval=rng.choice([0, 0.2]))
    one._fast_receive = False      # frame by frame; `batched` takes codec.data_runs
    now = 0.01
    delivered = {id(one): [], id(batched): []}
    released = 0
    for _round in range(20):
        messages = [rng.randbytes(rng.choice([10, 64, 1024, 3000])) for _ in range(rng.randint(1, 40))]
        client.send(messages, now)
        packets = client.packets_to_send(now)
        wire = []
        for p in packets:
            r = rng.random()
            if r < 0.1:
                continue                      # lost
            wire.append(p)
            if r > 0.9:
                wire.append(p)                # duplicated
        if rng.random() < 0.3:
            rng.shuffle(wire)
        i = 0
        while i < len(wire):
            n = rng.randint(1, 8)
            chunk = wire[i:i + n]
            i += n
            _feed_both(one, batched, chunk, now, delivered)
            assert _state(one) == _state(batched)
        assert delivered[id(one)] == delivered[id(batched)]
        now += 0.005
        replies = one.packets_to_send(now)
        assert replies == batched.packets_to_send(now)
        fresh = len(delivered[id(one)]) - released
        released += fresh
        one.release(fresh, now)
        batched.release(fresh, now)
        for body in replies:
            if rng.random() > 0.1:
                client.receive_packet(body, now)
        one.handle_timer(now)
        batched.handle_timer(now)
        client.handle_timer(now)
        now += 0.005
    assert one.state == batched.state and one.error is None


@pytest.mark.parametrize("core", [native(), reference()], ids=["native", "reference"])
@pytest.mark.parametrize("seed", range(12))
def test_tcp_batches_with_acks_riding_in_data_are_taken_as_frame_by_frame(core, seed):
    """Over TCP both sides send data and each ack rides in the last data packet: a batch of
    such packets takes codec.data_runs (ACKs among the runs), and ends exactly where an
    engine taking them frame by frame does, also when a forged ACK in the batch faults
    the session (the messages before it delivered, none after it)."""
    rng = random.Random(seed)
    client, (one, batched) = _engines(core, tcp=True)
    one._fast_receive = False
    codec = core.codec
    now = 0.01
    delivered = {id(one): [], id(batched): [], id(client): []}
    forge_at = rng.randrange(8, 40) if seed % 3 == 0 else None
    riding = 0       # batches with an ACK among the runs
    for step in range(40):
        client.send([rng.randbytes(rng.choice([10, 64, 1000])) for _ in range(rng.randint(1, 30))], now)
        wire = client.packets_to_send(now)
        if rng.random() < 0.5:
            client.send([rng.randbytes(64) for _ in range(rng.randint(1, 5))], now)
            wire += client.packets_to_send(now)
        if step == forge_at:
            # an ack opening far more than the server's window: a protocol error mid-batch
            forged = codec.encode_ack(0x51, [(1, 1)], 10**6, False)
            wire.insert(rng.randrange(len(wire) + 1),
                        codec.pack_frames([codec.split_data(0x51, 10**9, [b"x"], 1000)[0], forged],
                                          256 * 1024)[0])
        fast = codec.data_runs([codec.decode_packet(body) for body in wire], 0x51)
        if step != forge_at:      # (the forged packet is out of order: still plain DATA)
            assert fast is not None
        riding += fast is not None and any(len(s) != 2 for s in fast[0])
        _feed_both(one, batched, wire, now, delivered)
        assert delivered[id(one)] == delivered[id(batched)]
        if one.error is not None:
            assert step == forge_at and riding
            assert type(one.error) is type(batched.error) and str(one.error) == str(batched.error)
            assert one.state == batched.state
            return
        assert _state(one) == _state(batched)
        one.release(len(delivered[id(one)]), now)
        batched.release(len(delivered[id(batched)]), now)
        delivered[id(one)].clear()
        delivered[id(batched)].clear()
        replies = [rng.randbytes(rng.choice([8, 64])) for _ in range(rng.randint(0, 20))]
        one.send(replies, now)
        batched.send(replies, now)
        out = one.packets_to_send(now)
        assert out == batched.packets_to_send(now)
        for body in out:
            client.receive_packet(body, now)
        for event in client.events():
            if type(event) is MessagesDelivered:
                client.release(len(event.messages), now)
        now += 0.003
        for engine in (one, batched, client):
            engine.handle_timer(now)
    assert forge_at is None and one.state == batched.state and one.error is None
    assert riding > 10 and batched.stats["acked"] > 0


@pytest.mark.parametrize("core", [native(), reference()], ids=["native", "reference"])
def test_demux_route_many_is_route_one_by_one(core):
    """A batch from one address: the session's packets reach it in one call, a garbage
    datagram is dropped, a stranger's CreateSequence is answered with a Retry, a packet
    naming the session from another address earns a challenge; the same as one by one."""
    rng = random.Random(3)
    results = []
    for batched in (False, True):
        settings = SessionSettings(max_transfer_window=64)
        demux = Demux(settings, reliable_transport=False, max_packet_size=1452, core=core,
                      entropy=random.Random(1).randbytes)
        client = SessionEngine.client(settings, session_id=0x77, token=bytes(16), now=0.0,
                                      reliable_transport=False, max_packet_size=1452, core=core)
        client.start(0.0)
        address = ("10.0.0.1", 5)
        for _ in range(3):       # CreateSequence, Retry, CreateSequence with the token
            out = []
            for body in client.packets_to_send(0.0):
                out.extend(demux.route(body, 0.0, source=address).replies)
            for body in out:
                client.receive_packet(body, 0.0)
        engine = demux.sessions[0x77]
        for body in engine.packets_to_send(0.0):
            client.receive_packet(body, 0.0)
        client.send([rng.randbytes(100) for _ in range(60)], 0.01)
        packets = client.packets_to_send(0.01)
        stranger = core.codec.encode_frame((1, 0x99, bytes(16), 8, 100, True))
        wire = packets[:3] + [b"\x00garbage"] + packets[3:5] + [stranger] + packets[5:]
        routed = []
        if batched:
            routed = demux.route_many(wire, 0.02, source=address)
            other = demux.route_many([packets[0]], 0.02, source=("10.0.0.2", 6))
        else:
            routed = [demux.route(b, 0.02, source=address) for b in wire]
            other = [demux.route(packets[0], 0.02, source=("10.0.0.2", 6))]
        replies = [r.replies for r in routed if r.replies]
        engines = {id(r.engine) for r in routed if r.engine is not None}
        results.append((engine.stats, engine.events().__len__() > 0, demux.dropped_packets,
                        demux.retries_sent, demux.off_path_packets, len(replies),
                        [len(r.replies) for r in other], engines == {id(engine)}))
        if batched:
            # garbage is dropped without ending a run; the stranger ends one
            assert len([r for r in routed if r.engine is engine]) == 2
    assert results[0] == results[1]


@pytest.mark.parametrize("core", [native(), reference()], ids=["native", "reference"])
def test_no_timeout_resend_within_an_rto_of_an_ack_that_made_progress(core):
    """RFC 6298 5.3: messages whose own deadline passed while acks for earlier ones kept
    arriving (a receiver draining a backlog) are not resent until an RTO after the last
    ack that acknowledged something new."""
    client, (server, _) = _engines(core)
    now = 0.01
    client.send([b"x" * 1000] * 10, now)
    packets = client.packets_to_send(now)
    assert sum(len(f[3]) for p in packets for f in core.codec.decode_packet(p) if f[0] == 4) == 10
    data = [p for p in packets if any(f[0] == 4 for f in core.codec.decode_packet(p))]
    half = len(data) // 2
    server.receive_packets(data[:half], now + 0.001)
    acked_at = now + 0.030
    for body in server.packets_to_send(now + 0.001):
        client.receive_packet(body, acked_at)
    rto = client.stats["rto"] + client.peer_ack_delay      # a data timeout allows the peer's ack delay
    assert 0 < client.stats["acked"] < 10
    assert client.next_timer() >= acked_at + rto
    overdue = now + rto + 0.001                 # the unacked messages' own deadline passed
    assert overdue < acked_at + rto
    client.handle_timer(overdue)
    assert client.stats["resent"] == 0
    client.handle_timer(acked_at + rto)
    assert client.stats["resent"] == 10 - client.stats["acked"]


@pytest.mark.parametrize("core", [native(), reference()], ids=["native", "reference"])
def test_a_timeout_after_a_stall_resends_a_burst_not_the_window(core):
    """The peer goes quiet for longer than an RTO with 200 messages in flight: the timeout
    resends the lowest RTO_BURST, restarts the timer, and the next timeout (still no word)
    resends twice as many; an ack with a fresh RTT sample starts the bursts over."""
    from tether.session.sansio.engine import RTO_BURST
    client, (server, _) = _engines(core, window=256)
    client._cc = None                        # no congestion window: all 200 go at once
    now = 0.01
    client.send([b"y" * 100] * 200, now)
    client.packets_to_send(now)
    probe = client.next_timer()                # first the tail probe: an AckRequested, no resend
    client.handle_timer(probe)
    client.packets_to_send(probe)
    assert (client.stats["tail_probes"], client.stats["resent"]) == (1, 0)
    t = client.next_timer()
    client.handle_timer(t)
    assert client.stats["resent"] == RTO_BURST
    client.packets_to_send(t)
    t2 = client.next_timer()
    assert t2 >= t + client.stats["rto"]
    client.handle_timer(t2)
    assert client.stats["resent"] == RTO_BURST * 3


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or os.uname().sysname != "Linux",
                    reason="SO_RCVBUFFORCE needs Linux and CAP_NET_ADMIN")
def test_tune_socket_forces_the_buffers_past_rmem_max_when_permitted():
    """As root the buffers reach SOCKET_BUFFER (the kernel doubles what it is given) even
    where rmem_max/wmem_max are lower: Python's socket module does not name SO_RCVBUFFORCE,
    and without it the receiver got rmem_max and dropped datagrams on a lossless link."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        udp.tune_socket(sock)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 2 * udp.SOCKET_BUFFER
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 2 * udp.SOCKET_BUFFER
