"""The drop-in entry points: `open_connection`/`start_server` (asyncio streams) and
`create_connection`/`create_server` (asyncio protocols), each over a reliable session at a
udp://, tcp:// or tls:// URL instead of a TCP socket. Session settings are keyword
arguments, as for `tether.connect` and `tether.serve`, and so is `ssl=` for tls://."""
from __future__ import annotations

import asyncio
from ssl import SSLContext
from typing import Any, Awaitable, Callable

from ..session.adapters.api import connect, serve
from .server import ProtocolFactory, StreamServer
from .transport import SessionTransport

# asyncio.streams' default StreamReader buffer limit.
DEFAULT_LIMIT = 2 ** 16

ClientConnected = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]


async def create_connection(protocol_factory: ProtocolFactory, url: str, *,
                            ssl: SSLContext | None = None,
                            **settings: Any) -> tuple[SessionTransport, asyncio.BaseProtocol]:
    """Open a session to `url` and run `protocol_factory()` over it, as
    `loop.create_connection` does over TCP: returns (transport, protocol) once
    `protocol.connection_made` has been called. `ssl` is for tls:// (default
    `ssl.create_default_context()`).

    Raises what `tether.connect` raises (ValueError/TypeError for a bad URL, setting or
    ssl=, OSError, for tls:// ssl.SSLError when the handshake fails, CreateSequenceRefused,
    RetryLimitExceeded).
    """
    if not callable(protocol_factory):
        raise TypeError(f"protocol_factory must be callable, not {type(protocol_factory).__name__}")
    loop = asyncio.get_running_loop()
    session = await connect(url, ssl=ssl, **settings)
    try:
        protocol = protocol_factory()
        transport = SessionTransport(session, protocol, loop)
        waiter = loop.create_future()
        transport._start(waiter)
        await waiter
    except BaseException:
        session.abort("the client gave up while connecting")
        raise
    return transport, protocol


async def create_server(protocol_factory: ProtocolFactory, url: str, *,
                        ssl: SSLContext | None = None, **settings: Any) -> StreamServer:
    """Listen at `url` (udp://, tcp:// or tls://; port 0 picks one, see `.address`) and run a
    new `protocol_factory()` over every session, as `loop.create_server` does over TCP.
    tls:// needs `ssl`, a server context with the server's certificate."""
    if not callable(protocol_factory):
        raise TypeError(f"protocol_factory must be callable, not {type(protocol_factory).__name__}")
    server = StreamServer(protocol_factory, asyncio.get_running_loop())
    server._attach(await serve(server._handle_session, url, ssl=ssl, **settings))
    return server


async def open_connection(url: str, *, limit: int = DEFAULT_LIMIT, ssl: SSLContext | None = None,
                          **settings: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """`asyncio.open_connection` over a reliable session: the standard StreamReader and
    StreamWriter (`drain()` waits until the peer has acknowledged enough). `ssl` is for
    tls:// (default `ssl.create_default_context()`)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await create_connection(lambda: protocol, url, ssl=ssl, **settings)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


async def start_server(client_connected_cb: ClientConnected, url: str, *,
                       limit: int = DEFAULT_LIMIT, ssl: SSLContext | None = None,
                       **settings: Any) -> StreamServer:
    """`asyncio.start_server` over reliable sessions: client_connected_cb(reader, writer)
    is called (a coroutine is run as a task) for every new session. tls:// needs `ssl`, a
    server context with the server's certificate."""
    if not callable(client_connected_cb):
        raise TypeError(f"client_connected_cb must be callable, not {type(client_connected_cb).__name__}")
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.StreamReaderProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

    return await create_server(factory, url, ssl=ssl, **settings)
