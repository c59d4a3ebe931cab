"""Nothing stranded: a consumer that vanishes gives its locks back after client_grace,
uncounted; while the service is unreachable every client call is bounded by
request_timeout (QueueUnavailable) and receive(timeout=t) returns by t."""
from __future__ import annotations

import asyncio
import signal
import sys
import textwrap

import pytest

import tether

pytestmark = pytest.mark.fault

CONSUMER = textwrap.dedent("""
    import asyncio, sys, tether
    async def main():
        client = await tether.QueueClient.connect(sys.argv[1], prefetch=int(sys.argv[2]))
        m = await client.receive("q", timeout=10)     # subscribes: the prefetch fills
        while (await client.queue_info("q")).in_flight < int(sys.argv[2]):
            await asyncio.sleep(0.02)
        print("holding", m.id, flush=True)
        await asyncio.sleep(3600)
    asyncio.run(main())
""")


async def _until(check, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_a_killed_consumer_gives_its_messages_back_after_client_grace_uncounted(tmp_path):
    async with tether.QueueManager.open(tmp_path) as qm:
        service = await qm.listen("tcp://127.0.0.1:0", client_grace=1.0)
        await qm.create_queue("q")          # validity_duration: the default 5 minutes
        for i in range(20):
            await qm.send("q", b"%d" % i)
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", CONSUMER, service.url, "8",
                                                    stdout=asyncio.subprocess.PIPE)
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert line.startswith(b"holding"), line
            held = (await qm.queue_info("q")).in_flight
            assert held >= 8           # what it received, and what it prefetched
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            loop = asyncio.get_running_loop()
            killed = loop.time()
            await asyncio.sleep(0.5)
            assert (await qm.queue_info("q")).in_flight == held     # still within the grace period
            await _until(lambda: _in_flight_is(qm, 0), 10)
            assert loop.time() - killed >= 0.9
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        got = []
        while (m := await qm.receive("q", timeout=0)) is not None:
            got.append(m)
        assert sorted(int(m.body) for m in got) == list(range(20))
        assert all(m.delivery_count == 1 for m in got), "a vanished client's locks counted as failed deliveries"


async def _in_flight_is(qm, n: int) -> bool:
    return (await qm.queue_info("q")).in_flight == n


async def test_calls_are_bounded_while_the_service_is_unreachable(tmp_path):
    qm = await tether.QueueManager.open(tmp_path, listen="tcp://127.0.0.1:0")
    await qm.create_queue("q")
    url = qm.services[0].url
    client = await tether.QueueClient.connect(url, request_timeout=0.5, connect_timeout=1)
    try:
        await client.send("q", b"before")
        await qm.close()                    # nothing answers at that address any more
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(tether.QueueUnavailable):
            await asyncio.wait_for(client.send("q", b"lost?"), 10)
        assert 0.4 <= loop.time() - start < 5
        start = loop.time()
        assert await asyncio.wait_for(client.receive("q", timeout=0.3), 10) is None
        assert loop.time() - start < 3
        with pytest.raises(tether.QueueUnavailable):
            await asyncio.wait_for(client.receive("q"), 10)     # no timeout: request_timeout bounds it
        with pytest.raises(tether.QueueUnavailable):
            await asyncio.wait_for(client.queue_info("q"), 10)
    finally:
        await client.close()


async def test_receive_returns_by_its_timeout_when_the_service_stops_answering(tmp_path):
    """A service that is connected but frozen (SIGSTOP): receive(timeout) still returns on
    time and a send raises QueueUnavailable after request_timeout; once the service runs
    again, the client carries on."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tether", "qm", "serve", "--listen", "tcp://127.0.0.1:0",
        "--data-dir", str(tmp_path / "qm"), "--log-level", "WARNING", stdout=asyncio.subprocess.PIPE)
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        url = line.split()[-1].decode()
        async with tether.QueueClient.connect(url, request_timeout=1.0) as client:
            await client.create_queue("q")
            proc.send_signal(signal.SIGSTOP)
            loop = asyncio.get_running_loop()
            start = loop.time()
            assert await asyncio.wait_for(client.receive("q", timeout=0.5), 10) is None
            assert loop.time() - start < 3
            with pytest.raises(tether.QueueUnavailable):
                await asyncio.wait_for(client.send("q", b"x"), 10)
            proc.send_signal(signal.SIGCONT)
            await asyncio.wait_for(client.send("q", b"after"), 10)
            m = await client.receive("q", timeout=5)
            # the send that timed out may have been queued after all: its outcome was unknown
            assert m is not None and m.body in (b"x", b"after")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        await proc.wait()


async def test_request_timeout_is_validated():
    with pytest.raises(ValueError, match="request_timeout"):
        await tether.QueueClient.connect("tcp://127.0.0.1:1", request_timeout=0)
    with pytest.raises(ValueError, match="request_timeout"):
        await tether.QueueClient.connect("tcp://127.0.0.1:1", request_timeout=float("nan"))
