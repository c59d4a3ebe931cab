"""Limits of the queue service and manager: a client over one gets a clear LimitExceeded
naming it, and never costs other clients service. Connections (in all, per address),
requests and waiting receives of one client, reply bytes a client does not read, replies
too large for a frame, queues, bytes on disk, and the rate of log lines about malformed
input."""
from __future__ import annotations

import asyncio
import logging
import os

import msgpack
import pytest

import tether
from tether.errors import LimitExceeded
from tether.queue import protocol as P
from tether.queue.limits import ServiceLimits


async def _raw(url: str, **settings):
    """A protocol session that said HELLO and reads only when told to."""
    session = await tether.connect(url, **{**P.SESSION_SETTINGS, **settings})
    await session.send(msgpack.packb([[P.HELLO, 1, P.VERSION, os.urandom(16), 0, [], None, None]], use_bin_type=True))
    for frame in await asyncio.wait_for(session.recv_many(), 5):
        assert msgpack.unpackb(frame, raw=False)[0][0] == P.REPLY
    return session


async def _answers(session, rids: set[int], timeout: float = 5.0) -> dict[int, list]:
    """Read until every rid in `rids` is answered; rid -> the answer item."""
    got: dict[int, list] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while rids - set(got):
        frames = await asyncio.wait_for(session.recv_many(), max(0.01, deadline - loop.time()))
        for frame in frames:
            for item in msgpack.unpackb(frame, raw=False):
                if item[0] in (P.REPLY, P.ERROR) and item[1] in rids:
                    got[item[1]] = item
    return got


async def test_connections_over_the_limit_are_refused_clearly_and_others_go_on():
    async with tether.QueueManager.open() as qm:
        await qm.create_queue("q")
        service = await qm.listen("tcp://127.0.0.1:0", limits=ServiceLimits(max_connections=2))
        a = await tether.QueueClient.connect(service.url)
        b = await tether.QueueClient.connect(service.url)
        with pytest.raises(LimitExceeded, match="max_connections=2"):
            await tether.QueueClient.connect(service.url, connect_timeout=3)
        await a.send("q", b"still served")
        await a.close()
        c = await tether.QueueClient.connect(service.url)       # a place came free
        assert (await c.receive("q", timeout=5)).body == b"still served"
        await b.close()
        await c.close()


async def test_connections_per_address_are_limited():
    async with tether.QueueManager.open() as qm:
        service = await qm.listen("tcp://127.0.0.1:0",
                                  limits=ServiceLimits(max_connections=10, max_connections_per_address=1))
        a = await tether.QueueClient.connect(service.url)
        with pytest.raises(LimitExceeded, match="max_connections_per_address=1"):
            await tether.QueueClient.connect(service.url, connect_timeout=3)
        await a.close()


async def test_a_frame_of_receives_is_bounded_by_max_pending_requests_and_max_waiting_receives():
    async with tether.QueueManager.open() as qm:
        await qm.create_queue("q")
        service = await qm.listen("tcp://127.0.0.1:0",
                                  limits=ServiceLimits(max_pending_requests=50, max_waiting_receives=20))
        session = await _raw(service.url)
        # 2,000 RECEIVEs that would each wait 30 s, in one frame
        items = [[P.RECEIVE, 10 + i, "q", 30.0, 0] for i in range(2000)]
        await session.send(msgpack.packb(items, use_bin_type=True))
        refused = await _answers(session, set(range(30, 2010)))
        codes = {item[2] for item in refused.values()}
        assert codes == {"limit-exceeded"}
        texts = " ".join(item[3] for item in refused.values())
        assert "max_waiting_receives=20" in texts and "max_pending_requests=50" in texts
        # the 20 that wait are served as messages come; other clients are not affected
        async with tether.QueueClient.connect(service.url) as other:
            await other.send("q", b"m")
            served = await _answers(session, {10})
            assert served[10][0] == P.REPLY and served[10][2][0][2] == b"m"
            assert (await other.queue_info("q")).in_flight == 1
        session.abort()


async def test_a_client_that_does_not_read_is_paused_then_dropped_and_others_go_on():
    async with tether.QueueManager.open() as qm:
        await qm.create_queue("q", max_message_size=65536)
        service = await qm.listen("tcp://127.0.0.1:0",
                                  limits=ServiceLimits(max_reply_bytes=1 << 20, reply_stall=1.0))
        for _ in range(400):
            await qm.send("q", os.urandom(60000))           # 24 MB for a consumer
        # a receive window of two frames: the client's session stops taking more than that
        session = await _raw(service.url, max_transfer_window=2)
        await session.send(msgpack.packb([[P.SUBSCRIBE, 2, 1, "q", 100000]], use_bin_type=True))
        # ... and never reads: deliveries stop at the limit, and the session is dropped
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while not session.closed:
            assert loop.time() < deadline, "the non-reading client was never dropped"
            await asyncio.sleep(0.05)
        held = (await qm.queue_info("q")).in_flight       # pushed at it, until client_grace
        assert held < 100, f"{held} messages were pushed at a client that does not read"
        async with tether.QueueClient.connect(service.url) as other:     # the service goes on
            m = await other.receive("q", timeout=5)
            await m.complete()


async def test_an_answer_too_large_for_a_frame_is_an_error_not_silence():
    async with tether.QueueManager.open() as qm:
        await qm.create_queue("big", max_message_size=2 * 1024 * 1024)
        service = await qm.listen("tcp://127.0.0.1:0", max_message_size=1024 * 1024)
        await qm.send("big", os.urandom(1536 * 1024))
        async with tether.QueueClient.connect(service.url) as client:
            with pytest.raises(tether.QueueError, match="frame limit"):
                await asyncio.wait_for(client.receive("big", timeout=2), 10)
            async with client.transaction() as tx:
                with pytest.raises(tether.QueueError, match="frame limit"):
                    await asyncio.wait_for(tx.receive("big", timeout=2), 10)
        info = await qm.queue_info("big")
        assert (info.depth, info.in_flight) == (1, 0)           # given back, not stranded
        m = await qm.receive("big", timeout=0)
        assert m.delivery_count == 1                            # and its failed trips not counted


async def test_max_queues_bounds_definitions_and_transmission_queues():
    async with tether.QueueManager.open(max_queues=2) as qm:
        await qm.create_queue("a")
        await qm.send("tether://127.0.0.1:1/x", b"x")           # a transmission queue counts
        with pytest.raises(LimitExceeded, match="max_queues=2"):
            await qm.create_queue("b")
        with pytest.raises(LimitExceeded, match="max_queues=2"):
            await qm.send("tether://127.0.0.1:2/x", b"x")
        await qm.send("a", b"still works")
    with pytest.raises(ValueError, match="max_queues"):
        await tether.QueueManager.open(max_queues=0)


async def test_max_disk_bytes_refuses_durable_sends_and_receives_go_on(tmp_path):
    async with tether.QueueManager.open(tmp_path, max_disk_bytes=200_000) as qm:
        await qm.create_queue("q")
        await qm.create_queue("v", durable=False)
        sent = 0
        with pytest.raises(LimitExceeded, match="max_disk_bytes=200000"):
            for _ in range(1000):
                await qm.send("q", bytes(1000))
                sent += 1
        assert 100 < sent < 1000
        await qm.send("v", b"volatile queues are not on disk")
        m = await qm.receive("q", timeout=0)
        await m.complete()                                      # completes still work
    with pytest.raises(ValueError, match="max_disk_bytes"):
        await tether.QueueManager.open(tmp_path / "x", max_disk_bytes=-1)


async def test_malformed_input_is_logged_at_most_once_per_interval_per_peer(caplog):
    async with tether.QueueManager.open() as qm:
        service = await qm.listen("tcp://127.0.0.1:0", limits=ServiceLimits(log_interval=60))
        with caplog.at_level(logging.WARNING, logger="tether.queue.service"):
            for _ in range(30):
                session = await tether.connect(service.url, **P.SESSION_SETTINGS)
                await session.send(b"\xc1 not msgpack")
                try:
                    await asyncio.wait_for(session.recv_many(), 5)
                    await asyncio.wait_for(session.recv_many(), 5)
                except (TimeoutError, tether.TetherError):
                    pass
                session.abort()
        lines = [r for r in caplog.records if "broke the queue protocol" in r.getMessage()]
        assert len(lines) == 1


def test_limits_are_validated_by_name():
    with pytest.raises(ValueError, match="max_reply_bytes"):
        ServiceLimits(max_reply_bytes=0)
    with pytest.raises(ValueError, match="reply_stall"):
        ServiceLimits(reply_stall=float("inf"))
    with pytest.raises(ValueError, match="unknown limits nope"):
        ServiceLimits.from_kwargs(nope=1)


async def test_a_session_that_says_no_hello_is_dropped_after_hello_timeout():
    async with tether.QueueManager.open() as qm:
        service = await qm.listen("tcp://127.0.0.1:0", limits=ServiceLimits(hello_timeout=0.3))
        session = await tether.connect(service.url, **P.SESSION_SETTINGS)      # and says nothing
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not session.closed:
            assert loop.time() < deadline, "a silent session was kept"
            await asyncio.sleep(0.02)
        assert not service.connections


async def test_failed_logins_from_one_address_are_throttled():
    from tether.queue.auth import hash_password

    users = {"alice": {"password_hash": hash_password("right", n=1024, r=1, p=1), "send": ["q"]}}
    async with tether.QueueManager.open() as qm:
        service = await qm.listen("tcp://127.0.0.1:0", users=users,
                                  limits=ServiceLimits(max_failed_logins=2, failed_login_window=60))
        for _ in range(2):
            with pytest.raises(tether.AuthenticationFailed, match="(?i)password|user"):
                await tether.QueueClient.connect(service.url, user="alice", password="wrong")
        # now even the right password is refused, unchecked, until the window passes
        with pytest.raises(tether.AuthenticationFailed, match="too many failed logins"):
            await tether.QueueClient.connect(service.url, user="alice", password="right")
