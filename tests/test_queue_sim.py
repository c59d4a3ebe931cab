"""Deterministic simulation of the queue core (tests/qsim/; docs/architecture.md, "How it is
tested").

Every family (tests/qsim/scenarios.py) runs a block of seeds: QueueCores on a simulated
clock and journal, with senders, idempotent producers, consumers, transactions and a
forwarder over a partitioning link, crashes, torn and failed writes and compactions. A
reference model (tests/qsim/model.py) is checked after every step: nothing acknowledged is
lost, nothing is queued or completed twice, every take, hand-off, record and counter is the
model's, attempt counts are exact, first deliveries follow each sender's order, forwarded
messages arrive once or come back with the right reason.

A failing seed prints its replay command, e.g.
    TETHER_QSIM_FAMILY=crash TETHER_QSIM_SEED=123 python -m pytest tests/test_queue_sim.py -k replay -s
Many more seeds: TETHER_QSIM_SOAK=100000 python -m pytest tests/test_queue_sim.py -m soak
(seeds spread over the families, from SOAK_FIRST on).
"""
from __future__ import annotations

import collections
import os

import pytest

from tether.queue.core import engine

from qsim import FAMILIES, SimulationFailure, make_scenario, run_scenario
from qsim.harness import Simulation
from qsim.model import COMPLETED, DEAD, DROPPED_EXPIRED, DROPPED_POISON
from qsim.scenarios import CRASH_POSITIONS, clean

# Seeds per family in CI: 1,200 in about 15 s on a quiet 2-core machine (the whole file: 19 s).
CI_SEEDS = {
    "clean": 100,
    "ttl": 160,
    "poison": 160,
    "transactions": 120,
    "competing": 120,
    "producers": 100,
    "crash": 2 * CRASH_POSITIONS,
    "storage": 120,
    "forward": 140,
}
BLOCK = 40
DETERMINISM_SEEDS = 3
SOAK_SEEDS = int(os.environ.get("TETHER_QSIM_SOAK", "100000"))
SOAK_FIRST = 100_000


def _run_seeds(family: str, seeds: range) -> None:
    """Run every seed; report all that failed, the first one in full."""
    failures: list[tuple[int, SimulationFailure]] = []
    for seed in seeds:
        try:
            run_scenario(make_scenario(family, seed))
        except SimulationFailure as exc:
            failures.append((seed, exc))
    if failures:
        seeds_failed = ", ".join(str(s) for s, _ in failures[:50])
        pytest.fail(f"{len(failures)} of {len(seeds)} {family} seeds failed: {seeds_failed}\n"
                    f"first failure (seed {failures[0][0]}):\n{failures[0][1]}", pytrace=False)


def _blocks() -> list:
    out = []
    for family in FAMILIES:
        for start in range(0, CI_SEEDS[family], BLOCK):
            stop = min(start + BLOCK, CI_SEEDS[family])
            out.append(pytest.param(family, start, stop, id=f"{family}-{start}:{stop}"))
    return out


@pytest.mark.parametrize(("family", "start", "stop"), _blocks())
def test_seeds(family: str, start: int, stop: int) -> None:
    _run_seeds(family, range(start, stop))


def test_ci_covers_every_crash_position() -> None:
    """The crash family crashes after journal write N = seed % CRASH_POSITIONS + 1, once
    after the write is reported and once with it on disk but unreported."""
    plans = {make_scenario("crash", seed).crash_plans["a"][:2] for seed in range(CI_SEEDS["crash"])}
    assert plans == {(n, mode) for n in range(1, CRASH_POSITIONS + 1) for mode in ("after", "torn")}


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_trace(family: str) -> None:
    """Determinism: nothing depends on hashing, identity or the wall clock."""
    for seed in range(DETERMINISM_SEEDS):
        runs = []
        for _ in range(2):
            sim = Simulation(make_scenario(family, seed), trace=True).run()
            runs.append((list(sim.trace), sim.summary()))
        assert runs[0] == runs[1], f"{family} seed {seed} ran differently twice"
        assert len(runs[0][0]) > 20


def test_families_exercise_what_they_claim() -> None:
    """Guards against a simulation that silently stops testing anything: across a few seeds
    each family really crashes, fails writes, fences, retries, expires, poisons, partitions
    and forwards what it says it does."""
    seen: dict[str, collections.Counter] = {}
    for family in FAMILIES:
        counts: collections.Counter = collections.Counter()
        # the crash family: both crash modes (seeds of consecutive blocks of CRASH_POSITIONS)
        seeds = [*range(20), *range(CRASH_POSITIONS, CRASH_POSITIONS + 20)] if family == "crash" else range(30)
        for seed in seeds:
            sim = run_scenario(make_scenario(family, seed))
            for node in sim.nodes.values():
                journal = node.journal
                counts["crashes"] += node.crashes
                counts["failed writes"] += journal.failures
                counts["torn writes kept"] += journal.survivors
                counts["compactions"] += journal.compactions
                for msg in node.model.msgs.values():
                    counts[msg.outcome or ("queued" if msg.queue else "never queued")] += 1
                    if msg.queue == DEAD or msg.reason:
                        counts[f"dead letter: {msg.reason}"] += 1
                    if msg.poisoned:
                        counts[f"poison: {node.model.queues[msg.sent_to].settings.receive_error_handling}"] += 1
                    counts["expired"] += msg.reason == "expired" or msg.outcome == DROPPED_EXPIRED
                    counts["retry cycles"] += msg.queue is not None and msg.queue.endswith(";retry")
                counts["releases"] += node.model.releases
            for group in sim.producers:
                for producer in group.instances:
                    counts["fenced"] += producer.fenced
                    counts["duplicates answered"] += producer.resends
            for tx in sim.txs:
                counts["commits"] += tx.commits
            for forwarder in sim.forwarders:
                counts["forwarded"] += forwarder.forwarded
                counts["dead-lettered at the source"] += forwarder.dead_lettered
                counts["transient refusals"] += forwarder.transient
                counts["link breaks"] += forwarder.link.breaks
            counts["first deliveries"] += sim.first_deliveries
            counts["floors checked"] += sim.floors_checked
        seen[family] = counts
    for family, counts in seen.items():
        assert counts[COMPLETED] > 100, (family, counts)
    assert seen["ttl"]["expired"] > 50 and seen["ttl"]["releases"] > 20
    for mode in ("fault", "drop", "reject", "move"):
        assert seen["poison"][f"poison: {mode}"] > 3, seen["poison"]
    assert seen["poison"][DROPPED_POISON] > 3 and seen["poison"]["dead letter: rejected"] > 3
    assert seen["transactions"]["commits"] > 100
    assert seen["competing"]["releases"] > 30
    assert seen["producers"]["fenced"] > 3 and seen["producers"]["duplicates answered"] > 10
    assert seen["crash"]["crashes"] >= CRASH_POSITIONS and seen["crash"]["torn writes kept"] > 5
    assert seen["crash"]["compactions"] > 3
    assert seen["storage"]["failed writes"] > 50
    forward = seen["forward"]
    assert forward["forwarded"] > 200 and forward["link breaks"] > 20 and forward["transient refusals"] > 5
    assert forward["crashes"] > 10 and forward["floors checked"] > 100
    assert forward["dead letter: queue-not-found"] > 3 and forward["dead letter: message-too-large"] > 3
    assert forward["dead letter: expired"] > 3


# ---- the harness catches what it claims to catch ----

def test_harness_catches_a_poison_rule_one_delivery_early(monkeypatch) -> None:
    rule = engine.after_failure
    monkeypatch.setattr(engine, "after_failure", lambda settings, failures: rule(settings, failures + 1))
    with pytest.raises(SimulationFailure):
        for seed in range(20):
            run_scenario(make_scenario("poison", seed))


def test_harness_catches_a_lost_message(monkeypatch) -> None:
    real = engine.QueueCore._arrive
    lost = []

    def losing(self, queue, entry, now, front=False):
        if entry.body.startswith(b"m3.") and not lost:
            lost.append(entry)
            return                      # acknowledged, never queued
        real(self, queue, entry, now, front)

    real_run = engine.QueueCore._arrive_run

    def losing_run(self, queue, entries, now, reserved):      # a written batch's way in
        for n, entry in enumerate(entries):
            if entry.body.startswith(b"m3.") and not lost:
                lost.append(entry)
                if reserved:
                    queue.reserved -= 1
                entries = entries[:n] + entries[n + 1:]        # acknowledged, never queued
                break
        real_run(self, queue, entries, now, reserved)

    monkeypatch.setattr(engine.QueueCore, "_arrive", losing)
    monkeypatch.setattr(engine.QueueCore, "_arrive_run", losing_run)
    with pytest.raises(SimulationFailure, match="counts .* in the core|lost"):
        run_scenario(clean(1))
    assert lost


def test_harness_failure_names_the_replay_command(monkeypatch) -> None:
    monkeypatch.setattr(engine.QueueCore, "lowest_sequence", lambda self, name: 10**6)
    with pytest.raises(SimulationFailure) as info:
        for seed in range(20):
            run_scenario(make_scenario("forward", seed))
    assert "floor" in str(info.value)
    assert "TETHER_QSIM_FAMILY=forward TETHER_QSIM_SEED=" in str(info.value)
    assert "-k replay" in str(info.value)


# ---- replay and soak ----

@pytest.mark.skipif("TETHER_QSIM_SEED" not in os.environ,
                    reason="set TETHER_QSIM_SEED (and TETHER_QSIM_FAMILY) to replay a run")
def test_replay() -> None:
    """Replays one seed with its full trace printed (run with -s to see it on success)."""
    seed = int(os.environ["TETHER_QSIM_SEED"])
    families = [os.environ["TETHER_QSIM_FAMILY"]] if "TETHER_QSIM_FAMILY" in os.environ else list(FAMILIES)
    for family in families:
        scenario = make_scenario(family, seed)
        print(scenario.describe())
        sim = Simulation(scenario, trace=True)
        try:
            sim.run()
        finally:
            for item in sim.trace:
                print(" ".join(str(x) for x in item))
            print(sim.summary())


@pytest.mark.soak
@pytest.mark.parametrize("family", FAMILIES)
def test_soak(family: str) -> None:
    count = max(1, SOAK_SEEDS // len(FAMILIES))
    _run_seeds(family, range(SOAK_FIRST, SOAK_FIRST + count))


# ---- the groups family: groups, priority and scheduled delivery (tests/qsim/groups.py) ----

GROUP_SEEDS = 240


@pytest.mark.parametrize("start", range(0, GROUP_SEEDS, 60))
def test_group_seeds(start: int) -> None:
    """Exclusivity and order of groups, priority and delivery time of plain messages,
    nothing lost or completed twice: across writes that fail, crashes and vanishing holders."""
    from qsim.groups import GroupSimulation, GroupSimulationFailure

    failures = []
    for seed in range(start, start + 60):
        try:
            GroupSimulation(seed).run()
        except GroupSimulationFailure as exc:
            failures.append(str(exc))
    assert not failures, f"{len(failures)} groups seeds failed; first: {failures[0]}"


def test_group_runs_are_deterministic_and_exercise_what_they_claim() -> None:
    from qsim.groups import GroupSimulation

    totals: collections.Counter = collections.Counter()
    for seed in range(12):
        one, two = GroupSimulation(seed).run(), GroupSimulation(seed).run()
        assert (one.stats, one.completed, one.now) == (two.stats, two.completed, two.now), seed
        totals.update(one.stats)
    for what, count in totals.items():
        assert count > 0, f"12 groups seeds never had {what}: {dict(totals)}"


def test_group_simulation_catches_a_group_that_does_not_wait_for_retry(monkeypatch) -> None:
    from tether.queue.core.groups import Group

    from qsim.groups import GroupSimulation, GroupSimulationFailure

    monkeypatch.setattr(Group, "blocked", property(lambda self: False))
    monkeypatch.setattr(Group, "available", property(
        lambda self: self.holder is None and self.depth > 0 and not self.inflight))
    with pytest.raises(GroupSimulationFailure, match="order"):
        for seed in range(200):
            GroupSimulation(seed).run()
