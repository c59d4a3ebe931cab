"""rtt: native vs reference on the work a busy server gives it.

- 100k RTT samples through RttEstimator.update_many (one batch).
- A DeadlineHeap of 10k session timers re-armed 1M times: each batch of 1000 re-sets is
  followed by peek() and pop_due(now), as an asyncio adapter does when its one timer fires.

Run: PYTHONPATH=src python -m pytest benchmarks/bench_rtt.py --benchmark-enable -q
The speed-up is reference time / native time within a group (same run).
"""
from __future__ import annotations

import random

import pytest

from conftest import twins

SAMPLES = 100_000
TIMERS = 10_000
RESETS = 1_000_000
RESETS_PER_TICK = 1_000


def module(impl: str):
    return twins("rtt")[impl == "reference"]


@pytest.fixture(scope="module")
def rtt_samples() -> list[float]:
    rng = random.Random(6298)
    # A 50 ms path with jitter and the odd slow sample.
    return [rng.gauss(0.05, 0.01) if rng.random() > 0.01 else rng.uniform(0.2, 1.0)
            for _ in range(SAMPLES)]


@pytest.fixture(scope="module")
def timer_ticks() -> tuple[list[float], list[tuple[list[int], list[float], float]]]:
    """Initial deadlines of every timer, then per tick: keys re-set, their deadlines, now."""
    rng = random.Random(1)
    initial = [rng.uniform(0.2, 1.0) for _ in range(TIMERS)]
    ticks = []
    now = 0.0
    for _ in range(RESETS // RESETS_PER_TICK):
        now += 0.05  # a key is re-set every ~0.5 s on average, so some timers fire
        keys = [rng.randrange(TIMERS) for _ in range(RESETS_PER_TICK)]
        deadlines = [now + rng.uniform(0.2, 1.0) for _ in range(RESETS_PER_TICK)]
        ticks.append((keys, deadlines, now))
    return initial, ticks


@pytest.mark.benchmark(group="rtt: update_many 100k samples")
def test_update_many(benchmark, impl, rtt_samples):
    mod = module(impl)

    def run():
        estimator = mod.RttEstimator()
        estimator.update_many(rtt_samples)
        return estimator

    estimator = benchmark(run)
    assert estimator.samples == SAMPLES


@pytest.mark.benchmark(group="rtt: DeadlineHeap 10k timers, 1M re-sets, peek/pop_due")
def test_deadline_heap(benchmark, impl, timer_ticks):
    mod = module(impl)
    initial, ticks = timer_ticks

    def setup():
        heap = mod.DeadlineHeap()
        for key, deadline in enumerate(initial):
            heap.set(key, deadline)
        return (heap,), {}

    def run(heap):
        set_deadline = heap.set
        popped = 0
        for keys, deadlines, now in ticks:
            for key, deadline in zip(keys, deadlines):
                set_deadline(key, deadline)
            heap.peek()
            popped += len(heap.pop_due(now))
        return popped

    popped = benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    assert 0 < popped < RESETS
