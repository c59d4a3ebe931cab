"""Groups, priority and scheduled delivery in the queue core, simulated (the `groups` family).

One QueueCore on a simulated clock and journal (journal.py: writes complete in order after
a delay, some fail, a crash keeps a prefix of what was in flight, and recovery replays what
survived). Producers send numbered messages of a few groups, one at a time per group (the
next once the journal has the last), plus plain messages with random priorities and
delivery times. Consumers accept groups (at once, or waiting), take their messages one by
one and complete them (waiting for the write), abandon them, let their locks run out, or
vanish (their locks and group released uncounted, as a service does after client_grace).
Message 3 of each group often fails; when it fails for good its group is poisoned whole
(`move`: into `q;poison`).

Checked at every hand-off, and at the end:
- exclusivity: a message of a group goes only to the consumer holding that group, and no
  two consumers hold one group at once;
- order: when message k of a group is handed out, every earlier message of that group is
  durably completed or poisoned (nothing earlier is still in `q` or `q;retry`);
- priority and schedule: a plain message handed out has no higher-priority plain message
  ready beside it, and its delivery time has come;
- nothing lost, nothing completed twice: at the end every message sent is durably completed
  exactly once or sits in `q;poison`.
"""
from __future__ import annotations

import random
from typing import Any

from tether.errors import LockLost, PoisonMessage, QueueError
from tether.queue.core import QueueCore, QueueSettings
from tether.queue.core.replay import ReplayState

from .journal import SimJournal

SETTINGS = QueueSettings.from_kwargs(receive_retry_count=1, max_retry_cycles=1, retry_cycle_delay=3.0,
                                     receive_error_handling="move", validity_duration=2.0, time_to_live=None)
QUEUE = "q"


class GroupSimulationFailure(AssertionError):
    """An invariant broke: the message says which, with the seed to replay it."""


class Consumer:
    """A consumer of groups, one message at a time (a state machine driven by step())."""

    def __init__(self, sim: GroupSimulation, name: str) -> None:
        self.sim = sim
        self.name = name
        self.reset()

    def reset(self) -> None:
        self.group: Any = None          # the core Group held
        self.waiting_group = False
        self.waiting_message = False
        self.entry: Any = None          # the message being worked on
        self.tag = 0
        self.completing: int | None = None   # the record of its completion
        self.done_at = 0.0

    # the core calls these (as a waiter for a group, and for the held group's next message)
    def hand_group(self, group: Any) -> None:
        self.sim.stats["groups handed to a waiter"] += 1
        self.waiting_group = False
        self.sim.held(self, group)
        self.group = group

    def hand(self, entry: Any) -> None:
        self.waiting_message = False
        self.sim.delivered(self, entry, grouped=True)
        self.entry, self.tag = entry, entry.tag

    def fail(self, error: BaseException) -> None:
        self.waiting_group = self.waiting_message = False

    def step(self, now: float) -> None:
        sim, core, rng = self.sim, self.sim.core, self.sim.rng
        try:
            if self.waiting_group and rng.random() < 0.1:      # its accept_group timed out
                core.stop_waiting_group(QUEUE, self)
                self.waiting_group = False
            if self.completing is not None or self.waiting_group:
                return
            if self.group is None:
                if rng.random() < 0.3:          # a plain receive now and then
                    entry = core.take(QUEUE, now)
                    if entry is not None:
                        sim.delivered(self, entry, grouped=False)
                        record = core.complete(entry, entry.tag, now)
                        sim.completion(self, entry, record)
                    return
                group = core.accept_group(QUEUE, self, now)
                if group is not None:
                    sim.held(self, group)
                    sim.stats["groups accepted"] += 1
                    self.group = group
                elif rng.random() < 0.5:
                    core.wait_group(QUEUE, self)
                    self.waiting_group = True
                return
            if self.entry is None:
                if self.waiting_message:
                    return
                entry = core.take_group(self.group, self, now)
                if entry is not None:
                    sim.delivered(self, entry, grouped=True)
                    self.entry, self.tag = entry, entry.tag
                elif rng.random() < 0.4:
                    self.release(now, abandon=True)
                else:
                    core.wait_in_group(self.group, self, self)
                    self.waiting_message = True
                return
            roll = rng.random()
            if self.entry.body.endswith(b":3") and rng.random() < 0.5:
                roll = 0.8          # message 3 of each group is hard to process: often abandoned
            if roll < 0.70:
                record = core.complete(self.entry, self.tag, now)
                sim.completion(self, self.entry, record)
                self.entry = None
            elif roll < 0.85:
                sim.stats["abandons"] += 1
                record = core.abandon(self.entry, self.tag, now)
                sim.settling(self, self.entry, record, completed=False)
                self.entry = None
            elif roll < 0.93:
                pass                                # slow: its lock may run out
            elif roll < 0.97:
                self.vanish(now)
            else:
                self.release(now, abandon=True)
        except LockLost:
            self.entry = None
            if self.group is not None and self.group.holder is not self:
                self.group = None
        except PoisonMessage:
            pass

    def release(self, now: float, abandon: bool) -> None:
        if self.waiting_message:
            self.sim.core.stop_waiting_in_group(self.group, self)
        self.sim.released(self, self.group)
        self.sim.core.release_group(self.group, self, now, abandon=abandon)
        self.group = None
        self.entry = None
        self.waiting_message = False

    def vanish(self, now: float) -> None:
        """Gone for client_grace: its lock released uncounted, then its group."""
        self.sim.stats["vanished"] += 1
        if self.entry is not None:
            self.sim.core.release(self.entry, self.tag, now)
        self.release(now, abandon=False)


class GroupSimulation:
    """One seeded run (see the module docstring)."""

    def __init__(self, seed: int, *, steps: int = 1500, groups: int = 4, per_group: int = 6,
                 consumers: int = 3, crashes: bool = True) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.steps = steps
        self.now = 0.0
        self.journal = SimJournal()
        self.core = self._new_core(ReplayState(), start=True)
        self.consumers = [Consumer(self, f"c{n}") for n in range(consumers)]
        self.crashes = crashes
        self.fail_rate = 0.03
        # producers: per group the next number to send, and the send in flight
        self.to_send = {f"g{g}": list(range(per_group)) for g in range(groups)}
        self.plain = [(n, self.rng.randrange(8), self.rng.random() < 0.3) for n in range(per_group * 2)]
        self.sending: dict[str, tuple[bytes, int]] = {}     # producer -> (body, record)
        self.holders: dict[str, Consumer] = {}              # group_id -> who holds it
        self.completions: dict[int, list[tuple[Consumer, Any, int, bool]]] = {}
        self.completed: dict[bytes, int] = {}               # body -> durable completions
        self.sent: set[bytes] = set()
        #: what the run exercised (the test checks each happens across a few seeds)
        self.stats: dict[str, int] = {"crashes": 0, "groups accepted": 0, "groups handed to a waiter": 0,
                                      "abandons": 0, "vanished": 0, "plain deliveries": 0,
                                      "scheduled deliveries": 0, "poisoned": 0, "failed writes": 0}
        while (cut := self.core.cut()) is not None:        # the identity and the queue, written
            self.journal.append(cut[0], cut[1], 0.0, False)
            self.journal.complete()
            self.core.written(cut[0], 0.0)

    # ---- the core and its journal ----

    def _new_core(self, state: ReplayState, start: bool = False) -> QueueCore:
        core = QueueCore(b"group-sim-node-1", journaled=True)
        core.load(state, self.now)
        if start:
            core.start()
            core.define(QUEUE, SETTINGS)
        core.handle_timer(self.now)
        return core

    def _cut(self) -> None:
        while (cut := self.core.cut()) is not None:
            number, ops = cut
            self.journal.append(number, ops, self.now + self.rng.uniform(0.001, 0.05),
                                self.rng.random() < self.fail_rate)

    def _write_due(self) -> None:
        while self.journal.in_flight and self.journal.in_flight[0].done_at <= self.now:
            record = self.journal.in_flight[0]
            self.journal.complete()
            if record.fails:
                self.core.failed(record.number, self.now)
                self._outcome(record.number, False)
            else:
                self.core.written(record.number, self.now)
                self._outcome(record.number, True)
            self._cut()

    def _outcome(self, number: int, written: bool) -> None:
        for consumer, entry, tag, completed in self.completions.pop(number, []):
            if written and completed:
                self.completed[entry.body] = self.completed.get(entry.body, 0) + 1
            elif consumer.completing == number:
                consumer.entry, consumer.tag = entry, tag     # StorageError: it is still locked
            consumer.completing = None
        for producer, (body, record) in list(self.sending.items()):
            if record == number:
                del self.sending[producer]
                if written:
                    self.sent.add(body)
                    self._sent_next(producer)
                # failed: sent again on a later step

    def _sent_next(self, producer: str) -> None:
        if producer.startswith("g"):
            self.to_send[producer].pop(0)
        else:
            self.plain.pop(0)

    def crash(self) -> None:
        self.stats["crashes"] += 1
        kept = set(self.journal.crash(self.rng.randrange(3)))
        for consumer in self.consumers:
            consumer.completing = None
        for number in sorted(set(self.completions) | {r for _, r in self.sending.values()}):
            self._outcome(number, number in kept)
        self.completions.clear()
        state = ReplayState()
        state.apply_records(self.journal.durable)
        self.core = self._new_core(state)
        self.holders.clear()
        for consumer in self.consumers:
            consumer.reset()

    # ---- what the consumers report ----

    def held(self, consumer: Consumer, group: Any) -> None:
        other = self.holders.get(group.group_id)
        if other is not None and other is not consumer:
            self.fail(f"exclusivity: {consumer.name} was handed group {group.group_id} held by {other.name}")
        self.holders[group.group_id] = consumer

    def released(self, consumer: Consumer, group: Any) -> None:
        if self.holders.get(group.group_id) is consumer:
            del self.holders[group.group_id]

    def completion(self, consumer: Consumer, entry: Any, record: int | None) -> None:
        if record is None:
            self.fail("a durable queue's completion was not journaled")
        self.settling(consumer, entry, record, completed=True)

    def settling(self, consumer: Consumer, entry: Any, record: int | None, completed: bool) -> None:
        """The consumer waits for its complete or abandon to be written (as `await` does);
        if the write fails, it still holds the message."""
        if record is None:
            return
        self.completions.setdefault(record, []).append((consumer, entry, entry.tag, completed))
        consumer.completing = record

    def delivered(self, consumer: Consumer, entry: Any, grouped: bool) -> None:
        body = entry.body
        if self.completed.get(body):
            self.fail(f"{body!r} delivered after its completion was durable")
        if not grouped:
            if entry.group_id is not None:
                self.fail(f"plain receive got {body!r} of group {entry.group_id}")
            self.stats["plain deliveries"] += 1
            self.stats["scheduled deliveries"] += entry.deliver_at is not None
            if entry.deliver_at is not None and entry.deliver_at > self.now:
                self.fail(f"{body!r} delivered at {self.now:.3f}, before its delivery time {entry.deliver_at:.3f}")
            for other in self.core.peek(QUEUE, 1000, self.now):
                if other.group_id is None and other.priority > entry.priority:
                    self.fail(f"{body!r} (priority {entry.priority}) went before {other.body!r} "
                              f"(priority {other.priority})")
            return
        group_id = entry.group_id
        if self.holders.get(group_id) is not consumer:
            self.fail(f"exclusivity: {consumer.name} got {body!r} of group {group_id} without holding it")
        number = int(body.split(b":")[1])
        present = {e.body for name in (QUEUE, QUEUE + ";retry") for e in self.core._queue(name).entries()}
        for earlier in range(number):
            other = b"%s:%d" % (group_id.encode(), earlier)
            if other in present and other != body:
                self.fail(f"order: {body!r} handed out while {other!r} is still in {QUEUE} or its ;retry")

    def fail(self, text: str) -> None:
        raise GroupSimulationFailure(f"groups seed {self.seed} at t={self.now:.3f}: {text}")

    # ---- the run ----

    def _produce(self) -> None:
        rng = self.rng
        for producer, numbers in self.to_send.items():
            if numbers and producer not in self.sending and rng.random() < 0.2:
                body = b"%s:%d" % (producer.encode(), numbers[0])
                self._send(producer, body, group_id=producer)
        if self.plain and "plain" not in self.sending and rng.random() < 0.2:
            n, priority, later = self.plain[0]
            body = b"p:%d" % n
            self._send("plain", body, priority=priority, delay=rng.uniform(0.1, 2.0) if later else None)

    def _send(self, producer: str, body: bytes, **options: Any) -> None:
        core = self.core
        try:
            record = core.send_one(core.prepare(QUEUE, body, self.now, **options), self.now)
        except QueueError:
            return
        self.sending[producer] = (body, record)

    def run(self) -> GroupSimulation:
        rng = self.rng
        for _step in range(self.steps):
            self.now += rng.uniform(0.001, 0.03)
            self._produce()
            for consumer in rng.sample(self.consumers, len(self.consumers)):
                consumer.step(self.now)
                self._cut()
            deadline = self.core.next_deadline()
            if deadline is not None and deadline <= self.now:
                self.core.handle_timer(self.now)
            self._cut()
            self._write_due()
            if self.crashes and rng.random() < 0.001:
                self.crash()
        self._drain()
        return self

    def _drain(self) -> None:
        """No more failures: everything sent is completed or poisoned, once."""
        self.fail_rate = 0.0
        for consumer in self.consumers:
            if consumer.group is not None:
                consumer.release(self.now, abandon=False)
        for _ in range(20000):
            if not any(self.to_send.values()) and not self.plain and not self.sending \
                    and not self.journal.in_flight and self._left() == 0:
                break
            self.now += 0.05
            self._produce()
            for consumer in self.consumers:
                consumer.step(self.now)
                if consumer.entry is not None and consumer.completing is None:
                    record = self.core.complete(consumer.entry, consumer.tag, self.now) \
                        if self.core.lock_valid(consumer.entry, consumer.tag, self.now) else None
                    if record is not None:
                        self.completion(consumer, consumer.entry, record)
                    consumer.entry = None
                self._cut()
            if self.core.next_deadline() is not None and self.core.next_deadline() <= self.now:
                self.core.handle_timer(self.now)
            self._cut()
            self.now += 0.1
            self._write_due()
        else:
            self.fail(f"the queue did not drain: {self._left()} messages left, {self.core.info(QUEUE)}")
        poisoned = {e.body for e in self.core._queue(QUEUE + ";poison").entries()}
        self.stats["poisoned"] = len(poisoned)
        self.stats["failed writes"] = self.journal.failures
        for body in self.sent:
            done = self.completed.get(body, 0)
            if done > 1:
                self.fail(f"{body!r} completed {done} times")
            if done == 0 and body not in poisoned:
                self.fail(f"{body!r} was sent and is neither completed nor poisoned")

    def _left(self) -> int:
        info = self.core.info(QUEUE)
        return info.depth + info.in_flight + info.retrying + info.scheduled
