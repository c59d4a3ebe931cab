"""layer 1's udp_io: DatagramReader reads a UDP socket in batches (recvmmsg in the compiled
module, one recvmsg per datagram in the twin). Both twins, fed the same traffic on two
sockets, hand over the same batches: the same bodies, cut from GRO buffers at the same
places, grouped by the same addresses (equal to what socket.recvfrom says), within the
same bounds, with the same counters."""
from __future__ import annotations

import errno
import random
import socket
import struct

import pytest
from udp_tools import drain

from tether._native import udp_io as native_udp_io
from tether._reference import udp_io as reference_udp_io
from tether.session.adapters import udp

TWINS = [pytest.param(native_udp_io, id="native"), pytest.param(reference_udp_io, id="reference")]
GSO, GRO = udp.offload_support(socket.AF_INET)
needs_offload = pytest.mark.skipif(not (GSO and GRO), reason="kernel lacks UDP GSO/GRO")


def _receiver(family: int = socket.AF_INET, gro: bool = False) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    if gro:
        sock.setsockopt(udp.SOL_UDP, udp.UDP_GRO, 1)
    return sock


def _send(sender: socket.socket, items: list, to) -> None:
    """items: bytes (one datagram) or (segment, [bytes...]) for one GSO send."""
    for item in items:
        if isinstance(item, bytes):
            sender.sendto(item, to)
        else:
            segment, packets = item
            sender.sendmsg([b"".join(packets)],
                           [(udp.SOL_UDP, udp.UDP_SEGMENT, struct.pack("=H", segment))], 0, to)


def _traffic(seed: int, gso: bool) -> list[tuple[int, list]]:
    """(sender index, items) in sending order: single datagrams of many sizes, and (with
    gso) runs of equal-sized packets ended by a shorter one."""
    rng = random.Random(seed)
    out = []
    for _ in range(40):
        who = rng.randrange(3)
        if gso and rng.random() < 0.4:
            segment = rng.choice([100, 1200, 1452])
            count = rng.randint(2, 20)
            packets = [rng.randbytes(segment) for _ in range(count - 1)]
            packets.append(rng.randbytes(rng.randint(1, segment)))
            out.append((who, [(segment, packets)]))
        else:
            out.append((who, [rng.randbytes(rng.choice([1, 9, 500, 1452, 9000, 65000]))]))
    return out


def _read_all(reader) -> list:
    batches = []
    for _ in range(1000):
        batch = reader.read()
        if not batch:
            return batches
        batches.append(batch)
    raise AssertionError("the reader never drained")


@pytest.mark.parametrize("gro", [False, pytest.param(True, marks=needs_offload)])
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("bounds", [(32, 256), (4, 10), (1, 1)])
def test_both_twins_hand_over_the_same_batches(gro, seed, bounds):
    max_reads, max_datagrams = bounds
    receivers = [_receiver(gro=gro) for _ in range(2)]
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for s in senders:
            s.bind(("127.0.0.1", 0))
        sent = []
        for who, items in _traffic(seed, gso=gro):
            for r in receivers:
                _send(senders[who], items, r.getsockname())
            for item in items:
                packets = [item] if isinstance(item, bytes) else item[1]
                sent += [(p, senders[who].getsockname()) for p in packets]
        results = []
        for module, r in zip((native_udp_io, reference_udp_io), receivers):
            reader = module.DatagramReader(r, gro=gro, max_reads=max_reads, max_datagrams=max_datagrams)
            batches = _read_all(reader)
            results.append((batches, (reader.reads, reader.calls, reader.coalesced, reader.errors)))
        (native_batches, native_counts), (reference_batches, reference_counts) = results
        assert native_batches == reference_batches
        assert native_counts == reference_counts
        got = [(body, address) for batch in native_batches for bodies, address in batch
               for body in bodies]
        assert got == sent          # every datagram, whole, in order, from its sender
        for batch in native_batches:
            # consecutive reads from one address are one entry
            assert all(a[1] != b[1] for a, b in zip(batch, batch[1:]))
            datagrams = sum(len(bodies) for bodies, _ in batch)
            if not gro:
                assert datagrams <= min(max_reads, max_datagrams)
        if gro:
            assert native_counts[2] > 0, "GRO never coalesced"
        if max_reads == 1:
            assert len(native_batches) == native_counts[0]   # one read per call of read()
    finally:
        for s in receivers + senders:
            s.close()


@pytest.mark.parametrize("module", TWINS)
def test_reads_stop_at_max_reads_and_the_rest_waits(module):
    r = _receiver()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i in range(20):
            s.sendto(bytes([i]) * 10, r.getsockname())
        reader = module.DatagramReader(r, max_reads=8, max_datagrams=256)
        sizes = [sum(len(b) for b, _ in reader.read()) for _ in range(4)]
        assert sizes == [8, 8, 4, 0]
        assert reader.reads == 20
    finally:
        r.close()
        s.close()


@needs_offload
@pytest.mark.parametrize("module", TWINS)
def test_max_datagrams_ends_a_read_after_the_call_that_reached_it(module):
    r = _receiver(gro=True)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(6):     # 6 coalesced buffers of 10 datagrams each
            _send(s, [(100, [b"x" * 100] * 10)], r.getsockname())
        reader = module.DatagramReader(r, gro=True, max_reads=32, max_datagrams=25)
        first = reader.read()
        # the first call asks for min(32, 25) buffers: all 6 (60 datagrams) come at once
        assert sum(len(b) for b, _ in first) == 60 and reader.calls == 1
        assert reader.read() == []
    finally:
        r.close()
        s.close()


@pytest.mark.parametrize("module", TWINS)
def test_ipv6_addresses_are_what_recvfrom_says(module):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        r = _receiver(socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback")
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    probe = _receiver(socket.AF_INET6)
    try:
        s.sendto(b"probe", probe.getsockname())
        expected = probe.recvfrom(100)[1]
        s.sendto(b"one", r.getsockname())
        s.sendto(b"two", r.getsockname())
        batch = module.DatagramReader(r).read()
        assert batch == [([b"one", b"two"], expected)]
        assert len(expected) == 4
    finally:
        r.close()
        s.close()
        probe.close()


@pytest.mark.parametrize("module", TWINS)
def test_an_icmp_error_on_a_connected_socket_counts_and_reading_goes_on(module):
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()
    closed.close()                  # nobody listens there now: ICMP port unreachable
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.setblocking(False)
    c.connect(port)
    try:
        c.send(b"hello")
        reader = module.DatagramReader(c)
        for _ in range(100):        # the ICMP error arrives asynchronously
            assert reader.read() == []
            if reader.errors:
                break
        assert reader.errors == 1
        assert reader.read() == [] and reader.errors == 1
    finally:
        c.close()


@pytest.mark.parametrize("module", TWINS)
def test_a_closed_socket_reads_nothing(module):
    r = _receiver()
    reader = module.DatagramReader(r)
    r.close()
    assert reader.read() == []


@pytest.mark.parametrize("module", TWINS)
def test_bad_arguments_are_named(module):
    r = _receiver()
    try:
        with pytest.raises(TypeError, match="sock must be a socket"):
            module.DatagramReader(42)
        for bad in (0, 1025, 2.0, None):
            with pytest.raises(ValueError, match="max_reads"):
                module.DatagramReader(r, max_reads=bad)
        for bad in (0, -1, "8"):
            with pytest.raises(ValueError, match="max_datagrams"):
                module.DatagramReader(r, max_datagrams=bad)
    finally:
        r.close()


def test_both_twins_name_the_same_things():
    for module in (native_udp_io, reference_udp_io):
        assert module.BUFFER_SIZE == 65536
        assert sorted(module.__all__) == ["BUFFER_SIZE", "DatagramReader", "send_runs"]


# ---- send_runs: the packets of a turn in one sendmmsg ----

def _runs_for(receivers: list, seed: int) -> list:
    """Runs of one datagram and GSO runs, to several receivers, in an interleaved order."""
    rng = random.Random(seed)
    runs = []
    for _ in range(30):
        to = receivers[rng.randrange(len(receivers))].getsockname()
        if GSO and rng.random() < 0.3:
            segment, count = rng.choice([100, 1452]), rng.randint(2, 10)
            packets = [rng.randbytes(segment) for _ in range(count - 1)] + [rng.randbytes(rng.randint(1, segment))]
            runs.append((b"".join(packets), segment, count, to))
        else:
            size = rng.choice([1, 300, 1452, 9000])
            runs.append((rng.randbytes(size), size, 1, to))
    return runs


@pytest.mark.parametrize("seed", [1, 2])
def test_send_runs_twins_send_the_same_datagrams(seed):
    got = []
    for module in (native_udp_io, reference_udp_io):
        receivers = [_receiver() for _ in range(3)]
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            runs = _runs_for(receivers, seed)
            assert module.send_runs(sender, runs, False) == (len(runs), 0)
            expected = {r.getsockname(): [] for r in receivers}
            for buffer, segment, _count, to in runs:
                expected[to] += [buffer[i:i + segment] for i in range(0, len(buffer), segment)]
            received = {r.getsockname(): drain(r) for r in receivers}
            assert received == expected       # every datagram, cut at its run's segment size
            got.append([len(v) for v in received.values()])
        finally:
            for s in receivers + [sender]:
                s.close()
    assert got[0] == got[1]


@pytest.mark.parametrize("module", TWINS)
def test_send_runs_on_a_connected_socket_ignores_the_address(module):
    r = _receiver()
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.connect(r.getsockname())
    try:
        assert module.send_runs(c, [(b"a", 1, 1, None), (b"bb", 2, 1, None)], True) == (2, 0)
        assert drain(r) == [b"a", b"bb"]
    finally:
        r.close()
        c.close()


@pytest.mark.parametrize("module", TWINS)
def test_send_runs_says_what_stopped_it(module):
    r = _receiver()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    to = r.getsockname()
    try:
        # a datagram over the UDP limit fails with EMSGSIZE: the one before it went
        runs = [(b"x", 1, 1, to), (b"y" * 70000, 65535, 1, to), (b"z", 1, 1, to)]
        assert module.send_runs(s, runs, False) == (1, errno.EMSGSIZE)
        assert drain(r) == [b"x"]
        assert module.send_runs(s, [], False) == (0, 0)
        s.close()
        assert module.send_runs(s, [(b"x", 1, 1, to)], False) == (0, errno.EBADF)
    finally:
        r.close()
        s.close()


@pytest.mark.parametrize("module", TWINS)
def test_send_runs_bad_arguments_are_named(module):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    to = ("127.0.0.1", 9)
    try:
        with pytest.raises(TypeError, match="runs must be a list"):
            module.send_runs(s, ((b"x", 1, 1, to),), False)
        with pytest.raises(TypeError, match=r"runs\[0\] must be"):
            module.send_runs(s, [("x", 1, 1, to)], False)
        with pytest.raises(ValueError, match=r"runs\[1\]: segment 0"):
            module.send_runs(s, [(b"x", 1, 1, to), (b"x", 0, 1, to)], False)
        with pytest.raises(ValueError, match=r"runs\[0\]: 'localhost' is not a numeric IP address"):
            module.send_runs(s, [(b"x", 1, 1, ("localhost", 9))], False)
        with pytest.raises(TypeError, match=r"runs\[0\]: the address must be"):
            module.send_runs(s, [(b"x", 1, 1, "127.0.0.1:9")], False)
        with pytest.raises(ValueError, match=r"runs\[0\]: port 70000 out of range"):
            module.send_runs(s, [(b"x", 1, 1, ("127.0.0.1", 70000))], False)
    finally:
        s.close()
