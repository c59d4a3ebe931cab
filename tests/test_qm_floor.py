"""A client's floor (SETTLED: every send below it was answered) rides on a frame that goes
anyway. Told alone, it cost the service a journal record and a sync of its own, and the
next send waited behind that sync: two syncs per round trip for a client that awaits each
send. An idle client still tells it, alone, after SETTLE_DELAY."""
from __future__ import annotations

import asyncio

import pytest
import test_queue_producers

import tether
from tether.queue import client as client_module
from tether.queue import connection as C
from tether.queue import protocol as P

served = test_queue_producers.served        # the fixture: a manager serving queue "q"


@pytest.fixture
def frames(monkeypatch):
    """The ops of each request frame the service dispatched, in order."""
    seen: list[list[int]] = []
    dispatch = C.Connection._dispatch

    def spy(self, items):
        seen.append([item[0] for item in items if isinstance(item, list) and item])
        return dispatch(self, items)

    monkeypatch.setattr(C.Connection, "_dispatch", spy)
    return seen


@pytest.fixture
def floors(served, monkeypatch):
    """Every floor the service was told, in order."""
    told: list[int] = []
    operations = served.operations
    raise_floor = operations.raise_floor

    def spy(producer, floor):
        told.append(floor)
        return raise_floor(producer, floor)

    monkeypatch.setattr(operations, "raise_floor", spy)
    return told


def _appends(served, monkeypatch) -> list[int]:
    """Count the journal records the service appends from now on."""
    store = served.operations.store
    real = store.append
    count = [0]

    def append(record, done):
        count[0] += 1
        real(record, done)

    monkeypatch.setattr(store, "append", append)
    return count


async def test_sends_awaited_one_by_one_cost_one_record_each_and_carry_the_floor(served, frames, floors,
                                                                                 monkeypatch):
    async with tether.QueueClient.connect(served.services[0].url) as client:
        await client.send("q", b"warm")                  # HELLO and the first floor are behind us
        await asyncio.sleep(client_module.SETTLE_DELAY * 3)
        frames.clear()
        floors.clear()
        appended = _appends(served, monkeypatch)
        for n in range(20):
            await client.send("q", b"%d" % n)
        assert appended[0] == 20, f"{appended[0]} journal records for 20 sends"
        assert [P.SETTLED] not in frames, "a floor was told alone while sends went out"
        # each send after the first carried the floor below it, in the same frame
        assert floors == sorted(floors) and len(floors) >= 19
        assert all(ops[-1] == P.SETTLED and P.SEND_BATCH in ops for ops in frames[1:])


async def test_an_idle_client_tells_its_floor_after_the_delay(served, frames, floors):
    async with tether.QueueClient.connect(served.services[0].url) as client:
        await client.send("q", b"one")
        await client.send("q", b"two")
        sequence = client._next_sequence
        assert floors == [sequence - 1]                   # told with the second send
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while floors[-1] != sequence:
            assert loop.time() < deadline, f"the floor {sequence} was never told: {floors}"
            await asyncio.sleep(0.01)
        assert frames[-1] == [P.SETTLED]                  # alone: nothing else went
        count = len(frames)
        await asyncio.sleep(client_module.SETTLE_DELAY * 3)
        assert len(frames) == count, "told again with nothing new to tell"


async def test_close_tells_the_last_floor(served, floors):
    client = await tether.QueueClient.connect(served.services[0].url)
    await client.send("q", b"one")
    sequence = client._next_sequence
    await client.close()
    assert floors and floors[-1] == sequence
