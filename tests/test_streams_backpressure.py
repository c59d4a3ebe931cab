"""Backpressure end to end: a reader that stops reading stops the writer at the high mark
(drain() blocks, pause_writing is called once), and it resumes when reading resumes."""
from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

import tether

pytestmark = pytest.mark.timeout(60)

BLOCK = 16 * 1024


async def within(aw, seconds: float = 15.0):
    return await asyncio.wait_for(aw, seconds)


class CountingStreamProtocol(asyncio.StreamReaderProtocol):
    """The stdlib's StreamReaderProtocol, recording the flow-control calls it gets."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        super().__init__(reader)
        self.flow: list[str] = []

    def pause_writing(self) -> None:
        self.flow.append("pause")
        super().pause_writing()

    def resume_writing(self) -> None:
        self.flow.append("resume")
        super().resume_writing()


async def counted_open_connection(url: str, **settings):
    """open_connection, built the way asyncio builds it, with a counting protocol."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(loop=loop)
    protocol = CountingStreamProtocol(reader)
    transport, _ = await tether.create_connection(lambda: protocol, url, **settings)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop), protocol


def alternates(flow: list[str]) -> bool:
    """pause, resume, pause, ...: each crossing reported exactly once."""
    return all(call == ("pause" if i % 2 == 0 else "resume") for i, call in enumerate(flow))


@pytest.mark.parametrize("scheme", ["udp", "tcp"])
async def test_stopped_reader_blocks_drain_and_reading_again_releases_it(scheme):
    may_read = asyncio.Event()
    received = hashlib.sha256()
    finished = asyncio.get_running_loop().create_future()

    async def slow_reader(reader, writer):
        await may_read.wait()
        total = 0
        while data := await reader.read(BLOCK):
            received.update(data)
            total += len(data)
        writer.close()
        finished.set_result(total)

    async with await tether.start_server(slow_reader, f"{scheme}://127.0.0.1:0") as server:
        reader, writer, protocol = await counted_open_connection(server.url)
        transport = writer.transport
        low, high = transport.get_write_buffer_limits()
        sent = hashlib.sha256()
        written = 0
        block = os.urandom(BLOCK)

        # Write until drain() stays blocked: the peer's app reads nothing, so the peer's
        # StreamReader pauses its transport, the session stops releasing buffer space, and
        # flow control holds our bytes unacknowledged.
        drain = None
        while written < 8 * 1024 * 1024:
            writer.write(block)
            sent.update(block)
            written += len(block)
            drain = asyncio.ensure_future(writer.drain())
            await asyncio.sleep(0.005)
            if not drain.done():
                await asyncio.sleep(0.3)
                if not drain.done():
                    break
            await drain
        else:
            pytest.fail(f"drain() never blocked: {written} bytes written to a peer not reading")

        assert protocol.flow == ["pause"]  # once, at the high mark
        assert transport.get_write_buffer_size() > high
        # bounded: the peer's session window and stream buffer, plus our high mark
        assert written < 4 * 1024 * 1024
        peer_stats = next(iter(server._transports)).get_extra_info("stats")
        assert peer_stats["buffer_remaining"] == 0  # its receive buffer is full, unreleased

        await asyncio.sleep(0.3)
        assert not drain.done() and protocol.flow == ["pause"]

        may_read.set()
        await within(drain)
        assert protocol.flow == ["pause", "resume"]
        assert transport.get_write_buffer_size() <= low

        # keep writing through more crossings; the calls stay paired
        for _ in range(200):
            writer.write(block)
            sent.update(block)
            written += len(block)
            await within(writer.drain())
        writer.write_eof()
        assert await within(finished) == written
        assert received.hexdigest() == sent.hexdigest()
        assert alternates(protocol.flow) and protocol.flow[-1] == "resume"
        writer.close()
        await within(writer.wait_closed())


async def test_pause_reading_holds_the_sender_back_by_flow_control():
    """Protocol level: the receiver's transport.pause_reading() alone stops the sender."""

    class Receiver(asyncio.Protocol):
        def __init__(self) -> None:
            self.data = bytearray()
            self.eof = asyncio.get_running_loop().create_future()

        def connection_made(self, transport) -> None:
            self.transport = transport
            transport.pause_reading()

        def data_received(self, data) -> None:
            self.data += data

        def eof_received(self):
            self.eof.set_result(None)

    class Sender(asyncio.Protocol):
        def __init__(self) -> None:
            self.flow: list[str] = []
            self.resumed = asyncio.Event()

        def pause_writing(self) -> None:
            self.flow.append("pause")

        def resume_writing(self) -> None:
            self.flow.append("resume")
            self.resumed.set()

    receivers: list[Receiver] = []

    def make_receiver() -> Receiver:
        receivers.append(Receiver())
        return receivers[-1]

    window = 4  # messages of up to ~64 KB: the receiver holds at most ~256 KB of 1 MB
    async with await tether.create_server(make_receiver, "udp://127.0.0.1:0",
                                          max_transfer_window=window) as server:
        transport, sender = await tether.create_connection(Sender, server.url,
                                                            max_transfer_window=window)
        transport.set_write_buffer_limits(high=200_000, low=50_000)
        payload = os.urandom(1_000_000)
        transport.write(payload)
        assert sender.flow == ["pause"]  # over the high mark at once
        await asyncio.sleep(0.5)
        receiver = receivers[0]
        assert receiver.data == b""  # paused from the start: nothing delivered
        stats = receiver.transport.get_extra_info("stats")
        assert stats["buffer_remaining"] == 0
        session = transport.get_extra_info("session")
        assert session.stats["acked"] <= window  # the sender stopped at the receiver's window
        assert transport.get_write_buffer_size() > 200_000 and sender.flow == ["pause"]

        receiver.transport.resume_reading()
        await within(sender.resumed.wait())
        transport.write_eof()
        await within(receiver.eof)
        assert bytes(receiver.data) == payload
        assert sender.flow == ["pause", "resume"]
        transport.close()


async def test_lowering_the_high_mark_pauses_at_once_and_acks_resume():
    class Sender(asyncio.Protocol):
        def __init__(self) -> None:
            self.flow: list[str] = []
            self.resumed = asyncio.Event()

        def pause_writing(self) -> None:
            self.flow.append("pause")

        def resume_writing(self) -> None:
            self.flow.append("resume")
            self.resumed.set()

    async with await tether.create_server(asyncio.Protocol, "udp://127.0.0.1:0") as server:
        transport, sender = await tether.create_connection(Sender, server.url)
        transport.write(b"x" * 5000)
        assert sender.flow == []  # under the default 64 KiB
        transport.set_write_buffer_limits(high=4000)
        assert sender.flow == ["pause"]
        transport.set_write_buffer_limits(high=3000)
        assert sender.flow == ["pause"]  # already paused: not called again
        await within(sender.resumed.wait())  # the peer acknowledged: size 0 <= low
        assert sender.flow == ["pause", "resume"]
        assert transport.get_write_buffer_size() == 0
        transport.close()
