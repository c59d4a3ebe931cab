"""The rest of the queue model, each feature through the embedded QueueManager and through
a QueueClient of the same manager's service (the `api` fixture runs every test on both):
send_many, peek, renew_lock, purge_queue and queue_info's keys."""
from __future__ import annotations

import asyncio

import pytest

import tether
from tether import LockLost, PermissionDenied, QueueNotFound
from tether.queue.auth import hash_password


async def _drain(handle, name, n, timeout=5):
    out = []
    for _ in range(n):
        m = await handle.receive(name, timeout=timeout)
        assert m is not None
        out.append(m)
    return out


# ---- send_many ----

async def test_send_many_queues_all_in_order_with_one_durable_write(api):
    qm, handle = api
    await handle.create_queue("q")
    ids = await handle.send_many("q", [b"a", b"b", b"c"])
    assert len(set(ids)) == 3
    got = await _drain(handle, "q", 3)
    assert [m.body for m in got] == [b"a", b"b", b"c"]
    assert [m.id for m in got] == ids
    for m in got:
        await m.complete()


async def test_embedded_send_many_is_one_journal_record(tmp_path):
    async with tether.QueueManager.open(tmp_path / "qm") as qm:
        await qm.create_queue("q")
        core = qm.operations.core
        first = core.records._next
        await qm.send_many("q", [b"%d" % i for i in range(50)])
        assert core.records._next == first + 1          # one record for all fifty
    async with tether.QueueManager.open(tmp_path / "qm") as qm:
        assert (await qm.queue_info("q")).depth == 50


async def test_send_many_refuses_all_when_one_is_bad(api):
    qm, handle = api
    await handle.create_queue("q", max_message_size=10)
    with pytest.raises(tether.MessageTooLarge):
        await handle.send_many("q", [b"ok", b"x" * 11])
    if handle is qm:       # embedded: all or none; a client reports the first refusal
        assert (await qm.queue_info("q")).depth == 0


# ---- peek ----

async def test_peek_neither_locks_nor_counts(api):
    qm, handle = api
    await handle.create_queue("q")
    await handle.send_many("q", [b"1", b"2", b"3"])
    peeked = await handle.peek("q", count=2)
    assert [m.body for m in peeked] == [b"1", b"2"]
    assert all(m.delivery_count == 0 for m in peeked)
    with pytest.raises(LockLost):
        await peeked[0].complete()
    info = await handle.queue_info("q")
    assert (info["depth"], info["in_flight"]) == (3, 0)
    m = await handle.receive("q", timeout=0)       # (a client's receive(0) takes one: no prefetch)
    assert (m.body, m.delivery_count) == (b"1", 1)
    assert [p.body for p in await handle.peek("q", 10)] == [b"2", b"3"]    # a locked one is not seen
    await m.abandon()
    again = await handle.peek("q", 1)
    assert (again[0].body, again[0].delivery_count) == (b"1", 1)
    assert await handle.peek("q") and len(await handle.peek("q")) == 1


async def test_peek_validates_its_count_and_queue(api):
    qm, handle = api
    await handle.create_queue("q")
    for bad in (0, -1, 1.5, True):
        with pytest.raises((ValueError, TypeError), match="count"):
            await handle.peek("q", bad)
    with pytest.raises(QueueNotFound):
        await handle.peek("nope", 1)
    assert await handle.peek("q", 5) == []


# ---- renew_lock ----

async def test_renew_lock_extends_the_peek_lock(api):
    qm, handle = api
    await handle.create_queue("q", validity_duration=0.5)
    await handle.send("q", b"x")
    m = await handle.receive("q", timeout=5)
    first = m.lock_deadline
    for _ in range(4):
        await asyncio.sleep(0.2)
        await m.renew_lock()
    assert m.lock_deadline > first + 0.5
    await m.complete()          # held for 0.8 s: without the renewals it would be lost
    assert (await handle.queue_info("q"))["depth"] == 0


async def test_renew_lock_of_a_lost_lock_raises(api):
    qm, handle = api
    await handle.create_queue("q")
    await handle.send("q", b"x")
    m = await handle.receive("q", timeout=5)
    await m.complete()
    with pytest.raises(LockLost):
        await m.renew_lock()
    assert await handle.peek("q") == []


async def test_renew_lock_in_a_transaction(api):
    qm, handle = api
    await handle.create_queue("q", validity_duration=0.5)
    await handle.send("q", b"x")
    async with handle.transaction() as tx:
        m = await tx.receive("q", timeout=5)
        for _ in range(4):
            await asyncio.sleep(0.2)
            await m.renew_lock()
    assert (await handle.queue_info("q"))["depth"] == 0


# ---- purge_queue ----

async def test_purge_removes_what_waits_and_returns_the_count(api):
    qm, handle = api
    await handle.create_queue("q")
    await handle.send_many("q", [b"%d" % i for i in range(5)])
    held = await handle.receive("q", timeout=0)
    assert await handle.purge_queue("q") == 4
    info = await handle.queue_info("q")
    assert (info["depth"], info["in_flight"]) == (0, 1)
    await held.complete()                    # a locked message stays its receiver's
    assert await handle.purge_queue("q") == 0
    with pytest.raises(QueueNotFound):
        await handle.purge_queue("nope")


async def test_purge_is_durable(tmp_path):
    async with tether.QueueManager.open(tmp_path / "qm") as qm:
        await qm.create_queue("q")
        await qm.send_many("q", [b"a", b"b"])
        assert await qm.purge_queue("q") == 2
        await qm.send("q", b"c")
    async with tether.QueueManager.open(tmp_path / "qm") as qm:
        assert [m.body for m in await qm.peek("q", 10)] == [b"c"]
        await qm.compact()
    async with tether.QueueManager.open(tmp_path / "qm") as qm:
        assert [m.body for m in await qm.peek("q", 10)] == [b"c"]


async def test_purging_poison_resumes_a_faulted_queue(tmp_path):
    async with tether.QueueManager.open() as qm:
        await qm.create_queue("q", receive_retry_count=0, max_retry_cycles=0)
        await qm.send("q", b"bad")
        m = await qm.receive("q", timeout=1)
        await m.abandon()
        assert (await qm.queue_info("q"))["poison"] == 1
        with pytest.raises(tether.PoisonMessage):
            await qm.receive("q", timeout=0)
        assert await qm.purge_queue("q;poison") == 1
        assert await qm.receive("q", timeout=0) is None


async def test_purge_needs_admin_at_a_service_with_users(tmp_path):
    users = {"alice": {"password_hash": hash_password("pw-alice"), "send": ["q"], "receive": ["q"]},
             "root": {"password_hash": hash_password("pw-root"), "admin": True}}
    async with tether.QueueManager.open(tmp_path / "qm", listen="tcp://127.0.0.1:0", users=users) as qm:
        await qm.create_queue("q")
        url = qm.services[0].url
        async with tether.QueueClient.connect(url, user="alice", password="pw-alice") as alice:
            await alice.send("q", b"x")
            assert [m.body for m in await alice.peek("q", 5)] == [b"x"]
            with pytest.raises(PermissionDenied):
                await alice.purge_queue("q")
            assert (await alice.settings("q")).durable
        async with tether.QueueClient.connect(url, user="root", password="pw-root") as root:
            assert await root.purge_queue("q") == 1


# ---- queue_info, queues, settings ----

async def test_queue_info_has_the_contract_keys(api):
    qm, handle = api
    await handle.create_queue("q")
    await handle.send("q", b"x")
    info = await handle.queue_info("q")
    for key in ("depth", "in_flight", "dead", "poison"):
        assert key in info
    assert (info["depth"], info["in_flight"], info["dead"], info["poison"]) == (1, 0, 0, 0)
    assert "dead_lettered" not in info
    assert "q" in await handle.queues()
    assert (await handle.settings("q")).time_to_live == 86400
    with pytest.raises(QueueNotFound):
        await handle.settings("nope")


# ---- consume() and async with msg ----

async def test_consume_and_async_with_complete_or_abandon(api):
    qm, handle = api
    await handle.create_queue("q")
    await handle.send_many("q", [b"ok", b"fail", b"done-by-hand"])
    seen = []
    async for msg in handle.consume("q", timeout=1):
        seen.append((msg.body, msg.delivery_count))
        if msg.body == b"fail" and msg.delivery_count == 1:
            with pytest.raises(RuntimeError):
                async with msg:
                    raise RuntimeError("handler failed")
            continue
        async with msg:
            if msg.body == b"done-by-hand":
                await msg.complete()          # settled in the block: nothing more at exit
    assert seen[:2] == [(b"ok", 1), (b"fail", 1)]
    assert sorted(seen[2:]) == [(b"done-by-hand", 1), (b"fail", 2)]
    info = await handle.queue_info("q")
    assert (info["depth"], info["in_flight"]) == (0, 0)


async def test_async_with_a_lost_lock_raises_on_success_and_keeps_the_error_on_failure(api):
    qm, handle = api
    await handle.create_queue("q", validity_duration=0.2)
    await handle.send_many("q", [b"a", b"b"])
    m = await handle.receive("q", timeout=0)
    with pytest.raises(LockLost):
        async with m:
            await asyncio.sleep(0.4)
    m = await handle.receive("q", timeout=5)
    with pytest.raises(KeyError):
        async with m:
            await asyncio.sleep(0.4)
            raise KeyError("the handler's own error is what the caller sees")


async def test_consume_ends_when_closed(tmp_path):
    qm = await tether.QueueManager.open()
    await qm.create_queue("q")
    got = []

    async def consumer():
        async for msg in qm.consume("q"):
            async with msg:
                got.append(msg.body)

    task = asyncio.ensure_future(consumer())
    await qm.send("q", b"1")
    while not got:
        await asyncio.sleep(0.01)
    await qm.close()
    await asyncio.wait_for(task, 5)          # ended, no error
    assert got == [b"1"]


async def test_client_consume_ends_when_the_client_closes(tmp_path):
    async with tether.QueueManager.open(listen="tcp://127.0.0.1:0") as qm:
        await qm.create_queue("q")
        client = await tether.QueueClient.connect(qm.services[0].url)

        async def consumer():
            return [msg.body async for msg in client.consume("q")]

        task = asyncio.ensure_future(consumer())
        await asyncio.sleep(0.1)
        await client.close()
        assert await asyncio.wait_for(task, 5) == []


async def test_consume_raises_what_is_not_the_end(api):
    qm, handle = api
    with pytest.raises(QueueNotFound):
        async for _ in handle.consume("nope", timeout=0.1):
            pass


# ---- receive_batch ----

async def test_receive_batch_commits_every_message_at_the_end(api):
    qm, handle = api
    await handle.create_queue("q")
    await handle.send_many("q", [b"%d" % i for i in range(7)])
    async with handle.receive_batch("q", max_messages=5, timeout=5) as batch:
        assert [m.body for m in batch] == [b"0", b"1", b"2", b"3", b"4"]
        info = await handle.queue_info("q")
        assert (info["depth"], info["in_flight"]) == (2, 5)
        with pytest.raises(tether.TransactionError):
            await batch[0].complete()          # the batch's transaction settles them
    info = await handle.queue_info("q")
    assert (info["depth"], info["in_flight"]) == (2, 0)
    async with handle.receive_batch("q", 100, timeout=1) as batch:
        assert [m.body for m in batch] == [b"5", b"6"]
    async with handle.receive_batch("q", 100, timeout=0.05) as batch:
        assert batch == []


async def test_receive_batch_rolls_back_on_an_exception(api):
    qm, handle = api
    await handle.create_queue("q")
    await handle.send_many("q", [b"a", b"b"])
    with pytest.raises(RuntimeError):
        async with handle.receive_batch("q", 10, timeout=5) as batch:
            assert len(batch) == 2
            raise RuntimeError("the handler failed")
    async with handle.receive_batch("q", 10, timeout=5) as batch:
        assert [(m.body, m.delivery_count) for m in batch] == [(b"a", 2), (b"b", 2)]


async def test_receive_batch_waits_for_a_first_message(api):
    qm, handle = api
    await handle.create_queue("q")

    async def later():
        await asyncio.sleep(0.2)
        await handle.send("q", b"late")

    task = asyncio.ensure_future(later())
    async with handle.receive_batch("q", 10, timeout=5) as batch:
        assert [m.body for m in batch] == [b"late"]
    await task


async def test_receive_batch_checks_its_arguments(api):
    qm, handle = api
    await handle.create_queue("q")
    for bad, error in ((0, ValueError), (5000, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="max_messages"):
            handle.receive_batch("q", bad, 1)
    for bad, error in ((-1, ValueError), (float("nan"), ValueError), ("1", TypeError)):
        with pytest.raises(error, match="timeout"):
            handle.receive_batch("q", 1, bad)
    with pytest.raises(QueueNotFound):
        async with handle.receive_batch("nope", 1, 0):
            pass


async def test_an_embedded_batch_is_one_journal_record(tmp_path):
    async with tether.QueueManager.open(tmp_path / "qm") as qm:
        await qm.create_queue("q")
        await qm.send_many("q", [b"%d" % i for i in range(100)])
        core = qm.operations.core
        async with qm.receive_batch("q", 100, timeout=1) as batch:
            assert len(batch) == 100
            first = core.records._next
        assert core.records._next == first + 1          # the commit: one record for a hundred
        await qm.send("q", b"left")
    async with tether.QueueManager.open(tmp_path / "qm") as qm:
        assert [m.body for m in await qm.peek("q", 10)] == [b"left"]
