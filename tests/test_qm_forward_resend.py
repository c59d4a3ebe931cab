"""A FORWARD sent again (its answer was lost: the session broke, either side restarted)
gets the answer the first one got. Bugs the queue simulation (tests/test_queue_sim.py)
found in the target's handling of resent and refused FORWARDs."""
from __future__ import annotations

import asyncio
import time

import tether


async def test_a_resent_forward_queued_before_its_expiry_is_accepted_again():
    # forward seed 24: the first FORWARD was queued, its answer lost in a partition; the
    # resend came after the message's expiry and was refused as expired, so the source
    # dead-lettered a message the target had delivered
    async with tether.QueueManager.open(listen="tcp://127.0.0.1:0") as target:
        await target.create_queue("orders")
        async with tether.QueueClient.connect(target.services[0].url) as client:
            now = time.time()
            assert await client.forward("orders", 1, "id-1", b"x", None, now, now + 0.2) is None
            await asyncio.sleep(0.3)
            assert await client.forward("orders", 1, "id-1", b"x", None, now, now + 0.2) is None
            # a message never queued before is still refused once expired
            try:
                await client.forward("orders", 2, "id-2", b"y", None, now, now + 0.2)
            except tether.QueueError as exc:
                assert exc.code == "expired"
            else:
                raise AssertionError("an expired FORWARD was accepted")
        assert (await target.queue_info("orders")).depth + (await target.queue_info("$dead")).depth <= 1


async def test_a_forwarders_client_tells_no_floor_of_its_own_after_a_reconnect():
    # forward seed 375: sequence 2 was accepted while 1 was refused for now (the target's
    # write failed); after a reconnect the client told the floor 3 (the target's
    # next_sequence), so the resent sequence 1 was answered as a duplicate and never queued
    async with tether.QueueManager.open(listen="tcp://127.0.0.1:0") as target:
        await target.create_queue("orders")
        forwarder_id = b"forwarder-under-test"
        now = time.time()
        async with tether.QueueClient.connect(target.services[0].url, client_id=forwarder_id) as client:
            assert await client.forward("orders", 2, "id-2", b"second", None, now, None) is None
        async with tether.QueueClient.connect(target.services[0].url, client_id=forwarder_id) as client:
            await asyncio.sleep(0.05)         # the client's first frames, floor and all, are in
            assert await client.forward("orders", 1, "id-1", b"first", None, now, None) is None
        got = sorted([(await target.receive("orders", timeout=1)).id for _ in range(2)])
        assert got == ["id-1", "id-2"]


async def test_forwards_are_answered_when_the_return_queue_cannot_be_made(tmp_path, monkeypatch):
    # forward seed 22: the write defining the forwarder's return queue failed; the service
    # kept that failure for the connection and answered none of its FORWARDs, ever again
    async with tether.QueueManager.open(tmp_path / "t", listen="tcp://127.0.0.1:0") as target:
        await target.create_queue("orders")
        async with tether.QueueClient.connect(target.services[0].url, client_id=b"forwarder-under-test") as client:
            store = target.operations.store
            real = store.append

            def failing_once(record, done):
                monkeypatch.setattr(store, "append", real)
                asyncio.get_running_loop().call_soon(done, tether.StorageError("disk full (simulated)"))

            monkeypatch.setattr(store, "append", failing_once)
            now = time.time()
            try:
                await asyncio.wait_for(client.forward("orders", 1, "id-1", b"x", None, now, None), 5)
            except tether.QueueError as exc:
                assert exc.code == "storage-error"      # refused for now: the forwarder sends it again
            else:
                raise AssertionError("queued without its return queue")
            assert await asyncio.wait_for(client.forward("orders", 1, "id-1", b"x", None, now, None), 5) is None
        assert (await target.receive("orders", timeout=1)).id == "id-1"
