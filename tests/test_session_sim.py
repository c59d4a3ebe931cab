"""Deterministic network simulation of reliable sessions (issue 3; docs/architecture.md,
"How it is tested").

Every scenario family (tests/sim/scenarios.py) runs hundreds of seeds on tether._native;
a subset also runs on the pure-Python twins and must give the identical trace. Invariants
are checked after every step (tests/sim/harness.py): exactly once, in order when ordered,
what the sender saw acknowledged was delivered, every fault the expected one, windows never
exceeded, graceful close ends both sides with SessionEnded(None).

A failing seed prints its replay command, e.g.
    TETHER_SIM_FAMILY=lossy TETHER_SIM_SEED=1234 python -m pytest tests/test_session_sim.py -k replay -s
Thousands of seeds: python -m pytest tests/test_session_sim.py -m soak -s (TETHER_SIM_SOAK=N
per family). The soak draws a fresh range of seeds on every run, so it keeps meeting new
schedules; the range is printed, and TETHER_SIM_SOAK_FIRST=N runs the one starting at N again.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import random

import pytest

from tether._reference.receive_window import ReceiveWindow as ReferenceReceiveWindow
from tether.errors import (
    InactivityTimeout,
    ProtocolError,
    RetryLimitExceeded,
    SequenceTerminated,
    UnknownSequence,
)
from tether.session.sansio import core as cores
from tether.session.sansio.core import Core

from sim import FAMILIES, SimulationFailure, make_scenario, run_scenario
from sim.harness import Simulation
from sim.network import Conditions
from sim.scenarios import basic

# Seeds per family in CI (native): 1650 in about 20 s on a quiet 2-core machine.
CI_SEEDS = {
    "clean": 250,
    "lossy": 300,
    "tcp_cuts": 200,
    "multi": 150,
    "attacked": 100,
    "spoofed": 150,
    "partition": 150,
    "hostile": 150,
    "restart": 150,
    "abort": 200,
}
BLOCK = 25
DIFFERENTIAL_SEEDS = 12
SOAK_SEEDS = int(os.environ.get("TETHER_SIM_SOAK", "2000"))
# Drawn once per run (all families share it) above the seeds CI runs; printed by test_soak.
SOAK_FIRST = int(os.environ.get("TETHER_SIM_SOAK_FIRST", "0")) or random.SystemRandom().randrange(
    1_000_000, 2**40)
# Seeds that once failed, each run on both cores in CI. What each one found:
REGRESSION_SEEDS = [
    # A UDP client changed address while idle (its sequence closed and acknowledged) and was
    # heard again only by its keepalive 30 s later: the server had spent its retries on
    # the dead address and resent with a minute's backoff on the new one, so two more
    # losses exhausted the retry limit. Fixed: a validated move resends everything
    # unacknowledged at once with its retries started over (SessionEngine.peer_moved).
    ("lossy", 9001019),
    # The server followed the source address of any packet, so a late packet from the old
    # address moved the session back to a path nobody listened on (fixed by path validation).
    ("lossy", 9001882),
    ("attacked", 9008580),
    # Soak: the server's CreateSequenceResponse was lost and the client, still connecting,
    # moved; its repeated CreateSequence only earned the new address a challenge, and after
    # the move nothing answered it, so the client went on connecting (backing off) until the
    # server's inactivity timeout. Fixed: a move repeats the response to a client not yet
    # known to have it.
    ("lossy", 883139027966),
    # Soak: a corrupted ack (hostile path) claimed a buffer far beyond the server's window of
    # one message; the client, taking the largest bound seen, overran that window, every
    # refused message backed off its retransmissions towards the 60 s cap, and the session
    # crawled a message per minute to the time limit. Fixed: an ack opening more than the
    # peer's window (its handshake's) is a ProtocolError.
    ("hostile", 883139024394),
    # Soak: a tail probe (acks stopped; one packet of new data beyond the congestion window)
    # took as many messages as the pending average said fit a packet, and with small and
    # fragmented messages mixed that was more than a packet beyond the window. Fixed: the
    # probe takes the messages that fit one packet.
    ("spoofed", 32127868247),
    # Soak: an idle client moved; each of its keepalives (7.5 s apart) earned a PathChallenge
    # from the server's Demux, and each PathResponse was lost. The client took the challenge
    # for an answer and waited a whole keepalive interval again, and the server, which never
    # validated the new address, hit its inactivity timeout. Fixed: a PathChallenge answers
    # no keepalive, so an unanswered one is repeated after an RTO (each earning a challenge).
    # Found while the harness ended the spoofer early when an abort was drawn before the
    # client started; with that fixed this seed no longer reaches the bug (the engine test
    # test_a_path_challenge_does_not_answer_a_keepalive does), but stays as a scenario.
    ("spoofed", 580151042336),
]


def _core(name: str) -> Core:
    if name == "native":
        return cores.native()
    if name == "reference":
        return cores.reference()
    raise ValueError(f"TETHER_SIM_CORE must be native or reference, not {name!r}")


def _run_seeds(family: str, seeds, core_name: str = "native") -> None:
    """Run every seed; report all that failed, the first one in full."""
    core = _core(core_name)
    failures: list[tuple[int, SimulationFailure]] = []
    for seed in seeds:
        try:
            run_scenario(make_scenario(family, seed), core, core_name=core_name)
        except SimulationFailure as exc:
            failures.append((seed, exc))
    if failures:
        seeds_failed = ", ".join(str(s) for s, _ in failures)
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


@pytest.mark.parametrize("core_name", ["native", "reference"])
@pytest.mark.parametrize(("family", "seed"), REGRESSION_SEEDS,
                         ids=[f"{f}-{s}" for f, s in REGRESSION_SEEDS])
def test_regression_seed(family: str, seed: int, core_name: str) -> None:
    _run_seeds(family, [seed], core_name)


@pytest.mark.parametrize("family", FAMILIES)
def test_native_and_reference_give_identical_traces(family: str) -> None:
    """The same seed on the compiled core and on the pure-Python twins: the same packets
    (length and CRC of every body), events, timers and outcomes, step for step."""
    for seed in range(DIFFERENTIAL_SEEDS):
        runs = []
        for name in ("native", "reference"):
            sim = Simulation(make_scenario(family, seed), _core(name), core_name=name, trace=True)
            try:
                sim.run()
                outcome = None
            except SimulationFailure as exc:
                outcome = str(exc).splitlines()[0]
            trace = list(sim.trace)
            if family == "hostile":
                # A fault's reason text (it rides in the Fault frame) names the codec's own
                # wording for a malformed frame; compare everything but packet bytes there.
                trace = [item for item in trace if item[1] != "tx"]
            runs.append((trace, outcome, sim.summary()))
        (native, native_outcome, native_summary), (ref, ref_outcome, ref_summary) = runs
        if native != ref:
            i = next((i for i, (a, b) in enumerate(zip(native, ref)) if a != b), min(len(native), len(ref)))
            pytest.fail(f"{family} seed {seed}: traces diverge at step {i} of {len(native)}/{len(ref)}:\n"
                        f"  native:    {native[i] if i < len(native) else None}\n"
                        f"  reference: {ref[i] if i < len(ref) else None}\n"
                        f"  replay each with TETHER_SIM_FAMILY={family} TETHER_SIM_SEED={seed} "
                        f"TETHER_SIM_CORE=native|reference python -m pytest tests/test_session_sim.py -k replay -s")
        assert native_outcome == ref_outcome
        assert native_summary == ref_summary
        assert native_outcome is None, native_outcome


def test_same_seed_same_trace() -> None:
    """Determinism: nothing depends on hashing, identity or the wall clock."""
    traces = []
    for _ in range(2):
        sim = Simulation(make_scenario("lossy", 7), cores.native(), trace=True).run()
        traces.append(list(sim.trace))
    assert traces[0] == traces[1]
    assert len(traces[0]) > 100


def test_families_exercise_what_they_claim() -> None:
    """Guards against a simulation that silently stops testing anything: across a few seeds
    each family really loses, duplicates, fragments, cuts and faults what it says it does."""
    seen: dict[str, collections.Counter] = {}
    for family in FAMILIES:
        counts = collections.Counter()
        for seed in range(30):
            sim = run_scenario(make_scenario(family, seed), cores.native())
            for ep in sim.clients + sim.servers:
                if ep.engine is None:
                    continue
                stats = ep.engine.stats
                counts["delivered"] += ep.app.received
                counts["resent"] += stats["resent"] > 0
                counts["duplicates"] += stats["duplicates"] > 0
                counts["fragmented"] += ep.engine._reassembler is not None
                counts["unordered"] += not ep.engine.settings.ordered
                error = ep.app.error
                counts[type(error).__name__ if error else "graceful"] += 1
            counts["cuts"] += sum(p.cuts for p in sim.paths)
            counts["address changes"] += sum(p.down.stats.misaddressed > 0 for p in sim.paths)
            counts["dropped by demux"] += sim.demux.dropped_packets
            counts["attacker replies"] += sim.attacker_replies
            counts["moves"] += sim.moves
            counts["retries"] += sim.demux.retries_sent
            counts["off path"] += sim.demux.off_path_packets
            counts["spoofed"] += sim.spoofed_sent
            counts["replays"] += sum(1 for body, _ in sim.captured if body[1] == 1)
        seen[family] = counts
    for family, counts in seen.items():
        assert counts["delivered"] > 1000, (family, counts)
    assert seen["clean"]["graceful"] == 60
    assert seen["lossy"]["resent"] > 20 and seen["lossy"]["duplicates"] > 20
    assert seen["lossy"]["fragmented"] > 3 and seen["lossy"]["unordered"] > 3
    assert seen["lossy"]["address changes"] > 3 and seen["lossy"]["moves"] > 3
    assert seen["clean"]["retries"] > 10         # every UDP session starts with a Retry
    assert seen["tcp_cuts"]["cuts"] > 30
    assert seen["attacked"]["dropped by demux"] > 100 and seen["attacked"]["attacker replies"] > 100
    assert seen["spoofed"]["spoofed"] > 3000 and seen["spoofed"]["off path"] > 1000
    assert seen["spoofed"]["moves"] > 10 and seen["spoofed"]["replays"] > 30
    assert seen["spoofed"][SequenceTerminated.__name__] > 3     # aborted: ids never reused
    assert seen["partition"][RetryLimitExceeded.__name__] > 0
    assert seen["partition"][InactivityTimeout.__name__] > 0
    assert seen["hostile"][ProtocolError.__name__] > 0
    assert seen["restart"][UnknownSequence.__name__] > 5 and seen["restart"]["cuts"] > 3
    assert seen["abort"][SequenceTerminated.__name__] > 5


# ---- the harness catches what it claims to catch ----

class _DuplicatingWindow(ReferenceReceiveWindow):
    """Delivers the first message of every run twice."""

    def accept(self, first_number, payloads):
        out = super().accept(first_number, payloads)
        return out + out[:1]


class _LosingWindow(ReferenceReceiveWindow):
    """Receives (and so acknowledges) every message but never delivers message 10."""

    def accept(self, first_number, payloads):
        out = super().accept(first_number, payloads)
        drop = 10 - first_number
        if 0 <= drop < len(payloads) and len(out) == len(payloads):
            out = out[:drop] + out[drop + 1:]
            self.release(1)
        return out


def _broken_core(window: type) -> Core:
    ref = cores.reference()
    return Core(SendWindow=ref.SendWindow, ReceiveWindow=window, RttEstimator=ref.RttEstimator,
                DeadlineHeap=ref.DeadlineHeap, codec=ref.codec)


@pytest.mark.parametrize("ordered", [True, False])
def test_harness_catches_a_duplicate_delivery(ordered: bool) -> None:
    scenario = basic(client={"ordered": ordered}, server={"ordered": ordered})
    with pytest.raises(SimulationFailure, match="twice"):
        run_scenario(scenario, _broken_core(_DuplicatingWindow), core_name="broken")


def test_harness_catches_an_acknowledged_message_never_delivered() -> None:
    scenario = basic(client={"ordered": True, "max_transfer_window": 1}, server_total=0)
    with pytest.raises(SimulationFailure, match="out of order|acknowledged"):
        run_scenario(scenario, _broken_core(_LosingWindow), core_name="broken")


def test_harness_failure_names_the_replay_command() -> None:
    scenario = basic(seed=4321, client={"ordered": True})
    with pytest.raises(SimulationFailure) as info:
        run_scenario(scenario, _broken_core(_DuplicatingWindow), core_name="broken")
    assert "TETHER_SIM_SEED=4321" in str(info.value)
    assert "-k replay" in str(info.value)


def test_basic_scenarios_pass_on_both_transports() -> None:
    for transport in ("udp", "tcp"):
        for core in (cores.native(), cores.reference()):
            sim = run_scenario(basic(transport=transport,
                                     conditions=Conditions(delay=0.002, jitter=0.001)), core)
            assert all(ep.app.error is None and ep.app.ended for ep in sim.clients + sim.servers)
            assert sim.clients[0].app.received == 50 and sim.servers[0].app.received == 50


# ---- congestion control ----

def _bulk(cond: Conditions, total: int, *, size: int = 1000, client_window: int = 256,
          server_window: int = 128):
    """A client sending `total` messages of up to `size` bytes as fast as it may, the server
    reading eagerly; both close once done."""
    scenario = basic(client={"max_transfer_window": client_window},
                     server={"max_transfer_window": server_window},
                     client_total=total, server_total=0, conditions=cond)
    spec = scenario.clients[0]
    plan = dataclasses.replace(spec.plan, small_max=size, batch_max=64, gap=0.0)
    server_plan = dataclasses.replace(spec.server_plan, close_role="closer")
    return dataclasses.replace(scenario, clients=(dataclasses.replace(
        spec, plan=plan, server_plan=server_plan),))


def _run_bulk(scenario, core_name: str):
    """Run it recording the client's controller after every step: (time, cwnd, bandwidth
    estimate, state), and when the server had received everything."""
    sim = Simulation(scenario, _core(core_name), core_name=core_name)
    trace: list[tuple[float, float, float, str]] = []
    done: list[float] = []
    pump = sim._pump
    total = scenario.clients[0].plan.total

    def recording_pump(ep):
        pump(ep)
        cc = sim.clients[0].engine._cc if sim.clients else None
        if cc is not None and (not trace or trace[-1][1:] != (cc.cwnd, cc.bandwidth, cc.state)):
            trace.append((sim.clock.now, cc.cwnd, cc.bandwidth, cc.state))
        if not done and sim.servers and sim.servers[0].app.received >= total:
            done.append(sim.clock.now)

    sim._pump = recording_pump
    sim.run()
    assert sim.clients[0].app.error is None and sim.servers[0].app.received == total
    return sim, trace, done[0]


@pytest.mark.parametrize("core_name", ["native", "reference"])
def test_congestion_control_converges_to_a_bottleneck_with_a_finite_queue(core_name) -> None:
    """A bulk transfer through a 1 MB/s bottleneck with a short drop-tail queue (10 ms, about
    one bandwidth-delay product): the queue overflows while the sender looks for the
    bandwidth, then the bandwidth estimate settles at the bottleneck, the transfer runs near
    its rate, and the queue drops stay a small share of what was sent. The window never
    exceeds what both windows let be in flight (the harness also checks, every step, that it
    stays within [2 packets, that] and that no new message goes out at or over it, a tail
    probe's one packet aside)."""
    cond = Conditions(delay=0.005, bandwidth=1e6, queue_limit=0.01)
    sim, trace, done = _run_bulk(_bulk(cond, 4000), core_name)
    up = sim.paths[0].up.stats
    client = sim.clients[0]
    assert up.queue_drops > 0                           # the queue did overflow
    assert up.queue_drops <= 0.03 * up.sent             # ... a bounded share of the packets
    settled = [bw for t, _, bw, state in trace if state == "probe_bandwidth" and t > done / 2]
    assert settled and min(settled) >= 0.8e6 and max(settled) <= 1.3e6
    # ~500 bytes a message on average: 4000 messages are ~2 MB, ~2 s at 1 MB/s
    payload = 4000 * (1000 + 5) / 2
    assert payload / done >= 0.8e6
    most = min(256, 128) * sim.scenario.max_packet_size
    assert max(cwnd for _, cwnd, _, _ in trace) <= most
    assert client.cc_reductions >= 2                    # loss periods were seen and survived


@pytest.mark.parametrize("core_name", ["native", "reference"])
def test_congestion_control_keeps_the_rate_under_random_loss(core_name) -> None:
    """5% random loss both ways on a path whose 1 MB/s bottleneck has room (a 100 ms queue):
    losses do not shrink the window or the bandwidth estimate, so the transfer still runs
    near the bottleneck's rate (a controller that cut the window once per loss period would
    hold a few packets here: ~10 ms RTT, ~7 packets of window, ~0.7 MB/s at best), and the
    window stays above the bandwidth-delay product."""
    lossy = Conditions(delay=0.005, bandwidth=1e6, queue_limit=0.1, loss=0.05)
    sim, trace, done = _run_bulk(_bulk(lossy, 4000), core_name)
    assert sim.paths[0].up.stats.lost > 100 and sim.clients[0].engine.stats["resent"] > 100
    payload = 4000 * (1000 + 5) / 2
    assert payload / done >= 0.8e6 * 0.95
    late = [(cwnd, bw) for t, cwnd, bw, state in trace if state == "probe_bandwidth" and t > done / 2]
    assert late
    assert min(bw for _, bw in late) >= 0.8e6
    assert min(cwnd for cwnd, _ in late) >= 1e6 * 0.010   # at least one BDP (1 MB/s x 10 ms)


def test_full_acks_under_loss_with_a_large_window(monkeypatch) -> None:
    """A 50 MB/s path of 10 ms each way at 5% loss: the window holds hundreds of messages, so
    acks reach their 32-range cap (they then carry the lowest ranges) while resends and new
    messages mix; the transfer completes at a useful rate with no fault (the harness fails
    on RetryLimitExceeded under these conditions). (On the veth bench, acks that kept the
    newest ranges instead left the ranges around a resent message out for good and ended a
    1 KiB row in RetryLimitExceeded; this schedule does not reproduce that.) Native core
    only: the twin's windows scan every held message per call, too slow for 4096."""
    from tether.session.sansio import engine as engine_module
    most = [0]
    on_ack = engine_module.SessionEngine._on_ack

    def counting(self, frame, now):
        most[0] = max(most[0], len(frame[2]))
        return on_ack(self, frame, now)

    monkeypatch.setitem(engine_module._HANDLERS, engine_module.F.ACK, counting)
    cond = Conditions(delay=0.01, loss=0.05, bandwidth=50e6, queue_limit=0.005)
    sim, _, done = _run_bulk(_bulk(cond, 12000, client_window=4096, server_window=4096), "native")
    assert most[0] == 32                    # acks were full
    assert sim.clients[0].engine.stats["resent"] > 300
    assert 12000 * 500 / done > 5e6         # and the transfer kept going (~6 MB in < 1.2 s)


# ---- replay and soak ----

@pytest.mark.skipif("TETHER_SIM_SEED" not in os.environ,
                    reason="set TETHER_SIM_SEED (and TETHER_SIM_FAMILY, TETHER_SIM_CORE) to replay a run")
def test_replay() -> None:
    """Replays one seed with a full trace printed (run with -s to see it on success)."""
    seed = int(os.environ["TETHER_SIM_SEED"])
    families = [os.environ["TETHER_SIM_FAMILY"]] if "TETHER_SIM_FAMILY" in os.environ else list(FAMILIES)
    core_name = os.environ.get("TETHER_SIM_CORE", "native")
    for family in families:
        scenario = make_scenario(family, seed)
        print(scenario.describe())
        sim = Simulation(scenario, _core(core_name), core_name=core_name, trace=True)
        try:
            sim.run()
        finally:
            for item in sim.trace:
                print(" ".join(str(x) for x in item))
            print(sim.summary())


@pytest.mark.soak
@pytest.mark.timeout(0)     # as long as TETHER_SIM_SOAK asks; bound the whole run from outside
@pytest.mark.parametrize("core_name", ["native", "reference"])
@pytest.mark.parametrize("family", FAMILIES)
def test_soak(family: str, core_name: str) -> None:
    count = SOAK_SEEDS if core_name == "native" else max(1, SOAK_SEEDS // 10)
    print(f"\nsoak {family} on {core_name}: seeds {SOAK_FIRST}..{SOAK_FIRST + count - 1} "
          f"(TETHER_SIM_SOAK_FIRST={SOAK_FIRST} TETHER_SIM_SOAK={SOAK_SEEDS} to run them again)")
    _run_seeds(family, range(SOAK_FIRST, SOAK_FIRST + count), core_name)
