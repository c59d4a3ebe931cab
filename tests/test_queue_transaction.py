"""Transactions: commit, rollback, an exception inside, lost locks, limits, atomicity on disk."""
from __future__ import annotations

import asyncio

import pytest

import tether
from tether import QueueFull, TransactionError


async def test_commit_moves_atomically(qm):
    await qm.create_queue("orders")
    await qm.create_queue("billing")
    await qm.send("orders", b"o1")
    async with qm.transaction() as tx:
        m = await tx.receive("orders", timeout=1)
        sent = await tx.send("billing", m.body + b"!")
        # nothing visible before commit
        assert (await qm.queue_info("billing")).depth == 0
        assert (await qm.queue_info("orders")).in_flight == 1
    assert tx.state == "committed"
    b = await qm.receive("billing", timeout=1)
    assert (b.id, b.body) == (sent, b"o1!")
    info = await qm.queue_info("orders")
    assert (info.depth, info.in_flight) == (0, 0)


async def test_explicit_rollback_returns_messages_with_higher_delivery_count(qm):
    await qm.create_queue("orders")
    await qm.create_queue("billing")
    await qm.send("orders", b"o1")
    tx = qm.transaction()
    m = await tx.receive("orders", timeout=1)
    assert m.delivery_count == 1
    await tx.send("billing", b"x")
    await tx.rollback()
    assert (await qm.queue_info("billing")).depth == 0
    again = await qm.receive("orders", timeout=1)
    assert again.id == m.id and again.delivery_count == 2
    with pytest.raises(TransactionError):
        await tx.commit()


async def test_exception_inside_rolls_back_and_propagates(qm):
    await qm.create_queue("orders")
    await qm.create_queue("billing")
    await qm.send("orders", b"o1")
    with pytest.raises(RuntimeError, match="boom"):
        async with qm.transaction() as tx:
            await tx.receive("orders", timeout=1)
            await tx.send("billing", b"x")
            raise RuntimeError("boom")
    assert tx.state == "rolled back"
    assert (await qm.queue_info("billing")).depth == 0
    again = await qm.receive("orders", timeout=1)
    assert again.delivery_count == 2


async def test_rollbacks_count_toward_poison(qm):
    await qm.create_queue("orders", receive_retry_count=1, max_retry_cycles=0, receive_error_handling="move")
    await qm.send("orders", b"bad")
    for _ in range(2):
        with pytest.raises(ValueError):
            async with qm.transaction() as tx:
                assert await tx.receive("orders", timeout=1) is not None
                raise ValueError
    assert (await qm.queue_info("orders")).poison == 1


async def test_messages_of_a_transaction_are_settled_by_it(qm):
    await qm.create_queue("orders")
    await qm.send("orders", b"o1")
    async with qm.transaction() as tx:
        m = await tx.receive("orders", timeout=1)
        with pytest.raises(TransactionError):
            await m.complete()
        with pytest.raises(TransactionError):
            await m.abandon()
        assert tx.received == [m]
    assert (await qm.queue_info("orders")).in_flight == 0


async def test_lost_lock_fails_the_commit(qm):
    await qm.create_queue("orders", validity_duration=0.05)
    await qm.create_queue("billing")
    await qm.send("orders", b"o1")
    with pytest.raises(TransactionError, match="peek-lock"):
        async with qm.transaction() as tx:
            await tx.receive("orders", timeout=1)
            await tx.send("billing", b"x")
            await asyncio.sleep(0.15)
    assert (await qm.queue_info("billing")).depth == 0
    m = await qm.receive("orders", timeout=1)
    assert m.body == b"o1"


async def test_queue_full_at_commit_rolls_back(qm):
    await qm.create_queue("orders")
    await qm.create_queue("small", max_length=1)
    await qm.send("orders", b"o1")
    with pytest.raises(QueueFull):
        async with qm.transaction() as tx:
            await tx.receive("orders", timeout=1)
            await tx.send("small", b"a")
            await tx.send("small", b"b")
    assert (await qm.queue_info("small")).depth == 0
    assert (await qm.queue_info("orders")).depth == 1


async def test_exactly_once_false_takes_no_transactions(qm):
    await qm.create_queue("best", exactly_once=False, durable=False)
    tx = qm.transaction()
    with pytest.raises(TransactionError, match="exactly_once"):
        await tx.send("best", b"x")
    with pytest.raises(TransactionError, match="exactly_once"):
        await tx.receive("best", timeout=0)
    await tx.rollback()


async def test_empty_receive_and_reuse(qm):
    await qm.create_queue("orders")
    async with qm.transaction() as tx:
        assert await tx.receive("orders", timeout=0.01) is None
    with pytest.raises(TransactionError, match="committed"):
        await tx.send("orders", b"x")


async def test_many_concurrent_transactions(qm):
    await qm.create_queue("a")
    await qm.create_queue("b")
    n = 200
    await asyncio.gather(*(qm.send("a", b"%d" % i) for i in range(n)))

    async def mover():
        moved = 0
        while True:
            async with qm.transaction() as tx:
                m = await tx.receive("a", timeout=0.05)
                if m is None:
                    return moved
                await tx.send("b", m.body)
                moved += 1

    counts = await asyncio.wait_for(asyncio.gather(*(mover() for _ in range(10))), 20)
    assert sum(counts) == n
    bodies = []
    while (m := await qm.receive("b", timeout=0)) is not None:
        bodies.append(m.body)
        await m.complete()
    assert sorted(bodies) == sorted(b"%d" % i for i in range(n))


async def test_commit_is_one_record_and_survives_restart(tmp_path):
    qm = await tether.QueueManager.open(tmp_path / "d")
    await qm.create_queue("a")
    await qm.create_queue("b")
    await qm.send("a", b"1")
    await qm.send("a", b"2")
    journal = qm.operations.store.journal
    before = journal.record_count
    async with qm.transaction() as tx:
        for _ in range(2):
            m = await tx.receive("a", timeout=1)
            await tx.send("b", m.body)
    assert journal.record_count == before + 1     # 2 removes + 2 sends in one record
    await qm.close()
    async with tether.QueueManager.open(tmp_path / "d") as qm:
        assert (await qm.queue_info("a")).depth == 0
        assert (await qm.queue_info("b")).depth == 2
