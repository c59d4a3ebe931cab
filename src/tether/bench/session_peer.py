"""The two sides of one `tether bench session` row: a sender and a receiver, for a tether
session (`udp`, `tcp`) or for the baseline (`raw`: raw uvloop TCP).

The bench runs both in its own event loop (the in-process rows), or each in a process of
its own (`--processes`, `--link veth`) as

    python -m tether.bench.session_peer receive --kind KIND --host HOST --size N ...
    python -m tether.bench.session_peer send --kind KIND --host HOST --port PORT ...

The receiver prints `{"port": P}` once it listens, and each side prints one JSON line
with its result when it is done (errors: one line on stderr, exit status 1).

Every message carries its number (modulo 65,536, in its first 8 bytes) and every 997th
the time it was sent (the next 8). The receiver checks each message's number against the
count it has so far, so a lost, duplicated or reordered message fails the row, and the
bench compares the receiver's count with the sender's. Times come from `time.perf_counter`,
CLOCK_MONOTONIC on Linux, one clock for every process on the machine: the sender's start
and the receiver's last delivery bound a row's duration, and a stamp's age at delivery is
its latency, across processes too.

The baseline streams the same messages over raw uvloop TCP with no acknowledgements: each
write is one batch of BATCH messages, a 4-byte length then a msgpack array of the messages
(each with its length before it), and the receiver reads a batch into one buffer and
unpacks it in one call. Nothing in it is per-message Python, so it is a ceiling that a
session over the same link can approach and not pass by much.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import struct
import sys
import time
from array import array
from typing import Any

import msgpack

from .. import connect, serve
from ..errors import SequenceClosed

BATCH = 1024                    # messages per send_many, and per baseline write
LATENCY_EVERY = 997             # stamp every Nth message with its send time
MODULUS = 65536                 # message numbers wrap here
CLOSE_TIMEOUT = 120.0           # the sender's close, and the receiver's wait for the sender
KINDS = ("udp", "tcp", "raw")

_RAMP = memoryview(array("Q", range(MODULUS)) * 2)
_STAMP = struct.Struct("<d")
_LENGTH = struct.Struct("<I")


class DeliveryError(ValueError):
    """The receiver got something other than exactly the messages sent, in order."""


def check_size(size: int) -> None:
    if size < 16 or size % 8 or size > 65536:
        raise ValueError(f"message size {size}: must be a multiple of 8 from 16 to 65536 bytes "
                         "(room for a number and a time stamp)")


class Outgoing:
    """Batches of numbered messages of one size, cheap to make (no per-message Python)."""

    def __init__(self, size: int) -> None:
        check_size(size)
        self.size = size
        self.sent = 0
        self._buffer = bytearray(size * BATCH)
        self._numbers = memoryview(self._buffer).cast("Q")[:: size // 8]
        self._split = struct.Struct(f"{size}s" * BATCH)
        self._stamped: list[int] = []

    def batch(self, n: int = BATCH) -> tuple[bytes, ...]:
        """The next n (<= BATCH) messages."""
        start = self.sent % MODULUS
        self._numbers[:] = _RAMP[start:start + BATCH]
        for offset in self._stamped:
            _STAMP.pack_into(self._buffer, offset, 0.0)
        self._stamped = [i * self.size + 8 for i in range((-self.sent) % LATENCY_EVERY, n, LATENCY_EVERY)]
        now = time.perf_counter()
        for offset in self._stamped:
            _STAMP.pack_into(self._buffer, offset, now)
        messages = self._split.unpack(self._buffer)
        self.sent += n
        return messages if n == BATCH else messages[:n]


class Incoming:
    """Checks and counts what the receiving application got, and the stamped latencies."""

    def __init__(self, size: int) -> None:
        check_size(size)
        self.size = size
        self.count = 0
        self.last: float | None = None      # perf_counter of the last delivery
        self.latencies: list[float] = []
        self._step = size // 8

    def take(self, messages: list[bytes]) -> None:
        n = len(messages)
        if n > MODULUS:
            for i in range(0, n, MODULUS):
                self.take(messages[i:i + MODULUS])
            return
        if not n:
            return
        now = time.perf_counter()
        joined = b"".join(messages)
        start = self.count % MODULUS
        if len(joined) != n * self.size or \
                memoryview(joined).cast("Q")[:: self._step] != _RAMP[start:start + n]:
            raise DeliveryError(self._describe(messages))
        for i in range((-self.count) % LATENCY_EVERY, n, LATENCY_EVERY):
            self.latencies.append(now - _STAMP.unpack_from(messages[i], 8)[0])
        self.count += n
        self.last = now

    def _describe(self, messages: list[bytes]) -> str:
        for i, m in enumerate(messages):
            expected = (self.count + i) % MODULUS
            if len(m) != self.size:
                return f"message {self.count + i} has {len(m)} bytes, not {self.size}"
            got = int.from_bytes(m[:8], "little")
            if got != expected:
                return (f"message {self.count + i} carries number {got} (mod {MODULUS}), "
                        f"expected {expected}: a message was lost, duplicated or reordered")
        return "the batch does not match"  # pragma: no cover (take() found a difference)

    def result(self) -> dict[str, Any]:
        return {"received": self.count, "end": self.last, "latencies": self.latencies}


def cpu_seconds() -> float:
    """CPU time this process used (user and system, the kernel's work for its system calls
    included): per message it is the cost a busy machine does not blur as it does msgs/s."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- sessions -----------------------------------------------------------------------------

def _settings(window: int) -> dict[str, Any]:
    return dict(max_transfer_window=window, ordered=True)


async def send_session(kind: str, host: str, port: int, size: int, window: int,
                       seconds: float, count: int | None) -> dict[str, Any]:
    """Send for `seconds` (or exactly `count` messages), then close: the close returns once
    the receiver acknowledged everything."""
    client = await connect(f"{kind}://{host}:{port}", **_settings(window))
    out = Outgoing(size)
    cpu = cpu_seconds()
    try:
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            n = BATCH if count is None else min(BATCH, count - out.sent)
            stopped = time.perf_counter()
            if n <= 0 or (count is None and stopped >= deadline):
                break
            await client.send_many(out.batch(n))
        await client.close(timeout=CLOSE_TIMEOUT)
    except BaseException:
        client.abort("the bench's sender failed")
        raise
    stats = client.stats
    return {"start": start, "stopped": stopped, "sent": out.sent, "resent": stats["resent"],
            "retransmission_timeouts": stats["retransmission_timeouts"],
            "fast_retransmits": stats["fast_retransmits"], "tail_probes": stats["tail_probes"],
            "srtt": stats["rtt"], "cwnd": stats["cwnd"], "sender_cpu_s": cpu_seconds() - cpu}


class SessionReceiver:
    """A server taking one session and reading it to its end."""

    def __init__(self, kind: str, size: int, window: int) -> None:
        self.kind, self.window = kind, window
        self.incoming = Incoming(size)
        self.server = None

    async def start(self, host: str) -> int:
        self.server = await serve(None, f"{self.kind}://{host}:0", **_settings(self.window))
        return self.server.address[1]

    async def run(self, accept_timeout: float = 60.0) -> dict[str, Any]:
        try:
            peer = await asyncio.wait_for(self.server.accept(), accept_timeout)
            cpu = cpu_seconds()
            try:
                while True:
                    try:
                        messages = await peer.recv_many(MODULUS)
                    except SequenceClosed:
                        break
                    self.incoming.take(messages)
            except BaseException:
                peer.abort("the bench's receiver failed")
                raise
            stats = peer.stats
            cpu = cpu_seconds() - cpu
            await peer.close(timeout=CLOSE_TIMEOUT)
        finally:
            self.server.close()
            await self.server.wait_closed()
        return {**self.incoming.result(), "delivered": stats["delivered"],
                "duplicates": stats["duplicates"], "refused": stats["refused"],
                "receiver_packets": stats["packets_received"], "receiver_sent": stats["packets_sent"],
                "receiver_cpu_s": cpu}


# -- the baseline: raw uvloop TCP ---------------------------------------------------------

async def send_raw(host: str, port: int, size: int, seconds: float,
                   count: int | None) -> dict[str, Any]:
    """Length-prefixed batches as fast as TCP takes them; drain() waits only while the
    transport's buffer is above its high-water mark."""
    reader, writer = await asyncio.open_connection(host, port)
    out = Outgoing(size)
    cpu = cpu_seconds()
    packer = msgpack.Packer(buf_size=BATCH * (size + 8))
    length = _LENGTH.pack
    try:
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            n = BATCH if count is None else min(BATCH, count - out.sent)
            stopped = time.perf_counter()
            if n <= 0 or (count is None and stopped >= deadline):
                break
            body = packer.pack(out.batch(n))
            writer.writelines((length(len(body)), body))
            await writer.drain()
    finally:
        writer.close()
    await writer.wait_closed()
    return {"start": start, "stopped": stopped, "sent": out.sent, "resent": None,
            "sender_cpu_s": cpu_seconds() - cpu}


class _RawProtocol(asyncio.BufferedProtocol):
    """Reads a 4-byte length, then exactly that batch into one buffer, then unpacks it."""

    def __init__(self, incoming: Incoming, done: asyncio.Future) -> None:
        self.incoming, self.done = incoming, done
        self.header = bytearray(_LENGTH.size)
        self.body = bytearray()
        self.target = memoryview(self.header)
        self.filled = 0
        self.in_body = False
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.target[self.filled:]

    def buffer_updated(self, nbytes: int) -> None:
        self.filled += nbytes
        if self.filled < len(self.target):
            return
        self.filled = 0
        if not self.in_body:
            (n,) = _LENGTH.unpack(self.header)
            if len(self.body) != n:
                self.body = bytearray(n)
            self.target, self.in_body = memoryview(self.body), True
            return
        self.target, self.in_body = memoryview(self.header), False
        try:
            self.incoming.take(msgpack.unpackb(self.body))
        except Exception as exc:
            if not self.done.done():
                self.done.set_exception(exc)
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done.done():
            return
        if exc is None and (self.filled or self.in_body):
            exc = DeliveryError("the baseline connection ended inside a batch")
        if exc is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(exc)


class RawReceiver:
    """A raw uvloop TCP server taking one connection and reading it to EOF."""

    def __init__(self, size: int) -> None:
        self.incoming = Incoming(size)
        self.server = None
        self.done: asyncio.Future | None = None
        self.cpu = 0.0

    async def start(self, host: str) -> int:
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        taken = []

        def protocol() -> _RawProtocol:
            if taken:           # one connection per row
                raise ConnectionRefusedError("the baseline takes one connection")
            taken.append(True)
            return _RawProtocol(self.incoming, self.done)

        self.server = await loop.create_server(protocol, host, 0)
        self.cpu = cpu_seconds()      # (waiting for the connection costs nothing)
        return self.server.sockets[0].getsockname()[1]

    async def run(self, accept_timeout: float = 60.0) -> dict[str, Any]:
        try:
            await asyncio.wait_for(asyncio.shield(self.done), accept_timeout + CLOSE_TIMEOUT)
        finally:
            self.server.close()
        return {**self.incoming.result(), "receiver_cpu_s": cpu_seconds() - self.cpu}


def receiver(kind: str, size: int, window: int) -> SessionReceiver | RawReceiver:
    return RawReceiver(size) if kind == "raw" else SessionReceiver(kind, size, window)


async def send(kind: str, host: str, port: int, size: int, window: int, seconds: float,
               count: int | None) -> dict[str, Any]:
    if kind == "raw":
        return await send_raw(host, port, size, seconds, count)
    return await send_session(kind, host, port, size, window, seconds, count)


# -- one side in a process of its own ------------------------------------------------------

def _print(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _main(args: argparse.Namespace) -> None:
    if args.role == "receive":
        side = receiver(args.kind, args.size, args.window)
        _print({"port": await side.start(args.host)})
        _print(await side.run(args.accept_timeout))
    else:
        _print(await send(args.kind, args.host, args.port, args.size, args.window,
                          args.seconds, args.count))


def main(argv: list[str] | None = None) -> int:
    from ..runner import new_loop_runner

    parser = argparse.ArgumentParser(prog="python -m tether.bench.session_peer")
    parser.add_argument("role", choices=("receive", "send"))
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--window", type=int, default=4096)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--count", type=int, default=None)
    parser.add_argument("--accept-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    try:
        new_loop_runner()(_main(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        side = "receiver" if args.role == "receive" else "sender"
        print(f"{side} ({args.kind}): {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
