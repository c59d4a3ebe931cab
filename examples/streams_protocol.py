"""asyncio Protocols over a reliable session: tether.create_server / tether.create_connection
take the place of loop.create_server / loop.create_connection, for existing Protocol code."""
import asyncio

import tether


class Echo(asyncio.Protocol):                  # an ordinary asyncio Protocol
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(b"echo: " + data)


class Client(asyncio.Protocol):
    def __init__(self):
        self.replies = asyncio.Queue()

    def data_received(self, data):
        self.replies.put_nowait(data)


async def main():
    server = await tether.create_server(Echo, "tcp://127.0.0.1:0")
    host, port = server.address
    transport, client = await tether.create_connection(Client, f"tcp://{host}:{port}")
    transport.write(b"ping")
    print(await client.replies.get())
    print("session:", transport.get_extra_info("stats")["state"])   # Session.stats, as extra info
    transport.close()
    server.close()
    await server.wait_closed()


asyncio.run(main())

# Expected output:
#   b'echo: ping'
#   session: established
