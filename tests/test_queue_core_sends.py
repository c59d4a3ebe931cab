"""QueueCore's send paths, driven directly (no asyncio, no files): what a record of many
sends costs and does, and the batch send's outcomes."""
from __future__ import annotations

import pytest

from tether.errors import QueueFull
from tether.queue.core import QueueCore, QueueSettings
from tether.queue.core.lifecycle import GONE


def _written(core: QueueCore, now: float) -> None:
    while (cut := core.cut()) is not None:
        core.written(cut[0], now)


def _core(**settings) -> QueueCore:
    core = QueueCore(b"core-sends-manager", journaled=True)
    core.start()
    core.define("q", QueueSettings(**settings))
    _written(core, 0.0)
    return core


def test_plain_sends_in_one_record_share_one_effect():
    # each plain send used to open a run of its own (a fresh bound method never matched
    # the last run's): two closures per message, and one apply per message at the write
    core = _core()
    records = {core.send_body("q", b"m%d" % i, 1.0)[1] for i in range(50)}
    assert len(records) == 1
    assert core.records.open_effects == 1
    _written(core, 1.0)
    assert core.info("q").depth == 50
    assert [core.take("q", 2.0).body for _ in range(50)] == [b"m%d" % i for i in range(50)]


def test_a_failed_record_of_plain_sends_queues_none_of_them():
    core = _core()
    entries = [core.prepare_plain("q", b"x", 1.0) for _ in range(20)]
    for entry in entries:
        core.send_one(entry, 1.0)
    core.failed(core.cut()[0], 1.0)
    assert core.info("q").depth == 0
    assert all(entry.state == GONE for entry in entries)
    core.send_body("q", b"again", 2.0)
    _written(core, 2.0)
    assert core.take("q", 2.0).body == b"again"


def test_plain_sends_up_to_max_length_counting_those_being_written():
    core = _core(max_length=3)
    for _ in range(3):
        core.send_body("q", b"x", 1.0)
    with pytest.raises(QueueFull):
        core.send_body("q", b"x", 1.0)
    _written(core, 1.0)
    assert core.info("q").depth == 3
