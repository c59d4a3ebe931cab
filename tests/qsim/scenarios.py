"""Seeds to scenarios: a family names the kind of trouble, the seed picks everything else
(queue settings, who sends and receives what, when things fail), so (family, seed)
replays exactly.

  clean         one queue manager, durable and volatile queues, senders (single and
                batched) and producers; consumers that complete everything
  ttl           short time-to-lives: messages expire while ready, while locked (slow
                consumers, expired locks, releases) and while waiting in ;retry
  poison        some messages always fail (abandon, expired lock, crash, rollback); every
                receive_error_handling (fault, drop, reject, move) applies after exactly
                (receive_retry_count+1)*(max_retry_cycles+1) deliveries
  transactions  messages move between queues in transactions that commit, roll back, or
                outlast a lock
  competing     several consumers on one queue: complete, abandon, release, renew, let
                the lock expire, crash
  producers     idempotent producers whose answers get lost (resends), that restart with
                the same id (epoch 0 again: the old instance is fenced) and tell floors
  crash         a mixed workload; the queue manager crashes after journal write N
                (N = seed % 40 + 1: every position over the seeds), either once the write
                is reported or with the write on disk but unreported, with or without the
                records in flight
  storage       journal writes fail now and then (QueueCore.failed); the queue manager
                goes on by itself
  forward       a source queue manager forwards to a target over a link that partitions,
                the target crashes and recovers, its writes may fail; some messages go to a
                queue the target lacks, are too large for it, or expire on the way
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from tether.queue.core import QueueSettings
from tether.queue.core.system_queues import TRANSMISSION_PREFIX, settings_for

from .actors import ConsumerSpec, ProducerSpec, SenderSpec, TxSpec
from .forward import ForwardSpec
from .model import COMPLETED, DROPPED_POISON, DROPPED_REJECTED
from .node import NodeSpec

FAMILIES = ("clean", "ttl", "poison", "transactions", "competing", "producers", "crash", "storage", "forward")
#: crash family: the write after which the crash comes cycles through 1..CRASH_POSITIONS
CRASH_POSITIONS = 40


@dataclass
class Scenario:
    """Everything one run does (see the module docstring)."""

    family: str
    seed: int
    nodes: list[NodeSpec]
    senders: list[SenderSpec] = field(default_factory=list)
    producers: list[ProducerSpec] = field(default_factory=list)
    consumers: list[ConsumerSpec] = field(default_factory=list)
    transactions: list[TxSpec] = field(default_factory=list)
    forwards: list[ForwardSpec] = field(default_factory=list)
    crashes: list[tuple[str, float, int]] = field(default_factory=list)   # (node, when, records kept)
    crash_plans: dict[str, tuple[int, str, int]] = field(default_factory=dict)
    poison_rate: float = 0.0
    end: float = 120.0
    drained: bool = False              # every message must be completed by the end

    @property
    def crashes_expected(self) -> bool:
        return bool(self.crashes or self.crash_plans)

    def describe(self) -> str:
        lines = [f"  scenario {self.family} seed={self.seed} end={self.end} poison_rate={self.poison_rate:.2f}"]
        lines += [n.describe() for n in self.nodes]
        for group in (self.senders, self.producers, self.consumers, self.transactions, self.forwards):
            lines += [s.describe() for s in group]
        for node, at, keep in self.crashes:
            lines.append(f"  crash {node} at {at:.3f} keeping {keep} in-flight records")
        for node, (n, mode, keep) in self.crash_plans.items():
            lines.append(f"  crash {node} at journal write {n} ({mode}, keeping {keep} in-flight records)")
        return "\n".join(lines)

    def check_end(self, sim: Any) -> None:
        """The family's promises, once everything has settled."""
        for node in sim.nodes.values():
            model = node.model
            for msg in model.msgs.values():
                if msg.sent_to is None:
                    continue
                if self.drained and msg.outcome != COMPLETED and msg.mid not in sim.poison_mids \
                        and not (msg.queue or "").startswith(TRANSMISSION_PREFIX):
                    sim.fail(f"[{node.name}] m{msg.mid} is {msg.queue or msg.outcome} at the end; "
                             f"every message should have been completed")
                if msg.mid in sim.poison_mids and self.family == "poison":
                    _check_poison(sim, node, msg)
        for tx in sim.txs:
            _check_transactions(sim, tx)


def _check_poison(sim: Any, node: Any, msg: Any) -> None:
    """A message that always fails ends as its queue's receive_error_handling says."""
    model = node.model
    main = model.queues[msg.sent_to]
    mode = main.settings.receive_error_handling
    if not msg.poisoned:
        sim.fail(f"[{node.name}] poison m{msg.mid} never met its receive_error_handling ({mode}); it is "
                 f"{msg.queue or msg.outcome}")
    if mode == "drop":
        ok = msg.outcome == DROPPED_POISON
    elif mode == "reject":
        target = model.dead_letter_target(main)
        ok = (msg.outcome == DROPPED_REJECTED if target is None else
              msg.queue == target.name and msg.reason == "rejected" and msg.source == main.name)
    else:   # move, fault: in ;poison, or completed from there
        ok = msg.queue == main.name + ";poison" or msg.outcome == COMPLETED
    if not ok:
        sim.fail(f"[{node.name}] poison m{msg.mid} of {main.name} ({mode}) ended as "
                 f"{msg.queue or msg.outcome} (reason {msg.reason})")


def _check_transactions(sim: Any, tx: Any) -> None:
    """Each message a transaction completed has exactly one derived message, queued by
    the same commit; no derived message exists without its source completed."""
    model = tx.node.model
    made: dict[int, int] = {}
    for derived, source in tx.derived.items():
        msg = model.msgs[derived]
        if msg.sent_to is not None:
            made[source] = made.get(source, 0) + 1
            if model.msgs[source].outcome != COMPLETED:
                sim.fail(f"[{tx.node.name}] m{derived} was queued by a commit but its source m{source} is "
                         f"{model.msgs[source].queue or model.msgs[source].outcome}")
    for source, count in made.items():
        if count != 1:
            sim.fail(f"[{tx.node.name}] m{source} was moved {count} times")


# ---------------------------------------------------------------------------- building blocks

def _settings(rng: random.Random, **fixed: Any) -> QueueSettings:
    values = dict(
        durable=rng.random() < 0.85,
        exactly_once=rng.random() < 0.9,
        time_to_live=None if rng.random() < 0.7 else rng.choice([60.0, 300.0]),
        dead_letter_queue=rng.choice(["system", "system", "none", "dlq", "missing"]),
        receive_retry_count=rng.randint(0, 3),
        max_retry_cycles=rng.randint(0, 2),
        retry_cycle_delay=rng.choice([0.0, 0.2, 0.5, 2.0]),
        receive_error_handling=rng.choice(["fault", "drop", "reject", "move"]),
        validity_duration=rng.choice([0.5, 1.0, 3.0, 10.0]),
        max_length=None if rng.random() < 0.8 else rng.randint(3, 20),
    )
    values.update(fixed)
    return QueueSettings.from_kwargs(**values)


def _node(name: str, rng: random.Random, queues: dict[str, QueueSettings], **kw: Any) -> NodeSpec:
    """A node; a queue naming dead_letter_queue "dlq" gets that queue too ("missing" is not defined)."""
    for settings in list(queues.values()):
        if settings.dead_letter_queue == "dlq" and "dlq" not in queues:
            queues["dlq"] = _settings(rng, dead_letter_queue="system", time_to_live=None, max_length=None)
    kw.setdefault("write_delay", rng.choice([(0.0005, 0.002), (0.001, 0.01), (0.005, 0.03)]))
    kw.setdefault("compact_rate", rng.choice([0.0, 0.0, 0.02, 0.1]))
    return NodeSpec(name, queues, **kw)


def _pid(seed: int, name: str) -> bytes:
    return hashlib.sha256(f"{seed}-{name}".encode()).digest()[:16]


def _senders(rng: random.Random, node: str, queues: list[str], n: int, count: tuple[int, int], **kw: Any) -> list:
    return [SenderSpec(f"s{i}", node, rng.choice(queues), rng.randint(*count), start=rng.uniform(0.0, 1.0),
                       gap=rng.choice([(0.0, 0.02), (0.0, 0.2)]), batch=rng.choice([0.0, 0.3]), **kw)
            for i in range(n)]


def _consumers(rng: random.Random, node: str, queue: str, n: int, stop: float, mix: dict[str, float],
               **kw: Any) -> list:
    return [ConsumerSpec(f"c{queue}{i}", node, queue, start=rng.uniform(0.0, 2.0), stop=stop,
                         think=rng.choice([(0.0, 0.02), (0.0, 0.3)]), mix=mix, **kw)
            for i in range(n)]


# ---------------------------------------------------------------------------- families

def clean(seed: int) -> Scenario:
    rng = random.Random(f"clean-{seed}")
    queues = {f"q{i}": _settings(rng, time_to_live=None, max_length=None, dead_letter_queue="system")
              for i in range(rng.randint(1, 2))}
    names = list(queues)
    s = Scenario("clean", seed, [_node("a", rng, queues)], drained=True, end=60.0)
    s.senders = _senders(rng, "a", names, rng.randint(1, 3), (3, 12))
    if rng.random() < 0.5:
        eo = [n for n in names if queues[n].exactly_once] or names
        s.producers = [ProducerSpec("p0", "a", rng.choice(eo), rng.randint(3, 10), _pid(seed, "p0"))]
    for name in names:
        s.consumers += _consumers(rng, "a", name, rng.randint(1, 2), 50.0, {"complete": 1.0})
    return s


def ttl(seed: int) -> Scenario:
    rng = random.Random(f"ttl-{seed}")
    queues = {f"q{i}": _settings(rng, time_to_live=rng.choice([0.3, 1.0, 2.0]),
                                 validity_duration=rng.choice([0.5, 1.0, 2.0]),
                                 retry_cycle_delay=rng.choice([0.5, 2.0, 5.0]),
                                 dead_letter_queue=rng.choice(["system", "none", "dlq"]),
                                 max_length=None)
              for i in range(rng.randint(1, 2))}
    names = list(queues)
    s = Scenario("ttl", seed, [_node("a", rng, queues)], end=60.0)
    s.senders = _senders(rng, "a", names, rng.randint(1, 3), (4, 12), ttl=(None, None, 0.5, 3.0))
    mix = {"complete": 2.0, "abandon": 1.0, "expire": 1.0, "release": 1.0, "renew": 0.5}
    for name in names:
        s.consumers += [ConsumerSpec(f"c{name}{i}", "a", name, start=rng.uniform(0.0, 3.0), stop=30.0,
                                     think=rng.choice([(0.0, 0.5), (0.2, 1.5)]), mix=mix)
                        for i in range(rng.randint(1, 2))]
    return s


def poison(seed: int) -> Scenario:
    rng = random.Random(f"poison-{seed}")
    mode = ("fault", "drop", "reject", "move")[seed % 4]
    queues = {"q0": _settings(rng, receive_error_handling=mode, time_to_live=None, max_length=None,
                              validity_duration=rng.choice([0.3, 1.0]), retry_cycle_delay=rng.choice([0.0, 0.3, 1.0]),
                              receive_retry_count=rng.randint(0, 3), max_retry_cycles=rng.randint(0, 2),
                              exactly_once=True)}
    # up to 8 poison messages x 12 deliveries, a crashed consumer away for up to 3 s each
    s = Scenario("poison", seed, [_node("a", rng, queues)], poison_rate=rng.choice([0.2, 0.5]), end=900.0)
    s.senders = _senders(rng, "a", ["q0"], rng.randint(1, 2), (3, 8))
    action = rng.choice(["abandon", "abandon", "expire", "crash"])
    s.consumers = _consumers(rng, "a", "q0", rng.randint(1, 2), 880.0, {"complete": 1.0}, poison_action=action)
    if rng.random() < 0.3:
        s.transactions = [TxSpec("t0", "a", "q0", "q0", batch=1, start=0.5, stop=880.0, rollback=0.0, stall=0.0)]
        queues["q1"] = _settings(rng, time_to_live=None, max_length=None, exactly_once=True)
        s.transactions[0].target = "q1"
    return s


def transactions(seed: int) -> Scenario:
    rng = random.Random(f"transactions-{seed}")
    queues = {name: _settings(rng, exactly_once=True, time_to_live=None, max_length=None,
                              receive_error_handling=rng.choice(["drop", "move"]), dead_letter_queue="system",
                              validity_duration=rng.choice([0.5, 2.0]), retry_cycle_delay=rng.choice([0.0, 0.5]))
              for name in ("in", "mid", "out")}
    if rng.random() < 0.3:
        queues["mid"] = _settings(rng, exactly_once=True, time_to_live=None, max_length=rng.randint(2, 5),
                                  dead_letter_queue="system")
    s = Scenario("transactions", seed, [_node("a", rng, queues)], end=80.0)
    s.senders = _senders(rng, "a", ["in"], rng.randint(1, 2), (4, 12))
    s.transactions = [TxSpec(f"t{i}", "a", src, dst, batch=rng.randint(1, 4), start=rng.uniform(0, 1), stop=60.0,
                             rollback=rng.choice([0.0, 0.2, 0.4]), stall=rng.choice([0.0, 0.1]))
                      for i, (src, dst) in enumerate([("in", "mid"), ("mid", "out")] * rng.randint(1, 2))]
    s.consumers = _consumers(rng, "a", "out", 1, 60.0, {"complete": 1.0})
    return s


def competing(seed: int) -> Scenario:
    rng = random.Random(f"competing-{seed}")
    queues = {"q0": _settings(rng, time_to_live=rng.choice([None, 30.0]), max_length=None,
                              validity_duration=rng.choice([0.5, 1.0, 3.0]), retry_cycle_delay=rng.choice([0.0, 0.5]))}
    s = Scenario("competing", seed, [_node("a", rng, queues)], end=80.0)
    s.senders = _senders(rng, "a", ["q0"], rng.randint(1, 3), (5, 15))
    mix = {"complete": 4.0, "abandon": 1.0, "release": 1.0, "expire": 0.5, "crash": 0.3, "renew": 0.5}
    s.consumers = _consumers(rng, "a", "q0", rng.randint(3, 5), 60.0, mix)
    return s


def producers(seed: int) -> Scenario:
    rng = random.Random(f"producers-{seed}")
    queues = {f"q{i}": _settings(rng, exactly_once=True, time_to_live=None, durable=True,
                                 max_length=None if rng.random() < 0.8 else rng.randint(5, 15))
              for i in range(rng.randint(1, 2))}
    names = list(queues)
    s = Scenario("producers", seed, [_node("a", rng, queues)], end=60.0)
    for i in range(rng.randint(1, 3)):
        restarts = tuple(sorted(rng.uniform(0.2, 3.0) for _ in range(rng.choice([0, 1, 1, 2]))))
        s.producers.append(ProducerSpec(f"p{i}", "a", rng.choice(names), rng.randint(4, 14), _pid(seed, f"p{i}"),
                                        start=rng.uniform(0, 0.5), gap=rng.choice([(0.0, 0.05), (0.0, 0.3)]),
                                        lose_reply=rng.choice([0.0, 0.1, 0.3]), restarts=restarts))
    if rng.random() < 0.4:
        s.senders = _senders(rng, "a", names, 1, (2, 6))
    for name in names:
        s.consumers += _consumers(rng, "a", name, 1, 50.0, {"complete": 4.0, "abandon": 1.0})
    return s


def crash(seed: int) -> Scenario:
    rng = random.Random(f"crash-{seed // CRASH_POSITIONS}")
    queues = {f"q{i}": _settings(rng, durable=True, time_to_live=rng.choice([None, None, 5.0]), max_length=None,
                                 validity_duration=rng.choice([0.5, 2.0]), retry_cycle_delay=rng.choice([0.0, 0.5]))
              for i in range(2)}
    queues["q0"] = QueueSettings.from_kwargs(**{**queues["q0"].as_dict(), "exactly_once": True})
    names = list(queues)
    s = Scenario("crash", seed, [_node("a", rng, queues)], end=60.0)
    s.senders = _senders(rng, "a", names, 2, (3, 8))
    s.producers = [ProducerSpec("p0", "a", "q0", rng.randint(4, 10), _pid(seed, "p0"),
                                lose_reply=rng.choice([0.0, 0.2]))]
    s.consumers = _consumers(rng, "a", "q0", 1, 50.0, {"complete": 3.0, "abandon": 1.0, "release": 0.5})
    s.consumers += _consumers(rng, "a", "q1", 1, 50.0, {"complete": 3.0, "expire": 0.5})
    if queues["q1"].exactly_once and rng.random() < 0.5:
        queues["q2"] = _settings(rng, durable=True, exactly_once=True, time_to_live=None, max_length=None)
        s.transactions = [TxSpec("t0", "a", "q1", "q2", batch=2, start=0.5, stop=50.0, rollback=0.2, stall=0.0)]
        s.consumers = [c for c in s.consumers if c.queue != "q1"]
    position = seed % CRASH_POSITIONS + 1
    mode = "torn" if (seed // CRASH_POSITIONS) % 2 else "after"
    keep = rng.choice([0, 0, 1, 2]) if mode == "after" else rng.choice([1, 2])
    s.crash_plans = {"a": (position, mode, keep)}
    s.nodes[0].compact_rate = rng.choice([0.0, 0.1])
    if rng.random() < 0.3:
        s.crashes = [("a", rng.uniform(2.0, 10.0), rng.choice([0, 1]))]
    return s


def storage(seed: int) -> Scenario:
    rng = random.Random(f"storage-{seed}")
    queues = {f"q{i}": _settings(rng, time_to_live=rng.choice([None, None, 2.0]), max_length=None,
                                 validity_duration=rng.choice([0.5, 2.0]), retry_cycle_delay=rng.choice([0.0, 0.5]))
              for i in range(rng.randint(1, 2))}
    names = list(queues)
    node = _node("a", rng, queues, fail_rate=rng.choice([0.05, 0.15, 0.3]))
    s = Scenario("storage", seed, [node], end=80.0)
    s.senders = _senders(rng, "a", names, rng.randint(1, 2), (4, 12))
    eo = [n for n in names if queues[n].exactly_once and queues[n].durable]
    if eo:
        s.producers = [ProducerSpec("p0", "a", rng.choice(eo), rng.randint(3, 10), _pid(seed, "p0"),
                                    lose_reply=rng.choice([0.0, 0.2]))]
    mix = {"complete": 4.0, "abandon": 1.0, "release": 0.5, "expire": 0.3}
    for name in names:
        s.consumers += _consumers(rng, "a", name, rng.randint(1, 2), 60.0, mix)
    if queues[names[0]].exactly_once and rng.random() < 0.4:
        queues["t"] = _settings(rng, exactly_once=True, time_to_live=None, max_length=None)
        s.transactions = [TxSpec("t0", "a", names[0], "t", batch=2, start=0.5, stop=60.0, rollback=0.2)]
        s.consumers = [c for c in s.consumers if c.queue != names[0]]
        s.consumers += _consumers(rng, "a", "t", 1, 60.0, {"complete": 1.0})
    return s


def forward(seed: int) -> Scenario:
    rng = random.Random(f"forward-{seed}")
    authority = "target:7600"
    xmit = TRANSMISSION_PREFIX + authority
    target_queue = _settings(rng, exactly_once=True, durable=True, time_to_live=None,
                             max_length=None if rng.random() < 0.8 else rng.randint(4, 10),
                             max_message_size=rng.choice([65536, 65536, 200]), receive_error_handling="move",
                             dead_letter_queue="system")
    # the transmission queue as the manager makes it, or with short locks and retry cycles
    # (as tests/test_qm_forward_crash.py patches it). A completion that fails at the source
    # leaves the message locked until its lock runs out (then it is sent again, and goes
    # through ;retry): only with the short locks do the source's writes fail, or the run
    # would wait 300 s per failure (a design limit, reported)
    short_locks = rng.random() < 0.5
    xmit_settings = settings_for(xmit) if not short_locks else QueueSettings.from_kwargs(
        receive_error_handling="move", validity_duration=2.0, receive_retry_count=0, max_retry_cycles=50,
        retry_cycle_delay=0.5)
    source = _node("src", rng, {xmit: xmit_settings}, compact_rate=rng.choice([0.0, 0.05]),
                   fail_rate=rng.choice([0.0, 0.05]) if short_locks else 0.0)
    target = _node("dst", rng, {"orders": target_queue}, fail_rate=rng.choice([0.0, 0.0, 0.05, 0.15]),
                   compact_rate=rng.choice([0.0, 0.05]))
    partitions = []
    t = rng.uniform(0.5, 3.0)
    for _ in range(rng.choice([0, 1, 2, 3])):
        length = rng.choice([0.2, 1.0, 4.0])
        partitions.append((t, t + length))
        t += length + rng.uniform(0.5, 4.0)
    # a paused forwarder waits up to 30 s (RETRY_CAP) between tries: time to drain
    s = Scenario("forward", seed, [source, target], end=300.0)
    s.forwards = [ForwardSpec("src", "dst", authority, partitions=tuple(partitions),
                              max_in_flight=rng.choice([1, 4, 16]))]
    if rng.random() < 0.5:
        s.crashes.append(("dst", rng.uniform(1.0, 8.0), rng.choice([0, 1])))
    source_crash = rng.random() < 0.2
    if source_crash:
        s.crashes.append(("src", rng.uniform(1.0, 8.0), rng.choice([0, 1])))
    # A source that loses what it knew of a forward (a crash, a failed completion) decides
    # expiry by itself, without the target, which may have the message (its answer or its
    # completion was lost): expiring it then is a design limit, reported, not simulated
    source_forgets = source_crash or source.fail_rate > 0
    for i in range(rng.randint(1, 3)):
        queue = "orders" if rng.random() < 0.85 else "nowhere"
        s.senders.append(SenderSpec(f"s{i}", "src", xmit, rng.randint(3, 12), start=rng.uniform(0.0, 2.0),
                                    gap=rng.choice([(0.0, 0.05), (0.0, 0.5)]), batch=rng.choice([0.0, 0.3]),
                                    ttl=(None,) if source_forgets else rng.choice([(None,), (None, None, 1.0)]),
                                    destination=f"tether://{authority}/{queue}",
                                    padding=rng.choice([(0,), (0, 0, 400)])))
    s.consumers = _consumers(rng, "dst", "orders", rng.randint(1, 2), 300.0, {"complete": 1.0})
    return s


BUILDERS = {"clean": clean, "ttl": ttl, "poison": poison, "transactions": transactions, "competing": competing,
            "producers": producers, "crash": crash, "storage": storage, "forward": forward}


def make_scenario(family: str, seed: int) -> Scenario:
    """The scenario of `family` for `seed`."""
    try:
        builder = BUILDERS[family]
    except KeyError:
        raise ValueError(f"unknown queue simulation family {family!r} (known: {', '.join(FAMILIES)})") from None
    return builder(seed)
