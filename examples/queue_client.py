"""A queue manager serving remote clients, and a QueueClient: the same methods as the
embedded QueueManager, over a reliable TCP session (tls:// for TLS)."""
import asyncio

import tether


async def main():
    # `tether qm serve` does this in a process of its own; here the service is embedded
    async with tether.QueueManager.open(listen="tcp://127.0.0.1:0") as qm:
        await qm.create_queue("orders")
        url = qm.services[0].url                          # tcp://127.0.0.1:PORT

        async with tether.QueueClient.connect(url) as producer:
            print("sent", await producer.send("orders", b"order 1"))

        async with tether.QueueClient.connect(url) as consumer:
            msg = await consumer.receive("orders", timeout=5)
            print("received", msg.body, msg.id)
            await msg.complete()
            print([(info.name, info.depth) for info in await consumer.queue_infos()])
            try:
                await consumer.send("nowhere", b"?")
            except tether.QueueNotFound as error:         # remote errors keep their class
                print("QueueNotFound:", error)


asyncio.run(main())

# Expected output:
#   sent ...-1.0
#   received b'order 1' ...-1.0
#   [('$dead', 0), ('$journal', 0), ('orders', 0)]
#   QueueNotFound: no queue named 'nowhere'
