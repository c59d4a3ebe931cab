"""Store-and-forward out of a PostgreSQL store, across a SIGKILL: two `tether qm serve
--store postgresql://...` processes send into one transmission queue of the database and
forward it to a journal-backed target; the one forwarding is SIGKILLed mid-transfer. The
other takes the queue over once the killed one's lease ran out (client_grace) and resends
what was not settled under the same producer id, so the target drops what it has: every
acknowledged message arrives exactly once, in order per sender."""
from __future__ import annotations

import asyncio

import asyncpg
import pytest
from test_qm_service_crash import Service

import tether
from tether import QueueError

pytestmark = pytest.mark.fault

CLIENT_GRACE = 1.5
KILL_AFTER = 150         # messages the target has before the forwarding process is killed
AFTER_KILL = 0.8         # seconds the survivor's sender goes on after the kill


async def _holder_pid(url: str) -> int | None:
    """The process id of the queue manager forwarding the database's transmission queue."""
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT o.pid FROM tether_forwarders f JOIN tether_owners o ON o.owner = f.holder")
    finally:
        await conn.close()


def _in_order(bodies: list[bytes], sender: bytes) -> list[int]:
    return [int(b.split(b".")[1]) for b in bodies if b.split(b".")[0] == sender]


async def test_forwarding_process_sigkilled_every_message_once_in_order(postgres_url, tmp_path):
    config = tmp_path / "qm.toml"
    config.write_text(f"[limits]\nclient_grace = {CLIENT_GRACE}\n")
    target = await tether.QueueManager.open(tmp_path / "target", listen="tcp://127.0.0.1:0")
    await target.create_queue("inbox")
    address = f"tether://127.0.0.1:{target.services[0].url.rsplit(':', 1)[1]}/inbox"
    services = [await Service(postgres_url, "tcp://127.0.0.1:0", "--config", str(config)).start()
                for _ in range(2)]
    clients = []
    try:
        senders = [await tether.QueueClient.connect(s.url, request_timeout=5.0) for s in services]
        clients += senders
        acked: dict[bytes, list[bytes]] = {b"s0": [], b"s1": []}
        attempted: set[bytes] = set()
        arrived: list[bytes] = []
        stop = [asyncio.Event(), asyncio.Event()]

        async def send(n: int) -> None:
            name = b"s%d" % n
            i = 0
            while not stop[n].is_set():
                body = name + b".%d" % i
                attempted.add(body)
                try:
                    await senders[n].send(address, body)
                except QueueError:
                    return          # its service was killed
                acked[name].append(body)
                i += 1
                await asyncio.sleep(0.002)

        async def receive() -> None:
            while True:
                message = await target.receive("inbox", timeout=0.2)
                if message is not None:
                    arrived.append(message.body)
                    await message.complete()

        tasks = [asyncio.create_task(send(0)), asyncio.create_task(send(1))]
        receiver = asyncio.create_task(receive())
        for _ in range(400):
            if len(arrived) >= KILL_AFTER:
                break
            await asyncio.sleep(0.05)
        assert len(arrived) >= KILL_AFTER, f"only {len(arrived)} messages were forwarded"
        pid = await _holder_pid(postgres_url)
        killed = next(n for n, s in enumerate(services) if s.proc.pid == pid)
        survivor = 1 - killed
        services[killed].kill()
        stop[killed].set()
        await services[killed].wait()
        at_kill = len(arrived)
        await asyncio.sleep(AFTER_KILL)
        stop[survivor].set()
        await asyncio.gather(*tasks)
        # the survivor takes the queue over and forwards the rest
        expected = set(acked[b"s0"]) | set(acked[b"s1"])
        for _ in range(600):
            if expected <= set(arrived):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)       # any late duplicate would arrive now
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)

        assert len(arrived) == len(set(arrived)), "a message arrived twice"
        missing = expected - set(arrived)
        assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"
        assert set(arrived) <= attempted
        for name in (b"s0", b"s1"):
            order = _in_order(arrived, name)
            assert order == sorted(order), f"{name!r} arrived out of order"
        assert len(arrived) > at_kill, "nothing was forwarded after the kill"
        assert acked[b"s%d" % survivor][-1] in arrived
        checker = await tether.QueueClient.connect(services[survivor].url, request_timeout=5.0)
        clients.append(checker)
        xmit = next(q for q in await checker.queues() if q.startswith("$xmit:"))
        info = await checker.queue_info(xmit)
        assert info["depth"] == 0 and info["in_flight"] == 0, dict(info)
        assert (await checker.queue_info("$dead"))["depth"] == 0
        assert await _holder_pid(postgres_url) == services[survivor].proc.pid
    finally:
        for service in services:
            service.kill()
        for client in clients:
            try:
                await asyncio.wait_for(client.close(), 1)
            except Exception:
                pass
        for service in services:
            await service.wait()
        await target.close()
