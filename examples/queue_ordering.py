"""Which message comes next: priorities, scheduled delivery, and groups (a consumer takes a
whole group, in send order, while nobody else gets any of it)."""
import asyncio

import tether


async def main():
    async with tether.QueueManager.open() as qm:
        await qm.create_queue("orders")
        await qm.send("orders", b"routine")                  # priority 3 by default
        await qm.send("orders", b"urgent", priority=7)       # 0..7, higher first
        await qm.send("orders", b"later", delay=2)           # invisible for 2 s
        await qm.send_many("orders", [b"cart: add", b"cart: pay"], group_id="cart-42")
        print("peek:", [m.body for m in await qm.peek("orders", 10)])   # no lock, nothing counted

        async with qm.accept_group("orders", timeout=5) as group:       # the whole group is ours
            async for msg in group:                                     # in send order; ends
                async with msg:                                         # when none is ready
                    print(group.group_id, msg.body)

        async for msg in qm.consume("orders", timeout=3):    # ends after 3 s without a message
            async with msg:
                print("consumed:", msg.body)


asyncio.run(main())

# Expected output:
#   peek: [b'urgent', b'routine', b'cart: add', b'cart: pay']
#   cart-42 b'cart: add'
#   cart-42 b'cart: pay'
#   consumed: b'urgent'
#   consumed: b'routine'
#   consumed: b'later'
