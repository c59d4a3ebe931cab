"""`SimLoop`: an asyncio event loop on a simulated clock that runs real PostgreSQL round
trips one at a time, so a seeded run of queue managers on one database replays the same.

`loop.time()` is simulated: it stands still while anything is left to do, and jumps to the
next timer (a receive timeout, the sweeper, a lease renewal, an actor's sleep) only when the
loop is idle: no callback ready, no database answer owed, no notification on its way. The
managers' clock (QueueManager.open(clock=...)) is `loop.clock`, the simulated time as epoch
seconds, and the PostgreSQL store hands it to every statement as `tether.now`, so TTLs, lock
expiry, retry delays, scheduled messages and leases all run on it.

Determinism comes from running ONE ready callback at a time, and before each, waiting (in
real time) until every database connection has answered what it was asked (`Wire` counts
the Sync/Query messages sent and the ReadyForQuery messages back) and every notification a
committed NOTIFY set off has reached each LISTENing connection. So every statement runs
alone, in an order that depends only on the seed. One exception is waited out exactly: a
statement blocked on a row lock another transaction holds (its next step is a callback still
to run) is recognised by asking `pg_stat_activity` from a side connection, and the loop goes
on; once anything else finishes, blocked statements are waited for again (they may run now).
"""
from __future__ import annotations

import asyncio
import heapq
import select
import selectors
import socket
import struct
import threading
import time
import weakref
from asyncio import selector_events
from collections.abc import Iterator
from typing import Any

#: The simulated clock's epoch-seconds origin (messages carry realistic timestamps).
EPOCH = 1_800_000_000.0
#: Longest real wait for the database before the run is declared stuck (seconds).
STUCK_AFTER = 60.0
#: Real seconds a statement may take before pg_stat_activity is asked whether it waits on a lock.
LOCK_CHECK_AFTER = 0.02
#: Real time a notification may take to reach every listener before the run is stuck.
NOTIFY_WAIT = 30.0
#: The barrier: an empty notification on the queues' channel (a queue named "" has no
#: receivers: the managers ignore it). Delivered in commit order, so once a listener has it,
#: it has everything committed before.
MARKER_CHANNEL = b"tether_q"


class Wire:
    """What one database connection owes: answers (ReadyForQuery) and notifications."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.owed = 0               # requests not yet answered with ReadyForQuery
        self.started = False        # the startup message (untyped) was sent
        self.pid: int | None = None
        self.listening = False
        self.markers = 0            # barrier notifications (MARKER) received
        self.closed = False
        self.blocked = False        # its statement waits on a lock (pg_stat_activity)
        self.fd = -1
        self.sock: Any = None
        self.ending = False         # closed here; its server process may still be ending
        self._out = bytearray()
        self._in = bytearray()
        self._statements: dict[bytes, bool] = {}     # prepared name -> sends a NOTIFY
        self._tx_notifies = False
        self._tx_failed = False
        self._describing = 0        # prepares (Flush) not yet described back
        self._described = False
        self.committed_notify = False               # set at a commit that NOTIFYed

    def sent(self, data: bytes) -> None:
        self._out += data
        if not self.started:        # the startup message has no type byte
            if len(self._out) < 4 or len(self._out) < struct.unpack("!i", self._out[:4])[0]:
                return
            del self._out[:struct.unpack("!i", self._out[:4])[0]]
            self.started = True
            self.owed += 1          # authentication ends with ReadyForQuery (a CancelRequest: closing)
        for kind, body in _frames(self._out):
            if kind in (b"S", b"Q", b"H", b"X"):  # (H: asyncpg's prepare, Parse+Describe+Flush;
                #                                     X: Terminate, answered by closing)
                self.owed += 1
            if kind == b"H":
                self._describing += 1
            if kind == b"Q":
                sql = body.split(b"\0", 1)[0].upper()
                if b"PG_NOTIFY" in sql or sql.startswith(b"NOTIFY"):
                    self._tx_notifies = True
                if sql.startswith(b"LISTEN"):
                    self.listening = True
            elif kind == b"P":
                name, rest = body.split(b"\0", 1)
                sql = rest.split(b"\0", 1)[0].upper()
                self._statements[name] = b"PG_NOTIFY" in sql
                if sql.startswith(b"LISTEN"):
                    self.listening = True
            elif kind == b"B":
                _portal, statement, _ = body.split(b"\0", 2)
                if self._statements.get(statement):
                    self._tx_notifies = True

    def received(self, data: bytes) -> None:
        self._in += data
        for kind, body in _frames(self._in):
            if kind == b"t":                   # ParameterDescription, then Row- or NoData
                self._described = True
            elif kind in (b"T", b"n") and self._described:
                self._described = False
                self._describing -= 1
                self.owed = max(0, self.owed - 1)
            elif kind == b"E" and self._describing:
                self._describing -= 1
                self.owed = max(0, self.owed - 1)
            if kind == b"Z":
                self.owed = max(0, self.owed - 1)
                self.blocked = False
                if body[:1] == b"I":
                    if self._tx_notifies and not self._tx_failed:
                        self.committed_notify = True
                    self._tx_notifies = self._tx_failed = False
            if kind == b"E":
                self._tx_failed = True
            elif kind == b"A":
                _pid, channel, payload = body[:4], *body[4:].split(b"\0")[:2]
                if channel == MARKER_CHANNEL and payload == b"":
                    self.markers += 1
            elif kind == b"K":
                self.pid = struct.unpack("!i", body[:4])[0]


def _frames(buffer: bytearray) -> Iterator[tuple[bytes, bytes]]:
    """The complete typed messages (type byte, int32 length) at the front of `buffer`, each
    removed as it is given."""
    while len(buffer) >= 5:
        (length,) = struct.unpack("!i", buffer[1:5])
        if len(buffer) < 1 + length:
            return
        kind, body = bytes(buffer[0:1]), bytes(buffer[5:1 + length])
        del buffer[:1 + length]
        yield kind, body


def _holds_marker(sock: Any) -> bool:
    """The barrier notification (channel tether_q, empty payload) waits in `sock` unread."""
    try:
        return MARKER_CHANNEL + b"\0\0" in sock.recv(1 << 20, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True         # (closed: nothing more will come)


class _WatchedProtocol(asyncio.Protocol):
    """Passes everything to asyncpg's protocol, telling the Wire what arrives."""

    def __init__(self, real: Any, wire: Wire) -> None:
        self._real = real
        self._wire = wire

    def connection_made(self, transport: Any) -> None:
        self._real.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._wire.received(data)
        self._real.data_received(data)

    def eof_received(self) -> Any:
        return self._real.eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._wire.closed = True
        self._wire.ending = self._wire.pid is not None
        self._wire.owed = 0
        self._real.connection_lost(exc)

    def pause_writing(self) -> None:
        self._real.pause_writing()

    def resume_writing(self) -> None:
        self._real.resume_writing()


class _WatchedTransport(selector_events._SelectorSocketTransport):
    """A socket transport telling its Wire what is sent."""

    wire: Wire

    def write(self, data: Any) -> None:
        self.wire.sent(bytes(data))
        super().write(data)

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(bytes(d) for d in list_of_data))


class LockWatch:
    """A side connection (its own thread and loop) that says which backends wait on a lock."""

    def __init__(self, url: str) -> None:
        import asyncpg
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._conn = asyncio.run_coroutine_threadsafe(asyncpg.connect(url), self._loop).result(30)

    def mark(self) -> None:
        """Commit the barrier notification."""
        asyncio.run_coroutine_threadsafe(self._conn.execute("SELECT pg_notify('tether_q', '')"),
                                         self._loop).result(30)

    def alive(self, pids: list[int]) -> set[int]:
        rows = asyncio.run_coroutine_threadsafe(self._conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE pid = ANY($1::int4[])", pids), self._loop).result(30)
        return {r[0] for r in rows}

    def waiting(self, pids: list[int]) -> set[int]:
        rows = asyncio.run_coroutine_threadsafe(self._conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid = ANY($1::int4[])", pids),
            self._loop).result(30)
        return {r[0] for r in rows}

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._conn.close(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class SimLoop(asyncio.SelectorEventLoop):
    """The loop (see the module docstring). `lock_url`: the URL of the managers' database
    (LockWatch's side connection; the barrier NOTIFY must be sent in that database)."""

    def __init__(self, lock_url: str) -> None:
        super().__init__(selectors.DefaultSelector())
        self._sim_now = 0.0
        self._wires: list[Wire] = []
        self._by_transport: dict[Any, Wire] = {}
        self._lock_watch = LockWatch(lock_url)
        self.callbacks = 0
        self.round_trips = 0
        self.lock_waits = 0
        self.barriers = 0
        self._fired: weakref.WeakSet = weakref.WeakSet()

    # ---- the clock ----

    def time(self) -> float:
        return self._sim_now

    def clock(self) -> float:
        """The simulated time as epoch seconds (the managers' clock)."""
        return EPOCH + self._sim_now

    def run_in_executor(self, executor: Any, func: Any, *args: Any) -> asyncio.Future:
        """Inline: work done in a thread (asyncpg resolving 127.0.0.1) would finish at a
        real moment the simulated clock cannot see."""
        future = self.create_future()
        try:
            future.set_result(func(*args))
        except BaseException as exc:        # (delivered to the awaiting caller)
            future.set_exception(exc)
        return future

    # ---- watching the database's sockets ----

    def _make_socket_transport(self, sock: Any, protocol: Any, waiter: Any = None, *, extra: Any = None,
                               server: Any = None) -> Any:
        wire = Wire(len(self._wires))
        self._wires.append(wire)
        transport = _WatchedTransport.__new__(_WatchedTransport)
        transport.wire = wire
        wire.fd = sock.fileno()
        wire.sock = sock
        _WatchedTransport.__init__(transport, self, sock, _WatchedProtocol(protocol, wire), waiter, extra, server)
        self._by_transport[transport] = wire
        return transport

    def _owing(self) -> list[Wire]:
        """Connections owing an answer that can arrive (their socket is being read: a new
        one's reader is registered by a callback still to run)."""
        fds = self._selector.get_map()
        out = []
        for w in self._wires:
            if w.closed or w.owed <= 0 or w.blocked:
                continue
            key = fds.get(w.fd)
            if key is not None and key.data[0] is not None:
                out.append(w)
        return out

    def _writing(self) -> bool:
        """A socket waits to become writable (a connection being made); one whose callback
        ran already is done (its removal is a callback still to run)."""
        return any(key.data[1] is not None and key.data[1] not in self._fired
                   for key in self._selector.get_map().values())

    def _poll(self, timeout: float, only: set[Wire] | None = None, writes_only: bool = False) -> bool:
        """Handle the sockets ready within `timeout` (real seconds): read them now, in the
        order the connections were made (`only`: just those connections'; `writes_only`:
        just sockets becoming writable, a connection being made; the rest stays in the
        sockets for later). True when something was handled."""
        if only is not None:
            if not select.select([w.fd for w in only if not w.closed], [], [], timeout)[0]:
                return False
            timeout = 0
        events = self._selector.select(timeout)
        if writes_only:
            events = [(key, selectors.EVENT_WRITE) for key, mask in events if mask & selectors.EVENT_WRITE]
            if not events:
                return False
        if not events:
            return False
        start = len(self._ready)
        self._process_events(events)
        handles = list(self._ready)[start:]
        for _ in range(len(handles)):
            self._ready.pop()

        def wire_of(handle: Any) -> Wire | None:
            return self._by_transport.get(getattr(handle._callback, "__self__", None))
        ran = False
        for handle in sorted(handles, key=lambda h: wire_of(h).index if wire_of(h) is not None else -1):
            if only is not None and wire_of(handle) not in only:
                continue
            if not handle._cancelled:
                self._fired.add(handle)
                handle._run()
                ran = True
        return ran

    def _drain(self) -> None:
        """Wait (real time) until the database owes nothing but lock-blocked statements,
        and what committed NOTIFYs sent reached every listener. Answers are taken in the
        order the connections were made, whatever order they arrive in."""
        started = time.monotonic()
        asked_at = None
        while True:
            ending = [w for w in self._wires if w.ending]
            if ending:
                # a dropped connection's server process rolls back what it held: wait until
                # it is gone, so what its locks blocked runs now, not at a real moment
                alive = self._lock_watch.alive([w.pid for w in ending])
                for w in ending:
                    w.ending = w.pid in alive
                for w in self._wires:           # what it blocked may run now
                    w.blocked = False
                if alive:
                    time.sleep(0.002)
                    if time.monotonic() - started > STUCK_AFTER:
                        raise RuntimeError("a dropped connection's server process did not end")
                continue
            if self._writing():        # a connection being made, or a write backed up
                self._poll(0.005, writes_only=True)     # (answers stay: taken in order below)
                if time.monotonic() - started > STUCK_AFTER:
                    raise RuntimeError(f"a socket was not writable within {STUCK_AFTER} s")
                continue
            owing = self._owing()
            if not owing:
                notifying = [w for w in self._wires if w.committed_notify]
                if not notifying:
                    return
                for w in notifying:
                    w.committed_notify = False
                self._barrier()
                continue
            target = owing[0]
            if self._poll(0.005, {target}):
                self.round_trips += 1
                asked_at = None
                if target.owed == 0 or target.committed_notify:
                    for w in self._wires:       # something finished: a blocked one may run now
                        w.blocked = False
                continue
            if asked_at is None:
                asked_at = time.monotonic()
            elif target.pid is not None and time.monotonic() - asked_at > LOCK_CHECK_AFTER:
                if target.pid in self._lock_watch.waiting([target.pid]):
                    target.blocked = True       # (its lock's holder has a callback to run)
                    self.lock_waits += 1
                    asked_at = None
                    continue
            if time.monotonic() - started > STUCK_AFTER:
                raise RuntimeError(f"the database did not answer within {STUCK_AFTER} s: "
                                   f"{[(w.index, w.pid, w.owed) for w in owing]}")

    def _barrier(self) -> None:
        """Every notification committed so far has reached every listener: the marker is
        committed after them, and each listener's socket is read only once the marker is in
        all of them (peeked), all in connection order, so no listener hears first by chance."""
        listeners = [w for w in self._wires if w.listening and not w.closed]
        want = {w: w.markers + 1 for w in listeners}
        self._lock_watch.mark()
        self.barriers += 1
        deadline = time.monotonic() + NOTIFY_WAIT
        while not all(w.closed or _holds_marker(w.sock) for w in listeners):
            if time.monotonic() > deadline:
                raise RuntimeError("a committed NOTIFY did not reach every listener")
            time.sleep(0.001)
        while any(w.markers < n and not w.closed for w, n in want.items()):
            if time.monotonic() > deadline:
                raise RuntimeError("a committed NOTIFY did not reach every listener")
            self._poll(0.005, set(listeners))

    # ---- running ----

    def _run_once(self) -> None:
        self._drain()
        self._due()
        if self._ready:
            handle = self._ready.popleft()
            if not handle._cancelled:
                self.callbacks += 1
                handle._run()
            return
        if self._poll(0):
            return
        while self._scheduled and self._scheduled[0]._cancelled:
            heapq.heappop(self._scheduled)
            self._timer_cancelled_count = max(0, self._timer_cancelled_count - 1)
        if self._scheduled:
            self._sim_now = max(self._sim_now, self._scheduled[0]._when)
            self._due()
        elif not self._poll(0.05) and self._stopping:
            return

    def _due(self) -> None:
        while self._scheduled and (self._scheduled[0]._cancelled or self._scheduled[0]._when <= self._sim_now):
            handle = heapq.heappop(self._scheduled)
            if handle._cancelled:
                self._timer_cancelled_count = max(0, self._timer_cancelled_count - 1)
                continue
            handle._scheduled = False
            self._ready.append(handle)

    def close(self) -> None:
        try:
            self._lock_watch.close()
        finally:
            super().close()


def run(coroutine_factory: Any, lock_url: str) -> tuple[Any, SimLoop]:
    """Run `coroutine_factory(loop)` to its end on a new SimLoop; (its result, the loop)."""
    loop = SimLoop(lock_url)
    try:
        asyncio.set_event_loop(loop)
        result = loop.run_until_complete(coroutine_factory(loop))
        loop.run_until_complete(loop.shutdown_asyncgens())
        return result, loop
    finally:
        asyncio.set_event_loop(None)
        loop.close()
