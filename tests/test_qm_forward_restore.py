"""Restoring an older copy of a queue manager that forwards: the copy's messages the target
already has are not delivered twice, and every message sent after the restore arrives (the
restored copy must not number them with sequences its lost later life forwarded)."""
from __future__ import annotations

import asyncio
import shutil
import socket

import pytest

import tether
from tether.queue.core.engine import QueueCore

pytestmark = pytest.mark.fault


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _until(check, what, timeout=20.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.02)


async def _xmit_empty(qm, port):
    info = await qm.queue_info(f"$xmit:127.0.0.1:{port}")
    return info.depth == info.in_flight == info.retrying == 0


async def _send(qm, address, bodies):
    for body in bodies:
        await qm.send(address, body)


async def _restore_scenario(tmp_path, after_restore, on_restore=lambda: None):
    """Run the restore; `after_restore(a, address, port)` sends the new messages. Returns
    the bodies the target holds, in order, and the bodies that should be there."""
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    address = f"tether://127.0.0.1:{port}/orders"
    target_dir, a_dir, copy_dir = tmp_path / "t", tmp_path / "a", tmp_path / "a-copy"
    pre = [b"pre.%d" % i for i in range(5)]
    pending = [b"pending.%d" % i for i in range(3)]
    lost = [b"lost.%d" % i for i in range(4)]
    # 1. delivered before the copy
    async with tether.QueueManager.open(target_dir, listen=url) as target:
        await target.create_queue("orders")
        async with tether.QueueManager.open(a_dir) as a:
            await _send(a, address, pre)
            await _until(lambda: _xmit_empty(a, port), "the first messages were not forwarded")
    # 2. sent while the target is down: in the copy, not yet forwarded
    async with tether.QueueManager.open(a_dir) as a:
        await _send(a, address, pending)
    shutil.copytree(a_dir, copy_dir)
    # 3. the life the restore loses: it forwards the pending ones and more
    async with tether.QueueManager.open(target_dir, listen=url) as target:
        async with tether.QueueManager.open(a_dir) as a:
            await _send(a, address, lost)
            await _until(lambda: _xmit_empty(a, port), "the lost life did not forward")
        # 4. restore the copy and send new messages
        shutil.rmtree(a_dir)
        shutil.copytree(copy_dir, a_dir)
        on_restore()
        async with tether.QueueManager.open(a_dir) as a:
            new = await after_restore(a, address, port)
            await _until(lambda: _xmit_empty(a, port), "the restored copy did not forward")
        got = []
        while (m := await target.receive("orders", timeout=0)) is not None:
            got.append(m.body)
            await m.complete()
    return got, pre + pending + lost + new


async def test_restored_copy_delivers_new_messages_and_no_duplicates(tmp_path):
    async def after_restore(a, address, port):
        new = [b"new.%d" % i for i in range(6)]
        await _send(a, address, new)        # numbered before the forwarder reaches the target
        return new

    got, expected = await _restore_scenario(tmp_path, after_restore)
    assert got == expected


async def test_restored_copy_with_its_clock_behind_numbers_above_the_target(tmp_path, monkeypatch):
    # The restored copy opens with its clock an hour behind the life it lost, so its own
    # numbering would reuse that life's sequences; the target's HELLO says how far it got.
    load = QueueCore.load
    restored = False

    def load_an_hour_behind(core, state, now):
        return load(core, state, now - 3600 if restored else now)

    monkeypatch.setattr(QueueCore, "load", load_an_hour_behind)

    async def after_restore(a, address, port):
        await _until(lambda: _xmit_empty(a, port), "the copy's pending messages were not settled")
        new = [b"new.%d" % i for i in range(6)]
        await _send(a, address, new)        # after the forwarder heard the target's HELLO
        return new

    def on_restore():
        nonlocal restored
        restored = True

    got, expected = await _restore_scenario(tmp_path, after_restore, on_restore)
    assert got == expected


async def test_transmission_queue_deleted_and_made_again_numbers_above_the_old_one(tmp_path):
    """Deleting a transmission queue (an operator clearing it) and sending to the same
    target again in the same life: the new queue must not number from where the deleted
    one started, or the target drops the new messages as resends of the old ones."""
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    address = f"tether://127.0.0.1:{port}/orders"
    async with tether.QueueManager.open(tmp_path / "t", listen=url) as target:
        await target.create_queue("orders")
        async with tether.QueueManager.open(tmp_path / "a") as a:
            await _send(a, address, [b"one", b"two"])
            await _until(lambda: _xmit_empty(a, port), "the first messages were not forwarded")
            await a.delete_queue(f"$xmit:127.0.0.1:{port}")
            await _send(a, address, [b"three", b"four"])
            await _until(lambda: _xmit_empty(a, port), "the later messages were not forwarded")
        got = []
        while (m := await target.receive("orders", timeout=0)) is not None:
            got.append(m.body)
            await m.complete()
    assert got == [b"one", b"two", b"three", b"four"]
