"""Store-and-forward: one `Forwarder` per transmission queue moves its messages to the
queue manager that owns their target queue (DESIGN.md "Queues").

    qm.send("tether://10.0.0.2:7600/orders", b"...")  ->  $xmit:10.0.0.2:7600  ->  forwarder
        -> FORWARD over a reliable session -> the target journals it (deduped by id) -> REPLY
        -> the forwarder completes it here

The forwarder receives from the transmission queue under peek-lock (FIFO), sends each
message as a FORWARD request of the queue protocol (many per frame, several frames in
flight), and settles it when the target answers: completed once the target has it
durably, or dead-lettered here with the target's reason -- `queue-not-found`, `expired`
(time-to-live ran out in transit), `message-too-large`, or `rejected` for any other
refusal. A full target queue is retried after a pause. The session is a `QueueClient`,
so a lost connection is re-established with capped backoff and every unanswered FORWARD
is resent in order; the target de-duplicates by message id, so a message retried after
either side crashed is delivered once. Once a message is settled here, the target is told
to forget its id.

A target queue with receive_error_handling="reject" sends a negative acknowledgement: the
target keeps the rejected message in its return queue for this sender (manager.py
RETURN_PREFIX, named by the forwarder's stable client id), and the forwarder takes it back
into the sender's dead-letter queue with reason `rejected` (de-duplicated, then completed
at the target).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from typing import Any

from ..errors import QueueError, TetherError
from . import protocol as P
from .batch import accept_dead_letter, complete_many, release
from .deadletter import EXPIRED, QUEUE_NOT_FOUND, REJECTED
from .message import LOCKED, Message

log = logging.getLogger("tether.queue.forwarder")

RECONNECT_FIRST = 0.05
RECONNECT_CAP = 2.0         # at most this long between connection attempts
MAX_IN_FLIGHT = 4096        # messages sent and not yet answered
QUEUE_FULL_PAUSE = 1.0      # a full target queue: wait this long before trying again
LOCK_RENEW_EVERY = 1.0      # seconds between renewals of the locks of unanswered messages
# target refusals that end a message's transfer, and the dead-letter reason each gives
_FINAL = {"queue-not-found": QUEUE_NOT_FOUND, P.EXPIRED_CODE: EXPIRED, "message-too-large": "message-too-large"}


class Forwarder:
    """Moves one transmission queue's messages to the queue manager at `authority`."""

    def __init__(self, manager: Any, queue: Any, authority: str) -> None:
        self.manager = manager
        self.queue = queue
        self.authority = authority
        self.url = "tcp://" + authority
        self.client: Any = None
        self.forwarded = 0
        self.dead_lettered = 0
        self._loop = asyncio.get_running_loop()
        self._in_flight: dict[str, Message] = {}      # by id, in send order
        self._room = asyncio.Event()
        self._room.set()
        self._done: list[tuple[Message, BaseException | None]] = []
        self._settle_wake = asyncio.Event()
        self._retry_after = 0.0
        self._task: asyncio.Task | None = None
        self._settler: asyncio.Task | None = None
        self._returns: asyncio.Task | None = None
        self._renewer: asyncio.Task | None = None
        self._closed = False
        # stable across restarts of a durable sender, so rejects find their way back
        if manager.data_dir is not None:
            seed = os.path.abspath(manager.data_dir) + "\0" + authority
            self.client_id = hashlib.sha256(seed.encode()).digest()[:16]
        else:
            self.client_id = os.urandom(16)

    @classmethod
    def start(cls, manager: Any, queue: Any, authority: str) -> "Forwarder":
        """A running forwarder for the transmission queue `queue`."""
        forwarder = cls(manager, queue, authority)
        forwarder._task = forwarder._loop.create_task(forwarder._run())
        forwarder._settler = forwarder._loop.create_task(forwarder._settle_loop())
        forwarder._renewer = forwarder._loop.create_task(forwarder._renew_locks())
        return forwarder

    async def close(self) -> None:
        """Stop forwarding; messages sent but unanswered return to the transmission queue."""
        if self._closed:
            return
        self._closed = True
        for task in (self._task, self._settler, self._returns, self._renewer):
            if task is not None:
                task.cancel()
        for task in (self._task, self._settler, self._returns, self._renewer):
            if task is not None:
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        if self.client is not None:
            await self.client.close()
        self._release_in_flight()

    def _release_in_flight(self) -> None:
        # back to the front of the queue in their original order
        for message in reversed(list(self._in_flight.values())):
            release(message)
        self._in_flight.clear()
        self._room.set()

    # ---- connecting ----

    async def _run(self) -> None:
        from .client import QueueClient

        delay = RECONNECT_FIRST
        while True:
            try:
                self.client = await QueueClient.connect(self.url, connect_timeout=5.0, client_id=self.client_id)
            except (OSError, TetherError, asyncio.TimeoutError) as exc:
                log.info("forwarder to %s: cannot connect (%s); retrying in %.2f s", self.authority, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_CAP)
                continue
            log.info("forwarder to %s connected", self.authority)
            self._returns = self._loop.create_task(self._take_back_rejects())
            await self._pump()      # the client reconnects by itself from now on

    # ---- sending ----

    async def _pump(self) -> None:
        qm = self.manager
        name = self.queue.name
        request = self.client._request
        while True:
            await self._room.wait()
            pause = self._retry_after - self._loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            message = await qm.receive(name)
            now = time.time()
            while message is not None:
                if message.expires_at is not None and message.expires_at <= now:
                    self._done.append((message, _Refused(P.EXPIRED_CODE, "expired before it was forwarded")))
                    self._settle_wake.set()
                else:
                    self._in_flight[message.id] = message
                    address = message.destination
                    target = address[address.index("/", len("tether://")) + 1:]
                    future = request([P.FORWARD, 0, target, message.id, message.body, message.headers or None,
                                      message.enqueued_at, message.expires_at])
                    future.add_done_callback(lambda f, m=message: self._answered(m, f))
                if len(self._in_flight) >= MAX_IN_FLIGHT:
                    self._room.clear()
                    break
                message = await qm.receive(name, 0)     # does not suspend

    def _answered(self, message: Message, future: asyncio.Future) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if isinstance(error, QueueError) and error.code == "queue-full":
            # the target has no room: put it back and pause before trying again
            if self._in_flight.pop(message.id, None) is not None:
                release(message)
            self._retry_after = self._loop.time() + QUEUE_FULL_PAUSE
            self._room.set()
            return
        if error is not None and self._closed:
            return
        self._done.append((message, error))
        self._settle_wake.set()

    async def _settle_loop(self) -> None:
        """Complete what the target has, dead-letter what it refused, in batches."""
        qm = self.manager
        while True:
            await self._settle_wake.wait()
            self._settle_wake.clear()
            done, self._done = self._done, []
            delivered = []
            for message, error in done:
                if error is None:
                    delivered.append(message)
                    continue
                reason = _FINAL.get(getattr(error, "code", None), REJECTED)
                log.warning("forwarder to %s: message %s dead-lettered (%s): %s",
                            self.authority, message.id, reason, error)
                try:
                    await qm.dead_letter_message(message, reason)
                    self.dead_lettered += 1
                except TetherError as exc:
                    log.info("forwarder: message %s could not be dead-lettered: %s", message.id, exc)
                self._in_flight.pop(message.id, None)
            if delivered:
                results = await complete_many(qm, delivered)
                for message, result in zip(delivered, results):
                    self._in_flight.pop(message.id, None)
                    if result is not None:      # the lock expired meanwhile: it is sent again
                        log.info("forwarder: message %s was redelivered before its answer came", message.id)
                self.forwarded += len(delivered)
                client = self.client
                if client is not None and not client._closing:
                    client._send([P.FORGET, 0, [m.id for m in delivered]])
            if len(self._in_flight) < MAX_IN_FLIGHT:
                self._room.set()

    async def _renew_locks(self) -> None:
        """Keep the peek-locks of messages sent and not yet answered (the target may be
        unreachable for hours): an expired lock would count as a failed delivery, and
        enough of them would move the message to the transmission queue's ;poison."""
        queue = self.queue
        while True:
            validity = queue._validity
            await asyncio.sleep(max(0.01, min(LOCK_RENEW_EVERY, validity / 3)))
            deadline = time.time() + validity
            for message in self._in_flight.values():
                if message._state == LOCKED and message._owner is self.manager:
                    message._lock_deadline = deadline

    async def _take_back_rejects(self) -> None:
        """Negative acknowledgements: the target's rejects for us land in our $dead."""
        from ..errors import QueueNotFound
        from .manager import ORIGIN_HEADER, RETURN_PREFIX

        client = self.client
        name = RETURN_PREFIX + self.client_id.hex()
        while True:
            try:
                message = await client.receive(name)
            except QueueNotFound:       # made by the target with our first transfer
                await asyncio.sleep(1.0)
                continue
            headers = dict(message.headers or {})
            headers.pop(ORIGIN_HEADER, None)
            source = f"tether://{self.authority}/{message.dead_letter_source}"
            fields = [message.id, message.body, headers or None, message.delivery_count, message.enqueued_at]
            if await accept_dead_letter(self.manager, fields, REJECTED, source):
                self.dead_lettered += 1
                log.warning("forwarder to %s: message %s was rejected by %s", self.authority, message.id, source)
            try:
                await message.complete()
            except TetherError as exc:      # it comes again; the dead letter is de-duplicated
                log.info("forwarder: a returned message could not be settled: %s", exc)

    def __repr__(self) -> str:
        return f"<Forwarder to {self.authority} in_flight={len(self._in_flight)} forwarded={self.forwarded}>"


class _Refused(QueueError):
    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
