"""The applications of a simulated queue manager: senders, idempotent producers, consumers
and transactional consumers. Each acts on seeded timers, through its Node (which checks
every call against the model), and hears when its node crashes or is ready again.

What each does mirrors an adapter: `Sender` is QueueManager.send/send_many; `Producer` is
a QueueClient as the service sees it (HELLO with id and epoch, SENDs numbered by sequence,
every unanswered one resent after a reconnect, SETTLED floors); `Consumer` receives under
peek-lock and completes, abandons, releases, lets the lock run out, or crashes;
`TxConsumer` moves messages between queues in transactions (Transaction).
"""
from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from tether.errors import PoisonMessage, ProducerFenced, QueueError, QueueFull, TransactionError

from .model import Msg
from .node import Node, SimWaiter


class Actor:
    """Something that acts on a node; told of crashes and readiness."""

    name = "actor"

    def node_ready(self, node: Node) -> None:
        """The node is up again (or for the first time)."""

    def node_crashed(self, node: Node) -> None:
        """The node died: every lock, waiter and unanswered request of this life is void."""

    def handed(self, waiter: SimWaiter, entry: Any, tag: int) -> None:
        """A waiter of ours got an entry."""

    def wait_failed(self, waiter: SimWaiter, error: BaseException) -> None:
        """A waiter of ours failed (its queue faulted)."""


# ---------------------------------------------------------------------------- senders

@dataclass
class SenderSpec:
    """An embedded sender (QueueManager.send / send_many, no producer id)."""

    name: str
    node: str
    queue: str                          # where entries go (a transmission queue for remote sends)
    count: int
    start: float = 0.0
    gap: tuple[float, float] = (0.0, 0.05)
    batch: float = 0.0                  # probability a send is a send_many of 2..4
    ttl: tuple[float | None, ...] = (None,)   # time_to_live choices (None: the queue's)
    destination: str | None = None      # tether://... when sending to a remote queue
    padding: tuple[int, ...] = (0,)     # body padding choices (message-too-large)

    def describe(self) -> str:
        return (f"  sender {self.name} -> {self.node}:{self.destination or self.queue} count={self.count} "
                f"start={self.start:.2f} gap={self.gap} batch={self.batch:.2f} ttl={self.ttl} padding={self.padding}")


class Sender(Actor):
    """Sends `count` messages, one or a few at a time; a refused one is given up."""

    def __init__(self, sim: Any, node: Node, spec: SenderSpec) -> None:
        self.sim = sim
        self.node = node
        self.spec = spec
        self.name = spec.name
        self.rng = random.Random(f"{sim.scenario.seed}-{spec.name}")
        self.left = spec.count
        self.sent = 0
        node.listeners.append(self)
        sim.clock.at(spec.start, self._send)

    def _send(self) -> None:
        node = self.node
        if self.left <= 0:
            return
        if not node.ready:
            self.sim.clock.after(0.1, self._send)
            return
        rng = self.rng
        spec = self.spec
        n = min(self.left, rng.randint(2, 4)) if rng.random() < spec.batch else 1
        msgs, entries = [], []
        for _ in range(n):
            msg = self.sim.new_message(node, self.name, pad=rng.choice(spec.padding), may_poison=True)
            ttl = rng.choice(spec.ttl)
            entry = node.prepare(msg, spec.queue, ttl=ttl, destination=spec.destination)
            self.left -= 1
            if isinstance(entry, BaseException):
                continue
            msgs.append(msg)
            entries.append(entry)
        if len(entries) == 1:
            node.send_one(msgs[0], entries[0])
        elif entries:
            node.commit([], list(zip(msgs, entries)))
        self.sent += len(entries)
        if self.left > 0:
            self.sim.clock.after(rng.uniform(*spec.gap), self._send)


# ---------------------------------------------------------------------------- producers

@dataclass
class ProducerSpec:
    """A remote client sending with its producer id (QueueClient through the service)."""

    name: str
    node: str
    queue: str
    count: int
    pid: bytes
    start: float = 0.0
    gap: tuple[float, float] = (0.0, 0.05)
    lose_reply: float = 0.0             # probability an answer is lost (the client reconnects and resends)
    restarts: tuple[float, ...] = ()    # a new instance (epoch 0) starts then; the old one runs on

    def describe(self) -> str:
        return (f"  producer {self.name} id={self.pid.hex()[:8]} -> {self.node}:{self.queue} count={self.count} "
                f"start={self.start:.2f} gap={self.gap} lose_reply={self.lose_reply:.2f} restarts={self.restarts}")


class Producer(Actor):
    """One instance of an idempotent producer (see the module docstring)."""

    def __init__(self, sim: Any, node: Node, spec: ProducerSpec, instance: int = 0, count: int | None = None,
                 group: ProducerGroup | None = None) -> None:
        self.sim = sim
        self.group = group
        self.node = node
        self.spec = spec
        self.instance = instance
        self.name = f"{spec.name}#{instance}"
        self.rng = random.Random(f"{sim.scenario.seed}-{spec.name}-{instance}")
        self.left = spec.count if count is None else count
        self.epoch = 0
        self.next_seq = 0
        self.unanswered: OrderedDict[int, Msg] = OrderedDict()
        self.floor_sent = 0
        self.connected = False
        self.connecting = False
        self.fenced = False
        self.session = 0                 # bumped by every reconnect: answers of an older session are lost
        self.producer: Any = None
        self.mproducer: Any = None
        self.resends = 0
        self.started = False
        node.listeners.append(self)
        sim.clock.at(spec.start, self._start)

    def _start(self) -> None:
        self.started = True
        self._hello()
        self._send_next()

    # ---- the session ----

    def _hello(self) -> None:
        if self.fenced or self.connected or self.connecting or not self.started:
            return
        node = self.node
        if not node.ready:
            return                      # node_ready says hello again
        self.connecting = True
        result = node.open_producer(self.spec.pid, self.epoch)
        if isinstance(result, BaseException):
            self.connecting = False
            if isinstance(result, ProducerFenced):
                self._fence()
            return
        producer, mproducer, record = result
        session = self.session
        granted = producer.epoch            # this hello's epoch (operations.open_producer)

        def answered(ok: bool) -> None:
            self.connecting = False
            if session != self.session or self.fenced:
                return
            if not ok:                  # the hello was refused (StorageError): try again
                self.sim.clock.after(0.1, self._hello)
                return
            self.producer, self.mproducer = producer, mproducer
            self.epoch = granted
            if producer.next_sequence != mproducer.next_sequence:
                node.fail(f"{self.name}: hello says next_sequence {producer.next_sequence}, the model "
                          f"{mproducer.next_sequence}")
            self.next_seq = max(self.next_seq, producer.next_sequence)
            self.connected = True
            self.floor_sent = 0
            node.trace("hello", self.name, self.epoch, self.next_seq)
            if self.group is not None:
                self.group.attached(self)
            for seq in list(self.unanswered):
                self._submit(seq)
            self._flush()

        node.after(record, answered)

    def _reconnect(self) -> None:
        self.connected = False
        self.connecting = False
        self.session += 1
        self.sim.clock.after(self.rng.uniform(0.05, 0.3), self._hello)

    def node_ready(self, node: Node) -> None:
        if not self.fenced:
            self._hello()

    def node_crashed(self, node: Node) -> None:
        self.connected = False
        self.connecting = False
        self.session += 1

    def superseded(self) -> None:
        """A newer instance said HELLO with our id: the service takes the client state
        from our connection, whose next frame ends it; we reconnect (and are fenced)."""
        if self.connected:
            self.node.trace("superseded", self.name)
            self._reconnect()

    def _fence(self) -> None:
        if not self.fenced:
            self.fenced = True
            self.node.trace("fenced", self.name)

    # ---- sending ----

    def _send_next(self) -> None:
        if self.left <= 0 or self.fenced:
            return
        if not self.epoch:              # QueueClient.connect returns after the first HELLO
            self.sim.clock.after(0.05, self._send_next)
            return
        msg = self.sim.new_message(self.node, self.spec.name, may_poison=True)
        seq = self.next_seq
        self.next_seq += 1
        self.left -= 1
        self.unanswered[seq] = msg
        if self.connected:
            self._submit(seq)
        if self.left > 0:
            self.sim.clock.after(self.rng.uniform(*self.spec.gap), self._send_next)

    def _submit(self, seq: int) -> None:
        """One SEND (or its resend after a reconnect): the service prepares a new entry each time."""
        node = self.node
        msg = self.unanswered[seq]
        entry = node.prepare(msg, self.spec.queue)
        if isinstance(entry, BaseException):
            self._answered(seq, entry)
            return
        result = node.send([(msg, entry)], self.producer, self.mproducer, self.epoch, [seq])[0]
        session = self.session
        if isinstance(result, BaseException):
            self._answered(seq, result)
            if isinstance(result, ProducerFenced):
                self._fence()
            return
        kind, record = result

        def done(ok: bool) -> None:
            if session != self.session:
                return              # that session ended: the resend answers
            self._answered(seq, None if ok else QueueError("storage"))

        if kind == "duplicate":
            self.resends += 1
        node.after(record, done)

    def _answered(self, seq: int, error: BaseException | None) -> None:
        if seq not in self.unanswered:
            return
        if error is None and self.connected and self.rng.random() < self.spec.lose_reply:
            self.node.trace("reply-lost", self.name, seq)
            self._reconnect()       # the session broke before the answer came: resend after hello
            return
        del self.unanswered[seq]
        self._flush()

    def _flush(self) -> None:
        """QueueClient._flush: tell the floor (the lowest unanswered sequence, or the next)."""
        if not self.connected:
            return
        floor = next(iter(self.unanswered), self.next_seq)
        if floor > self.floor_sent:
            self.floor_sent = floor
            self.node.raise_floor(self.producer, self.mproducer, floor)


class ProducerGroup(Actor):
    """A producer id whose instances start one after another (`restarts`), each fencing
    the one before; the earlier ones run on until they are told."""

    def __init__(self, sim: Any, node: Node, spec: ProducerSpec) -> None:
        self.name = spec.name
        shares = len(spec.restarts) + 1
        per = max(1, spec.count // shares)
        self.instances = [Producer(sim, node, spec, 0, per if spec.restarts else spec.count, self)]
        for i, at in enumerate(spec.restarts, 1):
            count = per if i < len(spec.restarts) else spec.count - per * len(spec.restarts)
            late = ProducerSpec(**{**spec.__dict__, "start": at})
            self.instances.append(Producer(sim, node, late, i, max(0, count), self))

    def attached(self, instance: Producer) -> None:
        """Service.attach: the client state of this id now belongs to `instance`."""
        for other in self.instances:
            if other is not instance:
                other.superseded()


# ---------------------------------------------------------------------------- consumers

@dataclass
class ConsumerSpec:
    """A receiver of one queue: what it does with each message, by weight."""

    name: str
    node: str
    queue: str
    start: float = 0.0
    stop: float = 1e9
    think: tuple[float, float] = (0.0, 0.05)
    mix: dict[str, float] = field(default_factory=lambda: {"complete": 1.0})
    poison_action: str = "abandon"      # what it does with a poison message (always fails it)

    def describe(self) -> str:
        mix = " ".join(f"{k}={v:g}" for k, v in self.mix.items())
        return (f"  consumer {self.name} <- {self.node}:{self.queue} start={self.start:.2f} stop={self.stop:.1f} "
                f"think={self.think} {mix} poison={self.poison_action}")


class Consumer(Actor):
    """Receives one message at a time (take, or wait) and settles it per its mix."""

    def __init__(self, sim: Any, node: Node, spec: ConsumerSpec) -> None:
        self.sim = sim
        self.node = node
        self.spec = spec
        self.name = spec.name
        self.rng = random.Random(f"{sim.scenario.seed}-{spec.name}")
        self.life = 0               # bumped by a crash (ours or the node's): old timers are void
        self.waiter: SimWaiter | None = None
        self.holding: tuple[Any, int] | None = None
        self.draining_poison = False
        self.completed = 0
        node.listeners.append(self)
        sim.clock.at(spec.start, self._poll, self.life)

    def _later(self, delay: float, fn: Any, *args: Any) -> None:
        self.sim.clock.after(delay, fn, self.life, *args)

    def _queue(self) -> str:
        return self.spec.queue + ";poison" if self.draining_poison else self.spec.queue

    def _poll(self, life: int) -> None:
        if life != self.life or self.waiter is not None or self.holding is not None:
            return
        node = self.node
        if self.sim.clock.now >= self.spec.stop:
            return
        if not node.ready:
            return                  # node_ready polls again
        queue = self._queue()
        entry = node.take(queue, self)
        if isinstance(entry, PoisonMessage):
            self.draining_poison = True
            self._later(0.01, self._poll)
            return
        if entry is not None:
            self._got(entry, entry.tag)
            return
        if self.draining_poison:
            self.draining_poison = False
            self._later(0.01, self._poll)
            return
        waiter = SimWaiter(node, self, queue)
        error = node.wait(waiter)
        if error is not None:
            self.draining_poison = True
            self._later(0.01, self._poll)
            return
        self.waiter = waiter
        stop = self.spec.stop - self.sim.clock.now
        self._later(stop, self._stop_waiting, waiter)

    def _stop_waiting(self, life: int, waiter: SimWaiter) -> None:
        if life == self.life and self.waiter is waiter and self.node.ready:
            self.node.stop_waiting(waiter)
            self.waiter = None

    def handed(self, waiter: SimWaiter, entry: Any, tag: int) -> None:
        if waiter is not self.waiter:
            return                  # a waiter of an earlier life: the node checked the hand-off
        self.waiter = None
        self._got(entry, tag)

    def wait_failed(self, waiter: SimWaiter, error: BaseException) -> None:
        if waiter is self.waiter:
            self.waiter = None
            self.draining_poison = True
            self._later(0.01, self._poll)

    def _got(self, entry: Any, tag: int) -> None:
        self.holding = (entry, tag)
        self._later(self.rng.uniform(*self.spec.think), self._act, entry, tag)

    def _choose(self, entry: Any) -> str:
        if self.draining_poison:
            return "complete"
        if self.sim.is_poison(self.node, entry):
            return self.spec.poison_action
        actions = list(self.spec.mix)
        return self.rng.choices(actions, weights=[self.spec.mix[a] for a in actions])[0]

    def _act(self, life: int, entry: Any, tag: int) -> None:
        if life != self.life or not self.node.ready:
            return
        node = self.node
        action = self._choose(entry)
        node.trace("act", self.name, node.msg(entry).mid, action)
        if action == "complete":
            result = node.complete(entry, tag)
            if isinstance(result, BaseException):
                self._done()
                return
            node.after(result, lambda ok: self._completed(life, entry, tag, ok))
            return
        if action == "abandon":
            node.abandon(entry, tag)
        elif action == "release":
            node.release(entry, tag)
        elif action == "expire":
            pass                    # the lock runs out; the core counts a failed delivery
        elif action == "crash":
            self.life += 1          # gone, its lock left to expire; back after a while
            self.holding = None
            self.sim.clock.after(self.rng.uniform(0.5, 3.0), self._poll, self.life)
            return
        elif action == "renew":
            result = node.renew(entry, tag)
            if not isinstance(result, BaseException):
                self._later(self.rng.uniform(*self.spec.think), self._finish, entry, tag)
                return
        self._done()

    def _finish(self, life: int, entry: Any, tag: int) -> None:
        if life != self.life or not self.node.ready:
            return
        result = self.node.complete(entry, tag)
        if isinstance(result, BaseException):
            self._done()
            return
        self.node.after(result, lambda ok: self._completed(life, entry, tag, ok))

    def _completed(self, life: int, entry: Any, tag: int, ok: bool) -> None:
        if life != self.life:
            return
        if ok:
            self.completed += 1
            self._done()
        else:                       # StorageError: still locked; try once more, then let it go
            self._later(0.05, self._finish, entry, tag)

    def _done(self) -> None:
        self.holding = None
        self._later(self.rng.uniform(0.0, 0.02), self._poll)

    def node_ready(self, node: Node) -> None:
        self._poll(self.life)

    def node_crashed(self, node: Node) -> None:
        self.life += 1
        self.waiter = None
        self.holding = None


# ---------------------------------------------------------------------------- transactions

@dataclass
class TxSpec:
    """Moves messages from one queue to another in transactions of up to `batch`."""

    name: str
    node: str
    source: str
    target: str
    batch: int = 3
    start: float = 0.0
    stop: float = 1e9
    think: tuple[float, float] = (0.0, 0.05)
    rollback: float = 0.2               # probability a transaction rolls back
    stall: float = 0.05                 # probability it outlasts a lock before committing

    def describe(self) -> str:
        return (f"  transactions {self.name}: {self.node}:{self.source} -> {self.target} batch={self.batch} "
                f"start={self.start:.2f} stop={self.stop:.1f} rollback={self.rollback:.2f} stall={self.stall:.2f}")


class TxConsumer(Actor):
    """Receives up to `batch` messages and sends one derived message for each, then
    commits (atomically: completes and queues in one record) or rolls back."""

    def __init__(self, sim: Any, node: Node, spec: TxSpec) -> None:
        self.sim = sim
        self.node = node
        self.spec = spec
        self.name = spec.name
        self.rng = random.Random(f"{sim.scenario.seed}-{spec.name}")
        self.life = 0
        self.receipts: list[tuple[Any, int]] = []
        self.waiter: SimWaiter | None = None
        self.busy = False
        self.commits = 0
        self.derived: dict[int, int] = {}     # derived mid -> the mid it was made from
        node.listeners.append(self)
        sim.clock.at(spec.start, self._poll, self.life)

    def _poll(self, life: int) -> None:
        if life != self.life or self.waiter is not None or self.busy:
            return
        node = self.node
        if not node.ready or self.sim.clock.now >= self.spec.stop:
            return
        faulted = False
        while len(self.receipts) < self.spec.batch:
            entry = node.take(self.spec.source, self)
            faulted = isinstance(entry, PoisonMessage)
            if entry is None or faulted:
                break
            self.receipts.append((entry, entry.tag))
        if self.receipts:
            self._work()
            return
        waiter = SimWaiter(node, self, self.spec.source)
        if faulted or node.wait(waiter) is not None:
            self.sim.clock.after(0.5, self._poll, self.life)     # the queue faulted: look again later
            return
        self.waiter = waiter
        self.sim.clock.after(self.spec.stop - self.sim.clock.now, self._stop_waiting, self.life, waiter)

    def _stop_waiting(self, life: int, waiter: SimWaiter) -> None:
        if life == self.life and self.waiter is waiter and self.node.ready:
            self.node.stop_waiting(waiter)
            self.waiter = None

    def handed(self, waiter: SimWaiter, entry: Any, tag: int) -> None:
        if waiter is not self.waiter:
            return
        self.waiter = None
        self.receipts.append((entry, tag))
        self._poll(self.life)

    def wait_failed(self, waiter: SimWaiter, error: BaseException) -> None:
        if waiter is self.waiter:
            self.waiter = None
            self.sim.clock.after(0.5, self._poll, self.life)

    def _work(self) -> None:
        self.busy = True
        delay = self.rng.uniform(*self.spec.think)
        if self.rng.random() < self.spec.stall:
            delay += self.node.model.queues[self.spec.source].settings.validity_duration
        self.sim.clock.after(delay, self._end, self.life)

    def _end(self, life: int) -> None:
        if life != self.life or not self.node.ready:
            return
        node = self.node
        receipts, self.receipts = self.receipts, []
        poison = any(self.sim.is_poison(node, e) for e, _ in receipts)
        if poison or self.rng.random() < self.spec.rollback:
            node.trace("rollback", self.name, [node.msg(e).mid for e, _ in receipts])
            node.rollback(receipts)
            self._next()
            return
        sends = []
        for entry, _ in receipts:
            msg = self.sim.new_message(node, self.name)
            self.derived[msg.mid] = node.msg(entry).mid
            prepared = node.prepare(msg, self.spec.target)
            if not isinstance(prepared, BaseException):
                sends.append((msg, prepared))
        result = node.commit(receipts, sends)
        if isinstance(result, (TransactionError, QueueFull)):
            node.rollback(receipts)      # Transaction.commit rolls back after a refusal
            self._next()
            return

        def done(ok: bool) -> None:
            if life != self.life:
                return
            if ok:
                self.commits += 1
            else:                        # StorageError: Transaction.commit rolls back
                node.rollback(receipts)
            self._next()

        node.after(result, done)

    def _next(self) -> None:
        self.busy = False
        self.sim.clock.after(self.rng.uniform(0.0, 0.02), self._poll, self.life)

    def node_ready(self, node: Node) -> None:
        self._poll(self.life)

    def node_crashed(self, node: Node) -> None:
        self.life += 1
        self.receipts = []
        self.waiter = None
        self.busy = False


__all__ = ["Actor", "Consumer", "ConsumerSpec", "Producer", "ProducerGroup", "ProducerSpec", "Sender", "SenderSpec",
           "TxConsumer", "TxSpec"]
