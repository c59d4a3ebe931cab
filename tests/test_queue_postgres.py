"""Queue features on the PostgreSQL store, with several queue managers on one database:
each message to one consumer, TTL and dead letters with their reason, poison handling,
peek-lock expiry and renewal, transactions, dedupe, max_length, NOTIFY wake-ups, and a
closed manager's locks returning. (The model tests run on it too: conftest's `api`.)"""
from __future__ import annotations

import asyncio

import pytest

import tether
from tether import LockLost, PoisonMessage, QueueExists, QueueFull, TransactionError

pytestmark = pytest.mark.usefixtures("postgres_cluster")


@pytest.fixture
async def managers(postgres_url):
    """Three queue managers on one fresh database."""
    opened = [await tether.QueueManager.open(postgres_url) for _ in range(3)]
    try:
        yield opened
    finally:
        for qm in opened:
            await qm.close()


async def test_competing_managers_get_each_message_exactly_once(managers):
    await managers[0].create_queue("q")
    await asyncio.sleep(0.1)            # (the others learn of it by NOTIFY, or on first use)
    bodies = [b"%d" % i for i in range(300)]
    await managers[1].send_many("q", bodies)
    got: list[bytes] = []

    async def consume(qm):
        while True:
            m = await qm.receive("q", timeout=0.5)
            if m is None:
                return
            got.append(m.body)
            await m.complete()

    await asyncio.gather(*(consume(qm) for qm in managers for _ in range(3)))
    assert sorted(got) == sorted(bodies)
    assert (await managers[2].queue_info("q"))["depth"] == 0


async def test_a_waiting_receiver_is_woken_by_a_send_through_another_manager(managers):
    a, b, _ = managers
    await a.create_queue("q")
    await b.create_queue("q")
    waiting = asyncio.ensure_future(b.receive("q", timeout=30))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await a.send("q", b"hello")
    message = await asyncio.wait_for(waiting, 10)      # long before its own timeout
    assert message.body == b"hello"


async def test_definitions_are_shared_and_checked(managers):
    a, b, _ = managers
    await a.create_queue("q", max_retry_cycles=1)
    with pytest.raises(QueueExists):
        await b.create_queue("q", max_retry_cycles=2)
    await asyncio.sleep(0.2)
    assert "q" in await b.queues()
    await b.delete_queue("q")
    await asyncio.sleep(0.2)
    assert "q" not in await a.queues()


async def test_priority_first_then_fifo(managers):
    a, b, _ = managers
    await a.create_queue("q")
    await a.send("q", b"low", priority=1)
    await a.send("q", b"mid-1")
    await a.send("q", b"high", priority=7)
    await a.send("q", b"mid-2")
    await b.create_queue("q")
    got = [(await b.receive("q", timeout=1)).body for _ in range(4)]
    assert got == [b"high", b"mid-1", b"mid-2", b"low"]


async def test_time_to_live_dead_letters_with_the_reason(managers):
    a, b, _ = managers
    await a.create_queue("q")
    await a.send("q", b"short", time_to_live=0.3)
    await a.send("q", b"long")
    await asyncio.sleep(0.5)
    await b.create_queue("q")
    assert (await b.receive("q", timeout=0.5)).body == b"long"
    dead = await b.receive("$dead", timeout=5)
    assert dead is not None and dead.body == b"short"
    assert dead.dead_letter_reason == "expired" and dead.dead_letter_source == "q"
    assert (await a.queue_info("q"))["dead"] == 1


async def test_a_custom_dead_letter_queue_and_none(managers):
    a, _, _ = managers
    await a.create_queue("dlq")
    await a.create_queue("q", dead_letter_queue="dlq")
    await a.create_queue("gone", dead_letter_queue="none")
    await a.send("q", b"x", time_to_live=0.2)
    await a.send("gone", b"y", time_to_live=0.2)
    dead = await a.receive("dlq", timeout=5)
    assert dead.body == b"x" and dead.dead_letter_reason == "expired"
    await asyncio.sleep(0.3)
    info = await a.queue_info("gone")
    assert info["depth"] == 0 and await a.receive("$dead", timeout=0.3) is None


async def test_poison_fault_stops_the_queue_until_the_poison_is_taken(managers):
    a, b, _ = managers
    await a.create_queue("q", receive_retry_count=1, max_retry_cycles=0)
    await a.send("q", b"bad")
    await a.send("q", b"good")
    for expected_count in (1, 2):
        m = await b.receive("q", timeout=1) if expected_count == 1 else await a.receive("q", timeout=1)
        assert m.body == b"bad" and m.delivery_count == expected_count
        await m.abandon()
    with pytest.raises(PoisonMessage):
        await b.receive("q", timeout=0.2)
    assert (await a.queue_info("q"))["faulted"]
    poison = await a.receive("q;poison", timeout=1)
    assert poison.body == b"bad"
    await poison.complete()
    assert (await b.receive("q", timeout=1)).body == b"good"


async def test_poison_move_and_reject_and_retry_cycle(managers):
    a, b, _ = managers
    await a.create_queue("moved", receive_retry_count=0, max_retry_cycles=1, retry_cycle_delay=0.3,
                         receive_error_handling="move")
    await a.create_queue("rejected", receive_retry_count=0, max_retry_cycles=0, receive_error_handling="reject")
    await a.send("moved", b"m")
    first = await a.receive("moved", timeout=1)
    await first.abandon()                                  # 1st failure: to ;retry for 0.3 s
    assert (await a.queue_info("moved"))["retrying"] == 1
    again = await b.receive("moved", timeout=5)            # back after the delay, through b
    assert again.body == b"m" and again.delivery_count == 2
    await again.abandon()                                  # 2nd: every cycle done: ;poison
    assert (await a.receive("moved;poison", timeout=1)).body == b"m"
    await a.send("rejected", b"r")
    await (await a.receive("rejected", timeout=1)).abandon()
    dead = await b.receive("$dead", timeout=1)
    assert dead.body == b"r" and dead.dead_letter_reason == "rejected"


async def test_an_expired_peek_lock_returns_as_a_failed_delivery_and_renew_keeps_it(managers):
    a, b, _ = managers
    await a.create_queue("q", validity_duration=0.5)
    await a.send("q", b"slow")
    await a.send("q", b"renewed")
    slow = await a.receive("q", timeout=1)
    renewed = await a.receive("q", timeout=1)
    for _ in range(4):
        await asyncio.sleep(0.2)
        await renewed.renew_lock()
    again = await b.receive("q", timeout=5)        # the expired one, redelivered elsewhere
    assert again.body == b"slow" and again.delivery_count == 2
    with pytest.raises(LockLost):
        await slow.complete()
    await renewed.complete()                       # still ours: renewed past its first deadline
    await again.complete()
    assert (await a.queue_info("q"))["depth"] == 0


async def test_a_closed_managers_locks_return_uncounted(managers, postgres_url):
    a, b, _ = managers
    await a.create_queue("q")
    await a.send("q", b"held")
    other = await tether.QueueManager.open(postgres_url)
    held = await other.receive("q", timeout=1)
    assert held.delivery_count == 1
    await other.close()
    again = await b.receive("q", timeout=5)
    assert again.body == b"held" and again.delivery_count == 1


async def test_transactions_commit_and_roll_back_across_managers(managers):
    a, b, _ = managers
    await a.create_queue("in")
    await a.create_queue("out")
    await a.send_many("in", [b"1", b"2"])
    async with b.transaction() as tx:
        m = await tx.receive("in", timeout=1)
        await tx.send("out", m.body + b"!")
    assert (await a.receive("out", timeout=1)).body == b"1!"
    with pytest.raises(RuntimeError):
        async with a.transaction() as tx:
            m = await tx.receive("in", timeout=1)
            await tx.send("out", b"never")
            raise RuntimeError("roll back")
    back = await b.receive("in", timeout=1)
    assert back.body == b"2" and back.delivery_count == 2
    assert await b.receive("out", timeout=0.2) is None
    await back.complete()


async def test_a_commit_with_a_lost_lock_changes_nothing(managers):
    a, _, _ = managers
    await a.create_queue("in", validity_duration=0.2)
    await a.create_queue("out")
    await a.send("in", b"x")
    with pytest.raises(TransactionError):
        async with a.transaction() as tx:
            await tx.receive("in", timeout=1)
            await tx.send("out", b"y")
            await asyncio.sleep(0.4)
    assert await a.receive("out", timeout=0.2) is None


async def test_a_producers_resend_through_another_manager_is_not_queued_twice(managers):
    a, b, _ = managers
    await a.create_queue("q")
    await b.create_queue("q")
    ids = []
    for qm in (a, b, a):
        ops = qm.operations
        producer, epoch = await ops.open_producer(b"producer-1", 0)
        entry = ops.prepare("q", b"once")
        ids.append((await ops.send([entry], producer=producer, epoch=epoch, sequences=[7]))[0])
    assert ids[1] == ids[0] and ids[2] == ids[0]
    assert (await a.queue_info("q"))["depth"] == 1


async def test_max_length_holds_across_managers(managers):
    a, b, _ = managers
    await a.create_queue("q", max_length=3)
    await b.create_queue("q", max_length=3)
    await a.send_many("q", [b"1", b"2"])
    await b.send("q", b"3")
    with pytest.raises(QueueFull):
        await a.send("q", b"4")


async def test_scheduled_delivery_wakes_the_receiver(managers):
    a, b, _ = managers
    await a.create_queue("q")
    await b.create_queue("q")
    await a.send("q", b"later", delay=0.4)
    assert await b.receive("q", timeout=0.1) is None
    assert (await b.receive("q", timeout=5)).body == b"later"


async def test_groups_go_whole_to_one_manager(managers):
    a, b, _ = managers
    await a.create_queue("q")
    await b.create_queue("q")
    await a.send_many("q", [b"g1.%d" % i for i in range(3)], group_id="g1")
    async with a.accept_group("q", timeout=1) as group:
        assert group.group_id == "g1"
        with pytest.raises(TimeoutError):
            async with b.accept_group("q", timeout=0.3):
                pass
        got = []
        async for m in group:
            got.append(m.body)
            await m.complete()
            if len(got) == 3:
                break
    assert got == [b"g1.0", b"g1.1", b"g1.2"]


async def test_store_and_forward_by_one_forwarder_at_a_time_handed_over_on_close(postgres_url, tmp_path):
    """Two managers send to one remote queue through the database's transmission queue;
    exactly one forwards it; once it closes, the other takes over and nothing is doubled."""
    async with tether.QueueManager.open(tmp_path / "target", listen="tcp://127.0.0.1:0") as target:
        await target.create_queue("inbox")
        address = f"tether://127.0.0.1:{target.services[0].address[1]}/inbox"
        a = await tether.QueueManager.open(postgres_url, client_grace=0.6)
        b = await tether.QueueManager.open(postgres_url, client_grace=0.6)
        try:
            for i in range(20):
                await a.send(address, b"a.%d" % i)
                await b.send(address, b"b.%d" % i)
            got = []

            async def receive(count):
                while len(got) < count:
                    msg = await target.receive("inbox", timeout=10)
                    assert msg is not None, f"only {len(got)} of {count} messages arrived"
                    got.append(msg.body)
                    await msg.complete()

            await receive(40)
            assert [f.holding for f in a.forwarders + b.forwarders].count(True) == 1
            holder, other = (a, b) if a.forwarders[0].holding else (b, a)
            await holder.close()
            for i in range(20, 30):
                await other.send(address, b"o.%d" % i)
            await receive(50)
            assert other.forwarders[0].holding
            assert await target.receive("inbox", timeout=0.3) is None
            assert len(set(got)) == 50
            for sender in (b"a", b"b", b"o"):
                order = [int(x.split(b".")[1]) for x in got if x.startswith(sender + b".")]
                assert order == sorted(order)
            xmit = next(q for q in await other.queues() if q.startswith("$xmit:"))
            info = await other.queue_info(xmit)
            assert (info["depth"], info["in_flight"]) == (0, 0)
        finally:
            await a.close()
            await b.close()


async def test_total_counters_count_what_this_process_did(managers):
    """tether_queue_sent_total / received_total / dead_lettered_total on a shared store:
    each manager counts its own operations (the database holds no per-process history)."""
    from tether import metrics

    a, b = managers[0], managers[1]
    await a.create_queue("counted", receive_retry_count=0, max_retry_cycles=0, receive_error_handling="reject")
    await a.send_many("counted", [b"1", b"2", b"3"])
    first = await b.receive("counted", timeout=5)
    await first.complete()
    second = await b.receive("counted", timeout=5)
    await second.abandon()                                  # poison, rejected: to $dead
    async with b.transaction() as tx:                        # a rolled-back send counts nothing
        await tx.send("counted", b"never")
        await tx.rollback()
    assert a.statistics().traffic["counted"] == (3, 0)
    assert b.statistics().traffic["counted"] == (0, 1)
    assert b.statistics().dead_lettered == {("counted", "rejected"): 1}
    assert a.statistics().dead_lettered == {}
    text = metrics.render().decode()
    assert 'tether_queue_sent_total{queue="counted"} 3.0' in text
    assert 'tether_queue_received_total{queue="counted"} 1.0' in text
    assert 'tether_queue_dead_lettered_total{queue="counted",reason="rejected"} 1.0' in text


async def test_metrics_read_the_database_counts_as_of_the_previous_scrape(managers):
    """A scrape cannot wait for the database: it reports the counts the previous scrape
    started reading, so the second scrape after a send sees it."""
    from tether import metrics

    qm = managers[0]
    await qm.create_queue("metered", durable=True)
    for i in range(3):
        await qm.send("metered", b"m%d" % i)
    await managers[1].receive("metered", timeout=5)        # one in flight, through the other
    metrics.render()                                        # starts the reads
    for _ in range(100):                                    # bounded: the reads are in flight
        await asyncio.sleep(0.02)
        text = metrics.render().decode()
        if 'tether_queue_messages{queue="metered"} 2.0' in text:
            break
    # three managers of this process share the database: its queue is reported once
    assert 'tether_queue_messages{queue="metered"} 2.0' in text
    assert 'tether_queue_in_flight{queue="metered"} 1.0' in text


async def test_a_managers_clock_replaces_the_databases(postgres_url):
    """With clock=, statements take `now` from it: the message is stamped, locked and found
    expired by that clock, not the database's (the queue simulation relies on it)."""
    now = [2_000_000_000.0]            # years ahead of the database's clock
    async with tether.QueueManager.open(postgres_url, clock=lambda: now[0]) as qm:
        await qm.create_queue("q", validity_duration=5.0)
        await qm.send("q", b"a", time_to_live=60)
        m = await qm.receive("q", timeout=0)
        assert m.enqueued_at == now[0] and m.expires_at == now[0] + 60
        assert m.lock_deadline == now[0] + 5.0          # lock_until computed in the database
        await m.abandon()
        now[0] += 61                                     # past its time-to-live by this clock only
        assert await qm.receive("q", timeout=0) is None
        await qm.operations._sweep()
        dead = await qm.receive("$dead", timeout=0)
        assert dead.body == b"a" and dead.dead_letter_reason == "expired"
        await dead.complete()


async def test_clock_must_be_callable(postgres_url):
    with pytest.raises(TypeError, match="clock must be a callable"):
        await tether.QueueManager.open(postgres_url, clock=5.0)
    with pytest.raises(TypeError, match="clock must be a callable"):
        await tether.QueueManager.open(clock="now")


async def test_the_forwarding_floor_never_passes_a_send_still_committing(postgres_url):
    """A message bound for a transmission queue is numbered under the queue's row lock in
    its sending transaction: while that transaction is open, the floor told to the target
    (every sequence below it settled) stays at or below its number, even with the queue
    emptied meanwhile; and sequences committed one after another rise."""
    import asyncpg

    from tether.queue import shared_forwarding

    async with tether.QueueManager.open(postgres_url) as qm:
        address = "tether://127.0.0.1:9/q"          # nothing listens there: messages stay
        xmit = "$xmit:127.0.0.1:9"
        await qm.send(address, b"first")
        conn = await asyncpg.connect(postgres_url)
        try:
            sending = conn.transaction()
            await sending.start()
            entry = qm.operations.prepare(xmit, b"second", destination=address)
            await shared_forwarding.number(conn, [entry])
            assert await qm.purge_queue(xmit) == 1
            assert await qm.operations.lowest_sequence(xmit) <= entry.sequence
            await sending.rollback()
        finally:
            await conn.close()
        await qm.send(address, b"third")
        await qm.send(address, b"fourth")
        third, fourth = await qm.operations.peek(xmit, 2)
        assert entry.sequence <= third.sequence < fourth.sequence
        assert await qm.operations.lowest_sequence(xmit) == third.sequence

