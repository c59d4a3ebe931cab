"""What a forwarder does when its own side fails after the target has a message: a
completion the journal refuses is retried (the message is given back and sent again after
a pause; the target answers it as a duplicate), and a message that may have reached its
target is never expired locally: the target, which alone knows, decides."""
from __future__ import annotations

import asyncio
import time

import tether
from tether.errors import StorageError
from tether.queue.core import records as R

XMIT_REMOVE = R.REMOVE


async def _until(check, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def _fail_completions_until(qm, until: float) -> list[int]:
    """Make the source's journal refuse records that complete a transmission-queue message."""
    store = qm.operations.store
    real = store.append
    refused: list[int] = []

    def append(record, done):
        ops = R.decode(record)
        if time.time() < until and any(op[0] == XMIT_REMOVE and op[1].startswith("$xmit:") for op in ops):
            refused.append(1)
            asyncio.get_running_loop().call_soon(done, StorageError("disk trouble (simulated)"))
            return
        real(record, done)

    store.append = append
    return refused


async def test_a_failed_completion_is_retried_and_the_message_is_not_expired_here(tmp_path):
    async with tether.QueueManager.open(tmp_path / "t", listen="tcp://127.0.0.1:0") as target, \
            tether.QueueManager.open(tmp_path / "a") as a:
        await target.create_queue("orders")
        address = f"tether://127.0.0.1:{target.services[0].address[1]}/orders"
        refused = _fail_completions_until(a, time.time() + 2.5)
        await a.send(address, b"once", time_to_live=1.5)     # it expires here before it settles
        m = await target.receive("orders", timeout=5)         # ... but it was delivered in time
        assert m.body == b"once"
        await m.complete()
        xmit = "$xmit:" + address.split("/")[2]

        async def settled():
            info = await a.queue_info(xmit)
            return info.depth == 0 and info.in_flight == 0

        await _until(settled)
        assert refused, "no completion was refused: nothing was tested"
        assert time.time() > m.expires_at, "it settled before it expired: nothing was tested"
        # delivered once, and neither expired nor dead-lettered here
        assert (await a.queue_info("$dead")).depth == 0
        info = await target.queue_info("orders")
        assert (info.depth, info.in_flight, info.dead) == (0, 0, 0)


async def test_an_expired_message_that_never_left_is_dead_lettered_by_the_target_answer(tmp_path):
    """A message whose time-to-live ran out in the transmission queue after it was taken
    once is sent anyway: the target never had it, answers "expired", and it is dead-lettered
    here with the destination as its source."""
    async with tether.QueueManager.open(tmp_path / "t", listen="tcp://127.0.0.1:0") as target, \
            tether.QueueManager.open(tmp_path / "a") as a:
        await target.create_queue("orders")
        address = f"tether://127.0.0.1:{target.services[0].address[1]}/orders"
        target_service = target.services[0]
        await target_service.close()             # the target goes away before anything is sent
        await a.send(address, b"late", time_to_live=0.3)
        await asyncio.sleep(0.6)
        dead = await a.receive("$dead", timeout=5)
        assert (dead.body, dead.dead_letter_reason, dead.dead_letter_source) == (b"late", "expired", address)
