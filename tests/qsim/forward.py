"""Store-and-forward in the simulation: the forwarder of a source queue manager, the link
to the target, and the target's service side of the forwarder's session.

`Forwarder` drives `tether.queue.forwarding.ForwardEngine`, the same decisions the asyncio
Forwarder (forwarder.py) runs: take from the transmission queue, send, settle answers
(complete / dead-letter / release and pause), renew the locks of unanswered messages, tell
the floor after durable completions. `ForwardClient` is its QueueClient (client.py) as far
as forwarding goes: HELLO with the forwarder's id and epoch, FORWARD requests kept until
answered and all resent after every reconnect, and the floors the forwarder tells. `Link`
is one session at a time, with a delay; a partition or a crash of either side breaks it,
losing every frame in flight. `TargetService` is connection.py
for that session: HELLO opens the producer, SETTLED raises its floor at once, FORWARDs are
queued batch by batch keeping their ids (`keep_ids`), de-duplicated by the forwarder's
sequence, after the forwarder's return queue exists.
"""
from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from tether.backoff import Backoff
from tether.errors import QueueError
from tether.queue.core.system_queues import RETURN_PREFIX, settings_for
from tether.queue.forwarder import CONNECT_CAP, CONNECT_FIRST, LOCK_RENEW_EVERY, producer_id
from tether.queue.forwarding import ForwardEngine
from tether.queue.protocol import error_code

from .actors import Actor
from .node import Node, SimWaiter

HELLO = "hello"
FORWARD = "forward"
SETTLED = "settled"
ANSWER = "answer"


@dataclass
class ForwardSpec:
    """A forwarder from `source` to `target` over a link with these partitions."""

    source: str
    target: str
    authority: str
    delay: tuple[float, float] = (0.002, 0.01)
    partitions: tuple[tuple[float, float], ...] = ()
    max_in_flight: int = 8

    @property
    def queue(self) -> str:
        return "$xmit:" + self.authority

    def describe(self) -> str:
        parts = " ".join(f"[{a:.2f},{b:.2f})" for a, b in self.partitions)
        return (f"  forward {self.source} -> {self.target} ({self.authority}) delay={self.delay} "
                f"max_in_flight={self.max_in_flight} partitions: {parts or 'none'}")


class Link:
    """The network between the forwarder's client and the target's service."""

    def __init__(self, sim: Any, spec: ForwardSpec, target: Node) -> None:
        self.sim = sim
        self.spec = spec
        self.target = target
        self.rng = random.Random(f"{sim.scenario.seed}-link-{spec.authority}")
        self.session = 0             # the current session (0: none)
        self.sessions = 0
        self.client: ForwardClient | None = None
        self.service: TargetService | None = None
        self.breaks = 0
        self._last = [0.0, 0.0]      # arrival of the last frame each way (frames stay in order)
        for start, _end in spec.partitions:
            sim.clock.at(start, self.break_session, "partition")

    def partitioned(self) -> bool:
        now = self.sim.clock.now
        return any(start <= now < end for start, end in self.spec.partitions)

    def connect(self) -> int:
        """A new session, or 0 when the target cannot be reached now."""
        if self.partitioned() or not self.target.ready or self.service is None:
            return 0
        self.sessions += 1
        self.session = self.sessions
        return self.session

    def send(self, session: int, to_target: bool, frame: list) -> None:
        if session != self.session or session == 0:
            return
        now = self.sim.clock.now
        i = 0 if to_target else 1
        arrival = max(now + self.rng.uniform(*self.spec.delay), self._last[i])
        self._last[i] = arrival
        self.sim.clock.at(arrival, self._arrive, session, to_target, frame)

    def _arrive(self, session: int, to_target: bool, frame: list) -> None:
        if session != self.session:
            return
        if to_target:
            self.service.frame(session, frame)
        else:
            self.client.frame(session, frame)

    def break_session(self, why: str) -> None:
        """The session breaks: frames in flight are lost; both sides notice."""
        if not self.session:
            return
        session, self.session = self.session, 0
        self.breaks += 1
        self.sim.record("link", "break", why, session)
        if self.service is not None:
            self.service.session_ended(session)
        if self.client is not None:
            self.client.disconnected(session)


class ForwardClient:
    """The forwarder's QueueClient (see the module docstring)."""

    def __init__(self, sim: Any, link: Link, client_id: bytes, on_connect: Any) -> None:
        self.sim = sim
        self.link = link
        self.client_id = client_id
        self.on_connect = on_connect
        self.rng = random.Random(f"{sim.scenario.seed}-client-{link.spec.authority}-{link.sessions}")
        self.session = 0
        self.connected = False
        self.epoch = 0
        self.next_sequence = 0
        self.floor_sent = 0
        self.rids = 0
        self.pending: OrderedDict[int, tuple[list, Any]] = OrderedDict()   # rid -> (item, callback)
        self.out: list = []
        self.flush_scheduled = False
        self.backoff = Backoff(CONNECT_FIRST, CONNECT_CAP)
        self.closed = False
        link.client = self

    def connect(self) -> None:
        if self.closed or self.session:
            return
        session = self.link.connect()
        if not session:
            self.sim.clock.after(self.backoff.next(), self.connect)
            return
        self.session = session
        self.rids += 1
        self.link.send(session, True, [[HELLO, self.rids, self.client_id, self.epoch]])

    def frame(self, session: int, items: list) -> None:
        if session != self.session or self.closed:
            return
        for item in items:
            kind = item[0]
            if kind == HELLO:
                _, _, error, epoch, next_sequence = item
                if error is not None:
                    self.sim.record("client", "hello-refused", error)
                    self.link.break_session("hello refused")
                    return
                self.backoff.reset()
                self.epoch = epoch
                self.next_sequence = max(self.next_sequence, next_sequence)
                self.connected = True
                self.floor_sent = 0
                for item_, _ in self.pending.values():
                    self.out.append(item_)
                self._schedule_flush()
                self.on_connect()
            elif kind == ANSWER:
                _, rid, code = item
                request = self.pending.pop(rid, None)
                if request is not None:
                    request[1](code)

    def disconnected(self, session: int) -> None:
        if session != self.session:
            return
        self.session = 0
        self.connected = False
        self.out = []
        if not self.closed:
            self.sim.clock.after(self.backoff.next(), self.connect)

    def forward(self, item: list, callback: Any) -> None:
        self.rids += 1
        item[1] = self.rids
        self.pending[self.rids] = (item, callback)
        if self.connected:
            self.out.append(item)
            self._schedule_flush()

    def settled(self, floor: int) -> None:
        if floor > self.floor_sent and self.connected:
            self.floor_sent = floor
            self.out.append([SETTLED, 0, floor])
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.sim.clock.after(0.0, self._flush)

    def _flush(self) -> None:
        """QueueClient._flush: what is queued goes out. (Its own floor, the lowest
        unanswered SEND of its own or its next sequence, is told only by a client that
        numbers sends of its own: a forwarder's client numbers none.)"""
        self.flush_scheduled = False
        if not self.connected:
            return
        if self.out:
            out, self.out = self.out, []
            self.link.send(self.session, True, out)

    def close(self) -> None:
        self.closed = True
        self.connected = False


class Forwarder(Actor):
    """One source queue manager's forwarder to one target (see the module docstring)."""

    def __init__(self, sim: Any, node: Node, link: Link, spec: ForwardSpec) -> None:
        self.sim = sim
        self.node = node
        self.link = link
        self.spec = spec
        self.name = f"forwarder-{spec.authority}"
        self.client_id = producer_id(node.manager_id, spec.authority)
        self.engine: ForwardEngine | None = None
        self.client: ForwardClient | None = None
        self.life = 0
        self.pumping = False
        self.waiter: SimWaiter | None = None
        self.settling = False
        self.started = False
        self.forwarded = 0
        self.dead_lettered = 0
        self.answers = 0
        self.transient = 0              # transient refusals (the pause)
        node.listeners.append(self)

    # ---- life ----

    def node_ready(self, node: Node) -> None:
        """Forwarder.start, at manager open."""
        self.life += 1
        self.engine = ForwardEngine(self.spec.queue, max_in_flight=self.spec.max_in_flight)
        self.client = ForwardClient(self.sim, self.link, self.client_id, self._connected)
        self.started = False
        self.settling = False
        self.waiter = None
        self.pumping = False
        self.client.connect()
        self._renew_later()

    def node_crashed(self, node: Node) -> None:
        self.life += 1
        if self.client is not None:
            self.client.close()
            self.link.break_session("source crash")
        self.engine = None
        self.waiter = None

    def _later(self, delay: float, fn: Any, *args: Any) -> None:
        life = self.life

        def run() -> None:
            if life == self.life and self.node.ready:
                fn(*args)
        self.sim.clock.after(delay, run)

    def _connected(self) -> None:
        if not self.started:            # the pump starts after the first connect (Forwarder._run)
            self.started = True
            self._later(0.0, self._pump)

    # ---- sending ----

    def _pump(self) -> None:
        engine = self.engine
        node = self.node
        if self.waiter is not None or self.pumping:
            return
        now = self.sim.clock.now
        if engine.full:
            return                      # a settle makes room
        pause = engine.pause(now)
        if pause > 0:
            self._later(pause, self._pump)
            return
        self.pumping = True
        try:
            while not engine.full and engine.may_send(now):
                entry = node.take(self.spec.queue, self)
                if entry is None:
                    waiter = SimWaiter(node, self, self.spec.queue)
                    node.wait(waiter)
                    self.waiter = waiter
                    return
                self._take(entry, entry.tag)
        finally:
            self.pumping = False

    def handed(self, waiter: SimWaiter, entry: Any, tag: int) -> None:
        if waiter is not self.waiter or self.engine is None:
            return
        self.waiter = None
        if not self.engine.may_send(self.sim.clock.now):    # a refusal came while we waited
            self.node.release(entry, tag)
            self._later(self.engine.pause(self.sim.clock.now), self._pump)
            return
        self._take(entry, tag)
        self._pump()

    def _take(self, entry: Any, tag: int) -> None:
        engine = self.engine
        if engine.sent(entry, self.sim.clock.now):
            address = entry.destination
            target = address[address.index("/", len("tether://")) + 1:]
            item = [FORWARD, 0, target, entry.sequence, entry.id, entry.body, entry.expires_at]
            life = self.life
            self.node.trace("forward", self.node.msg(entry).mid, entry.sequence)
            self.client.forward(item, lambda code: self._answer(life, entry, tag, code))
        else:
            self._settle_soon()

    def _answer(self, life: int, entry: Any, tag: int, code: str | None) -> None:
        if life != self.life or self.engine is None:
            return
        self.answers += 1
        self.engine.answered(entry, tag, code)
        self._settle_soon()

    # ---- settling ----

    def _settle_soon(self) -> None:
        if not self.settling:
            self.settling = True
            self._later(0.0, self._settle)

    def _settle(self) -> None:
        engine = self.engine
        node = self.node
        plan = engine.settle(self.sim.clock.now)
        waits = []
        for entry, tag, reason, _ in plan.dead_letters:
            result = node.dead_letter(entry, tag, reason)
            if isinstance(result, BaseException):
                continue
            node.trace("dead-letter", node.msg(entry).mid, reason)
            self.dead_lettered += 1
            if result is not None:
                waits.append(result)
        for entry, tag in plan.releases:
            self.transient += 1
            node.release(entry, tag)
        record = None
        errors: list = []
        if plan.delivered:
            record, errors = node.complete_many(plan.delivered)
        life = self.life

        def done(ok: bool) -> None:
            if life != self.life:
                return
            if plan.delivered:
                settled = [e if e is not None else (None if ok else QueueError("storage")) for e in errors]
                before = engine.forwarded
                for entry, tag in engine.completed(plan.delivered, settled, self.sim.clock.now):
                    self.transient += 1
                    node.release(entry, tag)
                self.forwarded += engine.forwarded - before
                self.tell_floor()
            self.settling = False
            if engine.answers:
                self._settle_soon()
            self._pump()

        if record is not None:
            node.after(record, done)
        else:
            done(True)

    def tell_floor(self) -> None:
        """Forwarder._tell_floor: the floor from the transmission queue, after completions."""
        floor = self.engine.floor(self.node.core)
        self.sim.check_floor(self, floor, "the forwarder")
        self.client.settled(floor)

    def _renew_later(self) -> None:
        validity = self.node.model.queues[self.spec.queue].settings.validity_duration
        self._later(max(0.01, min(LOCK_RENEW_EVERY, validity / 3)), self._renew)

    def _renew(self) -> None:
        """Forwarder._renew_locks: keep the locks of everything unanswered."""
        for entry, tag in self.engine.unanswered():
            self.node.renew(entry, tag)
        if self.sim.clock.now < self.sim.scenario.end:
            self._renew_later()


class TargetService(Actor):
    """The target's side of the forwarder's session (see the module docstring)."""

    def __init__(self, sim: Any, node: Node, link: Link) -> None:
        self.sim = sim
        self.node = node
        self.link = link
        self.name = f"service-{link.spec.authority}"
        self.rng = random.Random(f"{sim.scenario.seed}-service")
        self.session = 0
        self.producer: Any = None
        self.mproducer: Any = None
        self.epoch = 0
        self.client_id = b""
        self.return_ready: list | None = None     # [state]: None (defining), True, or a failure
        self.batches: list = []                    # FORWARD batches waiting for their turn
        self.refusals: dict[str, int] = {}
        link.service = self
        node.listeners.append(self)

    def node_crashed(self, node: Node) -> None:
        self.link.break_session("target crash")
        self.session = 0

    def session_ended(self, session: int) -> None:
        if session == self.session:
            self.session = 0
            self.batches = []           # Connection.ended cancels the batches not yet queued

    def frame(self, session: int, items: list) -> None:
        if not self.node.ready:
            return
        if session != self.session:
            if items[0][0] != HELLO:
                return
            self._hello(session, items[0])
            return
        forwards = []
        for item in items:
            if item[0] == SETTLED:
                self.node.raise_floor(self.producer, self.mproducer, item[2])
                self.sim.record("service", "floor", item[2])
            elif item[0] == FORWARD:
                forwards.append(item)
        if forwards:
            self.batches.append(forwards)
            self._run_batches(session)

    def _hello(self, session: int, item: list) -> None:
        _, rid, client_id, epoch = item
        result = self.node.open_producer(client_id, epoch)
        if isinstance(result, BaseException):
            self.link.send(session, False, [[HELLO, rid, error_code(result), 0, 0]])
            return
        producer, mproducer, record = result
        generation = self.node.generation
        granted = producer.epoch            # this hello's epoch (operations.open_producer)

        def answered(ok: bool) -> None:
            if generation != self.node.generation or session != self.link.session:
                return
            if not ok:
                self.link.send(session, False, [[HELLO, rid, "storage-error", 0, 0]])
                return
            if producer.next_sequence != mproducer.next_sequence:
                self.node.fail(f"forwarder hello: next_sequence {producer.next_sequence}, the model "
                               f"{mproducer.next_sequence}")
            self.session = session
            self.producer, self.mproducer = producer, mproducer
            self.epoch = granted
            self.client_id = client_id
            self.return_ready = None
            self.batches = []
            self.link.send(session, False, [[HELLO, rid, None, granted, producer.next_sequence]])

        self.node.after(record, answered)

    def _run_batches(self, session: int) -> None:
        """Connection._forwards: the return queue first (once per connection), then each
        batch in arrival order."""
        node = self.node
        name = RETURN_PREFIX + self.client_id.hex()
        if self.return_ready is None:
            if node.core.has_queue(name):
                self.return_ready = [True]
            else:
                settings = settings_for(name)
                record = node.define(name, settings)
                state: list = [None]
                self.return_ready = state

                def defined(ok: bool) -> None:
                    state[0] = True if ok else QueueError("storage")
                    if session == self.session:
                        self._run_batches(session)

                node.after(record, defined)
        ready = self.return_ready[0]
        if ready is None:
            return
        if ready is not True:
            # the return queue could not be made: the batches waiting for it are refused
            # for now, and the next batch tries again
            self.return_ready = None
            batches, self.batches = self.batches, []
            for items in batches:
                self.refusals["storage-error"] = self.refusals.get("storage-error", 0) + len(items)
                self.link.send(session, False, [[ANSWER, item[1], "storage-error"] for item in items])
            return
        while self.batches:
            self._queue(session, self.batches.pop(0))

    def _queue(self, session: int, items: list) -> None:
        node = self.node
        now = self.sim.clock.now
        origin = self.client_id.hex()
        answers: list = [None] * len(items)
        pairs, seqs, where = [], [], []
        producer = self.mproducer
        for n, (_, _rid, queue, sequence, message_id, body, expires_at) in enumerate(items):
            seen = (sequence < producer.floor or sequence in producer.accepted.get(queue, ())
                    or (queue, sequence) in producer.pending)
            if expires_at is not None and expires_at <= now and not seen:
                answers[n] = "expired"      # (a resend of one queued before is answered as that one was)
                continue
            msg = self.sim.forwarded_message(node, body)
            entry = node.prepare(msg, queue, id=message_id, expires_at=expires_at, origin=origin)
            if isinstance(entry, BaseException):
                answers[n] = error_code(entry)
                continue
            pairs.append((msg, entry))
            seqs.append(sequence)
            where.append(n)
        waits: dict[int, list[int]] = {}
        if pairs:
            results = node.send(pairs, self.producer, self.mproducer, self.epoch, seqs, keep_ids=True)
            for n, result in zip(where, results):
                if isinstance(result, BaseException):
                    answers[n] = error_code(result)
                elif result[1] is not None:
                    waits.setdefault(result[1], []).append(n)
        for code in answers:
            if code is not None:
                self.refusals[code] = self.refusals.get(code, 0) + 1
        self._answer_when_written(session, items, answers, waits)

    def _answer_when_written(self, session: int, items: list, answers: list, waits: dict[int, list[int]]) -> None:
        left = {"n": len(waits)}
        generation = self.node.generation

        def send() -> None:
            self.link.send(session, False, [[ANSWER, item[1], code] for item, code in zip(items, answers)])

        def done(record: int, ok: bool) -> None:
            if generation != self.node.generation:
                return
            if not ok:
                for n in waits[record]:
                    answers[n] = "storage-error"
                    self.refusals["storage-error"] = self.refusals.get("storage-error", 0) + 1
            left["n"] -= 1
            if left["n"] == 0:
                send()

        if not waits:
            send()
        for record in waits:
            self.node.after(record, lambda ok, record=record: done(record, ok))


__all__ = ["ForwardClient", "ForwardSpec", "Forwarder", "Link", "TargetService"]
