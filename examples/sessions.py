"""Reliable sessions over UDP and TCP: exactly once, in order (or as messages arrive)."""
import asyncio

import tether


async def echo(session):                       # a task per session; closed when it returns
    async for message in session:              # ends when the peer closes its side
        await session.send(message.upper())


async def main():
    for scheme in ("udp", "tcp"):
        server = await tether.serve(echo, f"{scheme}://127.0.0.1:0")   # port 0: any free port
        host, port = server.address
        # settings are keyword arguments, validated at once; the client's `ordered` applies
        async with tether.connect(f"{scheme}://{host}:{port}", max_transfer_window=64,
                                  ordered=True) as session:
            await session.send_many([b"one", b"two", b"three"])  # waits while the window is full
            replies = [await session.recv() for _ in range(3)]
            await session.flush()                                # all sent is acknowledged
            print(scheme, replies, "acked:", session.stats["acked"])
        server.close()
        await server.wait_closed()

    # ordered=False: still exactly once, but a message is not held back behind a lost one
    server = await tether.serve(echo, "udp://127.0.0.1:0")
    host, port = server.address
    async with tether.connect(f"udp://{host}:{port}", ordered=False) as session:
        await session.send_many([b"a", b"b", b"c"])
        print("unordered", sorted([await session.recv() for _ in range(3)]))
    server.close()
    await server.wait_closed()

    try:
        await tether.connect("udp://127.0.0.1:1", max_transfer_window=0)
    except ValueError as error:                  # bad settings name themselves
        print("ValueError:", error)


asyncio.run(main())

# Expected output:
#   udp [b'ONE', b'TWO', b'THREE'] acked: 3
#   tcp [b'ONE', b'TWO', b'THREE'] acked: 3
#   unordered [b'A', b'B', b'C']
#   ValueError: max_transfer_window must be in 1..4096, not 0
