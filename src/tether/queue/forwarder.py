"""Store-and-forward: one `Forwarder` per transmission queue moves its messages to the queue
manager that owns their target queue.

    qm.send("tether://10.0.0.2:7600/orders", b"...")  ->  $xmit:10.0.0.2:7600  ->  forwarder
        -> FORWARD_BATCH over a reliable session -> the target journals it (de-duplicated) -> REPLY
        -> the forwarder completes it here

The forwarder is an idempotent producer at the target: its id is derived from this queue
manager's identity and the target's address (stable across restarts), each message carries
the sequence its transmission queue numbered it with, and the target queues each sequence
once however often it is resent (after a lost answer, a reconnect, or a crash on either
side). The forwarder receives from the transmission queue under peek-lock (FIFO), sends
the messages it took in one pass as FORWARD_BATCH items (one reply and one journal record
at the target each; up to MAX_IN_FLIGHT messages unanswered), and settles each message by
the rule of forwarding.py: completed once the target has it, dead-lettered here on a
definitive refusal, given back uncounted and retried after a pause on a transient one. Its
floor (every sequence below is settled) is told to the target only from the transmission
queue's state after the local completions are durable. The peek-locks of unanswered
messages are renewed, so a target down for hours costs no failed deliveries.

A target queue with receive_error_handling="reject" sends a negative acknowledgement: the
target keeps the rejected message in its return queue for this forwarder, and the
forwarder takes it back into this queue manager's `$dead` (reason `rejected`), once.

How it reaches the target (tcp:// or tls://, with which credentials) is the target's
`Remote` (remotes.py). A target that refuses the credentials is tried again every
AUTH_RETRY seconds, each time with a WARNING, until its configuration or ours is fixed.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time

from ..backoff import Backoff
from ..errors import AuthenticationFailed, QueueError, QueueNotFound, TetherError
from .auth import origin_of
from .client import QueueClient
from .core import Entry
from .core.deadletter import REJECTED
from .core.entry import DEFAULT_PRIORITY
from .core.headers import plain_headers
from .core.settings import SYSTEM_DEAD_LETTER_QUEUE
from .core.system_queues import RETURN_PREFIX
from .forwarding import ForwardEngine
from .operations import QueueOperations
from .remotes import DIRECT, Remote

log = logging.getLogger("tether.queue.forwarder")

CONNECT_FIRST = 0.05
CONNECT_CAP = 2.0           # at most this long between connection attempts
MAX_IN_FLIGHT = 4096        # messages sent and not yet answered (ForwardEngine.max_in_flight)
LOCK_RENEW_EVERY = 1.0      # seconds between renewals of the locks of unanswered messages
RETURNS_POLL = 1.0          # the target makes our return queue with our first transfer
AUTH_RETRY = 30.0           # seconds between attempts while the target refuses our credentials
TAKE_AT_ONCE = 256          # messages taken from the transmission queue in one pass, at most
BYTES_AT_ONCE = 1 << 20     # ... and their bodies' bytes (the pass ends once past this)
FIELDS_BYTES = 128          # a forwarded message's wire size beyond its body and headers, about


def _forward_fields(entry: Entry) -> list:
    """A transmission queue's entry as a FORWARD_BATCH message: [queue, sequence, id,
    body, headers, enqueued_at, expires_at, options]."""
    address = entry.destination
    target = address[address.index("/", len("tether://")) + 1:]
    options = None
    if entry.priority != DEFAULT_PRIORITY or entry.deliver_at is not None or entry.group_id is not None:
        options = {"priority": entry.priority}
        if entry.deliver_at is not None:
            options["deliver_at"] = entry.deliver_at
        if entry.group_id is not None:
            options["group_id"] = entry.group_id
    return [target, entry.sequence, entry.id, entry.body, plain_headers(entry.headers), entry.enqueued_at,
            entry.expires_at, options]


def producer_id(manager_id: bytes, authority: str) -> bytes:
    """The forwarder's producer id at `authority`: stable for this queue manager."""
    return hashlib.sha256(manager_id + b"\0forward\0" + authority.encode()).digest()[:16]


class Forwarder:
    """Moves one transmission queue's messages to the queue manager at `authority`."""

    def __init__(self, operations: QueueOperations, queue: str, authority: str, manager_id: bytes,
                 remote: Remote = DIRECT, client_id: bytes | None = None) -> None:
        self.operations = operations
        self.queue = queue
        self.authority = authority
        self.remote = remote
        self.url = remote.url(authority)
        # (a shared store's forwarders share one id, kept in the database: shared_forwarding.py)
        self.client_id = client_id if client_id is not None else producer_id(manager_id, authority)
        self.client: QueueClient | None = None
        self.engine = ForwardEngine(queue, max_in_flight=MAX_IN_FLIGHT)
        self._loop = asyncio.get_running_loop()
        self._room = asyncio.Event()
        self._room.set()
        self._answered = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._returned = 0          # rejects taken back from the target into our $dead
        self._closed = False

    @property
    def forwarded(self) -> int:
        """Messages the target has durably, completed here."""
        return self.engine.forwarded

    @property
    def dead_lettered(self) -> int:
        """Messages moved to our dead-letter queue: refused by the target, or rejected there."""
        return self.engine.dead_lettered + self._returned

    @classmethod
    def start(cls, operations: QueueOperations, queue: str, authority: str, manager_id: bytes,
              remote: Remote = DIRECT, client_id: bytes | None = None) -> Forwarder:
        """A running forwarder for the transmission queue `queue`, reaching `authority` as
        `remote` says (as producer `client_id` there: default, derived from `manager_id`)."""
        forwarder = cls(operations, queue, authority, manager_id, remote, client_id)
        forwarder._tasks = [forwarder._loop.create_task(coro) for coro in
                            (forwarder._run(), forwarder._settle_loop(), forwarder._renew_locks())]
        return forwarder

    async def close(self) -> None:
        """Stop forwarding; messages sent but unanswered return to the transmission queue."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self.client is not None:
            await self.client.close()
        # back to the front of the queue in their original order
        for entry, tag in self.engine.give_back():
            self.operations.release(entry, tag)

    # ---- connecting ----

    async def _run(self) -> None:
        backoff = Backoff(CONNECT_FIRST, CONNECT_CAP)
        remote = self.remote
        while True:
            try:
                # no request timeout: unanswered FORWARDs wait (locks renewed) and are
                # resent on every reconnect, for as long as the target is away
                self.client = await QueueClient.connect(self.url, ssl=remote.ssl, user=remote.user,
                                                        password=remote.password, connect_timeout=5.0,
                                                        client_id=self.client_id, request_timeout=None)
            except AuthenticationFailed as exc:
                log.warning("forwarder to %s: %s; trying again in %g s", self.url, exc, AUTH_RETRY)
                await asyncio.sleep(AUTH_RETRY)
                continue
            except (TimeoutError, OSError, TetherError) as exc:
                delay = backoff.next()
                log.info("forwarder to %s: cannot connect (%s); retrying in %.2f s", self.url, exc, delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            log.info("forwarder to %s connected", self.url)
            client = self.client
            await self._continue_numbering(client)
            returns = self._loop.create_task(self._take_back_rejects(client))
            self._tasks.append(returns)
            await self._pump(client)    # the client reconnects by itself, until a failure ends it
            # it failed for good (its credentials refused on a reconnect): start again
            returns.cancel()
            self._tasks.remove(returns)
            log.warning("forwarder to %s: %s; connecting again in %g s", self.url, client.failure, AUTH_RETRY)
            await client.close()
            await asyncio.sleep(AUTH_RETRY)

    async def _continue_numbering(self, client: QueueClient) -> None:
        """Number new messages above every sequence the target has seen from us. It can
        have seen more than we numbered only if this queue manager is an older copy of
        itself (restored, with its clock behind the time the copy's later life ran; each
        life numbers from its opening time, core/engine.py), or another one uses its data."""
        seen = client.service_next_sequence
        try:
            before = await self.operations.raise_numbering(self.queue, seen)
        except TetherError as exc:      # the journal failed: the next connection tries again
            log.warning("forwarder to %s: could not number above the target's sequence %d: %s",
                        self.url, seen, exc)
            return
        if before is not None:
            log.warning("forwarder to %s: the target has seen sequences up to %d from this queue manager, "
                        "which had numbered up to %d only: this data directory is an older copy (or is "
                        "used by another queue manager); numbering from %d on. Messages waiting here "
                        "numbered below %d may be taken by the target as ones it has",
                        self.url, seen - 1, before - 1, seen, before)

    # ---- sending ----

    async def _pump(self, client: QueueClient) -> None:
        operations = self.operations
        engine = self.engine
        name = self.queue
        while True:
            await self._room.wait()
            pause = engine.pause(time.time())
            if pause > 0:
                await asyncio.sleep(pause)
            entry = await operations.take(name, None)
            now = time.time()
            if client.failure is not None:      # the client ended for good: reconnect first
                operations.release(entry, entry.tag)
                return
            if not engine.may_send(now):       # a transient refusal came while we waited
                operations.release(entry, entry.tag)
                continue
            # with whatever else is ready now: one FORWARD_BATCH
            entries = [entry]
            room = min(engine.room(now), TAKE_AT_ONCE) - 1
            if room > 0:
                entries += await operations.take_many(name, room, BYTES_AT_ONCE - len(entry.body))
            while entries:
                batch = []
                for entry in entries:
                    if engine.sent(entry, now):
                        batch.append(entry)
                    else:                          # expired before it was forwarded
                        self._answered.set()
                self._send(client, batch)
                if not engine.has_room(now):
                    self._room.clear()
                    break
                # then whatever else is ready, in one pass (no more than the window has room for)
                entries = await operations.take_many(name, min(engine.room(now), TAKE_AT_ONCE), BYTES_AT_ONCE)

    def _send(self, client: QueueClient, entries: list[Entry]) -> None:
        """Send `entries` (in flight) as FORWARD_BATCH items, one reply each: as many as
        fit a frame per item (a larger message goes alone)."""
        limit = client.max_frame_bytes
        batch: list[Entry] = []
        fields: list[list] = []
        size = 0
        for entry in entries:
            cost = len(entry.body) + (len(entry.headers) if entry.headers else 0) + FIELDS_BYTES
            if batch and size + cost > limit:
                self._send_batch(client, batch, fields)
                batch, fields, size = [], [], 0
            batch.append(entry)
            fields.append(_forward_fields(entry))
            size += cost
        if batch:
            self._send_batch(client, batch, fields)

    def _send_batch(self, client: QueueClient, entries: list[Entry], fields: list[list]) -> None:
        sent = [(entry, entry.tag) for entry in entries]
        future = client.forward_batch(fields)
        future.add_done_callback(lambda f: self._on_answers(sent, f))

    def _on_answers(self, sent: list[tuple[Entry, int]], future: asyncio.Future) -> None:
        """A FORWARD_BATCH was answered: each message's outcome goes to the engine (the
        batch's error for every one when it was refused whole)."""
        if future.cancelled():
            return
        error = future.exception()
        if self._closed:
            return
        outcomes = [error] * len(sent) if error is not None else future.result()
        answered = self.engine.answered
        for (entry, tag), outcome in zip(sent, outcomes):
            code = None if outcome is None else getattr(outcome, "code", "internal-error")
            answered(entry, tag, code, outcome)
        self._answered.set()

    async def _settle_loop(self) -> None:
        """Settle answered messages in batches: dead-letter, give back, complete."""
        operations = self.operations
        engine = self.engine
        while True:
            await self._answered.wait()
            self._answered.clear()
            plan = engine.settle(time.time())
            for entry, tag, reason, error in plan.dead_letters:
                log.warning("forwarder to %s: message %s dead-lettered (%s): %s",
                            self.authority, entry.id, reason, error or "expired before it was forwarded")
                try:
                    await operations.dead_letter(entry, tag, reason)
                    engine.dead_lettered += 1
                except TetherError as exc:   # the lock went, or the journal failed: sent again
                    log.info("forwarder: message %s could not be dead-lettered: %s", entry.id, exc)
            for entry, tag in plan.releases:
                # back to the front, uncounted; the pump pauses (engine.pause)
                log.info("forwarder to %s: message %s refused for now; retrying later", self.authority, entry.id)
                operations.release(entry, tag)
            if plan.delivered:
                errors = await operations.forwarded_many(plan.delivered)
                for (entry, _), error in zip(plan.delivered, errors):
                    if error is not None:       # sent again later: the target de-duplicates it
                        log.info("forwarder: message %s delivered but not settled here: %s", entry.id, error)
                for entry, tag in engine.completed(plan.delivered, errors, time.time()):
                    operations.release(entry, tag)
                await self._tell_floor()
            if not engine.full:
                self._room.set()

    async def _tell_floor(self) -> None:
        """Tell the target which sequences are settled here (after durable completions)."""
        client = self.client
        if client is None:
            return
        try:
            client.settled(await self.operations.lowest_sequence(self.queue))
        except (QueueError, TetherError):
            pass    # closing, or the queue went: the next settle tells it

    async def _renew_locks(self) -> None:
        """Keep the peek-locks of messages sent and not yet answered (the target may be
        unreachable for hours): an expired lock would count as a failed delivery, and
        enough of them would move the message to the transmission queue's ;poison."""
        validity = self.operations.core.settings(self.queue).validity_duration
        while True:
            await asyncio.sleep(max(0.01, min(LOCK_RENEW_EVERY, validity / 3)))
            for entry, tag in self.engine.unanswered():
                try:
                    await self.operations.renew(entry, tag)
                except QueueError:
                    pass        # settled meanwhile

    async def _take_back_rejects(self, client: QueueClient) -> None:
        """Negative acknowledgements: the target's rejects for us land in our $dead, once
        (de-duplicated by the sequence we sent them with), then are completed there."""
        operations = self.operations
        returns, epoch = await operations.open_producer(b"returns\0" + self.client_id, 0)
        # named by the target after who it says we are
        name = RETURN_PREFIX + origin_of(client.user, self.client_id)
        while True:
            try:
                message = await client.receive(name)
            except QueueNotFound:       # made by the target with our first transfer
                await asyncio.sleep(RETURNS_POLL)
                continue
            except QueueError as exc:
                log.info("forwarder to %s: returns: %s", self.authority, exc)
                await asyncio.sleep(RETURNS_POLL)
                continue
            if message is None:
                continue
            source = f"tether://{self.authority}/{message.dead_letter_source}"
            entry = operations.prepare(SYSTEM_DEAD_LETTER_QUEUE, message.body, headers=dict(message.headers) or None,
                                       id=message.id, enqueued_at=message.enqueued_at, expires_at=None)
            entry.dead_letter_reason = REJECTED
            entry.dead_letter_source = source
            entry.delivery_count = message.delivery_count
            result = (await operations.send([entry], producer=returns, epoch=epoch,
                                            sequences=[message.sequence], keep_ids=True))[0]
            if isinstance(result, BaseException):
                log.info("forwarder: a returned message could not be kept: %s", result)
                continue
            self._returned += 1
            log.warning("forwarder to %s: message %s was rejected by %s", self.authority, message.id, source)
            try:
                await message.complete()
            except TetherError as exc:      # it comes again; the dead letter is de-duplicated
                log.info("forwarder: a returned message could not be settled: %s", exc)

    def __repr__(self) -> str:
        return f"<Forwarder to {self.authority} in_flight={len(self.engine.in_flight)} forwarded={self.forwarded}>"

