"""How the queue core's operations become journal records (tether.queue.writer): one record
per loop iteration, applied in order once durable, undone when the write fails, flush, and
compaction under a steady load."""
from __future__ import annotations

import asyncio

import pytest

import tether
from tether.errors import StorageError
from tether.queue.core.records import decode


async def _ops(directory) -> list:
    """Every journal operation in `directory`, in order."""
    from tether.queue.store.journal_store import JournalStore

    store = await JournalStore.open(directory)
    try:
        return [op for record in store.recovered for op in decode(record)]
    finally:
        await store.close()


async def test_concurrent_sends_become_one_record_applied_in_order(tmp_path, monkeypatch):
    from tether.queue.store.journal_store import JournalStore

    # An idle store may ask for a record to be cut early when a loop turn runs longer than
    # its write takes (as it does on a loaded machine): that is by design, so it is off here.
    monkeypatch.setattr(JournalStore, "cut_early", lambda self, busy_for: False)
    async with tether.QueueManager.open(tmp_path) as qm:
        await qm.create_queue("q")
        journal = qm.operations.store.journal
        before = journal.record_count
        ids = await asyncio.gather(*(qm.send("q", b"%d" % i) for i in range(64)))
        assert journal.record_count - before == 1
        got = [(await qm.receive("q", timeout=0)).id for _ in range(64)]
        assert got == list(ids)          # queued in submission order
    enqueued = [op[2][1] for op in await _ops(tmp_path) if op[0] == "e"]
    assert enqueued == list(ids)


async def test_sends_made_while_a_record_is_written_form_the_next_record(tmp_path):
    async with tether.QueueManager.open(tmp_path) as qm:
        await qm.create_queue("q")
        first = [asyncio.ensure_future(qm.send("q", b"a%d" % i)) for i in range(10)]
        await asyncio.sleep(0)          # the first record is cut and handed over
        second = [asyncio.ensure_future(qm.send("q", b"b%d" % i)) for i in range(10)]
        ids = await asyncio.gather(*first, *second)
        assert [(await qm.receive("q", timeout=0)).id for _ in range(20)] == list(ids)


async def test_flush_waits_for_what_was_submitted_before_it(tmp_path):
    async with tether.QueueManager.open(tmp_path) as qm:
        await qm.create_queue("q")
        sends = [asyncio.ensure_future(qm.send("q", b"%d" % i)) for i in range(100)]
        await asyncio.sleep(0)
        await qm.operations.writer.flush()
        assert (await qm.queue_info("q")).depth == 100
        await qm.operations.writer.flush()     # nothing pending: returns at once
        await asyncio.gather(*sends)


async def test_a_failed_write_fails_its_operations_and_changes_nothing(tmp_path, monkeypatch):
    async with tether.QueueManager.open(tmp_path) as qm:
        await qm.create_queue("q")
        kept = await qm.send("q", b"kept")
        m = await qm.receive("q", timeout=0)
        store = qm.operations.store
        real = store.append

        def failing(record, done):
            asyncio.get_running_loop().call_soon(done, StorageError("disk full (simulated)"))

        monkeypatch.setattr(store, "append", failing)
        with pytest.raises(StorageError):
            await qm.send("q", b"lost")
        with pytest.raises(StorageError):
            await m.complete()
        info = await qm.queue_info("q")
        assert (info.depth, info.in_flight) == (0, 1)       # the refused send is nowhere
        monkeypatch.setattr(store, "append", real)
        await m.complete()                  # still locked: completing again works
        assert await qm.receive("q", timeout=0) is None
        again = await qm.send("q", b"again")
        assert (await qm.receive("q", timeout=0)).id == again
    async with tether.QueueManager.open(tmp_path) as qm:
        assert (await qm.queue_info("q")).depth == 1       # "again" (taken, never completed)
        assert kept != again


async def test_compaction_under_a_steady_load_keeps_every_message(tmp_path):
    async with tether.QueueManager.open(tmp_path, compact_min_bytes=0, compact_ratio=1.5) as qm:
        await qm.create_queue("q")
        stop = False
        live: set[str] = set()

        async def worker(k: int) -> None:
            # each worker keeps one message in the queue: the live state stays small
            while not stop:
                message_id = await qm.send("q", b"%d" % k)
                live.add(message_id)
                m = await qm.receive("q", timeout=1)
                await m.complete()
                live.discard(m.id)

        tasks = [asyncio.ensure_future(worker(k)) for k in range(16)]
        await asyncio.sleep(0.5)
        stop = True
        await asyncio.gather(*tasks)
        assert qm.operations.store.compactions >= 1
    async with tether.QueueManager.open(tmp_path) as qm:
        got = set()
        while (m := await qm.receive("q", timeout=0)) is not None:
            got.add(m.id)
        assert got == live
