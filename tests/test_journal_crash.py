"""Crash test: a child process appends numbered records from many concurrent tasks (and, in
some runs, rewrites the journal under them); the parent SIGKILLs it at a random moment,
reopens the journal and checks that every acknowledged record is there exactly once and
everything there is intact. Repeated with different timings, event loops and policies on
the same directory, so each run also recovers what the previous kill left.

Set TETHER_CRASH_SEED to replay a failing run's timings (the seed is in the failure text).
"""
from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

import tether
from tether.queue.store.journal import Journal
from tether.queue.store.survey import survey

CHILD = r"""
import asyncio, itertools, sys
from tether.queue.store.journal import Journal

directory, run, loop_name, policy, rewrite = sys.argv[1:6]

def make(n):
    # Self-checking record: its number, then filler derived from the number.
    return b"%d|" % n + n.to_bytes(8, "little") * (n % 19)

async def main():
    journal = await Journal.open(directory, fsync=policy, fsync_interval=0.02, segment_size=64 * 1024)
    state = list(journal.recovered)      # the owner's view, for rewrite snapshots
    journal.recovered = []
    numbers = itertools.count(int(run) * 10_000_000)
    out = sys.stdout
    out.write("ready\n"); out.flush()

    async def appender(i):
        while True:
            if i % 4 == 0:
                batch = [next(numbers) for _ in range(3)]
                records = [make(n) for n in batch]
                state.extend(records)
                await journal.append_many(records)
                out.write("".join("%d\n" % n for n in batch))
            else:
                n = next(numbers)
                record = make(n)
                state.append(record)
                await journal.append(record)
                out.write("%d\n" % n)
            out.flush()

    async def rewriter():
        while True:
            await asyncio.sleep(0.07)
            await journal.rewrite(lambda: list(state))

    tasks = [appender(i) for i in range(32)]
    if rewrite == "1":
        tasks.append(rewriter())
    await asyncio.gather(*tasks)

if loop_name == "uvloop":
    import uvloop
    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
else:
    runner = asyncio.Runner()
with runner:
    runner.run(main())
"""


def make(n: int) -> bytes:
    return b"%d|" % n + n.to_bytes(8, "little") * (n % 19)


def child_env() -> dict[str, str]:
    # The child imports the same tether as this test (src/ in development, site-packages in CI).
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(tether.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return env


def run_and_kill(directory: str, run: int, loop_name: str, policy: str, rewrite: bool,
                 delay: float) -> tuple[list[int], str]:
    """Start the child, SIGKILL it `delay` s after it is ready; return (acknowledged numbers, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, directory, str(run), loop_name, policy, "1" if rewrite else "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env())
    lines: list[bytes] = []
    ready = threading.Event()

    def read() -> None:
        # Drain stdout all the time so the child never blocks on a full pipe.
        for line in proc.stdout:
            if line == b"ready\n":
                ready.set()
            else:
                lines.append(line)
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(30), "child did not start"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(10)
        reader.join(10)
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    proc.stdout.close()
    # A line cut by the kill has no newline: that number was not acknowledged.
    return [int(line) for line in lines if line.endswith(b"\n")], stderr


async def read_journal(directory: str) -> tuple[list[bytes], list[str]]:
    async with await Journal.open(directory, segment_size=64 * 1024) as journal:
        return journal.recovered, journal.recovery_log


@pytest.mark.fault
@pytest.mark.timeout(120)
def test_sigkill_during_concurrent_appends_and_rewrites_loses_no_acknowledged_record(tmp_path):
    seed = int(os.environ.get("TETHER_CRASH_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    directory = str(tmp_path / "journal")
    acknowledged: set[int] = set()
    runs = 10
    for run in range(1, runs + 1):
        loop_name = "uvloop" if run % 2 else "asyncio"
        policy = "interval" if run % 5 == 0 else "always"
        rewrite = run % 3 != 1
        delay = rng.uniform(0.01, 0.5)
        context = (f"seed={seed} run={run} loop={loop_name} fsync={policy} rewrite={rewrite} "
                   f"delay={delay:.3f}s")
        acked, stderr = run_and_kill(directory, run, loop_name, policy, rewrite, delay)
        assert "Traceback" not in stderr, f"{context}: child failed:\n{stderr}"
        acknowledged.update(acked)

        check_recovered(directory, run, acked, acknowledged, context)
    assert len(acknowledged) > 1000, f"seed={seed}: too few appends to mean anything"


def check_recovered(directory: str, run: int, acked: list[int], acknowledged: set[int], context: str) -> None:
    """Reopen the journal: every acknowledged record is there once, intact, in order."""
    records, repairs = asyncio.run(read_journal(directory))
    present: list[int] = []
    for record in records:
        number, sep, _ = record.partition(b"|")
        assert sep and number.isdigit(), f"{context}: malformed record {record[:40]!r}"
        assert record == make(int(number)), f"{context}: damaged record {int(number)}"
        present.append(int(number))
    assert len(present) == len(set(present)), f"{context}: a record is present twice"
    missing = acknowledged - set(present)
    assert not missing, (f"{context}: {len(missing)} acknowledged records lost, "
                         f"e.g. {sorted(missing)[:5]}; repairs: {repairs}")
    # Records of one run keep their order (numbers are taken in submission order).
    this_run = [n for n in present if n // 10_000_000 == run]
    assert this_run == sorted(this_run), f"{context}: records out of order"
    print(f"{context}: {len(acked)} acknowledged, {len(present)} present, repairs: {repairs}")


@pytest.mark.fault
@pytest.mark.timeout(120)
def test_sigkill_while_zero_filling_ahead_and_rolling_over_loses_no_acknowledged_record(tmp_path):
    """fsync "always": every segment is preallocated (64 KiB segments: zeroed in 8 KiB
    chunks, a rollover every few hundred records), so kills land while zeros are written
    ahead, while a finished segment is cut to size and while the next one starts. The
    kills must leave zero tails (the window is hit) and lose nothing acknowledged."""
    seed = int(os.environ.get("TETHER_CRASH_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    directory = str(tmp_path / "journal")
    acknowledged: set[int] = set()
    zero_tails = 0
    for run in range(1, 9):
        loop_name = "uvloop" if run % 2 else "asyncio"
        delay = rng.uniform(0.05, 0.6)
        context = f"seed={seed} run={run} loop={loop_name} delay={delay:.3f}s"
        acked, stderr = run_and_kill(directory, run, loop_name, "always", run % 4 == 0, delay)
        assert "Traceback" not in stderr, f"{context}: child failed:\n{stderr}"
        acknowledged.update(acked)
        found = survey(directory)
        # the last segment may be a stub (killed while creating it): recovery removes it
        segments = [s for s in found.segments if not s.stub]
        last = segments[-1]
        assert last.header is not None and last.header.preallocated, context
        if last.contents.zero_from is not None:
            zero_tails += 1
        finished = segments[:-1]
        assert all(s.contents.zero_from is None for s in finished), f"{context}: a finished segment kept zeros"
        check_recovered(directory, run, acked, acknowledged, context)
    assert zero_tails >= 2, f"seed={seed}: only {zero_tails} kills left zeros ahead of the records"
    assert len(acknowledged) > 1000, f"seed={seed}: too few appends to mean anything"
