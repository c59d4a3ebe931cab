"""`SessionTransport`: an `asyncio.Transport` over one reliable session, so unmodified
asyncio protocols (and `asyncio.StreamReader`/`StreamWriter`) run over tether.

Bytes written are cut into messages no larger than the session carries whole; every
message delivered is handed to the protocol in order (`data_received`, or
`get_buffer`/`buffer_updated` for a `BufferedProtocol`); the peer's half-close is
`eof_received`; the session's end is `connection_lost`, always last.

Backpressure runs both ways through the session's flow control:
- reading: `pause_reading()` stops taking messages from the session, so their receive-buffer
  space is not released and the peer's sender is held back by its window;
- writing: the write buffer is every byte written and not yet acknowledged by the peer
  (ours + queued in the session + in flight); the protocol's `pause_writing()` and
  `resume_writing()` are called exactly once per crossing of the high and low marks
  (after uvloop's flowcontrol), so `StreamWriter.drain()` waits for the peer.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Iterable

from ..errors import SendQueueFull, TetherError
from ..session.adapters.session import Session

log = logging.getLogger("tether.streams")

# asyncio's and uvloop's default high-water mark; the low mark defaults to a quarter of it.
DEFAULT_HIGH_WATER = 64 * 1024
# asyncio warns once this many writes were made after the connection was lost.
LOG_THRESHOLD_FOR_CONNLOST_WRITES = 5
# What asyncio's TLS transports tell, taken from the session's current connection.
TLS_EXTRA_INFO = frozenset({"peercert", "cipher", "compression", "ssl_object", "sslcontext"})


def write_buffer_limits(high: int | None = None, low: int | None = None) -> tuple[int, int]:
    """(high, low) as asyncio and uvloop resolve them: high defaults to 64 KiB (or 4 * low),
    low to high // 4. Raises ValueError unless high >= low >= 0."""
    if high is None:
        high = DEFAULT_HIGH_WATER if low is None else 4 * low
    if low is None:
        low = high // 4
    if not high >= low >= 0:
        raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
    return high, low


class SessionTransport(asyncio.Transport):
    """An `asyncio.Transport` whose byte stream is carried by a tether `Session`.

    Made by `tether.create_connection`/`create_server` (and the streams functions); the
    protocol gets `connection_made`, `data_received`*, `eof_received`, `connection_lost`
    in asyncio's order. `get_extra_info` knows `peername`, `sockname`, `session` (the
    `tether.Session`) and `stats` (the session's counters, read at the call), and over
    tls:// those of asyncio's TLS transports: `peercert`, `cipher`, `compression`,
    `ssl_object` and `sslcontext` (of the connection the session uses now).
    """

    def __init__(self, session: Session, protocol: asyncio.BaseProtocol,
                 loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._session = session
        self._loop = loop
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)
        # Messages no larger than the session carries whole (no fragments over UDP).
        self._chunk_size = session.unfragmented_size
        self._write_buffer: list[bytes] = []      # written, not yet handed to the session
        self._write_buffer_size = 0
        self._flush_scheduled = False
        self._high_water, self._low_water = write_buffer_limits()
        self._protocol_paused = False             # pause_writing() called, resume not yet
        self._reading_paused = False
        self._closing = False                     # close()/abort() called, or connection lost
        self._eof_written = False
        self._eof_delivered = False
        self._delivering = False
        self._forced = False                      # abort() or a protocol failure
        self._forced_exc: BaseException | None = None
        self._conn_lost = 0
        self._lost = False
        self._close_task: asyncio.Task | None = None
        self._done = loop.create_future()

    # ---- start ----

    def _start(self, waiter: asyncio.Future | None = None) -> None:
        """Call connection_made soon, then start delivering; set waiter after it (as
        asyncio's transports do, so create_connection returns a made connection)."""
        self._loop.call_soon(self._connection_made)
        if waiter is not None:
            self._loop.call_soon(_set_result_unless_cancelled, waiter, None)

    def _connection_made(self) -> None:
        # registered first: connection_lost must follow even if connection_made fails
        self._session.add_end_callback(self._on_session_end)
        try:
            self._protocol.connection_made(self)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.connection_made() call failed.")
            return
        self._session.set_listener(self._on_session_activity)
        self._on_session_activity()

    # ---- BaseTransport ----

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """peername, sockname, session (the tether.Session) and stats (its counters); over
        tls:// also peercert, cipher, compression, ssl_object and sslcontext."""
        session = self._session
        if name == "peername":
            value = session.peer_address
        elif name == "sockname":
            value = session.local_address
        elif name == "session":
            value = session
        elif name == "stats":
            value = session.stats
        elif name in TLS_EXTRA_INFO and session.link is not None:
            value = session.link.get_extra_info(name)
        else:
            value = None
        return default if value is None else value

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Stop reading; send everything written, then end the session gracefully
        (`connection_lost(None)` follows, or the fault if the session fails meanwhile)."""
        if self._closing:
            return
        self._closing = True
        self._flush_writes()
        if self._session.closed:
            self._loop.call_soon(self._connection_lost, self._session.error)
        else:
            self._close_task = self._loop.create_task(self._close_session())

    async def _close_session(self) -> None:
        try:
            await self._session.close()
        except (TetherError, TimeoutError):
            pass  # the session's end callback hands the fault to connection_lost

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    # ---- ReadTransport ----

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._closing

    def pause_reading(self) -> None:
        """Stop delivering. Messages stay in the session unreleased, so once its receive
        buffer is full the peer cannot send more (flow control)."""
        if self._closing or self._reading_paused:
            return
        self._reading_paused = True

    def resume_reading(self) -> None:
        if self._closing or not self._reading_paused:
            return
        self._reading_paused = False
        self._loop.call_soon(self._deliver)

    # ---- WriteTransport ----

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the marks at which the protocol is paused (size > high) and resumed
        (size <= low); defaults and validation as asyncio's and uvloop's."""
        self._high_water, self._low_water = write_buffer_limits(high, low)
        self._maybe_pause_protocol()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """(low, high), as asyncio returns them."""
        return self._low_water, self._high_water

    def get_write_buffer_size(self) -> int:
        """Bytes written and not yet acknowledged by the peer: buffered here, queued in the
        session, or in flight."""
        return self._write_buffer_size + self._session.unacknowledged_bytes

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue bytes for the peer; never blocks (watch pause_writing or await drain())."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data:
            return
        if self._closing:
            self._conn_lost += 1
            if self._conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                log.warning("tether transport write() after close or connection loss: data dropped")
            return
        if type(data) is not bytes:
            data = bytes(data)  # the caller may reuse its buffer once write() returns
        self._write_buffer.append(data)
        self._write_buffer_size += len(data)
        if self._write_buffer_size >= self._chunk_size:
            self._flush_writes()
        elif not self._flush_scheduled:
            # small writes made in one loop iteration travel together as one message
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_soon)
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        """Write every buffer in order, as one write()."""
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        """Half-close: the peer gets EOF after the last byte written; reading goes on."""
        if self._closing or self._eof_written:
            return
        self._eof_written = True
        self._flush_writes()
        self._session.close_sending()

    def can_write_eof(self) -> bool:
        return True

    def abort(self) -> None:
        """End the session at once; what is unsent or unacknowledged is dropped.
        `connection_lost(None)` follows."""
        self._force_close(None, "the peer's application aborted the connection")

    # ---- writing into the session ----

    def _flush_soon(self) -> None:
        self._flush_scheduled = False
        self._flush_writes()

    def _flush_writes(self) -> None:
        buffer = self._write_buffer
        if not buffer:
            return
        data = buffer[0] if len(buffer) == 1 else b"".join(buffer)
        buffer.clear()
        self._write_buffer_size = 0
        chunk = self._chunk_size
        if len(data) <= chunk:
            messages = [data]
        else:
            view = memoryview(data)
            messages = [bytes(view[i:i + chunk]) for i in range(0, len(data), chunk)]
        try:
            self._session.send_nowait(messages)
        except SendQueueFull as exc:
            # the protocol went on writing far past pause_writing(): end the connection
            self._force_close(exc, f"the writer ignored backpressure: {exc}")
        except TetherError:
            self._conn_lost += 1  # the session has ended; its end callback reports why

    def _maybe_pause_protocol(self) -> None:
        size = self.get_write_buffer_size()
        if size > self._low_water:
            # drain() waits for these acks: ask for them now, not after the peer's ack_interval
            self._session.ask_for_ack()
        if self._protocol_paused or size <= self._high_water:
            return
        self._protocol_paused = True
        try:
            self._protocol.pause_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler({
                "message": "protocol.pause_writing() failed",
                "exception": exc, "transport": self, "protocol": self._protocol})

    def _maybe_resume_protocol(self) -> None:
        if not self._protocol_paused or self.get_write_buffer_size() > self._low_water:
            return
        self._protocol_paused = False
        try:
            self._protocol.resume_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler({
                "message": "protocol.resume_writing() failed",
                "exception": exc, "transport": self, "protocol": self._protocol})

    # ---- the session tells us ----

    def _on_session_activity(self) -> None:
        """After every batch of session work: acks may have drained the write buffer,
        messages or the peer's EOF may have arrived."""
        if self._lost or self._session.closed:
            return  # the end callback takes over
        self._maybe_resume_protocol()
        self._deliver()

    def _on_session_end(self, session: Session) -> None:
        if self._lost:
            return
        if self._forced:
            self._connection_lost(self._forced_exc)
        elif session.error is not None or self._closing:
            self._connection_lost(session.error)
        else:
            # ended gracefully by the peer: what it sent is still delivered, then EOF
            self._deliver()

    def _deliver(self) -> None:
        """Hand waiting messages to the protocol one at a time, so pause_reading() in a
        callback leaves the rest unreleased; then EOF, then (if the session is over) the
        end."""
        session = self._session
        if self._delivering or self._lost or (session.closed and session.error is not None):
            return  # a fault: the end callback reports it, undelivered data is dropped
        self._delivering = True
        protocol = self._protocol
        where = "data_received" if not self._buffered else "buffer_updated"
        try:
            while not self._reading_paused and not self._closing:
                messages = session.recv_many_nowait(1)
                if not messages:
                    break
                if self._buffered:
                    _feed_buffered(protocol, messages[0])
                else:
                    protocol.data_received(messages[0])
            else:
                return  # paused or closed: the rest stays in the session
            if session.peer_closed and not self._eof_delivered:
                self._eof_delivered = True
                where = "eof_received"
                keep_open = protocol.eof_received()
                if not keep_open:
                    self.close()
                    return
            if session.closed and not self._closing:
                self._closing = True
                self._loop.call_soon(self._connection_lost, session.error)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, f"Fatal error: protocol.{where}() call failed.")
        finally:
            self._delivering = False

    # ---- the end ----

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        self._loop.call_exception_handler({
            "message": message, "exception": exc, "transport": self, "protocol": self._protocol})
        self._force_close(exc, f"the peer's protocol failed: {type(exc).__name__}")

    def _force_close(self, exc: BaseException | None, reason: str) -> None:
        if self._lost or self._forced:
            return
        self._forced = True
        self._forced_exc = exc
        self._closing = True
        self._write_buffer.clear()
        self._write_buffer_size = 0
        if self._session.closed:
            self._loop.call_soon(self._connection_lost, exc)
        else:
            self._session.abort(reason)  # its end callback calls connection_lost

    def _connection_lost(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._session.set_listener(None)
        self._write_buffer.clear()
        self._write_buffer_size = 0
        try:
            self._protocol.connection_lost(exc)
        finally:
            if not self._done.done():
                self._done.set_result(None)

    async def _wait_lost(self) -> None:
        """Until connection_lost has been called."""
        await asyncio.shield(self._done)

    def __repr__(self) -> str:
        state = "closed" if self._lost else "closing" if self._closing else "open"
        return f"<SessionTransport {state} session={self._session!r}>"


def _feed_buffered(protocol: asyncio.BufferedProtocol, data: bytes) -> None:
    """One message into a BufferedProtocol, in as many get_buffer() calls as it takes."""
    view = memoryview(data)
    remaining = len(view)
    while remaining:
        buf = protocol.get_buffer(remaining)
        target = memoryview(buf).cast("B")
        size = target.nbytes
        if not size:
            raise RuntimeError("get_buffer() returned an empty buffer")
        take = min(size, remaining)
        target[:take] = view[:take]
        protocol.buffer_updated(take)
        view = view[take:]
        remaining -= take


def _set_result_unless_cancelled(fut: asyncio.Future, result: Any) -> None:
    if not fut.cancelled():
        fut.set_result(result)
