"""Crash safety of the queue manager: SIGKILL mid-load, torn tails, flipped bits, half-written
segment headers. Every acknowledged message is there exactly once afterwards."""
from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import tether

pytestmark = pytest.mark.fault

# A child queue manager under a concurrent send (and complete) load. It writes
# "S <id> <body>" once a send is acknowledged, "R <id>" when a message is received and
# "C <id>" once its complete is acknowledged, with one os.write each (unbuffered, so
# nothing acknowledged is lost when it is killed). A message received but not known to be
# completed may or may not be there afterwards (its complete may have become durable).
# "K <n>" says n journal compactions finished so far.
CHILD = textwrap.dedent("""
    import asyncio, os, sys
    import tether

    def say(line):
        os.write(1, (line + "\\n").encode())

    async def main():
        directory, run = sys.argv[1], sys.argv[2]
        # small segments and an eager compaction: kills also land in rollovers and rewrites
        qm = await tether.QueueManager.open(directory, segment_size=128 * 1024,
                                            compact_min_bytes=96 * 1024, compact_ratio=2)
        await qm.create_queue("q")

        async def sender(w):
            i = 0
            while True:
                body = f"{run}.{w}.{i}"
                msg_id = await qm.send("q", body.encode())
                say(f"S {msg_id} {body}")
                i += 1

        async def consumer():
            while True:
                m = await qm.receive("q")
                say(f"R {m.id}")
                await m.complete()
                say(f"C {m.id}")

        async def watch_compactions():
            seen = 0
            while True:
                await asyncio.sleep(0.01)
                if qm.operations.store.compactions != seen:
                    seen = qm.operations.store.compactions
                    say(f"K {seen}")

        say("ready")
        await asyncio.gather(*[sender(w) for w in range(24)], *[consumer() for _ in range(24)],
                             watch_compactions())

    asyncio.run(main())
""")


COMPACTIONS: list[int] = []


def run_and_kill(directory, run: int, rng: random.Random) -> tuple[dict[str, str], set[str], set[str]]:
    """Start a child, SIGKILL it after a random time under load; its acknowledged sends
    (id -> body), its receives, and its acknowledged completes."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    # The child's lines go to a file, not a pipe: a full pipe would block it mid-load.
    log_path = os.path.join(os.path.dirname(directory), f"child-{run}.log")
    with open(log_path, "wb") as log_file:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(directory), str(run)],
                                 stdout=log_file, env=env)
    try:
        deadline = time.monotonic() + 30
        while not _started(log_path):
            assert child.poll() is None, f"child exited with {child.returncode}"
            assert time.monotonic() < deadline, "child did not start"
            time.sleep(0.01)
        if run % 2:
            # every other run is killed only after a compaction finished (then anywhere in
            # the next ones): on a loaded machine a purely timed kill may come before any
            _wait_for_compaction(log_path, child)
        time.sleep(rng.uniform(0.02, 0.4))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    with open(log_path, "rb") as f:
        out = f.read()
    sent, received, completed = {}, set(), set()
    for line in out.decode().splitlines():
        parts = line.split(" ")
        if parts[0] == "S" and len(parts) == 3:
            sent[parts[1]] = parts[2]
        elif parts[0] == "R" and len(parts) == 2:
            received.add(parts[1])
        elif parts[0] == "C" and len(parts) == 2:
            completed.add(parts[1])
        elif parts[0] == "K":
            COMPACTIONS.append(int(parts[1]))
    return sent, received, completed


def _wait_for_compaction(log_path: str, child: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while True:
        with open(log_path, "rb") as f:
            if b"\nK " in f.read():
                return
        assert child.poll() is None, f"child exited with {child.returncode}"
        assert time.monotonic() < deadline, "no compaction within 60 s of load"
        time.sleep(0.01)


def _started(log_path: str) -> bool:
    with open(log_path, "rb") as f:
        return f.read(6) == b"ready\n"


async def contents(directory) -> list[tuple[str, bytes]]:
    """(id, body) of every message in queue q, in flight or not."""
    async with tether.QueueManager.open(directory) as qm:
        out = []
        while (m := await qm.receive("q", timeout=0)) is not None:
            out.append((m.id, m.body))      # locked, never completed: nothing changes on disk
        return out


def test_sigkill_under_concurrent_sends_loses_nothing_acknowledged(tmp_path):
    directory = tmp_path / "qm"
    rng = random.Random(int(os.environ.get("TETHER_CRASH_SEED", "0")) or time.time_ns())
    all_sent: dict[str, str] = {}
    all_completed: set[str] = set()
    all_received: set[str] = set()
    COMPACTIONS.clear()
    for run in range(8):
        sent, received, completed = run_and_kill(directory, run, rng)
        all_sent.update(sent)
        all_received |= received
        all_completed |= completed
        present = asyncio.run(contents(directory))
        ids = [i for i, _ in present]
        assert len(ids) == len(set(ids)), "a message is in the queue twice"
        present_ids = set(ids)
        missing = set(all_sent) - all_received - present_ids
        assert not missing, f"run {run}: {len(missing)} acknowledged messages lost"
        resurrected = present_ids & all_completed
        assert not resurrected, f"run {run}: completed messages came back: {sorted(resurrected)[:3]}"
        for msg_id, body in present:
            if msg_id in all_sent:
                assert body.decode() == all_sent[msg_id]
    assert len(all_sent) > 100 and all_completed     # the load really ran
    assert COMPACTIONS, "no journal compaction ran under the load"


# ---- damaged journals ----

def segments(directory) -> list[str]:
    return sorted(os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".seg"))


async def fill(directory, n: int) -> tuple[list[str], int]:
    """n sequential sends (one record each); ids, and the journal size before the last one."""
    async with tether.QueueManager.open(directory) as qm:
        await qm.create_queue("q")
        ids = [await qm.send("q", b"m%d" % i) for i in range(n - 1)]
        before_last = qm.journal_bytes
        ids.append(await qm.send("q", b"m%d" % (n - 1)))
    return ids, before_last


async def bodies_after_recovery(directory) -> tuple[list[bytes], list[str]]:
    async with tether.QueueManager.open(directory) as qm:
        got = []
        while (m := await qm.receive("q", timeout=0)) is not None:
            got.append(m.body)
        return got, qm.recovery_log


@pytest.mark.parametrize("cut", [1, 5, 9, 20])
async def test_torn_tail_loses_only_the_last_record(tmp_path, caplog, cut):
    directory = tmp_path / "qm"
    ids, before_last = await fill(directory, 10)
    [segment] = segments(directory)
    with open(segment, "r+b") as f:
        f.truncate(before_last + cut)        # the last record only partly written
    with caplog.at_level(logging.WARNING, logger="tether.journal"):
        got, log = await bodies_after_recovery(directory)
    assert got == [b"m%d" % i for i in range(9)]
    assert log and "truncated" in log[0]
    assert any("truncated" in r.getMessage() for r in caplog.records)


def _flip(segment: str, at: int) -> None:
    with open(segment, "r+b") as f:
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0x10]))


async def test_flipped_bit_in_a_closed_journal_is_refused_then_repair_keeps_the_rest(tmp_path):
    """After a clean close nothing can be torn: a flipped bit in the last record is damage.
    open() refuses it, naming the file and offset, and changes nothing; `tether qm repair`
    keeps every intact record and quarantines the damaged bytes; then the manager opens."""
    from tether.queue.store.repair import repair

    directory = tmp_path / "qm"
    ids, before_last = await fill(directory, 10)
    [segment] = segments(directory)
    _flip(segment, before_last + 20)
    snapshot = {name: (directory / name).read_bytes() for name in os.listdir(directory) if name.endswith(".seg")}
    with pytest.raises(tether.JournalCorrupt) as refused:
        await tether.QueueManager.open(directory)
    assert refused.value.path == segment and refused.value.offset is not None
    assert segment in str(refused.value) and str(refused.value.offset) in str(refused.value)
    assert {name: (directory / name).read_bytes() for name in snapshot} == snapshot      # nothing changed
    report = repair(directory)
    assert report.quarantined
    got, _ = await bodies_after_recovery(directory)
    assert got == [b"m%d" % i for i in range(9)]
    async with tether.QueueManager.open(directory) as qm:        # it takes new work and keeps it
        await qm.send("q", b"after")
    got, log = await bodies_after_recovery(directory)
    assert got == [b"m%d" % i for i in range(9)] + [b"after"] and not log


FILL_AND_DIE = """
import asyncio, os, sys, tether
async def main():
    qm = await tether.QueueManager.open(sys.argv[1])
    await qm.create_queue("q")
    for i in range(9):
        await qm.send("q", b"m%d" % i)
    print(qm.journal_bytes, flush=True)
    await qm.send("q", b"m9")
    os._exit(0)                 # no close: as if the process died
asyncio.run(main())
"""


async def test_flipped_bit_in_the_last_record_after_a_crash_loses_only_it(tmp_path, caplog):
    """Without a clean close, damage that only the last record has, with nothing intact
    after it, is a torn tail: recovery cuts it off (that send was not acknowledged as far
    as the journal can tell) and logs it."""
    directory = tmp_path / "qm"
    done = subprocess.run([sys.executable, "-c", FILL_AND_DIE, str(directory)], capture_output=True, check=True)
    before_last = int(done.stdout.split()[0])
    [segment] = segments(directory)
    _flip(segment, before_last + 20)
    with caplog.at_level(logging.WARNING, logger="tether.journal"):
        got, log = await bodies_after_recovery(directory)
    assert got == [b"m%d" % i for i in range(9)]
    assert log and any("truncated" in r.getMessage() or "torn" in r.getMessage() for r in caplog.records)


async def test_half_written_segment_header_is_dropped(tmp_path, caplog):
    directory = tmp_path / "qm"
    await fill(directory, 5)
    [segment] = segments(directory)
    name = os.path.basename(segment)
    next_name = f"{int(name[:-4]) + 1:020d}.seg"
    with open(segment, "rb") as f:
        header = f.read(16)
    with open(os.path.join(directory, next_name), "wb") as f:
        f.write(header[:10])                  # a crash while the next segment was created
    with caplog.at_level(logging.WARNING, logger="tether.journal"):
        got, log = await bodies_after_recovery(directory)
    assert got == [b"m%d" % i for i in range(5)]
    assert log and next_name in log[0]
    assert not os.path.exists(os.path.join(directory, next_name))
