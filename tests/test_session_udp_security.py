"""What a UDP server gives someone who forges source addresses, or who learned a session id,
measured over real loopback sockets from the outside: a bare socket that speaks frames by
hand (RawPeer) and never answers what it is not supposed to.

On UDP the source of a datagram is the socket that sent it, so "forged" here means a socket
that never answers the Retry or the PathChallenge it is sent: to the server that is exactly
an address it cannot validate. (docs/wire-protocol.md, "Address validation"; docs/sessions.md,
"Security".)
"""
from __future__ import annotations

import asyncio
import gc
import os
import tracemalloc

import pytest

import tether
from tether._native import codec
from tether.errors import UnknownSequence
from tether.session.sansio.frames import FrameType as F

pytestmark = pytest.mark.timeout(120)


class RawPeer(asyncio.DatagramProtocol):
    """A bare UDP socket on loopback: sends frames by hand and counts bytes both ways.
    `keep`: queue what arrives (else only count it, for floods)."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.bytes_in = self.bytes_out = self.datagrams_in = 0
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls, keep: bool = True) -> "RawPeer":
        loop = asyncio.get_running_loop()
        _, peer = await loop.create_datagram_endpoint(lambda: cls(keep), local_addr=("127.0.0.1", 0))
        return peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr) -> None:
        self.bytes_in += len(data)
        self.datagrams_in += 1
        if self.keep:
            self.received.put_nowait(data)

    def send(self, body: bytes, address: tuple) -> None:
        self.bytes_out += len(body)
        self.transport.sendto(body, address)

    async def frames(self, timeout: float = 5.0) -> list[tuple]:
        """The frames of the next datagram that arrives."""
        return codec.decode_packet(await asyncio.wait_for(self.received.get(), timeout))

    async def quiet(self, seconds: float = 0.2) -> list[list[tuple]]:
        """Every datagram that arrives within `seconds`, decoded."""
        await asyncio.sleep(seconds)
        out = []
        while not self.received.empty():
            out.append(codec.decode_packet(self.received.get_nowait()))
        return out

    def close(self) -> None:
        self.transport.close()


def create(session_id: int, token: bytes = bytes(16), address_token: bytes | None = None) -> bytes:
    fields = (F.CREATE_SEQUENCE, session_id, token, 64, 65536, True, 200_000)
    return codec.encode_frame(fields if address_token is None else fields + (address_token,))


def new_id() -> int:
    return int.from_bytes(os.urandom(8), "big") >> 1 | 1


async def settle(condition, timeout: float = 5.0) -> None:
    """Wait until condition() holds (the server drains its socket between our sends)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def url_of(server) -> str:
    host, port = server.address
    return f"udp://{host}:{port}"


async def test_ten_thousand_unvalidated_create_sequences_hold_nothing_and_run_no_handler():
    """The handler speaks first, so each session it ran for would send the claimed address
    20 KB. Sources that never answer the Retry get no session, no handler call, no state:
    the server's memory does not grow with them, and it sends each at most 3x what it got."""
    calls = []

    async def speaks_first(session):
        calls.append(session.session_id)
        await session.send(b"x" * 20_000)

    async with await tether.serve(speaks_first, "udp://127.0.0.1:0") as server:
        peers = [await RawPeer.open(keep=False) for _ in range(4)]
        gc.collect()
        tracemalloc.start()
        try:
            before, _ = tracemalloc.get_traced_memory()
            for i in range(10_000):
                peers[i % 4].send(create(new_id(), os.urandom(16)), server.address)
                if i % 200 == 199:     # let the server drain its socket: every one must arrive
                    await settle(lambda: sum(p.datagrams_in for p in peers) >= i - 200)
            await settle(lambda: sum(p.datagrams_in for p in peers) >= 9_900)
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert not server.sessions and not server.demux.sessions and server.demux.unaccepted == 0
        assert calls == []
        assert server.demux.retries_sent >= 9_900
        assert grown < 256 * 1024, f"the server kept {grown} bytes for sources that never answered"
        sent, received = sum(p.bytes_out for p in peers), sum(p.bytes_in for p in peers)
        assert received <= 3 * sent, (received, sent)
        # and a real client still gets in, and its handler runs
        async with tether.connect(url_of(server)) as client:
            assert len(await client.recv()) == 20_000
        assert len(calls) == 1
        for peer in peers:
            peer.close()


async def test_bytes_sent_to_an_address_that_never_validates_stay_within_three_times():
    """Every kind of packet a stranger can send, from one socket that never validates: the
    server answers some (Retry, refusals, Faults, challenges) but sends it at most three
    times what it sent."""
    async with await tether.serve(None, "udp://127.0.0.1:0", max_pending_channels=1) as server:
        async with tether.connect(url_of(server)) as client:
            await server.accept()
            live = client.session_id
            raw = await RawPeer.open()
            unknown = new_id()
            packets = [
                create(new_id()), create(new_id(), address_token=os.urandom(24)),
                create(1), create(2**63 + 1, address_token=b"x"),
                codec.encode_frame((F.ACK_REQUESTED, unknown)), codec.encode_frame((F.ACK_REQUESTED, 7)),
                codec.encode_data(unknown, 1, [b"d" * 100]), codec.encode_frame((F.CLOSE_SEQUENCE, unknown, 9)),
                codec.encode_frame((F.TERMINATE_SEQUENCE, unknown, 0)),
                codec.encode_frame((F.FAULT, unknown, "protocol-error", "")),
                codec.encode_frame((F.RESUME, unknown, os.urandom(16))),
                codec.encode_frame((F.ACK_REQUESTED, live)), codec.encode_data(live, 1, [b"injected"]),
                codec.encode_frame((F.FAULT, live, "protocol-error", "")),
                codec.encode_frame((F.RESUME, live, os.urandom(16))), os.urandom(40), b"\x91",
            ]
            for _ in range(20):
                for body in packets:
                    raw.send(body, server.address)
                await asyncio.sleep(0.02)
            answers = [f[0] for frames in await raw.quiet(0.3) for f in frames]
            assert raw.bytes_in <= 3 * raw.bytes_out, (raw.bytes_in, raw.bytes_out)
            assert {F.RETRY, F.FAULT, F.PATH_CHALLENGE, F.TERMINATE_SEQUENCE_RESPONSE} <= set(answers)
            assert server.demux.unaccepted == 0 and list(server.demux.sessions) == [live]
            raw.close()


async def test_a_move_that_does_not_answer_the_challenge_does_not_move_the_session():
    async with await tether.serve(None, "udp://127.0.0.1:0") as server:
        async with tether.connect(url_of(server)) as client:
            peer = await server.accept()
            await client.send(b"hello")
            assert await peer.recv() == b"hello"
            home = peer.peer_address
            raw = await RawPeer.open()
            raw.send(codec.encode_data(client.session_id, 2, [b"injected"]) +
                     codec.encode_frame((F.ACK_REQUESTED, client.session_id)), server.address)
            (challenge,) = await raw.frames()                  # the server asks; we never answer
            assert challenge[:2] == (F.PATH_CHALLENGE, client.session_id)
            await peer.send(b"still to you")
            assert await asyncio.wait_for(client.recv(), 5) == b"still to you"
            await client.send(b"genuine")
            assert await asyncio.wait_for(peer.recv(), 5) == b"genuine"     # not b"injected"
            assert peer.peer_address == home
            assert [f[0] for frames in await raw.quiet() for f in frames] in ([], [F.PATH_CHALLENGE])
            assert raw.bytes_in <= 3 * raw.bytes_out
            raw.close()


@pytest.mark.parametrize("kind", [F.FAULT, F.TERMINATE_SEQUENCE, F.CLOSE_SEQUENCE])
async def test_an_off_path_fault_terminate_or_close_does_not_end_the_session(kind):
    async with await tether.serve(None, "udp://127.0.0.1:0") as server:
        async with tether.connect(url_of(server)) as client:
            peer = await server.accept()
            sid = client.session_id
            frame = {F.FAULT: (F.FAULT, sid, "sequence-terminated", "forged"),
                     F.TERMINATE_SEQUENCE: (F.TERMINATE_SEQUENCE, sid, 0),
                     F.CLOSE_SEQUENCE: (F.CLOSE_SEQUENCE, sid, 0)}[kind]
            raw = await RawPeer.open()
            for _ in range(5):
                raw.send(codec.encode_frame(frame), server.address)
            await raw.quiet()
            assert not peer.closed and not peer.at_eof
            await client.send_many([b"a", b"b"])
            assert [await peer.recv(), await peer.recv()] == [b"a", b"b"]
            await peer.send(b"back")
            assert await client.recv() == b"back"
            assert server.demux.off_path_packets >= 5
            raw.close()


async def test_a_replayed_create_sequence_for_an_ended_session_is_refused():
    """A hand-made client: CreateSequence, the Retry, CreateSequence with the token, the
    response; it ends the session with a Fault; then the very datagram that created the
    session is sent again, from the same socket, while its token is still fresh."""
    calls = []

    async def handler(session):
        calls.append(session.session_id)
        try:
            await session.recv()
        except tether.TetherError:
            pass

    async with await tether.serve(handler, "udp://127.0.0.1:0") as server:
        raw = await RawPeer.open()
        sid, token = new_id(), os.urandom(16)
        raw.send(create(sid, token), server.address)
        (retry,) = await raw.frames()
        assert retry[0] == F.RETRY and not server.sessions
        opening = create(sid, token, retry[2])
        raw.send(opening, server.address)
        assert (await raw.frames())[0][0] == F.CREATE_SEQUENCE_RESPONSE
        await settle(lambda: calls == [sid])
        raw.send(codec.encode_frame((F.FAULT, sid, "sequence-terminated", "bye")), server.address)
        await settle(lambda: not server.sessions)
        await raw.quiet()
        raw.send(opening, server.address)                       # the replay
        (answer,) = await raw.frames()
        assert answer[:3] == (F.FAULT, sid, UnknownSequence.code)
        await raw.quiet()
        assert not server.sessions and calls == [sid]
        raw.close()


async def test_unvalidated_addresses_cannot_fill_the_accept_backlog():
    async with await tether.serve(None, "udp://127.0.0.1:0", max_pending_channels=2) as server:
        raw = await RawPeer.open(keep=False)
        for i in range(1000):
            raw.send(create(new_id()), server.address)
            if i % 100 == 99:
                await asyncio.sleep(0.01)
        await settle(lambda: raw.datagrams_in >= 990)
        assert server.demux.unaccepted == 0
        a = await tether.connect(url_of(server))
        b = await tether.connect(url_of(server))
        with pytest.raises(tether.CreateSequenceRefused, match="max_pending_channels"):
            await tether.connect(url_of(server))              # the limit itself still holds
        assert {(await server.accept()).session_id, (await server.accept()).session_id} == \
            {a.session_id, b.session_id}
        for s in (a, b):
            s.abort()
        raw.close()
