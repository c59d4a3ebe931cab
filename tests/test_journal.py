"""The journal (tether.queue.store.journal): round trips, fsync policies, group commit, segment
rollover, rewrite, and recovery from damaged files. Crash tests are in test_journal_crash."""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import tempfile
import threading
import time

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.errors import JournalCorrupt, QueueError
from tether.queue.store import segment as seg
from tether.queue.store.journal import Journal
from tether.queue.store.segment import HEADER_SIZE, RECORD_HEADER_SIZE

LOGGER = "tether.journal"


def seg_files(path) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.endswith(".seg"))


def numbered(i: int, size: int = 40) -> bytes:
    head = b"rec-%06d:" % i
    return head + bytes((i + k) % 251 for k in range(max(0, size - len(head))))


@pytest.fixture
def count_syncs(monkeypatch):
    """Counts os.fdatasync calls (the journal looks it up on every call)."""
    calls: list[float] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(time.monotonic())
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    return calls


# ---- round trips ----

async def test_append_then_reopen_recovers_records_in_order(tmp_path):
    journal = await Journal.open(tmp_path)
    assert journal.recovered == [] and journal.recovery_log == []
    records = [numbered(i) for i in range(50)] + [b"", b"\x00" * 3]
    for r in records:
        await journal.append(r)
    await journal.close()
    journal = await Journal.open(tmp_path)
    assert journal.recovered == records
    assert journal.recovery_log == []
    await journal.close()


async def test_concurrent_appends_and_append_many_keep_submission_order(tmp_path):
    journal = await Journal.open(tmp_path)
    submitted: list[bytes] = []

    async def one(i: int) -> None:
        if i % 5 == 0:
            batch = [numbered(i * 100 + k) for k in range(3)]
            submitted.extend(batch)
            await journal.append_many(batch)
        else:
            submitted.append(numbered(i * 100))
            await journal.append(numbered(i * 100))

    await asyncio.gather(*(one(i) for i in range(200)))
    await journal.append_many([])
    await journal.close()
    async with await Journal.open(tmp_path) as reopened:
        assert reopened.recovered == submitted


async def test_bytearray_and_memoryview_records_are_copied(tmp_path):
    journal = await Journal.open(tmp_path)
    buf = bytearray(b"first")
    await journal.append(buf)
    buf[:] = b"XXXXX"
    await journal.append(memoryview(b"second"))
    await journal.append_many([bytearray(b"third"), memoryview(b"fourth")])
    await journal.close()
    async with await Journal.open(tmp_path) as reopened:
        assert reopened.recovered == [b"first", b"second", b"third", b"fourth"]


async def test_reopened_journal_appends_after_recovered_records(tmp_path):
    for round_ in range(3):
        async with await Journal.open(tmp_path, segment_size=512) as journal:
            assert journal.recovered == [numbered(i) for i in range(round_ * 20)]
            for i in range(round_ * 20, round_ * 20 + 20):
                await journal.append(numbered(i))


async def test_open_creates_missing_directory(tmp_path):
    target = tmp_path / "a" / "b"
    async with await Journal.open(str(target)) as journal:
        await journal.append(b"x")
        assert journal.directory == str(target)
    assert seg_files(target) == [seg.segment_name(1)]


async def test_second_open_of_same_directory_is_refused_until_closed(tmp_path):
    journal = await Journal.open(tmp_path)
    with pytest.raises(QueueError, match="in use"):
        await Journal.open(tmp_path)
    await journal.close()
    again = await Journal.open(tmp_path)
    await again.close()


# ---- argument validation ----

@pytest.mark.parametrize("kwargs, name", [
    ({"fsync": "sometimes"}, "fsync"),
    ({"fsync": None}, "fsync"),
    ({"fsync_interval": 0}, "fsync_interval"),
    ({"fsync_interval": -1.0}, "fsync_interval"),
    ({"fsync_interval": float("nan")}, "fsync_interval"),
    ({"fsync_interval": float("inf")}, "fsync_interval"),
    ({"fsync_interval": True}, "fsync_interval"),
    ({"fsync_interval": "0.1"}, "fsync_interval"),
    ({"segment_size": 0}, "segment_size"),
    ({"segment_size": 255}, "segment_size"),
    ({"segment_size": 2 ** 41}, "segment_size"),
    ({"segment_size": 4096.0}, "segment_size"),
    ({"segment_size": True}, "segment_size"),
])
async def test_open_rejects_bad_settings(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        await Journal.open(tmp_path, **kwargs)
    assert not os.path.exists(tmp_path / "LOCK")   # rejected before touching the disk


@pytest.mark.parametrize("directory", [None, 123, b"/tmp/x", ""])
async def test_open_rejects_bad_directory(directory):
    with pytest.raises(ValueError, match="directory"):
        await Journal.open(directory)


async def test_open_rejects_a_file_as_directory(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="directory"):
        await Journal.open(path)


async def test_bad_records_and_snapshots_are_rejected_by_name(tmp_path):
    async with await Journal.open(tmp_path) as journal:
        for bad in ("text", 12, None, [b"a"]):
            with pytest.raises(ValueError, match="record"):
                await journal.append(bad)
        with pytest.raises(ValueError, match="records"):
            await journal.append_many(b"abc")
        with pytest.raises(ValueError, match=r"records\[1\]"):
            await journal.append_many([b"ok", 1])
        with pytest.raises(ValueError, match="snapshot"):
            await journal.rewrite([b"not callable"])
        with pytest.raises(ValueError, match=r"snapshot\(\)\[0\]"):
            await journal.rewrite(lambda: ["text"])
        with pytest.raises(ValueError, match=r"snapshot\(\)"):
            await journal.rewrite(lambda: None)
        await journal.append(b"still usable")
    async with await Journal.open(tmp_path) as reopened:
        assert reopened.recovered == [b"still usable"]


async def test_closed_journal_refuses_everything_and_close_is_idempotent(tmp_path):
    journal = await Journal.open(tmp_path)
    await journal.close()
    await journal.close()
    assert journal.closed
    with pytest.raises(ValueError, match="closed"):
        await journal.append(b"x")
    with pytest.raises(ValueError, match="closed"):
        await journal.append_many([b"x"])
    with pytest.raises(ValueError, match="closed"):
        await journal.rewrite(lambda: [])


# ---- fsync policies and group commit ----

async def test_always_syncs_every_batch_before_returning(tmp_path, count_syncs):
    journal = await Journal.open(tmp_path, fsync="always")
    before = len(count_syncs)
    for i in range(20):
        await journal.append(numbered(i))
        # the append returned: its batch's fdatasync has happened
        assert len(count_syncs) - before == i + 1
    assert journal.sync_count == journal.batch_count == 20
    await journal.close()


async def test_group_commit_batches_64_concurrent_appenders(tmp_path, count_syncs):
    journal = await Journal.open(tmp_path, fsync="always")
    before = len(count_syncs)
    appends_per_task = 20

    async def appender(t: int) -> None:
        for k in range(appends_per_task):
            await journal.append(numbered(t * 1000 + k))

    await asyncio.gather(*(appender(t) for t in range(64)))
    syncs = len(count_syncs) - before
    appends = 64 * appends_per_task
    assert journal.record_count == appends
    assert syncs == journal.batch_count
    assert syncs * 8 <= appends, f"{syncs} fdatasync calls for {appends} appends: not batching"
    await journal.close()


async def test_never_policy_does_not_sync_appends(tmp_path, count_syncs):
    journal = await Journal.open(tmp_path, fsync="never")
    before = len(count_syncs)
    await asyncio.gather(*(journal.append(numbered(i)) for i in range(100)))
    for i in range(20):
        await journal.append(numbered(i))
    assert len(count_syncs) == before
    assert journal.sync_count == 0
    await journal.close()
    assert len(count_syncs) == before
    async with await Journal.open(tmp_path) as reopened:
        assert len(reopened.recovered) == 120


async def test_interval_policy_syncs_at_most_every_interval_and_eventually(tmp_path, count_syncs,
                                                                          monkeypatch):
    interval = 0.05
    writes: list[float] = []
    real_write = os.write

    def timed_write(fd, data):
        writes.append(time.monotonic())
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", timed_write)
    journal = await Journal.open(tmp_path, fsync="interval", fsync_interval=interval)
    before = len(count_syncs)
    start = time.monotonic()
    appends = 0
    while time.monotonic() - start < 0.4:
        await journal.append(numbered(appends))
        appends += 1
    last_append = time.monotonic()
    elapsed = last_append - start
    during = [t for t in count_syncs[before:] if t <= last_append]
    assert appends > 4 * len(during)   # appends returned without waiting for a sync each
    assert len(during) <= elapsed / interval + 2
    gaps = [b - a for a, b in zip(during, during[1:])]
    assert all(g >= interval * 0.9 for g in gaps), gaps
    # with no more appends, the written data is still synced within about one interval
    await asyncio.sleep(interval * 4)
    assert count_syncs[-1] > writes[-1]
    assert journal.sync_count == len(count_syncs) - before
    await journal.close()


async def test_fdatasync_runs_off_the_event_loop(tmp_path, monkeypatch):
    journal = await Journal.open(tmp_path, fsync="always")
    real = os.fdatasync
    loop_thread = threading.get_ident()
    threads: set[int] = set()

    def slow(fd: int) -> None:
        threads.add(threading.get_ident())
        time.sleep(0.5)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", slow)
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    await journal.append(b"slow")
    task.cancel()
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    # a loop blocked by the 0.5 s fdatasync would show a gap of at least 0.5 s
    assert len(ticks) >= 10 and max(gaps) < 0.3, gaps
    assert threads and loop_thread not in threads
    monkeypatch.setattr(os, "fdatasync", real)
    await journal.close()


async def test_close_flushes_pending_appends(tmp_path):
    journal = await Journal.open(tmp_path)
    tasks = [asyncio.create_task(journal.append(numbered(i))) for i in range(100)]
    await asyncio.sleep(0)   # every task has submitted its record
    await journal.close()
    assert all(t.done() and t.exception() is None for t in tasks)
    async with await Journal.open(tmp_path) as reopened:
        assert reopened.recovered == [numbered(i) for i in range(100)]


async def test_cancelled_append_does_not_disturb_others(tmp_path):
    journal = await Journal.open(tmp_path)
    tasks = [asyncio.create_task(journal.append(numbered(i))) for i in range(10)]
    await asyncio.sleep(0)
    tasks[3].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[3], asyncio.CancelledError)
    assert all(r is None for i, r in enumerate(results) if i != 3)
    await journal.append(b"after")
    await journal.close()
    async with await Journal.open(tmp_path) as reopened:
        # the cancelled record was already submitted: it is written anyway
        assert reopened.recovered == [numbered(i) for i in range(10)] + [b"after"]


async def test_failed_fdatasync_fails_the_batch_then_the_journal(tmp_path, monkeypatch):
    journal = await Journal.open(tmp_path)
    await journal.append(b"good")

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "simulated I/O error")

    monkeypatch.setattr(os, "fdatasync", failing)
    results = await asyncio.gather(*(journal.append(b"x") for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, OSError) and r.errno == errno.EIO for r in results)
    monkeypatch.undo()
    # no retried fdatasync: a failed one may have dropped the dirty pages
    with pytest.raises(QueueError, match="unusable"):
        await journal.append(b"later")
    await journal.close()
    async with await Journal.open(tmp_path) as reopened:
        assert reopened.recovered[0] == b"good"


# ---- segments ----

async def test_segment_rollover_keeps_segments_within_size(tmp_path):
    journal = await Journal.open(tmp_path, segment_size=1024)
    for i in range(200):
        await journal.append(numbered(i, 100))
    names = seg_files(tmp_path)
    assert len(names) == journal.segment_count > 10
    assert [seg.parse_segment_name(n) for n in names] == list(range(1, len(names) + 1))
    assert all(os.path.getsize(tmp_path / n) <= 1024 for n in names)
    assert journal.size_bytes == sum(os.path.getsize(tmp_path / n) for n in names)
    await journal.close()
    async with await Journal.open(tmp_path, segment_size=1024) as reopened:
        assert reopened.recovered == [numbered(i, 100) for i in range(200)]
        assert reopened.recovery_log == []


async def test_record_larger_than_segment_size_gets_its_own_segment(tmp_path):
    async with await Journal.open(tmp_path, segment_size=256) as journal:
        await journal.append(b"small")
        await journal.append(b"B" * 1000)
        await journal.append(b"small again")
        assert journal.segment_count == 3
    async with await Journal.open(tmp_path, segment_size=256) as reopened:
        assert reopened.recovered == [b"small", b"B" * 1000, b"small again"]


# ---- rewrite ----

async def test_rewrite_with_concurrent_appends_keeps_everything_in_order(tmp_path):
    journal = await Journal.open(tmp_path, segment_size=4096)
    state: list[bytes] = []            # the owner's view: applied before append

    async def submit(record: bytes) -> None:
        state.append(record)
        await journal.append(record)

    for i in range(400):
        await submit(numbered(i, 200))
    old_segments = set(seg_files(tmp_path))
    size_before = journal.size_bytes
    assert len(old_segments) > 10

    stop = False
    counter = iter(range(10_000, 1_000_000))

    async def appender() -> None:
        while not stop:
            await submit(numbered(next(counter), 20))

    appenders = [asyncio.create_task(appender()) for _ in range(8)]
    await asyncio.sleep(0.05)
    cut: list[int] = []

    def snapshot() -> list[bytes]:
        # The owner compacts: everything appended so far collapses into one summary record.
        cut.append(len(state))
        return [b"summary of %d records" % len(state)]

    await journal.rewrite(snapshot)
    await asyncio.sleep(0.05)
    stop = True
    await asyncio.gather(*appenders)
    await journal.close()

    assert not old_segments & set(seg_files(tmp_path)), "old segments were not deleted"
    expected = [b"summary of %d records" % cut[0]] + state[cut[0]:]
    assert len(state) > cut[0] + 10      # appends really ran during and after the rewrite
    async with await Journal.open(tmp_path, segment_size=4096) as reopened:
        assert reopened.recovered == expected
        assert reopened.recovery_log == []
        # Disk use is that of the live records alone (framing and segment headers included),
        # however many appends the machine managed during the rewrite.
        live = sum(RECORD_HEADER_SIZE + len(r) for r in expected)
        assert reopened.size_bytes <= live + HEADER_SIZE * (reopened.segment_count + 1)
        assert reopened.size_bytes < size_before


async def test_rewrite_snapshot_spanning_segments_and_back_to_back_rewrites(tmp_path):
    journal = await Journal.open(tmp_path, segment_size=512)
    for i in range(100):
        await journal.append(numbered(i))
    big = [numbered(1000 + i, 100) for i in range(30)]      # ~3.3 KB: several segments
    first = asyncio.ensure_future(journal.rewrite(lambda: big))
    between = asyncio.ensure_future(journal.append(b"between"))
    second = asyncio.ensure_future(journal.rewrite(lambda: big + [b"between"]))
    after = asyncio.ensure_future(journal.append(b"after"))
    await asyncio.gather(first, between, second, after)
    assert journal.segment_count > 3
    names = seg_files(tmp_path)
    assert journal.segment_count == len(names)
    assert journal.size_bytes == sum(os.path.getsize(tmp_path / n) for n in names)
    await journal.close()
    async with await Journal.open(tmp_path, segment_size=512) as reopened:
        assert reopened.recovered == big + [b"between", b"after"]


async def test_rewrite_to_empty_snapshot(tmp_path):
    async with await Journal.open(tmp_path) as journal:
        await journal.append_many([numbered(i) for i in range(10)])
        await journal.rewrite(lambda: [])
        assert journal.segment_count == 1
        assert journal.size_bytes == seg.HEADER_SIZE
        await journal.append(b"next")
    async with await Journal.open(tmp_path) as reopened:
        assert reopened.recovered == [b"next"]


async def test_rewrite_failing_before_rename_leaves_old_journal_usable(tmp_path, monkeypatch):
    journal = await Journal.open(tmp_path)
    await journal.append_many([b"a", b"b"])
    real_open = os.open

    def no_tmp(path, *args, **kwargs):
        if str(path).endswith(seg.TMP_SUFFIX):
            raise OSError(errno.ENOSPC, "simulated full disk")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_tmp)
    with pytest.raises(OSError, match="full disk"):
        await journal.rewrite(lambda: [b"compacted"])
    monkeypatch.undo()
    await journal.append(b"c")
    await journal.close()
    assert not [n for n in os.listdir(tmp_path) if n.endswith(seg.TMP_SUFFIX)]
    async with await Journal.open(tmp_path) as reopened:
        assert reopened.recovered == [b"a", b"b", b"c"]


async def test_crash_before_start_segment_rename_recovers_old_journal(tmp_path, monkeypatch, caplog):
    """The rename of the new start segment fails (as if the process died there): members
    are already renamed; recovery must drop them and the leftover .tmp."""
    journal = await Journal.open(tmp_path, segment_size=256)
    await journal.append_many([b"old-1", b"old-2"])
    real_rename = os.rename

    def die_on_start(src, dst):
        if str(dst).endswith(seg.segment_name(2)):
            raise OSError(errno.EIO, "simulated crash")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", die_on_start)
    with pytest.raises(OSError, match="simulated crash"):
        await journal.rewrite(lambda: [numbered(i, 100) for i in range(6)])
    monkeypatch.undo()
    await journal.close()
    assert len(seg_files(tmp_path)) > 2     # orphan members renamed into place
    caplog.set_level(logging.WARNING, LOGGER)
    async with await Journal.open(tmp_path, segment_size=256) as reopened:
        assert reopened.recovered == [b"old-1", b"old-2"]
        assert any("rewrite interrupted" in line for line in reopened.recovery_log)
        assert seg_files(tmp_path) == [seg.segment_name(1)]
    assert not [n for n in os.listdir(tmp_path) if n.endswith(seg.TMP_SUFFIX)]
    assert any("rewrite interrupted" in r.getMessage() for r in caplog.records)


async def test_crash_before_old_segments_deleted_recovers_new_journal(tmp_path, monkeypatch):
    journal = await Journal.open(tmp_path, segment_size=256)
    for i in range(20):
        await journal.append(numbered(i))
    real_unlink = os.unlink

    def die(path):
        raise OSError(errno.EIO, "simulated crash")

    monkeypatch.setattr(os, "unlink", die)
    with pytest.raises(OSError, match="simulated crash"):
        await journal.rewrite(lambda: [b"compacted"])
    monkeypatch.setattr(os, "unlink", real_unlink)
    await journal.close()
    async with await Journal.open(tmp_path, segment_size=256) as reopened:
        assert reopened.recovered == [b"compacted"]
        assert any("replaced by a rewrite" in line for line in reopened.recovery_log)
        assert len(seg_files(tmp_path)) == 1


# ---- recovery from damaged files ----

async def write_journal(path, records, segment_size=64 * 1024 * 1024) -> None:
    async with await Journal.open(path, segment_size=segment_size) as journal:
        for r in records:
            await journal.append(r)


LAST = numbered(99, 24)
LAST_FRAME = seg.RECORD_HEADER_SIZE + len(LAST)


@pytest.mark.parametrize("keep", range(1, LAST_FRAME))
async def test_truncated_tail_at_every_offset_of_last_record(tmp_path, caplog, keep):
    records = [numbered(i, 24) for i in range(4)] + [LAST]
    await write_journal(tmp_path, records)
    path = tmp_path / seg.segment_name(1)
    full = os.path.getsize(path)
    boundary = full - LAST_FRAME
    os.truncate(path, boundary + keep)
    caplog.set_level(logging.WARNING, LOGGER)
    async with await Journal.open(tmp_path) as journal:
        assert journal.recovered == records[:4]
        assert len(journal.recovery_log) == 1
        assert "torn record" in journal.recovery_log[0]
        assert f"truncated to {boundary} bytes" in journal.recovery_log[0]
        assert os.path.getsize(path) == boundary
        await journal.append(b"after repair")
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] \
        and "torn record" in caplog.records[0].getMessage()
    async with await Journal.open(tmp_path) as journal:
        assert journal.recovered == records[:4] + [b"after repair"]
        assert journal.recovery_log == []


@pytest.mark.parametrize("where", ["length", "crc", "payload-first", "payload-last"])
async def test_flipped_bit_drops_that_record_and_later_ones(tmp_path, caplog, where):
    records = [numbered(i, 30) for i in range(10)]
    await write_journal(tmp_path, records)
    path = tmp_path / seg.segment_name(1)
    frame = seg.RECORD_HEADER_SIZE + 30
    victim = 6
    start = seg.HEADER_SIZE + victim * frame
    offset = {"length": start, "crc": start + 5, "payload-first": start + 8,
              "payload-last": start + frame - 1}[where]
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))
    caplog.set_level(logging.WARNING, LOGGER)
    async with await Journal.open(tmp_path) as journal:
        assert journal.recovered == records[:victim]
        assert len(journal.recovery_log) == 1
        line = journal.recovery_log[0]
        assert f"at offset {start}" in line and seg.segment_name(1) in line
        assert ("CRC" in line) if where != "length" else ("CRC" in line or "torn" in line)
    assert any(line in r.getMessage() for r in caplog.records)


async def test_flipped_bit_in_earlier_segment_drops_later_segments(tmp_path):
    records = [numbered(i, 100) for i in range(40)]
    await write_journal(tmp_path, records, segment_size=1024)
    names = seg_files(tmp_path)
    assert len(names) >= 4
    path = tmp_path / names[1]
    data = bytearray(path.read_bytes())
    data[seg.HEADER_SIZE + 20] ^= 0x01     # inside the first record of segment 2
    path.write_bytes(bytes(data))
    per_segment = (1024 - seg.HEADER_SIZE) // (seg.RECORD_HEADER_SIZE + 100)
    async with await Journal.open(tmp_path, segment_size=1024) as journal:
        assert journal.recovered == records[:per_segment]
        assert seg_files(tmp_path) == names[:2]
        assert "CRC" in journal.recovery_log[0]
        assert f"{len(names) - 2} later segment(s)" in journal.recovery_log[0]


@pytest.mark.parametrize("header_bytes", [0, 1, 10, seg.HEADER_SIZE - 1])
async def test_half_written_segment_header_is_dropped(tmp_path, caplog, header_bytes):
    records = [numbered(i) for i in range(5)]
    await write_journal(tmp_path, records)
    size = os.path.getsize(tmp_path / seg.segment_name(1))
    (tmp_path / seg.segment_name(2)).write_bytes(seg.encode_header(2, 1, size)[:header_bytes])
    caplog.set_level(logging.WARNING, LOGGER)
    async with await Journal.open(tmp_path) as journal:
        assert journal.recovered == records
        assert len(journal.recovery_log) == 1
        line = journal.recovery_log[0]
        assert seg.segment_name(2) in line and "removed" in line
        assert ("empty file" in line) if header_bytes == 0 else ("half-written header" in line)
        assert seg_files(tmp_path) == [seg.segment_name(1)]
        await journal.append(b"more")
    assert any(seg.segment_name(2) in r.getMessage() for r in caplog.records)
    async with await Journal.open(tmp_path) as journal:
        assert journal.recovered == records + [b"more"]


async def test_empty_only_segment_file_starts_a_fresh_journal(tmp_path):
    (tmp_path / seg.segment_name(1)).write_bytes(b"")
    async with await Journal.open(tmp_path) as journal:
        assert journal.recovered == []
        assert "empty file" in journal.recovery_log[0]
        await journal.append(b"first")
    async with await Journal.open(tmp_path) as journal:
        assert journal.recovered == [b"first"]


async def test_damaged_header_in_middle_drops_it_and_later_segments(tmp_path):
    records = [numbered(i, 100) for i in range(40)]
    await write_journal(tmp_path, records, segment_size=1024)
    names = seg_files(tmp_path)
    path = tmp_path / names[2]
    data = bytearray(path.read_bytes())
    data[12] ^= 0x01                       # inside the seq field
    path.write_bytes(bytes(data))
    per_segment = (1024 - seg.HEADER_SIZE) // (seg.RECORD_HEADER_SIZE + 100)
    async with await Journal.open(tmp_path, segment_size=1024) as journal:
        assert journal.recovered == records[: 2 * per_segment]
        assert seg_files(tmp_path) == names[:2]
        assert "CRC" in journal.recovery_log[0] and "damaged" in journal.recovery_log[0]


async def test_middle_segment_cut_at_a_record_boundary_drops_later_segments(tmp_path):
    records = [numbered(i, 100) for i in range(40)]
    await write_journal(tmp_path, records, segment_size=1024)
    names = seg_files(tmp_path)
    per_segment = (1024 - seg.HEADER_SIZE) // (seg.RECORD_HEADER_SIZE + 100)
    # the second segment loses its last record cleanly: every remaining record is intact
    os.truncate(tmp_path / names[1], seg.HEADER_SIZE + (per_segment - 1) * (seg.RECORD_HEADER_SIZE + 100))
    async with await Journal.open(tmp_path, segment_size=1024) as journal:
        assert journal.recovered == records[: 2 * per_segment - 1]
        assert f"when {names[2]} was started" in journal.recovery_log[0]
        assert seg_files(tmp_path) == names[:2]


async def test_missing_middle_segment_drops_the_segments_after_the_gap(tmp_path):
    records = [numbered(i, 100) for i in range(40)]
    await write_journal(tmp_path, records, segment_size=1024)
    names = seg_files(tmp_path)
    os.unlink(tmp_path / names[1])
    per_segment = (1024 - seg.HEADER_SIZE) // (seg.RECORD_HEADER_SIZE + 100)
    async with await Journal.open(tmp_path, segment_size=1024) as journal:
        assert journal.recovered == records[:per_segment]
        assert "missing" in journal.recovery_log[0]
        assert seg_files(tmp_path) == names[:1]


async def test_missing_first_segment_is_reported_and_the_rest_kept(tmp_path):
    records = [numbered(i, 100) for i in range(40)]
    await write_journal(tmp_path, records, segment_size=1024)
    names = seg_files(tmp_path)
    os.unlink(tmp_path / names[0])
    per_segment = (1024 - seg.HEADER_SIZE) // (seg.RECORD_HEADER_SIZE + 100)
    async with await Journal.open(tmp_path, segment_size=1024) as journal:
        assert journal.recovered == records[per_segment:]
        assert "first segment" in journal.recovery_log[0] and names[0] in journal.recovery_log[0]


async def test_segment_renamed_by_hand_is_treated_as_damaged(tmp_path):
    await write_journal(tmp_path, [b"a"])
    os.rename(tmp_path / seg.segment_name(1), tmp_path / seg.segment_name(7))
    async with await Journal.open(tmp_path) as journal:
        assert journal.recovered == []
        assert "names segment 1" in journal.recovery_log[0]


async def test_unknown_format_version_is_refused_without_deleting(tmp_path):
    await write_journal(tmp_path, [b"a"])
    path = tmp_path / seg.segment_name(1)
    data = bytearray(path.read_bytes())
    import struct
    import zlib
    body = struct.pack("<4sHHQQQ", seg.MAGIC, seg.VERSION + 1, 0, 1, 1, 0)
    data[: seg.HEADER_SIZE] = body + struct.pack("<I", zlib.crc32(body))
    path.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt, match="format version"):
        await Journal.open(tmp_path)
    assert path.read_bytes() == bytes(data)
    journal = await Journal.open(tmp_path.parent / "other")     # the lock was released
    await journal.close()
    os.truncate(path, 0)
    async with await Journal.open(tmp_path) as journal:
        assert journal.recovered == []


async def test_zero_filled_tail_is_not_taken_for_records(tmp_path):
    await write_journal(tmp_path, [b"a", b"b"])
    with open(tmp_path / seg.segment_name(1), "ab") as f:
        f.write(b"\x00" * 64)
    async with await Journal.open(tmp_path) as journal:
        assert journal.recovered == [b"a", b"b"]
        assert "CRC" in journal.recovery_log[0]


RANDOM_RECORDS = [numbered(i, 10 + (i * 37) % 120) for i in range(60)]


@pytest.fixture(scope="module")
def template_journal(tmp_path_factory):
    """A journal of RANDOM_RECORDS over several segments, and where each record starts."""
    path = tmp_path_factory.mktemp("template")
    asyncio.run(write_journal(path, RANDOM_RECORDS, segment_size=1024))
    starts: list[tuple[str, int]] = []        # (segment name, offset) per record
    for name in seg_files(path):
        data = (path / name).read_bytes()
        pos = seg.HEADER_SIZE
        while pos < len(data):
            starts.append((name, pos))
            (length, _crc) = seg.RECORD_HEADER.unpack_from(data, pos)
            pos += seg.RECORD_HEADER_SIZE + length
    assert len(starts) == len(RANDOM_RECORDS)
    return path, starts


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_any_damage_recovers_an_intact_prefix_up_to_the_damage(template_journal, data):
    template, starts = template_journal
    names = seg_files(template)
    name = data.draw(st.sampled_from(names), label="segment")
    size = os.path.getsize(template / name)
    boundaries = [o for n, o in starts if n == name]
    offset = data.draw(st.one_of(st.integers(0, size - 1), st.sampled_from(boundaries)), label="offset")
    truncate = data.draw(st.booleans(), label="truncate")
    # every record that ends before the damaged byte (in journal order) must survive
    where = (names.index(name), offset)
    safe = 0
    for (n, o), record in zip(starts, RANDOM_RECORDS):
        if (names.index(n), o + seg.RECORD_HEADER_SIZE + len(record)) > where:
            break
        safe += 1
    clean_cut = truncate and name == names[-1] and offset in boundaries
    with tempfile.TemporaryDirectory() as tmp:
        for n in names:
            shutil.copy(template / n, os.path.join(tmp, n))
        path = os.path.join(tmp, name)
        if truncate:
            os.truncate(path, offset)
        else:
            with open(path, "r+b") as f:
                f.seek(offset)
                byte = f.read(1)[0]
                f.seek(offset)
                f.write(bytes([byte ^ (1 << data.draw(st.integers(0, 7), label="bit"))]))

        async def reopen() -> tuple[list[bytes], list[str]]:
            async with await Journal.open(tmp, segment_size=1024) as journal:
                return journal.recovered, journal.recovery_log

        recovered, log = asyncio.run(reopen())
        assert recovered == RANDOM_RECORDS[: len(recovered)]
        if clean_cut:   # indistinguishable from a journal that was never longer
            assert len(recovered) == safe and log == []
        else:
            assert safe <= len(recovered) < len(RANDOM_RECORDS)
            assert log, "damage went unreported"
        recovered_again, log_again = asyncio.run(reopen())
        assert recovered_again == recovered and log_again == []


# ---- uvloop ----

def test_round_trip_with_concurrent_appends_and_rewrite_on_uvloop(tmp_path):
    async def scenario() -> list[bytes]:
        journal = await Journal.open(tmp_path, segment_size=1024)
        await asyncio.gather(*(journal.append(numbered(i)) for i in range(300)))
        await journal.rewrite(lambda: [b"snap"])
        await asyncio.gather(*(journal.append(numbered(i)) for i in range(300, 310)))
        await journal.close()
        async with await Journal.open(tmp_path, segment_size=1024) as reopened:
            return reopened.recovered

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(scenario()) == [b"snap"] + [numbered(i) for i in range(300, 310)]


# ---- the benchmark baseline ----

def test_fdatasync_baseline_measures_and_cleans_up(tmp_path):
    from tether.bench.fsync_baseline import fdatasync_baseline
    rate = fdatasync_baseline(tmp_path, 64, 10.5, 0.05)
    assert rate > 0
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("args, name", [
    (("missing-dir", 64, 1, 0.1), "directory"),
    ((None, 64, 1, 0.1), "directory"),
    ((".", 0, 1, 0.1), "record_size"),
    ((".", 64.0, 1, 0.1), "record_size"),
    ((".", 64, 0.5, 0.1), "batch_size"),
    ((".", 64, float("nan"), 0.1), "batch_size"),
    ((".", 64, True, 0.1), "batch_size"),
    ((".", 64, 1, 0), "seconds"),
    ((".", 64, 1, float("inf")), "seconds"),
])
def test_fdatasync_baseline_rejects_bad_arguments(tmp_path, monkeypatch, args, name):
    from tether.bench.fsync_baseline import fdatasync_baseline
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=name):
        fdatasync_baseline(*args)
