"""Durable queues: definitions and messages survive a restart (with and without close),
volatile queues never touch the disk, and compaction keeps disk use proportional."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import pytest

import tether


async def test_definitions_and_messages_survive_close_and_reopen(tmp_path):
    d = tmp_path / "qm"
    async with tether.QueueManager.open(d) as qm:
        await qm.create_queue("orders", max_length=100, receive_error_handling="move")
        await qm.create_queue("dlq", time_to_live=3600)
        await qm.create_queue("gone")
        await qm.delete_queue("gone")
        ids = [await qm.send("orders", b"m%d" % i, headers={"i": i}) for i in range(10)]
        m = await qm.receive("orders", timeout=1)
        await m.complete()                         # m0 done
        m = await qm.receive("orders", timeout=1)
        await m.abandon()                          # m1 failed once, redelivered first
        locked = await qm.receive("orders", timeout=1)   # m1 again, locked at close
        assert locked.id == ids[1]
    async with tether.QueueManager.open(d) as qm:
        assert set(await qm.queues()) == {"$dead", "$journal", "orders", "dlq"}
        assert (await qm.settings("orders")).max_length == 100
        assert (await qm.settings("orders")).receive_error_handling == "move"
        assert (await qm.settings("dlq")).time_to_live == 3600
        info = await qm.queue_info("orders")
        assert (info.depth, info.in_flight) == (9, 0)
        got = []
        while (m := await qm.receive("orders", timeout=0)) is not None:
            got.append(m)
        assert [m.id for m in got] == ids[1:]
        assert got[0].headers == {"i": 1}
        # the journaled abandon: one failed delivery, plus this one
        assert got[0].delivery_count == 2 and got[0].attempts == 1
        assert all(m.delivery_count == 1 for m in got[1:])


async def test_retry_and_poison_state_survive_restart(tmp_path):
    d = tmp_path / "qm"
    async with tether.QueueManager.open(d) as qm:
        await qm.create_queue("q", receive_retry_count=0, max_retry_cycles=1, retry_cycle_delay=0.3,
                              receive_error_handling="move")
        await qm.create_queue("p", receive_retry_count=0, max_retry_cycles=0, receive_error_handling="fault")
        await qm.send("q", b"r")
        await (await qm.receive("q", timeout=1)).abandon()     # -> q;retry
        await qm.send("p", b"x")
        await (await qm.receive("p", timeout=1)).abandon()     # -> p;poison, p faulted
        await qm.send("q", b"t", time_to_live=0.2)
    async with tether.QueueManager.open(d) as qm:
        info = await qm.queue_info("q")
        assert (info.retrying, info.depth) == (1, 1)
        assert (await qm.queue_info("p")).faulted
        with pytest.raises(tether.PoisonMessage):
            await qm.receive("p", timeout=0)
        # the TTL and the retry delay keep running after the restart
        dead = await qm.receive("$dead", timeout=2)
        assert (dead.body, dead.dead_letter_reason) == (b"t", "expired")
        m = await qm.receive("q", timeout=2)
        assert m.body == b"r" and m.delivery_count == 2
        await m.abandon()                               # second cycle exhausted -> poison
        assert (await qm.queue_info("q")).poison == 1


async def test_volatile_queue_never_touches_the_disk(tmp_path):
    async with tether.QueueManager.open(tmp_path / "qm") as qm:
        await qm.create_queue("v", durable=False)
        size = qm.journal_bytes
        for _i in range(200):
            await qm.send("v", b"x" * 100)
        async with qm.transaction() as tx:
            await tx.receive("v", timeout=1)
            await tx.send("v", b"y")
        for _ in range(50):
            await (await qm.receive("v", timeout=1)).complete()
        assert qm.journal_bytes == size
    async with tether.QueueManager.open(tmp_path / "qm") as qm:
        assert "v" in (await qm.queues())                      # its definition is kept
        assert (await qm.queue_info("v")).depth == 0  # its messages are not


async def test_memory_manager_keeps_nothing(tmp_path):
    async with tether.QueueManager.open() as qm:
        await qm.create_queue("q")
        await qm.send("q", b"x")
        assert qm.journal_bytes == 0
        assert qm.data_dir is None


async def test_compaction_keeps_disk_use_proportional_to_live_messages(tmp_path):
    async with tether.QueueManager.open(tmp_path / "qm", segment_size=64 * 1024,
                                        compact_min_bytes=256 * 1024, compact_ratio=4) as qm:
        await qm.create_queue("q")
        await qm.create_queue("keep")
        keep = [await qm.send("keep", b"k%d" % i) for i in range(5)]
        body = b"x" * 1000
        peak = 0
        for _round in range(20):
            await asyncio.gather(*(qm.send("q", body) for _ in range(100)))
            received = [await qm.receive("q", timeout=1) for _ in range(100)]
            await asyncio.gather(*(m.complete() for m in received))
            peak = max(peak, qm.journal_bytes)
        # 2 MB went through; the journal never held much more than the trigger size
        assert qm.operations.store.compactions >= 1
        assert peak < 2 * 256 * 1024
        await qm.compact()
        assert qm.journal_bytes < 16 * 1024
    async with tether.QueueManager.open(tmp_path / "qm") as qm:
        got = []
        while (m := await qm.receive("keep", timeout=0)) is not None:
            got.append(m.id)
        assert got == keep
        assert (await qm.queue_info("q")).depth == 0


async def test_sends_during_compaction_are_kept(tmp_path):
    async with tether.QueueManager.open(tmp_path / "qm", compact_min_bytes=0, compact_ratio=1.01) as qm:
        await qm.create_queue("q")
        ids = await asyncio.gather(*(qm.send("q", b"%d" % i) for i in range(300)))
        await asyncio.gather(qm.compact(), *(qm.send("q", b"late%d" % i) for i in range(50)))
        expected = (await qm.queue_info("q")).depth
        assert expected == 350
    async with tether.QueueManager.open(tmp_path / "qm") as qm:
        assert (await qm.queue_info("q")).depth == 350
        first = await qm.receive("q", timeout=0)
        assert first.id in ids


def test_bad_fsync_policy_names_the_setting(tmp_path):
    async def main():
        with pytest.raises(ValueError, match="fsync"):
            await tether.QueueManager.open(tmp_path / "x", fsync="sometimes")
    asyncio.run(main())


@pytest.mark.parametrize("policy", ["interval", "never"])
async def test_other_fsync_policies_work(tmp_path, policy):
    async with tether.QueueManager.open(tmp_path / "qm", fsync=policy) as qm:
        await qm.create_queue("q")
        await asyncio.gather(*(qm.send("q", b"x") for _ in range(50)))
    async with tether.QueueManager.open(tmp_path / "qm") as qm:
        assert (await qm.queue_info("q")).depth == 50


CHILD_NO_CLOSE = textwrap.dedent("""
    import asyncio, os, sys
    import tether

    async def main():
        qm = await tether.QueueManager.open(sys.argv[1])
        await qm.create_queue("q")
        for i in range(20):
            await qm.send("q", b"%d" % i)
        m = await qm.receive("q", timeout=1)
        await m.complete()
        os._exit(0)                     # no close(): the journal is not flushed by us

    asyncio.run(main())
""")


def test_messages_survive_exit_without_close(tmp_path):
    d = tmp_path / "qm"
    subprocess.run([sys.executable, "-c", CHILD_NO_CLOSE, str(d)], check=True, timeout=60,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})

    async def main():
        async with tether.QueueManager.open(d) as qm:
            bodies = []
            while (m := await qm.receive("q", timeout=0)) is not None:
                bodies.append(m.body)
            assert bodies == [b"%d" % i for i in range(1, 20)]

    asyncio.run(main())
