"""Reliable sessions over real loopback sockets, through fault-injecting relays."""
from __future__ import annotations

import asyncio
import os
import random
import socket

import pytest

import tether
from tether.bench.relay import TcpRelay, UdpRelay
from tether.session.sansio.frames import FrameType as F

pytestmark = pytest.mark.timeout(120)


def url(scheme: str, address: tuple) -> str:
    host, port = address[0], address[1]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


async def exchange(client, peer, count: int, size: int = 40) -> None:
    """count messages each way, concurrently; exactly once and in order on both sides."""
    out = [os.urandom(8) + i.to_bytes(4, "big") + b"x" * (size - 12) for i in range(count)]
    back = [b"reply-%d" % i for i in range(count)]

    async def pump(sender, receiver, messages):
        async def rx():
            got = []
            while len(got) < len(messages):
                got.extend(await receiver.recv_many())
            return got
        task = asyncio.ensure_future(rx())
        for i in range(0, len(messages), 97):
            await sender.send_many(messages[i:i + 97])
        await sender.flush()
        return await task

    got_out, got_back = await asyncio.gather(pump(client, peer, out), pump(peer, client, back))
    assert got_out == out
    assert got_back == back


@pytest.mark.parametrize("scheme", ["udp", "tcp"])
async def test_round_trip_both_directions_and_graceful_close(scheme):
    async with await tether.serve(None, f"{scheme}://127.0.0.1:0") as server:
        assert server.address[0] == "127.0.0.1" and server.address[1] > 0
        client = await tether.connect(url(scheme, server.address), max_transfer_window=64)
        peer = await server.accept()
        await exchange(client, peer, 2000)
        await client.send(b"last")
        await client.close()
        assert client.closed and client.error is None
        # the server side delivers what it holds, then ends iteration cleanly
        assert [m async for m in peer] == [b"last"]
        await asyncio.wait_for(peer.wait_closed(), 5)
        assert peer.error is None
        with pytest.raises(tether.SequenceClosed):
            await client.send(b"after close")


@pytest.mark.parametrize("scheme", ["udp", "tcp"])
async def test_ipv6_loopback(scheme):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = await tether.serve(None, f"{scheme}://[::1]:0")
    except OSError:
        pytest.skip("::1 not configured")
    async with server:
        async with tether.connect(url(scheme, server.address)) as client:
            peer = await server.accept()
            await client.send(b"six")
            assert await peer.recv() == b"six"
            assert peer.peer_address[0] == "::1"


async def test_handler_server_echo():
    async def echo(session):
        async for message in session:
            await session.send(message.upper())

    async with await tether.serve(echo, "tcp://127.0.0.1:0") as server:
        async with tether.connect(url("tcp", server.address)) as client:
            await client.send_many([b"a", b"b", b"c"])
            assert [await client.recv() for _ in range(3)] == [b"A", b"B", b"C"]


@pytest.mark.fault
@pytest.mark.parametrize("ordered", [True, False])
async def test_udp_through_loss_duplication_and_reordering(ordered):
    # a small window makes many data datagrams, so the relay's losses hit data too
    async with await tether.serve(None, "udp://127.0.0.1:0", max_transfer_window=32) as server:
        relay = await UdpRelay(server.address, loss=0.1, duplicate=0.05, reorder=0.2,
                               delay=0.002, seed=7).start()
        try:
            client = await tether.connect(url("udp", relay.address), max_transfer_window=32,
                                          ordered=ordered, ack_interval=0.02)
            peer = await server.accept()
            messages = [b"m%05d" % i for i in range(5000)]

            async def rx():
                got = []
                while len(got) < len(messages):
                    got.extend(await peer.recv_many())
                return got
            task = asyncio.ensure_future(rx())
            await client.send_many(messages)
            await client.flush()
            got = await asyncio.wait_for(task, 60)
            if ordered:
                assert got == messages
            else:
                assert sorted(got) == messages  # exactly once, any order
            assert relay.dropped > 0 and relay.duplicated > 0
            assert client.stats["resent"] > 0
            await client.close()
        finally:
            relay.close()


@pytest.mark.fault
async def test_tcp_cut_every_few_tens_of_kilobytes_resumes_without_loss_or_duplicates():
    async with await tether.serve(None, "tcp://127.0.0.1:0", max_transfer_window=128) as server:
        relay = await TcpRelay(server.address, cut_every=40_000, seed=3).start()
        try:
            client = await tether.connect(url("tcp", relay.address), max_transfer_window=128)
            peer = await server.accept()
            await asyncio.wait_for(exchange(client, peer, 6000, size=100), 90)
            assert relay.cuts >= 3, relay.cuts
            assert client.reconnector.reconnects >= 3
            await client.close()
        finally:
            relay.close()


@pytest.mark.fault
async def test_udp_peer_address_change_keeps_the_session():
    async with await tether.serve(None, "udp://127.0.0.1:0") as server:
        relay = await UdpRelay(server.address).start()
        try:
            client = await tether.connect(url("udp", relay.address))
            peer = await server.accept()
            await client.send(b"before")
            assert await peer.recv() == b"before"
            first_address = peer.peer_address
            relay.rebind()
            await client.send(b"after")
            assert await asyncio.wait_for(peer.recv(), 5) == b"after"
            assert peer.peer_address != first_address
            await peer.send(b"back")
            assert await asyncio.wait_for(client.recv(), 5) == b"back"
        finally:
            relay.close()


@pytest.mark.fault
async def test_silent_server_connect_fails_with_retry_limit():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))  # bound, never answers
    try:
        with pytest.raises(tether.RetryLimitExceeded):
            await tether.connect(url("udp", sock.getsockname()), max_retry_count=2,
                                 connect_timeout=1.0, ack_interval=0.01)
    finally:
        sock.close()


@pytest.mark.fault
async def test_peer_goes_silent_retry_limit_then_inactivity():
    async with await tether.serve(None, "udp://127.0.0.1:0") as server:
        relay = await UdpRelay(server.address).start()
        try:
            client = await tether.connect(url("udp", relay.address), max_retry_count=2,
                                          ack_interval=0.01, inactivity_timeout=30)
            peer = await server.accept()
            relay.blackhole = True
            await client.send(b"into the void")
            with pytest.raises(tether.RetryLimitExceeded):
                await asyncio.wait_for(client.flush(), 20)
        finally:
            relay.close()

    async with await tether.serve(None, "udp://127.0.0.1:0", inactivity_timeout=0.5) as server:
        relay = await UdpRelay(server.address).start()
        try:
            client = await tether.connect(url("udp", relay.address), inactivity_timeout=0.5)
            peer = await server.accept()
            relay.blackhole = True
            with pytest.raises(tether.InactivityTimeout):
                await asyncio.wait_for(peer.recv(), 10)
            with pytest.raises(tether.InactivityTimeout):
                await asyncio.wait_for(client.recv(), 10)
        finally:
            relay.close()


async def test_idle_session_survives_on_keepalives():
    async with await tether.serve(None, "udp://127.0.0.1:0", inactivity_timeout=0.4) as server:
        async with tether.connect(url("udp", server.address), inactivity_timeout=0.4) as client:
            peer = await server.accept()
            await asyncio.sleep(1.5)  # well past the timeout: keepalives kept it alive
            await client.send(b"still here")
            assert await peer.recv() == b"still here"


async def test_max_pending_channels_refuses_beyond_the_limit():
    async with await tether.serve(None, "udp://127.0.0.1:0", max_pending_channels=2) as server:
        a = await tether.connect(url("udp", server.address))
        b = await tether.connect(url("udp", server.address))
        with pytest.raises(tether.CreateSequenceRefused, match="max_pending_channels"):
            await tether.connect(url("udp", server.address))
        await server.accept()  # one accepted: room for one more
        c = await tether.connect(url("udp", server.address))
        for s in (a, b, c):
            s.abort()


async def test_message_too_large_at_the_sender_leaves_the_session_usable():
    async with await tether.serve(None, "tcp://127.0.0.1:0", max_message_size=1000) as server:
        async with tether.connect(url("tcp", server.address), max_message_size=5000) as client:
            peer = await server.accept()
            with pytest.raises(tether.MessageTooLarge):
                await client.send(b"x" * 1001)  # the server's limit is the smaller one
            await client.send(b"y" * 1000)
            assert await peer.recv() == b"y" * 1000


@pytest.mark.fault
async def test_hostile_bytes_never_hurt_the_server_or_other_sessions():
    rng = random.Random(11)
    for scheme in ("udp", "tcp"):
        async with await tether.serve(None, f"{scheme}://127.0.0.1:0") as server:
            client = await tether.connect(url(scheme, server.address), max_transfer_window=64)
            peer = await server.accept()

            async def attack(scheme: str = scheme) -> None:
                for i in range(300):
                    junk = rng.randbytes(rng.randrange(0, 2000))
                    if scheme == "udp":
                        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        s.sendto(junk, server.address)
                        s.close()
                    else:
                        try:
                            r, w = await asyncio.open_connection(*server.address)
                            w.write(rng.choice([junk, b"\xff\xff\xff\xff" + junk, b"\x00\x00\x00\x05" + junk]))
                            await w.drain()
                            w.close()
                        except OSError:
                            pass
                    if i % 20 == 0:
                        await asyncio.sleep(0)

            await asyncio.gather(attack(), exchange(client, peer, 1000))
            # the server still takes new sessions
            async with tether.connect(url(scheme, server.address)) as late:
                other = await server.accept()
                await late.send(b"ok")
                assert await other.recv() == b"ok"
            assert not client.closed and not peer.closed
            await client.close()


async def test_resume_with_a_wrong_token_is_refused_and_harms_nothing():
    from tether._native import codec
    async with await tether.serve(None, "tcp://127.0.0.1:0") as server:
        async with tether.connect(url("tcp", server.address)) as client:
            peer = await server.accept()
            reader, writer = await asyncio.open_connection(*server.address)
            body = codec.encode_frame((F.RESUME, client.session_id, b"\x00" * 16))
            writer.write(codec.frame_packet(body))
            header = await asyncio.wait_for(reader.readexactly(4), 5)
            reply = codec.decode_packet(await reader.readexactly(int.from_bytes(header, "big")))
            assert reply[0][0] == F.CREATE_SEQUENCE_REFUSED and "token" in reply[0][2]
            assert await asyncio.wait_for(reader.read(), 5) == b""  # and the connection is closed
            writer.close()
            await client.send(b"unharmed")
            assert await peer.recv() == b"unharmed"


async def test_a_new_tcp_connection_naming_a_session_cannot_take_it_over_or_inject():
    from tether._native import codec
    async with await tether.serve(None, "tcp://127.0.0.1:0") as server:
        async with tether.connect(url("tcp", server.address)) as client:
            peer = await server.accept()
            reader, writer = await asyncio.open_connection(*server.address)
            # data and an ack request naming the live session, without Resume or its token
            body = (codec.encode_data(client.session_id, 1, [b"injected"])
                    + codec.encode_frame((F.ACK_REQUESTED, client.session_id)))
            writer.write(codec.frame_packet(body))
            header = await asyncio.wait_for(reader.readexactly(4), 5)
            reply = codec.decode_packet(await reader.readexactly(int.from_bytes(header, "big")))
            assert reply[0][0] == F.CREATE_SEQUENCE_REFUSED and "token" in reply[0][2]
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            await client.send(b"genuine")
            assert await peer.recv() == b"genuine"  # not b"injected": nothing was fed
            await peer.send(b"back")
            assert await client.recv() == b"back"  # the session still answers its owner


def test_works_on_plain_asyncio_too():
    async def main():
        assert "uvloop" not in type(asyncio.get_running_loop()).__module__
        async with await tether.serve(None, "udp://127.0.0.1:0") as server:
            async with tether.connect(url("udp", server.address)) as client:
                peer = await server.accept()
                await client.send(b"plain")
                return await peer.recv()

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(main()) == b"plain"
    finally:
        loop.close()


def test_bad_urls_and_settings_are_named():
    with pytest.raises(ValueError, match="scheme"):
        tether.connect("http://127.0.0.1:1")
    with pytest.raises(ValueError, match="port"):
        tether.connect("udp://127.0.0.1")
    with pytest.raises(ValueError, match="max_transfer_window"):
        tether.connect("udp://127.0.0.1:1", max_transfer_window=0)
    with pytest.raises(TypeError, match="unknown session setting 'windw'"):
        tether.connect("udp://127.0.0.1:1", windw=3)


async def test_concurrent_receivers_each_get_a_message_and_all_wake_on_close():
    """Two tasks waiting in recv() at once: each is woken (by a message or by the end),
    none is stranded when a later waiter replaces it."""
    async with await tether.serve(None, "udp://127.0.0.1:0") as server:
        client = await tether.connect(url("udp", server.address))
        peer = await server.accept()
        first = asyncio.ensure_future(peer.recv())
        second = asyncio.ensure_future(peer.recv())
        third = asyncio.ensure_future(peer.recv())
        await asyncio.sleep(0.01)
        await client.send_many([b"a", b"b"])
        done, pending = await asyncio.wait([first, second, third], timeout=5,
                                           return_when=asyncio.FIRST_COMPLETED)
        await asyncio.sleep(0.05)
        assert sorted(t.result() for t in (first, second, third) if t.done()) == [b"a", b"b"]
        await client.close()
        results = await asyncio.wait_for(asyncio.gather(first, second, third,
                                                        return_exceptions=True), 5)
        assert sorted(r for r in results if isinstance(r, bytes)) == [b"a", b"b"]
        assert [type(r) for r in results if not isinstance(r, bytes)] == [tether.SequenceClosed]


@pytest.mark.parametrize("scheme", ["udp", "tcp"])
async def test_a_cancelled_connect_leaves_no_session_behind(scheme):
    """Cancelling connect() while the handshake is unanswered ends the half-made session
    at once (no timers keep retransmitting CreateSequence, no socket stays open)."""
    from tether.session.adapters.timers import timer_service
    loop = asyncio.get_running_loop()
    kind = socket.SOCK_DGRAM if scheme == "udp" else socket.SOCK_STREAM
    silent = socket.socket(socket.AF_INET, kind)
    silent.bind(("127.0.0.1", 0))
    if scheme == "tcp":
        silent.listen(1)  # the kernel completes the handshake; nobody ever answers
    try:
        address = silent.getsockname()
        task = asyncio.ensure_future(tether.connect(url(scheme, address), connect_timeout=30))
        await asyncio.sleep(0.2)
        assert len(timer_service(loop)) == 1  # the handshake is being retransmitted
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)
        assert len(timer_service(loop)) == 0
    finally:
        silent.close()


async def test_server_close_also_closes_tcp_connections_that_named_no_session():
    """A TCP connection that never sent a whole first packet is closed with the server,
    not left open after wait_closed()."""
    server = await tether.serve(None, "tcp://127.0.0.1:0")
    reader, writer = await asyncio.open_connection(*server.address)
    writer.write(b"\x00\x00")  # half a length prefix, then nothing
    await writer.drain()
    await asyncio.sleep(0.05)
    server.close()
    await asyncio.wait_for(server.wait_closed(), 10)
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


@pytest.mark.parametrize("scheme", ["udp", "tcp"])
async def test_link_and_start_close_are_public(scheme):
    """Adapters reach a session through public names: its current link, pump(), and a
    graceful close begun without waiting."""
    async with await tether.serve(None, f"{scheme}://127.0.0.1:0") as server:
        client = await tether.connect(url(scheme, server.address))
        peer = await server.accept()
        assert client.link is not None and peer.link is not None
        assert peer.link.get_extra_info("peername") == peer.peer_address
        await client.send(b"before close")
        client.start_close()
        assert await peer.recv() == b"before close"
        await asyncio.wait_for(client.wait_closed(), 5)
        assert client.closed and client.error is None


async def test_sessions_ended_before_accept_keep_their_pending_slot_until_accepted():
    """A peer that opens sessions and ends them at once must not grow the accept backlog
    without bound: an ended session waiting for accept() still counts against
    max_pending_channels, and accept() still hands it over with what it delivered."""
    async with await tether.serve(None, "udp://127.0.0.1:0", max_pending_channels=2) as server:
        for i in range(2):
            client = await tether.connect(url("udp", server.address))
            await client.send(b"m%d" % i)
            await client.close()
        with pytest.raises(tether.CreateSequenceRefused, match="max_pending_channels"):
            await tether.connect(url("udp", server.address))
        first = await server.accept()
        assert [m async for m in first] == [b"m0"]
        c = await tether.connect(url("udp", server.address))  # one taken: room for one more
        c.abort()


async def test_a_tcp_connection_that_names_no_session_in_time_is_closed():
    """Holding a connection open without a whole first packet costs the server a socket and
    a partial-packet buffer: after connect_timeout it is closed, and the server goes on."""
    async with await tether.serve(None, "tcp://127.0.0.1:0", connect_timeout=0.3) as server:
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(b"\x00\x01\x00\x00" + b"x" * 1000)  # a 64 KiB packet begun, never finished
        await writer.drain()
        try:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        finally:
            writer.close()
        async with tether.connect(url("tcp", server.address)) as client:
            peer = await server.accept()
            await client.send(b"still serving")
            assert await peer.recv() == b"still serving"


async def test_recv_many_rejects_a_bad_max_count_at_once():
    """recv_many(0) is a caller's mistake: named at once, not after waiting for a message."""
    async with await tether.serve(None, "udp://127.0.0.1:0") as server:
        async with tether.connect(url("udp", server.address)) as client:
            for bad in (0, -1):
                with pytest.raises(ValueError, match="max_count"):
                    await asyncio.wait_for(client.recv_many(bad), 1)


@pytest.mark.parametrize("scheme", ["udp", "tcp"])
async def test_close_gives_up_after_close_timeout_when_the_peer_stops_reading(scheme):
    """A peer that stops reading holds our messages unacknowledged (flow control): close()
    and leaving `async with` wait close_timeout, then abort and raise TimeoutError."""
    stuck = asyncio.Event()
    sessions = []

    async def handler(session):
        sessions.append(session)
        await stuck.wait()                       # never reads

    async with asyncio.timeout(30):
        async with await tether.serve(handler, f"{scheme}://127.0.0.1:0",
                                      max_transfer_window=4) as server:
            target = url(scheme, server.address)
            client = await tether.connect(target, max_transfer_window=4, close_timeout=0.3)
            await client.send_many([b"x"] * 8)   # 4 in the peer's buffer, 4 waiting
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(TimeoutError, match="close_timeout"):
                await client.close()
            assert 0.25 <= loop.time() - started < 5
            assert client.closed and isinstance(client.error, tether.SequenceTerminated)

            with pytest.raises(TimeoutError):
                async with tether.connect(target, max_transfer_window=4, close_timeout=0.3) as c:
                    await c.send_many([b"y"] * 8)
            assert c.closed
            # the server's sessions learn of the aborts (a Fault), and end
            for s in sessions:
                await s.wait_closed()
                assert isinstance(s.error, tether.SequenceTerminated)
            stuck.set()


async def test_send_waits_once_one_window_is_unacknowledged():
    """max_transfer_window messages unacknowledged, in flight or queued, hold send() back:
    one window, not a window in flight and another queued. send_nowait() has its own,
    documented bound."""
    from tether.session.adapters.session import SEND_NOWAIT_MAX_MESSAGES
    async with asyncio.timeout(30):
        async with await tether.serve(None, "udp://127.0.0.1:0", max_transfer_window=64) as server:
            relay = await UdpRelay(server.address).start()
            try:
                client = await tether.connect(url("udp", relay.address), max_transfer_window=4,
                                              max_retry_count=1000)
                peer = await server.accept()
                relay.blackhole = True                       # nothing is acknowledged now
                await client.send_many([b"a", b"b", b"c"])
                await client.send(b"d")                      # the fourth: the window is full
                assert client.stats["in_flight"] + client.stats["pending"] == 4
                blocked = asyncio.ensure_future(client.send(b"e"))
                done, _ = await asyncio.wait([blocked], timeout=0.3)
                assert not done                              # still waiting for an ack
                relay.blackhole = False                      # the acks come (on a resend)
                await blocked
                assert [await peer.recv() for _ in range(5)] == [b"a", b"b", b"c", b"d", b"e"]

                with pytest.raises(tether.SendQueueFull, match="send_nowait"):
                    client.send_nowait([b"x"] * (SEND_NOWAIT_MAX_MESSAGES + 1))
                assert client.stats["pending"] == 0 and not client.closed   # nothing queued
                client.send_nowait([b"f"])
                assert await peer.recv() == b"f"
                await client.close()
            finally:
                relay.close()


@pytest.mark.parametrize("scheme", ["udp", "tcp"])
async def test_a_receive_pumps_only_when_it_makes_an_ack_due(scheme):
    # freeing buffer space after a receive costs no pump (engine work, a timer re-arm) unless
    # the peer waits for it; a full buffer's release still reopens the window at once
    async with await tether.serve(None, f"{scheme}://127.0.0.1:0", max_transfer_window=8) as server:
        client = await tether.connect(url(scheme, server.address), max_transfer_window=64)
        peer = await server.accept()
        pumps = 0
        real_pump = peer.pump

        def counting_pump():
            nonlocal pumps
            pumps += 1
            real_pump()
        peer.pump = counting_pump
        await client.send_many([b"a", b"b"])
        await client.flush()
        assert await peer.recv_many() == [b"a", b"b"]
        before = pumps
        await asyncio.sleep(0.01)
        assert pumps == before
        # the buffer fills: the reader's receive must reopen the window
        await client.send_many([b"%d" % i for i in range(40)])
        got = []
        while len(got) < 40:
            got.extend(await asyncio.wait_for(peer.recv_many(), 5))
        assert got == [b"%d" % i for i in range(40)]
        await client.close()

