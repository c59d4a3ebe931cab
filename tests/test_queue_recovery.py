"""What a queue manager does with its recovered state before anyone receives. Bugs the
queue simulation (tests/test_queue_sim.py) found in recovery."""
from __future__ import annotations

import asyncio

import tether


async def test_a_message_that_expired_while_the_manager_was_down_is_not_received(tmp_path):
    # forward seed 106: right after a restart a receiver got a message whose time-to-live
    # had run out meanwhile, before the expiry timer first ran
    async with tether.QueueManager.open(tmp_path / "qm") as qm:
        await qm.create_queue("q", time_to_live=0.2)
        await qm.send("q", b"stale")
    await asyncio.sleep(0.3)
    async with tether.QueueManager.open(tmp_path / "qm") as qm:
        assert await qm.receive("q", timeout=0) is None
        dead = await qm.receive("$dead", timeout=5)
        assert (dead.body, dead.dead_letter_reason) == (b"stale", "expired")
