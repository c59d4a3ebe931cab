"""The queue manager service and QueueClient, in one process: every QueueManager method
over the protocol, credit-based prefetch, transactions, reconnects, and bad input of every
kind answered with a clear error while the service stays up."""
from __future__ import annotations

import asyncio
import socket

import msgpack
import pytest

import tether
from tether import LockLost, MessageTooLarge, PoisonMessage, ProtocolError, QueueNotFound, TransactionError
from tether.queue import protocol as P


@pytest.fixture
async def served(tmp_path):
    qm = await tether.QueueManager.open(tmp_path / "qm", listen="tcp://127.0.0.1:0")
    try:
        yield qm, qm.services[0].url
    finally:
        await qm.close()


async def _eventually(check, timeout=5.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_round_trip_every_method(served):
    qm, url = served
    async with tether.QueueClient.connect(url) as client:
        settings = await client.create_queue("orders", receive_error_handling="move", time_to_live=60)
        assert settings.receive_error_handling == "move" and settings.time_to_live == 60
        assert await client.create_queue("orders", receive_error_handling="move", time_to_live=60) == settings
        ids = [await client.send("orders", b"m%d" % i, headers={"n": i}) for i in range(3)]
        assert len(set(ids)) == 3
        info = await client.queue_info("orders")
        assert (info.name, info.depth, info.in_flight, info.durable) == ("orders", 3, 0, True)
        for i in range(3):
            m = await client.receive("orders", timeout=5)
            assert (m.id, m.body, m.headers, m.delivery_count) == (ids[i], b"m%d" % i, {"n": i}, 1)
            assert m.expires_at == pytest.approx(m.enqueued_at + 60, abs=1)
            await m.complete()
            with pytest.raises(LockLost):
                await m.complete()
        assert await client.receive("orders", timeout=0.05) is None
        assert await client.receive("orders", timeout=0) is None
        await _eventually(lambda: _depth_and_flight(qm, "orders", (0, 0)))
        assert "orders" in await client.queues()
        await client.delete_queue("orders")
        with pytest.raises(QueueNotFound):
            await client.queue_info("orders")


async def _depth_and_flight(qm, name, expected):
    info = await qm.queue_info(name)
    return (info.depth, info.in_flight) == expected


async def test_send_many_and_competing_consumers(served):
    qm, url = served
    await qm.create_queue("work")
    async with tether.QueueClient.connect(url) as a, tether.QueueClient.connect(url, prefetch=8) as b:
        ids = await a.send_many("work", [b"%d" % i for i in range(300)])
        assert len(set(ids)) == 300
        got: list[str] = []

        async def consume(client):
            while True:
                m = await client.receive("work", timeout=0.5)
                if m is None:
                    return
                got.append(m.id)
                await m.complete()

        await asyncio.gather(consume(a), consume(b))
        assert sorted(got) == sorted(ids)
        assert (await qm.queue_info("work")).depth == 0


async def test_prefetch_bounds_what_a_slow_consumer_holds(served):
    qm, url = served
    await qm.create_queue("slow")
    for i in range(50):
        await qm.send("slow", b"%d" % i)
    async with tether.QueueClient.connect(url, prefetch=4) as client:
        first = await client.receive("slow", timeout=5)
        await asyncio.sleep(0.3)        # time for the service to deliver all it may
        info = await qm.queue_info("slow")
        # the one taken is replaced by one more credit: at most prefetch + 1 locked
        assert info.in_flight <= 5 and info.depth >= 45
        await first.complete()
        bodies = [first.body]
        for _ in range(49):
            m = await client.receive("slow", timeout=5)
            bodies.append(m.body)
            await m.complete()
            assert (await qm.queue_info("slow")).in_flight <= 5
        assert bodies == [b"%d" % i for i in range(50)]      # FIFO through the prefetch


async def test_close_returns_unused_prefetch_uncounted(served):
    qm, url = served
    await qm.create_queue("q")
    for i in range(10):
        await qm.send("q", b"%d" % i)
    async with tether.QueueClient.connect(url, prefetch=10) as client:
        m = await client.receive("q", timeout=5)
        await m.complete()
        await _eventually(lambda: _in_flight_is(qm, "q", 9))
    await _eventually(lambda: _depth_and_flight(qm, "q", (9, 0)))
    m = await qm.receive("q", timeout=1)
    assert (m.body, m.delivery_count) == (b"1", 1)


async def _in_flight_is(qm, name, n):
    return (await qm.queue_info(name)).in_flight == n


async def test_abandon_redelivers_and_poison_is_raised(served):
    qm, url = served
    await qm.create_queue("p", receive_retry_count=1, max_retry_cycles=0, receive_error_handling="fault")
    async with tether.QueueClient.connect(url, prefetch=1) as client:
        await client.send("p", b"bad")
        m = await client.receive("p", timeout=5)
        await m.abandon()
        m = await client.receive("p", timeout=5)
        assert m.delivery_count == 2
        await m.abandon()
        with pytest.raises(PoisonMessage):
            await client.receive("p", timeout=5)
        assert (await client.queue_info("p")).poison == 1
        poison = await client.receive("p;poison", timeout=5)
        assert poison.body == b"bad"
        await poison.complete()
        await client.send("p", b"good")
        assert (await client.receive("p", timeout=5)).body == b"good"


async def test_transactions_commit_and_roll_back(served):
    qm, url = served
    await qm.create_queue("in")
    await qm.create_queue("out")
    async with tether.QueueClient.connect(url) as client:
        await client.send("in", b"a")
        async with client.transaction() as tx:
            m = await tx.receive("in", timeout=5)
            with pytest.raises(TransactionError):
                await m.complete()
            await tx.send("out", m.body.upper())
            assert (await qm.queue_info("out")).depth == 0       # not before commit
        assert ((await qm.queue_info("in")).depth, (await qm.queue_info("out")).depth) == (0, 1)

        with pytest.raises(RuntimeError):
            async with client.transaction() as tx:
                m = await tx.receive("out", timeout=5)
                await tx.send("in", b"never")
                raise RuntimeError("boom")
        assert (await qm.queue_info("in")).depth == 0
        m = await client.receive("out", timeout=5)
        assert (m.body, m.delivery_count) == (b"A", 2)
        await m.complete()


async def test_clear_errors_and_the_service_stays_up(served):
    qm, url = served
    await qm.create_queue("small", max_message_size=10)
    async with tether.QueueClient.connect(url) as client:
        with pytest.raises(QueueNotFound, match="nope"):
            await client.send("nope", b"x")
        with pytest.raises(QueueNotFound):
            await client.receive("nope", timeout=1)
        with pytest.raises(MessageTooLarge, match="max_message_size"):
            await client.send("small", b"x" * 11)
        with pytest.raises(MessageTooLarge, match="limit"):
            await client.send("small", b"x" * (9 * 1024 * 1024))
        with pytest.raises(ValueError, match="receive_error_handling"):
            await client.create_queue("q", receive_error_handling="explode")
        with pytest.raises(ValueError, match="bad queue address"):
            await client.send("tether://127.0.0.1/x", b"x")
        with pytest.raises(ValueError, match="queue name"):
            await client.send("bad;name", b"x")
        with pytest.raises(TypeError):
            await client.send("small", "text")
        await client.send("small", b"fine")
        assert (await client.receive("small", timeout=5)).body == b"fine"


@pytest.mark.parametrize("url, match", [
    ("udp://127.0.0.1:1", "tcp://"), ("tcp://127.0.0.1", "port"), ("tcp://:80", "host"),
    ("tcp://127.0.0.1:99999", "port"), ("http://127.0.0.1:80", "tcp://"),
])
async def test_bad_urls(url, match):
    with pytest.raises(ValueError, match=match):
        await tether.QueueClient.connect(url)


async def test_bad_client_settings():
    with pytest.raises(ValueError, match="prefetch"):
        await tether.QueueClient.connect("tcp://127.0.0.1:1", prefetch=0)


async def test_nothing_listening_is_a_clear_error():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(OSError):
        await tether.QueueClient.connect(f"tcp://127.0.0.1:{port}", connect_timeout=2)


async def test_a_session_server_that_is_not_a_queue_manager(served):
    async def echo(session):
        async for data in session:
            await session.send(data)

    server = await tether.serve(echo, "tcp://127.0.0.1:0")
    try:
        with pytest.raises(ProtocolError, match="queue protocol"):
            await tether.QueueClient.connect(server.url_bound, connect_timeout=3)
    finally:
        server.close()
        await server.wait_closed()


async def test_a_plain_tcp_server_on_the_port():
    async def http(reader, writer):
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises((tether.TetherError, OSError)):
            await tether.QueueClient.connect(f"tcp://127.0.0.1:{port}", connect_timeout=1.5)
    finally:
        server.close()
        await server.wait_closed()


async def test_garbage_on_the_service_port_does_not_hurt_it(served):
    qm, url = served
    await qm.create_queue("q")
    host, port = qm.services[0].address
    for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\xff" * 100_000, b"\x00\x00\x00\x05hello"):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(junk)
        await writer.drain()
        await asyncio.wait_for(reader.read(), 5)     # the service hangs up on it
        writer.close()
    async with tether.QueueClient.connect(url) as client:
        await client.send("q", b"still here")
        assert (await client.receive("q", timeout=5)).body == b"still here"


async def _raw_session(url):
    return await tether.connect(url, **P.SESSION_SETTINGS)


@pytest.mark.parametrize("frame, match", [
    (b"\xc1", "not msgpack"),
    (msgpack.packb({"a": 1}), "array"),
    (msgpack.packb([[P.SEND, 1, "q", b"x", None, None, 0, None]]), "HELLO"),
    (msgpack.packb([[P.HELLO, 1, 99, b"0123456789abcdef", 0, []]]), "version 99"),
    (msgpack.packb([[P.HELLO, 1, P.VERSION, b"short", 0, [], None, None]]), "client_id"),
    (msgpack.packb([[P.HELLO, 1, P.VERSION, b"0123456789abcdef", 0, [], None, None],
                    [P.SEND, 2, "q", "not bytes", None, None, 0, None]]), "body"),
    (msgpack.packb([[P.HELLO, 1, P.VERSION, b"0123456789abcdef", 0, [], None, None], [999, 2]]), "unknown request"),
    (msgpack.packb([[P.HELLO, 1, P.VERSION, b"0123456789abcdef", 0, [], None, None], [P.CREDIT, 0, 1]]), "fields"),
])
async def test_malformed_requests_end_that_session_with_a_reason(served, frame, match):
    qm, url = served
    await qm.create_queue("q")
    session = await _raw_session(url)
    await session.send(frame)
    errors = []
    try:
        while True:
            for reply in await asyncio.wait_for(session.recv_many(), 5):
                errors += [item for item in msgpack.unpackb(reply) if item[0] == P.ERROR]
    except tether.TetherError:
        pass
    assert errors and errors[-1][2] == "protocol-error" and match in errors[-1][3]
    async with tether.QueueClient.connect(url) as client:      # others are unaffected
        await client.send("q", b"ok")


async def test_session_loss_keeps_locks_and_releases_the_undelivered(served):
    qm, url = served
    await qm.create_queue("q")
    for i in range(6):
        await qm.send("q", b"%d" % i)
    async with tether.QueueClient.connect(url, prefetch=3) as client:
        held = await client.receive("q", timeout=5)
        await _eventually(lambda: _in_flight_is(qm, "q", 4))
        client._session.abort("test: connection lost")
        await _eventually(lambda: _reconnected(client))
        await held.complete()       # the lock survived the session
        bodies = [held.body]
        for _ in range(5):
            m = await client.receive("q", timeout=5)
            bodies.append(m.body)
            await m.complete()
        assert sorted(bodies) == [b"%d" % i for i in range(6)]
    assert (await qm.queue_info("q")).depth == 0


async def _reconnected(client):
    return client.reconnects >= 1 and client._connected


async def test_client_keeps_consuming_across_a_service_restart(tmp_path):
    data = tmp_path / "qm"
    qm = await tether.QueueManager.open(data, listen="tcp://127.0.0.1:0")
    port = qm.services[0].address[1]
    url = f"tcp://127.0.0.1:{port}"
    try:
        await qm.create_queue("q")
        client = await tether.QueueClient.connect(url, prefetch=2)
        try:
            await client.send("q", b"before")
            m = await client.receive("q", timeout=5)
            await qm.close()
            qm = await tether.QueueManager.open(data, listen=url)
            with pytest.raises(LockLost):
                await m.complete()          # the restart dropped the lock: redelivered, not lost
            sent = await client.send("q", b"after")     # waits for the reconnect
            got = []
            for _ in range(2):
                m = await client.receive("q", timeout=10)
                got.append(m.body)
                await m.complete()
            assert sorted(got) == [b"after", b"before"] and sent
            assert client.reconnects >= 1
        finally:
            await client.close()
    finally:
        await qm.close()


async def test_a_resent_send_is_queued_once(served):
    qm, url = served
    await qm.create_queue("q")
    async with tether.QueueClient.connect(url) as client:
        item = client._send_item("q", b"once", None, None)
        first = await client._request(list(item))
        again = await client._request(list(item))      # as after a lost reply
        assert first == again
        assert (await qm.queue_info("q")).depth == 1


async def test_many_concurrent_receivers_on_one_client(served):
    """Concurrent receive() calls share one subscription and each gets its own message."""
    qm, url = served
    await qm.create_queue("q")
    async with tether.QueueClient.connect(url, prefetch=16) as client:
        ids = await client.send_many("q", [b"%d" % i for i in range(500)])
        got = []

        async def receiver():
            while True:
                m = await client.receive("q", timeout=0.5)
                if m is None:
                    return
                got.append(m.id)
                await m.complete()

        await asyncio.wait_for(asyncio.gather(*(receiver() for _ in range(40))), 30)
        assert sorted(got) == sorted(ids)
        assert len(client._consumers) == 1


@pytest.mark.parametrize("label", ["empty address", "unencodable header", "long queue name",
                                   "int header key", "nan transaction timeout", "empty receive name"])
async def test_client_refuses_what_the_service_would_abort_the_session_for(served, label):
    # such a request used to make the service abort the session; the client resent it on
    # every reconnect, so the call (and every concurrent one) hung in a reconnect loop
    qm, url = served
    await qm.create_queue("q")
    async with tether.QueueClient.connect(url) as client:
        calls = {
            "empty address": lambda: client.send("", b"x"),
            "unencodable header": lambda: client.send("q", b"x", headers={"k": object()}),
            "long queue name": lambda: client.create_queue("a" * 2000),
            "int header key": lambda: client.send("q", b"x", headers={1: "v"}),
            "nan transaction timeout": lambda: client.transaction().receive("q", timeout=float("nan")),
            "empty receive name": lambda: client.receive("", timeout=1),
        }
        other = asyncio.ensure_future(client.send("q", b"ok"))
        with pytest.raises((ValueError, TypeError)):
            await asyncio.wait_for(calls[label](), 5)
        assert isinstance(await asyncio.wait_for(other, 5), str)
        assert client.reconnects == 0
        assert (await client.receive("q", timeout=5)).body == b"ok"
        async with client.transaction() as tx:      # a negative timeout means no wait, as locally
            assert await tx.receive("q", timeout=-1) is None


async def test_close_wakes_a_waiting_receive_with_an_error(served):
    # close() dropped the consumer without waking its waiting receive() calls: they hung
    qm, url = served
    await qm.create_queue("q")
    client = await tether.QueueClient.connect(url)
    waiting = asyncio.ensure_future(client.receive("q"))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await client.close()
    with pytest.raises(tether.QueueError, match="closed"):
        await asyncio.wait_for(waiting, 5)


async def test_a_new_instance_connecting_while_the_old_one_waits_for_messages(served):
    """The old instance's consumer is stopped and its locks released in one step: the
    waiting receive, cancelled but not yet gone from the queue, must not be handed them."""
    qm, url = served
    await qm.create_queue("q")
    await qm.send("q", b"1")
    async with tether.QueueClient.connect(url, client_id=b"same-client-id") as old:
        m = await old.receive("q", timeout=5)       # a lock, and a consumer waiting for more
        await asyncio.sleep(0.05)
        async with tether.QueueClient.connect(url, client_id=b"same-client-id") as new:
            again = await new.receive("q", timeout=5)
            assert again is not None and again.id == m.id
            await again.complete()
