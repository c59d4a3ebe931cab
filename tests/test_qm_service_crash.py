"""`tether qm serve` as a child process: SIGKILLed under a concurrent send load (and with a
consumer running) and restarted, every acknowledged message is there exactly once and the
client carries on; SIGTERM shuts down cleanly, rolling back open transactions."""
from __future__ import annotations

import asyncio
import os
import random
import signal
import sys

import pytest

import tether
from tether import LockLost

pytestmark = pytest.mark.fault


class Service:
    """A `python -m tether qm serve` child (`data_dir` a directory, or a postgresql:// URL
    for --store); always killed by the test's finally."""

    def __init__(self, data_dir, listen="tcp://127.0.0.1:0", *extra):
        where = ["--store", data_dir] if str(data_dir).startswith("postgresql://") else ["--data-dir", str(data_dir)]
        self.args = [sys.executable, "-m", "tether", "qm", "serve", "--listen", listen,
                     *where, "--log-level", "WARNING", *extra]
        self.proc = None
        self.url = None

    async def start(self):
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        line = await asyncio.wait_for(self.proc.stdout.readline(), 20)
        assert line.startswith(b"tether qm: ready "), (line, await self.proc.stderr.read())
        self.url = line.split()[-1].decode()
        return self

    def kill(self):
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()

    async def wait(self):
        if self.proc is not None:
            await self.proc.wait()


async def test_sigkill_under_send_load_keeps_every_acknowledged_message_once(tmp_path):
    data = tmp_path / "qm"
    service = await Service(data).start()
    restarted = None
    try:
        url = service.url
        client = await tether.QueueClient.connect(url, prefetch=16, connect_timeout=5)
        consumer_client = await tether.QueueClient.connect(url, prefetch=16, connect_timeout=5)
        await client.create_queue("q")
        acked: list[bytes] = []
        completed: list[bytes] = []
        uncertain: list[bytes] = []      # complete() raised LockLost across the kill
        stop = asyncio.Event()

        async def sender(w):
            i = 0
            while not stop.is_set():
                body = b"%d.%d" % (w, i)
                await client.send("q", body)
                acked.append(body)
                i += 1

        async def consumer():
            while not stop.is_set():
                m = await consumer_client.receive("q", timeout=0.2)
                if m is None:
                    continue
                try:
                    await m.complete()
                    completed.append(m.body)
                except LockLost:
                    uncertain.append(m.body)

        tasks = [asyncio.create_task(sender(w)) for w in range(8)] + [asyncio.create_task(consumer())]
        rng = random.Random(5)
        for _ in range(2):
            await asyncio.sleep(0.4 + rng.random() * 0.6)
            before = len(acked)
            service.kill()
            await service.wait()
            await asyncio.sleep(0.2)
            service = restarted = await Service(data, url).start()
            while len(acked) < before + 200:        # the clients resumed on the new process
                await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert client.reconnects >= 2 and consumer_client.reconnects >= 2
        await consumer_client.close()
        remaining: list[bytes] = []
        while True:
            m = await client.receive("q", timeout=0.5)
            if m is None:
                break
            remaining.append(m.body)
            await m.complete()
        await client.close()
        assert len(remaining) == len(set(remaining)), "a message is in the queue twice"
        assert len(completed) == len(set(completed)), "a message was delivered again after its complete"
        assert not set(completed) & set(remaining)
        missing = set(acked) - set(completed) - set(remaining) - set(uncertain)
        assert not missing, f"{len(missing)} acknowledged messages lost"
        assert set(completed) | set(remaining) <= set(acked) | set(uncertain) | _unacked_bodies(acked)
    finally:
        service.kill()
        if restarted is not None:
            restarted.kill()
        await service.wait()


def _unacked_bodies(acked):
    """Bodies a sender had in flight when the test stopped it (sent, answer not awaited)."""
    last: dict[bytes, int] = {}
    for body in acked:
        w, i = body.split(b".")
        last[w] = max(last.get(w, -1), int(i))
    return {b"%s.%d" % (w, i + 1) for w, i in last.items()}


async def test_sigterm_rolls_back_open_transactions_and_exits_cleanly(tmp_path):
    data = tmp_path / "qm"
    service = await Service(data).start()
    try:
        client = await tether.QueueClient.connect(service.url)
        await client.create_queue("q")
        await client.send("q", b"work")
        tx = client.transaction()
        m = await tx.receive("q", timeout=5)
        assert m.body == b"work"
        service.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(service.proc.wait(), 20) == 0
        err = (await service.proc.stderr.read()).decode()
        assert "Traceback" not in err
        await client.close()
    finally:
        service.kill()
        await service.wait()
    async with tether.QueueManager.open(data) as qm:
        again = await qm.receive("q", timeout=1)
        assert (again.body, again.delivery_count) == (b"work", 2)     # rolled back: a failed delivery


async def test_serve_errors_are_one_line(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('listen = "tcp://127.0.0.1:0"\nfsync = "sometimes"\n')
    cases = [
        ["--listen", "tcp://127.0.0.1:0"],                                  # no data dir
        ["--listen", "udp://127.0.0.1:0", "--data-dir", str(tmp_path / "d")],
        ["--data-dir", str(tmp_path / "d"), "--config", str(config)],
        ["--data-dir", str(tmp_path / "d"), "--config", str(tmp_path / "missing.toml")],
    ]
    for extra in cases:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tether", "qm", "serve", *extra,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 20)
        finally:
            if proc.returncode is None:
                proc.kill()
        lines = err.decode().strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("tether: error:"), (extra, err)


async def test_config_file_creates_queues(tmp_path):
    config = tmp_path / "qm.toml"
    config.write_text(f'data_dir = "{tmp_path / "d"}"\nlisten = "tcp://127.0.0.1:0"\n'
                      '[queues.orders]\nreceive_error_handling = "move"\ntime_to_live = 60\n')
    service = Service(tmp_path / "unused", "tcp://127.0.0.1:0")
    service.args = [sys.executable, "-m", "tether", "qm", "serve", "--config", str(config)]
    await service.start()
    try:
        async with tether.QueueClient.connect(service.url) as client:
            info = await client.queue_info("orders")
            assert info.depth == 0
        assert os.path.isdir(tmp_path / "d")
    finally:
        service.kill()
        await service.wait()
