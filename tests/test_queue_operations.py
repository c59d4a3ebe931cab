"""QueueOperations, the queue core's asyncio glue: what it must capture before it waits for
the journal. Bugs the queue simulation (tests/test_queue_sim.py) found in it."""
from __future__ import annotations

import asyncio

import pytest

import tether
from tether.queue.forwarding import ForwardEngine


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


async def test_take_many_takes_what_is_ready_up_to_the_count_and_the_bytes(tmp_path):
    async with tether.QueueManager.open(tmp_path / "qm") as qm:
        await qm.create_queue("q")
        ops = qm.operations
        assert await ops.take_many("q", 10, 1 << 20) == []
        await qm.send_many("q", [b"%02d" % i + b"." * 8 for i in range(20)])     # 10 bytes each
        taken = await ops.take_many("q", 5, 1 << 20)
        assert [e.body[:2] for e in taken] == [b"00", b"01", b"02", b"03", b"04"]
        assert len({e.tag for e in taken}) == 5 and all(e.tag for e in taken)
        assert [e.body[:2] for e in await ops.take_many("q", 100, 25)] == [b"05", b"06", b"07"]   # past 25 bytes: stop
        assert (await qm.queue_info("q")).in_flight == 8
        for entry in taken:
            await ops.complete(entry, entry.tag)
        assert (await qm.queue_info("q")).depth == 12
        with pytest.raises(tether.QueueNotFound):
            await ops.take_many("nope", 1, 100)


def test_the_forward_window_says_how_much_room_it_has():
    engine = ForwardEngine("$xmit:x", max_in_flight=3)

    class _Entry:
        def __init__(self, sequence):
            self.sequence, self.tag = sequence, sequence

    assert engine.room(0.0) == 3
    engine.sent(_Entry(1), 0.0)
    engine.sent(_Entry(2), 0.0)
    assert engine.room(0.0) == 1 and engine.has_room(0.0)
    engine.sent(_Entry(3), 0.0)
    assert engine.room(0.0) == 0 and not engine.has_room(0.0)
    engine.rules.paused_until = 10.0
    engine.in_flight.clear()
    assert engine.room(5.0) == 0 and engine.room(10.0) == 3
