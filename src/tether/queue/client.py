"""`QueueClient`: a remote queue manager with the methods of `QueueManager`.

    async with QueueClient.connect("tcp://127.0.0.1:7600", prefetch=32) as client:
        await client.create_queue("orders")
        await client.send("orders", b"...")
        msg = await client.receive("orders", timeout=5)
        await msg.complete()

Requests travel over one reliable session (protocol.py); concurrent calls share frames, so
a round trip is paid per batch, not per message, and the plain sends (and the completes)
made in one loop turn travel as one SEND_BATCH (COMPLETE_BATCH) item, answered by one reply.
Receiving is credit-based: the first `receive()` of a queue subscribes with `prefetch`
credits, the service delivers at most
that many messages ahead (each peek-locked), and every message taken returns one credit.

The client is an idempotent producer: its `client_id` (stable if you give one) names it to
the service, which gives it an epoch and the next sequence to number its sends with. After
the session is lost (service restarted, network down) the client reconnects with capped
backoff, says HELLO with the same id and epoch and the locks it still holds, re-subscribes
and resends every request still unanswered: a resent send is queued once. A client started
again with the same `client_id` continues the sequence (nothing it sends collides with its
earlier life) and fences the earlier instance if that one still runs (ProducerFenced).

While the service is unreachable, every call waits at most `request_timeout` seconds, then
raises QueueUnavailable (a send's outcome is then unknown: it may have been queued); a
`receive(timeout=t)` returns by `t` whatever the connection does.

tls://HOST:PORT connects over TLS (`ssl=`: the context; by default the system's CAs, the
certificate verified against HOST). `user` and `password` authenticate the client in HELLO
(auth.py); they travel only over TLS or to a loopback address. A refused password is
AuthenticationFailed, from connect() or, after a reconnect, from every call: the client
stops reconnecting. A request the user may not make fails alone with PermissionDenied.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from ssl import SSLContext
from types import TracebackType
from typing import Any, Unpack, cast
from urllib.parse import urlsplit

from ..backoff import Backoff
from ..errors import (
    AuthenticationFailed,
    LockLost,
    ProducerFenced,
    ProtocolError,
    QueueError,
    QueueMessageTooLarge,
    QueueUnavailable,
    SendQueueFull,
    TetherError,
    TransactionError,
)
from ..opening import Opening
from ..session.adapters import tls
from ..session.adapters.url import parse as parse_url
from ..session.sansio.settings import SessionTuning
from . import protocol as P
from .auth import check_credentials
from .core.engine import check_group_id, check_priority, delivery_time
from .core.headers import encode_headers, plain_headers
from .core.info import QueueInfo
from .core.settings import QueueOptions, QueueSettings
from .group import AcceptGroup, check_accept
from .message import Message
from .receive_batch import ReceiveBatch, check_batch

log = logging.getLogger("tether.queue.client")

RECONNECT_FIRST = 0.05
RECONNECT_CAP = 2.0     # never more than this between reconnect attempts
DEFAULT_PREFETCH = 16
DEFAULT_REQUEST_TIMEOUT = 30.0
# A floor (SETTLED) travels with the next frame that goes anyway, or alone after this long
SETTLE_DELAY = 0.05
# requests that only mean something to the service process that saw the lock or transaction
_NEEDS_THE_SAME_SERVICE = (P.COMPLETE, P.COMPLETE_BATCH, P.ABANDON, P.TX_SEND, P.TX_COMMIT, P.TX_ROLLBACK, P.RENEW,
                           P.GROUP_RECEIVE, P.GROUP_RELEASE)


def service_url(url: str) -> str:
    """The session URL of a queue manager: tcp://HOST:PORT, tls://HOST:PORT, or
    tether://HOST:PORT[/...] (plain TCP; the queue in the path is ignored). ValueError
    naming what is wrong."""
    if not isinstance(url, str):
        raise TypeError(f"queue manager URL must be a string, not {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme not in ("tcp", "tls", "tether"):
        raise ValueError(f"bad queue manager URL {url!r}: use tcp://HOST:PORT, tls://HOST:PORT "
                         "or tether://HOST:PORT")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"bad queue manager URL {url!r}: port must be 1..65535") from None
    if not parts.hostname:
        raise ValueError(f"bad queue manager URL {url!r}: no host")
    if not port:
        raise ValueError(f"bad queue manager URL {url!r}: a port 1..65535 is required")
    if parts.scheme != "tether" and parts.path not in ("", "/"):
        raise ValueError(f"bad queue manager URL {url!r}: {parts.scheme}:// takes no path")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{'tls' if parts.scheme == 'tls' else 'tcp'}://{host}:{port}"


def _seconds_or_none(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number of seconds > 0 (or None), not {value!r}")
    return float(value)


class _Request:
    __slots__ = ("item", "future", "deadline")

    def __init__(self, item: list[Any], future: asyncio.Future[Any], deadline: float) -> None:
        self.item = item
        self.future = future
        self.deadline = deadline


class _Batch(_Request):
    """A SEND_BATCH or COMPLETE_BATCH: one request for the calls of one loop turn, each
    with its own future (`futures`), answered from the batch's reply."""

    __slots__ = ("futures",)

    def __init__(self, item: list[Any], future: asyncio.Future[Any], deadline: float) -> None:
        super().__init__(item, future, deadline)
        self.futures: list[asyncio.Future[Any]] = []

    def answered(self, future: asyncio.Future[Any]) -> None:
        """The batch's own future is done: each call gets its outcome (a failed batch's
        error, or its own from the reply)."""
        futures = self.futures
        if future.cancelled():
            error: BaseException | None = QueueError("the queue client is closed")
        else:
            error = future.exception()
        if error is None:
            try:
                outcomes = P.batch_outcomes(future.result(), len(futures),
                                            str if self.item[0] == P.SEND_BATCH else type(None))
            except ProtocolError as exc:
                error = exc
        for n, waiter in enumerate(futures):
            if waiter.done():           # its caller was cancelled
                continue
            outcome = error if error is not None else outcomes[n]
            if isinstance(outcome, BaseException):
                waiter.set_exception(outcome)
            else:
                waiter.set_result(outcome)


class _Consumer:
    """A subscription of this client to one queue: the prefetched messages and who waits."""

    __slots__ = ("consumer_id", "queue", "buffer", "waiters", "error", "subscribed", "subscribing",
                 "granted", "owed")

    def __init__(self, consumer_id: int, queue: str) -> None:
        self.consumer_id = consumer_id
        self.queue = queue
        self.buffer: deque[Message] = deque()
        self.waiters: deque[asyncio.Future[Any]] = deque()     # receive() calls waiting, oldest first
        self.error: BaseException | None = None
        self.subscribed = False
        self.subscribing: asyncio.Future[Any] | None = None     # the SUBSCRIBE in progress
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


class _RemoteGroups:
    """The GroupBackend of a QueueClient: ACCEPT_GROUP, GROUP_RECEIVE, GROUP_RELEASE."""

    def __init__(self, client: QueueClient) -> None:
        self._client = client

    async def accept(self, name: str, timeout: float | None) -> tuple[str, Any] | None:
        client = self._client
        client._check_open()
        reply = await client._request([P.ACCEPT_GROUP, 0, name, timeout], wait=timeout)
        if reply is None:
            return None
        if not (isinstance(reply, list) and len(reply) == 2 and isinstance(reply[0], str)
                and isinstance(reply[1], int)):
            raise ProtocolError(f"queue protocol: ACCEPT_GROUP answered with {P.brief(reply)}")
        return reply[0], reply[1]

    async def receive(self, handle: int, timeout: float | None) -> Message | None:
        client = self._client
        client._check_open()
        if timeout is not None:
            timeout = max(0.0, float(timeout))
        reply = await client._request([P.GROUP_RECEIVE, 0, handle, timeout], wait=timeout)
        if reply is None:
            return None
        return client._message(P.check_message("group-receive", reply[0]), reply[1])

    async def release(self, handle: int) -> None:
        client = self._client
        if client._closing or client._fatal is not None:
            return          # the service lets the group go when this client is gone
        try:
            await client._request([P.GROUP_RELEASE, 0, handle])
        except LockLost:
            pass            # the service restarted, or let it go already


async def _more_at_once(transaction: RemoteTransaction, name: str, n: int) -> list[Message]:
    """Up to `n` more messages for a remote batch: `n` receives that do not wait, sent in
    one frame (one round trip); those that found nothing answer nil."""
    got = await asyncio.gather(*(transaction.receive(name, 0) for _ in range(n)), return_exceptions=True)
    messages = [m for m in got if isinstance(m, Message)]
    for result in got:
        if isinstance(result, BaseException):
            raise result
    return messages


def _send_options(priority: Any, delay: Any, deliver_at: Any, group_id: Any = None,
                  journal: Any = None) -> dict[str, Any] | None:
    """A SEND's options map (nil for the defaults), checked here as the service checks them."""
    options: dict[str, Any] = {}
    if priority.__class__ is not int or priority != 3:
        options["priority"] = check_priority(priority)
    if delay is not None or deliver_at is not None:
        delivery_time(delay, deliver_at, time.time())      # TypeError/ValueError naming it
        if delay is not None:
            options["delay"] = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        else:
            options["deliver_at"] = deliver_at.timestamp() if isinstance(deliver_at, datetime) else float(deliver_at)
    if group_id is not None:
        options["group_id"] = check_group_id(group_id)
    if journal is not None:
        if not isinstance(journal, bool):
            raise TypeError(f"journal must be True, False or None, not {journal!r}")
        options["journal"] = journal       # (the service refuses True for a local queue)
    return options or None


_INFO_FIELDS = frozenset(f.name for f in dataclasses.fields(QueueInfo))


def _info(value: Any) -> QueueInfo:
    """A QueueInfo from INFO's map (keys this client does not know are left out)."""
    if not isinstance(value, dict):
        raise ProtocolError(f"queue protocol: INFO answered with {P.brief(value)}")
    return QueueInfo(**{k: v for k, v in value.items() if k in _INFO_FIELDS})


class QueueClient:
    """A connection to a queue manager service. Create with `await QueueClient.connect(url)`."""

    def __init__(self, url: str, *, prefetch: int, connect_timeout: float, request_timeout: float | None,
                 session_settings: SessionTuning, client_id: bytes | None = None, ssl: Any = None,
                 user: str | None = None, password: str | None = None) -> None:
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or not 1 <= prefetch <= 65536:
            raise ValueError(f"prefetch must be an integer 1..65536, not {prefetch!r}")
        if _seconds_or_none("connect_timeout", connect_timeout) is None:
            raise ValueError("connect_timeout must be a finite number of seconds > 0, not None")
        if client_id is not None and not (isinstance(client_id, bytes) and 8 <= len(client_id) <= 64):
            raise ValueError(f"client_id must be 8..64 bytes, not {client_id!r}")
        self.url = service_url(url)
        self._ssl = tls.client_context(parse_url(self.url), ssl)
        check_credentials(self.url, user, password)
        self._credentials = (user, password)
        #: who the service says this client is (None: anonymous), once connected
        self.user: str | None = None
        self.prefetch = prefetch
        self.connect_timeout = float(connect_timeout)
        self.request_timeout = _seconds_or_none("request_timeout", request_timeout)
        self._session_settings: dict[str, Any] = dict(P.SESSION_SETTINGS)
        self._session_settings.update(session_settings)
        #: the largest body a send may carry (room for the frame around it); set once the
        #: session settings were checked (_new_session)
        self._body_limit = 0
        self._loop = asyncio.get_running_loop()
        self.client_id = client_id if client_id is not None else os.urandom(16)
        self.epoch = 0                 # the producer epoch the service gave us (0: not yet)
        self._next_sequence = 0
        #: the first sequence the service has never seen from this producer (its last HELLO)
        self.service_next_sequence = 0
        self._unanswered: OrderedDict[int, None] = OrderedDict()   # send sequences awaiting a reply
        self._numbering = False        # this client numbers its own sends ...
        self._forwarding = False       # ... or a forwarder numbers them: never both
        self._floor_sent = 0
        self._forward_floor = 0        # a forwarder's floor (settled()), told as SETTLED
        self._settle_timer: asyncio.TimerHandle | None = None
        self._rids = 0
        self._consumer_ids = 0
        self._session: Any = None
        self._connected = False
        self._disconnected_at: float | None = None
        self._pending: dict[int, _Request] = {}
        self._batch: _Batch | None = None     # the batch this loop turn fills (see _batched)
        self._out: list[Any] = []
        self._out_bytes = 0
        self._flush_scheduled = False
        self._consumers: dict[str, _Consumer] = {}
        self._by_consumer_id: dict[int, _Consumer] = {}
        self._locks: dict[int, Message] = {}      # lock tag -> received message, unsettled
        self._reader: asyncio.Task[Any] | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._closing = False
        self._fatal: BaseException | None = None
        self.reconnects = 0
        self.max_frame_bytes = P.FRAME_BYTES

    @classmethod
    def connect(cls, url: str, *, ssl: SSLContext | None = None, user: str | None = None,
                password: str | None = None, prefetch: int = DEFAULT_PREFETCH, connect_timeout: float = 10.0,
                request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT, client_id: bytes | None = None,
                **session_settings: Unpack[SessionTuning]) -> Opening[QueueClient]:
        """Connect to the queue manager service at `url` (tcp://HOST:PORT, or
        tls://HOST:PORT: TLS with `ssl`, by default `ssl.create_default_context()`, which
        verifies the certificate against HOST). Await it, or use it as an async context
        manager (closed on exit). `user` and `password` authenticate this client (both or
        neither; ValueError for a password over plain TCP to a host that is not loopback).
        `prefetch`: messages a consumer may hold ahead of receive(). `request_timeout`: the
        longest any call waits while the service does not answer (then QueueUnavailable;
        None: no limit). `client_id` (8..64 bytes, default random) names this client, as a
        producer, across sessions and restarts. Raises AuthenticationFailed when the service
        refuses the credentials (or needs some), OSError / RetryLimitExceeded when nothing
        answers, ssl.SSLError when the TLS handshake fails, ProtocolError when what answers
        is not a queue manager of this protocol version."""
        async def opening() -> QueueClient:
            client = cls(url, prefetch=prefetch, connect_timeout=connect_timeout, request_timeout=request_timeout,
                         session_settings=session_settings, client_id=client_id, ssl=ssl, user=user,
                         password=password)
            await client._open()
            return client

        return Opening(opening, QueueClient.close)

    # ---- the session ----

    async def _open(self) -> None:
        await self._new_session()
        self._reader = self._loop.create_task(self._read_loop())

    async def _new_session(self) -> None:
        from ..session.adapters.api import connect

        session = await connect(self.url, ssl=self._ssl, connect_timeout=self.connect_timeout,
                                **self._session_settings)
        self._body_limit = session.settings.max_message_size - 4096
        try:
            # HELLO alone first: whether the service still knows us decides what to resend
            self._rids += 1
            user, password = self._credentials
            hello = [P.HELLO, self._rids, P.VERSION, self.client_id, self.epoch, list(self._locks), user, password]
            self._out, self._out_bytes, self._batch = [], 0, None
            session.send_nowait([P.encode([hello])])
            async with asyncio.timeout(self.connect_timeout):
                reply = await self._read_hello(session, self._rids)
        except BaseException:
            session.abort("queue protocol handshake failed")
            raise
        self.max_frame_bytes = min(P.FRAME_BYTES, int(reply.get("max_frame_bytes", P.FRAME_BYTES)) // 2)
        resumed = bool(reply.get("resumed"))
        self.user = reply.get("user")
        self.epoch = int(reply["epoch"])
        self.service_next_sequence = int(reply["next_sequence"])
        self._next_sequence = max(self._next_sequence, self.service_next_sequence)
        self._session = session
        self._connected = True
        self._disconnected_at = None
        self._floor_sent = 0        # tell the (maybe restarted) service again
        for consumer in self._consumers.values():
            if consumer.subscribed or consumer.granted:
                consumer.granted = max(0, self.prefetch - len(consumer.buffer))
                consumer.owed = 0
                self._send([P.SUBSCRIBE, 0, consumer.consumer_id, consumer.queue, consumer.granted])
        for rid, request in list(self._pending.items()):
            item, future = request.item, request.future
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
                             LockLost("the queue manager restarted: the locks of these messages are gone")
                             if op == P.COMPLETE_BATCH else
                             TransactionError("the queue manager restarted: the transaction is gone"))
                    future.set_exception(error)
            else:
                self._send(item)
        self._schedule_flush()

    async def _read_hello(self, session: Any, rid: int) -> dict[str, Any]:
        """Read until HELLO's answer, dispatching whatever comes with it."""
        while True:
            try:
                frames = await session.recv_many()
            except TetherError as exc:
                raise ProtocolError(f"{self.url} closed the session during the queue protocol "
                                    f"handshake ({exc}); is it a tether queue manager?") from None
            answer = None
            for frame in frames:
                for item in self._decode(frame):
                    if item[0] in (P.REPLY, P.ERROR) and item[1] in (rid, 0) and answer is None:
                        if item[0] == P.ERROR:
                            raise P.error_from_code(item[2], item[3])
                        value = item[2]
                        if not isinstance(value, dict) or not isinstance(value.get("epoch"), int) \
                                or not isinstance(value.get("next_sequence"), int) \
                                or not isinstance(value.get("user"), (str, type(None))):
                            raise ProtocolError(f"{self.url}: HELLO answered with {P.brief(value)}")
                        answer = value
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
            message._settler = None
        self._locks.clear()
        for consumer in self._consumers.values():
            consumer.owed += len(consumer.buffer)
            consumer.buffer.clear()

    def _decode(self, frame: bytes) -> list[Any]:
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
            if self._fatal is not None:
                return

    async def _reconnect(self, reason: BaseException) -> None:
        self._connected = False
        self._disconnected_at = time.monotonic()
        self._arm_sweeper()
        log.warning("queue manager session to %s lost (%s); reconnecting", self.url, reason)
        backoff = Backoff(RECONNECT_FIRST, RECONNECT_CAP)
        while not self._closing:
            await asyncio.sleep(backoff.next())
            try:
                await self._new_session()
            except (ProducerFenced, AuthenticationFailed) as exc:
                log.error("queue client %s: %s", self.client_id.hex()[:12], exc)
                self._fail_everything(exc)
                return
            except (TimeoutError, OSError, TetherError) as exc:
                log.info("reconnect to %s failed: %s", self.url, exc)
                continue
            self.reconnects += 1
            log.info("reconnected to %s", self.url)
            return

    @property
    def failure(self) -> BaseException | None:
        """The error that ended this client for good (ProducerFenced, AuthenticationFailed
        after a reconnect), which every call raises; None while it works."""
        return self._fatal

    def _fail_everything(self, error: BaseException) -> None:
        """A fatal error (fenced, refused credentials): every call fails with it, now and later."""
        self._fatal = error
        for request in self._pending.values():
            if not request.future.done():
                request.future.set_exception(error)
                request.future.exception()
        self._pending.clear()
        for consumer in self._consumers.values():
            consumer.error = error
            consumer.wake_all()

    def _dispatch(self, item: list[Any]) -> None:
        op = item[0]
        if op == P.DELIVER:
            consumer = self._by_consumer_id.get(item[1])
            message = self._message(item[2], item[3])
            if consumer is None:
                self._locks.pop(message._tag, None)
                self._send([P.RELEASE, 0, [message._tag]])
                return
            consumer.granted -= 1
            consumer.buffer.append(message)
            consumer.wake()
        elif op == P.REPLY or op == P.ERROR:
            request = self._pending.pop(item[1], None)
            if request is None:
                if op == P.ERROR and item[1] == 0:
                    log.error("the queue manager at %s reported: %s", self.url, item[3])
                return
            sent = request.item
            if sent[0] == P.SEND or sent[0] == P.SEND_BATCH or sent[0] == P.FORWARD:
                self._answered(sent)
            future = request.future
            if future.done():
                return
            if op == P.REPLY:
                future.set_result(item[2])
            else:
                future.set_exception(P.error_from_code(item[2], item[3]))
            if request.__class__ is _Batch:
                # its calls get their outcomes now, not a loop turn later from the callback
                future.remove_done_callback(request.answered)
                request.answered(future)
        elif op == P.CONSUMER_ERROR:
            consumer = self._by_consumer_id.get(item[1])
            if consumer is not None:
                consumer.subscribed = False
                consumer.granted = 0
                consumer.error = P.error_from_code(item[2], item[3])
                consumer.wake_all()

    def _answered(self, item: list[Any]) -> None:
        """A send (or forward) was answered: it will never be resent; the floor may rise
        (told with the next frame, or after SETTLE_DELAY: see _flush)."""
        if item[0] == P.SEND:
            self._unanswered.pop(item[6], None)
            self._floor_later()
        elif item[0] == P.SEND_BATCH:
            unanswered = self._unanswered
            for sequence in range(item[4], item[4] + len(item[3])):
                unanswered.pop(sequence, None)
            self._floor_later()

    def _message(self, fields: list[Any], validity: float) -> Message:
        tag, message_id, body, headers, count, enqueued_at, expires_at, reason, source, sequence, priority, \
            group_id = fields
        message = Message(message_id, body, headers, count, enqueued_at, expires_at, reason, source,
                          sequence=sequence, priority=priority, group_id=group_id)
        message._settler = self
        message._tag = tag
        message._lock_deadline = time.time() + validity
        self._locks[tag] = message
        return message

    # ---- requests ----

    def _check_open(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._closing:
            raise QueueError("the queue client is closed")

    def _request(self, item: list[Any], wait: float | None = 0.0, checked: bool = False) -> asyncio.Future[Any]:
        """Send a request; a future for its reply. It fails with QueueUnavailable after
        request_timeout (+ `wait`, the request's own waiting time; None: no limit).
        `checked`: the item was built from checked values (a send's): no second check."""
        self._rids += 1
        rid = self._rids
        item[1] = rid
        if not checked:
            try:
                # checked here, as the service will: a malformed item makes the service abort
                # the session, and resending it after the reconnect would abort it again, forever
                P.parse_request(item)
            except ProtocolError as exc:
                raise ValueError(str(exc)) from None
        future = self._loop.create_future()
        deadline = math.inf
        if self.request_timeout is not None and wait is not None:
            deadline = time.monotonic() + self.request_timeout + wait
        self._pending[rid] = _Request(item, future, deadline)
        if deadline < math.inf:
            self._arm_sweeper()
        if self._connected:
            self._send(item)
        return future

    def _batched(self, op: int, key: Any, value: Any, size: int, sequence: int = 0) -> asyncio.Future[Any]:
        """Add `value` (a body numbered `sequence`, or a lock tag) to the SEND_BATCH for
        address `key` (or the COMPLETE_BATCH) this loop turn is filling, or start one; a
        future for its outcome. A batch takes values only until it goes out, and only while
        it is the last item to go (the requests of one client keep their order) and its
        sequences run on."""
        batch = self._batch
        out = self._out
        if batch is None or not out or out[-1] is not batch.item or batch.item[0] != op \
                or len(batch.futures) >= P.MAX_BATCH \
                or (op == P.SEND_BATCH and (batch.item[2] != key or batch.item[4] + len(batch.futures) != sequence)):
            self._rids += 1
            rid = self._rids
            item = [op, rid, key, [], sequence] if op == P.SEND_BATCH else [op, rid, []]
            future = self._loop.create_future()
            deadline = math.inf
            if self.request_timeout is not None:
                deadline = time.monotonic() + self.request_timeout
                self._arm_sweeper()
            batch = self._batch = _Batch(item, future, deadline)
            future.add_done_callback(batch.answered)
            self._pending[rid] = batch
            out.append(item)
        batch.item[3 if op == P.SEND_BATCH else 2].append(value)
        waiter = self._loop.create_future()
        batch.futures.append(waiter)
        self._out_bytes += size
        if self._out_bytes >= self.max_frame_bytes:
            self._flush()
        else:
            self._schedule_flush()
        return waiter

    def _arm_sweeper(self) -> None:
        if self._sweeper is None and self.request_timeout is not None and not self._closing:
            self._sweeper = self._loop.call_later(max(0.05, self.request_timeout / 10), self._sweep)

    def _sweep(self) -> None:
        """Fail requests past their deadline, and receivers waiting while the service has
        been unreachable for request_timeout, with QueueUnavailable."""
        self._sweeper = None
        now = time.monotonic()
        for rid in [rid for rid, r in self._pending.items() if r.deadline <= now]:
            request = self._pending.pop(rid)
            if request.item[0] == P.SEND or request.item[0] == P.SEND_BATCH:
                self._answered(request.item)
            if not request.future.done():
                request.future.set_exception(QueueUnavailable(
                    f"no answer from the queue manager at {self.url} within {self.request_timeout:g} s"
                    + ("" if self._connected else " (it is unreachable)")))
                request.future.exception()
        if not self._connected and self._disconnected_at is not None and self.request_timeout is not None \
                and now - self._disconnected_at >= self.request_timeout:
            for consumer in self._consumers.values():
                consumer.wake_all()     # their receive() sees the outage and raises
        if (self._pending and any(r.deadline < math.inf for r in self._pending.values())) or not self._connected:
            self._arm_sweeper()

    def _unavailable(self) -> QueueUnavailable | None:
        """The error a waiting receiver gets when the service has been unreachable too long."""
        if self._connected or self._disconnected_at is None or self.request_timeout is None:
            return None
        if time.monotonic() - self._disconnected_at < self.request_timeout:
            return None
        return QueueUnavailable(f"the queue manager at {self.url} has been unreachable for "
                                f"{self.request_timeout:g} s")

    def _send(self, item: list[Any]) -> None:
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

    def _flush(self, settle: bool = False) -> None:
        self._flush_scheduled = False
        for consumer in self._consumers.values():
            if consumer.owed and consumer.subscribed:
                self._out.append([P.CREDIT, 0, consumer.consumer_id, consumer.owed])
                consumer.granted += consumer.owed
                consumer.owed = 0
        if not self._connected:
            return
        self._tell_floor(settle)
        if not self._out:
            return
        out, self._out, self._out_bytes = self._out, [], 0
        self._batch = None      # gone out: it takes no more
        try:
            self._session.send_nowait([P.encode(out)])
        except SendQueueFull:
            # the service has not acknowledged 64 MiB of requests: end this session; the
            # reader sees the end and reconnects, and pending requests are resent
            self._session.abort("the queue service does not read our requests")
        except TetherError:
            pass    # the reader sees the end and reconnects; pending requests are resent

    def _tell_floor(self, now: bool) -> None:
        """Add SETTLED with the floor, when it rose, to the frame going out. A floor alone
        would cost the service a journal record (and a sync) of its own, which the next
        send then waits behind: it waits for a frame that goes anyway, at most
        SETTLE_DELAY (or `now`)."""
        # numbering its own sends: every send below the lowest unanswered one was answered
        # (never sent again); forwarding: the floor the forwarder set
        floor = next(iter(self._unanswered), self._next_sequence) if self._numbering else self._forward_floor
        if floor <= self._floor_sent:
            return
        if self._out or now:
            self._out.append([P.SETTLED, 0, floor])
            self._floor_sent = floor
        else:
            self._floor_later()

    def _floor_later(self) -> None:
        """Tell the floor in SETTLE_DELAY unless a frame carries it before."""
        if self._settle_timer is None and not self._closing:
            self._settle_timer = self._loop.call_later(SETTLE_DELAY, self._settle_due)

    def _settle_due(self) -> None:
        self._settle_timer = None
        self._flush(settle=True)

    # ---- QueueManager's methods ----

    async def create_queue(self, name: str, **settings: Unpack[QueueOptions]) -> QueueSettings:
        """Create a queue (see QueueManager.create_queue); returns its settings."""
        self._check_open()
        QueueSettings.from_kwargs(**settings)      # bad settings fail here, clearly
        return QueueSettings.from_dict(await self._request([P.CREATE, 0, name, settings]))

    async def delete_queue(self, name: str) -> None:
        """Delete a queue and its messages."""
        self._check_open()
        await self._request([P.DELETE, 0, name])

    def _send_item(self, address: str, body: Any, headers: Any, time_to_live: float | None,
                   options: dict[str, Any] | None = None) -> list[Any]:
        """A SEND item, every field checked as the service will check it (so it need not be
        parsed again): one the service refused would end the session, and be resent after
        every reconnect."""
        if not isinstance(address, str):
            raise TypeError(f"queue address must be a string, not {address!r}")
        if not 0 < len(address) <= P.MAX_NAME:
            raise ValueError(f"queue address must be 1..{P.MAX_NAME} characters, not {address!r:.80}")
        if body.__class__ is not bytes:
            if not isinstance(body, (bytearray, memoryview)):
                raise TypeError(f"message body must be bytes, not {type(body).__name__}")
            body = bytes(body)
        limit = self._body_limit
        if len(body) > limit:
            raise QueueMessageTooLarge(f"message of {len(body)} bytes is over the protocol's limit of {limit} bytes")
        if headers is not None:
            # checked as the service will check them: one it refuses would cost a round trip;
            # sent as plain maps and arrays (a received message's read-only headers too)
            headers = plain_headers(encode_headers(headers, limit))
        if time_to_live is not None:
            if isinstance(time_to_live, bool) or not isinstance(time_to_live, (int, float)):
                raise TypeError(f"time_to_live must be a number of seconds, not {time_to_live!r}")
            if not math.isfinite(time_to_live):
                raise ValueError(f"time_to_live must be a finite number of seconds, not {time_to_live!r}")
        return [P.SEND, 0, address, body, headers, time_to_live, 0, options]

    def _number(self, item: list[Any]) -> list[Any]:
        if self._forwarding:
            raise QueueError("a forwarder's client sends with forward(), not send()")
        self._numbering = True
        sequence = self._next_sequence
        self._next_sequence = sequence + 1
        item[6] = sequence
        self._unanswered[sequence] = None
        return item

    async def send(self, address: str, body: bytes, *, headers: dict[str, Any] | None = None,
                   time_to_live: float | None = None, priority: int = 3, delay: float | None = None,
                   deliver_at: float | None = None, group_id: str | None = None,
                   journal: bool | None = None) -> str:
        """Queue a message (a local queue of the service, or tether://host:port/queue for its
        store-and-forward); returns its id once the service has it durably. The keyword
        arguments are QueueManager.send's. Raises as QueueManager.send, and
        QueueUnavailable after request_timeout."""
        self._check_open()
        if headers is None and time_to_live is None and delay is None and deliver_at is None \
                and group_id is None and journal is None and priority.__class__ is int and priority == 3 \
                and body.__class__ is bytes and address.__class__ is str and 0 < len(address) <= P.MAX_NAME \
                and len(body) <= self._body_limit and self._connected and not self._forwarding:
            # a plain send (checked here as _send_item checks it): it joins this loop
            # turn's SEND_BATCH to the address
            self._numbering = True
            sequence = self._next_sequence
            self._next_sequence = sequence + 1
            self._unanswered[sequence] = None
            batched_id: str = await self._batched(P.SEND_BATCH, address, body, 16 + len(body), sequence)
            return batched_id
        options = _send_options(priority, delay, deliver_at, group_id, journal)
        item = self._send_item(address, body, headers, time_to_live, options)
        if headers is None and time_to_live is None and options is None and self._connected:
            self._number(item)
            batched_id = await self._batched(P.SEND_BATCH, address, item[3], 16 + len(item[3]), item[6])
            return batched_id
        message_id: str = await self._request(self._number(item), checked=True)
        return message_id

    async def send_many(self, address: str, bodies: list[bytes], *, headers: dict[str, Any] | None = None,
                        time_to_live: float | None = None, priority: int = 3, delay: float | None = None,
                        deliver_at: float | None = None, group_id: str | None = None,
                        journal: bool | None = None) -> list[str]:
        """send() for many bodies at once (one frame, one write at the service, where they
        fit); their ids, in order. Raises the first refusal, after every send was answered."""
        self._check_open()
        if isinstance(bodies, (bytes, bytearray, memoryview, str)):
            raise TypeError("send_many takes a list of message bodies, not one body")
        options = _send_options(priority, delay, deliver_at, group_id, journal)
        items = [self._send_item(address, body, headers, time_to_live, options) for body in bodies]
        futures = [self._request(self._number(item), checked=True) for item in items]
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return cast(list[str], results)

    def forward(self, queue: str, sequence: int, message_id: str, body: bytes, headers: dict[str, Any] | None,
                enqueued_at: float, expires_at: float | None,
                options: dict[str, Any] | None = None) -> asyncio.Future[Any]:
        """(For queue managers' forwarders.) Hand over a message of a transmission queue,
        numbered `sequence` by it; a future for the answer (None: accepted). A client that
        forwards numbers nothing itself: its floor is the forwarder's (`settled`)."""
        self._check_open()
        if self._numbering:
            raise QueueError("a client that sends with send() cannot forward(): the two would share sequences")
        self._forwarding = True
        return self._request([P.FORWARD, 0, queue, sequence, message_id, body, headers, enqueued_at, expires_at,
                              options])

    def forward_batch(self, messages: list[list[Any]]) -> asyncio.Future[list[BaseException | None]]:
        """(For queue managers' forwarders.) Hand over many messages of a transmission
        queue in one FORWARD_BATCH, each as the list [queue, sequence, id, body, headers,
        enqueued_at, expires_at, options] (forward()'s arguments); a future for their
        outcomes in order, each None (accepted) or the exception refusing that message. The
        future itself fails when the whole batch was refused (every message's outcome)."""
        self._check_open()
        if self._numbering:
            raise QueueError("a client that sends with send() cannot forward(): the two would share sequences")
        self._forwarding = True
        count = len(messages)
        reply = self._request([P.FORWARD_BATCH, 0, messages])
        outcomes: asyncio.Future[list[BaseException | None]] = self._loop.create_future()

        def answered(future: asyncio.Future[Any]) -> None:
            if outcomes.done():
                return
            error = None if future.cancelled() else future.exception()
            if future.cancelled():
                outcomes.cancel()
            elif error is not None:
                outcomes.set_exception(error)
            else:
                try:
                    outcomes.set_result(P.batch_outcomes(future.result(), count, type(None)))
                except ProtocolError as exc:
                    outcomes.set_exception(exc)

        reply.add_done_callback(answered)
        return outcomes

    def settled(self, floor: int) -> None:
        """(For queue managers' forwarders.) Every sequence below `floor` is settled here
        (told with the next frame, or after SETTLE_DELAY)."""
        if floor > self._forward_floor and self._forwarding:
            self._forward_floor = floor
            self._floor_later()

    async def receive(self, name: str, timeout: float | None = None) -> Message | None:
        """The next message of a queue, peek-locked: complete() or abandon() it. Waits up
        to `timeout` seconds (None: until one comes; 0: only what is there now) and returns
        None when none came, by `timeout` whatever the connection does. Raises
        QueueNotFound, PoisonMessage, QueueUnavailable (unreachable for request_timeout)."""
        self._check_open()
        if timeout is not None:
            timeout = float(timeout)
            if timeout != timeout:
                raise ValueError("receive timeout must be a number of seconds or None, not nan")
        deadline = None if timeout is None else self._loop.time() + max(0.0, timeout)
        consumer = self._consumers.get(name)
        if timeout is not None and timeout <= 0:
            if consumer is not None:
                message = self._take(consumer)
                if message is not None:
                    return message
            return await self._receive_now(name, 0.0)
        if consumer is None or not (consumer.subscribed or consumer.subscribing):
            consumer = await self._subscribe(name, deadline)
            if consumer is None:
                return None             # the timeout ran out while subscribing
        elif not consumer.subscribed and consumer.subscribing is not None:
            # another receive() is subscribing: wait for it, no longer than our timeout
            try:
                await asyncio.wait_for(asyncio.shield(consumer.subscribing), self._remaining(deadline))
            except TimeoutError:
                return None
        while True:
            message = self._take(consumer)
            if message is not None:
                return message
            if consumer.error is not None:
                error, consumer.error = consumer.error, None
                self._drop_consumer(consumer)
                raise error
            self._check_open()
            outage = self._unavailable()
            if outage is not None:
                raise outage
            remaining = self._remaining(deadline)
            if remaining is not None and remaining <= 0:
                return None
            waiter = self._loop.create_future()
            consumer.waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                pass
            finally:
                if waiter.done() and not waiter.cancelled() and consumer.buffer:
                    consumer.wake()     # woken but leaving: pass the message on
                elif not waiter.done():
                    waiter.cancel()

    async def consume(self, name: str, *, timeout: float | None = None) -> AsyncIterator[Message]:
        """`async for msg in client.consume(name):` every message of a queue as it comes (see
        QueueManager.consume). Ends when the client closes, or when no message came for
        `timeout` seconds (None: never)."""
        while True:
            try:
                message = await self.receive(name, timeout=timeout)
            except QueueError:
                if self._closing:
                    return
                raise
            if message is None:
                return
            yield message

    def _remaining(self, deadline: float | None) -> float | None:
        return None if deadline is None else deadline - self._loop.time()

    async def _receive_now(self, name: str, timeout: float) -> Message | None:
        reply = await self._request([P.RECEIVE, 0, name, timeout, 0], wait=timeout)
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
            self._locks.pop(message._tag, None)
            message._settler = None
        return None

    async def _subscribe(self, name: str, deadline: float | None) -> _Consumer | None:
        old = self._consumers.get(name)
        if old is not None:
            self._drop_consumer(old)
        self._consumer_ids += 1
        consumer = _Consumer(self._consumer_ids, name)
        subscribing = consumer.subscribing = self._request([P.SUBSCRIBE, 0, consumer.consumer_id, name, self.prefetch])
        self._consumers[name] = consumer
        self._by_consumer_id[consumer.consumer_id] = consumer
        consumer.granted = self.prefetch
        try:
            await asyncio.wait_for(asyncio.shield(subscribing), self._remaining(deadline))
        except TimeoutError:
            # the subscription goes on in the background; the next receive() uses it
            subscribing.add_done_callback(lambda f: self._subscribed(consumer, f))
            return None
        except BaseException:
            if not subscribing.done():
                subscribing.cancel()
            self._drop_consumer(consumer)
            raise
        consumer.subscribing = None
        consumer.subscribed = True
        return consumer

    def _subscribed(self, consumer: _Consumer, future: asyncio.Future[Any]) -> None:
        consumer.subscribing = None
        if future.cancelled() or future.exception() is not None:
            self._drop_consumer(consumer)
        else:
            consumer.subscribed = True

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
        tags = []
        for message in messages:
            if self._locks.pop(message._tag, None) is not None:
                tags.append(message._tag)
            message._settler = None
        if tags and self._connected:
            self._send([P.RELEASE, 0, tags])

    # Message.complete() / Message.abandon() land here
    async def complete_message(self, message: Message) -> None:
        """Remove a received message at the service. LockLost if its lock is gone."""
        self._settling(message)
        if self._connected:
            await self._batched(P.COMPLETE_BATCH, None, message._tag, 12)   # this turn's completes: one item
        else:
            await self._request([P.COMPLETE, 0, message._tag])

    async def abandon_message(self, message: Message) -> None:
        """Give a received message back (a failed delivery: retried, delayed or poison)."""
        self._settling(message)
        await self._request([P.ABANDON, 0, message._tag])

    async def renew_message(self, message: Message) -> None:
        """Extend a received message's peek-lock at the service. LockLost."""
        self._check_open()
        if self._locks.get(message._tag) is not message:
            raise LockLost(f"message {message.id} is not locked by this client (settled, expired or released)")
        validity = await self._request([P.RENEW, 0, message._tag])
        message._lock_deadline = time.time() + float(validity)

    def _settling(self, message: Message) -> None:
        self._check_open()
        if self._locks.pop(message._tag, None) is not message:
            raise LockLost(f"message {message.id} is not locked by this client (settled, expired or released)")
        message._settler = None
        if message._lock_deadline <= time.time():
            raise LockLost(f"message {message.id}: the peek-lock expired (validity_duration)")

    def transaction(self) -> RemoteTransaction:
        """`async with client.transaction() as tx:` receives and sends that commit together
        at the service (rolled back if the session to it is lost for good)."""
        self._check_open()
        return RemoteTransaction(self)

    def accept_group(self, name: str, timeout: float | None = None) -> AcceptGroup:
        """`async with client.accept_group(name, timeout) as group:` hold the next free group
        of a queue at the service (see QueueManager.accept_group). The service lets the group
        go if this client is gone for client_grace."""
        self._check_open()
        return AcceptGroup(_RemoteGroups(self), name, check_accept(timeout))

    def receive_batch(self, name: str, max_messages: int, timeout: float | None = None) -> ReceiveBatch:
        """`async with client.receive_batch(name, max_messages, timeout) as batch:` up to
        `max_messages` messages received in one transaction at the service, completed in one
        journal record there when the block ends (see QueueManager.receive_batch)."""
        self._check_open()
        max_messages, timeout = check_batch(max_messages, timeout)
        return ReceiveBatch(self.transaction(), name, max_messages, timeout, _more_at_once)

    async def queue_info(self, name: str) -> QueueInfo:
        """Counts of a queue (see QueueManager.queue_info)."""
        self._check_open()
        return _info(await self._request([P.INFO, 0, name]))

    async def queue_infos(self) -> list[QueueInfo]:
        """queue_info() of every queue of the service (transmission queues included)."""
        self._check_open()
        return [_info(info) for info in await self._request([P.INFO, 0, None])]

    async def queues(self) -> list[str]:
        """Names of every queue of the service (that this client's user may see)."""
        return [info.name for info in await self.queue_infos()]

    async def settings(self, name: str) -> QueueSettings:
        """The settings of a queue (QueueNotFound if there is none)."""
        self._check_open()
        return QueueSettings.from_dict(await self._request([P.SETTINGS, 0, name]))

    async def purge_queue(self, name: str) -> int:
        """Remove every message waiting in a queue (see QueueManager.purge_queue); how
        many. Needs admin at a service with users."""
        self._check_open()
        purged: int = await self._request([P.PURGE, 0, name])
        return purged

    async def peek(self, name: str, count: int = 1) -> list[Message]:
        """Up to `count` messages of a queue without locking them or counting a delivery
        (see QueueManager.peek)."""
        self._check_open()
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"peek count must be an integer >= 1, not {count!r}")
        reply = await self._request([P.PEEK, 0, name, min(count, P.MAX_PEEK)])
        return [self._peeked(fields) for fields in reply]

    def _peeked(self, fields: list[Any]) -> Message:
        P.check_message("peek", fields)
        tag, message_id, body, headers, count, enqueued_at, expires_at, reason, source, sequence, priority, \
            group_id = fields
        return Message(message_id, body, headers, count, enqueued_at, expires_at, reason, source,
                       sequence=sequence, priority=priority, group_id=group_id)

    async def close(self) -> None:
        """Give back prefetched messages, end the session, fail waiting calls."""
        if self._closing:
            return
        consumers = list(self._consumers.values())
        for consumer in consumers:
            self._drop_consumer(consumer)
        self._flush(settle=True)
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._settle_timer is not None:
            self._settle_timer.cancel()
            self._settle_timer = None
        for consumer in consumers:
            consumer.wake_all()     # a waiting receive() sees the client closed and raises
        error = QueueError("the queue client is closed")
        for request in self._pending.values():
            if not request.future.done():
                request.future.set_exception(error)
                request.future.exception()
        self._pending.clear()
        if self._reader is not None:
            self._reader.cancel()
        session = self._session
        if session is not None and not session.closed:
            try:
                await session.close(timeout=5.0)
            except (TimeoutError, TetherError) as exc:
                log.info("queue client session did not close cleanly: %s", exc)
        self._connected = False

    async def __aenter__(self) -> QueueClient:
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
        self._begin: asyncio.Future[Any] | None = None
        self.state = "active"

    async def _id(self) -> int:
        if self.state != "active":
            raise TransactionError(f"the transaction is already {self.state}")
        if self._txid is None:
            if self._begin is None:
                self._begin = self._client._request([P.TX_BEGIN, 0])
            txid: int = await asyncio.shield(self._begin)
            self._txid = txid
        return self._txid

    async def receive(self, name: str, timeout: float | None = None) -> Message | None:
        """Like QueueClient.receive(); the message is settled by commit or rollback."""
        if timeout is not None:
            timeout = float(timeout)
            if timeout < 0:
                timeout = 0.0       # as receive(): no wait (nan stays, and _request refuses it)
        txid = await self._id()
        reply = await self._client._request([P.RECEIVE, 0, name, timeout, txid], wait=timeout)
        if reply is None:
            return None
        message = self._client._message(reply[0], reply[1])
        self._client._locks.pop(message._tag, None)     # settled by the transaction, not by us
        message._settler = self
        return message

    async def receive_many(self, name: str, count: int) -> list[Message]:
        """Up to `count` messages of `name` that are ready now (no wait), in this transaction."""
        out: list[Message] = []
        while len(out) < count:
            message = await self.receive(name, 0)
            if message is None:
                break
            out.append(message)
        return out

    async def send(self, address: str, body: bytes, *, headers: dict[str, Any] | None = None,
                   time_to_live: float | None = None, priority: int = 3, delay: float | None = None,
                   deliver_at: float | None = None, group_id: str | None = None,
                   journal: bool | None = None) -> str:
        """Like QueueClient.send(), but the message is queued only at commit. Returns its id."""
        options = _send_options(priority, delay, deliver_at, group_id, journal)
        txid = await self._id()
        item = self._client._send_item(address, body, headers, time_to_live, options)
        message_id: str = await self._client._request([P.TX_SEND, 0, txid, address, item[3], item[4],
                                                       time_to_live, options])
        return message_id

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
        txid = self._txid
        if txid is None:
            assert self._begin is not None         # one of the two, checked above
            txid = await asyncio.shield(self._begin)
        await self._client._request([P.TX_ROLLBACK, 0, txid])

    async def complete_message(self, message: Message) -> None:
        raise TransactionError(f"message {message.id} belongs to a transaction: it is completed by commit()")

    async def abandon_message(self, message: Message) -> None:
        raise TransactionError(f"message {message.id} belongs to a transaction: it is returned by rollback()")

    async def renew_message(self, message: Message) -> None:
        """A message of this transaction keeps its lock longer (until commit or rollback)."""
        if self.state != "active":
            raise TransactionError(f"the transaction is already {self.state}")
        validity = await self._client._request([P.RENEW, 0, message._tag])
        message._lock_deadline = time.time() + float(validity)

    async def __aenter__(self) -> RemoteTransaction:
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
