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
from tether.queue.journal import Journal

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


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_journal_append_vs_fdatasync_baseline(benchmark, tmp_path, loop_name):
    runs: list[tuple[float, float]] = []
    counter = iter(range(1_000_000))

    def one_run() -> None:
        directory = tmp_path / f"journal-{next(counter)}"
        with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
            runs.append(runner.run(_append_load(str(directory))))

    benchmark.pedantic(one_run, rounds=3, iterations=1, warmup_rounds=1)
    measured = runs[-3:] if len(runs) >= 3 else runs
    journal_rate = sum(rate for rate, _ in measured) / len(measured)
    batch = sum(b for _, b in measured) / len(measured)
    baseline_rate = fdatasync_baseline(tmp_path, RECORD_SIZE, batch, seconds=1.0)
    ratio = journal_rate / baseline_rate
    benchmark.extra_info.update(journal_msgs_per_s=round(journal_rate), average_batch=round(batch, 1),
                                baseline_msgs_per_s=round(baseline_rate), ratio=round(ratio, 3))
    print(f"\n[{loop_name}] journal {journal_rate:,.0f} msgs/s (avg batch {batch:.1f}) | "
          f"write+fdatasync baseline {baseline_rate:,.0f} msgs/s | journal/baseline {ratio:.2f}")
    assert journal_rate > 0 and baseline_rate > 0
