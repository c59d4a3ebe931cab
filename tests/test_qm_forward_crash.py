"""Two queue managers, the target a child process that starts after the senders, is
SIGKILLed in the middle of the transfer and restarted: every message arrives once, in
order per sender."""
from __future__ import annotations

import asyncio
import socket
import sys

import pytest

import tether
from tether.queue.core.settings import QueueSettings

pytestmark = pytest.mark.fault

PER_SENDER = 3000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _start_target(config):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tether", "qm", "serve", "--config", str(config), "--log-level", "WARNING",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    line = await asyncio.wait_for(proc.stdout.readline(), 20)
    assert line.startswith(b"tether qm: ready"), (line, await proc.stderr.read())
    return proc


async def _target_depth(url):
    try:
        async with tether.QueueClient.connect(url, connect_timeout=2) as client:
            return (await client.queue_info("orders")).depth
    except (TimeoutError, OSError, tether.TetherError):
        return None


async def test_target_killed_and_restarted_mid_transfer(tmp_path, monkeypatch):
    # A small forwarding window makes the transfer many durable round trips, so the kill
    # lands mid-transfer however fast the machine (with 4096 in flight a quiet machine
    # moved everything between two polls of the target's depth).
    monkeypatch.setattr("tether.queue.forwarder.MAX_IN_FLIGHT", 64)
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    address = f"tether://127.0.0.1:{port}/orders"
    config = tmp_path / "target.toml"
    config.write_text(f'data_dir = "{tmp_path / "target"}"\nlisten = "{url}"\n[queues.orders]\n')
    procs = []
    try:
        async with tether.QueueManager.open(tmp_path / "a") as a, tether.QueueManager.open(tmp_path / "b") as b:
            sent = {"a": [], "b": []}

            async def sender(qm, name):
                sent[name].append(await qm.send(address, b"%s.0" % name.encode()))
                for start in range(1, PER_SENDER, 500):
                    # sends started together are queued in the order they were made
                    sent[name] += await asyncio.gather(*(
                        qm.send(address, b"%s.%d" % (name.encode(), i))
                        for i in range(start, min(start + 500, PER_SENDER))))

            # the target is not there yet: everything waits in the transmission queues
            await asyncio.gather(sender(a, "a"), sender(b, "b"))
            procs.append(await _start_target(config))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            watcher = await tether.QueueClient.connect(url, connect_timeout=5)
            try:
                while True:         # kill it once part of the transfer has landed
                    depth = (await watcher.queue_info("orders")).depth
                    if depth > 0:
                        break
                    assert loop.time() < deadline
                    await asyncio.sleep(0.002)
                procs[-1].kill()
            finally:
                await watcher.close()
            await procs[-1].wait()
            assert depth < 2 * PER_SENDER, "the transfer finished before the kill; nothing was tested"
            procs.append(await _start_target(config))
            while (await _target_depth(url)) != 2 * PER_SENDER:
                assert loop.time() < deadline + 30, "not every message arrived"
                await asyncio.sleep(0.1)
            async with tether.QueueClient.connect(url, prefetch=256) as client:
                got = {"a": [], "b": []}
                for _ in range(2 * PER_SENDER):
                    m = await client.receive("orders", timeout=10)
                    got[m.body[:1].decode()].append(m.id)
                    await m.complete()
                assert await client.receive("orders", timeout=0.2) is None
            assert got == sent          # once each, in order per sender
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


async def test_a_stalled_target_does_not_poison_the_transmission_queue(tmp_path, monkeypatch):
    """A target that stops answering (SIGSTOP) for longer than the transmission queue's
    peek-lock: the forwarder keeps its locks, nothing is counted as a failed delivery, and
    everything arrives once when the target resumes."""
    import signal

    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    address = f"tether://127.0.0.1:{port}/orders"
    config = tmp_path / "target.toml"
    config.write_text(f'data_dir = "{tmp_path / "target"}"\nlisten = "{url}"\n[queues.orders]\n')
    monkeypatch.setattr("tether.queue.forwarder.LOCK_RENEW_EVERY", 0.05)
    # a short peek-lock, so the stall outlasts it, and the first expired one would poison
    monkeypatch.setattr("tether.queue.core.system_queues.TRANSMISSION_SETTINGS",
                        QueueSettings(receive_error_handling="move", validity_duration=1.0,
                                      receive_retry_count=0, max_retry_cycles=0))
    proc = await _start_target(config)
    try:
        async with tether.QueueManager.open(tmp_path / "a") as a:
            await a.send(address, b"first")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while (await _target_depth(url)) != 1:
                assert loop.time() < deadline, "the first message never arrived"
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGSTOP)
            ids = [await a.send(address, b"%d" % i) for i in range(20)]
            # three lock lifetimes (a short lock, but renewed every 50 ms: a loaded machine's
            # event loop may stall for a good part of a second without it running out)
            await asyncio.sleep(3.0)
            info = await a.queue_info(f"$xmit:127.0.0.1:{port}")
            assert (info.in_flight, info.poison, info.retrying) == (20, 0, 0), "a held lock expired"
            proc.send_signal(signal.SIGCONT)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while (depth := await _target_depth(url)) != 21:
                assert loop.time() < deadline, f"the target holds {depth} of 21 messages"
                await asyncio.sleep(0.05)
            async with tether.QueueClient.connect(url) as client:
                got = []
                for _ in range(21):
                    m = await client.receive("orders", timeout=10)
                    got.append(m.id)
                    await m.complete()
            assert got[1:] == ids
            info = await a.queue_info(f"$xmit:127.0.0.1:{port}")
            assert (info.depth, info.poison, info.retrying) == (0, 0, 0)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        await proc.wait()
