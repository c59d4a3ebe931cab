"""Store-and-forward between two queue managers: a message sent to tether://HOST:PORT/QUEUE
waits, durably, in the sender's transmission queue until the target is reachable, and is
queued there exactly once. Sender and receiver need not run at the same time."""
import asyncio
import socket
import tempfile

import tether


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def main(east_dir, west_dir):
    west = f"127.0.0.1:{free_port()}"                  # where qm-west will listen, later
    async with tether.QueueManager.open(east_dir) as east:
        # qm-west is not running: the message waits in east's `$xmit:` transmission queue
        sent = await east.send(f"tether://{west}/orders", b"order from the east")
        print("waiting in", [(i.name, i.depth) for i in await east.queue_infos()
                             if i.name.startswith("$xmit:")])

        async with tether.QueueManager.open(west_dir, listen=f"tcp://{west}") as qm_west:
            await qm_west.create_queue("orders")
            msg = await qm_west.receive("orders", timeout=30)   # the forwarder retries by itself
            print("west received", msg.body, "with the id east gave it:", msg.id == sent)
            await msg.complete()


with tempfile.TemporaryDirectory() as east, tempfile.TemporaryDirectory() as west:
    asyncio.run(main(east, west))

# Expected output:
#   waiting in [('$xmit:127.0.0.1:...', 1)]
#   west received b'order from the east' with the id east gave it: True
