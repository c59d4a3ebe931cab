"""Journal group-commit throughput beside the disk's own write+fdatasync limit.

64 concurrent tasks append 64-byte records with fsync="always". In the same run, the
baseline (`tether.bench.fsync_baseline`) writes the same bytes per os.write with the same
average batch size the journal formed, one os.fdatasync each. journal / baseline is the
journal's efficiency on this disk.

Run: PYTHONPATH=src python -m pytest benchmarks/bench_journal.py --benchmark-enable -q -s
"""
from __future__ import annotations

import asyncio
import time

import pytest
import uvloop

from tether.bench.fsync_baseline import fdatasync_baseline
from tether.queue.store.journal import Journal

APPENDERS = 64
RECORD_SIZE = 64
APPENDS_PER_TASK = 400


async def _append_load(directory: str) -> tuple[float, float]:
    """(records/s, average batch size) of APPENDERS tasks appending in a closed loop."""
    journal = await Journal.open(directory, fsync="always")
    record = b"\x5a" * RECORD_SIZE

    async def appender() -> None:
        for _ in range(APPENDS_PER_TASK):
            await journal.append(record)

    try:
        start = time.perf_counter()
        await asyncio.gather(*(appender() for _ in range(APPENDERS)))
        elapsed = time.perf_counter() - start
        return APPENDERS * APPENDS_PER_TASK / elapsed, journal.record_count / journal.batch_count
    finally:
        await journal.close()


LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
ROUNDS = 5


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_journal_append_vs_fdatasync_baseline(benchmark, tmp_path, loop_name):
    """Each journal round is paired with a baseline run right after it (same batch size,
    same duration), outside the timed part, so the shared disk's mood is the same for both."""
    journal_runs: list[tuple[float, float, float]] = []   # (records/s, avg batch, seconds)
    baseline_runs: list[float] = []
    counter = iter(range(1_000_000))

    def pair_baseline() -> None:
        if len(baseline_runs) < len(journal_runs):
            _, batch, seconds = journal_runs[-1]
            baseline_runs.append(fdatasync_baseline(tmp_path, RECORD_SIZE, batch, max(seconds, 0.2)))

    def one_run() -> None:
        directory = tmp_path / f"journal-{next(counter)}"
        with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
            start = time.perf_counter()
            rate, batch = runner.run(_append_load(str(directory)))
            journal_runs.append((rate, batch, time.perf_counter() - start))

    benchmark.pedantic(one_run, setup=pair_baseline, rounds=ROUNDS, iterations=1)
    pair_baseline()
    ratios = [j[0] / b for j, b in zip(journal_runs, baseline_runs)]
    journal_rate = _median([j[0] for j in journal_runs])
    batch = _median([j[1] for j in journal_runs])
    baseline_rate = _median(baseline_runs)
    ratio = _median(ratios)
    benchmark.extra_info.update(journal_msgs_per_s=round(journal_rate), average_batch=round(batch, 1),
                                baseline_msgs_per_s=round(baseline_rate), ratio=round(ratio, 3),
                                ratios=[round(r, 3) for r in ratios])
    print(f"\n[{loop_name}] journal {journal_rate:,.0f} msgs/s (avg batch {batch:.1f}) | "
          f"write+fdatasync baseline {baseline_rate:,.0f} msgs/s | journal/baseline {ratio:.2f} "
          f"(median of {len(ratios)} paired rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
    assert len(ratios) == len(journal_runs) >= 1
