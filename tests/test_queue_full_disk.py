"""A queue manager on a full disk: the sends that cannot be written fail with StorageError
and are not queued, everything else keeps working, and once space returns the manager works
again by itself, without a restart; nothing acknowledged is lost."""
from __future__ import annotations

import os

import tether
from tether.errors import StorageError

from full_disk import fill_disk


async def test_a_full_disk_fails_sends_with_storage_error_and_the_manager_recovers_by_itself(small_tmpfs):
    directory = small_tmpfs / "qm"
    acknowledged: list[bytes] = []
    async with tether.QueueManager.open(directory, segment_size=16384) as qm:
        await qm.create_queue("q")
        for i in range(50):
            await qm.send("q", b"%04d" % i + bytes(500))
            acknowledged.append(b"%04d" % i)
        held = await qm.receive("q", timeout=0)          # locked while the disk is full
        fill_disk(small_tmpfs / "filler")
        refused = 0
        for i in range(50, 120):
            try:
                await qm.send("q", b"%04d" % i + bytes(500))
            except StorageError as exc:
                refused += 1
                assert "No space left on device" in str(exc)
            else:
                acknowledged.append(b"%04d" % i)
        assert refused > 20
        # receiving still works, and the refused sends are nowhere
        assert (await qm.queue_info("q")).depth + 1 == len(acknowledged)
        try:
            await held.complete()           # a small record may still fit a page already there
            completed = True
        except StorageError:
            completed = False               # not written: the message is still locked
        os.unlink(small_tmpfs / "filler")
        if not completed:
            await held.complete()           # the same manager, space back: it works again
        acknowledged.remove(b"0000")
        for i in range(200, 220):
            await qm.send("q", b"%04d" % i + bytes(500))
            acknowledged.append(b"%04d" % i)
    async with tether.QueueManager.open(directory) as qm:
        got = []
        while (m := await qm.receive("q", timeout=0)) is not None:
            got.append(m.body[:4])
        assert got == acknowledged
