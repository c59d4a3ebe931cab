"""Sessions over tls:// on loopback, with a CA and certificates made by the tests
(tests/tls_pki.py): echo, verification on by default, every kind of handshake failure
raised clearly within connect_timeout, mutual TLS, a cut connection resumed over a new
handshake, and a server that failed handshakes never disturb."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import pytest
from test_session_net import exchange, url

import tether
from tether.bench.relay import TcpRelay

from tls_pki import client_context, server_context

pytestmark = pytest.mark.timeout(60)

# Failures must come within connect_timeout; the margin is generous for a loaded machine.
MARGIN = 2.0


def open_sockets() -> int:
    """How many sockets this process holds (libuv opens other descriptors of its own)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass  # the descriptor listdir used, closed again
    return count


async def sockets_back_to(baseline: int, seconds: float = 5.0) -> int:
    """Wait until this process holds no more sockets than `baseline`."""
    deadline = time.monotonic() + seconds
    while open_sockets() > baseline and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return open_sockets()


async def echo(session: tether.Session) -> None:
    async for message in session:
        await session.send(message)


async def test_echo_over_tls_both_directions_and_graceful_close(pki):
    async with await tether.serve(None, "tls://127.0.0.1:0", ssl=server_context(pki)) as server:
        assert server.url_bound.startswith("tls://127.0.0.1:")
        client = await tether.connect(server.url_bound, ssl=client_context(pki), max_transfer_window=64)
        peer = await server.accept()
        await exchange(client, peer, 2000, size=300)
        assert client.peer_certificate["subject"] == ((("commonName", "tether test server"),),)
        assert not peer.peer_certificate  # the server asked for no client certificate
        assert client.link.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        await client.send(b"last")
        await client.close()
        assert client.error is None
        assert [m async for m in peer] == [b"last"]
        await asyncio.wait_for(peer.wait_closed(), 5)
        assert peer.error is None


async def test_tls_over_ipv6_loopback(pki):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = await tether.serve(echo, "tls://[::1]:0", ssl=server_context(pki))
    except OSError:
        pytest.skip("::1 not configured")
    async with server:
        assert server.url_bound.startswith("tls://[::1]:")
        async with tether.connect(server.url_bound, ssl=client_context(pki)) as client:
            await client.send(b"six")
            assert await client.recv() == b"six"


def test_tls_works_on_plain_asyncio_too(pki):
    async def main():
        assert "uvloop" not in type(asyncio.get_running_loop()).__module__
        async with await tether.serve(echo, "tls://127.0.0.1:0", ssl=server_context(pki)) as server:
            with pytest.raises(ssl.SSLCertVerificationError):
                await tether.connect(server.url_bound, ssl=client_context(pki, ca=pki.other_ca))
            async with tether.connect(server.url_bound, ssl=client_context(pki)) as client:
                await client.send(b"plain")
                return await client.recv()

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(main()) == b"plain"
    finally:
        loop.close()


async def test_certificate_verification_is_on_by_default(pki):
    """No ssl= means ssl.create_default_context(): the system's CAs, which know neither a
    self-signed certificate nor the test CA."""
    for cert, reason in (("self-signed", "self-signed certificate"),
                         ("server", "unable to get local issuer certificate")):
        async with await tether.serve(echo, "tls://127.0.0.1:0", ssl=server_context(pki, cert)) as server:
            with pytest.raises(ssl.SSLCertVerificationError) as caught:
                await tether.connect(server.url_bound, connect_timeout=2)
            message = str(caught.value)
            assert message == (f"TLS handshake with {server.url_bound} failed: "
                               f"certificate verify failed: {reason}")
            assert caught.value.verify_message == reason
            assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)


@pytest.mark.parametrize(("cert", "ca", "reason"), [
    ("server", "other", "unable to get local issuer certificate"),
    ("other-ca-server", "ca", "unable to get local issuer certificate"),
    ("wrong-name", "ca", "IP address mismatch, certificate is not valid for '127.0.0.1'."),
    ("expired", "ca", "certificate has expired"),
], ids=["client-trusts-another-ca", "server-from-another-ca", "hostname-mismatch", "expired"])
async def test_an_untrusted_certificate_fails_with_the_reason_and_the_place(pki, cert, ca, reason):
    async with await tether.serve(echo, "tls://127.0.0.1:0", ssl=server_context(pki, cert)) as server:
        context = client_context(pki, ca=pki.other_ca if ca == "other" else pki.ca)
        started = time.monotonic()
        with pytest.raises(ssl.SSLCertVerificationError) as caught:
            await tether.connect(server.url_bound, ssl=context, connect_timeout=2)
        assert time.monotonic() - started < 2 + MARGIN
        assert str(caught.value) == (f"TLS handshake with {server.url_bound} failed: "
                                     f"certificate verify failed: {reason}")


async def test_a_hostname_mismatch_names_the_host(pki):
    """The host of the URL is what is verified: 'localhost' is in the certificate, and a
    certificate for another name fails."""
    async with await tether.serve(echo, "tls://127.0.0.1:0", ssl=server_context(pki, "wrong-name")) as server:
        port = server.address[1]
        with pytest.raises(ssl.SSLCertVerificationError,
                           match="Hostname mismatch, certificate is not valid for 'localhost'"):
            await tether.connect(f"tls://localhost:{port}", ssl=client_context(pki), connect_timeout=2)
    async with await tether.serve(echo, "tls://127.0.0.1:0", ssl=server_context(pki)) as server:
        async with tether.connect(f"tls://localhost:{server.address[1]}", ssl=client_context(pki)) as client:
            await client.send(b"by name")
            assert await client.recv() == b"by name"


async def test_a_plain_tcp_server_fails_the_handshake_clearly_and_at_once(pki):
    async with await tether.serve(echo, "tcp://127.0.0.1:0") as server:
        target = url("tls", server.address)
        started = time.monotonic()
        with pytest.raises(ssl.SSLError) as caught:
            await tether.connect(target, ssl=client_context(pki), connect_timeout=3)
        assert time.monotonic() - started < 3
        assert str(caught.value).startswith(
            f"TLS handshake with {target} failed: the server closed the connection (is it a TLS server?")
        # and the server goes on serving tcp://
        async with tether.connect(url("tcp", server.address)) as client:
            await client.send(b"plain")
            assert await client.recv() == b"plain"


async def test_a_server_that_answers_in_plain_text_fails_the_handshake_clearly(pki):
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    plain = await asyncio.start_server(http, "127.0.0.1", 0)
    try:
        target = url("tls", plain.sockets[0].getsockname())
        with pytest.raises(ssl.SSLError) as caught:
            await tether.connect(target, ssl=client_context(pki), connect_timeout=3)
        assert caught.value.reason == "WRONG_VERSION_NUMBER"
        assert str(caught.value) == (
            f"TLS handshake with {target} failed: wrong version number (the server answered "
            "with something that is not TLS: is it a plain TCP server?)")
    finally:
        plain.close()


async def test_a_server_that_never_speaks_tls_fails_within_connect_timeout(pki):
    """A server that accepts the TCP connection, reads and says nothing: a TimeoutError
    naming the TLS handshake and the place, after connect_timeout and not much later."""
    heard = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            heard.append(data)
        writer.close()

    silent = await asyncio.start_server(mute, "127.0.0.1", 0)
    try:
        target = url("tls", silent.sockets[0].getsockname())
        started = time.monotonic()
        with pytest.raises(TimeoutError) as caught:
            await tether.connect(target, ssl=client_context(pki), connect_timeout=0.5)
        assert 0.45 <= time.monotonic() - started < 0.5 + MARGIN  # uvloop rounds its clock
        assert str(caught.value) == (
            f"TLS handshake with {target} not completed within connect_timeout (0.5 s): "
            "the server accepted the TCP connection but did not answer as a TLS server")
        assert heard and heard[0][:1] == b"\x16"  # it did get a TLS ClientHello
    finally:
        silent.close()


async def test_a_tcp_client_to_a_tls_server_fails_within_connect_timeout(pki):
    """The other way round: the server fails the handshake and closes; the tcp:// client
    hears no answer to CreateSequence."""
    async with await tether.serve(echo, "tls://127.0.0.1:0", ssl=server_context(pki)) as server:
        started = time.monotonic()
        with pytest.raises(tether.RetryLimitExceeded, match="no answer to CreateSequence within 0.5 s"):
            await tether.connect(url("tcp", server.address), connect_timeout=0.5)
        assert time.monotonic() - started < 0.5 + MARGIN


async def test_mutual_tls_with_a_client_certificate(pki):
    context = server_context(pki, client_ca=pki.ca)
    async with await tether.serve(None, "tls://127.0.0.1:0", ssl=context) as server:
        async with tether.connect(server.url_bound, ssl=client_context(pki, cert="client")) as client:
            peer = await server.accept()
            await client.send(b"known client")
            assert await peer.recv() == b"known client"
            assert peer.peer_certificate["subject"] == ((("commonName", "tether test client"),),)


@pytest.mark.parametrize("version", ["TLSv1_3", "TLSv1_2"])
@pytest.mark.parametrize("cert", [None, "other-ca-client"], ids=["no-client-cert", "untrusted-client-cert"])
async def test_mutual_tls_refuses_a_client_without_a_trusted_certificate(pki, version, cert):
    """Under TLS 1.3 the client's handshake completes before the server checks the client's
    certificate, and the server then just closes: connect() says so at once, not after
    connect_timeout."""
    mutual = server_context(pki, client_ca=pki.ca)
    async with await tether.serve(echo, "tls://127.0.0.1:0", ssl=mutual) as server:
        context = client_context(pki, cert=cert)
        context.maximum_version = getattr(ssl.TLSVersion, version)
        started = time.monotonic()
        with pytest.raises(ssl.SSLEOFError) as caught:
            await tether.connect(server.url_bound, ssl=context, connect_timeout=5)
        assert time.monotonic() - started < 5
        message = str(caught.value)
        assert server.url_bound in message and "client certificate" in message
        assert not server.sessions
        async with tether.connect(server.url_bound, ssl=client_context(pki, cert="client")) as client:
            await client.send(b"still serving")
            assert await client.recv() == b"still serving"


@contextlib.contextmanager
def alerting_server(context: ssl.SSLContext) -> Iterator[tuple]:
    """A TLS server of the standard library's blocking sockets, in a thread: unlike
    asyncio's servers, it sends the TLS alert when a handshake fails. Yields its address."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.05)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            try:
                with context.wrap_socket(conn, server_side=True) as tls_conn:
                    tls_conn.recv(1)
            except OSError:
                pass  # the handshake failed: the alert is sent
            finally:
                conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.mark.parametrize("version", ["TLSv1_3", "TLSv1_2"])
@pytest.mark.parametrize("cert", [None, "other-ca-client"], ids=["no-client-cert", "untrusted-client-cert"])
async def test_a_server_s_tls_alert_is_named_in_the_error(pki, version, cert):
    """A server that sends alerts (not asyncio's): under TLS 1.2 the alert ends the
    handshake; under TLS 1.3 it comes right after it, before the server answered, and
    connect() raises it at once (or, when a reset overtook the alert, says the server closed)."""
    with alerting_server(server_context(pki, client_ca=pki.ca)) as address:
        target = url("tls", address)
        context = client_context(pki, cert=cert)
        context.maximum_version = getattr(ssl.TLSVersion, version)
        started = time.monotonic()
        with pytest.raises(ssl.SSLError) as caught:
            await tether.connect(target, ssl=context, connect_timeout=5)
        assert time.monotonic() - started < 5
        message = str(caught.value)
        assert target in message and "client certificate" in message, message
        if version == "TLSv1_2":
            expected = "SSLV3_ALERT_HANDSHAKE_FAILURE" if cert is None else "TLSV1_ALERT_UNKNOWN_CA"
            assert caught.value.reason == expected
            assert message.startswith(f"TLS handshake with {target} failed: ")


@pytest.mark.fault
async def test_a_tls_connection_cut_mid_transfer_resumes_without_loss_or_duplicates(pki):
    """The relay carries TLS bytes and cuts every few tens of kilobytes: each reconnect is a
    new TCP connection and a new handshake, then Resume; nothing is lost or doubled."""
    settings = dict(max_transfer_window=128)
    async with await tether.serve(None, "tls://127.0.0.1:0", ssl=server_context(pki), **settings) as server:
        relay = await TcpRelay(server.address, cut_every=60_000, seed=5).start()
        try:
            client = await tether.connect(url("tls", relay.address), ssl=client_context(pki), **settings)
            peer = await server.accept()
            await asyncio.wait_for(exchange(client, peer, 4000, size=100), 40)
            assert relay.cuts >= 3, relay.cuts
            assert client.reconnector.reconnects >= 3
            assert client.peer_certificate["subject"] == ((("commonName", "tether test server"),),)
            await client.close()
        finally:
            relay.close()


@pytest.mark.fault
async def test_reconnects_fail_once_the_server_certificate_is_no_longer_trusted(pki, caplog):
    """The server's certificate changes under a live session (here: to one of a CA the
    client does not trust) and the connection drops: every reconnect fails verification,
    the error is logged, and the session ends by its inactivity timeout."""
    caplog.set_level(logging.WARNING, logger="tether.session")
    context = server_context(pki)
    settings = dict(inactivity_timeout=1.0)
    async with await tether.serve(None, "tls://127.0.0.1:0", ssl=context, **settings) as server:
        relay = await TcpRelay(server.address).start()
        try:
            client = await tether.connect(url("tls", relay.address), ssl=client_context(pki), **settings)
            peer = await server.accept()
            await client.send(b"before")
            assert await peer.recv() == b"before"
            context.load_cert_chain(*pki.cert("other-ca-server"))  # new handshakes only
            relay.cut_all()
            with pytest.raises(tether.InactivityTimeout):
                await asyncio.wait_for(client.recv(), 10)
            assert client.reconnector.reconnects == 0
        finally:
            relay.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "tether.session"]
    failed = [m for m in lines if ": reconnecting to" in m and "certificate verify failed" in m]
    assert len(failed) == 1, lines  # logged once, not once per attempt
    assert any("ended" in m and "while reconnecting" in m and "certificate verify failed" in m
               for m in lines), lines


async def test_ssl_argument_is_validated():
    context = ssl.create_default_context()
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    for scheme in ("udp", "tcp"):
        with pytest.raises(ValueError,
                           match=f"ssl= was given for {scheme}://127.0.0.1:1, but only tls:// URLs use TLS"):
            tether.connect(f"{scheme}://127.0.0.1:1", ssl=context)
        with pytest.raises(ValueError, match=f"ssl= was given for {scheme}://127.0.0.1:0"):
            await tether.serve(echo, f"{scheme}://127.0.0.1:0", ssl=server_side)
    with pytest.raises(ValueError, match="serving tls://127.0.0.1:0 needs ssl="):
        await tether.serve(echo, "tls://127.0.0.1:0")
    for bad in (True, "cert.pem", ssl.PROTOCOL_TLS_CLIENT):
        with pytest.raises(TypeError, match="ssl must be an ssl.SSLContext or None"):
            tether.connect("tls://127.0.0.1:1", ssl=bad)
        with pytest.raises(TypeError, match="ssl must be an ssl.SSLContext or None"):
            await tether.serve(echo, "tls://127.0.0.1:0", ssl=bad)
    with pytest.raises(ValueError, match="must be a server context"):
        await tether.serve(echo, "tls://127.0.0.1:0", ssl=context)
    with pytest.raises(ValueError, match="must be a client context"):
        tether.connect("tls://127.0.0.1:1", ssl=server_side)
    with pytest.raises(ValueError, match=r"scheme must be udp://, tcp:// or tls://"):
        tether.connect("https://127.0.0.1:1")


async def test_failed_handshakes_leave_the_server_serving_and_leak_no_sockets(pki):
    """Clients that fail in every way (an untrusted server certificate, garbage instead of
    TLS, no certificate for mutual TLS, silence) cost the server nothing lasting: the
    sessions it has go on, new ones start, a silent client is dropped after
    connect_timeout, and every socket is closed again."""
    context = server_context(pki, client_ca=pki.ca)
    async with await tether.serve(echo, "tls://127.0.0.1:0", ssl=context, connect_timeout=0.5) as server:
        good = client_context(pki, cert="client")
        async with tether.connect(server.url_bound, ssl=good) as first:
            await first.send(b"one")
            assert await first.recv() == b"one"
            baseline = open_sockets()
            for _ in range(3):
                with pytest.raises(ssl.SSLCertVerificationError):
                    await tether.connect(server.url_bound,
                                         ssl=client_context(pki, ca=pki.other_ca, cert="client"))
                with pytest.raises(ssl.SSLEOFError):
                    await tether.connect(server.url_bound, ssl=client_context(pki))
                reader, writer = await asyncio.open_connection(*server.address)
                writer.write(b"\x00\x00\x00\x05hello")  # a tcp:// packet, not a ClientHello
                assert await asyncio.wait_for(reader.read(), 5) == b""
                writer.close()
            started = time.monotonic()
            reader, writer = await asyncio.open_connection(*server.address)  # says nothing
            assert await asyncio.wait_for(reader.read(), 0.5 + MARGIN) == b""
            assert 0.4 <= time.monotonic() - started < 0.5 + MARGIN
            writer.close()
            await writer.wait_closed()
            await first.send(b"two")
            assert await first.recv() == b"two"
            async with tether.connect(server.url_bound, ssl=good) as second:
                await second.send(b"three")
                assert await second.recv() == b"three"
            assert await sockets_back_to(baseline) <= baseline
            assert len(server.sessions) == 1


async def test_a_cancelled_tls_connect_leaves_nothing_behind(pki):
    """Cancelling connect() during a handshake that never completes closes the connection."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # the kernel completes TCP; nobody ever answers the ClientHello
    try:
        baseline = open_sockets()
        task = asyncio.ensure_future(tether.connect(url("tls", silent.getsockname()),
                                                    ssl=client_context(pki), connect_timeout=30))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await sockets_back_to(baseline) <= baseline
    finally:
        silent.close()
