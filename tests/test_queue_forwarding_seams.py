"""What store-and-forward (issue 5) builds on: transmission queues, the target side's
de-duplication by message id (surviving a restart), dead-lettering in transit."""
from __future__ import annotations

import asyncio
import time

import pytest

import tether
from tether import QueueNotFound


async def test_forwarded_message_keeps_its_fields_and_is_accepted_once(tmp_path):
    d = tmp_path / "qm"
    now = time.time()
    async with tether.QueueManager.open(d) as qm:
        await qm.create_queue("orders")
        assert await qm.accept_forwarded("orders", "abc-1", b"x", headers={"h": 1},
                                         enqueued_at=now - 5, expires_at=now + 60)
        assert not await qm.accept_forwarded("orders", "abc-1", b"x")
        # concurrent duplicates: exactly one is stored
        results = await asyncio.gather(*(qm.accept_forwarded("orders", "abc-2", b"y") for _ in range(5)))
        assert sorted(results) == [False] * 4 + [True]
        assert (await qm.queue_info("orders")).depth == 2
        m = await qm.receive("orders", timeout=1)
        assert (m.id, m.body, m.headers) == ("abc-1", b"x", {"h": 1})
        assert m.enqueued_at == pytest.approx(now - 5) and m.expires_at == pytest.approx(now + 60)
        await m.complete()
    async with tether.QueueManager.open(d) as qm:       # the dedupe record survives a restart
        assert not await qm.accept_forwarded("orders", "abc-1", b"x")
        assert not await qm.accept_forwarded("orders", "abc-2", b"y")
        await qm.compact()
    async with tether.QueueManager.open(d) as qm:       # ... and a compaction
        assert not await qm.accept_forwarded("orders", "abc-1", b"x")
        assert await qm.accept_forwarded("orders", "abc-3", b"z")


async def test_forwarding_to_an_unknown_queue():
    async with tether.QueueManager.open() as qm:
        with pytest.raises(QueueNotFound):
            await qm.accept_forwarded("nope", "id-1", b"x")


async def test_not_exactly_once_queue_does_not_dedupe():
    async with tether.QueueManager.open() as qm:
        await qm.create_queue("best", exactly_once=False)
        assert await qm.accept_forwarded("best", "id-1", b"x")
        assert await qm.accept_forwarded("best", "id-1", b"x")
        assert (await qm.queue_info("best")).depth == 2


async def test_expiry_in_transit_dead_letters_with_the_destination_as_source(tmp_path):
    async with tether.QueueManager.open(tmp_path / "qm") as qm:
        sent = await qm.send("tether://127.0.0.1:1/billing", b"x", time_to_live=0.05)
        dead = await qm.receive("$dead", timeout=2)
        assert (dead.id, dead.dead_letter_reason) == (sent, "expired")
        assert dead.dead_letter_source == "tether://127.0.0.1:1/billing"
        assert (await qm.queue_info("$xmit:127.0.0.1:1")).depth == 0


async def test_forwarder_can_dead_letter_a_rejected_message():
    async with tether.QueueManager.open() as qm:
        sent = await qm.send("tether://127.0.0.1:1/billing", b"x")
        m = await qm.receive("$xmit:127.0.0.1:1", timeout=1)
        await qm.dead_letter_message(m, "rejected")
        dead = await qm.receive("$dead", timeout=1)
        assert (dead.id, dead.dead_letter_reason, dead.dead_letter_source) == \
            (sent, "rejected", "tether://127.0.0.1:1/billing")
        with pytest.raises(tether.LockLost):
            await qm.dead_letter_message(m, "rejected")


async def test_forgotten_ids_are_accepted_again(tmp_path):
    d = tmp_path / "qm"
    async with tether.QueueManager.open(d) as qm:
        await qm.create_queue("orders")
        assert await qm.accept_forwarded("orders", "a", b"x")
        assert await qm.accept_forwarded("orders", "b", b"x")
        await qm.forget_forwarded(["a"])
    async with tether.QueueManager.open(d) as qm:
        assert await qm.accept_forwarded("orders", "a", b"x")
        assert not await qm.accept_forwarded("orders", "b", b"x")


async def test_dedupe_window_expires_ids(tmp_path):
    async with tether.QueueManager.open(tmp_path / "qm", dedupe_window=0.05) as qm:
        await qm.create_queue("orders")
        assert await qm.accept_forwarded("orders", "a", b"x")
        await asyncio.sleep(0.1)
        assert await qm.accept_forwarded("orders", "b", b"x")    # prunes "a"
        assert await qm.accept_forwarded("orders", "a", b"x")
