"""Transactions: receives and sends that happen together or not at all; receive_batch takes
many messages in one transaction (one journal write, one fsync, for the whole batch)."""
import asyncio
import tempfile

import tether


async def main(data):
    async with tether.QueueManager.open(data) as qm:
        for name in ("orders", "invoices"):
            await qm.create_queue(name)
        await qm.send_many("orders", [b"order 1", b"order 2", b"order 3"])   # one durable write

        async with qm.transaction() as tx:                 # commits when the block ends
            order = await tx.receive("orders", timeout=5)
            await tx.send("invoices", b"invoice for " + order.body)
        async with await qm.receive("invoices", timeout=5) as invoice:
            print("committed:", invoice.body)

        try:
            async with qm.transaction() as tx:             # an exception rolls it back:
                order = await tx.receive("orders", timeout=5)
                await tx.send("invoices", b"invoice for " + order.body)
                raise RuntimeError("billing is down")
        except RuntimeError:
            pass
        info = await qm.queue_info("invoices")
        print("rolled back:", info.depth, "new invoices;", "order 2 is back:",
              [m.body for m in await qm.peek("orders", 10)])

        async with qm.receive_batch("orders", max_messages=100, timeout=5) as batch:
            print("batch:", [m.body for m in batch])      # all completed at once on exit
        print("orders left:", (await qm.queue_info("orders")).depth)


with tempfile.TemporaryDirectory() as scratch:
    asyncio.run(main(scratch))

# Expected output:
#   committed: b'invoice for order 1'
#   rolled back: 0 new invoices; order 2 is back: [b'order 2', b'order 3']
#   batch: [b'order 2', b'order 3']
#   orders left: 0
