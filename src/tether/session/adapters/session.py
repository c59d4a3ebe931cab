"""`Session`: the application's handle on one reliable session. It drives a sans-IO
SessionEngine with the event loop's clock, moves packets to and from a link (a UDP peer or a
TCP connection), and keeps one deadline in the loop's TimerService."""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, Protocol

from ... import census
from ...errors import RetryLimitExceeded, SendQueueFull, SequenceClosed, TetherError
from ..sansio.engine import SessionEngine
from ..sansio.events import Connected, MessagesDelivered, PeerClosed, SessionEnded
from ..sansio.settings import SessionSettings
from .timers import clock, timer_service

# The most send_nowait() lets a session hold unacknowledged (queued or in flight); beyond
# it SendQueueFull. send() waits at one window instead.
SEND_NOWAIT_MAX_BYTES = 64 * 1024 * 1024
SEND_NOWAIT_MAX_MESSAGES = 1 << 20


class Link(Protocol):
    """Where a session's packets go."""

    def transmit(self, packets: list[bytes]) -> None: ...
    def close(self) -> None: ...
    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


class Session:
    """One reliable session (exactly once, in order unless ordered=False).

    `send`/`send_many` wait while the window is full (flow control); `recv`/`recv_many` and
    `async for` deliver messages; `flush` waits until everything sent is acknowledged;
    `close` flushes, then ends the session gracefully. A fault of the session is raised by
    the next call as the matching `tether.TetherError` subclass.
    """

    def __init__(self, engine: SessionEngine, link: Link | None,
                 loop: asyncio.AbstractEventLoop | None = None, *, transport: str = "udp") -> None:
        self._engine = engine
        #: "udp", "tcp" or "tls": what the session runs over
        self.transport = transport
        self._link = link
        self._loop = loop or asyncio.get_running_loop()
        self._timers = timer_service(self._loop)
        self._inbox: deque[bytes] = deque()
        self._consumed = 0
        # release delivered buffer space to the peer in batches, not per message
        self._release_batch = max(1, engine.settings.max_transfer_window // 4)
        self._eof = False
        self._ended = False
        self._error: TetherError | None = None
        self._scheduled = False
        # every task waiting in recv()/recv_many(): all are woken and re-check the inbox, so
        # concurrent receivers are never stranded by a later one
        self._recv_waiters: list[asyncio.Future[Any]] = []
        self._space_waiters: list[asyncio.Future[Any]] = []
        self._flush_waiters: list[asyncio.Future[Any]] = []
        self._connected = self._loop.create_future()
        self._closed = self._loop.create_future()
        self._on_end: list[Callable[[Session], None]] = []
        self._listener: Callable[[], None] | None = None
        self._link_listener: Callable[[Link | None], None] | None = None
        self.accepted = False
        census.session_started(self)

    # ---- identity ----

    @property
    def session_id(self) -> int:
        """The 63-bit id both sides name the session by (the server routes on it)."""
        return self._engine.session_id

    @property
    def settings(self) -> SessionSettings:
        """This side's settings (validated)."""
        return self._engine.settings

    @property
    def engine(self) -> SessionEngine:
        """The sans-IO engine (for diagnostics; drive the session through this object)."""
        return self._engine

    @property
    def link(self) -> Link | None:
        """Where the session's packets go now (None while a TCP session is disconnected)."""
        return self._link

    @property
    def peer_address(self) -> Any:
        """The peer's socket address now (it may change over UDP), or None when disconnected."""
        return None if self._link is None else self._link.get_extra_info("peername")

    @property
    def local_address(self) -> Any:
        """This side's socket address, or None when disconnected."""
        return None if self._link is None else self._link.get_extra_info("sockname")

    @property
    def peer_certificate(self) -> dict[str, Any] | None:
        """Over tls://, the peer's certificate as `ssl.SSLSocket.getpeercert()` gives it (a
        server has a client's only if its context asks for one); None over udp:// and
        tcp://, and while disconnected."""
        return None if self._link is None else self._link.get_extra_info("peercert")

    @property
    def stats(self) -> dict[str, Any]:
        """sent, resent, acked, delivered, duplicates, rtt, rto, window, in_flight, cwnd, ..."""
        return self._engine.stats

    @property
    def closed(self) -> bool:
        """The session has ended (gracefully or by a fault)."""
        return self._ended

    @property
    def error(self) -> TetherError | None:
        """The fault that ended the session, if any."""
        return self._error

    @property
    def at_eof(self) -> bool:
        """The peer closed its side and every message has been received."""
        return (self._eof or self._ended) and not self._inbox

    @property
    def peer_closed(self) -> bool:
        """The peer ended its sequence (half-close or close): no message will arrive after
        those already waiting. Unlike at_eof, False when the session ended any other way."""
        return self._eof

    @property
    def unacknowledged_bytes(self) -> int:
        """Bytes given to send() that the peer has not acknowledged yet (queued or in flight):
        what an asyncio Transport reports as its write buffer size."""
        if self._ended:
            return 0
        return self._engine.unacknowledged_bytes

    @property
    def unfragmented_size(self) -> int:
        """The largest message that travels whole: the smaller of both sides'
        max_message_size and, over UDP, what fits one datagram (larger ones are fragmented)."""
        engine = self._engine
        size = min(engine.settings.max_message_size, engine.peer_max_message_size)
        fragment = engine.fragment_size
        return size if fragment is None else min(size, fragment)

    # ---- sending ----

    async def send(self, data: bytes) -> None:
        """Send one message; waits while the window is full."""
        await self.send_many((data,))

    async def send_many(self, messages: Iterable[bytes]) -> None:
        """Send messages in order; one call moves them to the engine in window-sized batches."""
        if not isinstance(messages, (list, tuple)):
            messages = list(messages)
        engine = self._engine
        total = len(messages)
        done = 0
        while done < total:
            if self._ended:
                raise self._error or SequenceClosed("the session is closed")
            room = engine.send_capacity
            if room <= 0:
                await self._wait(self._space_waiters)
                continue
            chunk = messages if (done == 0 and room >= total) else messages[done:done + room]
            engine.send(chunk if isinstance(chunk, list) else list(chunk), clock())
            done += len(chunk)
            self._schedule()

    def send_nowait(self, messages: list[bytes]) -> None:
        """Queue messages without waiting for window space: the caller bounds its own
        buffering (the asyncio Transport adapter pauses its protocol at its high-water
        mark). Raises SendQueueFull, queueing nothing, when the session would then hold
        more than SEND_NOWAIT_MAX_BYTES (64 MiB) or SEND_NOWAIT_MAX_MESSAGES (2**20)
        unacknowledged."""
        if self._ended:
            raise self._error or SequenceClosed("the session is closed")
        engine = self._engine
        count = engine.unacknowledged_count + len(messages)
        size = engine.unacknowledged_bytes + sum(map(len, messages))
        if count > SEND_NOWAIT_MAX_MESSAGES or size > SEND_NOWAIT_MAX_BYTES:
            raise SendQueueFull(
                f"send_nowait() would leave {count} messages ({size} bytes) unacknowledged, "
                f"beyond {SEND_NOWAIT_MAX_MESSAGES} messages or {SEND_NOWAIT_MAX_BYTES} bytes: "
                f"wait for acknowledgements (send(), drain(), flush())")
        engine.send(messages, clock())
        self._schedule()

    async def flush(self) -> None:
        """Wait until every message sent so far has been acknowledged by the peer (who is
        asked to acknowledge at once rather than after its ack_interval)."""
        self.ask_for_ack()
        while not self._engine.all_acknowledged:
            if self._ended:
                raise self._error or SequenceClosed("the session ended before everything was acknowledged")
            self._schedule()
            await self._wait(self._flush_waiters)

    def ask_for_ack(self) -> None:
        """Ask the peer to acknowledge everything sent so far at once, without waiting (the
        peer otherwise acknowledges within its ack_interval, or when this side's window is
        nearly full). For callers that wait for acknowledgements by other means."""
        if not self._ended and not self._engine.all_acknowledged:
            self._engine.flush(clock())
            self._schedule()

    # ---- receiving ----

    async def recv(self) -> bytes:
        """The next message. Raises SequenceClosed once the peer has closed and everything
        was delivered, or the session's fault."""
        while not self._inbox:
            self._raise_if_done()
            await self._wait_inbox()
        self._consumed += 1
        if self._consumed >= self._release_batch or len(self._inbox) == 1:
            self._release_consumed()
        return self._inbox.popleft()

    async def recv_many(self, max_count: int | None = None) -> list[bytes]:
        """Every message waiting (at most max_count), waiting for at least one."""
        if max_count is not None and max_count < 1:
            raise ValueError(f"max_count must be at least 1, not {max_count}")
        while not self._inbox:
            self._raise_if_done()
            await self._wait_inbox()
        inbox = self._inbox
        if max_count is None or max_count >= len(inbox):
            out = list(inbox)
            inbox.clear()
        else:
            out = [inbox.popleft() for _ in range(max_count)]
        self._consumed += len(out)
        self._release_consumed()
        return out

    def recv_many_nowait(self, max_count: int | None = None) -> list[bytes]:
        """The messages waiting now (at most max_count), possibly none; never waits. Taking
        them frees their receive-buffer space as recv_many does, so a caller that stops
        taking them holds the peer back by flow control."""
        if max_count is not None and max_count < 1:
            raise ValueError(f"max_count must be at least 1, not {max_count}")
        inbox = self._inbox
        if not inbox:
            return []
        if max_count is None or max_count >= len(inbox):
            out = list(inbox)
            inbox.clear()
        else:
            out = [inbox.popleft() for _ in range(max_count)]
        self._consumed += len(out)
        if self._consumed >= self._release_batch or not inbox:
            self._release_consumed()
        return out

    def _release_consumed(self) -> None:
        """Free the consumed messages' buffer space now; a pump only when that makes an ack
        due (the peer was held back by a full buffer), not one per receive: otherwise the
        space rides with the next ack, as it would from a pump."""
        if self._consumed and not self._ended:
            consumed, self._consumed = self._consumed, 0
            if self._engine.release(consumed, clock()):
                self._schedule()

    def set_listener(self, listener: Callable[[], None] | None) -> None:
        """Call listener() after every batch of work the session does (packets in, acks,
        timers, sends, the end), or stop with None. Adapters that are told rather than
        awaiting (the asyncio Transport) deliver messages and track acks from it."""
        self._listener = listener

    def __aiter__(self) -> Session:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except SequenceClosed:
            if self._inbox:
                raise
            raise StopAsyncIteration from None

    def _raise_if_done(self) -> None:
        if self._error is not None:
            raise self._error
        if self._eof or self._ended:
            raise SequenceClosed("the peer closed the session")

    async def _wait_inbox(self) -> None:
        await self._wait(self._recv_waiters)

    # ---- closing ----

    async def close(self, timeout: float | None = None) -> None:
        """Flush, then end the session gracefully (CloseSequence, TerminateSequence).
        Raises the fault if the session fails while closing. After `timeout` seconds (the
        session's close_timeout unless given) the session is aborted (the peer gets
        SequenceTerminated) and close() raises TimeoutError."""
        if self._ended:
            return
        if timeout is None:
            timeout = self._engine.settings.close_timeout
        self.start_close()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._closed)
        except TimeoutError:
            self.abort(f"close timed out after {timeout} s")
            raise TimeoutError(
                f"close() timed out after {timeout} s (close_timeout): the peer did not "
                f"acknowledge everything; the session was aborted") from None
        if self._error is not None:
            raise self._error

    def start_close(self) -> None:
        """Begin the graceful close without waiting for it (close() waits; wait_closed()
        can wait later)."""
        if not self._ended:
            self._engine.close(clock())
            self.pump()

    def close_sending(self) -> None:
        """Half-close: the peer gets EOF after the last message sent; receiving goes on."""
        self._engine.close_sending(clock())
        self._schedule()

    def abort(self, reason: str = "aborted by the peer") -> None:
        """End the session now; what is unacknowledged is dropped."""
        if not self._ended:
            self._engine.abort(clock(), reason)
            self.pump()

    def fail(self, error: TetherError) -> None:
        """Fault the session with a local error (adapters use it for undecodable input)."""
        if not self._ended:
            self._engine.fail(error, clock())
            self.pump()

    async def wait_closed(self) -> None:
        """Wait until the session has ended, however it ends."""
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if exc_type is None:
            await self.close()
        else:
            self.abort(f"the peer's application failed: {exc_type.__name__}")

    def add_end_callback(self, callback: Callable[[Session], None]) -> None:
        """Call callback(session) once the session has ended (adapters clean up with it)."""
        if self._ended:
            self._loop.call_soon(callback, self)
        else:
            self._on_end.append(callback)

    # ---- driving the engine (adapters call these) ----

    def attach(self, link: Link | None) -> None:
        """Send through `link` from now on (a new connection after a resume, or None while
        disconnected)."""
        changed = link is not self._link
        self._link = link
        if changed and self._link_listener is not None and not self._ended:
            self._link_listener(link)

    def set_link_listener(self, listener: Callable[[Link | None], None] | None) -> None:
        """Call listener(link) whenever the session gets a new connection, or loses one
        (None: a TCP connection dropped and the session waits for the peer to resume). The
        queue service starts its client grace period there."""
        self._link_listener = listener

    def feed(self, body: bytes) -> None:
        """A packet arrived from the peer."""
        self._engine.receive_packet(body, clock())
        self.pump()

    def feed_many(self, bodies: list[Any]) -> None:
        """Packets that arrived together (a batch of datagrams), in order: handed to the
        engine in one call, then one pump for all of them."""
        self._engine.receive_packets(bodies, clock())
        self.pump()

    def on_timer(self, now: float) -> None:
        """The session's deadline has come (the TimerService calls this)."""
        self._engine.handle_timer(now)
        self.pump()

    async def wait_connected(self, timeout: float) -> None:
        """Wait for the handshake to complete. Raises the session's fault, or
        RetryLimitExceeded after `timeout` seconds; either way, or if cancelled, the session
        has ended when this raises."""
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._connected)
        except TimeoutError:
            self.abort("connect timed out")
            raise RetryLimitExceeded(f"no answer to CreateSequence within {timeout} s") from None
        except BaseException:
            # cancelled: end the half-made session now, or its timers go on retransmitting
            # CreateSequence until the retry limit
            self.abort("connect was given up")
            raise

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._run_scheduled)

    def _run_scheduled(self) -> None:
        self._scheduled = False
        self.pump()

    def pump(self) -> None:
        """Run the engine now: release consumed buffer space, take its events, transmit
        its packets, re-arm its timer, wake waiters. Adapters call it after handing the
        engine packets themselves (through the server's Demux)."""
        engine = self._engine
        now = clock()
        if self._consumed:
            engine.release(self._consumed, now)
            self._consumed = 0
        self._handle_events(engine.events())
        packets = engine.packets_to_send(now)
        if packets and self._link is not None:
            self._link.transmit(packets)
        self._handle_events(engine.events())
        self._timers.set(self, engine.next_timer())
        if self._space_waiters and (engine.send_capacity > 0 or self._ended):
            _wake_all(self._space_waiters)
        if self._flush_waiters and (engine.all_acknowledged or self._ended):
            _wake_all(self._flush_waiters)
        if self._listener is not None:
            self._listener()

    def _handle_events(self, events: list[Any]) -> None:
        for event in events:
            kind = type(event)
            if kind is MessagesDelivered:
                self._inbox.extend(event.messages)
                self._wake_recv()
            elif kind is Connected:
                if not self._connected.done():
                    self._connected.set_result(None)
            elif kind is PeerClosed:
                self._eof = True
                self._wake_recv()
            elif kind is SessionEnded:
                self._finish(event.error)

    def _finish(self, error: TetherError | None) -> None:
        if self._ended:
            return
        self._ended = True
        self._error = error
        census.session_ended(self, self._engine.messages_resent)
        self._timers.cancel(self)
        if not self._connected.done():
            if error is not None:
                self._connected.set_exception(error)
                self._connected.exception()  # retrieved: connect() re-raises it
            else:
                self._connected.set_result(None)
        if not self._closed.done():
            self._closed.set_result(None)
        self._wake_recv()
        _wake_all(self._space_waiters)
        _wake_all(self._flush_waiters)
        callbacks, self._on_end = self._on_end, []
        for callback in callbacks:
            self._loop.call_soon(callback, self)

    def _wake_recv(self) -> None:
        if self._recv_waiters:
            _wake_all(self._recv_waiters)

    async def _wait(self, waiters: list[asyncio.Future[Any]]) -> None:
        waiter = self._loop.create_future()
        waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in waiters:
                waiters.remove(waiter)

    def __repr__(self) -> str:
        return f"<Session {self.session_id:#x} {self._engine.state.value}>"


def _wake_all(waiters: list[asyncio.Future[Any]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
    waiters.clear()


AsyncHandler = Callable[[Session], Awaitable[None]]
