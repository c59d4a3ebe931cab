"""The asyncio drop-ins over tls://: streams and protocols with `ssl=` as asyncio's own
take it, TLS details through `get_extra_info` as asyncio's TLS transports give them,
h11's HTTP/1.1 over a TLS session, and handshake failures raised as asyncio raises them."""
from __future__ import annotations

import asyncio
import ssl

import h11
import pytest

import tether

from tls_pki import client_context, server_context

pytestmark = pytest.mark.timeout(60)


async def within(aw, seconds: float = 10.0):
    return await asyncio.wait_for(aw, seconds)


async def upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        writer.write(line.upper())
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def test_streams_over_tls_with_peercert_and_ssl_object(pki):
    context = server_context(pki, client_ca=pki.ca)
    seen = asyncio.get_running_loop().create_future()

    async def handle(reader, writer):
        seen.set_result(writer.get_extra_info("peercert"))
        await upper(reader, writer)

    async with await tether.start_server(handle, "tls://127.0.0.1:0", ssl=context) as server:
        assert server.url.startswith("tls://")
        reader, writer = await tether.open_connection(server.url, ssl=client_context(pki, cert="client"))
        writer.write(b"hello\n")
        assert await within(reader.readline()) == b"HELLO\n"
        assert writer.get_extra_info("peercert")["subject"] == ((("commonName", "tether test server"),),)
        assert isinstance(writer.get_extra_info("ssl_object"), ssl.SSLObject)
        assert writer.get_extra_info("sslcontext") is not None
        name, version, bits = writer.get_extra_info("cipher")
        assert version in ("TLSv1.2", "TLSv1.3") and bits >= 128
        client_cert = await within(seen)
        assert client_cert["subject"] == ((("commonName", "tether test client"),),)
        writer.close()
        await writer.wait_closed()


async def test_tls_extra_info_is_absent_over_tcp():
    async with await tether.start_server(upper, "tcp://127.0.0.1:0") as server:
        reader, writer = await tether.open_connection(server.url)
        for name in ("peercert", "ssl_object", "cipher", "sslcontext"):
            assert writer.get_extra_info(name, "none") == "none"
        writer.close()
        await writer.wait_closed()


class Greeter(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.peercert = transport.get_extra_info("peercert")
        transport.write(b"hi\n")
        transport.write_eof()

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self):
        return True

    def connection_lost(self, exc) -> None:
        self.done.set_result(exc)


async def test_create_connection_and_create_server_over_tls(pki):
    class Upper(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data.upper())

        def eof_received(self):
            return False  # close once the peer has finished

    async with await tether.create_server(Upper, "tls://127.0.0.1:0", ssl=server_context(pki)) as server:
        transport, protocol = await tether.create_connection(Greeter, server.url, ssl=client_context(pki))
        assert await within(protocol.done) is None
        assert bytes(protocol.data) == b"HI\n"
        assert protocol.peercert["subject"] == ((("commonName", "tether test server"),),)
        assert transport.is_closing()


async def test_handshake_failures_reach_the_streams_caller_as_asyncio_raises_them(pki):
    async with await tether.start_server(upper, "tls://127.0.0.1:0", ssl=server_context(pki)) as server:
        with pytest.raises(ssl.SSLCertVerificationError, match=f"TLS handshake with {server.url} failed"):
            await tether.open_connection(server.url)  # the default context does not know the test CA
        with pytest.raises(ssl.SSLCertVerificationError):
            await tether.create_connection(Greeter, server.url, ssl=client_context(pki, ca=pki.other_ca))


async def test_ssl_argument_is_validated_by_the_streams_functions(pki):
    context = client_context(pki)
    with pytest.raises(ValueError, match="only tls:// URLs use TLS"):
        await tether.open_connection("tcp://127.0.0.1:1", ssl=context)
    with pytest.raises(ValueError, match="only tls:// URLs use TLS"):
        await tether.create_connection(Greeter, "udp://127.0.0.1:1", ssl=context)
    with pytest.raises(ValueError, match="needs ssl="):
        await tether.start_server(upper, "tls://127.0.0.1:0")
    with pytest.raises(TypeError, match="ssl must be an ssl.SSLContext"):
        await tether.create_server(Greeter, "tls://127.0.0.1:0", ssl=True)


# ---- h11 over a TLS session ----

async def h11_event(conn: h11.Connection, reader: asyncio.StreamReader):
    while (event := conn.next_event()) is h11.NEED_DATA:
        conn.receive_data(await reader.read(65536))
    return event


async def http_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every request with its target, until the client closes."""
    conn = h11.Connection(h11.SERVER)
    while True:
        event = await h11_event(conn, reader)
        if isinstance(event, h11.ConnectionClosed):
            break
        assert isinstance(event, h11.Request)
        body = b"you asked for " + event.target
        while not isinstance(await h11_event(conn, reader), h11.EndOfMessage):
            pass
        writer.write(conn.send(h11.Response(status_code=200, headers=[("content-length", str(len(body)))])))
        writer.write(conn.send(h11.Data(data=body)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        conn.start_next_cycle()
    writer.close()


async def test_h11_http_over_tls(pki):
    async with await tether.start_server(http_hello, "tls://127.0.0.1:0", ssl=server_context(pki)) as server:
        reader, writer = await tether.open_connection(server.url, ssl=client_context(pki))
        client = h11.Connection(h11.CLIENT)
        for target in ("/a", "/b/c"):
            request = h11.Request(method="GET", target=target, headers=[("host", "localhost")])
            writer.write(client.send(request))
            writer.write(client.send(h11.EndOfMessage()))
            await writer.drain()
            response = await within(h11_event(client, reader))
            assert response.status_code == 200
            body = bytearray()
            while not isinstance(event := await within(h11_event(client, reader)), h11.EndOfMessage):
                body += event.data
            assert bytes(body) == b"you asked for " + target.encode()
            client.start_next_cycle()
        writer.close()
        await writer.wait_closed()
