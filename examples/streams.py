"""asyncio streams over a reliable session: tether.start_server / tether.open_connection
take the place of asyncio.start_server / asyncio.open_connection."""
import asyncio

import tether


async def shout(reader, writer):               # the same callback asyncio.start_server takes
    while line := await reader.readline():
        writer.write(line.upper())
        await writer.drain()                   # really waits: backpressure works
    writer.close()


async def main():
    server = await tether.start_server(shout, "udp://127.0.0.1:0")
    host, port = server.address
    reader, writer = await tether.open_connection(f"udp://{host}:{port}")
    for line in (b"hello\n", b"reliable world\n"):
        writer.write(line)
        print(await reader.readline())
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()


asyncio.run(main())

# Expected output:
#   b'HELLO\n'
#   b'RELIABLE WORLD\n'
