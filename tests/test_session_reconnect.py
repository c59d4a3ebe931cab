"""A TCP client's reconnects: the backoff grows while new connections are closed before the
server answers, and restarts once one is answered; failures are logged once per kind."""
from __future__ import annotations

import asyncio
import logging

import pytest

import tether
from tether.bench.relay import TcpRelay

pytestmark = pytest.mark.timeout(60)


@pytest.mark.fault
async def test_a_server_that_accepts_and_closes_at_once_is_retried_with_growing_backoff(caplog):
    caplog.set_level(logging.DEBUG, logger="tether.session")
    accepted = 0

    async def slam(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writer.close()  # accepts, never answers

    closer = await asyncio.start_server(slam, "127.0.0.1", 0)
    async with await tether.serve(None, "tcp://127.0.0.1:0") as server:
        relay = await TcpRelay(server.address).start()
        try:
            client = await tether.connect(f"tcp://127.0.0.1:{relay.address[1]}")
            peer = await server.accept()
            await client.send(b"before")
            assert await peer.recv() == b"before"
            relay.target = closer.sockets[0].getsockname()[:2]
            relay.cut_all()
            await asyncio.sleep(0.8)
            # 50, 100, 200 and 400 ms apart: four attempts, where a fresh 50 ms wait after
            # each would make sixteen
            assert 2 <= accepted <= 6, accepted
            relay.target = server.address
            await client.send(b"after")  # the next attempt resumes the session
            assert await asyncio.wait_for(peer.recv(), 5) == b"after"
            await client.close()
        finally:
            relay.close()
            closer.close()
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "tether.session" and r.levelno == logging.WARNING]
    assert len([m for m in warnings if "closed the connection before answering" in m]) == 1, warnings
