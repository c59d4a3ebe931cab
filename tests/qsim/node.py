"""`Node`: one queue manager in the simulation: a `QueueCore`, its simulated journal, and
the model (model.py) it is checked against.

The node is the simulation's adapter, doing what manager.py, operations.py and writer.py
do around the core: it replays the journal into a new core at every boot (`_recover`),
journals the identity first, defines the scenario's queues, cuts the core's open record
as soon as one exists, hands it to the simulated disk and reports it written or failed in
order, compacts the journal from `core.snapshot()` when nothing is in flight, and crashes.

Every call into the core goes through here: the model is asked first, then the core, and
the two answers must agree (records, errors, the message taken, each hand-off).
"""
from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from tether.errors import PoisonMessage, QueueError
from tether.queue.core import QueueCore, QueueSettings
from tether.queue.core.lifecycle import STATE_NAMES
from tether.queue.core.replay import ReplayState

from .journal import SimJournal
from .model import READY, Expected, Model, Msg, expired_here

_ERRORS = (QueueError, ValueError, TypeError)


def mid_of(entry: Any) -> int:
    """The simulation's message number, from the body it gave the message."""
    return int(entry.body[1:entry.body.index(b".")])


class SimWaiter:
    """A receiver parked in the core (QueueCore.wait); the node checks each call."""

    __slots__ = ("node", "owner", "queue")

    def __init__(self, node: Node, owner: Any, queue: str) -> None:
        self.node = node
        self.owner = owner
        self.queue = queue

    def hand(self, entry: Any) -> None:
        self.node._handed(self, entry)

    def fail(self, error: BaseException) -> None:
        self.node._waiter_failed(self, error)

    def __repr__(self) -> str:
        return f"<waiter {self.owner.name} on {self.queue}>"


class NodeSpec:
    """How one queue manager of a scenario behaves."""

    def __init__(self, name: str, queues: dict[str, QueueSettings], *,
                 write_delay: tuple[float, float] = (0.001, 0.004), fail_rate: float = 0.0,
                 compact_rate: float = 0.0, downtime: tuple[float, float] = (0.5, 2.0)) -> None:
        self.name = name
        self.queues = queues
        self.write_delay = write_delay
        self.fail_rate = fail_rate
        self.compact_rate = compact_rate
        self.downtime = downtime

    def describe(self) -> str:
        queues = "; ".join(f"{n}: {_settings(s)}" for n, s in self.queues.items())
        return (f"  node {self.name}: write_delay={self.write_delay} fail_rate={self.fail_rate:.2f} "
                f"compact_rate={self.compact_rate:.2f}\n    queues: {queues}")


def _settings(s: QueueSettings) -> str:
    default = QueueSettings()
    parts = [f"{k}={v}" for k, v in s.as_dict().items() if v != getattr(default, k)]
    return " ".join(parts) or "defaults"


class Node:
    """One simulated queue manager (see the module docstring)."""

    def __init__(self, sim: Any, spec: NodeSpec, manager_id: bytes) -> None:
        self.sim = sim
        self.spec = spec
        self.name = spec.name
        self.manager_id = manager_id
        self.rng = random.Random(f"{sim.scenario.seed}-node-{spec.name}")
        self.journal = SimJournal()
        self.model = Model(self.fail)
        self.core: QueueCore | None = None
        self.up = False               # a core is running
        self.ready = False            # ... and its identity and the scenario's queues are durable
        self.generation = 0           # bumped by a crash: events of an older life are void
        self.identity_durable = False
        self.listeners: list[Any] = []
        self._after: dict[int, list[Callable[[bool], None]]] = {}
        self._cut_scheduled = False
        self.crashes = 0
        self.boots = 0
        #: (write N, "after" its completion is applied | "torn": on disk, unreported, records kept)
        self.crash_plan: tuple[int, str, int] | None = None

    # ---------------------------------------------------------------- plumbing

    @property
    def now(self) -> float:
        return self.sim.clock.now

    def fail(self, text: str) -> None:
        self.sim.fail(f"[{self.name}] {text}")

    def trace(self, *item: Any) -> None:
        self.sim.record(self.name, *item)

    def later(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        """Run fn(*args) after `delay`, unless the node crashed meanwhile."""
        generation = self.generation
        self.sim.clock.after(delay, self._guarded, generation, fn, args)

    def _guarded(self, generation: int, fn: Callable[..., None], args: tuple) -> None:
        if generation == self.generation and self.up:
            fn(*args)

    def after(self, record: int | None, fn: Callable[[bool], None]) -> None:
        """fn(True) once `record` is written, fn(False) if its write failed; nothing if
        the node crashes first (listeners hear of the crash). None: fn(True) now."""
        if record is None:
            fn(True)
        else:
            self._after.setdefault(record, []).append(fn)

    def msg(self, entry: Any) -> Msg:
        mid = mid_of(entry)
        msg = self.model.msgs.get(mid)
        if msg is None:
            self.fail(f"the core holds m{mid}, a message the model never saw")
        return msg

    def _settle(self, what: str) -> None:
        """After every core call: the open record agrees, waiters the model expected to
        fail were failed, the writer cuts soon, events are traced."""
        core = self.core
        expected = self.model.open.number if self.model.open is not None else None
        if core.pending_record != expected:
            ops = core.records._open.ops if core.records._open else []
            self.fail(f"{what}: the core's open record is {core.pending_record} "
                      f"({[op[:3] for op in ops]!r:.300}), the model's {expected}")
        if self.model.failing_waiters:
            self.fail(f"{what}: the queue faulted but waiters were not failed: {list(self.model.failing_waiters)}")
        if core.events:
            for level, text in core.events:
                self.trace("event", level, text)
            core.events.clear()
        if core.pending_record is not None and not self._cut_scheduled:
            self._cut_scheduled = True
            self.later(0.0, self._cut)

    def _compare(self, what: str, expected: Any, model_error: type | None, call: Callable[[], Any]) -> Any:
        """Run the core call; its answer or error must be the model's. Returns the answer
        (an exception instance when one was expected)."""
        try:
            actual = call()
        except _ERRORS as exc:
            if model_error is None or not isinstance(exc, model_error):
                self.fail(f"{what}: the core raised {exc!r}; the model expected "
                          f"{model_error.__name__ if model_error else repr(expected)}")
            self._settle(what)
            return exc
        if model_error is not None:
            self.fail(f"{what}: the core answered {actual!r}; the model expected {model_error.__name__}")
        if actual != expected:
            self.fail(f"{what}: the core answered {actual!r}, the model {expected!r}")
        self._settle(what)
        return actual

    def _model(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, type | None]:
        try:
            return fn(*args), None
        except Expected as exc:
            return None, exc.kind

    # ---------------------------------------------------------------- boot and crash

    def boot(self) -> None:
        """Open the queue manager: replay the journal into a new core, and do what fell due
        meanwhile (manager._recover); journal the identity of a new journal (start)."""
        self.boots += 1
        self.generation += 1
        state = ReplayState()
        try:
            state.apply_records(self.journal.durable)
        except QueueError as exc:
            self.fail(f"recovery: the journal does not replay: {exc!r}")
        core = QueueCore(self.manager_id, journaled=True)
        core.load(state, self.now)
        self.model.opened(self.now)
        self.core = core
        self.up = True
        self.trace("boot", len(self.journal.durable))
        self.reconcile("recovery" if self.boots > 1 else "boot")
        # manager._recover: what fell due while the manager was down, before anyone receives
        self.model.handle_timer(self.now)
        core.handle_timer(self.now)
        self._settle("recovery timers")
        expected = None
        if not self.identity_durable:
            expected = self.model.journal(None, self._identity_written, None)
        record = self._compare("start", expected, None, core.start)
        if record is None:
            self._define_all()
        else:
            self.after(record, self._started)

    def _identity_written(self) -> None:
        self.identity_durable = True

    def _started(self, ok: bool) -> None:
        if ok:
            self._define_all()
        else:                       # manager.open fails; the next open starts over
            self.trace("open-failed")
            self._stop()
            self.model.crash()
            self.later_boot()

    def _define_all(self) -> None:
        waits = []
        for name, settings in self.spec.queues.items():
            record = self.define(name, settings)
            if record is not None:
                waits.append(record)
        if not waits:
            self._ready()
            return
        left = {"n": len(waits), "ok": True}

        def done(ok: bool) -> None:
            left["n"] -= 1
            left["ok"] &= ok
            if left["n"] == 0:
                if left["ok"]:
                    self._ready()
                else:
                    self.later(0.05, self._define_all)
        for record in waits:
            self.after(record, done)

    def _ready(self) -> None:
        if self.ready:
            return
        self.ready = True
        self.trace("ready")
        for listener in list(self.listeners):
            listener.node_ready(self)

    def define(self, name: str, settings: QueueSettings) -> int | None:
        expected, error = self._model(self.model.define, name, settings)
        return self._compare(f"define {name}", expected, error, lambda: self.core.define(name, settings))

    def _stop(self) -> None:
        self.generation += 1
        self.up = False
        self.ready = False
        self.core = None
        self._after.clear()
        self._cut_scheduled = False

    def crash(self, keep: int = 0) -> None:
        """The process dies: records in flight are lost, but up to `keep` of them (a
        prefix) reached the disk; it restarts after the node's downtime."""
        if not self.up:
            return
        self.crashes += 1
        kept = self.journal.crash(keep)
        self.trace("crash", f"kept={kept}")
        for number in kept:
            self.model.survived(number)
        self._stop()
        self.model.crash()
        for listener in list(self.listeners):
            listener.node_crashed(self)
        self.later_boot()

    def later_boot(self) -> None:
        self.sim.clock.after(self.rng.uniform(*self.spec.downtime), self.boot)

    # ---------------------------------------------------------------- the writer

    def _cut(self) -> None:
        self._cut_scheduled = False
        cut = self.core.cut()
        expected = self.model.cut()
        number = cut[0] if cut is not None else None
        if number != expected:
            self.fail(f"cut: the core cut record {number}, the model {expected}")
        if cut is None:
            return
        fails = self.rng.random() < self.spec.fail_rate
        record = self.journal.append(number, cut[1], self.now + self.rng.uniform(*self.spec.write_delay), fails)
        self.trace("cut", number, len(cut[1]), "fails" if fails else "")
        self.later(record.done_at - self.now, self._done, number)

    def _done(self, number: int) -> None:
        head = self.journal.in_flight[0]
        if head.number != number:
            self.fail(f"the journal completes record {head.number} while record {number} is due")
        plan = self.crash_plan
        if plan is not None and plan[1] == "torn" and not head.fails and self.journal.writes + 1 == plan[0]:
            # the write reached the disk; the process dies before the core hears of it
            self.crash_plan = None
            self.crash(keep=max(1, plan[2]))
            return
        record = self.journal.complete()
        core = self.core
        if record.fails:
            self.trace("failed", number)
            self.model.failed(number, self.now)
            core.failed(number, self.now)
        else:
            self.trace("written", number)
            self.model.written(number, self.now)
            core.written(number, self.now)
        self._settle(f"record {number} {'failed' if record.fails else 'written'}")
        for fn in self._after.pop(number, ()):
            fn(not record.fails)
            if not self.up:
                return
        plan = self.crash_plan
        if plan is not None and plan[1] == "after" and self.journal.writes >= plan[0]:
            # soon after: what its completion set off is being written (`keep` of it survives)
            self.crash_plan = None
            self.later(self.rng.uniform(0.0, 0.003), self.crash, plan[2])
        if not self.journal.in_flight and self.up and self.rng.random() < self.spec.compact_rate:
            self.compact()

    def compact(self) -> None:
        """Replace the journal by a snapshot (writer.py does when nothing is in flight)."""
        if self.core.records_in_flight:
            self.fail("compaction with records in flight")
        self.journal.compact(list(self.core.snapshot()))
        self.model.compacted()
        self.trace("compacted")

    # ---------------------------------------------------------------- checks

    def reconcile(self, where: str) -> None:
        """Every message the core holds against the model: the same messages, each once,
        in the same queue and state, with the same counts; the same producers."""
        core = self.core
        held: dict[int, tuple] = {}
        for name in list(core._queues):
            queue = core._queues[name]
            seen: set[int] = set()
            for entry in queue.entries():
                if entry.key in seen:
                    self.fail(f"{where}: {name}.entries() lists entry {entry.key} twice")
                seen.add(entry.key)
                mid = mid_of(entry)
                if mid in held:
                    self.fail(f"{where}: m{mid} is held twice ({held[mid][0]} and {name})")
                held[mid] = (name, STATE_NAMES[entry.state], entry.attempts, entry.delivery_count,
                             entry.dead_letter_reason, entry.expires_at)
        expected = {m.mid: (m.queue, m.state, m.attempts, m.deliveries, m.reason, m.expires_at)
                    for m in self.model.msgs.values() if m.queue is not None}
        for mid, fields in expected.items():
            actual = held.get(mid)
            if actual is None:
                msg = self.model.msgs[mid]
                self.fail(f"{where}: m{mid} is missing from the core (the model has it in {fields[0]}"
                          f"{', acknowledged' if msg.acked else ''}): lost")
            elif actual != fields:
                self.fail(f"{where}: m{mid} is {actual} in the core, {fields} in the model "
                          f"(queue, state, attempts, delivery_count, reason, expires_at)")
        for mid in held.keys() - expected.keys():
            msg = self.model.msgs.get(mid)
            self.fail(f"{where}: the core holds m{mid} in {held[mid][0]}, which the model has "
                      f"{'as ' + str(msg.outcome) if msg else 'never seen'}")
        for name, producer in self.model.producers.items():
            actual = core.producers.by_name.get(name)
            if actual is None:
                self.fail(f"{where}: producer {name.hex()[:8]} is missing from the core")
            elif (actual.epoch, actual.floor) != (producer.epoch, producer.floor):
                self.fail(f"{where}: producer {name.hex()[:8]} has epoch/floor {(actual.epoch, actual.floor)} "
                          f"in the core, {(producer.epoch, producer.floor)} in the model")
        if len(core.producers) != len(self.model.producers):
            self.fail(f"{where}: the core knows {len(core.producers)} producers, the model {len(self.model.producers)}")
        for name, q in self.model.queues.items():
            if q.numbered and core._queue(name).next_sequence != q.next_number:
                self.fail(f"{where}: {name} numbers from {core._queue(name).next_sequence}, "
                          f"the model from {q.next_number}")
        self.check_counts(where, every=True)

    def check_counts(self, where: str, every: bool = False) -> None:
        """QueueInfo of every (main) queue equals the model's counts; no receiver waits on
        a queue with a message ready; nothing due is left without a deadline."""
        core = self.core
        model = self.model
        for name, q in model.queues.items():
            if q.kind != "main" and not every:
                continue
            info = core.info(name)
            actual = (info.depth, info.in_flight, info.retrying, info.poison, info.waiting)
            expected = model.counts(name)
            if actual != expected:
                self.fail(f"{where}: {name} counts (depth, in_flight, retrying, poison, waiting) are "
                          f"{actual} in the core, {expected} in the model")
            if q.waiters and not model.faulted(q) and any(m.state == READY and not _expired(m, q, self.now)
                                                         for m in q.members.values()):
                self.fail(f"{where}: a receiver waits on {name} while a message is ready there")
        if model.due(self.now):
            deadline = core.next_deadline()
            if deadline is None or deadline > self.now:
                self.fail(f"{where}: something is due at {self.now} but the core's next deadline is {deadline}: "
                          + ", ".join(repr(m) for q in model.queues.values() for m in q.members.values()
                                      if _due(m, q, self.now)))

    # ---------------------------------------------------------------- time

    def next_deadline(self) -> float | None:
        return self.core.next_deadline() if self.up else None

    def handle_timer(self) -> None:
        """Everything due now: QueueCore.handle_timer until its next deadline is later
        (the adapter's timer fires again at once for a deadline already past)."""
        now = self.now
        self.model.handle_timer(now)
        for _ in range(4):
            self.core.handle_timer(now)
            deadline = self.core.next_deadline()
            if deadline is None or deadline > now:
                break
        else:
            self.fail(f"handle_timer({now}) leaves the next deadline at {deadline}: the timer spins")
        self._settle("handle_timer")

    # ---------------------------------------------------------------- sending

    def prepare(self, msg: Msg, queue: str, *, ttl: float | None = None, destination: str | None = None,
                id: str | None = None, enqueued_at: float | None = None, expires_at: Any = ...,
                origin: str | None = None) -> Any:
        """An entry for `msg` (or the exception refusing it, as the model expects)."""
        prepared, error = self._model(self.model.prepare, msg, queue, self.now, ttl, expires_at, destination, origin)

        def call() -> Any:
            fields = {}
            if expires_at is not ...:
                fields["expires_at"] = expires_at
            return self.core.prepare(queue, msg.body, self.now, time_to_live=ttl, destination=destination, id=id,
                                     enqueued_at=enqueued_at, origin=origin, **fields)

        try:
            entry = call()
        except _ERRORS as exc:
            if error is None or not isinstance(exc, error):
                self.fail(f"prepare m{msg.mid} for {queue}: the core raised {exc!r}, the model expected "
                          f"{error.__name__ if error else 'an entry'}")
            return exc
        if error is not None:
            self.fail(f"prepare m{msg.mid} for {queue}: the core prepared it, the model expected {error.__name__}")
        if entry.expires_at != prepared[1]:
            self.fail(f"prepare m{msg.mid}: expires_at {entry.expires_at}, the model {prepared[1]}")
        return entry

    def send_one(self, msg: Msg, entry: Any) -> Any:
        """QueueCore.send_one: the record (None: queued) or the exception."""
        q = self.model.queues[entry.queue.name]
        expected, error = self._model(self.model.send_one, msg, q, entry.expires_at)
        result = self._compare(f"send_one m{msg.mid}", expected, error, lambda: self.core.send_one(entry, self.now))
        self._check_number(msg, entry)
        return result

    def send(self, pairs: list[tuple[Msg, Any]], producer: Any = None, model_producer: Any = None,
             epoch: int = 0, seqs: list[int] | None = None, keep_ids: bool = False) -> list[Any]:
        """QueueCore.send: per message ("new"/"duplicate"/"pending", record) or the exception;
        a raised ProducerFenced is returned as a list of it."""
        model_pairs = [(msg, self.model.queues[entry.queue.name], entry.expires_at) for msg, entry in pairs]
        what = f"send {[m.mid for m, _ in pairs]}" + (f" seqs={seqs} epoch={epoch}" if seqs else "")
        try:
            expected = self.model.send(model_pairs, model_producer, epoch, seqs)
            whole_error = None
        except Expected as exc:
            expected, whole_error = None, exc.kind
        try:
            ids, waits = self.core.send([e for _, e in pairs], self.now, producer=producer, epoch=epoch,
                                        sequences=seqs, keep_ids=keep_ids)
        except _ERRORS as exc:
            if whole_error is None or not isinstance(exc, whole_error):
                self.fail(f"{what}: the core raised {exc!r}, the model expected {whole_error or expected}")
            self._settle(what)
            return [exc] * len(pairs)
        if whole_error is not None:
            self.fail(f"{what}: the core answered, the model expected {whole_error.__name__}")
        out = []
        for (msg, entry), result, record, want in zip(pairs, ids, waits, expected):
            if isinstance(want, Expected):
                if not isinstance(result, want.kind):
                    self.fail(f"{what}: m{msg.mid} got {result!r}, the model expected {want.kind.__name__}")
                if record is not None:
                    self.fail(f"{what}: m{msg.mid} is refused but told to wait for record {record}")
                out.append(result)
                continue
            if isinstance(result, BaseException):
                self.fail(f"{what}: m{msg.mid} got {result!r}, the model expected {want}")
            if result != entry.id:
                self.fail(f"{what}: m{msg.mid} is answered with id {result!r}, its entry is {entry.id!r}")
            if record != want[1]:
                self.fail(f"{what}: m{msg.mid} is answered with record {record}, the model expects {want}")
            if want[0] == "duplicate":
                self._check_duplicate(msg, entry, model_producer)
            if want[0] == "new":
                self._check_number(msg, entry)
            out.append(want)
        self._settle(what)
        return out

    def _check_duplicate(self, msg: Msg, entry: Any, producer: Any) -> None:
        """A send answered as queued before: it must have been, as this very message."""
        owner = producer.owners.get((entry.queue.name, msg.seq))
        if owner != msg.mid:
            self.fail(f"m{msg.mid} (sequence {msg.seq} of producer {producer.name.hex()[:8]}) was answered as a "
                      f"duplicate, but {f'm{owner}' if owner is not None else 'nothing'} was queued with that "
                      f"sequence: an acknowledged message is lost")

    def _check_number(self, msg: Msg, entry: Any) -> None:
        if msg.number and entry.sequence != msg.number:
            self.fail(f"m{msg.mid} joined {entry.queue.name} as number {entry.sequence}, the model says {msg.number}")

    # ---------------------------------------------------------------- producers

    def open_producer(self, name: bytes, epoch: int) -> Any:
        """(core producer, model producer, record) or the exception."""
        try:
            (mproducer, expected), error = self.model.open_producer(name, epoch), None
        except Expected as exc:
            mproducer, expected, error = None, None, exc.kind
        result = self._compare(f"open_producer {name.hex()[:8]} epoch {epoch}", expected, error,
                               lambda: self.core.open_producer(name, epoch, self.now)[1])
        if isinstance(result, BaseException):
            return result
        producer = self.core.producers.by_name[name]
        if producer.epoch != mproducer.epoch:
            self.fail(f"producer {name.hex()[:8]}: epoch {producer.epoch}, the model {mproducer.epoch}")
        return producer, mproducer, result

    def raise_floor(self, producer: Any, mproducer: Any, floor: int) -> None:
        expected = self.model.raise_floor(mproducer, floor)
        self.core.raise_floor(producer, floor)
        self._settle(f"raise_floor {producer.name.hex()[:8]} {floor}")
        if expected is not None and self.core.pending_record != expected:
            self.fail(f"raise_floor: the floor is journaled in record {self.core.pending_record}, not {expected}")

    # ---------------------------------------------------------------- receiving

    def _delivered(self, entry: Any, queue: str, holder: Any) -> Msg:
        """`entry` was just locked for `holder` (a take or a hand-off): check and record it."""
        msg = self.msg(entry)
        model = self.model
        if entry.queue.name != queue or msg.queue != queue or msg.state != READY:
            self.fail(f"{holder.name} got m{msg.mid} from {entry.queue.name}; the model has it {msg.state} in "
                      f"{msg.queue}")
        q = model.queues[queue]
        if msg.state == READY and expired_here(msg, q, self.now) and q.hold <= self.now:
            self.fail(f"{holder.name} got m{msg.mid} after its time-to-live ran out ({msg.expires_at})")
        if not msg.taken:
            self.sim.first_delivery(self, msg)
        model.lock(msg, entry.tag, self.now, holder)
        actual = (entry.lock_deadline, entry.delivery_count, entry.attempts, entry.dead_letter_reason)
        wanted = (msg.lock_deadline, msg.deliveries, msg.attempts, msg.reason)
        if actual != wanted:
            self.fail(f"m{msg.mid} delivered with (lock_deadline, delivery_count, attempts, reason) {actual}, "
                      f"the model {wanted}")
        self.trace("deliver", msg.mid, queue, holder.name, entry.tag)
        return msg

    def take(self, queue: str, holder: Any) -> Any:
        """QueueCore.take: an entry (locked for `holder`), None, or PoisonMessage."""
        q = self.model.queues[queue]
        faulted = self.model.faulted(q)
        if not faulted:
            self.model.expire_on_take(queue, self.now)
        try:
            entry = self.core.take(queue, self.now)
        except PoisonMessage as exc:
            if not faulted:
                self.fail(f"take {queue}: PoisonMessage, but the model has the queue running")
            self._settle("take")
            return exc
        if faulted:
            self.fail(f"take {queue}: got {entry!r}; the queue is faulted in the model")
        if entry is None:
            if q.count(READY):
                self.fail(f"take {queue}: nothing, but the model has {q.count(READY)} ready there")
        else:
            self._delivered(entry, queue, holder)
        self._settle("take")
        return entry

    def wait(self, waiter: SimWaiter) -> BaseException | None:
        q = self.model.queues[waiter.queue]
        faulted = self.model.faulted(q)
        try:
            self.core.wait(waiter.queue, waiter)
        except PoisonMessage as exc:
            if not faulted:
                self.fail(f"wait {waiter.queue}: PoisonMessage, but the model has the queue running")
            return exc
        if faulted:
            self.fail(f"wait {waiter.queue}: accepted a waiter; the queue is faulted in the model")
        q.waiters[waiter] = None
        return None

    def stop_waiting(self, waiter: SimWaiter) -> None:
        q = self.model.queues.get(waiter.queue)
        if q is not None:
            q.waiters.pop(waiter, None)
        self.core.stop_waiting(waiter.queue, waiter)

    def _handed(self, waiter: SimWaiter, entry: Any) -> None:
        q = self.model.queues[waiter.queue]
        oldest = next(iter(q.waiters), None)
        failing = next((w for w in self.model.failing_waiters if w.queue == waiter.queue), None)
        if oldest is waiter:
            del q.waiters[waiter]
        elif oldest is None and failing is waiter:
            # the record that faults the queue also brought this message back, before the
            # poison one in the order its operations were made: the waiter got it first
            del self.model.failing_waiters[waiter]
        else:
            self.fail(f"m{mid_of(entry)} was handed to {waiter!r}; the longest waiter is {oldest!r}")
        self._delivered(entry, waiter.queue, waiter.owner)
        tag = entry.tag
        self.later(0.0, waiter.owner.handed, waiter, entry, tag)

    def _waiter_failed(self, waiter: SimWaiter, error: BaseException) -> None:
        if waiter not in self.model.failing_waiters:
            self.fail(f"{waiter!r} failed with {error!r}, which the model did not expect")
        del self.model.failing_waiters[waiter]
        if not isinstance(error, PoisonMessage):
            self.fail(f"{waiter!r} failed with {error!r}, not PoisonMessage")
        self.later(0.0, waiter.owner.wait_failed, waiter, error)

    # ---------------------------------------------------------------- settling

    def complete(self, entry: Any, tag: int) -> Any:
        msg = self.msg(entry)
        expected, error = self._model(self.model.complete, msg, tag, self.now)
        return self._compare(f"complete m{msg.mid} tag {tag}", expected, error,
                             lambda: self.core.complete(entry, tag, self.now))

    def complete_many(self, receipts: list[tuple[Any, int]]) -> tuple[int | None, list[Any]]:
        """QueueCore.complete_many, checked message by message."""
        record = None
        errors = []
        expected_errors = []
        for entry, tag in receipts:
            msg = self.msg(entry)
            number, error = self._model(self.model.complete, msg, tag, self.now)
            expected_errors.append(error)
            if number is not None:
                record = number
        actual_record, actual_errors = self.core.complete_many(receipts, self.now)
        for (entry, _tag), want, got in zip(receipts, expected_errors, actual_errors):
            if (want is None) != (got is None) or (want is not None and not isinstance(got, want)):
                self.fail(f"complete_many m{mid_of(entry)}: the core said {got!r}, the model {want}")
            errors.append(got)
        if actual_record != record:
            self.fail(f"complete_many: record {actual_record}, the model {record}")
        self._settle("complete_many")
        return actual_record, errors

    def abandon(self, entry: Any, tag: int) -> Any:
        msg = self.msg(entry)
        expected, error = self._model(self.model.abandon, msg, tag, self.now)
        return self._compare(f"abandon m{msg.mid} tag {tag}", expected, error,
                             lambda: self.core.abandon(entry, tag, self.now))

    def dead_letter(self, entry: Any, tag: int, reason: str) -> Any:
        msg = self.msg(entry)
        expected, error = self._model(self.model.dead_letter, msg, tag, reason, self.now)
        return self._compare(f"dead_letter m{msg.mid} ({reason})", expected, error,
                             lambda: self.core.dead_letter(entry, tag, reason, self.now))

    def release(self, entry: Any, tag: int) -> bool:
        msg = self.msg(entry)
        expected = self.model.release(msg, tag)
        self.trace("release", msg.mid, tag, expected)
        return self._compare(f"release m{msg.mid} tag {tag}", expected, None,
                             lambda: self.core.release(entry, tag, self.now))

    def renew(self, entry: Any, tag: int) -> Any:
        msg = self.msg(entry)
        expected, error = self._model(self.model.renew, msg, tag, self.now)
        return self._compare(f"renew m{msg.mid} tag {tag}", expected, error,
                             lambda: self.core.renew(entry, tag, self.now))

    def commit(self, receipts: list[tuple[Any, int]], sends: list[tuple[Msg, Any]]) -> Any:
        mreceipts = [(self.msg(e), tag) for e, tag in receipts]
        msends = [(msg, self.model.queues[e.queue.name], e.expires_at) for msg, e in sends]
        expected, error = self._model(self.model.commit, mreceipts, msends, self.now)
        result = self._compare(f"commit {[m.mid for m, _ in mreceipts]} + {[m.mid for m, _ in sends]}", expected,
                               error, lambda: self.core.commit(receipts, [e for _, e in sends], self.now))
        if not isinstance(result, BaseException):
            for msg, entry in sends:
                self._check_number(msg, entry)
        return result

    def rollback(self, receipts: list[tuple[Any, int]]) -> list[int]:
        mreceipts = [(self.msg(e), tag) for e, tag in receipts]
        expected = self.model.rollback(mreceipts, self.now)
        return self._compare("rollback", expected, None, lambda: self.core.rollback(receipts, self.now))


def _expired(m: Msg, q: Any, now: float) -> bool:
    """Ready but past its time-to-live: the expiry timer's, not a receiver's."""
    return expired_here(m, q, now)


def _due(m: Msg, q: Any, now: float) -> bool:
    if m.state == READY and expired_here(m, q, now):
        return True
    if m.state == "locked" and m.lock_deadline <= now:
        return True
    return m.state == READY and q.kind == "retry" and m.retry_at is not None and m.retry_at <= now


__all__ = ["Node", "NodeSpec", "SimWaiter", "mid_of"]
