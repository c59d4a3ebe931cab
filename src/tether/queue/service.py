"""The queue manager as a service: a `QueueManager` served over reliable sessions with the
protocol of protocol.py, to `QueueClient`s and to other queue managers' forwarders.

    tether qm serve --listen tcp://127.0.0.1:7600 --data-dir ./data [--config qm.toml]
    qm = await QueueManager.open("./data", listen="tcp://127.0.0.1:7600")   # embedded

Each client names itself with a random id in HELLO. What it holds on the service -- its
peek-locked messages and open transactions -- belongs to that id, not to the session, so a
client that lost its session and comes back with a new one (same id) completes what it
received before; whatever was delivered but never reached it (not in HELLO's held list)
is released at once, uncounted. A client that does not come back within `client_grace`
seconds has its transactions rolled back; its locks simply expire (validity_duration).

Frames are handled in arrival order; the sends (and completes) of one frame are one
journal record and one wait for durability (batch.py), and a frame does not wait for the
previous one's fdatasync, so concurrent clients share group commits.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections import OrderedDict
from typing import Any

from ..errors import LockLost, ProtocolError, QueueError, SequenceClosed, TetherError, TransactionError
from ..session.api import serve
from . import protocol as P
from .address import is_remote
from .batch import complete_many, release, send_batch
from .manager import ORIGIN_HEADER
from .message import Message

log = logging.getLogger("tether.queue.service")

#: Seconds a disconnected client's transactions wait for it to reconnect.
CLIENT_GRACE = 60.0
# A reconnecting client may resend a complete whose reply it lost: remember this many.
_RECENTLY_COMPLETED = 65536


class _ClientState:
    """What one client (by its HELLO id) holds on the service, across its sessions."""

    __slots__ = ("client_id", "locks", "transactions", "next_txid", "connection", "completed", "drop_handle")

    def __init__(self, client_id: bytes) -> None:
        self.client_id = client_id
        self.locks: dict[str, Message] = {}
        self.transactions: dict[int, Any] = {}
        self.next_txid = 0
        self.connection: _Connection | None = None
        self.completed: OrderedDict[str, None] = OrderedDict()
        self.drop_handle: asyncio.TimerHandle | None = None

    def remember_completed(self, message_id: str) -> None:
        completed = self.completed
        completed[message_id] = None
        if len(completed) > _RECENTLY_COMPLETED:
            completed.popitem(last=False)


class _Consumer:
    __slots__ = ("consumer_id", "queue", "credit", "wake", "task")

    def __init__(self, consumer_id: int, queue: str, credit: int) -> None:
        self.consumer_id = consumer_id
        self.queue = queue
        self.credit = credit
        self.wake: asyncio.Future | None = None
        self.task: asyncio.Task | None = None

    def add_credit(self, credit: int) -> None:
        self.credit = min(self.credit + credit, P.MAX_CREDIT)
        wake = self.wake
        if wake is not None and not wake.done():
            wake.set_result(None)


class QueueService:
    """Serves one QueueManager at one URL. Start with `await QueueService.start(qm, url)`
    (or `qm.listen(url)`); `address` is the bound (host, port); `close()` stops it."""

    def __init__(self, manager: Any, *, client_grace: float = CLIENT_GRACE) -> None:
        self.manager = manager
        self.client_grace = client_grace
        self.clients: dict[bytes, _ClientState] = {}
        self._server: Any = None
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._closed = False

    @classmethod
    async def start(cls, manager: Any, url: str, *, client_grace: float = CLIENT_GRACE,
                     **session_settings: Any) -> "QueueService":
        """Listen at `url` (tcp://HOST:PORT; port 0 picks a free one)."""
        service = cls(manager, client_grace=client_grace)
        settings = dict(P.SESSION_SETTINGS)
        settings.update(session_settings)
        service._server = await serve(service._handle, url, **settings)
        log.info("queue service listening on %s", service.url)
        return service

    @property
    def address(self) -> tuple:
        """The (host, port) actually bound."""
        return self._server.address

    @property
    def url(self) -> str:
        """The URL clients connect to, with the port actually bound."""
        return self._server.url_bound

    async def close(self) -> None:
        """Stop serving: open transactions roll back, subscriptions stop, sessions close.
        Locked messages stay locked in the manager (redelivered after their lock expires,
        or after the manager restarts)."""
        if self._closing:
            return
        self._closing = True
        for state in list(self.clients.values()):
            if state.connection is not None:
                state.connection.stop_consumers()
            await self._rollback_all(state)
            if state.drop_handle is not None:
                state.drop_handle.cancel()
        self._server.close()
        await self._server.wait_closed()
        self.clients.clear()
        self._closed = True
        log.info("queue service at %s closed", self.url)

    async def _rollback_all(self, state: _ClientState) -> None:
        transactions, state.transactions = state.transactions, {}
        for tx in transactions.values():
            try:
                if tx.state == "active":
                    await tx.rollback()
            except Exception as exc:    # the manager may be closing: nothing more to undo
                log.info("rolling back a transaction of a departed client failed: %s", exc)
        if transactions:
            log.info("rolled back %d open transactions of client %s", len(transactions), state.client_id.hex()[:12])

    # ---- sessions ----

    async def _handle(self, session: Any) -> None:
        connection = _Connection(self, session)
        try:
            await connection.run()
        finally:
            connection.ended()

    def attach(self, client_id: bytes, connection: "_Connection", held: list[str]) -> _ClientState:
        """A session said HELLO as `client_id`: its state (new, or resumed, releasing the
        locks it does not list in `held`)."""
        state = self.clients.get(client_id)
        if state is None:
            state = self.clients[client_id] = _ClientState(client_id)
        else:
            if state.drop_handle is not None:
                state.drop_handle.cancel()
                state.drop_handle = None
            old = state.connection
            if old is not None and old is not connection:
                old.stop_consumers()
                old.state = None
            # delivered on an earlier session but never seen by the client: release at once
            keep = set(held)
            for message_id in [i for i in state.locks if i not in keep]:
                release(state.locks.pop(message_id))
            log.info("client %s reconnected (%d locks kept)", client_id.hex()[:12], len(state.locks))
        state.connection = connection
        return state

    def detach(self, state: _ClientState, connection: "_Connection") -> None:
        """The session ended: the client has `client_grace` seconds to come back."""
        if state.connection is not connection:
            return
        state.connection = None
        if self._closing:
            return
        state.drop_handle = self._loop.call_later(self.client_grace, self._drop, state)

    def _drop(self, state: _ClientState) -> None:
        if self.clients.get(state.client_id) is not state or state.connection is not None:
            return
        del self.clients[state.client_id]
        log.info("client %s did not return; its transactions roll back", state.client_id.hex()[:12])
        self._loop.create_task(self._rollback_all(state))


class _Connection:
    """One session of a client: decodes frames, runs requests, batches replies."""

    def __init__(self, service: QueueService, session: Any) -> None:
        self.service = service
        self.manager = service.manager
        self.session = session
        self.state: _ClientState | None = None
        self.consumers: dict[int, _Consumer] = {}
        self._loop = service._loop
        self._out: list = []
        self._out_bytes = 0
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task] = set()
        self._ended = False
        self._return_ready: asyncio.Future | None = None   # forwards: the origin's return queue
        self._forward_turn: asyncio.Future | None = None   # done once the last FORWARD batch queued

    # ---- the request loop ----

    async def run(self) -> None:
        session = self.session
        peer = session.peer_address
        while True:
            try:
                frames = await session.recv_many()
            except SequenceClosed:
                return
            for frame in frames:
                try:
                    items = P.decode(frame)
                    if self.state is None:
                        self._hello(items[0])
                        items = items[1:]
                    self._dispatch(items)
                except ProtocolError as exc:
                    log.warning("client %s broke the queue protocol: %s", peer, exc)
                    self.push([P.ERROR, 0, exc.code, str(exc)])
                    self._flush()
                    await asyncio.sleep(0)
                    session.abort(f"queue protocol error: {exc}")
                    return

    def _hello(self, item: Any) -> None:
        item = P.parse_request(item)
        if item[0] != P.HELLO:
            raise ProtocolError("queue protocol: the first request of a session must be HELLO")
        _, rid, version, client_id, held = item
        if version != P.VERSION:
            raise ProtocolError(f"queue protocol version {version} is not supported (this service speaks {P.VERSION})")
        resumed = client_id in self.service.clients
        self.state = self.service.attach(client_id, self, held)
        # resumed False: this service never saw the client (it restarted): its locks are void
        self.push([P.REPLY, rid, {"version": P.VERSION, "server": "tether-qm", "resumed": resumed,
                                  "max_frame_bytes": self.session.settings.max_message_size}])

    def _dispatch(self, items: list) -> None:
        sends: list = []
        forwards: list = []
        completes: list = []
        for raw in items:
            item = P.parse_request(raw)
            op = item[0]
            if op == P.SEND:
                sends.append(item)
            elif op == P.COMPLETE:
                completes.append(item)
            elif op == P.FORWARD:
                forwards.append(item)
            elif op == P.CREDIT:
                consumer = self.consumers.get(item[2])
                if consumer is not None:
                    consumer.add_credit(item[3])
            elif op == P.RELEASE:
                locks = self.state.locks
                for message_id in item[2]:
                    message = locks.pop(message_id, None)
                    if message is not None:
                        release(message)
            elif op == P.FORGET:
                self._spawn(self.manager.forget_forwarded(item[2]), 0)
            elif op == P.HELLO:
                raise ProtocolError("queue protocol: HELLO may only open a session")
            else:
                self._spawn(self._request(item), item[1])
        if sends:
            self._spawn(self._sends(sends), 0)
        if forwards:
            self._spawn(self._forwards(forwards), 0)
        if completes:
            self._spawn(self._completes(completes), 0)

    def _spawn(self, coro: Any, rid: int) -> None:
        task = self._loop.create_task(self._guard(coro, rid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, coro: Any, rid: int) -> None:
        try:
            value = await coro
        except asyncio.CancelledError:
            raise
        except (TetherError, ValueError, TypeError) as exc:
            if rid:
                self.push([P.ERROR, rid, P.error_code(exc), str(exc) or exc.__class__.__name__])
            return
        except Exception as exc:
            log.exception("queue request failed")
            if rid:
                self.push([P.ERROR, rid, "internal-error", f"the service failed: {exc!r}"])
            return
        if rid:
            self.push([P.REPLY, rid, value])

    # ---- requests ----

    async def _sends(self, items: list) -> None:
        batch = [(i[2], i[3], i[4], i[5], i[6], None, None) for i in items]
        try:
            results = await send_batch(self.manager, batch, dedupe=True)
        except Exception as exc:       # the journal failed, the manager closed: each is told
            results = [exc] * len(items)
        self._answer(items, results)

    async def _forwards(self, items: list) -> None:
        # a reject at this queue manager goes back to the sender through its return queue,
        # which must exist before the first message from it does. Batches queue in arrival
        # order (the order per sender): each takes its turn after the one before it, since
        # a batch arriving just as the return queue became ready would not wait for it and
        # overtake the batches still waking from that wait.
        origin = self.state.client_id.hex()
        previous, turn = self._forward_turn, self._loop.create_future()
        self._forward_turn = turn
        try:
            if self._return_ready is None:
                self._return_ready = asyncio.ensure_future(self.manager.return_queue(origin))
            await self._return_ready
            if previous is not None and not previous.done():
                await previous
        finally:
            # the next batch runs only once this one has yielded, i.e. after send_batch
            # below queued it (send_batch does not suspend before that)
            turn.set_result(None)
        now = time.time()
        batch = []
        early: dict[int, BaseException] = {}
        for n, (_, rid, queue, message_id, body, headers, enqueued_at, expires_at) in enumerate(items):
            headers = dict(headers) if headers else {}
            headers[ORIGIN_HEADER] = origin
            if is_remote(queue):
                early[n] = ValueError(f"forwarded message {message_id}: {queue!r} is not a queue of this queue manager")
            elif expires_at is not None and expires_at <= now:
                early[n] = _Expired(f"message {message_id} expired in transit")
            batch.append((queue, body, headers, None, message_id, enqueued_at, expires_at))
        keep = [n for n in range(len(items)) if n not in early]
        results: list[Any] = [None] * len(items)
        if keep:
            try:
                done = await send_batch(self.manager, [batch[n] for n in keep], dedupe=True)
            except Exception as exc:
                done = [exc] * len(keep)
            for n, result in zip(keep, done):
                results[n] = result
        for n, exc in early.items():
            results[n] = exc
        self._answer(items, results)

    def _answer(self, items: list, results: list) -> None:
        push = self.push
        for item, result in zip(items, results):
            rid = item[1]
            if not rid:
                continue
            if isinstance(result, BaseException):
                push([P.ERROR, rid, P.error_code(result), str(result)])
            else:
                push([P.REPLY, rid, result])

    async def _completes(self, items: list) -> None:
        state = self.state
        locks = state.locks
        messages, waiting, results = [], [], []
        for item in items:
            message = locks.pop(item[2], None)
            if message is None:
                if item[2] in state.completed:      # a resend whose reply was lost
                    results.append((item, None))
                else:
                    results.append((item, LockLost(f"message {item[2]}: no peek-lock held (expired, "
                                                   f"settled, or the service restarted)")))
                continue
            messages.append(message)
            waiting.append(item)
        if messages:
            try:
                errors = await complete_many(self.manager, messages)
            except Exception as exc:
                errors = [exc] * len(messages)
            for item, message, error in zip(waiting, messages, errors):
                if error is None:
                    state.remember_completed(message.id)
                results.append((item, error))
        self._answer([r[0] for r in results], [r[1] for r in results])

    async def _request(self, item: list) -> Any:
        op = item[0]
        qm = self.manager
        state = self.state
        if op == P.RECEIVE:
            _, _, queue, timeout, txid = item
            if txid:
                message = await self._transaction(txid).receive(queue, timeout)
            else:
                message = await qm.receive(queue, timeout)
                if message is not None:
                    if self._ended:     # the session went while we waited: give it back
                        release(message)
                        return None
                    state.locks[message.id] = message
            if message is None:
                return None
            return [P.message_fields(message), _validity(message)]
        if op == P.ABANDON:
            message = state.locks.pop(item[2], None)
            if message is None:
                raise LockLost(f"message {item[2]}: no peek-lock held (expired, settled, or the service restarted)")
            await message.abandon()
            return None
        if op == P.SUBSCRIBE:
            _, _, consumer_id, queue, credit = item
            qm.settings(queue)      # QueueNotFound now rather than from the consumer
            if consumer_id in self.consumers:
                raise ValueError(f"consumer {consumer_id} is already subscribed")
            consumer = self.consumers[consumer_id] = _Consumer(consumer_id, queue, credit)
            consumer.task = self._loop.create_task(self._consume(consumer))
            return None
        if op == P.UNSUBSCRIBE:
            consumer = self.consumers.pop(item[2], None)
            if consumer is not None and consumer.task is not None:
                consumer.task.cancel()
            return None
        if op == P.CREATE:
            settings = await qm.create_queue(item[2], **item[3])
            return settings.as_dict()
        if op == P.DELETE:
            await qm.delete_queue(item[2])
            return None
        if op == P.INFO:
            if item[2] is None:
                return [dict(await qm.queue_info(name)) for name in qm.queues()]
            return dict(await qm.queue_info(item[2]))
        if op == P.TX_BEGIN:
            state.next_txid += 1
            state.transactions[state.next_txid] = qm.transaction()
            return state.next_txid
        if op == P.TX_SEND:
            _, _, txid, address, body, headers, ttl = item
            return await self._transaction(txid).send(address, body, headers=headers, time_to_live=ttl)
        if op == P.TX_COMMIT:
            tx = state.transactions.pop(item[2], None)
            if tx is None:
                raise TransactionError(f"no open transaction {item[2]} (ended, or the service restarted)")
            await tx.commit()
            return None
        if op == P.TX_ROLLBACK:
            tx = state.transactions.pop(item[2], None)
            if tx is not None and tx.state == "active":
                await tx.rollback()
            return None
        raise ProtocolError(f"queue protocol: op {op} is not a request")   # parse_request let it through

    def _transaction(self, txid: int) -> Any:
        tx = self.state.transactions.get(txid)
        if tx is None:
            raise TransactionError(f"no open transaction {txid} (ended, or the service restarted)")
        return tx

    async def _consume(self, consumer: _Consumer) -> None:
        """Deliver `consumer.queue` while the client has credit."""
        qm = self.manager
        name = consumer.queue
        locks = self.state.locks
        push = self.push
        try:
            while True:
                while consumer.credit <= 0:
                    consumer.wake = self._loop.create_future()
                    await consumer.wake
                message = await qm.receive(name)
                now = time.time()
                while message is not None:
                    consumer.credit -= 1
                    locks[message.id] = message
                    push([P.DELIVER, consumer.consumer_id, P.message_fields(message),
                          max(0.0, message._lock_deadline - now)])
                    if consumer.credit <= 0:
                        break
                    message = await qm.receive(name, 0)     # does not suspend
        except asyncio.CancelledError:
            raise
        except (TetherError, ValueError, TypeError) as exc:
            self.consumers.pop(consumer.consumer_id, None)
            self.push([P.CONSUMER_ERROR, consumer.consumer_id, P.error_code(exc), str(exc)])

    def stop_consumers(self) -> None:
        for consumer in self.consumers.values():
            if consumer.task is not None:
                consumer.task.cancel()
        self.consumers.clear()

    # ---- replies ----

    def push(self, item: list) -> None:
        self._out.append(item)
        if item[0] == P.DELIVER:
            self._out_bytes += len(item[2][1]) + 96
        else:
            self._out_bytes += 64
        if self._out_bytes >= P.FRAME_BYTES:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._out:
            return
        out, self._out, self._out_bytes = self._out, [], 0
        if self._ended or self.session.closed:
            return
        try:
            self.session.send_nowait([P.encode(out)])
        except TetherError:
            pass    # the session ended: the client resends what it still waits for

    def ended(self) -> None:
        self._ended = True
        self.stop_consumers()
        for task in list(self._tasks):
            task.cancel()
        if self.state is not None:
            self.service.detach(self.state, self)


class _Expired(QueueError):
    """The message expired in transit."""

    code = P.EXPIRED_CODE


def _validity(message: Message) -> float:
    return max(0.0, message._lock_deadline - time.time())


# ---- `tether qm serve` ----

def configure(parser: argparse.ArgumentParser) -> None:
    """Options of `tether qm serve`."""
    parser.add_argument("--listen", action="append", default=None, metavar="URL",
                        help="tcp://HOST:PORT to serve (repeatable; default tcp://127.0.0.1:7600, loopback)")
    parser.add_argument("--data-dir", default=None, help="journal directory (required here or in --config)")
    parser.add_argument("--config", default=None, metavar="FILE", help="TOML configuration file")
    parser.add_argument("--fsync", default=None, choices=("always", "interval", "never"),
                        help="journal fsync policy (default always)")
    parser.add_argument("--log-level", default=None, choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def _config(args: argparse.Namespace) -> Any:
    from . import config as cfg

    config = cfg.load(args.config) if args.config else cfg.ServiceConfig()
    if args.listen:
        config.listen = list(args.listen)
    if args.data_dir is not None:
        config.data_dir = args.data_dir
    if args.fsync is not None:
        config.fsync = args.fsync
    if args.log_level is not None:
        config.log_level = args.log_level
    config.validate()
    if not config.data_dir:
        raise ValueError("a data directory is required: --data-dir DIR (or data_dir in --config)")
    return config


async def serve_forever(config: Any, stop: asyncio.Event | None = None) -> None:
    """Run a queue manager service until `stop` is set (or SIGTERM/SIGINT arrive)."""
    from .manager import QueueManager

    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    qm = await QueueManager.open(config.data_dir, fsync=config.fsync, fsync_interval=config.fsync_interval)
    services: list[QueueService] = []
    try:
        for name, settings in config.queues.items():
            await qm.create_queue(name, **settings)
        for url in config.listen:
            services.append(await QueueService.start(qm, url, client_grace=config.client_grace,
                                                     max_message_size=config.max_frame_bytes))
        # the line scripts and tests wait for: every address actually bound
        print("tether qm: ready " + " ".join(s.url for s in services), flush=True)
        await stop.wait()
        log.info("shutting down: rolling back open transactions, closing the journal")
    finally:
        for service in services:
            await service.close()
        await qm.close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.remove_signal_handler(signum)
            except (NotImplementedError, RuntimeError):
                pass
    log.info("queue manager stopped cleanly")


def main(args: argparse.Namespace) -> int:
    """`tether qm serve`: exit status 0 after a clean shutdown."""
    config = _config(args)
    logging.basicConfig(level=getattr(logging, config.log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ..cli import _new_loop_runner

    _new_loop_runner()(serve_forever(config))
    return 0
