"""The durable store (tether.queue.durable_store): how operations become journal records —
batching, atomic submit_many, flush, and compaction while batches are in flight."""
from __future__ import annotations

import asyncio

from tether.queue import records
from tether.queue.durable_store import DurableStore


def op(i: int) -> list:
    return [records.SEEN, [f"id-{i}"], float(i)]


async def replayed(store_dir) -> list:
    """Every operation the journal in `store_dir` holds, in order."""
    store = await DurableStore.open(store_dir)
    try:
        return [o for r in store.recovered for o in records.decode(r)]
    finally:
        await store.close()


async def test_concurrent_submits_become_one_record_applied_in_order(tmp_path):
    store = await DurableStore.open(tmp_path)
    applied: list[int] = []
    n = 64
    before = store.journal.record_count
    await asyncio.gather(*(store.submit(op(i), applied.append, i) for i in range(n)))
    assert applied == list(range(n))        # applied in submission order, once each
    assert store.journal.record_count - before == 1
    await store.close()
    assert await replayed(tmp_path) == [op(i) for i in range(n)]


async def test_submit_many_shares_the_record_of_its_batch(tmp_path):
    store = await DurableStore.open(tmp_path)
    n = 40
    before = store.journal.record_count
    futures = [store.submit(op(i), None, None) for i in range(n)]
    futures.append(store.submit_many([op(n), op(n + 1)], None, None))
    await asyncio.gather(*futures)
    assert store.journal.record_count - before == 1
    await store.close()
    assert await replayed(tmp_path) == [op(i) for i in range(n + 2)]


async def test_submits_made_while_a_batch_is_written_form_the_next_records(tmp_path):
    store = await DurableStore.open(tmp_path)
    applied: list[int] = []
    first = [store.submit(op(i), applied.append, i) for i in range(10)]
    await asyncio.sleep(0)                  # the first batch is cut and handed over
    second = [store.submit(op(i), applied.append, i) for i in range(10, 20)]
    await asyncio.gather(*first, *second)
    assert applied == list(range(20))
    await store.close()
    assert await replayed(tmp_path) == [op(i) for i in range(20)]


async def test_flush_waits_for_what_was_submitted_before_it(tmp_path):
    store = await DurableStore.open(tmp_path)
    applied: list[int] = []
    for i in range(100):
        store.submit(op(i), applied.append, i)
    await store.flush()
    assert applied == list(range(100))
    await store.flush()                     # nothing pending: returns at once
    await store.close()


async def test_compaction_under_a_steady_load_keeps_every_operation(tmp_path):
    store = await DurableStore.open(tmp_path, compact_min_bytes=0, compact_ratio=1.5)
    live: dict[str, list] = {}
    store.set_snapshot(lambda: list(live.values()), lambda: 64 * len(live))
    stop = False

    async def sender(k: int) -> None:
        i = 0
        while not stop:
            # each sender overwrites its own key: the live state stays small, the journal grows
            o = [records.SEEN, [f"key-{k}"], float(i)]
            await store.submit(o, lambda o: live.__setitem__(o[1][0], o), o)
            i += 1

    tasks = [asyncio.ensure_future(sender(k)) for k in range(32)]
    await asyncio.sleep(0.3)
    stop = True
    await asyncio.gather(*tasks)
    await store.close()
    assert store.compactions >= 1
    last: dict[str, list] = {}
    for o in await replayed(tmp_path):
        last[o[1][0]] = o
    assert last == live and len(live) == 32
