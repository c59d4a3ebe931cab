"""Message ids and de-duplication: the queue manager assigns every message's identity; a
producer's sequence is only a de-duplication key scoped to (target queue, producer); a
producer restarted with the same client id continues its sequence (Kafka's idempotent
producer: id, epoch, sequence). Nobody can suppress, overwrite or forget another
producer's messages."""
from __future__ import annotations

import asyncio
import os

import msgpack
import pytest

import tether
from tether.queue import protocol as P


@pytest.fixture
async def served(tmp_path):
    qm = await tether.QueueManager.open(tmp_path / "qm", listen="tcp://127.0.0.1:0")
    await qm.create_queue("q")
    try:
        yield qm
    finally:
        await qm.close()


class Raw:
    """A protocol client that says exactly what the test tells it to."""

    def __init__(self, session, client_id: bytes) -> None:
        self.session = session
        self.client_id = client_id
        self.rid = 0
        self.epoch = 0
        self.next_sequence = 0

    @classmethod
    async def open(cls, url: str, client_id: bytes, epoch: int = 0) -> Raw:
        session = await tether.connect(url, **P.SESSION_SETTINGS)
        raw = cls(session, client_id)
        reply = await raw.ask([P.HELLO, 0, P.VERSION, client_id, epoch, [], None, None])
        raw.epoch, raw.next_sequence = reply["epoch"], reply["next_sequence"]
        return raw

    async def ask(self, item: list):
        self.rid += 1
        item[1] = self.rid
        await self.session.send(msgpack.packb([item], use_bin_type=True))
        while True:
            for frame in await asyncio.wait_for(self.session.recv_many(), 5):
                for answer in msgpack.unpackb(frame, raw=False):
                    if answer[0] == P.REPLY and answer[1] == self.rid:
                        return answer[2]
                    if answer[0] == P.ERROR and answer[1] in (self.rid, 0):
                        raise P.error_from_code(answer[2], answer[3])

    async def send(self, sequence: int, body: bytes, queue: str = "q") -> str:
        return await self.ask([P.SEND, 0, queue, body, None, None, sequence, None])

    async def tell(self, item: list) -> None:
        await self.session.send(msgpack.packb([item], use_bin_type=True))

    async def close(self) -> None:
        await self.session.close()


async def _bodies(qm, name="q") -> list[bytes]:
    out = []
    while (m := await qm.receive(name, timeout=0)) is not None:
        out.append(m.body)
    return out


async def test_a_restarted_client_continues_its_sequence_and_loses_nothing(served):
    qm = served
    url = qm.services[0].url
    client_id = os.urandom(16)
    async with tether.QueueClient.connect(url, client_id=client_id) as first:
        ids = [await first.send("q", b"first-%d" % i) for i in range(3)]
        m = await first.receive("q", timeout=5)
        assert m.body == b"first-0"
    # the same client id again, as after a restart of its process
    async with tether.QueueClient.connect(url, client_id=client_id) as second:
        ids += [await second.send("q", b"second-%d" % i) for i in range(3)]
        got = []
        for _ in range(6):
            m = await second.receive("q", timeout=5)
            got.append((m.id, m.body))
            await m.complete()          # no LockLost: nothing collided
    assert len(set(ids)) == 6
    expected = [b"first-%d" % i for i in range(3)] + [b"second-%d" % i for i in range(3)]
    assert sorted(b for _, b in got) == sorted(expected)
    assert {i for i, _ in got} == set(ids)


async def test_a_new_instance_fences_the_old_one(served):
    url = served.services[0].url
    client_id = os.urandom(16)
    async with tether.QueueClient.connect(url, client_id=client_id) as old:
        await old.send("q", b"before")
        async with tether.QueueClient.connect(url, client_id=client_id) as new:
            assert new.epoch == old.epoch + 1
            with pytest.raises(tether.ProducerFenced):
                await old.send("q", b"from a zombie")
            await new.send("q", b"after")
    assert await _bodies(served) == [b"before", b"after"]


async def test_resent_sequences_are_queued_once(served):
    raw = await Raw.open(served.services[0].url, os.urandom(16))
    first = await raw.send(raw.next_sequence, b"x")
    again = await raw.send(raw.next_sequence, b"x")       # a resend after a lost reply
    assert first == again
    await raw.close()
    assert await _bodies(served) == [b"x"]


async def test_one_producer_cannot_suppress_or_forget_anothers_messages(served):
    url = served.services[0].url
    a = await Raw.open(url, b"producer-a-" + os.urandom(8))
    b = await Raw.open(url, b"producer-b-" + os.urandom(8))
    # b uses the sequence a is about to use: both are queued
    await b.send(a.next_sequence, b"from b")
    await a.send(a.next_sequence, b"from a")
    # b claims everything is settled: that only ever concerns b's own sequences
    await b.tell([P.SETTLED, 0, 1 << 40])
    await a.send(a.next_sequence, b"from a")              # a's resend: still de-duplicated
    await b.close()
    await a.close()
    assert sorted(await _bodies(served)) == [b"from a", b"from b"]


async def test_ids_are_assigned_by_the_queue_manager(served):
    url = served.services[0].url
    a = await Raw.open(url, b"producer-a-" + os.urandom(8))
    b = await Raw.open(url, b"producer-b-" + os.urandom(8))
    ida = await a.send(0, b"a")
    idb = await b.send(0, b"b")
    assert ida != idb
    await a.close()
    await b.close()
    assert [m for m in await _bodies(served)] == [b"a", b"b"]


async def test_de_duplication_survives_a_restart_and_a_compaction(tmp_path):
    client_id = os.urandom(16)
    async with tether.QueueManager.open(tmp_path, listen="tcp://127.0.0.1:0") as qm:
        await qm.create_queue("q")
        raw = await Raw.open(qm.services[0].url, client_id)
        epoch, sequence = raw.epoch, raw.next_sequence
        await raw.send(sequence, b"once")
        raw.session.abort()
    for compact in (False, True):
        async with tether.QueueManager.open(tmp_path, listen="tcp://127.0.0.1:0") as qm:
            raw = await Raw.open(qm.services[0].url, client_id, epoch=epoch)     # a reconnect
            assert raw.next_sequence == sequence + 1
            await raw.send(sequence, b"once")                  # its resend
            await raw.close()
            assert (await qm.queue_info("q")).depth == 1
            if compact:
                await qm.compact()
    async with tether.QueueManager.open(tmp_path) as qm:
        assert await _bodies(qm) == [b"once"]


async def test_a_stale_epoch_is_refused_at_hello(served):
    url = served.services[0].url
    client_id = os.urandom(16)
    first = await Raw.open(url, client_id)
    second = await Raw.open(url, client_id)
    assert second.epoch == first.epoch + 1
    with pytest.raises(tether.ProducerFenced):
        await Raw.open(url, client_id, epoch=first.epoch)
    await first.close()
    await second.close()
