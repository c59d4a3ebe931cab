"""`QueueClient`: a remote queue manager with the methods of `QueueManager`.

    async with QueueClient.connect("tcp://127.0.0.1:7600", prefetch=32) as client:
        await client.create_queue("orders")
        await client.send("orders", b"...")
        msg = await client.receive("orders", timeout=5)
        await msg.complete()

Requests travel over one reliable session (protocol.py); concurrent calls share frames, so
a round trip is paid per batch, not per message. Receiving is credit-based: the first
`receive()` of a queue subscribes with `prefetch` credits, the service delivers at most that
many messages ahead (each peek-locked), and every message taken returns one credit, so a
slow consumer is never flooded.

After the session is lost (service restarted, network down longer than the session
survives) the client reconnects with capped backoff, says HELLO with the same client id
and the locks it still holds, re-subscribes its consumers and resends every request still
unanswered. Sends carry ids chosen here and the service de-duplicates them, so a resent
send is queued once. A lock the service no longer knows (it restarted, or the lock
expired) makes complete()/abandon() raise LockLost; the message is redelivered, not lost.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections import deque
from types import TracebackType
from typing import Any, Generator
from urllib.parse import urlsplit

from ..errors import (LockLost, MessageTooLarge, ProtocolError, QueueError, SequenceClosed, TetherError,
                      TransactionError)
from . import protocol as P
from .info import QueueInfo
from .manager import check_headers
from .message import LOCKED, Message
from .settings import QueueSettings

log = logging.getLogger("tether.queue.client")

RECONNECT_FIRST = 0.05
RECONNECT_CAP = 2.0     # never more than this between reconnect attempts
DEFAULT_PREFETCH = 16
# requests that only mean something to the service process that saw the lock or transaction
_NEEDS_THE_SAME_SERVICE = (P.COMPLETE, P.ABANDON, P.TX_SEND, P.TX_COMMIT, P.TX_ROLLBACK)


def service_url(url: str) -> str:
    """The session URL of a queue manager: tcp://HOST:PORT, or tether://HOST:PORT[/...]
    (the queue in the path is ignored). ValueError naming what is wrong."""
    if not isinstance(url, str):
        raise TypeError(f"queue manager URL must be a string, not {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme not in ("tcp", "tether"):
        raise ValueError(f"bad queue manager URL {url!r}: use tcp://HOST:PORT or tether://HOST:PORT")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"bad queue manager URL {url!r}: port must be 1..65535") from None
    if not parts.hostname:
        raise ValueError(f"bad queue manager URL {url!r}: no host")
    if not port:
        raise ValueError(f"bad queue manager URL {url!r}: a port 1..65535 is required")
    if parts.scheme == "tcp" and parts.path not in ("", "/"):
        raise ValueError(f"bad queue manager URL {url!r}: tcp:// takes no path")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"tcp://{host}:{port}"


class _Consumer:
    """A subscription of this client to one queue: the prefetched messages and who waits."""

    __slots__ = ("consumer_id", "queue", "buffer", "waiters", "error", "subscribed", "subscribing",
                 "granted", "owed")

    def __init__(self, consumer_id: int, queue: str) -> None:
        self.consumer_id = consumer_id
        self.queue = queue
        self.buffer: deque[Message] = deque()
        self.waiters: deque[asyncio.Future] = deque()     # receive() calls waiting, oldest first
        self.error: BaseException | None = None
        self.subscribed = False
        self.subscribing: asyncio.Future | None = None     # the SUBSCRIBE in progress
        self.granted = 0        # credit the service still has for us
        self.owed = 0           # credit to return with the next frame

    def wake(self) -> None:
        """Wake the longest-waiting receive() (a message arrived)."""
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def wake_all(self) -> None:
        waiters, self.waiters = self.waiters, deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class QueueClient:
    """A connection to a queue manager service. Create with `await QueueClient.connect(url)`."""

    def __init__(self, url: str, *, prefetch: int, connect_timeout: float,
                 session_settings: dict[str, Any], client_id: bytes | None = None) -> None:
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or not 1 <= prefetch <= 65536:
            raise ValueError(f"prefetch must be an integer 1..65536, not {prefetch!r}")
        if not connect_timeout > 0:
            raise ValueError(f"connect_timeout must be > 0 seconds, not {connect_timeout!r}")
        self.url = service_url(url)
        self.prefetch = prefetch
        self.connect_timeout = connect_timeout
        self._session_settings = dict(P.SESSION_SETTINGS)
        self._session_settings.update(session_settings)
        self._loop = asyncio.get_running_loop()
        if client_id is not None and not (isinstance(client_id, bytes) and 8 <= len(client_id) <= 64):
            raise ValueError(f"client_id must be 8..64 bytes, not {client_id!r}")
        self._client_id = client_id if client_id is not None else os.urandom(16)
        self._id_prefix = self._client_id.hex()[:16] + "-"
        self._ids = itertools.count(1)
        self._rids = itertools.count(1)
        self._consumer_ids = itertools.count(1)
        self._session: Any = None
        self._connected = False
        self._pending: dict[int, tuple[list, asyncio.Future]] = {}
        self._out: list = []
        self._out_bytes = 0
        self._flush_scheduled = False
        self._consumers: dict[str, _Consumer] = {}
        self._by_consumer_id: dict[int, _Consumer] = {}
        self._locks: dict[str, Message] = {}      # received (buffered or handed out), unsettled
        self._forget: list[str] = []              # answered send ids the service may forget
        self._reader: asyncio.Task | None = None
        self._closing = False
        self._error: BaseException | None = None
        self.reconnects = 0
        self.max_frame_bytes = P.FRAME_BYTES

    @classmethod
    def connect(cls, url: str, *, prefetch: int = DEFAULT_PREFETCH, connect_timeout: float = 10.0,
                client_id: bytes | None = None, **session_settings: Any) -> "_Connecting":
        """Connect to the queue manager service at `url` (tcp://HOST:PORT). Await it, or use
        it as an async context manager (closed on exit). `prefetch`: messages a consumer may
        hold ahead of receive(). Raises OSError / RetryLimitExceeded when nothing answers,
        ProtocolError when what answers is not a queue manager of this protocol version.
        `client_id` (8..64 bytes, default random) names this client to the service across
        sessions; a queue manager's forwarder uses a stable one (its rejects come back to it)."""
        return _Connecting(cls, url, prefetch, connect_timeout, session_settings, client_id)

    # ---- the session ----

    async def _open(self) -> None:
        await self._new_session(first=True)
        self._reader = self._loop.create_task(self._read_loop())

    async def _new_session(self, first: bool) -> None:
        from ..session.api import connect

        session = await connect(self.url, connect_timeout=self.connect_timeout, **self._session_settings)
        try:
            # HELLO alone first: whether the service still knows us decides what to resend
            hello = [P.HELLO, next(self._rids), P.VERSION, self._client_id, list(self._locks)]
            self._out, self._out_bytes = [], 0
            session.send_nowait([P.encode([hello])])
            reply = await asyncio.wait_for(self._read_hello(session, hello[1]), self.connect_timeout)
        except BaseException:
            session.abort("queue protocol handshake failed")
            raise
        self.max_frame_bytes = min(P.FRAME_BYTES, int(reply.get("max_frame_bytes", P.FRAME_BYTES)) // 2)
        resumed = bool(reply.get("resumed"))
        self._session = session
        self._connected = True
        for consumer in self._consumers.values():
            if consumer.subscribed or consumer.granted:
                consumer.granted = max(0, self.prefetch - len(consumer.buffer))
                consumer.owed = 0
                self._send([P.SUBSCRIBE, 0, consumer.consumer_id, consumer.queue, consumer.granted])
        for rid, (item, future) in list(self._pending.items()):
            op = item[0]
            if op == P.SUBSCRIBE:       # every consumer was re-subscribed above
                self._pending.pop(rid)
                if not future.done():
                    future.set_result(None)
            elif not resumed and op in _NEEDS_THE_SAME_SERVICE:
                # a settle or transaction step of the service that restarted: its outcome
                # is unknown and its lock or transaction is gone
                self._pending.pop(rid)
                if not future.done():
                    error = (LockLost(f"the queue manager restarted: the lock of message {item[2]} is gone")
                             if op in (P.COMPLETE, P.ABANDON) else
                             TransactionError("the queue manager restarted: the transaction is gone"))
                    future.set_exception(error)
            else:
                self._send(item)
        if self._out:
            self._schedule_flush()

    async def _read_hello(self, session: Any, rid: int) -> dict:
        """Read until HELLO's answer, dispatching whatever comes with it."""
        while True:
            try:
                frames = await session.recv_many()
            except TetherError as exc:
                raise ProtocolError(f"{self.url} closed the session during the queue protocol "
                                    f"handshake ({exc}); is it a tether queue manager?") from None
            answer = None
            for frame in frames:
                items = self._decode(frame)
                for item in items:
                    if item[0] in (P.REPLY, P.ERROR) and item[1] in (rid, 0) and answer is None:
                        if item[0] == P.ERROR:
                            raise P.error_from_code(item[2], item[3])
                        if not isinstance(item[2], dict):
                            raise ProtocolError(f"{self.url}: HELLO answered with {item[2]!r:.60}")
                        answer = item[2]
                        if not answer.get("resumed") and self._locks:
                            self._forget_locks()
                    else:
                        self._dispatch(item)
            if answer is not None:
                return answer

    def _forget_locks(self) -> None:
        """The service restarted: every lock we held is gone (those messages are
        redelivered), so complete()/abandon() of them must raise LockLost, and the
        prefetched ones are dropped (their credit is given again)."""
        for message in self._locks.values():
            message._owner = None
        self._locks.clear()
        for consumer in self._consumers.values():
            consumer.owed += len(consumer.buffer)
            consumer.buffer.clear()

    def _decode(self, frame: bytes) -> list:
        try:
            return [P.parse_response(item) for item in P.decode(frame)]
        except ProtocolError as exc:
            raise ProtocolError(f"{self.url} does not speak the tether queue protocol: {exc}") from None

    async def _read_loop(self) -> None:
        while True:
            session = self._session
            try:
                frames = await session.recv_many()
                for frame in frames:
                    for item in self._decode(frame):
                        self._dispatch(item)
                continue
            except asyncio.CancelledError:
                raise
            except ProtocolError as exc:
                log.error("%s", exc)
                session.abort(str(exc))
                reason: BaseException = exc
            except TetherError as exc:
                reason = exc
            if self._closing:
                return
            await self._reconnect(reason)

    async def _reconnect(self, reason: BaseException) -> None:
        self._connected = False
        log.warning("queue manager session to %s lost (%s); reconnecting", self.url, reason)
        delay = RECONNECT_FIRST
        while not self._closing:
            await asyncio.sleep(delay)
            try:
                await self._new_session(first=False)
            except (OSError, TetherError, asyncio.TimeoutError) as exc:
                log.info("reconnect to %s failed: %s", self.url, exc)
                delay = min(delay * 2, RECONNECT_CAP)
                continue
            self.reconnects += 1
            log.info("reconnected to %s", self.url)
            return

    def _dispatch(self, item: list) -> None:
        op = item[0]
        if op == P.DELIVER:
            consumer = self._by_consumer_id.get(item[1])
            message = self._message(item[2], item[3])
            if consumer is None:
                self._send([P.RELEASE, 0, [message.id]])
                return
            consumer.granted -= 1
            consumer.buffer.append(message)
            consumer.wake()
        elif op == P.REPLY or op == P.ERROR:
            entry = self._pending.pop(item[1], None)
            if entry is None:
                if op == P.ERROR and item[1] == 0:
                    log.error("the queue manager at %s reported: %s", self.url, item[3])
                return
            request, future = entry
            if op == P.REPLY and request[0] == P.SEND:
                self._forget.append(request[6])     # answered: it is never resent
                self._schedule_flush()
            if future.done():
                return
            if op == P.REPLY:
                future.set_result(item[2])
            else:
                future.set_exception(P.error_from_code(item[2], item[3]))
        elif op == P.CONSUMER_ERROR:
            consumer = self._by_consumer_id.get(item[1])
            if consumer is not None:
                consumer.subscribed = False
                consumer.granted = 0
                consumer.error = P.error_from_code(item[2], item[3])
                consumer.wake_all()

    def _message(self, fields: list, validity: float) -> Message:
        message = Message(fields[0], fields[1], fields[2], fields[3], fields[4], fields[5], fields[6], fields[7])
        message._owner = self
        message._state = LOCKED
        message._lock_deadline = time.time() + validity
        self._locks[message.id] = message
        return message

    # ---- requests ----

    def _check_open(self) -> None:
        if self._closing:
            raise QueueError("the queue client is closed")

    def _request(self, item: list) -> asyncio.Future:
        rid = next(self._rids)
        item[1] = rid
        try:
            # checked here, as the service will: a malformed item makes the service abort
            # the session, and resending it after the reconnect would abort it again, forever
            P.parse_request(item)
        except ProtocolError as exc:
            raise ValueError(str(exc)) from None
        future = self._loop.create_future()
        self._pending[rid] = (item, future)
        if self._connected:
            self._send(item)
        return future

    def _send(self, item: list) -> None:
        self._out.append(item)
        self._out_bytes += 64 + (len(item[3]) if item[0] == P.SEND else 0)
        if self._out_bytes >= self.max_frame_bytes:
            self._flush()
        else:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        for consumer in self._consumers.values():
            if consumer.owed and consumer.subscribed:
                self._out.append([P.CREDIT, 0, consumer.consumer_id, consumer.owed])
                consumer.granted += consumer.owed
                consumer.owed = 0
        if not self._connected:
            return
        if self._forget:
            self._out.append([P.FORGET, 0, self._forget])
            self._forget = []
        if not self._out:
            return
        out, self._out, self._out_bytes = self._out, [], 0
        try:
            self._session.send_nowait([P.encode(out)])
        except TetherError:
            pass    # the reader sees the end and reconnects; pending requests are resent

    # ---- QueueManager's methods ----

    async def create_queue(self, name: str, **settings: Any) -> QueueSettings:
        """Create a queue (see QueueManager.create_queue); returns its settings."""
        self._check_open()
        QueueSettings.from_kwargs(**settings)      # bad settings fail here, clearly
        return QueueSettings.from_dict(await self._request([P.CREATE, 0, name, settings]))

    async def delete_queue(self, name: str) -> None:
        """Delete a queue and its messages."""
        self._check_open()
        await self._request([P.DELETE, 0, name])

    def _send_item(self, address: str, body: Any, headers: dict | None, time_to_live: float | None) -> list:
        if not isinstance(address, str):
            raise TypeError(f"queue address must be a string, not {address!r}")
        if body.__class__ is not bytes:
            if not isinstance(body, (bytearray, memoryview)):
                raise TypeError(f"message body must be bytes, not {type(body).__name__}")
            body = bytes(body)
        limit = self._session_settings["max_message_size"] - 4096
        if len(body) > limit:
            raise MessageTooLarge(f"message of {len(body)} bytes is over the protocol's limit of {limit} bytes")
        if headers is not None:
            check_headers(headers)      # one that cannot be encoded would lose its whole frame
        if time_to_live is not None and (isinstance(time_to_live, bool) or not isinstance(time_to_live, (int, float))):
            raise TypeError(f"time_to_live must be a number of seconds, not {time_to_live!r}")
        return [P.SEND, 0, address, body, headers, time_to_live, f"{self._id_prefix}{next(self._ids):x}"]

    async def send(self, address: str, body: bytes, *, headers: dict | None = None,
                   time_to_live: float | None = None) -> str:
        """Queue a message (a local queue of the service, or tether://host:port/queue for
        its store-and-forward); returns its id once the service has it durably."""
        self._check_open()
        return await self._request(self._send_item(address, body, headers, time_to_live))

    async def send_many(self, address: str, bodies: list[bytes], *, headers: dict | None = None,
                        time_to_live: float | None = None) -> list[str]:
        """send() for many bodies at once (one frame where they fit); their ids, in order.
        Raises the first refusal, after every send was answered."""
        self._check_open()
        futures = [self._request(self._send_item(address, body, headers, time_to_live)) for body in bodies]
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    async def receive(self, name: str, timeout: float | None = None) -> Message | None:
        """The next message of a queue, peek-locked: complete() or abandon() it. Waits up
        to `timeout` seconds (None: until one comes; 0: only what is there now); None when
        none came. Raises QueueNotFound, PoisonMessage."""
        self._check_open()
        if timeout is not None:
            timeout = float(timeout)
            if timeout != timeout:
                raise ValueError("receive timeout must be a number of seconds or None, not nan")
        consumer = self._consumers.get(name)
        if timeout is not None and timeout <= 0:
            if consumer is not None:
                message = self._take(consumer)
                if message is not None:
                    return message
            return await self._receive_now(name, 0.0)
        if consumer is None or not (consumer.subscribed or consumer.subscribing):
            consumer = await self._subscribe(name)
        elif not consumer.subscribed:
            await asyncio.shield(consumer.subscribing)      # another receive() is subscribing
        deadline = None if timeout is None else self._loop.time() + timeout
        while True:
            message = self._take(consumer)
            if message is not None:
                return message
            if consumer.error is not None:
                error, consumer.error = consumer.error, None
                self._drop_consumer(consumer)
                raise error
            if self._closing:
                raise QueueError("the queue client is closed")
            remaining = None if deadline is None else deadline - self._loop.time()
            if remaining is not None and remaining <= 0:
                return None
            waiter = self._loop.create_future()
            consumer.waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except asyncio.TimeoutError:
                pass
            finally:
                if waiter.done() and not waiter.cancelled() and consumer.buffer:
                    consumer.wake()     # woken but leaving: pass the message on
                elif not waiter.done():
                    waiter.cancel()

    async def _receive_now(self, name: str, timeout: float) -> Message | None:
        reply = await self._request([P.RECEIVE, 0, name, timeout, 0])
        if reply is None:
            return None
        return self._message(reply[0], reply[1])

    def _take(self, consumer: _Consumer) -> Message | None:
        buffer = consumer.buffer
        now = time.time()
        while buffer:
            message = buffer.popleft()
            consumer.owed += 1
            self._schedule_flush()
            if message._lock_deadline > now:
                return message
            # its lock expired at the service while it waited here: it is redelivered there
            self._locks.pop(message.id, None)
            message._owner = None
        return None

    async def _subscribe(self, name: str) -> _Consumer:
        old = self._consumers.get(name)
        if old is not None:
            self._drop_consumer(old)
        consumer = _Consumer(next(self._consumer_ids), name)
        subscribing = consumer.subscribing = self._request([P.SUBSCRIBE, 0, consumer.consumer_id, name, self.prefetch])
        self._consumers[name] = consumer
        self._by_consumer_id[consumer.consumer_id] = consumer
        consumer.granted = self.prefetch
        try:
            await asyncio.shield(subscribing)
        except BaseException:
            if not subscribing.done():
                subscribing.cancel()
            self._drop_consumer(consumer)
            raise
        finally:
            consumer.subscribing = None
        consumer.subscribed = True
        return consumer

    def _drop_consumer(self, consumer: _Consumer) -> None:
        if self._consumers.get(consumer.queue) is consumer:
            del self._consumers[consumer.queue]
        self._by_consumer_id.pop(consumer.consumer_id, None)
        if consumer.subscribed and self._connected:
            self._send([P.UNSUBSCRIBE, 0, consumer.consumer_id])
        consumer.subscribed = False
        self._release(consumer.buffer)
        consumer.buffer.clear()

    def _release(self, messages: Any) -> None:
        ids = []
        for message in messages:
            if self._locks.pop(message.id, None) is not None:
                ids.append(message.id)
            message._owner = None
        if ids and self._connected:
            self._send([P.RELEASE, 0, ids])

    # Message.complete() / Message.abandon() land here
    async def complete_message(self, message: Message) -> None:
        """Remove a received message at the service. LockLost if its lock is gone."""
        self._settling(message)
        await self._request([P.COMPLETE, 0, message.id])

    async def abandon_message(self, message: Message) -> None:
        """Give a received message back (a failed delivery, see poison.py)."""
        self._settling(message)
        await self._request([P.ABANDON, 0, message.id])

    def _settling(self, message: Message) -> None:
        if self._locks.pop(message.id, None) is not message:
            raise LockLost(f"message {message.id} is not locked by this client (settled, expired or released)")
        message._owner = None
        if message._lock_deadline <= time.time():
            raise LockLost(f"message {message.id}: the peek-lock expired (validity_duration)")

    def transaction(self) -> "RemoteTransaction":
        """`async with client.transaction() as tx:` receives and sends that commit together
        at the service (rolled back if the session to it is lost for good)."""
        self._check_open()
        return RemoteTransaction(self)

    async def queue_info(self, name: str) -> QueueInfo:
        """Counts of a queue: depth, in_flight, retrying, dead_lettered, poison, bytes."""
        self._check_open()
        return QueueInfo(**await self._request([P.INFO, 0, name]))

    async def queue_infos(self) -> list[QueueInfo]:
        """queue_info() of every queue of the service (transmission queues included)."""
        self._check_open()
        return [QueueInfo(**info) for info in await self._request([P.INFO, 0, None])]

    async def queues(self) -> list[str]:
        """Names of every queue of the service."""
        return [info.name for info in await self.queue_infos()]

    async def close(self) -> None:
        """Give back prefetched messages, end the session, fail waiting calls."""
        if self._closing:
            return
        consumers = list(self._consumers.values())
        for consumer in consumers:
            self._drop_consumer(consumer)
        self._flush()
        self._closing = True
        for consumer in consumers:
            consumer.wake_all()     # a waiting receive() sees the client closed and raises
        error = QueueError("the queue client is closed")
        for _, future in self._pending.values():
            if not future.done():
                future.set_exception(error)
                future.exception()
        self._pending.clear()
        if self._reader is not None:
            self._reader.cancel()
        session = self._session
        if session is not None and not session.closed:
            try:
                await session.close(timeout=5.0)
            except (TetherError, asyncio.TimeoutError) as exc:
                log.info("queue client session did not close cleanly: %s", exc)
        self._connected = False

    async def __aenter__(self) -> "QueueClient":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closing else "connected" if self._connected else "reconnecting"
        return f"<QueueClient {self.url} {state}>"


class RemoteTransaction:
    """Receives and sends at the service that take effect together (see Transaction)."""

    def __init__(self, client: QueueClient) -> None:
        self._client = client
        self._txid: int | None = None
        self._begin: asyncio.Future | None = None
        self.state = "active"

    async def _id(self) -> int:
        if self.state != "active":
            raise TransactionError(f"the transaction is already {self.state}")
        if self._txid is None:
            if self._begin is None:
                self._begin = self._client._request([P.TX_BEGIN, 0])
            self._txid = await asyncio.shield(self._begin)
        return self._txid

    async def receive(self, name: str, timeout: float | None = None) -> Message | None:
        """Like QueueClient.receive(); the message is settled by commit or rollback."""
        if timeout is not None:
            timeout = float(timeout)
            if timeout < 0:
                timeout = 0.0       # as receive(): no wait (nan stays, and _request refuses it)
        txid = await self._id()
        reply = await self._client._request([P.RECEIVE, 0, name, timeout, txid])
        if reply is None:
            return None
        fields, validity = reply
        message = Message(fields[0], fields[1], fields[2], fields[3], fields[4], fields[5], fields[6], fields[7])
        message._owner = self
        message._state = LOCKED
        message._lock_deadline = time.time() + validity
        return message

    async def send(self, address: str, body: bytes, *, headers: dict | None = None,
                   time_to_live: float | None = None) -> str:
        """Like QueueClient.send(), but the message is queued only at commit. Returns its id."""
        txid = await self._id()
        item = self._client._send_item(address, body, headers, time_to_live)
        return await self._client._request([P.TX_SEND, 0, txid, address, item[3], headers, time_to_live])

    async def commit(self) -> None:
        """Make the transaction's receives and sends take effect, atomically and durably."""
        if self.state != "active":
            raise TransactionError(f"the transaction is already {self.state}")
        if self._txid is None and self._begin is None:
            self.state = "committed"
            return
        txid = await self._id()
        self.state = "committed"
        try:
            await self._client._request([P.TX_COMMIT, 0, txid])
        except BaseException:
            self.state = "rolled back"
            raise

    async def rollback(self) -> None:
        """Discard the sends; the received messages return as failed deliveries."""
        if self.state != "active":
            raise TransactionError(f"the transaction is already {self.state}")
        self.state = "rolled back"
        if self._txid is None and self._begin is None:
            return
        txid = self._txid if self._txid is not None else await asyncio.shield(self._begin)
        await self._client._request([P.TX_ROLLBACK, 0, txid])

    async def complete_message(self, message: Message) -> None:
        raise TransactionError(f"message {message.id} belongs to a transaction: it is completed by commit()")

    async def abandon_message(self, message: Message) -> None:
        raise TransactionError(f"message {message.id} belongs to a transaction: it is returned by rollback()")

    async def __aenter__(self) -> "RemoteTransaction":
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        if self.state != "active":
            return False
        if exc_type is None:
            await self.commit()
        else:
            await self.rollback()
        return False


class _Connecting:
    """What QueueClient.connect() returns: awaitable, or an async context manager."""

    def __init__(self, cls: type[QueueClient], url: str, prefetch: int, connect_timeout: float,
                 session_settings: dict[str, Any], client_id: bytes | None) -> None:
        self._args = (cls, url, prefetch, connect_timeout, session_settings, client_id)
        self._client: QueueClient | None = None

    async def _connect(self) -> QueueClient:
        cls, url, prefetch, connect_timeout, session_settings, client_id = self._args
        client = cls(url, prefetch=prefetch, connect_timeout=connect_timeout, session_settings=session_settings,
                     client_id=client_id)
        await client._open()
        return client

    def __await__(self) -> Generator[Any, None, QueueClient]:
        return self._connect().__await__()

    async def __aenter__(self) -> QueueClient:
        self._client = await self._connect()
        return self._client

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._client is not None:
            await self._client.close()
