"""QueueOperations, the queue core's asyncio glue: what it must capture before it waits for
the journal. Bugs the queue simulation (tests/test_queue_sim.py) found in it."""
from __future__ import annotations

import asyncio

import tether


async def test_concurrent_hellos_of_one_producer_get_their_own_epochs(tmp_path):
    # producers seed 54: two instances of one producer id said HELLO (epoch 0) while the
    # other's epoch was being journaled; both were answered with the newer epoch, so the
    # older instance was not fenced and both numbered the same sequences
    async with tether.QueueManager.open(tmp_path / "qm") as qm:
        name = b"producer-under-test"
        first, second = await asyncio.gather(qm.operations.open_producer(name, 0),
                                             qm.operations.open_producer(name, 0))
        assert first[0] is second[0]
        assert (first[1], second[1]) == (1, 2)
        assert second[0].epoch == 2
