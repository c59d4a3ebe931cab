"""What store-and-forward builds on: transmission queues and dead-lettering in transit
(the target side's de-duplication is in test_queue_producers.py)."""
from __future__ import annotations

import pytest

import tether


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
        await qm.operations.dead_letter(m._entry, m._tag, "rejected")
        dead = await qm.receive("$dead", timeout=1)
        assert (dead.id, dead.dead_letter_reason, dead.dead_letter_source) == \
            (sent, "rejected", "tether://127.0.0.1:1/billing")
        with pytest.raises(tether.LockLost):
            await qm.operations.dead_letter(m._entry, m._tag, "rejected")


async def test_a_transmission_queue_can_be_deleted_and_its_forwarder_stops(tmp_path):
    async with tether.QueueManager.open(tmp_path / "qm") as qm:
        await qm.send("tether://127.0.0.1:1/billing", b"never delivered")
        assert "$xmit:127.0.0.1:1" in (await qm.queues()) and len(qm.forwarders) == 1
        await qm.delete_queue("$xmit:127.0.0.1:1")
        assert "$xmit:127.0.0.1:1" not in (await qm.queues()) and qm.forwarders == []
        with pytest.raises(tether.QueueNotFound):
            await qm.delete_queue("$xmit:127.0.0.1:1")
        with pytest.raises(ValueError):
            await qm.delete_queue("$dead")
    async with tether.QueueManager.open(tmp_path / "qm") as qm:      # for good
        assert "$xmit:127.0.0.1:1" not in (await qm.queues()) and qm.forwarders == []
