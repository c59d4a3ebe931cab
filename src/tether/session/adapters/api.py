"""`tether.connect()` and `tether.serve()`: reliable sessions over udp://, tcp:// and tls:// URLs."""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import weakref
from collections.abc import Awaitable, Callable
from ssl import SSLContext
from types import TracebackType
from typing import Any, Unpack

from ...backoff import Backoff
from ...errors import SequenceClosed, TetherError
from ...opening import Opening
from ..sansio.demux import Demux
from ..sansio.engine import SessionEngine
from ..sansio.settings import SessionOptions, SessionSettings
from ..sansio.state import State
from . import tls
from .session import Session
from .tcp import RECONNECT_CAP, RECONNECT_FIRST, TCP_PACKET, TcpConnection, TcpServerConnection, max_packet_size
from .timers import clock
from .udp import UdpClientProtocol, UdpEndpoint, UdpServerProtocol, datagram_size
from .url import SessionURL, parse

log = logging.getLogger("tether.session")

Handler = Callable[[Session], Awaitable[Any]]
# How long Server.wait_closed() lets sessions close gracefully before aborting them.
SERVER_CLOSE_GRACE = 5.0


def _new_session_id() -> int:
    return secrets.randbits(63) | 1


def connect(url: str, *, ssl: SSLContext | None = None,
            **settings: Unpack[SessionOptions]) -> Opening[Session]:
    """Open a client session: `session = await tether.connect(url, **settings)` or
    `async with tether.connect(url, **settings) as session:` (the block's end closes the
    session gracefully, or aborts it when the block raised). `settings` are
    SessionSettings' fields (docs/configuration.md).

    `ssl` is for tls:// URLs: the `ssl.SSLContext` to connect with (default
    `ssl.create_default_context()`: the server's certificate and the URL's host are
    verified against the system's CAs).

    Raises ValueError/TypeError for a bad URL, setting or ssl= (at once), OSError when a
    TCP server cannot be reached (TimeoutError when not within connect_timeout), for
    tls:// `ssl.SSLCertVerificationError` or `ssl.SSLError` when the TLS handshake fails
    and TimeoutError when it does not complete within connect_timeout,
    CreateSequenceRefused when the server refuses, and RetryLimitExceeded when nobody
    answers within connect_timeout.
    """
    session_url = parse(url)
    session_settings = SessionSettings.from_kwargs(**settings)
    context = tls.client_context(session_url, ssl)

    async def opening() -> Session:
        if session_url.scheme == "udp":
            return await _open_udp(session_url, session_settings)
        return await _open_tcp(session_url, session_settings, context)

    return Opening(opening)


async def _open_udp(url: SessionURL, settings: SessionSettings) -> Session:
    loop = asyncio.get_running_loop()
    protocol = await UdpClientProtocol.open(url.host, url.port)
    engine = SessionEngine.client(
        settings, session_id=_new_session_id(), token=os.urandom(16), now=clock(),
        reliable_transport=False, max_packet_size=datagram_size(url.host))
    session = Session(engine, protocol, loop, transport="udp")
    protocol.session = session
    session.add_end_callback(lambda s: protocol.close())
    engine.start(clock())
    session.pump()
    try:
        await session.wait_connected(settings.connect_timeout)
    except BaseException:
        protocol.close()
        raise
    return session


class _TcpReconnector:
    """Keeps a client session's TCP connection (with TLS for tls://): reconnects with
    capped backoff after a drop and resumes the session on the new connection. The backoff
    starts afresh only once a new connection was answered, so a server that accepts and
    at once closes is not hammered."""

    def __init__(self, session: Session, url: SessionURL, context: SSLContext | None) -> None:
        self.session = session
        self.url = url
        self.context = context
        self.loop = asyncio.get_running_loop()
        self.task: asyncio.Task[Any] | None = None
        self.reconnects = 0
        self.backoff = Backoff(RECONNECT_FIRST, RECONNECT_CAP)
        # why connect() failed though a TLS connection was made (see _lost)
        self.refusal: OSError | None = None
        self.last_error: OSError | None = None
        self._unanswered: TcpConnection | None = None
        self._logged = ""
        session.add_end_callback(self._ended)

    async def connect(self) -> TcpConnection:
        """Make one connection, TCP and then TLS (tls://) within connect_timeout, and send
        the session through it."""
        session, url, loop = self.session, self.url, self.loop
        timeout = session.settings.connect_timeout
        deadline = loop.time() + timeout
        conn = TcpConnection(max_packet_size(session.settings.max_message_size),
                             session.feed, self._lost, session.fail)
        conn.on_packet = functools.partial(self._first_packet, conn)
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
        # races the connection completing, leaving a cancelled caller running.
        try:
            async with asyncio.timeout_at(deadline):
                transport, _ = await loop.create_connection(lambda: conn, url.host, url.port)
        except TimeoutError:
            raise TimeoutError(f"no TCP connection to {url.text} within connect_timeout "
                               f"({timeout:g} s)") from None
        if self.context is not None:
            conn.transport = await tls.handshake(loop, transport, conn, self.context, url,
                                                 deadline, timeout)
        self._unanswered = conn
        session.attach(conn)
        return conn

    def _first_packet(self, conn: TcpConnection, body: bytes) -> None:
        # The server answered on this connection: later packets go straight to the session.
        conn.on_packets = self.session.feed_many
        if self._unanswered is conn:
            self._unanswered = None
        self.backoff.reset()
        self.last_error = None
        self._logged = ""
        self.session.feed(body)

    def _lost(self, conn: TcpConnection, exc: Exception | None) -> None:
        session = self.session
        if session.link is not conn:
            return  # failed its TLS handshake (connect() raised), or already replaced
        session.attach(None)
        if exc is None or session.closed:
            return  # closed on purpose
        if conn is self._unanswered:
            self._unanswered = None
            if self.context is None:
                self._failed(ConnectionResetError("the server closed the connection before answering"))
            else:
                # A TLS server that refuses the client's certificate ends the connection
                # here: under TLS 1.3 the client's handshake is over before the server
                # checks its certificate.
                error = tls.ended_error(exc, self.url)
                if session.engine.state is State.CONNECTING:
                    self.refusal = error  # connect() still waits: it fails with this now
                    session.abort(str(error))
                    return
                self._failed(error)
        else:
            log.info("session %#x: connection to %s lost (%s); reconnecting",
                     session.session_id, self.url.text, exc)
        if self.task is None:
            self.task = self.loop.create_task(self._reconnect())

    def _failed(self, exc: OSError) -> None:
        """A reconnect failed: log it, at WARNING when it fails differently from the last
        time (a certificate that became invalid shows once, not every 2 s)."""
        self.last_error = exc
        text = str(exc) or type(exc).__name__
        level = logging.DEBUG if text == self._logged else logging.WARNING
        self._logged = text
        log.log(level, "session %#x: reconnecting to %s failed: %s",
                self.session.session_id, self.url.text, text)

    async def _reconnect(self) -> None:
        try:
            while not self.session.closed:
                await asyncio.sleep(self.backoff.next())
                try:
                    await self.connect()
                except OSError as exc:  # includes ssl.SSLError and TimeoutError
                    self._failed(exc)
                    continue
                self.reconnects += 1
                self.session.engine.resume(clock())
                self.session.pump()
                return
        finally:
            self.task = None

    def _ended(self, session: Session) -> None:
        if self.task is not None:
            self.task.cancel()
            if self.last_error is not None:
                log.warning("session %#x ended (%s) while reconnecting to %s; the last attempt "
                            "failed: %s", session.session_id, session.error or "closed",
                            self.url.text, self.last_error)
        if session.link is not None:
            session.link.close()


async def _open_tcp(url: SessionURL, settings: SessionSettings, context: SSLContext | None) -> Session:
    loop = asyncio.get_running_loop()
    engine = SessionEngine.client(
        settings, session_id=_new_session_id(), token=os.urandom(16), now=clock(),
        reliable_transport=True, max_packet_size=TCP_PACKET)
    session = Session(engine, None, loop, transport=url.scheme)
    reconnector = _TcpReconnector(session, url, context)
    session.reconnector = reconnector  # type: ignore[attr-defined]
    await reconnector.connect()
    engine.start(clock())
    session.pump()
    try:
        await session.wait_connected(settings.connect_timeout)
    except BaseException:
        if session.link is not None:
            session.link.close()
        if reconnector.refusal is not None:
            raise reconnector.refusal from None
        raise
    return session


class Server:
    """A listening endpoint of reliable sessions. `address` is the bound (host, port).
    Without a handler, take sessions with `await server.accept()`. `ssl_context` is the
    server's `ssl.SSLContext` over tls:// (None otherwise)."""

    def __init__(self, url: SessionURL, settings: SessionSettings, handler: Handler | None,
                 ssl_context: SSLContext | None = None) -> None:
        self.url = url
        self.settings = settings
        self.ssl_context = ssl_context
        self._handler = handler
        self._loop = asyncio.get_running_loop()
        reliable = url.stream
        self.demux = Demux(settings, reliable_transport=reliable,
                           max_packet_size=TCP_PACKET if reliable else datagram_size(url.host))
        self.sessions: dict[int, Session] = {}
        self._backlog: asyncio.Queue[Session | None] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._udp: UdpEndpoint | None = None
        self._tcp: asyncio.Server | None = None
        # open TCP connections; close() ends those not bound to a session (a bound one ends
        # with its session). asyncio's and uvloop's Server.close() leave connections open.
        self._tcp_connections: weakref.WeakSet[TcpServerConnection] = weakref.WeakSet()
        self._closing = False
        self._finisher: asyncio.Task[Any] | None = None
        self._closed = self._loop.create_future()
        self.address: tuple[Any, ...] = ()

    async def _start(self) -> None:
        host, port = self.url.host, self.url.port
        if self.url.scheme == "udp":
            protocol = UdpServerProtocol(self.demux, self._loop, self._new_session, self.sessions)
            self._udp = await protocol.listen(host, port)
            sockname = self._udp.get_extra_info("sockname")
        else:
            tls_options: dict[str, Any] = {}
            if self.ssl_context is not None:
                # a client that never finishes its handshake holds a socket: as long as a
                # connection may take to name its session, and no longer
                tls_options = {"ssl": self.ssl_context,
                               "ssl_handshake_timeout": self.settings.connect_timeout}
            self._tcp = await self._loop.create_server(self._new_tcp_connection, host, port,
                                                       **tls_options)
            sockname = self._tcp.sockets[0].getsockname()
        self.address = tuple(sockname[:2])

    @property
    def sockets(self) -> tuple[Any, ...]:
        """The listening socket(s), as asyncio.Server.sockets; empty once closed."""
        if self._closing:
            return ()
        if self._tcp is not None:
            return tuple(self._tcp.sockets)
        if self._udp is not None:
            return (self._udp.get_extra_info("socket"),)
        return ()

    @property
    def url_bound(self) -> str:
        """The URL clients connect to (with the port actually bound)."""
        host = self.address[0]
        host = f"[{host}]" if ":" in host else host
        return f"{self.url.scheme}://{host}:{self.address[1]}"

    def _new_tcp_connection(self) -> TcpServerConnection:
        conn = TcpServerConnection(self.demux, self._loop, self._new_session, self.sessions)
        self._tcp_connections.add(conn)
        return conn

    def _new_session(self, engine: SessionEngine, link: Any) -> Session:
        session = Session(engine, link, self._loop, transport=self.url.scheme)
        self.sessions[engine.session_id] = session
        session.add_end_callback(self._session_ended)
        if self._handler is not None:
            self._mark_accepted(session)
            task = self._loop.create_task(self._run_handler(session))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._backlog.put_nowait(session)
        return session

    def _mark_accepted(self, session: Session) -> None:
        if not session.accepted:
            session.accepted = True
            self.demux.accepted(session.engine)

    def _session_ended(self, session: Session) -> None:
        if self.sessions.get(session.session_id) is session:
            del self.sessions[session.session_id]
        # An unaccepted session that ended waits in the backlog all the same, so it keeps
        # its max_pending_channels slot until accept() takes it; else a peer opening and
        # ending sessions fast would grow the backlog without bound.
        self.demux.remove(session.engine, was_accepted=True)
        if self.url.stream and session.link is not None:
            session.link.close()

    async def _run_handler(self, session: Session) -> None:
        try:
            await self._handler(session)  # type: ignore[misc]
        except asyncio.CancelledError:
            session.abort("the server is shutting down")
            raise
        except TetherError as exc:
            log.info("session %#x ended in its handler: %s", session.session_id, exc)
            session.abort(f"handler failed: {exc}")
        except Exception:
            log.exception("session handler failed for session %#x", session.session_id)
            session.abort("the server's handler failed")
        else:
            if not session.closed:
                try:
                    await session.close()
                except (TetherError, TimeoutError) as exc:
                    log.info("session %#x did not close cleanly: %s", session.session_id, exc)

    async def accept(self) -> Session:
        """The next new session (waits). Raises SequenceClosed once the server is closed."""
        if self._handler is not None:
            raise RuntimeError("accept() is for servers started without a handler")
        while True:
            if self._closing and self._backlog.empty():
                raise SequenceClosed("the server is closed")
            session = await self._backlog.get()
            if session is None:
                self._backlog.put_nowait(None)  # wake other accept() callers too
                raise SequenceClosed("the server is closed")
            self._mark_accepted(session)
            return session

    def close(self) -> None:
        """Stop accepting sessions and close every open one gracefully (wait_closed() waits)."""
        if self._closing:
            return
        self._closing = True
        self.demux.closing = True
        if self._tcp is not None:
            self._tcp.close()
            for conn in list(self._tcp_connections):
                if conn.session is None:
                    conn.close()
        for session in list(self.sessions.values()):
            if not session.closed:
                session.start_close()
        self._backlog.put_nowait(None)
        # kept: the loop holds only a weak reference to a task
        self._finisher = self._loop.create_task(self._finish_close())

    async def _finish_close(self) -> None:
        try:
            deadline = clock() + SERVER_CLOSE_GRACE
            while self.sessions and clock() < deadline:
                await asyncio.wait([asyncio.ensure_future(s.wait_closed()) for s in self.sessions.values()],
                                   timeout=deadline - clock())
            for session in list(self.sessions.values()):
                session.abort("the server closed")
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=1.0)
            if self._udp is not None:
                self._udp.close()
            if self._tcp is not None:
                await self._tcp.wait_closed()
        finally:
            if not self._closed.done():
                self._closed.set_result(None)

    async def wait_closed(self) -> None:
        """Wait until close() has finished: sessions ended, sockets closed."""
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()
        await self.wait_closed()

    def __repr__(self) -> str:
        return f"<Server {self.url.scheme} {self.address} sessions={len(self.sessions)}>"


def serve(handler: Handler | None, url: str, *, ssl: SSLContext | None = None,
          **settings: Unpack[SessionOptions]) -> Opening[Server]:
    """Listen for sessions at `url` (udp://, tcp:// or tls://; port 0 picks a free port, see
    `Server.address`): `server = await tether.serve(...)`, or `async with tether.serve(...)
    as server:` (the block's end closes the server and waits for it). Each new session goes
    to `await handler(session)` in its own task (the session is closed when the handler
    returns), or, with handler None, to `Server.accept()`. `settings` are SessionSettings'
    fields (docs/configuration.md), for every session of the server.

    tls:// needs `ssl`, a server `ssl.SSLContext` with the server's certificate
    (`ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)` and `load_cert_chain()`; for
    mutual TLS also `verify_mode = ssl.CERT_REQUIRED` and `load_verify_locations()`).
    A client's handshake may take connect_timeout.

    Raises ValueError/TypeError for a bad handler, URL, setting or ssl= (at once), OSError
    when the address cannot be bound."""
    if handler is not None and not callable(handler):
        raise TypeError(f"handler must be an async callable or None, not {type(handler).__name__}")
    session_url = parse(url)
    context = tls.server_context(session_url, ssl)
    session_settings = SessionSettings.from_kwargs(**settings)

    async def opening() -> Server:
        server = Server(session_url, session_settings, handler, context)
        await server._start()
        return server

    return Opening(opening)
