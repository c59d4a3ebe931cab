"""Priority (0..7, default 3, higher first, FIFO within one) and scheduled delivery (`delay=`
or `deliver_at=`, invisible until then): in the sans-IO core on a simulated clock, through the
embedded manager and a QueueClient, across restarts and compaction, and store-and-forward."""
from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

import tether
from tether.queue.core import QueueCore, QueueSettings
from tether.queue.core import records as R
from tether.queue.core.replay import ReplayState


def _written(core: QueueCore, now: float) -> None:
    while (cut := core.cut()) is not None:
        core.written(cut[0], now)


def _core(**settings) -> QueueCore:
    core = QueueCore(b"priority-test-qm", journaled=True)
    core.start()
    core.define("q", QueueSettings.from_kwargs(**settings))
    _written(core, 0.0)
    return core


def _send(core: QueueCore, body: bytes, now: float, **options) -> None:
    core.send_one(core.prepare("q", body, now, **options), now)
    _written(core, now)


def _bodies(core: QueueCore, now: float) -> list[bytes]:
    out = []
    while (entry := core.take("q", now)) is not None:
        out.append(entry.body)
    return out


# ---- the core, on a simulated clock ----

def test_higher_priority_first_fifo_within_one():
    core = _core()
    for body, priority in ((b"a3", 3), (b"b0", 0), (b"c7", 7), (b"d3", 3), (b"e7", 7), (b"f5", 5)):
        _send(core, body, 1.0, priority=priority)
    assert [e.body for e in core.peek("q", 10, 1.0)] == [b"c7", b"e7", b"f5", b"a3", b"d3", b"b0"]
    assert _bodies(core, 1.0) == [b"c7", b"e7", b"f5", b"a3", b"d3", b"b0"]


def test_an_abandoned_message_comes_back_first_within_its_priority():
    core = _core()
    for body, priority in ((b"low", 1), (b"high", 6), (b"high2", 6)):
        _send(core, body, 1.0, priority=priority)
    high = core.take("q", 1.0)
    core.abandon(high, high.tag, 1.1)
    _written(core, 1.1)
    assert _bodies(core, 1.2) == [b"high", b"high2", b"low"]


def test_a_scheduled_message_is_invisible_until_its_time():
    core = _core()
    _send(core, b"later", 10.0, delay=5)
    _send(core, b"now", 10.0)
    assert core.info("q").depth == 1 and core.info("q").scheduled == 1
    assert [e.body for e in core.peek("q", 10, 10.0)] == [b"now"]
    assert _bodies(core, 12.0) == [b"now"]
    assert core.next_deadline() == 15.0
    core.handle_timer(14.9)
    assert core.take("q", 14.9) is None
    core.handle_timer(15.0)
    assert core.info("q").scheduled == 0
    assert _bodies(core, 15.0) == [b"later"]


def test_a_scheduled_message_goes_to_a_waiting_receiver_when_due():
    core = _core()
    handed = []

    class Waiter:
        def hand(self, entry):
            handed.append(entry.body)

        def fail(self, error):
            raise AssertionError(error)

    _send(core, b"at-20", 0.0, deliver_at=20.0)
    core.wait("q", Waiter())
    core.handle_timer(19.0)
    assert handed == []
    core.handle_timer(20.0)
    assert handed == [b"at-20"]


def test_due_messages_keep_priority_order():
    core = _core()
    _send(core, b"p1", 0.0, delay=1, priority=1)
    _send(core, b"p7", 0.0, delay=2, priority=7)
    _send(core, b"p3", 0.0)
    core.handle_timer(2.0)
    assert _bodies(core, 2.0) == [b"p7", b"p3", b"p1"]


def test_a_message_whose_time_to_live_ends_before_its_delivery_time_is_dead_lettered():
    core = _core(time_to_live=5)
    _send(core, b"too late", 0.0, delay=10)
    core.handle_timer(10.0)
    _written(core, 10.0)
    core.handle_timer(10.0)
    _written(core, 10.0)
    assert core.take("q", 10.0) is None
    assert core.info("q").dead == 1
    dead = core.take("$dead", 10.0)
    assert dead.dead_letter_reason == "expired" and dead.deliver_at is None    # a dead letter waits for nothing


def test_purge_leaves_scheduled_messages_and_delete_drops_them():
    core = _core()
    _send(core, b"ready", 0.0)
    _send(core, b"later", 0.0, delay=100)
    count, record = core.purge("q", 0.0)
    _written(core, 0.0)
    assert count == 1 and core.info("q").scheduled == 1
    core.delete("q")
    _written(core, 0.0)
    assert not core.has_queue("q")


def test_priority_and_delivery_time_survive_replay_and_snapshot():
    core = _core()
    _send(core, b"p0", 0.0, priority=0)
    _send(core, b"later", 0.0, deliver_at=50.0, priority=6)
    _send(core, b"p7", 0.0, priority=7)
    state = ReplayState()
    for op in core.snapshot():
        state.apply(op)
    again = QueueCore(b"priority-test-qm", journaled=True)
    again.load(state, 10.0)
    assert again.info("q").scheduled == 1
    assert [e.body for e in again.peek("q", 10, 10.0)] == [b"p7", b"p0"]
    again.handle_timer(50.0)
    assert [e.body for e in again.peek("q", 10, 50.0)] == [b"p7", b"later", b"p0"]


def test_a_format_2_record_reads_with_the_defaults():
    state = ReplayState()
    state.apply([R.IDENTITY, b"old-journal-id", 5, 1, 2])
    state.apply([R.DEFINE, "q", QueueSettings().as_dict()])
    state.apply([R.ENQUEUE, "q", [1, "id-1", b"old", None, 0.0, None, 0, 0, None, None, None, None, 0, 0, None]])
    entry = state.entries["q"][1]
    assert (entry.priority, entry.deliver_at) == (3, None)


@pytest.mark.parametrize("options, error, word", [
    ({"priority": 8}, ValueError, "priority"), ({"priority": -1}, ValueError, "priority"),
    ({"priority": "7"}, TypeError, "priority"), ({"priority": True}, TypeError, "priority"),
    ({"priority": 3.0}, TypeError, "priority"),
    ({"delay": -1}, ValueError, "delay"), ({"delay": float("inf")}, ValueError, "delay"),
    ({"delay": "5"}, TypeError, "delay"), ({"deliver_at": "soon"}, TypeError, "deliver_at"),
    ({"deliver_at": float("nan")}, ValueError, "deliver_at"),
    ({"deliver_at": datetime(2030, 1, 1)}, ValueError, "deliver_at"),
    ({"delay": 1, "deliver_at": 5.0}, ValueError, "delay or deliver_at"),
])
def test_bad_options_are_refused_naming_them(options, error, word):
    core = _core()
    with pytest.raises(error, match=word):
        core.prepare("q", b"x", 0.0, **options)


# ---- embedded and through the service ----


async def test_priority_end_to_end(api):
    qm, handle = api
    await handle.create_queue("q")
    await handle.send("q", b"normal")
    await handle.send("q", b"urgent", priority=7)
    await handle.send_many("q", [b"bulk1", b"bulk2"], priority=0)
    async with handle.transaction() as tx:
        await tx.send("q", b"tx5", priority=5)
    got = [m for m in await handle.peek("q", 10)]
    assert [m.body for m in got] == [b"urgent", b"tx5", b"normal", b"bulk1", b"bulk2"]
    assert [m.priority for m in got] == [7, 5, 3, 0, 0]
    m = await handle.receive("q", timeout=0)
    assert (m.body, m.priority) == (b"urgent", 7)
    await m.complete()
    with pytest.raises(ValueError, match="priority"):
        await handle.send("q", b"x", priority=9)


async def test_scheduled_delivery_end_to_end(api):
    qm, handle = api
    await handle.create_queue("q")
    sent = time.time()      # both are due at least 0.3 s after this
    await handle.send("q", b"in 0.3 s", delay=0.3)
    await handle.send("q", b"at", deliver_at=datetime.now(UTC) + timedelta(seconds=0.3))
    assert await handle.receive("q", timeout=0) is None
    info = await handle.queue_info("q")
    assert (info["depth"], info["scheduled"]) == (0, 2)
    first = await handle.receive("q", timeout=5)
    second = await handle.receive("q", timeout=5)
    # never early (timed from before the sends: a loaded machine only makes it later);
    # 5 ms for deadlines kept in whole microseconds and timer granularity
    assert time.time() - sent >= 0.3 - 0.005
    assert {first.body, second.body} == {b"in 0.3 s", b"at"}
    with pytest.raises(ValueError, match="delay or deliver_at"):
        await handle.send("q", b"x", delay=1, deliver_at=time.time() + 1)


async def test_priority_and_schedule_survive_restart_and_compaction(tmp_path):
    async with tether.QueueManager.open(tmp_path / "qm") as qm:
        await qm.create_queue("q")
        await qm.send("q", b"p1", priority=1)
        await qm.send("q", b"p6", priority=6)
        await qm.send("q", b"later", delay=3600, priority=7)
    async with tether.QueueManager.open(tmp_path / "qm") as qm:
        assert [m.body for m in await qm.peek("q", 10)] == [b"p6", b"p1"]
        assert (await qm.queue_info("q"))["scheduled"] == 1
        await qm.compact()
    async with tether.QueueManager.open(tmp_path / "qm") as qm:
        assert [(m.body, m.priority) for m in await qm.peek("q", 10)] == [(b"p6", 6), (b"p1", 1)]
        info = await qm.queue_info("q")
        assert (info["depth"], info["scheduled"]) == (2, 1)


async def test_priority_and_schedule_through_store_and_forward(tmp_path):
    async with tether.QueueManager.open(tmp_path / "target", listen="tcp://127.0.0.1:0") as target, \
            tether.QueueManager.open(tmp_path / "source") as source:
        await target.create_queue("orders")
        host, port = target.services[0].address[:2]
        address = f"tether://{host}:{port}/orders"
        await source.send(address, b"later", delay=0.5, priority=7)
        await source.send(address, b"low", priority=1)
        await source.send(address, b"high", priority=6)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while (await target.queue_info("orders"))["depth"] + (await target.queue_info("orders"))["scheduled"] < 3:
            assert loop.time() < deadline
            await asyncio.sleep(0.02)
        assert [m.body for m in await target.peek("orders", 10)][:2] in ([b"high", b"low"], [b"later", b"high"])
        m = await target.receive("orders", timeout=5)
        got = [m.body]
        await m.complete()
        while len(got) < 3:
            m = await target.receive("orders", timeout=5)
            got.append(m.body)
            await m.complete()
        assert got[:2] == [b"high", b"low"] and got[2] == b"later"
