"""The stream drop-ins through a lossy, reordering, duplicating UDP relay: a 50 MB transfer
with an exact SHA-256 match, and an unmodified third-party protocol (h11's HTTP/1.1 client
and server state machines) doing request/response round trips."""
from __future__ import annotations

import asyncio
import hashlib
import os

import h11
import pytest

import tether
from tether.bench.relay import TcpRelay, UdpRelay

pytestmark = pytest.mark.timeout(60)


async def within(aw, seconds: float):
    return await asyncio.wait_for(aw, seconds)


def via(relay: UdpRelay) -> str:
    return f"udp://127.0.0.1:{relay.address[1]}"


@pytest.mark.slow
async def test_50_megabytes_through_a_lossy_relay_arrive_exactly():
    size = 50 * 1024 * 1024
    # a big window and write buffer keep a lossy pipe full; short ack delay speeds recovery
    settings = dict(max_transfer_window=512, ack_interval=0.01)
    received = hashlib.sha256()
    counted = asyncio.get_running_loop().create_future()

    async def sink(reader, writer):
        total = 0
        while data := await reader.read(1024 * 1024):
            received.update(data)
            total += len(data)
        writer.write(received.hexdigest().encode())  # after EOF: the other direction still works
        writer.close()
        await writer.wait_closed()
        counted.set_result(total)

    async with await tether.start_server(sink, "udp://127.0.0.1:0", **settings) as server:
        relay = await UdpRelay(server.address, loss=0.02, reorder=0.05, duplicate=0.005,
                               seed=6).start()
        try:
            reader, writer = await tether.open_connection(via(relay), **settings)
            writer.transport.set_write_buffer_limits(high=8 * 1024 * 1024)
            sent = hashlib.sha256()
            noise = os.urandom(1024 * 1024)

            async def send_all():
                for i in range(size // len(noise)):
                    block = noise[i:] + noise[:i]  # every block different
                    sent.update(block)
                    writer.write(block)
                    await writer.drain()
                writer.write_eof()

            await within(send_all(), 45)
            answer = await within(reader.read(), 45)
            assert await within(counted, 5) == size
            assert answer.decode() == sent.hexdigest() == received.hexdigest()
            assert relay.dropped > 0 and writer.transport.get_extra_info("stats")["resent"] > 0
            writer.close()
            await within(writer.wait_closed(), 10)
        finally:
            relay.close()


@pytest.mark.fault
async def test_stream_survives_tcp_connection_cuts_unnoticed():
    """Over tcp:// the session reconnects and resumes after each cut; the stream sees
    nothing but delay."""
    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async with await tether.start_server(echo, "tcp://127.0.0.1:0", max_transfer_window=64) as server:
        relay = await TcpRelay(server.address, cut_every=500_000, seed=4).start()
        try:
            reader, writer = await tether.open_connection(
                f"tcp://127.0.0.1:{relay.address[1]}", max_transfer_window=64)
            payload = os.urandom(3 * 1024 * 1024)

            async def send_all():
                for i in range(0, len(payload), 100_000):
                    writer.write(payload[i:i + 100_000])
                    await writer.drain()
                writer.write_eof()

            sending = asyncio.ensure_future(send_all())
            assert await within(reader.read(), 45) == payload
            await within(sending, 5)
            assert relay.cuts >= 2
            writer.close()
            await within(writer.wait_closed(), 10)
        finally:
            relay.close()


# ---- h11 over tether streams ----

async def h11_receive(conn: h11.Connection, reader: asyncio.StreamReader):
    """The next h11 event, reading from the stream as h11 asks."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await reader.read(65536))


async def http_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """GET /bytes/N answers N deterministic bytes; POST /sha256 answers the body's digest."""
    conn = h11.Connection(h11.SERVER)
    while True:
        event = await h11_receive(conn, reader)
        if isinstance(event, h11.ConnectionClosed) or conn.our_state is h11.MUST_CLOSE:
            break
        assert isinstance(event, h11.Request), event
        target = event.target
        body = bytearray()
        while not isinstance(event := await h11_receive(conn, reader), h11.EndOfMessage):
            body += event.data
        if target.startswith(b"/bytes/"):
            answer = deterministic(int(target[len(b"/bytes/"):]))
        else:
            answer = hashlib.sha256(body).hexdigest().encode()
        writer.write(conn.send(h11.Response(status_code=200, headers=[
            ("content-length", str(len(answer))), ("content-type", "application/octet-stream")])))
        writer.write(conn.send(h11.Data(data=answer)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        if conn.our_state is h11.MUST_CLOSE:
            break
        conn.start_next_cycle()
    writer.close()
    await writer.wait_closed()


def deterministic(n: int) -> bytes:
    seed = hashlib.sha256(b"%d" % n).digest()
    return (seed * (n // len(seed) + 1))[:n]


async def test_h11_http_round_trips_through_a_lossy_relay():
    async with await tether.start_server(http_server, "udp://127.0.0.1:0") as server:
        relay = await UdpRelay(server.address, loss=0.03, reorder=0.1, duplicate=0.02,
                               seed=11).start()
        try:
            reader, writer = await tether.open_connection(via(relay))
            client = h11.Connection(h11.CLIENT)

            async def request(method: str, target: str, body: bytes = b"", close: bool = False):
                headers = [("host", "tether.test"), ("content-length", str(len(body)))]
                if close:
                    headers.append(("connection", "close"))
                writer.write(client.send(h11.Request(method=method, target=target, headers=headers)))
                if body:
                    writer.write(client.send(h11.Data(data=body)))
                writer.write(client.send(h11.EndOfMessage()))
                await writer.drain()
                response = await h11_receive(client, reader)
                assert isinstance(response, h11.Response)
                data = bytearray()
                while not isinstance(event := await h11_receive(client, reader), h11.EndOfMessage):
                    data += event.data
                if client.our_state is h11.DONE and client.their_state is h11.DONE:
                    client.start_next_cycle()
                return response, bytes(data)

            response, data = await within(request("GET", "/bytes/300000"), 30)
            assert response.status_code == 200
            assert dict(response.headers)[b"content-length"] == b"300000"
            assert data == deterministic(300000)

            body = os.urandom(200_000)
            response, data = await within(request("POST", "/sha256", body), 30)
            assert response.status_code == 200 and data == hashlib.sha256(body).hexdigest().encode()

            response, data = await within(request("GET", "/bytes/10", close=True), 30)
            assert data == deterministic(10)
            assert client.our_state is h11.MUST_CLOSE
            assert await within(reader.read(), 15) == b""  # the server closed after answering
            writer.close()
            await within(writer.wait_closed(), 15)
            assert relay.dropped > 0
        finally:
            relay.close()
