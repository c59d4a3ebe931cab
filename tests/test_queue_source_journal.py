"""The source journal: a copy of each forwarded message, once its target acknowledged it,
stays in the sender's $journal, bounded by journal_max_length and journal_time_to_live; per
send (journal=True) or for the whole manager (source_journal=True); embedded, through a
client of the service, across restarts, and in the sans-IO core on a simulated clock."""
from __future__ import annotations

import asyncio

import pytest

import tether
from tether.queue.core import QueueCore, QueueSettings
from tether.queue.core.replay import ReplayState
from tether.queue.core.source_journal import JournalSettings
from tether.queue.core.system_queues import settings_for

XMIT = "$xmit:target:7600"
DESTINATION = "tether://target:7600/orders"


def _written(core: QueueCore, now: float) -> None:
    while (cut := core.cut()) is not None:
        core.written(cut[0], now)


def _core(**journal) -> QueueCore:
    core = QueueCore(b"journal-test-qm1", journaled=True, journal=JournalSettings.create(**journal))
    core.start()
    core.define(XMIT, settings_for(XMIT))
    core.define("local", QueueSettings())
    _written(core, 0.0)
    return core


def _forward_one(core: QueueCore, body: bytes, now: float, **options) -> None:
    """Send to the remote queue, then the forwarder's take and the target's acceptance."""
    core.send_one(core.prepare(XMIT, body, now, destination=DESTINATION, **options), now)
    _written(core, now)
    entry = core.take(XMIT, now)
    core.forwarded_many([(entry, entry.tag)], now)
    _written(core, now)


def _journal(core: QueueCore, now: float = 0.0) -> list[bytes]:
    return [e.body for e in core.peek("$journal", 1000, now)]


def test_an_acknowledged_message_sent_with_journal_stays_in_the_journal():
    core = _core()
    _forward_one(core, b"kept", 1.0, journal=True)
    _forward_one(core, b"not kept", 1.0)
    assert _journal(core) == [b"kept"]
    assert core.info(XMIT).depth == 0
    copy = core.peek("$journal", 1, 1.0)[0]
    assert copy.destination == DESTINATION and copy.expires_at == 1.0 + 86400


def test_source_journal_for_the_whole_manager_and_a_send_may_say_no():
    core = _core(source_journal=True)
    _forward_one(core, b"kept", 1.0)
    _forward_one(core, b"not kept", 1.0, journal=False)
    assert _journal(core) == [b"kept"]
    # source_journal is about forwarded messages: a local send is not journaled ...
    core.send_one(core.prepare("local", b"local", 1.0), 1.0)
    _written(core, 1.0)
    assert _journal(core) == [b"kept"]
    # ... unless it asks: queued is acknowledged, the copy is in the same record
    first = core.records._next
    core.send_one(core.prepare("local", b"asked", 1.0, journal=True), 1.0)
    _written(core, 1.0)
    assert core.records._next == first + 1
    assert _journal(core) == [b"kept", b"asked"]
    assert core.peek("$journal", 10, 1.0)[1].destination == "local"
    assert [e.body for e in core.peek("local", 10, 1.0)] == [b"local", b"asked"]
    with pytest.raises(TypeError, match="journal"):
        core.prepare("local", b"x", 1.0, journal="yes")


def test_journal_max_length_keeps_the_newest():
    core = _core(journal_max_length=3)
    for i in range(5):
        _forward_one(core, b"%d" % i, 1.0 + i, journal=True)
    assert _journal(core) == [b"2", b"3", b"4"]


def test_journal_time_to_live_drops_old_copies():
    core = _core(journal_time_to_live=10)
    _forward_one(core, b"old", 1.0, journal=True)
    _forward_one(core, b"new", 8.0, journal=True)
    core.handle_timer(11.0)
    _written(core, 11.0)
    assert _journal(core, 11.0) == [b"new"]
    assert core.info("$dead").depth == 0            # dropped, not dead-lettered


def test_the_journal_survives_replay_and_a_lower_max_length_trims_it():
    core = _core()
    for i in range(4):
        _forward_one(core, b"%d" % i, 1.0, journal=True)
    state = ReplayState()
    for op in core.snapshot():
        state.apply(op)
    again = QueueCore(b"journal-test-qm1", journaled=True, journal=JournalSettings.create(journal_max_length=2))
    again.load(state, 2.0)
    _written(again, 2.0)
    assert _journal(again, 2.0) == [b"2", b"3"]


def test_a_refused_forward_is_not_journaled():
    core = _core()
    core.send_one(core.prepare(XMIT, b"refused", 1.0, destination=DESTINATION, journal=True), 1.0)
    _written(core, 1.0)
    entry = core.take(XMIT, 1.0)
    core.dead_letter(entry, entry.tag, "queue-not-found", 1.0)
    _written(core, 1.0)
    assert _journal(core) == [] and core.info("$dead").depth == 1


@pytest.mark.parametrize("settings, error", [
    ({"source_journal": 1}, TypeError), ({"journal_max_length": 0}, ValueError),
    ({"journal_max_length": 1.5}, TypeError), ({"journal_time_to_live": 0}, ValueError),
    ({"journal_time_to_live": float("inf")}, ValueError), ({"journal_time_to_live": "1"}, TypeError),
])
def test_bad_settings_are_refused_naming_them(settings, error, tmp_path):
    name = next(iter(settings))
    with pytest.raises(error, match=name):
        JournalSettings.create(**settings)
    with pytest.raises(error, match=name):
        tether.QueueManager.open(tmp_path / "qm", **settings)


# ---- end to end ----

async def _until(check, timeout=10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.fixture(params=["journal", "postgres"])
def source_store(request, tmp_path):
    """Where the sending queue manager keeps its queues: its journal, or a PostgreSQL
    database (the same meaning on both)."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return tmp_path / "source"


async def test_journal_end_to_end_embedded_and_through_the_service(tmp_path, source_store):
    async with tether.QueueManager.open(tmp_path / "target", listen="tcp://127.0.0.1:0") as target, \
            tether.QueueManager.open(source_store, listen="tcp://127.0.0.1:0",
                                     journal_max_length=100) as source:
        await target.create_queue("orders")
        await source.create_queue("local")
        host, port = target.services[0].address[:2]
        address = f"tether://{host}:{port}/orders"
        await source.send(address, b"embedded", journal=True)
        await source.send(address, b"unjournaled")
        async with tether.QueueClient.connect(source.services[0].url) as client:
            await client.send(address, b"via client", journal=True)
            await client.send_many(address, [b"many1", b"many2"], journal=True)
            await client.send("local", b"local", journal=True)     # queued: acknowledged at once
            async with client.transaction() as tx:
                await tx.send("local", b"local tx", journal=True)

            async def all_journaled():
                return (await client.queue_info("$journal"))["depth"] == 6

            await _until(all_journaled)
            copies = await client.peek("$journal", 10)
            assert sorted(m.body for m in copies) == [b"embedded", b"local", b"local tx", b"many1", b"many2",
                                                      b"via client"]
            assert (await client.queue_info("local"))["depth"] == 2
        assert (await target.queue_info("orders"))["depth"] == 5
    async with tether.QueueManager.open(source_store) as source:
        assert (await source.queue_info("$journal"))["depth"] == 6     # durable
        msg = await source.receive("$journal", timeout=1)
        await msg.complete()                                         # read and cleared like any queue
        assert (await source.purge_queue("$journal")) == 5



async def test_journal_bounds_and_a_refusal_on_every_store(tmp_path, source_store):
    """journal_max_length keeps the newest copies, journal_time_to_live drops old ones (not
    to $dead), and a forward the target refuses is dead-lettered, not journaled."""
    async with tether.QueueManager.open(tmp_path / "target", listen="tcp://127.0.0.1:0") as target, \
            tether.QueueManager.open(source_store, source_journal=True, journal_max_length=3,
                                     journal_time_to_live=5.0) as source:
        await target.create_queue("orders")
        host, port = target.services[0].address[:2]
        for i in range(5):
            await source.send(f"tether://{host}:{port}/orders", b"%d" % i)
        await source.send(f"tether://{host}:{port}/missing", b"refused")

        async def settled():
            return (await source.queue_info("$dead"))["depth"] == 1 \
                and (await target.queue_info("orders"))["depth"] == 5 \
                and (await source.queue_info(f"$xmit:{host}:{port}"))["depth"] == 0 \
                and (await source.queue_info("$journal"))["depth"] == 3

        await _until(settled)
        assert [m.body for m in await source.peek("$journal", 10)] == [b"2", b"3", b"4"]
        copy = (await source.peek("$journal", 1))[0]
        assert copy.destination == f"tether://{host}:{port}/orders"

        async def expired():
            return (await source.queue_info("$journal"))["depth"] == 0

        await _until(expired, timeout=30.0)
        assert (await source.queue_info("$dead"))["depth"] == 1     # dropped, not dead-lettered
