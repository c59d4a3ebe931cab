"""Time-to-live to the dead-letter queues, and poison handling with exact attempt counts.

Delays are tiny (tens of milliseconds) and every wait is bounded.
"""
from __future__ import annotations

import asyncio

import pytest

from tether import PoisonMessage


async def wait_for_info(qm, name, key, value, timeout=3.0):
    """Poll queue_info until info[key] == value (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        info = await qm.queue_info(name)
        if info[key] == value:
            return info
        assert loop.time() < deadline, f"{name}: {key} is {info[key]}, expected {value}"
        await asyncio.sleep(0.01)


async def fail_until_poison(qm, name, limit=100, timeout=0.5):
    """Receive and abandon until nothing more comes within `timeout`; the number of deliveries."""
    deliveries = 0
    while deliveries < limit:
        try:
            m = await qm.receive(name, timeout=timeout)
        except PoisonMessage:
            break
        if m is None:
            break
        deliveries += 1
        assert m.delivery_count == deliveries
        await m.abandon()
    return deliveries


async def test_ttl_moves_to_system_dead_letter_queue(qm):
    await qm.create_queue("orders", time_to_live=0.05)
    sent = await qm.send("orders", b"late", headers={"k": "v"})
    keep = await qm.send("orders", b"fresh", time_to_live=60)
    dead = await qm.receive("$dead", timeout=2)
    assert dead is not None
    assert (dead.id, dead.body, dead.headers) == (sent, b"late", {"k": "v"})
    assert (dead.dead_letter_reason, dead.dead_letter_source) == ("expired", "orders")
    assert dead.expires_at is None
    info = await qm.queue_info("orders")
    assert (info.depth, info.dead) == (1, 1)
    await dead.complete()
    assert (await qm.queue_info("orders")).dead == 0
    m = await qm.receive("orders", timeout=1)
    assert m.id == keep


async def test_ttl_to_custom_dead_letter_queue(qm):
    await qm.create_queue("dlq")
    await qm.create_queue("orders", dead_letter_queue="dlq")
    sent = await qm.send("orders", b"x", time_to_live=0.05)
    dead = await qm.receive("dlq", timeout=2)
    assert (dead.id, dead.dead_letter_reason, dead.dead_letter_source) == (sent, "expired", "orders")
    assert await qm.receive("$dead", timeout=0) is None


async def test_ttl_with_dead_letter_none_drops(qm):
    await qm.create_queue("orders", dead_letter_queue="none", time_to_live=0.05)
    await qm.send("orders", b"x")
    await wait_for_info(qm, "orders", "depth", 0)
    assert await qm.receive("$dead", timeout=0.1) is None


async def test_ttl_of_a_locked_message_applies_when_it_comes_back(qm):
    await qm.create_queue("orders", time_to_live=0.05)
    await qm.send("orders", b"x")
    m = await qm.receive("orders", timeout=1)
    await asyncio.sleep(0.1)
    await m.abandon()                   # expired meanwhile: no redelivery, dead-lettered
    assert await qm.receive("orders", timeout=0) is None
    dead = await qm.receive("$dead", timeout=1)
    assert dead.dead_letter_reason == "expired"


async def test_many_expiries_in_and_out_of_order(qm):
    await qm.create_queue("orders")
    ttls = [0.2, 0.05, 0.1, 0.05, 30, 0.15]
    ids = [await qm.send("orders", b"%d" % i, time_to_live=t) for i, t in enumerate(ttls)]
    expired = []
    while len(expired) < 5:
        m = await qm.receive("$dead", timeout=2)
        assert m is not None
        expired.append(m.id)
        await m.complete()
    assert set(expired) == {i for i, t in zip(ids, ttls) if t < 1}
    assert (await qm.receive("orders", timeout=0)).id == ids[4]


@pytest.mark.parametrize("retries, cycles", [(0, 0), (2, 0), (1, 2), (3, 1)])
async def test_move_after_exact_attempts(qm, retries, cycles):
    await qm.create_queue("q", receive_retry_count=retries, max_retry_cycles=cycles,
                          retry_cycle_delay=0.05, receive_error_handling="move")
    sent = await qm.send("q", b"bad")
    deliveries = await fail_until_poison(qm, "q")
    assert deliveries == (retries + 1) * (cycles + 1)
    info = await qm.queue_info("q")
    assert (info.depth, info.retrying, info.poison, info.faulted) == (0, 0, 1, False)
    m = await qm.receive("q;poison", timeout=1)
    assert m.id == sent and m.dead_letter_reason is None
    await m.complete()
    assert (await qm.queue_info("q")).poison == 0


async def test_lock_expiry_counts_toward_poison(qm):
    await qm.create_queue("q", receive_retry_count=1, max_retry_cycles=1, retry_cycle_delay=0.05,
                          validity_duration=0.05, receive_error_handling="drop")
    await qm.send("q", b"bad")
    deliveries = 0
    while True:
        m = await qm.receive("q", timeout=0.5)
        if m is None:
            break
        deliveries += 1
        assert m.delivery_count == deliveries     # never completed: the lock just expires
    assert deliveries == 4
    info = await qm.queue_info("q")
    assert (info.depth, info.in_flight, info.retrying, info.poison) == (0, 0, 0, 0)


async def test_drop_after_exact_attempts(qm):
    await qm.create_queue("q", receive_retry_count=2, max_retry_cycles=1, retry_cycle_delay=0.05,
                          receive_error_handling="drop")
    await qm.send("q", b"bad")
    assert await fail_until_poison(qm, "q") == 6
    info = await qm.queue_info("q")
    assert (info.depth, info.retrying, info.poison, info.dead) == (0, 0, 0, 0)
    assert await qm.receive("$dead", timeout=0) is None


async def test_reject_dead_letters_with_reason_rejected(qm):
    await qm.create_queue("q", receive_retry_count=1, max_retry_cycles=0, receive_error_handling="reject")
    sent = await qm.send("q", b"bad")
    assert await fail_until_poison(qm, "q") == 2
    dead = await qm.receive("$dead", timeout=1)
    assert (dead.id, dead.dead_letter_reason, dead.dead_letter_source) == (sent, "rejected", "q")


async def test_fault_stops_the_queue_until_the_poison_message_is_handled(qm):
    await qm.create_queue("q", receive_retry_count=1, max_retry_cycles=1, retry_cycle_delay=0.05,
                          receive_error_handling="fault")
    bad = await qm.send("q", b"bad")
    assert await fail_until_poison(qm, "q") == 4
    good = await qm.send("q", b"good")
    with pytest.raises(PoisonMessage) as caught:
        await qm.receive("q", timeout=0)
    assert caught.value.message_id == bad and caught.value.queue == "q"
    assert bad in str(caught.value)
    info = await qm.queue_info("q")
    assert (info.faulted, info.poison, info.depth) == (True, 1, 1)
    # a receiver already waiting is woken with the error too
    await qm.create_queue("r", receive_retry_count=0, max_retry_cycles=0, receive_error_handling="fault")
    await qm.send("r", b"bad")
    m = await qm.receive("r", timeout=1)
    waiting = asyncio.create_task(qm.receive("r", timeout=5))
    await asyncio.sleep(0.01)
    await m.abandon()
    with pytest.raises(PoisonMessage):
        await asyncio.wait_for(waiting, 2)
    # handling the poison message resumes delivery
    p = await qm.receive("q;poison", timeout=1)
    assert p.id == bad
    await p.complete()
    m = await qm.receive("q", timeout=1)
    assert m.id == good


async def test_poison_in_retry_never_blocks_the_messages_behind_it(qm):
    await qm.create_queue("q", receive_retry_count=0, max_retry_cycles=1, retry_cycle_delay=0.3,
                          receive_error_handling="move")
    await qm.send("q", b"bad")
    for i in range(3):
        await qm.send("q", b"ok%d" % i)
    m = await qm.receive("q", timeout=1)
    assert m.body == b"bad"
    await m.abandon()                   # to ;retry for 0.3 s
    info = await qm.queue_info("q")
    assert (info.retrying, info.depth) == (1, 3)
    for i in range(3):                  # the rest flows meanwhile, in order
        m = await qm.receive("q", timeout=0.1)
        assert m.body == b"ok%d" % i
        await m.complete()
    m = await qm.receive("q", timeout=2)  # back from ;retry after the delay
    assert m.body == b"bad" and m.delivery_count == 2
    await m.abandon()
    await wait_for_info(qm, "q", "poison", 1)


async def test_retry_subqueue_is_readable(qm):
    await qm.create_queue("q", receive_retry_count=0, max_retry_cycles=1, retry_cycle_delay=30)
    sent = await qm.send("q", b"bad")
    await (await qm.receive("q", timeout=1)).abandon()
    m = await qm.receive("q;retry", timeout=1)
    assert m.id == sent and m.retry_at is not None
    await m.abandon()                   # back to ;retry, no poison accounting there
    assert (await qm.queue_info("q")).retrying == 1
    m = await qm.receive("q;retry", timeout=1)
    await m.complete()
    info = await qm.queue_info("q")
    assert (info.retrying, info.depth, info.poison) == (0, 0, 0)
