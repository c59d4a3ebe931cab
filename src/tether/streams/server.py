"""`StreamServer`: what `tether.create_server` and `tether.start_server` return, shaped like
`asyncio.Server` (close, wait_closed, is_serving, serve_forever, sockets, async with), over
a tether `Server` whose every session is given a `SessionTransport` and a new protocol."""
from __future__ import annotations

import asyncio
from typing import Any, Callable

from ..session.adapters.api import Server
from ..session.adapters.session import Session
from .transport import SessionTransport

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


class StreamServer:
    """A listening endpoint that runs one protocol per session.

    Unlike `asyncio.Server.close()`, `close()` also closes the open connections
    gracefully (what was written is still delivered), since tether's `Server` ends its
    sessions when it closes; `wait_closed()` waits until they have ended.
    """

    def __init__(self, protocol_factory: ProtocolFactory, loop: asyncio.AbstractEventLoop) -> None:
        self._protocol_factory = protocol_factory
        self._loop = loop
        self._server: Server | None = None
        self._transports: set[SessionTransport] = set()
        self._serving = False
        self._serving_forever_fut: asyncio.Future | None = None

    def _attach(self, server: Server) -> None:
        self._server = server
        self._serving = True

    async def _handle_session(self, session: Session) -> None:
        """The tether Server's handler: one protocol and transport per session, kept until
        connection_lost (the Server closes the session when this returns)."""
        protocol = self._protocol_factory()
        transport = SessionTransport(session, protocol, self._loop)
        self._transports.add(transport)
        try:
            transport._start()
            await transport._wait_lost()
        finally:
            self._transports.discard(transport)

    # ---- asyncio.Server's surface ----

    @property
    def address(self) -> tuple:
        """The (host, port) actually bound."""
        return self._tether_server.address

    @property
    def url(self) -> str:
        """The URL clients connect to, with the port actually bound."""
        return self._tether_server.url_bound

    @property
    def sockets(self) -> tuple:
        """The listening socket(s), as asyncio.Server.sockets; empty once closed."""
        return self._tether_server.sockets if self._serving else ()

    @property
    def _tether_server(self) -> Server:
        if self._server is None:
            raise RuntimeError("the server has not started")
        return self._server

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the server runs on."""
        return self._loop

    def is_serving(self) -> bool:
        """True until close() is called."""
        return self._serving

    async def start_serving(self) -> None:
        """The server serves from the moment it is created; kept for asyncio.Server parity."""

    async def serve_forever(self) -> None:
        """Serve until cancelled or closed; cancelling closes the server (as asyncio's)."""
        if self._serving_forever_fut is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if not self._serving:
            raise RuntimeError(f"server {self!r} is closed")
        self._serving_forever_fut = self._loop.create_future()
        try:
            await self._serving_forever_fut
        except asyncio.CancelledError:
            try:
                self.close()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever_fut = None

    def close(self) -> None:
        """Stop accepting sessions; close every open connection gracefully."""
        if not self._serving:
            return
        self._serving = False
        for transport in list(self._transports):
            transport.close()
        self._tether_server.close()
        if self._serving_forever_fut is not None and not self._serving_forever_fut.done():
            self._serving_forever_fut.cancel()

    def close_clients(self) -> None:
        """Close every open connection gracefully; the server goes on accepting."""
        for transport in list(self._transports):
            transport.close()

    def abort_clients(self) -> None:
        """Abort every open connection; the server goes on accepting."""
        for transport in list(self._transports):
            transport.abort()

    async def wait_closed(self) -> None:
        """Wait until close() has finished: connections ended, sockets closed."""
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> "StreamServer":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.close()
        await self.wait_closed()

    def __repr__(self) -> str:
        where = self._server.url_bound if self._server is not None else "unstarted"
        return f"<StreamServer {where} connections={len(self._transports)}>"
