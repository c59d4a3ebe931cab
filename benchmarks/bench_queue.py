"""Queue manager micro-benchmarks: the volatile send/receive/complete cycle (pure CPU),
and durable sends from 64 concurrent tasks beside the write+fdatasync baseline.

Run: PYTHONPATH=src python -m pytest benchmarks/bench_queue.py --benchmark-enable -q -s
(`tether bench queue` is the end-to-end figure with a table.)
"""
from __future__ import annotations

import asyncio
import time

import uvloop

from tether.bench.fsync_baseline import fdatasync_baseline
from tether.queue.manager import QueueManager

BODY = b"\x5a" * 64
SENDERS = 64


async def _volatile_cycle(count: int) -> None:
    async with QueueManager.open() as qm:
        await qm.create_queue("b", durable=False)
        for _ in range(count):
            await qm.send("b", BODY)
        for _ in range(count):
            await (await qm.receive("b")).complete()


def test_volatile_send_receive_complete_10k(benchmark):
    """10,000 messages sent, then received and completed, on one uvloop loop."""
    def run() -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_volatile_cycle(10_000))

    benchmark.pedantic(run, rounds=5, iterations=1)


async def _durable_sends(directory: str, per_task: int) -> tuple[float, float]:
    async with QueueManager.open(directory) as qm:
        await qm.create_queue("b")
        journal = qm.operations.store.journal

        async def sender() -> None:
            for _ in range(per_task):
                await qm.send("b", BODY)

        start = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(SENDERS)))
        seconds = time.perf_counter() - start
        return SENDERS * per_task / seconds, SENDERS * per_task / max(journal.batch_count, 1)


def test_durable_sends_vs_fdatasync_baseline(benchmark, tmp_path):
    """64 tasks send 64-byte messages to a durable queue (fsync=always); each round is
    paired with a baseline run right after it with the same messages per fdatasync."""
    runs: list[tuple[float, float]] = []
    baselines: list[float] = []
    counter = iter(range(1_000_000))

    def pair_baseline() -> None:
        if len(baselines) < len(runs):
            baselines.append(fdatasync_baseline(tmp_path, len(BODY), max(1.0, runs[-1][1]), 0.5))

    def one_run() -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runs.append(runner.run(_durable_sends(str(tmp_path / f"qm-{next(counter)}"), 200)))

    benchmark.pedantic(one_run, setup=pair_baseline, rounds=5, iterations=1)
    pair_baseline()
    ratios = sorted(r[0] / b for r, b in zip(runs, baselines))
    median = ratios[len(ratios) // 2]
    benchmark.extra_info.update(ratio=round(median, 3), ratios=[round(r, 3) for r in ratios])
    print(f"\ndurable sends / fdatasync baseline: median {median:.2f} ({', '.join(f'{r:.2f}' for r in ratios)})")
