"""Stream throughput over tether (udp://, tcp://) beside plain uvloop TCP streams.

One round writes TRANSFER bytes in 64 KiB writes with drain() and reads them back to EOF
on the server side, all on loopback in one uvloop loop. The asyncio/uvloop TCP streams run
in the same session as the baseline: tether / baseline is the cost of reliable sessions
under the same StreamReader/StreamWriter code.

Run: PYTHONPATH=src python -m pytest benchmarks/bench_streams.py --benchmark-enable -q
"""
from __future__ import annotations

import asyncio

import pytest
import uvloop

import tether

TRANSFER = 16 * 1024 * 1024
WRITE = 64 * 1024
# "+tuned": a bigger window and write buffer, a shorter ack delay; plain: the defaults.
TUNED = {"max_transfer_window": 256, "ack_interval": 0.01}


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    total = 0
    while data := await reader.read(1024 * 1024):
        total += len(data)
    writer.write(b"%d" % total)
    writer.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    block = b"\xa5" * WRITE
    for _ in range(TRANSFER // WRITE):
        writer.write(block)
        await writer.drain()
    writer.write_eof()
    assert int(await reader.read()) == TRANSFER
    writer.close()


async def _round(kind: str) -> None:
    if kind == "asyncio-tcp":
        server = await asyncio.start_server(_sink, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    else:
        scheme, _, tuned = kind.partition("+")
        settings = TUNED if tuned else {}
        server = await tether.start_server(_sink, f"{scheme}://127.0.0.1:0", **settings)
        reader, writer = await tether.open_connection(server.url, **settings)
        if tuned:
            writer.transport.set_write_buffer_limits(high=4 * 1024 * 1024)
    async with server:
        await _pump(reader, writer)


@pytest.mark.parametrize("kind", ["asyncio-tcp", "udp", "tcp", "udp+tuned", "tcp+tuned"])
def test_stream_throughput(benchmark, kind):
    benchmark.group = "streams 16 MiB"
    benchmark.extra_info["bytes"] = TRANSFER
    benchmark.pedantic(lambda: uvloop.run(_round(kind)), rounds=5, iterations=1)
