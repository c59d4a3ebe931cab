"""One session of a queue service client: frames in, requests run, replies out in batches.

Frames are handled in arrival order. The sends of one frame are one call into the queue
core (one journal record, one wait for durability), and so are its completes; a frame does
not wait for the previous one's fsync, so concurrent clients share group commits. Replies
are collected and sent as one frame per loop iteration.

`ClientState` is what a client holds across its sessions: its producer (epoch and
sequences, core/producers.py), its locks by tag, its open transactions. It is keyed by the
client's identity (auth.client_key: the user and the client id), so a user who claims
another user's client id gets a producer and locks of their own.

HELLO authenticates the session (auth.py); every request after it passes the session's
`RequestGuard` (permissions.py) first, and a refused one is answered PermissionDenied
alone: the session goes on.
"""
from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any, Protocol

from ..errors import (
    AuthenticationFailed,
    LockLost,
    ProtocolError,
    QueueError,
    SendQueueFull,
    SequenceClosed,
    TetherError,
    TransactionError,
)
from . import protocol as P
from .auth import Access, client_key, origin_of
from .core import Entry
from .core.address import is_remote
from .core.producers import NEW, Producer
from .core.system_queues import RETURN_PREFIX
from .limits import FailedLogins, ServiceLimits, exceeded
from .log_limiter import LogLimiter
from .operations import QueueOperations
from .permissions import RequestGuard

log = logging.getLogger("tether.queue.service")

# A reconnecting client may resend a complete whose reply it lost: remember this many.
_RECENTLY_COMPLETED = 65536


class ClientState:
    """What one client (by its HELLO id) holds on the service, across its sessions."""

    __slots__ = ("client_id", "operations", "producer", "epoch", "locks", "transactions", "next_txid",
                 "connection", "completed", "grace", "waiting_receives", "groups", "next_group")

    def __init__(self, client_id: bytes, operations: QueueOperations) -> None:
        self.client_id = client_id
        self.operations = operations
        self.producer: Producer | None = None
        self.epoch = 0
        self.locks: dict[int, Entry] = {}         # lock tag -> entry delivered to this client
        self.transactions: dict[int, Any] = {}
        self.next_txid = 0
        self.connection: Connection | None = None
        self.completed: OrderedDict[int, None] = OrderedDict()
        self.grace: asyncio.TimerHandle | None = None
        self.waiting_receives = 0                 # RECEIVE calls waiting for a message
        self.groups: dict[int, tuple[Any, Any]] = {}     # handle -> (core group, holder token)
        self.next_group = 0

    def remember_completed(self, tag: int) -> None:
        completed = self.completed
        completed[tag] = None
        if len(completed) > _RECENTLY_COMPLETED:
            completed.popitem(last=False)

    def release_all_but(self, keep: set[int]) -> int:
        """Release (uncounted) every lock not in `keep`; how many were released."""
        released = 0
        for tag in [t for t in self.locks if t not in keep]:
            if self.operations.release(self.locks.pop(tag), tag):
                released += 1
        return released

    def release_groups(self) -> int:
        """Let go of every group this client holds (its locks were released already)."""
        groups, self.groups = self.groups, {}
        for group, holder in groups.values():
            self.operations.release_group_now(group, holder)
        return len(groups)

    def cancel_grace(self) -> None:
        if self.grace is not None:
            self.grace.cancel()
            self.grace = None

    async def rollback_transactions(self) -> None:
        transactions, self.transactions = self.transactions, {}
        for tx in transactions.values():
            try:
                if tx.state == "active":
                    await tx.rollback()
            except Exception as exc:    # the manager may be closing: nothing more to undo
                log.info("rolling back a transaction of a departed client failed: %s", exc)
        if transactions:
            log.info("rolled back %d open transactions of client %s", len(transactions), self.client_id.hex()[:12])


class ServiceHooks(Protocol):
    """What a connection asks of its service (service.py)."""

    manager: Any
    operations: QueueOperations
    limits: ServiceLimits
    log_limiter: LogLimiter
    access: Access
    tls: bool
    failed_logins: FailedLogins

    def attach(self, client_id: bytes, producer: Producer, epoch: int, connection: Connection,
               held: list[int]) -> tuple[ClientState, bool]: ...

    def away(self, state: ClientState, connection: Connection) -> None: ...

    def back(self, state: ClientState, connection: Connection) -> None: ...

    def detach(self, state: ClientState, connection: Connection) -> None: ...


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


class Connection:
    """One session of a client: decodes frames, runs requests, batches replies."""

    def __init__(self, service: ServiceHooks, session: Any) -> None:
        self.service = service
        self.manager = service.manager
        self.operations: QueueOperations = service.operations
        self.session = session
        self.state: ClientState | None = None
        self.guard: RequestGuard | None = None        # who the session is, once HELLO authenticated it
        self.origin = ""                              # a forwarder's origin: names its return queue
        self.consumers: dict[int, _Consumer] = {}
        self._loop = asyncio.get_running_loop()
        self._out: list = []
        self._out_bytes = 0
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task] = set()
        self._ended = False
        self._routes: dict[str, str] = {}                  # send address -> local queue
        self._return_ready: asyncio.Future | None = None   # forwards: the origin's return queue
        # SEND, FORWARD and SETTLED take effect in the order they arrived (a floor must never
        # overtake a send below it): each batch waits for the one before it to be queued
        self._turn: asyncio.Future | None = None
        session.set_link_listener(self._link_changed)

    @property
    def linked(self) -> bool:
        """True while the session has a connection."""
        return self.session.link is not None and not self.session.closed

    def _link_changed(self, link: Any) -> None:
        state = self.state
        if state is None:
            return
        if link is None:
            self.service.away(state, self)
        else:
            self.service.back(state, self)

    def abort(self, reason: str) -> None:
        """End the session at once."""
        if not self.session.closed:
            self.session.abort(reason)

    async def refuse(self, error: BaseException, wait: float = 5.0) -> None:
        """Over a limit: answer the client's HELLO with `error`, then close the session (the
        client raises the error from connect(); a session aborted at once would only show
        it a fault)."""
        rid = 0
        try:
            frames = await asyncio.wait_for(self.session.recv_many(), wait)
            first = P.decode(frames[0])[0]
            if first.__class__ is list and len(first) > 1 and first[0] == P.HELLO and first[1].__class__ is int:
                rid = first[1]
        except (TimeoutError, TetherError):
            pass
        self.push([P.ERROR, rid, P.error_code(error), str(error)])
        self._flush()
        try:
            await self.session.close(timeout=wait)
        except (TimeoutError, TetherError):
            self.abort(f"refused: {error}")

    # ---- the request loop ----

    async def run(self) -> None:
        session = self.session
        peer = session.peer_address
        while True:
            try:
                if self.state is None:      # a new session has hello_timeout to say HELLO
                    frames = await asyncio.wait_for(session.recv_many(), self.service.limits.hello_timeout)
                else:
                    frames = await session.recv_many()
            except SequenceClosed:
                return
            except TimeoutError:
                self.service.log_limiter.log(log, logging.INFO, peer_host(peer),
                                             "client %s said no HELLO in time: dropped", peer)
                session.abort("no HELLO in time")
                return
            for frame in frames:
                try:
                    items = P.decode(frame)
                    if self.state is None:
                        await self._hello(items[0])
                        items = items[1:]
                    if items:
                        self._dispatch(items)
                except ProtocolError as exc:
                    self.service.log_limiter.log(log, logging.WARNING, peer_host(peer),
                                                 "client %s broke the queue protocol: %s", peer, exc)
                    self.push([P.ERROR, 0, exc.code, str(exc)])
                    self._flush()
                    await asyncio.sleep(0)
                    session.abort(f"queue protocol error: {exc}")
                    return
                except QueueError as exc:       # HELLO refused (authentication, a fenced producer, storage)
                    self.push([P.ERROR, 0, exc.code, str(exc)])
                    self._flush()
                    await asyncio.sleep(0)
                    session.abort(f"queue protocol hello refused: {exc}")
                    return

    async def _hello(self, item: Any) -> None:
        if item.__class__ is not list or not item or item[0] != P.HELLO:
            raise ProtocolError("queue protocol: the first request of a session must be HELLO")
        if len(item) > 2 and item[2].__class__ is int and item[2] != P.VERSION:
            # before the fields: another version's HELLO has other fields
            raise ProtocolError(f"queue protocol version {item[2]} is not supported (this service speaks {P.VERSION})")
        item = P.parse_request(item)
        _, rid, version, client_id, epoch, held, user, password = item
        host = peer_host(self.session.peer_address)
        failed_logins = self.service.failed_logins
        if user is not None and failed_logins.blocked(host):
            raise AuthenticationFailed(f"too many failed logins from {host} lately: try again later")
        try:
            identity = await self.service.access.authenticate(user, password, over_tls=self.service.tls,
                                                              peer=self.session.peer_address)
        except AuthenticationFailed:
            failed_logins.failed(host)
            raise
        self.origin = origin_of(identity.user, client_id)
        self.guard = RequestGuard(identity.user, identity.permissions, RETURN_PREFIX + self.origin)
        key = client_key(identity.user, client_id)
        producer, epoch = await self.operations.open_producer(key, epoch)
        self.state, resumed = self.service.attach(key, producer, epoch, self, held)
        # resumed False: this service never saw the client (it restarted): its locks are void
        self.push([P.REPLY, rid, {"version": P.VERSION, "server": "tether-qm", "resumed": resumed,
                                  "epoch": epoch, "next_sequence": producer.next_sequence,
                                  "max_frame_bytes": self.session.settings.max_message_size,
                                  "user": identity.user}])

    def _dispatch(self, items: list) -> None:
        sends: list = []
        forwards: list = []
        completes: list = []
        guard = self.guard
        batched = 0
        for raw in items:
            item = P.parse_request(raw)
            op = item[0]
            where = P.BATCH_MESSAGES.get(op)
            if where is not None:
                # a frame costs no more than MAX_ITEMS single requests would
                batched += len(item[where])
                if batched > P.MAX_ITEMS:
                    raise ProtocolError(f"queue protocol: a frame carries at most {P.MAX_ITEMS} batched messages")
            if not guard.unrestricted:
                refusal = guard.refusal(item)
                if refusal is not None:
                    if item[1]:
                        self.push([P.ERROR, item[1], refusal.code, str(refusal)])
                    continue
            if op == P.SETTLED:         # after the sends and forwards before it
                if sends:
                    self._spawn(self._sends(sends), 0)
                    sends = []
                if forwards:
                    self._spawn(self._forwards(forwards), 0)
                    forwards = []
            if op == P.SEND or op == P.SEND_BATCH:
                sends.append(item)
            elif op == P.COMPLETE or op == P.COMPLETE_BATCH:
                completes.append(item)
            elif op == P.FORWARD or op == P.FORWARD_BATCH:
                forwards.append(item)
            elif op == P.CREDIT:
                consumer = self.consumers.get(item[2])
                if consumer is not None:
                    consumer.add_credit(item[3])
            elif op == P.RELEASE:
                locks = self.state.locks
                for tag in item[2]:
                    entry = locks.pop(tag, None)
                    if entry is not None:
                        self.operations.release(entry, tag)
            elif op == P.SETTLED:
                self._spawn(self._settled(item[2]), 0)
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
        limit = self.service.limits.max_pending_requests
        if rid and len(self._tasks) >= limit:
            coro.close()        # never started: a request over the limit is refused at once
            error = exceeded("max_pending_requests", limit, "too many requests of this session at once")
            self.push([P.ERROR, rid, error.code, str(error)])
            return
        task = self._loop.create_task(self._guard(coro, rid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # a task cancelled before it first ran (its session ended) never awaited coro
        task.add_done_callback(lambda _: coro.close())

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

    # ---- sends and forwards ----

    async def _route(self, address: str) -> str:
        name = self._routes.get(address)
        if name is None:
            name = await self.manager.route(address)
            if len(self._routes) >= 4096:         # bounded: forget the oldest
                del self._routes[next(iter(self._routes))]
            self._routes[address] = name
        return name

    async def _sends(self, items: list) -> None:
        """SEND and SEND_BATCH items: prepared one message at a time (a bad one is refused
        alone), queued in one call; one reply per item (a batch's: every outcome)."""
        previous, turn = self._take_turn()
        routes = self._routes
        refused: dict[str, BaseException] = {}
        try:
            # the addresses not seen before (a suspension each, at most once per address)
            for address in {item[2] for item in items if item[2] not in routes}:
                try:
                    await self._route(address)
                except (TetherError, ValueError, TypeError) as exc:
                    refused[address] = exc
            if previous is not None and not previous.done():
                await asyncio.shield(previous)     # our cancellation must not cancel its turn
        finally:
            turn.set_result(None)       # the next batch runs once this one yields: after it is queued
        core = self.operations.core
        now = self.operations.now()
        results: list[Any] = []         # per message (a batch's one per body)
        entries, sequences, where = [], [], []
        for item in items:
            address = item[2]
            name = routes.get(address)
            if item[0] == P.SEND_BATCH:
                bodies, first = item[3], item[4]
                if name is None:
                    error = refused.get(address) or QueueError(f"queue address {address!r} was not routed")
                    results.extend([error] * len(bodies))
                    continue
                k = 0
                while k < len(bodies):
                    # a run of accepted bodies at a time (every one, commonly), then a refusal
                    run = bodies[k:] if k else bodies
                    if name == address:
                        prepared, refusal = core.prepare_plain_many(name, run, now)
                    else:
                        prepared, refusal = self._prepare_routed(name, address, run, now)
                    count = len(prepared)
                    n = len(results)
                    entries += prepared
                    sequences += range(first + k, first + k + count)
                    where += range(n, n + count)
                    results += [None] * count
                    k += count
                    if refusal is not None:
                        results.append(refusal)
                        k += 1
                continue
            _, _, address, body, headers, ttl, sequence, options = item
            results.append(None)
            if name is None:
                results[-1] = refused.get(address) or QueueError(f"queue address {address!r} was not routed")
                continue
            try:
                if headers is None and ttl is None and options is None and name == address:
                    entries.append(core.prepare_plain(name, body, now))      # the common case
                else:
                    entries.append(core.prepare(name, body, now, headers=headers, time_to_live=ttl,
                                                destination=address if name != address else None,
                                                **(options or {})))
                sequences.append(sequence)
                where.append(len(results) - 1)
            except (TetherError, ValueError, TypeError) as exc:
                results[-1] = exc
        await self._queue(entries, sequences, where, results, keep_ids=False)
        self._answer(items, _per_item(items, results))

    def _prepare_routed(self, name: str, address: str, bodies: list, now: float) -> tuple[list[Entry], Any]:
        """prepare() of plain sends to `address`, which routes to local queue `name`, as
        QueueCore.prepare_plain_many: (the entries prepared, the exception refusing the
        body after them or None)."""
        core = self.operations.core
        prepared: list[Entry] = []
        try:
            for body in bodies:
                prepared.append(core.prepare(name, body, now, destination=address))
        except (TetherError, ValueError, TypeError) as exc:
            return prepared, exc
        return prepared, None

    def _take_turn(self) -> tuple[asyncio.Future | None, asyncio.Future]:
        """(the turn before ours, ours): call first thing in a batch's task (tasks start in
        the order they were made, so turns are taken in arrival order)."""
        previous, turn = self._turn, self._loop.create_future()
        self._turn = turn
        return previous, turn

    async def _settled(self, floor: int) -> None:
        """SETTLED: the producer's floor, once every send and forward before it is queued."""
        previous, turn = self._take_turn()
        try:
            if previous is not None and not previous.done():
                await asyncio.shield(previous)     # our cancellation must not cancel its turn
        finally:
            turn.set_result(None)
        self.operations.raise_floor(self.state.producer, floor)

    async def _queue(self, entries: list[Entry], sequences: list[int], where: list[int], results: list[Any],
                     *, keep_ids: bool) -> None:
        """Queue prepared entries under this client's producer; results[where[i]] gets entry
        i's id or the exception refusing it."""
        if not entries:
            return
        state = self.state
        try:
            done = await self.operations.send(entries, producer=state.producer, epoch=state.epoch,
                                              sequences=sequences, keep_ids=keep_ids)
        except Exception as exc:       # the producer was fenced, the manager closed: each is told
            done = [exc] * len(entries)
        for n, result in zip(where, done):
            results[n] = result

    async def _forwards(self, items: list) -> None:
        """FORWARD and FORWARD_BATCH items from another queue manager's forwarder: queued
        keeping their id, enqueue time and expiry, de-duplicated by the forwarder's
        sequence, in one call (one journal record); one reply per item (a batch's: every
        message's outcome)."""
        # a reject at this queue manager goes back to the sender through its return queue,
        # which must exist before the first message from it does. Batches queue in arrival
        # order (the order per sender): each takes its turn after the one before it.
        state = self.state
        origin = self.origin        # derived from the authenticated identity, never from the client's word
        previous, turn = self._take_turn()
        try:
            if self._return_ready is None:
                self._return_ready = asyncio.ensure_future(self.manager.return_queue(origin))
            ready = self._return_ready
            try:
                await ready
            except QueueError as exc:       # not written: refused for now; the next batch tries again
                if self._return_ready is ready:
                    self._return_ready = None
                self._answer(items, [exc] * len(items))
                return
            if previous is not None and not previous.done():
                await asyncio.shield(previous)     # our cancellation must not cancel its turn
        finally:
            # the next batch runs only once this one has yielded, i.e. after send() below
            # queued it (it does not suspend before that)
            turn.set_result(None)
        operations = self.operations
        producers = operations.core.producers
        now = operations.now()
        messages: list = []
        for item in items:
            if item[0] == P.FORWARD_BATCH:
                messages.extend(item[2])
            else:
                messages.append(item[2:])
        results: list[Any] = [None] * len(messages)
        entries, sequences, where = [], [], []
        for n, (queue, sequence, message_id, body, headers, enqueued_at, expires_at, options) in enumerate(messages):
            try:
                if is_remote(queue):
                    raise ValueError(f"forwarded message {message_id}: {queue!r} is not a queue of this queue manager")
                if expires_at is not None and expires_at <= now \
                        and producers.classify(state.producer, queue, sequence) == NEW:
                    # (a resend of one queued before it expired is answered as that one was)
                    raise _Expired(f"message {message_id} expired in transit")
                entries.append(operations.prepare(queue, body, headers=headers, id=message_id,
                                                  enqueued_at=enqueued_at, expires_at=expires_at, origin=origin,
                                                  **_forwarded_options(options)))
                sequences.append(sequence)
                where.append(n)
            except (TetherError, ValueError, TypeError) as exc:
                results[n] = exc
        await self._queue(entries, sequences, where, results, keep_ids=True)
        results = [None if isinstance(result, str) else result for result in results]    # accepted: nil
        self._answer(items, _per_item(items, results))

    def _answer(self, items: list, results: list) -> None:
        """One reply per request that asked for one (rid > 0), in one go."""
        out = self._out
        before = len(out)
        reply = P.REPLY
        for item, result in zip(items, results):
            rid = item[1]
            if not rid:
                continue
            if isinstance(result, BaseException):
                out.append([P.ERROR, rid, P.error_code(result), str(result) or result.__class__.__name__])
            else:
                out.append([reply, rid, result])
        self._out_bytes += 64 * (len(out) - before)
        self._queued()

    # ---- settling ----

    async def _completes(self, items: list) -> None:
        """COMPLETE and COMPLETE_BATCH items: every lock in one record; one reply per item."""
        state = self.state
        locks = state.locks
        tags = []
        for item in items:
            if item[0] == P.COMPLETE_BATCH:
                tags.extend(item[2])
            else:
                tags.append(item[2])
        results: list[Any] = [None] * len(tags)
        receipts, where = [], []
        for n, tag in enumerate(tags):
            entry = locks.pop(tag, None)
            if entry is None:
                if tag not in state.completed:      # (in it: a resend whose reply was lost)
                    results[n] = LockLost(f"lock {tag}: no peek-lock held (expired, settled, or the service "
                                          f"restarted)")
                continue
            receipts.append((entry, tag))
            where.append(n)
        if receipts:
            errors = await self.operations.complete_many(receipts)
            for n, (entry, tag), error in zip(where, receipts, errors):
                if error is None:
                    state.remember_completed(tag)
                elif not isinstance(error, LockLost):
                    locks[tag] = entry      # the write failed: still locked, complete again
                results[n] = error
        self._answer(items, _per_item(items, results))

    # ---- everything else ----

    async def _request(self, item: list) -> Any:
        op = item[0]
        manager = self.manager
        operations = self.operations
        state = self.state
        if op == P.RECEIVE:
            _, _, queue, timeout, txid = item
            if timeout == 0:
                return await self._receive(queue, timeout, txid)
            # it may wait: count it while it does
            limit = self.service.limits.max_waiting_receives
            if state.waiting_receives >= limit:
                raise exceeded("max_waiting_receives", limit, "too many receives of this client waiting")
            state.waiting_receives += 1
            try:
                return await self._receive(queue, timeout, txid)
            finally:
                state.waiting_receives -= 1
        if op == P.ABANDON:
            tag = item[2]
            entry = state.locks.pop(tag, None)
            if entry is None:
                raise LockLost(f"lock {tag}: no peek-lock held (expired, settled, or the service restarted)")
            await operations.abandon(entry, tag)
            return None
        if op == P.SUBSCRIBE:
            _, _, consumer_id, queue, credit = item
            await operations.info(queue)      # QueueNotFound now rather than from the consumer
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
            settings = await manager.create_queue(item[2], **item[3])
            return settings.as_dict()
        if op == P.DELETE:
            await manager.delete_queue(item[2])
            return None
        if op == P.INFO:
            if item[2] is None:
                visible = self.guard.visible
                return [dict(info) for info in await manager.queue_infos() if visible(info.name)]
            return dict(await manager.queue_info(item[2]))
        if op == P.ACCEPT_GROUP or op == P.GROUP_RECEIVE:
            if item[3] == 0:
                return await self._group_request(item)
            limit = self.service.limits.max_waiting_receives
            if state.waiting_receives >= limit:
                raise exceeded("max_waiting_receives", limit, "too many receives of this client waiting")
            state.waiting_receives += 1
            try:
                return await self._group_request(item)
            finally:
                state.waiting_receives -= 1
        if op == P.GROUP_RELEASE:
            held = state.groups.pop(item[2], None)
            if held is None:
                raise LockLost(f"group {item[2]}: not held (released, or the service restarted)")
            group, holder = held
            for tag in [tag for tag, entry in state.locks.items() if entry.group is group]:
                state.locks.pop(tag)
            await operations.release_group(group, holder, abandon=True)
            return None
        if op == P.SETTINGS:
            return (await manager.settings(item[2])).as_dict()
        if op == P.PEEK:
            messages = await manager.peek(item[2], item[3])
            return [P.peeked_fields(m) for m in messages]
        if op == P.PURGE:
            return await manager.purge_queue(item[2])
        if op == P.RENEW:
            tag = item[2]
            entry = state.locks.get(tag) or self._transaction_entry(tag)
            if entry is None:
                raise LockLost(f"lock {tag}: no peek-lock held (expired, settled, or the service restarted)")
            return _validity_after(await operations.renew(entry, tag), operations.now())
        if op == P.TX_BEGIN:
            state.next_txid += 1
            state.transactions[state.next_txid] = manager.transaction()
            return state.next_txid
        if op == P.TX_SEND:
            _, _, txid, address, body, headers, ttl, options = item
            return await self._transaction(txid).send(address, body, headers=headers, time_to_live=ttl,
                                                      **(options or {}))
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

    async def _receive(self, queue: str, timeout: float | None, txid: int) -> Any:
        """RECEIVE: one message (or nil), in a transaction when txid > 0."""
        operations = self.operations
        if txid:
            message = await self._transaction(txid).receive(queue, timeout)
            if message is None:
                return None
            entry = message._entry
        else:
            entry = await operations.take(queue, timeout)
            if entry is None:
                return None
            if self._ended:     # the session went while we waited: give it back
                operations.release(entry, entry.tag)
                return None
            self.state.locks[entry.tag] = entry
        return [P.message_fields(entry), _validity(entry, operations.now())]

    async def _group_request(self, item: list) -> Any:
        """ACCEPT_GROUP or GROUP_RECEIVE."""
        operations = self.operations
        state = self.state
        if item[0] == P.ACCEPT_GROUP:
            accepted = await operations.accept_group(item[2], item[3])
            if accepted is None:
                return None
            if self._ended:     # the session went while we waited: let it go at once
                operations.release_group_now(*accepted)
                return None
            state.next_group += 1
            state.groups[state.next_group] = accepted
            return [accepted[0].group_id, state.next_group]
        held = state.groups.get(item[2])
        if held is None:
            raise LockLost(f"group {item[2]}: not held (released, or the service restarted)")
        entry = await operations.take_group(held[0], held[1], item[3])
        if entry is None:
            return None
        if self._ended:
            operations.release(entry, entry.tag)
            return None
        state.locks[entry.tag] = entry
        return [P.message_fields(entry), _validity(entry, operations.now())]

    def _transaction_entry(self, tag: int) -> Entry | None:
        """The entry a transaction of this client received under lock `tag`, or None."""
        for tx in self.state.transactions.values():
            for message in tx.received:
                if message._tag == tag:
                    return message._entry
        return None

    def _transaction(self, txid: int) -> Any:
        tx = self.state.transactions.get(txid)
        if tx is None:
            raise TransactionError(f"no open transaction {txid} (ended, or the service restarted)")
        return tx

    async def _consume(self, consumer: _Consumer) -> None:
        """Deliver `consumer.queue` while the client has credit: whatever is ready, up to
        the credit, taken in one pass and pushed at once."""
        operations = self.operations
        name = consumer.queue
        locks = self.state.locks
        consumer_id = consumer.consumer_id
        fields = P.message_fields
        limits = self.service.limits
        try:
            while True:
                while consumer.credit <= 0:
                    consumer.wake = self._loop.create_future()
                    await consumer.wake
                if not await self._reply_room():
                    return
                first = await operations.take(name, None)      # waits for one
                room = limits.max_reply_bytes - self._out_bytes - self.session.unacknowledged_bytes
                entries = [first]
                if consumer.credit > 1 and room > len(first.body):
                    try:
                        entries += await operations.take_many(name, consumer.credit - 1, room - len(first.body))
                    except QueueError:
                        pass        # `first` still goes out; the next take raises it

                now = operations.now()
                consumer.credit -= len(entries)
                items = []
                size = 0
                for entry in entries:
                    locks[entry.tag] = entry
                    items.append([P.DELIVER, consumer_id, fields(entry), _validity(entry, now)])
                    size += len(entry.body) + 96
                self._out.extend(items)
                self._out_bytes += size
                self._queued()
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
            self._out_bytes += len(item[2][2]) + 96
        else:
            self._out_bytes += 64
        self._queued()

    def _queued(self) -> None:
        """Items were added to the replies: send them now (a frame's worth) or this turn."""
        if self._out_bytes >= P.FRAME_BYTES:
            self._flush()
        elif not self._flush_scheduled and self._out:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._out:
            return
        out, self._out, self._out_bytes = self._out, [], 0
        if self._ended or self.session.closed:
            return
        limit = self.session.settings.max_message_size
        try:
            self.session.send_nowait(self._frames(out, limit))
        except SendQueueFull:
            # the session holds as much unacknowledged as it takes: the client does not read
            log.warning("client %s does not read its replies: dropped", self.session.peer_address)
            self.abort("the client does not read its replies")
            return
        except TetherError:
            return      # the session ended: the client resends what it still waits for
        hard = 2 * self.service.limits.max_reply_bytes
        if self.session.unacknowledged_bytes > hard:
            log.warning("client %s does not read its replies (%d bytes unacknowledged): dropped",
                        self.session.peer_address, self.session.unacknowledged_bytes)
            self.abort("the client does not read its replies")

    def _frames(self, items: list, limit: int) -> list[bytes]:
        """`items` as frames of at most `limit` bytes. An item too large for any frame is
        answered instead (a reply becomes an ERROR, a delivery is given back and its
        consumer told), never dropped: the client would wait for it forever."""
        frame = P.encode(items)
        if len(frame) <= limit:
            return [frame]
        if len(items) > 1:
            half = len(items) // 2
            return self._frames(items[:half], limit) + self._frames(items[half:], limit)
        return [P.encode([self._too_large(items[0], len(frame), limit)])]

    def _too_large(self, item: list, size: int, limit: int) -> list:
        text = f"the answer is {size} bytes, over this connection's frame limit of {limit} bytes"
        if item[0] == P.REPLY and _carries_a_message(item[2]):
            self._give_back(item[2][0][0])      # a RECEIVE's message: back to its queue
        if item[0] == P.DELIVER:
            self._give_back(item[2][0])
            consumer = self.consumers.pop(item[1], None)
            if consumer is not None and consumer.task is not None:
                consumer.task.cancel()
            return [P.CONSUMER_ERROR, item[1], "message-too-large", f"a message of this queue: {text}"]
        return [P.ERROR, item[1] if item[0] == P.REPLY else 0, "message-too-large", text]

    def _give_back(self, tag: int) -> None:
        """A message that could not reach the client: back to its queue, uncounted (out of
        the transaction that received it, if one did)."""
        state = self.state
        if state is None:
            return
        entry = state.locks.pop(tag, None)
        if entry is not None:
            self.operations.release(entry, tag)
            return
        for tx in state.transactions.values():
            for message in tx.received:
                if message._tag == tag:
                    tx.give_back(message)
                    return

    async def _reply_room(self) -> bool:
        """Wait while the client has max_reply_bytes of replies unacknowledged (it reads
        slowly): consumers stop delivering meanwhile. False (the session is dropped) when
        it stays there for reply_stall seconds."""
        limits = self.service.limits
        session = self.session
        if session.unacknowledged_bytes < limits.max_reply_bytes:
            return True
        deadline = self._loop.time() + limits.reply_stall
        session.ask_for_ack()
        while session.unacknowledged_bytes >= limits.max_reply_bytes:
            if self._loop.time() >= deadline or session.closed:
                log.warning("client %s has not read its replies for %g s: dropped",
                            session.peer_address, limits.reply_stall)
                self.abort("the client does not read its replies")
                return False
            await asyncio.sleep(0.02)
        return True

    def ended(self) -> None:
        self._ended = True
        self.session.set_link_listener(None)
        self.stop_consumers()
        for task in list(self._tasks):
            task.cancel()
        if self.state is not None:
            self.service.detach(self.state, self)


class _Expired(QueueError):
    """The message expired in transit."""

    code = P.EXPIRED_CODE


def _per_item(items: list, results: list) -> list:
    """Per-message results as per-item ones: a batch item's is the array of its messages'
    outcomes (protocol.batch_outcome), another's its own result."""
    batches = P.BATCH_MESSAGES
    if len(results) == len(items):
        if not any(item[0] in batches for item in items):
            return results
    out = []
    n = 0
    outcome = P.batch_outcome
    for item in items:
        where = batches.get(item[0])
        if where is not None:
            count = len(item[where])
            out.append([outcome(r) for r in results[n:n + count]])
            n += count
        else:
            out.append(results[n])
            n += 1
    return out


def _validity(entry: Entry, now: float) -> float:
    return max(0.0, entry.lock_deadline - now)


def _forwarded_options(options: dict | None) -> dict:
    """What of a FORWARD's options the target takes (a relative delay only means something
    at the queue manager that was sent it: a forwarder sends deliver_at)."""
    if not options:
        return {}
    if "delay" in options or "journal" in options:
        raise ValueError("a forwarded message carries deliver_at (not delay), and no journal flag "
                         "(that is its sender's)")
    return options


def _validity_after(deadline: float, now: float) -> float:
    return max(0.0, deadline - now)


def _carries_a_message(value: Any) -> bool:
    """True for a RECEIVE's reply: [message fields, validity]."""
    return (value.__class__ is list and len(value) == 2 and value[0].__class__ is list
            and len(value[0]) == P.MESSAGE_FIELDS)


def peer_host(peer: Any) -> Any:
    """The address part of a session's peer address (host, port[, ...])."""
    return peer[0] if isinstance(peer, tuple) and peer else peer
