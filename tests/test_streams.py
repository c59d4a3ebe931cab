"""The asyncio drop-ins over loopback sessions: the stdlib's StreamReader/StreamWriter,
Protocol and BufferedProtocol callbacks in asyncio's order, and the Transport surface."""
from __future__ import annotations

import asyncio
import os

import pytest

import tether
from tether.streams import SessionTransport, StreamServer

pytestmark = pytest.mark.timeout(60)

SCHEMES = ["udp", "tcp"]


async def within(aw, seconds: float = 10.0):
    return await asyncio.wait_for(aw, seconds)


class Recorder(asyncio.Protocol):
    """Records the callbacks it gets (a run of data_received counts once) and the bytes."""

    def __init__(self, keep_open_on_eof: bool = False) -> None:
        self.keep_open_on_eof = keep_open_on_eof
        self.events: list[str] = []
        self.data = bytearray()
        self.transport: SessionTransport | None = None
        self.exc: BaseException | None = None
        self.eof = asyncio.get_running_loop().create_future()
        self.lost = asyncio.get_running_loop().create_future()

    def _note(self, name: str) -> None:
        if not self.events or self.events[-1] != name or name != "data_received":
            self.events.append(name)

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._note("connection_made")

    def data_received(self, data: bytes) -> None:
        assert type(data) is bytes
        self._note("data_received")
        self.data += data

    def eof_received(self):
        self._note("eof_received")
        self.eof.set_result(None)
        return self.keep_open_on_eof

    def connection_lost(self, exc) -> None:
        self._note("connection_lost")
        self.exc = exc
        self.lost.set_result(exc)


class BufferedRecorder(asyncio.BufferedProtocol):
    """A BufferedProtocol with a buffer smaller than one message."""

    def __init__(self, buffer_size: int) -> None:
        self.buffer = bytearray(buffer_size)
        self.data = bytearray()
        self.get_buffer_calls = 0
        self.events: list[str] = []
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.events.append("connection_made")

    def get_buffer(self, sizehint: int):
        assert sizehint > 0
        self.get_buffer_calls += 1
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes: int) -> None:
        if self.events[-1] != "buffer_updated":
            self.events.append("buffer_updated")
        self.data += self.buffer[:nbytes]

    def eof_received(self):
        self.events.append("eof_received")

    def connection_lost(self, exc) -> None:
        self.events.append("connection_lost")
        self.lost.set_result(exc)


class Collect:
    """A protocol factory that keeps every protocol it made."""

    def __init__(self, make) -> None:
        self.make = make
        self.made: list = []

    def __call__(self):
        protocol = self.make()
        self.made.append(protocol)
        return protocol

    async def first(self):
        for _ in range(1000):
            if self.made:
                return self.made[0]
            await asyncio.sleep(0.01)
        raise AssertionError("no connection reached the server")


# ---- asyncio streams ----

async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An echo server written exactly as for asyncio.start_server."""
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_echo_server_with_stdlib_streams(scheme):
    async with await tether.start_server(echo, f"{scheme}://127.0.0.1:0") as server:
        assert isinstance(server, StreamServer)

        async def client(size: int) -> None:
            reader, writer = await tether.open_connection(server.url)
            assert isinstance(reader, asyncio.StreamReader) and isinstance(writer, asyncio.StreamWriter)
            payload = os.urandom(size)
            for i in range(0, size, 7919):  # odd-sized writes: message boundaries must not show
                writer.write(payload[i:i + 7919])
                await writer.drain()
            writer.write_eof()
            assert await reader.read() == payload
            assert reader.at_eof()
            writer.close()
            await writer.wait_closed()

        await within(asyncio.gather(client(1), client(100_000), client(700_000)), 30)


def test_echo_on_the_stdlib_event_loop_too():
    async def main():
        async with await tether.start_server(echo, "udp://127.0.0.1:0") as server:
            reader, writer = await tether.open_connection(server.url)
            writer.write(b"plain asyncio")
            writer.write_eof()
            assert await within(reader.read()) == b"plain asyncio"
            writer.close()
            await within(writer.wait_closed())

    loop = asyncio.SelectorEventLoop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_line_protocol_readline_readuntil_readexactly(scheme):
    async def handler(reader, writer):
        while True:
            line = await reader.readline()
            if not line:
                break
            if line == b"HEADERS\n":
                block = await reader.readuntil(b"\r\n\r\n")
                writer.write(b"%d header lines\n" % block.count(b"\r\n"))
            elif line.startswith(b"BLOB "):
                blob = await reader.readexactly(int(line[5:]))
                writer.write(b"%d %s\n" % (len(blob), blob[-3:]))
            else:
                writer.write(line.upper())
            await writer.drain()
        writer.write(b"bye\n")
        writer.close()

    async with await tether.start_server(handler, f"{scheme}://127.0.0.1:0") as server:
        reader, writer = await tether.open_connection(server.url)
        writer.write(b"hel")
        await asyncio.sleep(0.01)  # a line split across writes and messages
        writer.write(b"lo\nworld\n")
        assert await within(reader.readline()) == b"HELLO\n"
        assert await within(reader.readline()) == b"WORLD\n"
        writer.writelines([b"HEADERS\n", b"a: 1\r\n", b"b: 2\r\n", b"\r\n"])
        assert await within(reader.readuntil(b"\n")) == b"3 header lines\n"
        blob = os.urandom(150_000) + b"end"
        writer.write(b"BLOB %d\n" % len(blob) + blob)
        assert await within(reader.readline()) == b"150003 end\n"
        writer.write_eof()
        assert await within(reader.readline()) == b"bye\n"
        assert await within(reader.read()) == b""
        writer.close()
        await within(writer.wait_closed())


async def test_stream_limit_and_extra_info_pass_through_the_stdlib_writer():
    async def long_line(reader, writer):
        writer.write(b"x" * 5000 + b"\n")
        await writer.drain()
        await reader.read()
        writer.close()

    async with await tether.start_server(long_line, "udp://127.0.0.1:0") as server:
        reader, writer = await tether.open_connection(server.url, limit=1000)
        assert writer.get_extra_info("peername")[:2] == server.address
        assert isinstance(writer.get_extra_info("session"), tether.Session)
        with pytest.raises(ValueError, match="limit"):
            await within(reader.readline())
        writer.close()
        await within(writer.wait_closed())


async def test_peer_fault_reaches_the_stream_reader():
    async def handler(reader, writer):
        await reader.readexactly(3)
        writer.transport.abort()

    async with await tether.start_server(handler, "udp://127.0.0.1:0") as server:
        reader, writer = await tether.open_connection(server.url)
        writer.write(b"abc")
        with pytest.raises(tether.SequenceTerminated):
            await within(reader.read())
        with pytest.raises(tether.SequenceTerminated):
            await within(writer.wait_closed())


# ---- byte stream over messages ----

@pytest.mark.parametrize("client_max, server_max", [(1000, 65536), (65536, 700)])
async def test_writes_are_cut_into_messages_no_larger_than_max_message_size(client_max, server_max):
    got: list[bytes] = []
    ended = asyncio.get_running_loop().create_future()

    async def raw(session):  # the peer reads the session's messages directly
        try:
            async for message in session:
                got.append(message)
            ended.set_result(None)
        except BaseException as exc:
            ended.set_exception(exc)
            raise

    async with await tether.serve(raw, "udp://127.0.0.1:0", max_message_size=server_max) as server:
        transport, _ = await tether.create_connection(
            Recorder, server.url_bound, max_message_size=client_max)
        payload = os.urandom(25_000)
        transport.write(payload[:10])
        transport.write(payload[10:20_000])
        transport.writelines([payload[20_000:24_000], bytearray(payload[24_000:])])
        transport.write_eof()
        await within(ended)  # the iteration ended cleanly: EOF came after the last byte
        assert b"".join(got) == payload
        assert max(map(len, got)) == min(client_max, server_max)
        transport.close()


async def test_half_close_keeps_the_other_direction_open():
    server_side = Collect(lambda: Recorder(keep_open_on_eof=True))
    async with await tether.create_server(server_side, "udp://127.0.0.1:0") as server:
        transport, client = await tether.create_connection(Recorder, server.url)
        transport.write(b"question")
        transport.write_eof()
        assert transport.can_write_eof()
        with pytest.raises(RuntimeError, match="write_eof"):
            transport.write(b"more")
        peer = await server_side.first()
        await within(peer.eof)
        assert bytes(peer.data) == b"question"
        assert not peer.transport.is_closing()  # eof_received returned True: still open
        peer.transport.write(b"late answer")
        peer.transport.close()
        assert await within(client.lost) is None
        assert await within(peer.lost) is None
        assert bytes(client.data) == b"late answer"
        assert client.events == ["connection_made", "data_received", "eof_received", "connection_lost"]
        assert peer.events == ["connection_made", "data_received", "eof_received", "connection_lost"]


# ---- Protocol callbacks ----

@pytest.mark.parametrize("scheme", SCHEMES)
async def test_callbacks_in_asyncio_order_and_falsy_eof_received_closes(scheme):
    server_side = Collect(Recorder)  # eof_received returns False: the transport closes itself
    async with await tether.create_server(server_side, f"{scheme}://127.0.0.1:0") as server:
        transport, client = await tether.create_connection(Recorder, server.url)
        assert client.events == ["connection_made"]  # before create_connection returned
        assert client.transport is transport
        payload = os.urandom(300_000)
        transport.write(payload)
        transport.write_eof()
        peer = await server_side.first()
        assert await within(peer.lost) is None
        assert peer.events == ["connection_made", "data_received", "eof_received", "connection_lost"]
        assert bytes(peer.data) == payload
        assert await within(client.lost) is None
        assert client.events == ["connection_made", "eof_received", "connection_lost"]
        assert transport.is_closing()


async def test_no_data_received_after_close():
    class Talker(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.write(os.urandom(2_000_000))

    class ClosesAtOnce(Recorder):
        calls = 0

        def data_received(self, data):
            super().data_received(data)
            self.calls += 1
            self.transport.close()

    async with await tether.create_server(Talker, "udp://127.0.0.1:0") as server:
        transport, client = await tether.create_connection(ClosesAtOnce, server.url)
        await within(client.lost)
        assert client.calls == 1
        assert client.events == ["connection_made", "data_received", "connection_lost"]


async def test_buffered_protocol_gets_every_byte_in_order():
    server_side = Collect(lambda: BufferedRecorder(1000))
    async with await tether.create_server(server_side, "udp://127.0.0.1:0") as server:
        transport, client = await tether.create_connection(lambda: BufferedRecorder(333), server.url)
        payload = os.urandom(200_000)
        transport.write(payload)
        transport.write_eof()
        peer = await server_side.first()
        assert await within(peer.lost) is None
        assert bytes(peer.data) == payload
        assert peer.get_buffer_calls >= 200  # a 1000-byte buffer takes a message in pieces
        assert peer.events == ["connection_made", "buffer_updated", "eof_received", "connection_lost"]
        await within(client.lost)


async def test_failing_protocol_callback_is_reported_and_ends_the_connection():
    loop = asyncio.get_running_loop()
    reported: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))

    class Fails(Recorder):
        def data_received(self, data):
            super().data_received(data)
            raise ValueError("bad input")

    server_side = Collect(Fails)
    try:
        async with await tether.create_server(server_side, "udp://127.0.0.1:0") as server:
            transport, client = await tether.create_connection(Recorder, server.url)
            transport.write(b"boom")
            peer = await server_side.first()
            exc = await within(peer.lost)
            assert isinstance(exc, ValueError)
            assert peer.events == ["connection_made", "data_received", "connection_lost"]
            assert reported and reported[0]["exception"] is exc
            assert "data_received" in reported[0]["message"]
            assert isinstance(await within(client.lost), tether.SequenceTerminated)
    finally:
        loop.set_exception_handler(None)


async def test_get_buffer_returning_an_empty_buffer_is_a_fatal_error():
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: None)

    class Empty(BufferedRecorder):
        def get_buffer(self, sizehint):
            return bytearray()

    server_side = Collect(lambda: Empty(0))
    try:
        async with await tether.create_server(server_side, "udp://127.0.0.1:0") as server:
            transport, _ = await tether.create_connection(Recorder, server.url)
            transport.write(b"x")
            peer = await server_side.first()
            exc = await within(peer.lost)
            assert isinstance(exc, RuntimeError) and "empty buffer" in str(exc)
    finally:
        loop.set_exception_handler(None)


async def test_abort_drops_and_reports_none_locally_a_fault_remotely():
    server_side = Collect(Recorder)
    async with await tether.create_server(server_side, "udp://127.0.0.1:0") as server:
        transport, client = await tether.create_connection(Recorder, server.url)
        transport.write(b"hi")
        peer = await server_side.first()
        transport.abort()
        assert transport.is_closing() and not transport.is_reading()
        assert client.events == ["connection_made"]  # connection_lost comes later, as asyncio's
        assert await within(client.lost) is None
        assert isinstance(await within(peer.lost), tether.SequenceTerminated)
        transport.write(b"after abort")  # dropped, as asyncio drops writes after the loss
        assert transport.get_write_buffer_size() == 0


# ---- the Transport surface ----

async def test_transport_extra_info_and_states():
    server_side = Collect(Recorder)
    async with await tether.create_server(server_side, "udp://127.0.0.1:0") as server:
        transport, client = await tether.create_connection(Recorder, server.url)
        assert isinstance(transport, asyncio.Transport)
        session = transport.get_extra_info("session")
        assert isinstance(session, tether.Session)
        assert transport.get_extra_info("peername")[:2] == server.address
        assert transport.get_extra_info("sockname")[0] == "127.0.0.1"
        assert transport.get_extra_info("no such thing", "dflt") == "dflt"
        transport.write(b"ping")
        peer = await server_side.first()
        while not peer.data:
            await asyncio.sleep(0.01)
        assert peer.transport.get_extra_info("peername") == transport.get_extra_info("sockname")
        assert transport.get_extra_info("stats")["sent"] >= 1
        assert transport.get_protocol() is client
        assert transport.is_reading() and not transport.is_closing()
        transport.pause_reading()
        transport.pause_reading()  # idempotent, as asyncio's
        assert not transport.is_reading()
        transport.resume_reading()
        assert transport.is_reading()
        with pytest.raises(TypeError, match="bytes-like"):
            transport.write("text")
        transport.close()
        assert transport.is_closing() and not transport.is_reading()
        assert await within(client.lost) is None
        assert await within(peer.lost) is None


async def test_write_buffer_limits_follow_asyncio_and_uvloop():
    async with await tether.create_server(Recorder, "udp://127.0.0.1:0") as server:
        transport, _ = await tether.create_connection(Recorder, server.url)
        assert transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        transport.set_write_buffer_limits(high=1000)
        assert transport.get_write_buffer_limits() == (250, 1000)
        transport.set_write_buffer_limits(low=100)
        assert transport.get_write_buffer_limits() == (100, 400)
        transport.set_write_buffer_limits(high=10, low=10)
        assert transport.get_write_buffer_limits() == (10, 10)
        transport.set_write_buffer_limits(high=0)
        assert transport.get_write_buffer_limits() == (0, 0)
        with pytest.raises(ValueError, match="must be >= low"):
            transport.set_write_buffer_limits(high=10, low=11)
        with pytest.raises(ValueError, match="must be >= 0"):
            transport.set_write_buffer_limits(high=10, low=-1)
        assert transport.get_write_buffer_limits() == (0, 0)  # a rejected call changes nothing
        transport.close()


async def test_write_buffer_size_counts_bytes_until_the_peer_acknowledges_them():
    async with await tether.create_server(Recorder, "udp://127.0.0.1:0") as server:
        transport, _ = await tether.create_connection(Recorder, server.url)
        assert transport.get_write_buffer_size() == 0
        transport.write(b"a" * 1000)
        transport.write(b"b" * 234)
        assert transport.get_write_buffer_size() == 1234  # not yet sent
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert transport.get_write_buffer_size() == 1234  # sent, not yet acknowledged
        session = transport.get_extra_info("session")
        await within(session.flush())
        assert transport.get_write_buffer_size() == 0
        transport.close()


async def test_create_connection_errors():
    with pytest.raises(TypeError, match="protocol_factory"):
        await tether.create_connection(None, "udp://127.0.0.1:9")
    with pytest.raises(ValueError):
        await tether.create_connection(Recorder, "udp://127.0.0.1:9", max_transfer_window=0)
    with pytest.raises(TypeError, match="unknown session setting"):
        await tether.open_connection("udp://127.0.0.1:9", bogus=1)
    with pytest.raises(TypeError, match="client_connected_cb"):
        await tether.start_server("not callable", "udp://127.0.0.1:0")


# ---- the server object ----

@pytest.mark.parametrize("scheme", SCHEMES)
async def test_server_is_asyncio_server_like(scheme):
    server = await tether.create_server(Recorder, f"{scheme}://127.0.0.1:0")
    assert server.is_serving()
    assert server.get_loop() is asyncio.get_running_loop()
    host, port = server.address
    assert host == "127.0.0.1" and port > 0
    assert server.sockets[0].getsockname()[:2] == (host, port)
    assert server.url == f"{scheme}://127.0.0.1:{port}"
    await server.start_serving()
    forever = asyncio.ensure_future(server.serve_forever())
    await asyncio.sleep(0.05)
    with pytest.raises(RuntimeError, match="already being awaited"):
        await server.serve_forever()
    transport, client = await tether.create_connection(Recorder, server.url)
    forever.cancel()  # cancelling serve_forever closes the server (as asyncio's)
    with pytest.raises(asyncio.CancelledError):
        await within(forever)
    assert not server.is_serving() and server.sockets == ()
    await within(server.wait_closed())
    assert await within(client.lost) is None  # its connection was closed gracefully
    with pytest.raises(RuntimeError, match="is closed"):
        await server.serve_forever()
