"""The per-batch service path: a client's plain sends (and its completes) of one loop turn
travel as one SEND_BATCH (COMPLETE_BATCH) item with one reply carrying every outcome, the
service queues a batch in one core call, and a consumer's deliveries go out as many as are
ready, up to its credit, at once. Each message still gets its own outcome, its own dedupe
and its own permission check."""
from __future__ import annotations

import asyncio
import collections
import os

import pytest
import test_queue_producers
from test_queue_producers import Raw

import tether
from tether.errors import LockLost, PermissionDenied, ProtocolError, QueueMessageTooLarge
from tether.queue import connection as C
from tether.queue import protocol as P
from tether.queue.auth import hash_password

served = test_queue_producers.served        # the fixture: a manager serving queue "q"


@pytest.fixture
def seen_ops(monkeypatch):
    """The op of every request item the service dispatched."""
    ops: collections.Counter = collections.Counter()
    dispatch = C.Connection._dispatch

    def spy(self, items):
        ops.update(item[0] for item in items if isinstance(item, list) and item)
        return dispatch(self, items)

    monkeypatch.setattr(C.Connection, "_dispatch", spy)
    return ops


# ---- the items ----

@pytest.mark.parametrize("item, match", [
    ([P.SEND_BATCH, 1, "q", [], 0], "bodies"),
    ([P.SEND_BATCH, 1, "q", [b"a", "b"], 0], "bodies"),
    ([P.SEND_BATCH, 1, "q", b"ab", 0], "bodies"),
    ([P.SEND_BATCH, 1, "q", [b"a"] * (P.MAX_BATCH + 1), 0], "bodies"),
    ([P.SEND_BATCH, 1, "", [b"a"], 0], "address"),
    ([P.SEND_BATCH, 1, "q", [b"a"], -1], "first_sequence"),
    ([P.SEND_BATCH, 1, "q", [b"a", b"b"], P.MAX_SEQUENCE], "first_sequence"),
    ([P.SEND_BATCH, 1, "q", [b"a"]], "fields"),
    ([P.COMPLETE_BATCH, 1, []], "tags"),
    ([P.COMPLETE_BATCH, 1, [1, 0]], "tags"),
    ([P.COMPLETE_BATCH, 1, [1] * (P.MAX_BATCH + 1)], "tags"),
    ([P.COMPLETE_BATCH, 1, 5], "tags"),
    ([P.FORWARD_BATCH, 1, []], "messages"),
    ([P.FORWARD_BATCH, 1, [["q", 1, "id", b"x", None, 1.0, None]]], r"messages\[0\]"),
    ([P.FORWARD_BATCH, 1, [["q", 1, "id", b"x", None, 1.0, None, None], ["q", -1, "id", b"x", None, 1.0, None,
                                                                         None]]], r"messages\[1\]\.sequence"),
    ([P.FORWARD_BATCH, 1, [["q", 1, "id", "x", None, 1.0, None, None]]], r"messages\[0\]\.body"),
    ([P.FORWARD_BATCH, 1, [["q", 1, "id", b"x", None, 1.0, None, None]] * (P.MAX_BATCH + 1)], "messages"),
])
def test_malformed_batch_items_are_refused_naming_the_field(item, match):
    with pytest.raises(ProtocolError, match=match):
        P.parse_request(item)


def test_well_formed_batch_items_pass():
    assert P.parse_request([P.SEND_BATCH, 1, "q", [b"a", b""], P.MAX_SEQUENCE - 1])
    assert P.parse_request([P.COMPLETE_BATCH, 0, [1, 2, 3]])
    assert P.parse_request([P.FORWARD_BATCH, 1, [["q", 1, "id", b"x", {"k": 1}, 1.0, 2.0, {"priority": 3}]]])


def test_batch_outcomes_are_checked():
    outcomes = P.batch_outcomes(["id-1", ["queue-full", "full"], "id-3"], 3, str)
    assert outcomes[0] == "id-1" and outcomes[2] == "id-3"
    assert isinstance(outcomes[1], tether.QueueFull) and str(outcomes[1]) == "full"
    assert P.batch_outcomes([None, ["lock-lost", "gone"]], 2, type(None))[0] is None
    for value, count in ((["a"], 2), ("a", 1), ([1], 1), ([["x"]], 1), ([None], 1)):
        with pytest.raises(ProtocolError):
            P.batch_outcomes(value, count, str)
    assert P.batch_outcome(ValueError("bad")) == ["value-error", "bad"]
    assert P.batch_outcome("id") == "id"


# ---- over a client ----

async def test_concurrent_plain_sends_travel_as_one_batch_each_with_its_id(served, seen_ops):
    async with tether.QueueClient.connect(served.services[0].url) as client:
        bodies = [b"m%03d" % i for i in range(300)]
        ids = await asyncio.gather(*(client.send("q", body) for body in bodies))
        assert len(set(ids)) == 300
        assert seen_ops[P.SEND_BATCH] == 1 and seen_ops[P.SEND] == 0
        got = [(await served.receive("q", timeout=0)) for _ in range(300)]
        assert [m.body for m in got] == bodies                  # in order
        assert [m.id for m in got] == list(ids)                 # each caller got its own id


async def test_a_refused_message_fails_alone_in_its_batch(served):
    await served.create_queue("small", max_message_size=10)
    async with tether.QueueClient.connect(served.services[0].url) as client:
        results = await asyncio.gather(client.send("small", b"ok"), client.send("small", b"x" * 11),
                                       client.send("small", b"ok too"), return_exceptions=True)
        assert isinstance(results[0], str) and isinstance(results[2], str)
        assert isinstance(results[1], QueueMessageTooLarge)
        assert (await served.queue_info("small")).depth == 2


@pytest.mark.parametrize("refused", [{0}, {5}, {9}, {0, 1}, {3, 4, 5}, {0, 9}, set(range(10))])
async def test_refusals_anywhere_in_a_batch_fail_alone_and_the_rest_keep_their_order(served, seen_ops, refused):
    await served.create_queue("small", max_message_size=10)
    async with tether.QueueClient.connect(served.services[0].url) as client:
        bodies = [b"x" * 11 if n in refused else b"ok %d" % n for n in range(10)]
        results = await asyncio.gather(*(client.send("small", body) for body in bodies), return_exceptions=True)
        assert seen_ops[P.SEND_BATCH] == 1
        for n, result in enumerate(results):
            assert isinstance(result, QueueMessageTooLarge if n in refused else str), (n, result)
        ids = [r for r in results if isinstance(r, str)]
        assert len(set(ids)) == len(ids)
        got = [await served.receive("small", timeout=0) for _ in ids]
        assert [m.body for m in got] == [b for n, b in enumerate(bodies) if n not in refused]
        assert [m.id for m in got] == ids
        assert await served.receive("small", timeout=0) is None


async def test_a_plain_send_of_a_bytearray_or_an_oversized_body(served):
    async with tether.QueueClient.connect(served.services[0].url) as client:
        assert isinstance(await client.send("q", bytearray(b"ba")), str)
        with pytest.raises(QueueMessageTooLarge):
            await client.send("q", b"x" * (P.SESSION_SETTINGS["max_message_size"] - 4095))
        with pytest.raises(ValueError, match="address"):
            await client.send("", b"x")
        with pytest.raises(TypeError, match="address"):
            await client.send(b"q", b"x")
        assert (await served.receive("q", timeout=0)).body == b"ba"


async def test_plain_and_other_sends_of_one_turn_keep_their_order(served, seen_ops):
    async with tether.QueueClient.connect(served.services[0].url) as client:
        await asyncio.gather(client.send("q", b"a"), client.send("q", b"b"), client.send("q", b"c", headers={"h": 1}),
                             client.send("q", b"d"), client.send("q", b"e", priority=3), client.send("q", b"f"))
        assert seen_ops[P.SEND_BATCH] == 2 and seen_ops[P.SEND] == 1
        assert [(await served.receive("q", timeout=0)).body for _ in range(6)] == [b"a", b"b", b"c", b"d", b"e", b"f"]


async def test_sends_to_two_queues_in_one_turn(served):
    await served.create_queue("r")
    async with tether.QueueClient.connect(served.services[0].url) as client:
        await asyncio.gather(*(client.send("q" if i % 3 else "r", b"%d" % i) for i in range(30)))
        assert (await served.queue_info("q")).depth == 20 and (await served.queue_info("r")).depth == 10


async def test_completes_of_one_turn_travel_as_one_batch(served, seen_ops):
    async with tether.QueueClient.connect(served.services[0].url, prefetch=64) as client:
        await client.send_many("q", [b"%d" % i for i in range(50)])
        messages = [await client.receive("q") for _ in range(50)]
        await asyncio.gather(*(m.complete() for m in messages))
        assert seen_ops[P.COMPLETE_BATCH] == 1 and seen_ops[P.COMPLETE] == 0
        info = await served.queue_info("q")
        assert info.depth == 0 and info.in_flight == 0
        with pytest.raises(LockLost):
            await messages[0].complete()


async def test_a_batch_to_a_queue_the_user_may_not_send_to_is_refused_whole(tmp_path):
    users = {"alice": {"password_hash": hash_password("pw-alice-123456", n=1024, r=1, p=1), "send": ["q"],
                       "receive": ["q"]}}
    qm = await tether.QueueManager.open(tmp_path / "qm")
    try:
        await qm.create_queue("q")
        await qm.create_queue("secret")
        service = await qm.listen("tcp://127.0.0.1:0", users=users)
        async with tether.QueueClient.connect(service.url, user="alice", password="pw-alice-123456") as client:
            results = await asyncio.gather(client.send("secret", b"1"), client.send("secret", b"2"),
                                           return_exceptions=True)
            assert all(isinstance(r, PermissionDenied) for r in results)
            assert await client.send("q", b"fine")
        assert (await qm.queue_info("secret")).depth == 0
    finally:
        await qm.close()


# ---- the raw items ----

async def test_a_resent_batch_is_queued_once_with_the_same_ids(served):
    raw = await Raw.open(served.services[0].url, os.urandom(16))
    try:
        first = await raw.ask([P.SEND_BATCH, 0, "q", [b"a", b"b", b"c"], raw.next_sequence])
        again = await raw.ask([P.SEND_BATCH, 0, "q", [b"a", b"b", b"c"], raw.next_sequence])
        assert first == again and len(set(first)) == 3
        overlapping = await raw.ask([P.SEND_BATCH, 0, "q", [b"c", b"d"], raw.next_sequence + 2])
        assert overlapping[0] == first[2]
        assert (await served.queue_info("q")).depth == 4
    finally:
        await raw.close()


async def test_a_complete_batch_answers_each_lock(served):
    await served.send("q", b"one")
    await served.send("q", b"two")
    raw = await Raw.open(served.services[0].url, os.urandom(16))
    try:
        one = await raw.ask([P.RECEIVE, 0, "q", 0, 0])
        two = await raw.ask([P.RECEIVE, 0, "q", 0, 0])
        tags = [one[0][0], 999_999, two[0][0], one[0][0]]
        outcomes = P.batch_outcomes(await raw.ask([P.COMPLETE_BATCH, 0, tags]), 4, type(None))
        assert outcomes[0] is None and outcomes[2] is None
        assert isinstance(outcomes[1], LockLost) and isinstance(outcomes[3], LockLost)
        # completed already: a resend (its reply lost) is answered as done
        assert await raw.ask([P.COMPLETE_BATCH, 0, [two[0][0]]]) == [None]
        assert (await served.queue_info("q")).depth == 0
    finally:
        await raw.close()


async def test_deliveries_go_out_as_many_as_are_ready_up_to_the_credit(served):
    await served.send_many("q", [b"%d" % i for i in range(40)])
    raw = await Raw.open(served.services[0].url, os.urandom(16))
    try:
        await raw.tell([P.SUBSCRIBE, 0, 1, "q", 25])        # no reply asked: only deliveries come
        delivered: list = []
        frames = 0
        while len(delivered) < 25:
            for frame in await asyncio.wait_for(raw.session.recv_many(), 5):
                frames += 1
                delivered += [i for i in P.decode(frame) if i[0] == P.DELIVER]
        assert len(delivered) == 25 and frames <= 2
        assert [d[2][2] for d in delivered] == [b"%d" % i for i in range(25)]
        await asyncio.sleep(0.1)
        assert (await served.queue_info("q")).in_flight == 25     # no more than the credit
        await raw.tell([P.CREDIT, 0, 1, 100])
        more: list = []
        while len(more) < 15:
            for frame in await asyncio.wait_for(raw.session.recv_many(), 5):
                more += [i for i in P.decode(frame) if i[0] == P.DELIVER]
        assert [d[2][2] for d in more] == [b"%d" % i for i in range(25, 40)]
    finally:
        await raw.close()


async def test_a_frame_of_more_batched_messages_than_items_ends_the_session(served):
    raw = await Raw.open(served.services[0].url, os.urandom(16))
    try:
        per = P.MAX_BATCH
        frame = [[P.SEND_BATCH, 0, "q", [b""] * per, n * per] for n in range(P.MAX_ITEMS // per + 1)]
        frame.append([P.INFO, 99, "q"])
        await raw.session.send(P.encode(frame))
        with pytest.raises(ProtocolError, match="batched messages"):
            for _ in range(100):
                for answer in P.decode((await asyncio.wait_for(raw.session.recv_many(), 10))[0]):
                    if answer[0] == P.ERROR:
                        raise P.error_from_code(answer[2], answer[3])
        assert (await served.queue_info("q")).depth == 0
    finally:
        raw.session.abort("done")


async def test_a_forward_batch_is_one_item_and_each_message_has_its_own_outcome(served, seen_ops):
    url = f"tcp://127.0.0.1:{served.services[0].address[1]}"
    async with tether.QueueClient.connect(url, client_id=b"forwarder-0001") as client:
        def message(queue, sequence, body, **fields):
            return [queue, sequence, f"id-{sequence}", body, fields.get("headers"), 1.0, fields.get("expires_at"),
                    fields.get("options")]

        outcomes = await client.forward_batch([
            message("q", 1, b"one", headers={"k": "v"}),
            message("nowhere", 2, b"lost"),
            message("q", 3, b"x" * 100_000),                     # over the queue's max_message_size
            message("q", 4, b"late", expires_at=2.0),           # expired in transit
            message("q", 5, b"five", options={"priority": 6}),
        ])
        assert seen_ops[P.FORWARD_BATCH] == 1 and seen_ops[P.FORWARD] == 0
        assert outcomes[0] is None and outcomes[4] is None
        assert [getattr(o, "code", None) for o in outcomes[1:4]] == ["queue-not-found", "message-too-large",
                                                                     "expired"]
        # resent (a lost reply): the queued ones are answered as accepted and queued once
        again = await client.forward_batch([message("q", 1, b"one"), message("q", 5, b"five"),
                                            message("q", 6, b"six")])
        assert again == [None, None, None]
    got = []
    while (m := await served.receive("q", timeout=0)) is not None:
        got.append((m.id, m.body, dict(m.headers), m.priority))
        await m.complete()
    assert sorted(got) == [("id-1", b"one", {"k": "v"}, 3), ("id-5", b"five", {}, 6), ("id-6", b"six", {}, 3)]


def test_a_forward_batch_to_a_system_queue_needs_admin():
    from tether.queue.permissions import Permissions, RequestGuard
    guard = RequestGuard("qm-east", Permissions(forward=True), "$return:qm-east:00")
    ok = ["orders", 1, "id", b"x", None, 1.0, None, None]
    assert guard.refusal([P.FORWARD_BATCH, 1, [ok, ok]]) is None
    refusal = guard.refusal([P.FORWARD_BATCH, 1, [ok, ["$dead"] + ok[1:]]])
    assert refusal is not None and "forward to '$dead'" in str(refusal)
    assert RequestGuard("app", Permissions(), "$return:app:00").refusal([P.FORWARD_BATCH, 1, [ok]]) is not None
