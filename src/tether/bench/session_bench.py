"""`tether bench session`: ordered exactly-once sessions over UDP and TCP on loopback,
beside a baseline measured in the same run: msgpack-framed batches over raw uvloop TCP
with no acknowledgements (`baseline-uvloop-tcp`). Every row's ratio divides by the
baseline row of the same message size.

Sender and receiver share one event loop in this process, for the sessions and the
baseline alike, so the ratio compares the protocols and not the scheduling.
"""
from __future__ import annotations

import argparse
import asyncio
import struct
import time

import msgpack

from .. import connect, serve
from .relay import UdpRelay
from .report import Progress, Result, make_result

BATCH = 1024                  # messages per send_many / per baseline write
LATENCY_EVERY = 997           # stamp every Nth message with its send time
_STAMP = struct.Struct("<d")
SIZES = {"64B": 64, "1KiB": 1024}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, default=1_000_000,
                        help="64-byte messages per run (1 KiB runs move half as many)")
    parser.add_argument("--loss", type=float, default=0.0,
                        help="also run UDP through an in-process relay dropping this fraction (0..0.5)")
    parser.add_argument("--window", type=int, default=4096, help="max_transfer_window")
    parser.add_argument("--transports", default="udp,tcp", help="comma-separated: udp,tcp")
    parser.add_argument("--sizes", default="64B,1KiB", help="comma-separated: 64B,1KiB")


def _payloads(size: int, count: int) -> list[bytes]:
    base = bytes(range(256)) * (size // 256 + 1)
    return [base[:size]] * count


def _stamped(batch: list[bytes], start_index: int) -> list[bytes]:
    """Put the send time into every LATENCY_EVERY-th message of the batch."""
    out = batch
    first = (-start_index) % LATENCY_EVERY
    if first < len(batch):
        out = list(batch)
        now = _STAMP.pack(time.perf_counter())
        for i in range(first, len(batch), LATENCY_EVERY):
            out[i] = now + batch[i][8:]
    return out


def _latencies(messages: list[bytes], start_index: int, into: list[float]) -> None:
    first = (-start_index) % LATENCY_EVERY
    if first < len(messages):
        now = time.perf_counter()
        for i in range(first, len(messages), LATENCY_EVERY):
            into.append(now - _STAMP.unpack_from(messages[i])[0])


async def _session_run(name: str, url_scheme: str, size: int, count: int, window: int,
                       loss: float, progress: Progress, relay: bool = False) -> Result:
    payload_batch = _payloads(size, BATCH)
    settings = dict(max_transfer_window=window, ordered=True)
    server = await serve(None, f"{url_scheme}://127.0.0.1:0", **settings)
    lossy = None
    target = server.address
    if relay:
        lossy = await UdpRelay(server.address, loss=loss, seed=1).start()
        target = lossy.address
    latencies: list[float] = []
    try:
        client = await connect(f"{url_scheme}://{target[0]}:{target[1]}", **settings)
        peer = await server.accept()

        async def receive() -> None:
            got = 0
            while got < count:
                messages = await peer.recv_many()
                _latencies(messages, got, latencies)
                got += len(messages)
                progress.update(name, got, count)

        start = time.perf_counter()
        receiver = asyncio.ensure_future(receive())
        sent = 0
        while sent < count:
            n = min(BATCH, count - sent)
            await client.send_many(_stamped(payload_batch[:n], sent))
            sent += n
            if receiver.done():
                break
        await receiver
        elapsed = time.perf_counter() - start
        progress.done(name)
        stats = client.stats
        await client.close(timeout=10)
    finally:
        server.close()
        await server.wait_closed()
        if lossy is not None:
            lossy.close()
    return make_result(name, count, size, elapsed, latencies,
                       resent=stats["resent"], loss=loss, transport=url_scheme, relay=relay)


class _BaselineReceiver(asyncio.Protocol):
    def __init__(self, count: int, done: asyncio.Future, latencies: list[float],
                 progress: Progress, name: str) -> None:
        self.unpacker = msgpack.Unpacker(max_buffer_size=64 * 1024 * 1024)
        self.count, self.done, self.latencies = count, done, latencies
        self.progress, self.name = progress, name
        self.got = 0

    def data_received(self, data: bytes) -> None:
        self.unpacker.feed(data)
        for batch in self.unpacker:
            _latencies(batch, self.got, self.latencies)
            self.got += len(batch)
            self.progress.update(self.name, self.got, self.count)
        if self.got >= self.count and not self.done.done():
            self.done.set_result(None)


async def _baseline_run(name: str, size: int, count: int, progress: Progress) -> Result:
    """msgpack-framed batches over raw uvloop TCP, no acks: the ceiling for sessions."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    latencies: list[float] = []
    server = await loop.create_server(
        lambda: _BaselineReceiver(count, done, latencies, progress, name), "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    reader, writer = await asyncio.open_connection(host, port)
    payload_batch = _payloads(size, BATCH)
    packb = msgpack.packb
    start = time.perf_counter()
    sent = 0
    while sent < count:
        n = min(BATCH, count - sent)
        writer.write(packb(_stamped(payload_batch[:n], sent), use_bin_type=True))
        sent += n
        await writer.drain()
    await done
    elapsed = time.perf_counter() - start
    progress.done(name)
    writer.close()
    server.close()
    return make_result(name, count, size, elapsed, latencies, transport="tcp-raw")


async def run(args: argparse.Namespace, progress: Progress) -> list[Result]:
    """Every configured row, then ratios against the same-size baseline."""
    if args.count < 1:
        raise ValueError(f"--count must be at least 1, not {args.count}")
    if not 0.0 <= args.loss <= 0.5:
        raise ValueError(f"--loss must be in [0, 0.5], not {args.loss}")
    transports = [t for t in args.transports.split(",") if t]
    for t in transports:
        if t not in ("udp", "tcp"):
            raise ValueError(f"--transports: unknown transport {t!r} (udp, tcp)")
    sizes = [s for s in args.sizes.split(",") if s]
    for s in sizes:
        if s not in SIZES:
            raise ValueError(f"--sizes: unknown size {s!r} ({', '.join(SIZES)})")
    results: list[Result] = []
    for label in sizes:
        size = SIZES[label]
        count = args.count if size <= 64 else max(1, args.count // 2)
        suffix = "" if label == "64B" else f"-{label}"
        group: list[Result] = []
        baseline = await _baseline_run(f"baseline-uvloop-tcp{suffix}", size, count, progress)
        group.append(baseline)
        for transport in transports:
            group.append(await _session_run(f"{transport}-{label}", transport, size, count,
                                            args.window, 0.0, progress))
        if args.loss and "udp" in transports:
            # the same relay without loss first: the fair lossless figure for the lossy row
            group.append(await _session_run(f"udp-{label}-relay", "udp", size, count,
                                            args.window, 0.0, progress, relay=True))
            group.append(await _session_run(f"udp-{label}-loss{args.loss:g}", "udp", size, count,
                                            args.window, args.loss, progress, relay=True))
        for r in group:
            r.ratio = r.msgs_per_s / baseline.msgs_per_s
            r.baseline = baseline.name
        results.extend(group)
    return results
