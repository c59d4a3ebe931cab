"""`Simulation`: runs one scenario event by event on a simulated clock, and checks the
invariants after every step.

The clock advances to the next scheduled event (a journal write completing, an actor's
timer, a frame arriving, a crash) or to the earliest `next_deadline()` of a running core,
whichever comes first; a core whose deadline came runs `handle_timer(now)`. The run ends
at the scenario's `end` (scenarios leave time for everything to settle before it). After every
step each running node's counters must equal its model's, no receiver may wait while a
message is ready for it, and nothing due may be left without a deadline (node.py). Along
the way: every take and hand-off is checked (model.py, node.py), first deliveries follow
each sender's order, and every floor a forwarder tells is sound. At the end every node is
reconciled message by message with its model, and each family's promises are checked
(scenarios.py): forwarded messages arrived once or were dead-lettered with the right
reason, poison messages met their receive_error_handling after exactly
(receive_retry_count+1)*(max_retry_cycles+1) deliveries.
"""
from __future__ import annotations

import hashlib
import random
import traceback
from collections import deque
from typing import Any

from .actors import Consumer, ProducerGroup, Sender, TxConsumer
from .forward import Forwarder, Link, TargetService
from .model import COMPLETED, DEAD, LOST_VOLATILE, READY, Msg
from .node import Node, mid_of
from sim.network import Clock

#: A run taking more steps than this is stuck in a loop.
MAX_STEPS = 200_000


class SimulationFailure(AssertionError):
    """An invariant broke; the message says which, where, and how to replay the seed."""


class Simulation:
    """One scenario (see the module docstring). `run()` returns the simulation, or raises
    SimulationFailure naming the broken invariant and the replay command."""

    def __init__(self, scenario: Any, *, trace: bool = False) -> None:
        self.scenario = scenario
        self.clock = Clock()
        self.trace: list | deque = [] if trace else deque(maxlen=80)
        self.steps = 0
        self.mids = 0
        self.poison_mids: set[int] = set()
        self.origins: dict[int, Msg] = {}          # mid -> the message as first sent (forwarding)
        self.first_deliveries = 0
        self.floors_checked = 0
        self._poison_rng = random.Random(f"{scenario.seed}-poison")
        self.nodes: dict[str, Node] = {}
        for spec in scenario.nodes:
            node = Node(self, spec, hashlib.sha256(f"qsim-{spec.name}".encode()).digest()[:16])
            self.nodes[spec.name] = node
        self.forwarders: list[Forwarder] = []
        self.services: list[TargetService] = []
        self.links: list[Link] = []
        for spec in scenario.forwards:
            link = Link(self, spec, self.nodes[spec.target])
            self.links.append(link)
            self.services.append(TargetService(self, self.nodes[spec.target], link))
            self.forwarders.append(Forwarder(self, self.nodes[spec.source], link, spec))
        self.senders = [Sender(self, self.nodes[s.node], s) for s in scenario.senders]
        self.producers = [ProducerGroup(self, self.nodes[s.node], s) for s in scenario.producers]
        self.consumers = [Consumer(self, self.nodes[s.node], s) for s in scenario.consumers]
        self.txs = [TxConsumer(self, self.nodes[s.node], s) for s in scenario.transactions]
        for name, plan in scenario.crash_plans.items():
            self.nodes[name].crash_plan = plan
        for name, at, keep in scenario.crashes:
            self.clock.at(at, self.nodes[name].crash, keep)
        for node in self.nodes.values():
            self.clock.at(0.0, node.boot)

    # ---------------------------------------------------------------- messages

    def new_message(self, node: Node, sender: str, pad: int = 0, may_poison: bool = False) -> Msg:
        """A new message; one an application sends may be poison (it always fails)."""
        self.mids += 1
        mid = self.mids
        msg = node.model.new_message(mid, b"m%d." % mid + b"x" * pad, sender)
        if may_poison and self.scenario.poison_rate and self._poison_rng.random() < self.scenario.poison_rate:
            self.poison_mids.add(mid)
        self.origins[mid] = msg
        return msg

    def forwarded_message(self, node: Node, body: bytes) -> Msg:
        """The target's copy of a forwarded message (the same one when it comes again)."""
        mid = int(body[1:body.index(b".")])
        msg = node.model.msgs.get(mid)
        if msg is None:
            origin = self.origins[mid]
            msg = node.model.new_message(mid, body, origin.sender)
            msg.index = origin.index
        return msg

    def is_poison(self, node: Node, entry: Any) -> bool:
        return mid_of(entry) in self.poison_mids

    # ---------------------------------------------------------------- checks along the way

    def first_delivery(self, node: Node, msg: Msg) -> None:
        """First deliveries of one sender's messages follow the order they were queued in:
        nothing that sender queued earlier may still wait, undelivered, in the same queue."""
        self.first_deliveries += 1
        if msg.sent_to != msg.queue or msg.index < 0:
            return
        if msg.origin is not None and any(f.transient for f in self.forwarders if f.spec.target == node.name):
            # a forwarder pipelines: after a transient refusal (the target's write failed,
            # its queue was full) the refused message is sent again after later ones were
            # queued. Order per sender holds only without them (a design limit, reported).
            return
        now = self.clock.now
        for other in node.model.queues[msg.queue].members.values():
            if (other is not msg and other.sender == msg.sender and other.sent_to == msg.queue and not other.taken
                    and other.state == READY and 0 <= other.index < msg.index
                    and (other.expires_at is None or other.expires_at > now)):     # (expired: the timer's)
                self.fail(f"[{node.name}] order: {msg.sender}'s m{msg.mid} is delivered from {msg.queue} while "
                          f"m{other.mid}, queued before it, waits undelivered")

    def check_floor(self, forwarder: Forwarder, floor: int, who: str) -> None:
        """A floor told to the target must not cover a message the source still has to
        send: a resend below the floor is answered as a duplicate and never queued. The
        forwarder's own floor must not cover any (lowest_sequence); the client's may cover
        one the target has accepted already."""
        self.floors_checked += 1
        node = forwarder.node
        xmit = forwarder.spec.queue
        producer = self.nodes[forwarder.spec.target].model.producers.get(forwarder.client_id)
        for msg in node.model.msgs.values():
            if not msg.number or msg.number >= floor or msg.destination is None:
                continue
            if not (msg.sending or msg.queue in (xmit, xmit + ";retry")):
                continue                # settled here, or never queued
            queue = msg.destination.rsplit("/", 1)[1]
            accepted = producer is not None and producer.owners.get((queue, msg.number)) == msg.mid
            if who == "the forwarder" or not accepted:
                self.fail(f"[{node.name}] {who} tells floor {floor}, but m{msg.mid} (sequence {msg.number}) is "
                          f"{msg.state + ' in ' + msg.queue if msg.queue else 'being written to ' + xmit}"
                          f"{'' if accepted else ' and the target does not have it'}: a resend would be lost")

    # ---------------------------------------------------------------- running

    def run(self) -> Simulation:
        clock = self.clock
        end = self.scenario.end
        nodes = list(self.nodes.values())
        try:
            while True:
                event_at = clock.next_time
                due_node, due_at = None, None
                for node in nodes:
                    deadline = node.next_deadline()
                    if deadline is not None and (due_at is None or deadline < due_at):
                        due_node, due_at = node, deadline
                if due_node is not None and (event_at is None or due_at <= event_at):
                    if due_at > end:
                        break
                    clock.now = max(clock.now, due_at)
                    due_node.handle_timer()
                elif event_at is not None and event_at <= end:
                    clock.step()
                else:
                    break
                self.steps += 1
                if self.steps > MAX_STEPS:
                    self.fail(f"more than {MAX_STEPS} steps: a loop that never settles")
                for node in nodes:
                    if node.up:
                        node.check_counts("step")
            self._final()
        except SimulationFailure:
            raise
        except Exception as exc:        # the core or the harness raised: always a bug
            self.fail(f"unexpected {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        return self

    def _final(self) -> None:
        for node in self.nodes.values():
            if not node.up:
                self.fail(f"[{node.name}] is down at the end")
            node.reconcile("end")
            self._acknowledged(node)
        self.scenario.check_end(self)
        for forwarder in self.forwarders:
            self._forwarded(forwarder)

    def _acknowledged(self, node: Node) -> None:
        """Every message that was queued (its sender told, or its write on disk before a
        crash) is, at the end, in exactly one queue or has one explicit outcome
        (node.reconcile checked the queues)."""
        for msg in node.model.msgs.values():
            if msg.sent_to is None:
                continue                # never queued
            if msg.queue is None and msg.outcome is None:
                self.fail(f"[{node.name}] m{msg.mid} was queued and is nowhere, with no outcome")
            if msg.outcome == LOST_VOLATILE and not self.scenario.crashes_expected:
                self.fail(f"[{node.name}] m{msg.mid} lost without a crash")

    def _forwarded(self, forwarder: Forwarder) -> None:
        """Each message sent to the remote address arrived at the target once, or came back
        to the source's dead-letter queue with the right reason; nothing is left behind."""
        source = forwarder.node.model
        target_node = self.nodes[forwarder.spec.target]
        target = target_node.model
        xmit = forwarder.spec.queue
        for msg in source.msgs.values():
            if msg.destination is None or msg.sent_to is None:
                continue
            where = msg.queue or msg.outcome
            if msg.queue is not None and msg.queue.startswith(xmit):
                if not msg.queue.endswith(";poison"):
                    self.fail(f"[{forwarder.node.name}] m{msg.mid} is still in {msg.queue} at the end")
            copy = target.msgs.get(msg.mid)
            arrived = copy is not None and copy.sent_to is not None
            if arrived and msg.outcome != COMPLETED:
                self.fail(f"m{msg.mid} arrived at {target_node.name} and is also {where} at the source")
            if not arrived and msg.outcome == COMPLETED:
                self.fail(f"m{msg.mid} was completed at the source but never arrived at {target_node.name}: lost")
            if msg.queue == DEAD:
                queue = msg.destination.rsplit("/", 1)[1]
                settings = target.defined.get(queue)
                allowed = set()
                if msg.sent_expires_at is not None:
                    allowed.add("expired")
                if settings is None:
                    allowed.add("queue-not-found")
                elif len(msg.body) > settings.max_message_size:
                    allowed.add("message-too-large")
                if msg.reason not in allowed:
                    self.fail(f"m{msg.mid} was dead-lettered at the source as {msg.reason!r}; expected one of "
                              f"{sorted(allowed)}")

    # ---------------------------------------------------------------- reporting

    def record(self, *item: Any) -> None:
        self.trace.append((round(self.clock.now, 6),) + item)

    def fail(self, text: str) -> None:
        s = self.scenario
        recent = "\n".join("    " + " ".join(str(x) for x in item) for item in list(self.trace)[-50:])
        raise SimulationFailure(
            f"{text}\n  at t={self.clock.now:.6f} step={self.steps}\n{s.describe()}\n  last events:\n{recent}\n"
            f"  replay: TETHER_QSIM_FAMILY={s.family} TETHER_QSIM_SEED={s.seed} "
            f"python -m pytest tests/test_queue_sim.py -k replay -s")

    def summary(self) -> dict:
        out = {"steps": self.steps, "messages": self.mids, "first deliveries": self.first_deliveries}
        for node in self.nodes.values():
            j = node.journal
            out[node.name] = {"writes": j.writes, "failed writes": j.failures, "compactions": j.compactions,
                              "crashes": node.crashes, "survivors": j.survivors}
        for f in self.forwarders:
            out[f.name] = {"forwarded": f.forwarded, "dead-lettered": f.dead_lettered, "transient": f.transient,
                           "link breaks": f.link.breaks}
        return out


def run_scenario(scenario: Any, *, trace: bool = False) -> Simulation:
    """Run one scenario; SimulationFailure if an invariant broke."""
    return Simulation(scenario, trace=trace).run()
