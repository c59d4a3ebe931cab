"""Send, receive, complete, abandon: FIFO, peek-locks, competing consumers, limits.

Every test runs on an in-memory manager and on a journal-backed (durable) one.
"""
from __future__ import annotations

import asyncio

import pytest

import tether
from tether import LockLost, MessageTooLarge, QueueExists, QueueFull, QueueNotFound


async def test_fifo_and_message_fields(qm):
    await qm.create_queue("orders")
    ids = [await qm.send("orders", b"m%d" % i, headers={"n": i}) for i in range(20)]
    assert len(set(ids)) == 20
    for i, sent_id in enumerate(ids):
        m = await qm.receive("orders", timeout=1)
        assert (m.id, m.body, m.headers, m.delivery_count) == (sent_id, b"m%d" % i, {"n": i}, 1)
        assert m.expires_at == pytest.approx(m.enqueued_at + 86400)
        assert m.dead_letter_reason is None and m.dead_letter_source is None
        assert m.queue == "orders"
        await m.complete()
    assert await qm.receive("orders", timeout=0) is None
    info = await qm.queue_info("orders")
    assert (info["depth"], info["in_flight"], info.bytes) == (0, 0, 0)


async def test_message_class_is_the_public_one(qm):
    await qm.create_queue("q")
    await qm.send("q", bytearray(b"abc"))
    m = await qm.receive("q", timeout=1)
    assert isinstance(m, tether.Message)
    assert m.body == b"abc" and isinstance(m.body, bytes)


async def test_receive_times_out_with_none(qm):
    await qm.create_queue("q")
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await qm.receive("q", timeout=0.05) is None
    assert loop.time() - start >= 0.04
    assert (await qm.queue_info("q")).waiting == 0


async def test_waiting_receivers_are_served_in_arrival_order(qm):
    await qm.create_queue("q")
    order = []

    async def consumer(tag):
        m = await qm.receive("q", timeout=5)
        order.append((tag, m.body))
        await m.complete()

    tasks = []
    for tag in range(5):
        tasks.append(asyncio.create_task(consumer(tag)))
        await asyncio.sleep(0)          # each receiver starts waiting before the next
    for i in range(5):
        await qm.send("q", b"%d" % i)
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == [(i, b"%d" % i) for i in range(5)]


async def test_competing_consumers_each_message_once(qm):
    await qm.create_queue("work")
    n = 400
    seen: list[bytes] = []

    async def consumer():
        while True:
            m = await qm.receive("work", timeout=0.2)
            if m is None:
                return
            seen.append(m.body)
            await m.complete()

    consumers = [asyncio.create_task(consumer()) for _ in range(8)]
    await asyncio.gather(*(qm.send("work", b"%d" % i) for i in range(n)))
    await asyncio.wait_for(asyncio.gather(*consumers), 20)
    assert sorted(seen) == sorted(b"%d" % i for i in range(n))


async def test_abandon_redelivers_first_with_higher_count(qm):
    await qm.create_queue("q")
    await qm.send("q", b"a")
    await qm.send("q", b"b")
    m = await qm.receive("q", timeout=1)
    await m.abandon()
    again = await qm.receive("q", timeout=1)
    assert (again.body, again.delivery_count) == (b"a", 2)
    with pytest.raises(LockLost):
        await m.complete()          # the first delivery's lock is gone
    await again.complete()
    assert (await qm.receive("q", timeout=1)).body == b"b"


async def test_expired_peek_lock_counts_as_abandon(qm):
    await qm.create_queue("q", validity_duration=0.05)
    await qm.send("q", b"x")
    m = await qm.receive("q", timeout=1)
    info = await qm.queue_info("q")
    assert (info.depth, info.in_flight) == (0, 1)
    again = await qm.receive("q", timeout=2)    # comes back once the lock expires
    assert again.id == m.id and again.delivery_count == 2
    with pytest.raises(LockLost):
        await m.complete()
    with pytest.raises(LockLost):
        await m.abandon()
    await again.complete()
    assert (await qm.queue_info("q")).in_flight == 0


async def test_complete_twice_is_lock_lost(qm):
    await qm.create_queue("q")
    await qm.send("q", b"x")
    m = await qm.receive("q", timeout=1)
    await m.complete()
    with pytest.raises(LockLost):
        await m.complete()


async def test_max_length_refuses_with_queue_full(qm):
    await qm.create_queue("q", max_length=3)
    await asyncio.gather(*(qm.send("q", b"x") for _ in range(3)))
    with pytest.raises(QueueFull, match="max_length=3"):
        await qm.send("q", b"y")
    m = await qm.receive("q", timeout=1)
    with pytest.raises(QueueFull):      # a locked message still counts
        await qm.send("q", b"y")
    await m.complete()
    await qm.send("q", b"y")
    assert (await qm.queue_info("q")).depth == 3


async def test_concurrent_sends_never_exceed_max_length(qm):
    await qm.create_queue("q", max_length=10)
    results = await asyncio.gather(*(qm.send("q", b"x") for _ in range(30)), return_exceptions=True)
    assert sum(isinstance(r, str) for r in results) == 10
    assert all(isinstance(r, (str, QueueFull)) for r in results)
    assert (await qm.queue_info("q")).depth == 10


async def test_message_size_and_body_type(qm):
    await qm.create_queue("q", max_message_size=10)
    await qm.send("q", b"x" * 10)
    with pytest.raises(MessageTooLarge, match="max_message_size 10"):
        await qm.send("q", b"x" * 11)
    with pytest.raises(TypeError, match="bytes"):
        await qm.send("q", "text")
    with pytest.raises(TypeError, match="headers"):
        await qm.send("q", b"x", headers=["a"])
    with pytest.raises(TypeError, match="header names"):
        await qm.send("q", b"x", headers={1: "a"})
    with pytest.raises(TypeError, match="msgpack"):
        await qm.send("q", b"x", headers={"a": object()})
    with pytest.raises(ValueError, match="time_to_live"):
        await qm.send("q", b"x", time_to_live=0)


async def test_unknown_queues_and_subqueues(qm):
    with pytest.raises(QueueNotFound):
        await qm.send("nope", b"x")
    with pytest.raises(QueueNotFound):
        await qm.receive("nope", timeout=0)
    await qm.create_queue("q")
    with pytest.raises(ValueError, match="sub-queue"):
        await qm.send("q;poison", b"x")
    with pytest.raises(ValueError, match="unknown sub-queue"):
        await qm.receive("q;other", timeout=0)
    with pytest.raises(ValueError, match="reserved"):
        await qm.create_queue("$mine")
    with pytest.raises(ValueError, match="own dead-letter queue"):
        await qm.create_queue("x", dead_letter_queue="x")
    with pytest.raises(QueueNotFound):
        await qm.queue_info("nope")


async def test_create_is_idempotent_but_settings_must_match(qm):
    await qm.create_queue("q", max_length=5)
    await qm.create_queue("q", max_length=5)
    with pytest.raises(QueueExists):
        await qm.create_queue("q", max_length=6)
    assert (await qm.settings("q")).max_length == 5
    assert "q" in (await qm.queues()) and "$dead" in (await qm.queues())


async def test_delete_queue_drops_messages_and_wakes_receivers(qm):
    await qm.create_queue("q")
    await qm.send("q", b"x")
    locked = await qm.receive("q", timeout=1)
    await qm.create_queue("r")
    waiter = asyncio.create_task(qm.receive("r"))
    await asyncio.sleep(0.01)
    await qm.delete_queue("r")
    with pytest.raises(QueueNotFound):
        await asyncio.wait_for(waiter, 1)
    await qm.delete_queue("q")
    with pytest.raises(LockLost):
        await locked.complete()
    with pytest.raises(QueueNotFound):
        await qm.send("q", b"x")
    with pytest.raises(QueueNotFound):
        await qm.delete_queue("q")
    await qm.create_queue("q")
    assert (await qm.queue_info("q")).depth == 0


async def test_cancelled_receiver_does_not_lose_the_message(qm):
    await qm.create_queue("q")
    waiter = asyncio.create_task(qm.receive("q"))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await qm.send("q", b"x")
    m = await qm.receive("q", timeout=1)
    assert m.body == b"x" and m.delivery_count == 1


async def test_remote_address_goes_to_a_transmission_queue(qm):
    sent = await qm.send("tether://127.0.0.1:1/billing", b"x", time_to_live=60)
    assert "$xmit:127.0.0.1:1" in (await qm.queues())
    m = await qm.receive("$xmit:127.0.0.1:1", timeout=1)
    assert (m.id, m.destination) == (sent, "tether://127.0.0.1:1/billing")
    with pytest.raises(ValueError, match="bad queue address"):
        await qm.send("tether://127.0.0.1/billing", b"x")


async def test_closed_manager_refuses_work(qm):
    await qm.create_queue("q")
    waiter = asyncio.create_task(qm.receive("q"))
    await asyncio.sleep(0.01)
    await qm.close()
    with pytest.raises(tether.QueueError, match="closed"):
        await asyncio.wait_for(waiter, 1)
    with pytest.raises(tether.QueueError, match="closed"):
        await qm.send("q", b"x")
    await qm.close()   # idempotent


async def test_open_as_async_context_manager(tmp_path):
    async with tether.QueueManager.open(tmp_path / "d") as qm:
        await qm.create_queue("q")
        await qm.send("q", b"x")
    async with await tether.QueueManager.open(tmp_path / "d") as qm:
        assert (await qm.receive("q", timeout=1)).body == b"x"


async def test_nan_receive_timeout_is_refused_and_leaves_no_waiter(qm):
    await qm.create_queue("q")
    with pytest.raises(ValueError, match="timeout"):
        await qm.receive("q", timeout=float("nan"))
    assert (await qm.queue_info("q")).waiting == 0
    await qm.send("q", b"x")
    m = await qm.receive("q", timeout=0)    # not swallowed by a forgotten waiter
    assert m is not None and m.body == b"x"
