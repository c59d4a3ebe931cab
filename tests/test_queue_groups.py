"""Groups (sessions over queues): messages sent with one group_id are received whole, by one
holder at a time, in send order; a group that keeps failing is poisoned as a whole; a
released group returns once its messages are back. The sans-IO core on a simulated clock
here; the manager, the service and store-and-forward further down."""
from __future__ import annotations

import asyncio

import pytest

import tether
from tether import LockLost, PoisonMessage, QueueNotFound
from tether.queue.core import QueueCore, QueueSettings
from tether.queue.core.replay import ReplayState


def _written(core: QueueCore, now: float) -> None:
    while (cut := core.cut()) is not None:
        core.written(cut[0], now)


def _core(**settings) -> QueueCore:
    core = QueueCore(b"groups-test-qm12", journaled=True)
    core.start()
    core.define("q", QueueSettings.from_kwargs(**settings))
    _written(core, 0.0)
    return core


def _send(core: QueueCore, body: bytes, group: str | None, now: float = 0.0, **options) -> None:
    core.send_one(core.prepare("q", body, now, group_id=group, **options), now)
    _written(core, now)


class Holder:
    """A consumer: a token for the core, and a waiter for groups and messages."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.groups = []
        self.entries = []
        self.errors = []

    def hand_group(self, group) -> None:
        self.groups.append(group)

    def hand(self, entry) -> None:
        self.entries.append(entry)

    def fail(self, error) -> None:
        self.errors.append(error)


def _drain(core, group, holder, now=1.0):
    out = []
    while (entry := core.take_group(group, holder, now)) is not None:
        out.append(entry)
    return out


def test_a_group_goes_whole_to_one_holder_in_send_order():
    core = _core()
    for i in range(3):
        _send(core, b"a%d" % i, "A")
        _send(core, b"b%d" % i, "B")
    _send(core, b"plain", None)
    assert [e.body for e in [core.take("q", 1.0)]] == [b"plain"]     # plain receives see no group
    assert core.take("q", 1.0) is None
    one, two, three = Holder("1"), Holder("2"), Holder("3")
    ga = core.accept_group("q", one, 1.0)
    gb = core.accept_group("q", two, 1.0)
    assert (ga.group_id, gb.group_id) == ("A", "B")
    assert core.accept_group("q", three, 1.0) is None               # every group is held
    assert [e.body for e in _drain(core, ga, one)] == [b"a0", b"a1", b"a2"]
    with pytest.raises(LockLost):
        core.take_group(ga, two, 1.0)                                 # only the holder takes
    assert core.info("q").groups == 2


def test_a_new_message_of_a_held_group_goes_to_its_holder_only():
    core = _core()
    _send(core, b"a0", "A")
    one, other = Holder("1"), Holder("other")
    group = core.accept_group("q", one, 1.0)
    core.wait_group("q", other)
    first = core.take_group(group, one, 1.0)
    core.wait_in_group(group, one, one)
    _send(core, b"a1", "A", 2.0)
    assert [e.body for e in one.entries] == [b"a1"] and other.groups == []
    core.complete(first, first.tag, 2.0)
    core.complete(one.entries[0], one.entries[0].tag, 2.0)
    _written(core, 2.0)
    core.release_group(group, one, 2.0, abandon=True)
    _send(core, b"a2", "A", 3.0)
    assert [g.group_id for g in other.groups] == ["A"]              # free again: the waiter gets it
    assert [e.body for e in _drain(core, other.groups[0], other, 3.0)] == [b"a2"]


def test_a_released_group_waits_until_its_abandoned_messages_are_back():
    core = _core()
    for i in range(3):
        _send(core, b"a%d" % i, "A")
    one, two = Holder("1"), Holder("2")
    group = core.accept_group("q", one, 1.0)
    first = core.take_group(group, one, 1.0)
    records = core.release_group(group, one, 1.0, abandon=True)      # first is still locked: abandoned
    assert records
    assert core.accept_group("q", two, 1.1) is None                 # a0 is on its way back
    _written(core, 1.2)
    group = core.accept_group("q", two, 1.3)
    got = _drain(core, group, two, 1.3)
    assert [(e.body, e.delivery_count) for e in got] == [(b"a0", 2), (b"a1", 1), (b"a2", 1)]
    assert got[0] is first          # the same message, under a new lock


def test_release_without_abandon_does_not_count():
    core = _core()
    _send(core, b"a0", "A")
    one = Holder("1")
    group = core.accept_group("q", one, 1.0)
    core.take_group(group, one, 1.0)
    assert core.release_group(group, one, 1.0, abandon=False) == []
    group = core.accept_group("q", one, 1.0)
    assert [(e.body, e.delivery_count) for e in _drain(core, group, one)] == [(b"a0", 1)]


def test_an_abandoned_message_comes_back_first_to_the_holder():
    core = _core()
    for i in range(3):
        _send(core, b"a%d" % i, "A")
    one = Holder("1")
    group = core.accept_group("q", one, 1.0)
    a0 = core.take_group(group, one, 1.0)
    core.abandon(a0, a0.tag, 1.0)
    _written(core, 1.0)
    assert [e.body for e in _drain(core, group, one)] == [b"a0", b"a1", b"a2"]


def test_a_group_waits_while_one_of_its_messages_is_in_retry():
    core = _core(receive_retry_count=0, max_retry_cycles=1, retry_cycle_delay=10)
    for i in range(2):
        _send(core, b"a%d" % i, "A")
    one = Holder("1")
    group = core.accept_group("q", one, 1.0)
    a0 = core.take_group(group, one, 1.0)
    core.abandon(a0, a0.tag, 1.0)
    _written(core, 1.0)
    assert core.info("q").retrying == 1
    assert core.take_group(group, one, 2.0) is None                # a1 may not overtake a0
    core.release_group(group, one, 2.0, abandon=True)
    assert core.accept_group("q", Holder("2"), 2.0) is None
    core.handle_timer(11.0)
    _written(core, 11.0)
    two = Holder("2")
    group = core.accept_group("q", two, 11.0)
    assert [e.body for e in _drain(core, group, two, 11.0)] == [b"a0", b"a1"]


@pytest.mark.parametrize("mode, where", [("move", "q;poison"), ("reject", "$dead"), ("fault", "q;poison")])
def test_a_group_that_keeps_failing_is_poisoned_as_a_whole(mode, where):
    core = _core(receive_retry_count=1, max_retry_cycles=0, receive_error_handling=mode)
    for i in range(3):
        _send(core, b"a%d" % i, "A")
    one = Holder("1")
    for _ in range(2):
        group = core.accept_group("q", one, 1.0)
        assert group.group_id == "A"
        a0 = core.take_group(group, one, 1.0)
        assert a0.body == b"a0"
        core.abandon(a0, a0.tag, 1.0)
        _written(core, 1.0)
        core.release_group(group, one, 1.0, abandon=True)
    bodies = []
    while (entry := core.take(where, 1.0)) is not None:
        bodies.append(entry.body)
    assert bodies == [b"a0", b"a1", b"a2"]
    _send(core, b"b0", "B")
    if mode == "fault":
        with pytest.raises(PoisonMessage):
            core.accept_group("q", one, 1.0)
    else:
        assert core.accept_group("q", one, 1.0).group_id == "B"


def test_drop_mode_drops_the_whole_group():
    core = _core(receive_retry_count=0, max_retry_cycles=0, receive_error_handling="drop")
    for i in range(3):
        _send(core, b"a%d" % i, "A")
    one = Holder("1")
    group = core.accept_group("q", one, 1.0)
    a0 = core.take_group(group, one, 1.0)
    core.abandon(a0, a0.tag, 1.0)
    _written(core, 1.0)
    core.release_group(group, one, 1.0, abandon=True)
    info = core.info("q")
    assert (info.depth, info.in_flight, info.groups) == (0, 0, 0)


def test_groups_survive_replay_and_a_message_in_retry_still_blocks_its_group():
    core = _core(receive_retry_count=0, max_retry_cycles=1, retry_cycle_delay=10)
    for i in range(3):
        _send(core, b"a%d" % i, "A")
    _send(core, b"b0", "B")
    one = Holder("1")
    group = core.accept_group("q", one, 1.0)
    a0 = core.take_group(group, one, 1.0)
    core.abandon(a0, a0.tag, 1.0)
    _written(core, 1.0)
    state = ReplayState()
    for op in core.snapshot():
        state.apply(op)
    again = QueueCore(b"groups-test-qm12", journaled=True)
    again.load(state, 2.0)
    two = Holder("2")
    group = again.accept_group("q", two, 2.0)
    assert group.group_id == "B"                                   # A waits for a0 in ;retry
    assert again.accept_group("q", Holder("3"), 2.0) is None
    again.handle_timer(11.0)
    _written(again, 11.0)
    three = Holder("3")
    group = again.accept_group("q", three, 11.0)
    assert [e.body for e in _drain(again, group, three, 11.0)] == [b"a0", b"a1", b"a2"]


def test_expired_group_messages_leave_and_the_rest_follow():
    core = _core(time_to_live=5)
    _send(core, b"a0", "A", 0.0)
    _send(core, b"a1", "A", 3.0)
    one = Holder("1")
    group = core.accept_group("q", one, 6.0)
    assert group is not None
    got = _drain(core, group, one, 6.0)
    core.handle_timer(6.0)
    _written(core, 6.0)
    got += _drain(core, group, one, 6.0)
    assert [e.body for e in got] == [b"a1"]
    assert core.info("q").dead == 1


def test_groups_are_only_in_application_queues_and_group_ids_are_checked():
    core = _core()
    with pytest.raises(ValueError, match="groups"):
        core.accept_group("$dead", Holder("x"), 0.0)
    with pytest.raises(QueueNotFound):
        core.accept_group("nope", Holder("x"), 0.0)
    for bad, error in (("", ValueError), ("x" * 256, ValueError), ("a\nb", ValueError), (5, TypeError)):
        with pytest.raises(error, match="group_id"):
            core.prepare("q", b"x", 0.0, group_id=bad)


def test_purge_and_peek_include_group_messages():
    core = _core()
    _send(core, b"p", None)
    _send(core, b"a0", "A")
    assert [e.body for e in core.peek("q", 10, 0.0)] == [b"p", b"a0"]
    assert core.purge("q", 0.0)[0] == 2
    _written(core, 0.0)
    assert core.accept_group("q", Holder("x"), 0.0) is None


# ---- the manager and the service ----


async def test_accept_group_end_to_end(api):
    qm, handle = api
    await handle.create_queue("q")
    async with handle.transaction() as tx:
        for i in range(3):
            await tx.send("q", b"a%d" % i, group_id="A")
    await handle.send_many("q", [b"b0", b"b1"], group_id="B")
    await handle.send("q", b"plain")
    plain = await handle.receive("q", timeout=0)
    assert plain.body == b"plain" and plain.group_id is None
    await plain.complete()
    assert await handle.receive("q", timeout=0) is None            # groups go whole, by accept_group
    seen = {}
    async with handle.accept_group("q", timeout=5) as first:
        async with handle.accept_group("q", timeout=5) as second:
            with pytest.raises(TimeoutError):
                async with handle.accept_group("q", timeout=0.1):
                    pass
            for group in (first, second):
                bodies = []
                async for msg in group:
                    assert msg.group_id == group.group_id
                    async with msg:
                        bodies.append(msg.body)
                seen[group.group_id] = bodies
    assert seen == {"A": [b"a0", b"a1", b"a2"], "B": [b"b0", b"b1"]}
    info = await handle.queue_info("q")
    assert (info["depth"], info["in_flight"], info["groups"]) == (0, 0, 0)


async def test_a_held_group_gets_new_messages_and_unsettled_ones_come_back(api):
    qm, handle = api
    await handle.create_queue("q")
    await handle.send("q", b"a0", group_id="A")
    async with handle.accept_group("q", timeout=5) as group:
        first = await group.receive(timeout=5)
        assert first.body == b"a0"

        async def later():
            await asyncio.sleep(0.1)
            await handle.send("q", b"a1", group_id="A")

        task = asyncio.ensure_future(later())
        second = await group.receive(timeout=5)
        await task
        assert second.body == b"a1"
        await second.complete()
        # first is left unsettled: leaving the block abandons it
    async with handle.accept_group("q", timeout=5) as group:
        again = await group.receive(timeout=5)
        assert (again.body, again.delivery_count) == (b"a0", 2)
        await again.complete()
    with pytest.raises(LockLost):
        await group.receive(0)


async def test_competing_consumers_take_whole_groups(api):
    qm, handle = api
    await handle.create_queue("q")
    for g in range(6):
        await handle.send_many("q", [b"%d-%d" % (g, i) for i in range(4)], group_id=f"g{g}")
    holders = {}
    active = set()

    async def consumer(name):
        while True:
            try:
                async with handle.accept_group("q", timeout=0.3) as group:
                    assert group.group_id not in active          # nobody else holds it
                    active.add(group.group_id)
                    bodies = []
                    async for msg in group:
                        await asyncio.sleep(0.005)
                        bodies.append(msg.body)
                        await msg.complete()
                    holders.setdefault(group.group_id, []).append((name, bodies))
                    active.discard(group.group_id)
            except TimeoutError:
                return

    await asyncio.gather(*(consumer(f"c{n}") for n in range(3)))
    assert sorted(holders) == [f"g{g}" for g in range(6)]
    for group_id, takes in holders.items():
        assert len(takes) == 1                       # each group whole, to one consumer
        g = group_id[1:]
        assert takes[0][1] == [b"%s-%d" % (g.encode(), i) for i in range(4)]


async def test_a_vanished_holders_group_returns_after_client_grace(tmp_path):
    async with tether.QueueManager.open(tmp_path / "qm") as qm:
        service = await qm.listen("tcp://127.0.0.1:0", client_grace=0.3)
        await qm.create_queue("q")
        await qm.send_many("q", [b"a0", b"a1"], group_id="A")
        client = await tether.QueueClient.connect(service.url)
        accepting = client.accept_group("q", timeout=5)
        group = await accepting.__aenter__()
        held = await group.receive(timeout=5)
        assert held.body == b"a0"
        with pytest.raises(TimeoutError):
            async with qm.accept_group("q", timeout=0.1):
                pass
        client._session.abort("the client vanished")       # no goodbye: the connection is gone
        client._closing = True
        if client._reader is not None:
            client._reader.cancel()
        async with qm.accept_group("q", timeout=5) as group:
            got = [m async for m in group]
            assert [(m.body, m.delivery_count) for m in got] == [(b"a0", 1), (b"a1", 1)]   # released uncounted
            for m in got:
                await m.complete()


async def test_groups_through_store_and_forward(tmp_path):
    async with tether.QueueManager.open(tmp_path / "target", listen="tcp://127.0.0.1:0") as target, \
            tether.QueueManager.open(tmp_path / "source") as source:
        await target.create_queue("orders")
        host, port = target.services[0].address[:2]
        address = f"tether://{host}:{port}/orders"
        await source.send_many(address, [b"a0", b"a1", b"a2"], group_id="A")
        async with target.accept_group("orders", timeout=10) as group:
            got = []
            while len(got) < 3:
                msg = await group.receive(timeout=10)
                got.append(msg.body)
                await msg.complete()
        assert group.group_id == "A" and got == [b"a0", b"a1", b"a2"]


async def test_groups_survive_a_restart(tmp_path):
    async with tether.QueueManager.open(tmp_path / "qm") as qm:
        await qm.create_queue("q")
        await qm.send_many("q", [b"a0", b"a1"], group_id="A")
        await qm.send("q", b"b0", group_id="B")
        async with qm.accept_group("q", timeout=1) as group:
            m = await group.receive(0)
            await m.complete()
    async with tether.QueueManager.open(tmp_path / "qm") as qm:
        await qm.compact()
    async with tether.QueueManager.open(tmp_path / "qm") as qm:
        found = {}
        for _ in range(2):
            async with qm.accept_group("q", timeout=1) as group:
                found[group.group_id] = [m.body async for m in group]
        assert found == {"A": [b"a1"], "B": [b"b0"]}


async def test_accept_group_checks_its_arguments(api):
    qm, handle = api
    await handle.create_queue("q")
    for bad, error in ((-1, ValueError), (float("nan"), ValueError), ("1", TypeError)):
        with pytest.raises(error, match="timeout"):
            handle.accept_group("q", bad)
    with pytest.raises(QueueNotFound):
        async with handle.accept_group("nope", 0):
            pass
    with pytest.raises(ValueError, match="group_id"):
        await handle.send("q", b"x", group_id="")


@pytest.mark.parametrize("mode, where", [("move", "q;poison"), ("reject", "$dead"), ("drop", None)])
async def test_a_poisoned_group_goes_whole_on_every_store(api, mode, where):
    """The journal's meaning on each store: once a group's message is poison, the group's
    waiting messages go the same way, in send order, and other groups carry on."""
    qm, handle = api
    await handle.create_queue("q", receive_retry_count=0, max_retry_cycles=0, receive_error_handling=mode)
    await handle.send_many("q", [b"a0", b"a1", b"a2"], group_id="A")
    await handle.send("q", b"b0", group_id="B")
    async with handle.accept_group("q", timeout=5) as group:
        assert group.group_id == "A"
        first = await group.receive(timeout=5)
        assert first.body == b"a0"
        await first.abandon()
        assert await group.receive(timeout=0.2) is None      # the rest of A went with it
    if where is not None:
        moved = []
        while (msg := await handle.receive(where, timeout=0.5)) is not None:
            moved.append(msg.body)
            await msg.complete()
        assert moved == [b"a0", b"a1", b"a2"]
    async with handle.accept_group("q", timeout=5) as group:
        assert group.group_id == "B"
        msg = await group.receive(timeout=5)
        assert msg.body == b"b0"
        await msg.complete()
    info = await handle.queue_info("q")
    assert (info["depth"], info["in_flight"], info["poison"]) == (0, 0, 0)
