"""In-process fault-injecting relays on loopback, for tests and `tether bench --loss`.

`UdpRelay` forwards datagrams between clients and a target, dropping, duplicating and
delaying (so reordering) them with a seeded random generator. `TcpRelay` pipes TCP
connections and cuts them (abort, both sides) after a random number of bytes.
"""
from __future__ import annotations

import asyncio
import random
from typing import Any

from ..session.adapters.udp import tune_socket


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), not {value}")


class _Upstream(asyncio.DatagramProtocol):
    """The relay's socket towards the target for one client address."""

    def __init__(self, relay: "UdpRelay", client_addr: Any) -> None:
        self.relay = relay
        self.client_addr = client_addr
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        tune_socket(transport)  # the relay must not drop what it was not told to

    def datagram_received(self, data: bytes, addr: Any) -> None:
        front = self.relay._front
        if front is not None:
            self.relay._forward(lambda d: front.sendto(d, self.client_addr), data)

    def error_received(self, exc: Exception) -> None:
        pass


class _Front(asyncio.DatagramProtocol):
    def __init__(self, relay: "UdpRelay") -> None:
        self.relay = relay

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tune_socket(transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.relay._from_client(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass


class UdpRelay:
    """A lossy UDP relay: clients send to `address`, the relay forwards to `target`."""

    def __init__(self, target: tuple, *, loss: float = 0.0, duplicate: float = 0.0,
                 reorder: float = 0.0, delay: float = 0.0005, seed: int = 0) -> None:
        _check_probability("loss", loss)
        _check_probability("duplicate", duplicate)
        _check_probability("reorder", reorder)
        if delay < 0:
            raise ValueError(f"delay must be >= 0, not {delay}")
        self.target = target
        self.loss, self.duplicate, self.reorder, self.delay = loss, duplicate, reorder, delay
        self.random = random.Random(seed)
        self.address: tuple = ()
        self.forwarded = self.dropped = self.duplicated = self.delayed = 0
        self.blackhole = False  # drop everything (a partition) while True
        self._front: asyncio.DatagramTransport | None = None
        self._upstreams: dict[Any, _Upstream] = {}
        self._pending: dict[Any, list[bytes]] = {}
        self._loop = asyncio.get_running_loop()

    async def start(self, host: str = "127.0.0.1") -> "UdpRelay":
        self._front, _ = await self._loop.create_datagram_endpoint(
            lambda: _Front(self), local_addr=(host, 0))
        self.address = self._front.get_extra_info("sockname")[:2]
        return self

    def _from_client(self, data: bytes, addr: Any) -> None:
        upstream = self._upstreams.get(addr)
        if upstream is None:
            pending = self._pending.get(addr)
            if pending is not None:
                pending.append(data)
                return
            self._pending[addr] = [data]
            self._loop.create_task(self._open_upstream(addr))
            return
        if upstream.transport is not None:
            self._forward(upstream.transport.sendto, data)

    async def _open_upstream(self, addr: Any) -> None:
        transport, upstream = await self._loop.create_datagram_endpoint(
            lambda: _Upstream(self, addr), remote_addr=self.target)
        self._upstreams[addr] = upstream
        for data in self._pending.pop(addr, []):
            self._forward(transport.sendto, data)

    def _forward(self, send, data: bytes) -> None:
        r = self.random
        if self.blackhole or (self.loss and r.random() < self.loss):
            self.dropped += 1
            return
        copies = 2 if (self.duplicate and r.random() < self.duplicate) else 1
        self.duplicated += copies - 1
        for _ in range(copies):
            self.forwarded += 1
            if self.reorder and r.random() < self.reorder:
                self.delayed += 1
                self._loop.call_later(self.delay * (1 + r.random()), _safe_send, send, data)
            else:
                send(data)

    def rebind(self) -> None:
        """Close every upstream socket: the next datagram of each client goes out from a new
        source port, as if the client's address had changed."""
        upstreams, self._upstreams = self._upstreams, {}
        for upstream in upstreams.values():
            if upstream.transport is not None:
                upstream.transport.close()

    def close(self) -> None:
        if self._front is not None:
            self._front.close()
        for upstream in self._upstreams.values():
            if upstream.transport is not None:
                upstream.transport.close()


def _safe_send(send, data: bytes) -> None:
    try:
        send(data)
    except (OSError, AttributeError, RuntimeError):
        pass  # the socket closed meanwhile


class _Pipe(asyncio.Protocol):
    def __init__(self, relay: "TcpRelay", pair: "_Pair", side: str) -> None:
        self.relay, self.pair, self.side = relay, pair, side
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.pair.relay_bytes(self.side, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pair.cut()


class _Pair:
    """A client connection and its upstream connection."""

    def __init__(self, relay: "TcpRelay") -> None:
        self.relay = relay
        self.client: _Pipe | None = None
        self.upstream: _Pipe | None = None
        self.backlog: list[bytes] = []
        self.budget = relay._next_budget()
        self.done = False

    def relay_bytes(self, side: str, data: bytes) -> None:
        if self.done:
            return
        if self.budget is not None:
            self.budget -= len(data)
            if self.budget <= 0:
                self.relay.cuts += 1
                self.cut()
                return
        self.relay.bytes_relayed += len(data)
        if side == "client":
            if self.upstream is None or self.upstream.transport is None:
                self.backlog.append(data)
            else:
                self.upstream.transport.write(data)
        elif self.client is not None and self.client.transport is not None:
            self.client.transport.write(data)

    def cut(self) -> None:
        if self.done:
            return
        self.done = True
        for pipe in (self.client, self.upstream):
            if pipe is not None and pipe.transport is not None:
                pipe.transport.abort()


class TcpRelay:
    """A TCP relay that cuts each connection after `cut_every` bytes (± half, seeded);
    cut_every None never cuts. `cuts` counts the cuts made."""

    def __init__(self, target: tuple, *, cut_every: int | None = None, seed: int = 0) -> None:
        if cut_every is not None and cut_every < 1:
            raise ValueError(f"cut_every must be a positive number of bytes or None, not {cut_every}")
        self.target = target
        self.cut_every = cut_every
        self.random = random.Random(seed)
        self.cuts = 0
        self.bytes_relayed = 0
        self.address: tuple = ()
        self._server: asyncio.AbstractServer | None = None
        self._pairs: list[_Pair] = []
        self._loop = asyncio.get_running_loop()

    def _next_budget(self) -> int | None:
        if self.cut_every is None:
            return None
        return max(1, int(self.cut_every * (0.5 + self.random.random())))

    async def start(self, host: str = "127.0.0.1") -> "TcpRelay":
        self._server = await self._loop.create_server(self._accept_protocol, host, 0)
        self.address = self._server.sockets[0].getsockname()[:2]
        return self

    def _accept_protocol(self) -> _Pipe:
        pair = _Pair(self)
        self._pairs = [p for p in self._pairs if not p.done] + [pair]
        pipe = _Pipe(self, pair, "client")
        pair.client = pipe
        self._loop.create_task(self._connect_upstream(pair))
        return pipe

    async def _connect_upstream(self, pair: _Pair) -> None:
        try:
            _, upstream = await self._loop.create_connection(
                lambda: _Pipe(self, pair, "upstream"), *self.target)
        except OSError:
            pair.cut()
            return
        pair.upstream = upstream
        if pair.done:
            upstream.transport.abort()  # type: ignore[union-attr]
            return
        for data in pair.backlog:
            upstream.transport.write(data)  # type: ignore[union-attr]
        pair.backlog.clear()

    def cut_all(self) -> None:
        """Cut every open connection now."""
        for pair in self._pairs:
            if not pair.done:
                self.cuts += 1
                pair.cut()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pair in self._pairs:
            pair.cut()
