"""rangeset: native vs reference on the numbers a receiver acknowledges.

- 1M message numbers with 1% lost (gaps), ascending, in one add_many: the realistic
  workload; the same numbers in batches of 64 (one received packet each) into one set.
- The same numbers with a few neighbours swapped (re-ordering on the path), one add_many.
- 100k numbers added one at a time with add(), then 100k contains() probes.

Run: PYTHONPATH=src python -m pytest benchmarks/bench_rangeset.py --benchmark-enable -q
The speed-up is reference time / native time within a group (same run).
"""
from __future__ import annotations

import random

import pytest

from conftest import twins

NUMBERS = 1_000_000
LOSS = 0.01
BATCH = 64
SINGLES = 100_000


def module(impl: str):
    return twins("rangeset")[impl == "reference"]


def received(count: int, seed: int) -> list[int]:
    """`count` ascending message numbers from 1 with about 1% never received."""
    rng = random.Random(seed)
    numbers: list[int] = []
    n = 0
    while len(numbers) < count:
        n += 1
        if rng.random() >= LOSS:
            numbers.append(n)
    return numbers


@pytest.fixture(scope="module")
def ascending() -> list[int]:
    return received(NUMBERS, seed=1)


@pytest.fixture(scope="module")
def reordered(ascending) -> list[int]:
    numbers = list(ascending)
    rng = random.Random(2)
    for _ in range(len(numbers) // 1000):  # 0.1% of neighbours swapped
        i = rng.randrange(len(numbers) - 1)
        numbers[i], numbers[i + 1] = numbers[i + 1], numbers[i]
    return numbers


def rounds(impl: str) -> int:
    return 3 if impl == "reference" else 20


def test_add_many_1m_gaps(benchmark, impl, ascending):
    benchmark.group = "rangeset add_many 1M numbers, 1% gaps"
    RangeSet = module(impl).RangeSet
    added = benchmark.pedantic(lambda: RangeSet().add_many(ascending), rounds=rounds(impl), iterations=1)
    assert added == NUMBERS


def test_add_many_1m_gaps_batches_of_64(benchmark, impl, ascending):
    benchmark.group = "rangeset add_many 1M numbers, 1% gaps, batches of 64"
    RangeSet = module(impl).RangeSet
    batches = [ascending[i:i + BATCH] for i in range(0, len(ascending), BATCH)]

    def run() -> int:
        rs = RangeSet()
        add_many = rs.add_many
        for batch in batches:
            add_many(batch)
        return rs.count

    assert benchmark.pedantic(run, rounds=rounds(impl), iterations=1) == NUMBERS


def test_add_many_1m_gaps_reordered(benchmark, impl, reordered):
    benchmark.group = "rangeset add_many 1M numbers, 1% gaps, 0.1% re-ordered"
    RangeSet = module(impl).RangeSet
    added = benchmark.pedantic(lambda: RangeSet().add_many(reordered), rounds=rounds(impl), iterations=1)
    assert added == NUMBERS


def test_add_one_at_a_time_100k(benchmark, impl, ascending):
    benchmark.group = "rangeset add() x 100k, 1% gaps"
    RangeSet = module(impl).RangeSet
    numbers = ascending[:SINGLES]

    def run() -> int:
        rs = RangeSet()
        add = rs.add
        for n in numbers:
            add(n)
        return rs.count

    assert benchmark.pedantic(run, rounds=rounds(impl), iterations=1) == SINGLES


def test_contains_100k(benchmark, impl, ascending):
    benchmark.group = "rangeset contains() x 100k over ~1000 ranges"
    RangeSet = module(impl).RangeSet
    rs = RangeSet()
    rs.add_many(ascending[:SINGLES])
    probes = list(range(1, ascending[SINGLES - 1] + 1))[:SINGLES]

    def run() -> int:
        contains = rs.contains
        return sum(1 for n in probes if contains(n))

    assert benchmark.pedantic(run, rounds=rounds(impl), iterations=1) > 0.98 * SINGLES
