"""Store-and-forward between hosts of their own (network namespaces joined by a bridge, a
`tether qm serve` in each; tests/qm_hosts.py): hosts a and b both send to queue `orders`
on host c while links are cut and restored, c is killed with SIGKILL and restarted, or a
partition outlasts some messages' time-to-live. Every message arrives at c once, in order
per sender, or is dead-lettered at its sender with its reason (`expired`; and for a queue
c does not have or one that rejects it, `queue-not-found` and `rejected`).

Run as root (`.ci/run` is); elsewhere they skip, saying why. `-m netns` selects them."""
from __future__ import annotations

import asyncio
import time

import pytest

from qm_hosts import QmHost, qm_hosts, qm_hosts_secrets  # noqa: F401  (fixtures)
from tls_pki import pki  # noqa: F401  (a fixture qm_hosts_secrets uses)

pytestmark = [pytest.mark.netns, pytest.mark.fault]

BATCHES = 30            # each sender sends this many batches ...
BATCH = 20              # ... of this many messages,
PACE = 0.1              # ... one every PACE seconds: the transfer lasts ~3 s
DELIVERY_TIMEOUT = 40.0


async def _stream(sender: QmHost, target: QmHost, *, batches: int = BATCHES, **send) -> list[str]:
    """Send `batches` batches of BATCH messages ("NAME.I") to `orders` at the target, paced;
    their ids in the order sent."""
    name = sender.name.encode()

    async def run(client):
        ids = []
        for b in range(batches):
            bodies = [b"%s.%d" % (name, b * BATCH + i) for i in range(BATCH)]
            ids += await client.send_many(target.queue("orders"), bodies, **send)
            await asyncio.sleep(PACE)
        return ids
    return await sender.call(run)


async def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def _delivered(target: QmHost, expected: int) -> dict[str, list[str]]:
    """Once `orders` at the target holds `expected` messages: their ids per sender, in the
    order received (and nothing more arrives)."""
    async def arrived():
        return await target.depth("orders") >= expected
    await _wait_for(arrived, DELIVERY_TIMEOUT, f"{expected} messages at {target.name}")
    got: dict[str, list[str]] = {}
    for message in await target.drain("orders", quiet=0.5):
        got.setdefault(message.body.split(b".")[0].decode(), []).append(message.id)
    return got


async def _nothing_more(c: QmHost, *senders: QmHost, dead_at: tuple[QmHost, ...] = ()) -> None:
    """The senders' transmission queues to c are empty, no duplicate came late to c, and no
    dead letter is anywhere but at `dead_at`."""
    await _settled(*senders, to=c)
    assert await c.pending("orders") == 0
    for host in (*senders, c):
        if host not in dead_at:
            assert await host.drain("$dead", quiet=0.1) == []


async def _settled(*hosts: QmHost, to: QmHost) -> None:
    """Every transmission queue to `to` is empty (everything forwarded is settled at its sender)."""
    async def empty():
        return all([await host.pending(host.transmission_queue(to)) == 0 for host in hosts])
    await _wait_for(empty, 20, "the transmission queues to empty")


async def test_links_cut_and_restored_mid_transfer(qm_hosts):
    a, b, c = qm_hosts["a"], qm_hosts["b"], qm_hosts["c"]
    # twice the usual transfer (~6 s), so it still runs when b's link goes down at ~3 s
    senders = asyncio.gather(_stream(a, c, batches=2 * BATCHES), _stream(b, c, batches=2 * BATCHES))
    held = {}
    # each link goes down for a while during the transfer, and comes back
    for host in (a, c, b):
        await asyncio.sleep(0.5)
        a.hosts.cut(host.name)
        await asyncio.sleep(0.8)
        if host is not c:
            held[host.name] = await host.pending(host.transmission_queue(c))
        a.hosts.restore(host.name)
    sent_a, sent_b = await senders
    assert held["a"] > 0 and held["b"] > 0, f"the cuts held nothing back: {held}"
    got = await _delivered(c, len(sent_a) + len(sent_b))
    assert got == {"a": sent_a, "b": sent_b}        # once each, in order per sender
    await _nothing_more(c, a, b)


async def test_target_killed_and_restarted_mid_transfer(qm_hosts):
    a, b, c = qm_hosts["a"], qm_hosts["b"], qm_hosts["c"]
    senders = asyncio.gather(_stream(a, c), _stream(b, c))

    async def landed():
        return await c.depth("orders") > 0
    await _wait_for(landed, 20, "the first messages at c")
    before_kill = await c.depth("orders")
    await c.kill()
    await asyncio.sleep(0.5)
    await c.start()         # the same data directory
    sent_a, sent_b = await senders
    total = len(sent_a) + len(sent_b)
    assert before_kill < total, "the transfer finished before the kill; nothing was tested"
    got = await _delivered(c, total)
    assert got == {"a": sent_a, "b": sent_b}        # once each, in order per sender
    await _nothing_more(c, a, b)


async def test_a_partition_that_outlasts_the_time_to_live(qm_hosts):
    """a is cut off from c for longer than some of its messages may live: those end in a's
    $dead as `expired`, the rest arrive once the link is back; b, never cut off, goes on."""
    a, b, c = qm_hosts["a"], qm_hosts["b"], qm_hosts["c"]
    ttl = 1.0
    address = c.queue("orders")
    first = await _stream(a, c, batches=2)

    async def arrived():
        return await c.depth("orders") == len(first)
    await _wait_for(arrived, 20, "a's first messages at c")
    a.hosts.cut("a")
    partition_ends = time.monotonic() + ttl + 1.5
    b_sender = asyncio.create_task(_stream(b, c))

    async def interleave(client):
        long, short = [], []
        for i in range(10):
            long += await client.send_many(address, [b"a.%d" % (len(first) + 2 * i + j) for j in range(2)])
            short += await client.send_many(address, [b"a-short.%d" % i], time_to_live=ttl)
        return long, short
    long, short = await a.call(interleave)
    await asyncio.sleep(max(0.0, partition_ends - time.monotonic()))
    a.hosts.restore("a")
    sent_b = await b_sender
    got = await _delivered(c, len(first) + len(long) + len(sent_b))
    assert got == {"a": first + long, "b": sent_b}
    await _nothing_more(c, a, b, dead_at=(a,))
    dead = await a.drain("$dead", quiet=0.5)
    assert sorted(m.id for m in dead) == sorted(short) and len(dead) == len(short)
    assert {(m.dead_letter_reason, m.dead_letter_source) for m in dead} == {("expired", address)}


async def test_a_sender_killed_and_restarted_mid_transfer(qm_hosts):
    """a's queue manager dies with messages in its transmission queue and in flight; its
    application's client reconnects and resends, its forwarder starts again, and c gets
    each message once, in order."""
    a, b, c = qm_hosts["a"], qm_hosts["b"], qm_hosts["c"]
    senders = asyncio.gather(_stream(a, c), _stream(b, c))

    async def landed():
        return await c.depth("orders") > 0
    await _wait_for(landed, 20, "the first messages at c")
    await a.kill()
    await asyncio.sleep(0.5)
    await a.start()
    sent_a, sent_b = await senders
    got = await _delivered(c, len(sent_a) + len(sent_b))
    assert got == {"a": sent_a, "b": sent_b}
    await _nothing_more(c, a, b)


async def test_refusals_come_back_to_the_senders_dead_letter_queue(qm_hosts):
    """A message for a queue c does not have, and one c's queue rejects: both end in a's
    $dead, with the reason (`queue-not-found`, `rejected`) and their destination."""
    a, c = qm_hosts["a"], qm_hosts["c"]

    async def make_picky(client):
        await client.create_queue("picky", receive_error_handling="reject", receive_retry_count=0,
                                  max_retry_cycles=0)
    await c.call(make_picky)

    async def send(client):
        return (await client.send(c.queue("nosuch"), b"lost"), await client.send(c.queue("picky"), b"refused"))
    lost, refused = await a.call(send)

    async def reject(client):
        message = await client.receive("picky", timeout=10)
        await message.abandon()         # no retries: rejected, back to where it came from
        return message.id
    assert await c.call(reject) == refused

    async def both_back():
        return await a.depth("$dead") >= 2
    await _wait_for(both_back, 20, "both refusals in a's $dead")
    dead = await a.drain("$dead", quiet=0.5)
    assert sorted((m.id, m.dead_letter_reason, m.dead_letter_source) for m in dead) == sorted(
        [(lost, "queue-not-found", c.queue("nosuch")), (refused, "rejected", c.queue("picky"))])
    assert await c.pending("picky") == 0
