"""The queue simulation on the PostgreSQL store: several queue managers on one database of
the run's private cluster, on a simulated clock (tests/qsim/shared.py, tests/qsim/sim_loop.py).

Every statement runs alone, in an order that depends only on the seed, so a seed replays
the same schedule (checked: one seed twice, the same trace). A failing seed names itself:
    TETHER_PGSIM_SEED=N python -m pytest tests/test_queue_postgres_sim.py -k replay -s
Many more seeds: TETHER_PGSIM_SOAK=300 python -m pytest tests/test_queue_postgres_sim.py -m soak
(seeds from TETHER_PGSIM_SOAK_FIRST, default 1000, on).
"""
from __future__ import annotations

import os

import pytest

from qsim.shared import SharedRun
from qsim.sim_loop import run

CI_SEEDS = 4
SOAK_SEEDS = int(os.environ.get("TETHER_PGSIM_SOAK", "300"))
SOAK_FIRST = int(os.environ.get("TETHER_PGSIM_SOAK_FIRST", "1000"))
SOAK_BLOCK = 10


def _url(cluster) -> str:
    return cluster.create_database() + "?sslmode=disable"


def _run(seed: int, cluster, size: int = 1) -> tuple[SharedRun, object]:
    url = _url(cluster)
    shared = SharedRun(seed, url, size)
    _, loop = run(shared.run, url)
    if shared.errors:
        raise AssertionError("\n".join(shared.errors[:20]) + f"\nsettings: {shared.settings}, crash: "
                             f"{shared.crashed}\n  replay: TETHER_PGSIM_SEED={seed} python -m pytest "
                             f"tests/test_queue_postgres_sim.py -k replay -s")
    return shared, loop


def test_seeds(postgres_cluster):
    """The CI seeds; between them they crash a manager, bring its locks back, fail
    deliveries by every path, hold groups, and run on simulated time."""
    kinds: set = set()
    crashes = returned = 0
    simulated = 0.0
    for seed in range(CI_SEEDS):
        shared, loop = _run(seed, postgres_cluster)
        simulated += loop.time()
        kinds |= {e[1] for e in shared.trace} | {e[3] for e in shared.trace if e[1] == "deliver"}
        if shared.crashed is not None:
            crashes += 1
            returned += sum(1 for e in shared.trace if e[1] == "deliver" and e[0] >= shared.crashed[1]
                            and e[4] in shared.crashed[2])
    assert {"deliver", "completed", "hold", "release", "crash", "receive", "tx", "group"} <= kinds, kinds
    assert crashes and returned, (crashes, returned)
    assert simulated > 2 * CI_SEEDS, simulated          # (seconds of simulated time per seed)


def test_same_seed_same_schedule(postgres_cluster):
    """Two runs of a seed on fresh databases: the same events at the same simulated times."""
    first, _ = _run(7, postgres_cluster)
    second, _ = _run(7, postgres_cluster)
    assert first.crashed is not None, "seed 7 should crash a manager (pick another seed)"
    assert first.trace == second.trace, next((a, b) for a, b in zip(first.trace, second.trace) if a != b)


@pytest.mark.skipif("TETHER_PGSIM_SEED" not in os.environ, reason="set TETHER_PGSIM_SEED to replay one seed")
def test_replay(postgres_cluster):
    shared, loop = _run(int(os.environ["TETHER_PGSIM_SEED"]), postgres_cluster)
    print(f"\n{len(shared.trace)} events, {loop.time():.3f} simulated s, {loop.callbacks} callbacks, "
          f"{loop.round_trips} round trips, {loop.barriers} notify barriers, {loop.lock_waits} lock waits, "
          f"digest {shared.digest()}")


@pytest.mark.soak
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("start", range(SOAK_FIRST, SOAK_FIRST + SOAK_SEEDS, SOAK_BLOCK))
def test_soak(start, postgres_cluster):
    failures = []
    for seed in range(start, min(start + SOAK_BLOCK, SOAK_FIRST + SOAK_SEEDS)):
        try:
            _run(seed, postgres_cluster, size=seed % 3 + 1)
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, "\n\n".join(failures)
