"""A durable queue in your own process: send, receive under a peek-lock, complete; the
messages survive a restart of the queue manager."""
import asyncio
import tempfile

import tether


async def main(data):                          # data: the journal's directory
    async with tether.QueueManager.open(data) as qm:
        await qm.create_queue("orders")        # durable by default; again with the same settings: no-op
        await qm.send("orders", b"order 1", headers={"customer": 42})   # returns once on disk
        await qm.send("orders", b"order 2")

    async with tether.QueueManager.open(data) as qm:   # a restart: both messages are still there
        print("after restart:", (await qm.queue_info("orders")).depth, "messages")
        msg = await qm.receive("orders", timeout=5)    # peek-locked: invisible to other receivers
        print(msg.body, dict(msg.headers), "delivery", msg.delivery_count)
        await msg.abandon()                    # a failed delivery: back to the front of the queue
        msg = await qm.receive("orders", timeout=5)
        print(msg.body, "delivery", msg.delivery_count)
        await msg.complete()                   # gone for good
        async with await qm.receive("orders", timeout=5) as msg:   # completes on exit,
            print(msg.body)                                        # abandons on an exception
        print("left:", (await qm.queue_info("orders")).depth)
        print(await qm.receive("orders", timeout=0.1))             # None: nothing within 0.1 s


with tempfile.TemporaryDirectory() as scratch:     # say, /var/lib/myapp in real life
    asyncio.run(main(scratch))

# Expected output:
#   after restart: 2 messages
#   b'order 1' {'customer': 42} delivery 1
#   b'order 1' delivery 2
#   b'order 2'
#   left: 0
#   None
