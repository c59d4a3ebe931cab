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

from tether.errors import JournalCorrupt, QueueError, StorageError
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
def count_syncs(monkeypatch, reference_journal_io):
    """Counts os.fdatasync calls (the journal looks it up on every call; its batches go
    through the pure-Python twin of journal_io, which calls os.fdatasync)."""
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
    ({"retry_interval": 0}, "retry_interval"),
    ({"retry_interval": float("nan")}, "retry_interval"),
    ({"retry_interval": True}, "retry_interval"),
    ({"retry_interval": "1"}, "retry_interval"),
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


async def test_fdatasync_runs_off_the_event_loop(tmp_path, monkeypatch, reference_journal_io):
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


async def test_failed_fdatasync_fails_the_batch_and_the_journal_goes_on(tmp_path, monkeypatch,
                                                                       reference_journal_io):
    journal = await Journal.open(tmp_path)
    await journal.append(b"good")

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "simulated I/O error")

    monkeypatch.setattr(os, "fdatasync", failing)
    results = await asyncio.gather(*(journal.append(b"x") for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, StorageError) and isinstance(r.__cause__, OSError) and r.__cause__.errno == errno.EIO
               for r in results)
    assert str(tmp_path) in str(results[0]) and "simulated I/O error" in str(results[0])
    monkeypatch.undo()
    # not latched: the failed batch was cut off (not fdatasync'ed again) and appends go on
    await journal.append(b"later")
    await journal.close()
    async with await Journal.open(tmp_path) as reopened:
        assert reopened.recovered == [b"good", b"later"]
        assert reopened.recovery_log == []


# ---- segments ----

async def test_segment_rollover_keeps_segments_within_size(tmp_path):
    journal = await Journal.open(tmp_path, segment_size=1024, preallocate=False)   # file sizes are record bytes
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
    journal = await Journal.open(tmp_path, segment_size=4096, preallocate=False)   # file sizes are record bytes
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
    journal = await Journal.open(tmp_path, segment_size=512, preallocate=False)   # file sizes are record bytes
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
    with pytest.raises(StorageError, match="full disk"):
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

    def no_cleanup(path):
        raise OSError(errno.EIO, "simulated crash")

    monkeypatch.setattr(os, "rename", die_on_start)
    # the process "dies": the rewrite's own cleanup of what it renamed never runs
    monkeypatch.setattr(os, "unlink", no_cleanup)
    with pytest.raises(StorageError, match="simulated crash"):
        await journal.rewrite(lambda: [numbered(i, 100) for i in range(6)])
    await journal.close()
    monkeypatch.undo()
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
    with pytest.raises(StorageError, match="simulated crash"):
        await journal.rewrite(lambda: [b"compacted"])
    await journal.close()      # the process "dies" before it could delete them
    monkeypatch.setattr(os, "unlink", real_unlink)
    async with await Journal.open(tmp_path, segment_size=256) as reopened:
        assert reopened.recovered == [b"compacted"]
        assert any("replaced by a rewrite" in line for line in reopened.recovery_log)
        assert len(seg_files(tmp_path)) == 1


# ---- recovery from damaged files ----
#
# Only a torn tail (the unsynced end of the last batch of the last segment) is repaired;
# any other damage makes open() raise JournalCorrupt and leaves every byte as it was.

async def write_journal(path, records, segment_size=64 * 1024 * 1024) -> None:
    # appending, not preallocated: the offsets these tests compute are those of that layout
    # (test_journal_prealloc.py has the preallocated one's)
    async with await Journal.open(path, segment_size=segment_size, preallocate=False) as journal:
        for r in records:
            await journal.append(r)


# The clean-close marker close() writes last is a record header alone.
MARKER_SIZE = seg.RECORD_HEADER_SIZE


def strip_close_marker(path) -> None:
    """Cut the clean-close marker off the last segment in `path`: what a process killed
    right after its last append leaves."""
    last = path / seg_files(path)[-1]
    data = last.read_bytes()
    header = seg.decode_header(data[: seg.HEADER_SIZE], seg.parse_segment_name(last.name), len(data), str(last))
    assert data.endswith(seg.close_marker(header.salt))
    os.truncate(last, len(data) - MARKER_SIZE)


async def write_crashed_journal(path, records, segment_size=64 * 1024 * 1024) -> None:
    await write_journal(path, records, segment_size)
    strip_close_marker(path)


def all_bytes(path) -> dict[str, bytes]:
    """Every file under `path` and its bytes."""
    return {os.path.join(root, name): open(os.path.join(root, name), "rb").read()
            for root, _dirs, names in os.walk(path) for name in names}


async def open_refused(path, **kwargs) -> JournalCorrupt:
    """Open must raise JournalCorrupt and change no byte; returns the error."""
    before = all_bytes(path)
    with pytest.raises(JournalCorrupt) as caught:
        await Journal.open(path, **kwargs)
    assert all_bytes(path) == before
    error = caught.value
    assert error.path is not None and error.offset is not None
    assert error.path in str(error) and f"at offset {error.offset}" in str(error)
    return error


def flip(path, offset: int, mask: int = 0x10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


LAST = numbered(99, 24)
LAST_FRAME = seg.RECORD_HEADER_SIZE + len(LAST)


@pytest.mark.parametrize("keep", range(1, LAST_FRAME))
async def test_truncated_tail_at_every_offset_of_last_record(tmp_path, caplog, keep):
    records = [numbered(i, 24) for i in range(4)] + [LAST]
    await write_journal(tmp_path, records)
    path = tmp_path / seg.segment_name(1)
    full = os.path.getsize(path) - MARKER_SIZE
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


async def test_clean_close_marker_is_cut_off_by_open_without_a_repair_line(tmp_path):
    await write_journal(tmp_path, [b"a", b"b"])
    path = tmp_path / seg.segment_name(1)
    closed_size = os.path.getsize(path)
    async with await Journal.open(tmp_path) as journal:
        assert journal.recovered == [b"a", b"b"] and journal.recovery_log == []
        assert os.path.getsize(path) == closed_size - MARKER_SIZE == journal.size_bytes
        await journal.append(b"c")
    async with await Journal.open(tmp_path) as journal:
        assert journal.recovered == [b"a", b"b", b"c"] and journal.recovery_log == []


@pytest.mark.parametrize("where", ["length", "crc", "payload-first", "payload-last"])
async def test_damaged_record_followed_by_intact_records_is_corruption(tmp_path, where):
    records = [numbered(i, 30) for i in range(10)]
    # even where a crash tore the end, damage with intact records after it is not a torn tail
    await write_crashed_journal(tmp_path, records)
    path = tmp_path / seg.segment_name(1)
    frame = seg.RECORD_HEADER_SIZE + 30
    victim = 6
    start = seg.HEADER_SIZE + victim * frame
    offset = {"length": start, "crc": start + 5, "payload-first": start + seg.RECORD_HEADER_SIZE,
              "payload-last": start + frame - 1}[where]
    flip(path, offset)
    error = await open_refused(tmp_path)
    assert (error.path, error.offset) == (str(path), start)
    assert "CRC" in str(error)


async def test_three_changed_bytes_in_record_43_of_100_lose_nothing(tmp_path):
    records = [numbered(i, 50) for i in range(100)]
    await write_journal(tmp_path, records)
    path = tmp_path / seg.segment_name(1)
    at = seg.HEADER_SIZE + 43 * (seg.RECORD_HEADER_SIZE + 50) + 20
    data = bytearray(path.read_bytes())
    data[at: at + 3] = b"XYZ"
    path.write_bytes(bytes(data))
    await open_refused(tmp_path)
    assert os.path.getsize(path) == len(data)          # the 57 records after it are still there


async def test_damaged_record_in_earlier_segment_is_corruption(tmp_path):
    records = [numbered(i, 100) for i in range(40)]
    await write_journal(tmp_path, records, segment_size=1024)
    names = seg_files(tmp_path)
    assert len(names) >= 4
    flip(tmp_path / names[1], seg.HEADER_SIZE + 20, 0x01)    # inside the first record of segment 2
    error = await open_refused(tmp_path, segment_size=1024)
    assert error.path == str(tmp_path / names[1]) and error.offset == seg.HEADER_SIZE
    assert "CRC" in str(error)


async def test_damaged_last_record_after_a_crash_is_a_torn_tail(tmp_path):
    records = [numbered(i, 30) for i in range(10)]
    await write_crashed_journal(tmp_path, records)
    path = tmp_path / seg.segment_name(1)
    flip(path, os.path.getsize(path) - 3)       # no intact record follows it
    async with await Journal.open(tmp_path) as journal:
        assert journal.recovered == records[:9]
        assert "CRC" in journal.recovery_log[0] and "truncated" in journal.recovery_log[0]


async def test_damaged_record_before_the_clean_close_marker_is_corruption(tmp_path):
    """After a clean close nothing at the end is a write cut short by a crash: the last
    record failing its CRC is damage, not a torn tail (it was acknowledged)."""
    records = [numbered(i, 30) for i in range(10)]
    await write_journal(tmp_path, records)
    path = tmp_path / seg.segment_name(1)
    flip(path, os.path.getsize(path) - MARKER_SIZE - 3)
    error = await open_refused(tmp_path)
    assert "CRC" in str(error)


async def test_bytes_after_the_clean_close_marker_are_corruption(tmp_path):
    await write_journal(tmp_path, [b"a", b"b"])
    path = tmp_path / seg.segment_name(1)
    with open(path, "ab") as f:
        f.write(b"\x00" * 64)
    error = await open_refused(tmp_path)
    assert "after the clean-close marker" in str(error)


@pytest.mark.parametrize("header_bytes", [0, 1, 10, seg.HEADER_SIZE - 1])
async def test_half_written_segment_header_is_dropped(tmp_path, caplog, header_bytes):
    records = [numbered(i) for i in range(5)]
    await write_journal(tmp_path, records)
    size = os.path.getsize(tmp_path / seg.segment_name(1))
    (tmp_path / seg.segment_name(2)).write_bytes(seg.encode_header(2, 1, size, 7)[:header_bytes])
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


async def test_zero_filled_header_of_last_segment_is_dropped(tmp_path):
    await write_journal(tmp_path, [b"a"])
    (tmp_path / seg.segment_name(2)).write_bytes(bytes(seg.HEADER_SIZE))   # extended, never written
    async with await Journal.open(tmp_path) as journal:
        assert journal.recovered == [b"a"]
        assert "zero-filled header" in journal.recovery_log[0]
        assert seg_files(tmp_path) == [seg.segment_name(1)]


async def test_half_written_header_before_the_last_segment_is_corruption(tmp_path):
    records = [numbered(i, 100) for i in range(40)]
    await write_journal(tmp_path, records, segment_size=1024)
    names = seg_files(tmp_path)
    os.truncate(tmp_path / names[1], 10)
    error = await open_refused(tmp_path, segment_size=1024)
    assert error.path == str(tmp_path / names[1]) and "half-written header" in str(error)


async def test_empty_only_segment_file_starts_a_fresh_journal(tmp_path):
    (tmp_path / seg.segment_name(1)).write_bytes(b"")
    async with await Journal.open(tmp_path) as journal:
        assert journal.recovered == []
        assert "empty file" in journal.recovery_log[0]
        await journal.append(b"first")
    async with await Journal.open(tmp_path) as journal:
        assert journal.recovered == [b"first"]


@pytest.mark.parametrize("offset", range(seg.HEADER_SIZE))
async def test_flipped_bit_in_the_header_of_the_only_segment_is_corruption(tmp_path, offset):
    """The old recovery logged a warning and deleted the segment: every record was gone."""
    await write_journal(tmp_path, [numbered(i) for i in range(10)])
    path = tmp_path / seg.segment_name(1)
    flip(path, offset, 0x04)
    error = await open_refused(tmp_path)
    assert error.path == str(path) and error.offset == 0


async def test_damaged_header_in_middle_is_corruption(tmp_path):
    records = [numbered(i, 100) for i in range(40)]
    await write_journal(tmp_path, records, segment_size=1024)
    names = seg_files(tmp_path)
    flip(tmp_path / names[2], 12, 0x01)        # inside the seq field
    error = await open_refused(tmp_path, segment_size=1024)
    assert error.path == str(tmp_path / names[2]) and "CRC" in str(error)


async def test_middle_segment_cut_at_a_record_boundary_is_corruption(tmp_path):
    records = [numbered(i, 100) for i in range(40)]
    await write_journal(tmp_path, records, segment_size=1024)
    names = seg_files(tmp_path)
    per_segment = (1024 - seg.HEADER_SIZE) // (seg.RECORD_HEADER_SIZE + 100)
    # the second segment loses its last record cleanly: every remaining record is intact
    cut = seg.HEADER_SIZE + (per_segment - 1) * (seg.RECORD_HEADER_SIZE + 100)
    os.truncate(tmp_path / names[1], cut)
    error = await open_refused(tmp_path, segment_size=1024)
    assert (error.path, error.offset) == (str(tmp_path / names[1]), cut)
    assert f"when {names[2]} was started" in str(error)


async def test_missing_middle_segment_is_corruption(tmp_path):
    records = [numbered(i, 100) for i in range(40)]
    await write_journal(tmp_path, records, segment_size=1024)
    names = seg_files(tmp_path)
    os.unlink(tmp_path / names[1])
    error = await open_refused(tmp_path, segment_size=1024)
    assert error.path == str(tmp_path / names[1]) and "missing" in str(error)


async def test_missing_first_segment_is_corruption(tmp_path):
    records = [numbered(i, 100) for i in range(40)]
    await write_journal(tmp_path, records, segment_size=1024)
    names = seg_files(tmp_path)
    os.unlink(tmp_path / names[0])
    error = await open_refused(tmp_path, segment_size=1024)
    assert error.path == str(tmp_path / names[0]) and "missing" in str(error)


async def test_segment_renamed_by_hand_is_corruption(tmp_path):
    await write_journal(tmp_path, [b"a"])
    os.rename(tmp_path / seg.segment_name(1), tmp_path / seg.segment_name(7))
    error = await open_refused(tmp_path)
    assert "names segment 1" in str(error)


def header_of_version(version: int, seq: int = 1) -> bytes:
    import struct
    import zlib
    if version == 1:     # the version 1 layout: no salt
        body = struct.pack("<4sHHQQQ", seg.MAGIC, 1, 0, seq, seq, 0)
    else:
        body = struct.pack("<4sHHQQQI", seg.MAGIC, version, 0, seq, seq, 0, 1234)
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("version", [1, seg.VERSION + 1])
async def test_other_format_version_is_refused_without_deleting(tmp_path, version):
    await write_journal(tmp_path, [b"a"])
    path = tmp_path / seg.segment_name(1)
    data = bytearray(path.read_bytes())
    header = header_of_version(version)
    data[: len(header)] = header
    path.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt, match="format version") as caught:
        await Journal.open(tmp_path)
    assert caught.value.path == str(path)
    assert path.read_bytes() == bytes(data)
    journal = await Journal.open(tmp_path.parent / "other")     # the lock was released
    await journal.close()
    os.truncate(path, 0)
    async with await Journal.open(tmp_path) as journal:
        assert journal.recovered == []


async def test_zero_filled_tail_after_a_crash_is_not_taken_for_records(tmp_path):
    await write_crashed_journal(tmp_path, [b"a", b"b"])
    with open(tmp_path / seg.segment_name(1), "ab") as f:
        f.write(b"\x00" * 64)
    async with await Journal.open(tmp_path) as journal:
        assert journal.recovered == [b"a", b"b"]
        assert "CRC" in journal.recovery_log[0]


async def test_torn_record_holding_a_framed_record_is_still_a_torn_tail(tmp_path):
    """A client can put anything in a message body, also bytes framed like a journal record.
    Cut short by a crash, with its own header damaged too, the record is still a torn tail:
    the salt (unknown to the client) keeps the framed bytes from passing for a record."""
    forged = seg.encode_records([b"forged op"] * 20, 0)
    await write_crashed_journal(tmp_path, [b"a", b"x" * 7 + forged + b"y" * 100])
    path = tmp_path / seg.segment_name(1)
    last = seg.HEADER_SIZE + seg.RECORD_HEADER_SIZE + 1
    flip(path, last)                                  # the big record's header
    os.truncate(path, os.path.getsize(path) - 50)     # and it was cut short
    async with await Journal.open(tmp_path) as journal:
        assert journal.recovered == [b"a"]
        assert "truncated" in journal.recovery_log[0]


async def test_large_torn_record_is_recovered_at_once(tmp_path):
    """A 16 MiB record cut short: its header checks and runs past the end, so nothing after
    it is searched (searching it costs ~190 GB of CRC with length-only candidates)."""
    big = os.urandom(16 * 1024 * 1024)
    await write_crashed_journal(tmp_path, [b"a", big])
    path = tmp_path / seg.segment_name(1)
    os.truncate(path, os.path.getsize(path) - 1000)
    start = time.monotonic()
    async with await Journal.open(tmp_path) as journal:
        assert journal.recovered == [b"a"]
    assert time.monotonic() - start < 2.0


RANDOM_RECORDS = [numbered(i, 10 + (i * 37) % 120) for i in range(60)]


@pytest.fixture(scope="module")
def template_journals(tmp_path_factory):
    """Journals of RANDOM_RECORDS over several segments, closed cleanly and crashed after
    the last append, and where each record starts."""
    closed = tmp_path_factory.mktemp("closed")
    asyncio.run(write_journal(closed, RANDOM_RECORDS, segment_size=1024))
    crashed = tmp_path_factory.mktemp("crashed")
    asyncio.run(write_crashed_journal(crashed, RANDOM_RECORDS, segment_size=1024))
    starts: list[tuple[str, int]] = []        # (segment name, offset) per record
    for name in seg_files(crashed):
        data = (crashed / name).read_bytes()
        pos = seg.HEADER_SIZE
        while pos < len(data):
            starts.append((name, pos))
            (length, _crc, _header_crc) = seg.RECORD_HEADER.unpack_from(data, pos)
            pos += seg.RECORD_HEADER_SIZE + length
    assert len(starts) == len(RANDOM_RECORDS)
    return {"closed": closed, "crashed": crashed}, starts


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_any_damage_is_a_torn_tail_or_refused_unchanged(template_journals, data):
    templates, starts = template_journals
    kind = data.draw(st.sampled_from(["closed", "crashed"]), label="template")
    template = templates[kind]
    names = seg_files(template)
    name = data.draw(st.sampled_from(names), label="segment")
    size = os.path.getsize(template / name)
    boundaries = [o for n, o in starts if n == name]
    offset = data.draw(st.one_of(st.integers(0, size - 1), st.sampled_from(boundaries)), label="offset")
    truncate = data.draw(st.booleans(), label="truncate")
    # every record that ends before the damaged byte (in journal order)
    where = (names.index(name), offset)
    safe = 0
    for (n, o), record in zip(starts, RANDOM_RECORDS):
        if (names.index(n), o + seg.RECORD_HEADER_SIZE + len(record)) > where:
            break
        safe += 1
    last = name == names[-1]
    marker_at = size - MARKER_SIZE if kind == "closed" else size
    last_record = boundaries[-1]
    if truncate:
        torn = last                      # a crash cuts the last segment anywhere
        clean = last and (offset in boundaries or offset == marker_at)
    else:                                # a flipped bit is a torn tail only where nothing intact follows
        torn = last and offset >= (marker_at if kind == "closed" else last_record)
        clean = False
    with tempfile.TemporaryDirectory() as scratch:
        tmp = os.path.join(scratch, "journal")
        shutil.copytree(template, tmp)          # the segments and the LOCK file
        path = os.path.join(tmp, name)
        if truncate:
            os.truncate(path, offset)
        else:
            with open(path, "r+b") as f:
                f.seek(offset)
                byte = f.read(1)[0]
                f.seek(offset)
                f.write(bytes([byte ^ (1 << data.draw(st.integers(0, 7), label="bit"))]))
        before = all_bytes(tmp)

        async def reopen() -> tuple[list[bytes], list[str]]:
            async with await Journal.open(tmp, segment_size=1024) as journal:
                return journal.recovered, journal.recovery_log

        if not torn:
            with pytest.raises(JournalCorrupt) as caught:
                asyncio.run(reopen())
            assert all_bytes(tmp) == before
            assert caught.value.path == path or not os.path.exists(caught.value.path)
            return
        recovered, log = asyncio.run(reopen())
        assert recovered == RANDOM_RECORDS[: safe if offset < marker_at else len(RANDOM_RECORDS)]
        assert (log == []) if clean else log, log
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

@pytest.mark.parametrize("prezeroed", [False, True])
def test_fdatasync_baseline_measures_and_cleans_up(tmp_path, prezeroed):
    from tether.bench.fsync_baseline import fdatasync_baseline
    rate = fdatasync_baseline(tmp_path, 64, 10.5, 0.05, prezeroed)
    assert rate > 0
    assert os.listdir(tmp_path) == []


def test_prezeroed_baseline_overwrites_in_place_and_wraps(tmp_path, monkeypatch):
    """The prezeroed loop never grows its file: it overwrites the zero-filled region and
    starts again at its beginning, so no fdatasync has a file size to commit."""
    from tether.bench import fsync_baseline as baseline

    monkeypatch.setattr(baseline, "PREZEROED_BYTES", 4096)
    sizes, real_fdatasync = [], os.fdatasync

    def fdatasync(fd):
        sizes.append(os.fstat(fd).st_size)
        real_fdatasync(fd)

    monkeypatch.setattr(baseline.os, "fdatasync", fdatasync)
    baseline.fdatasync_baseline(tmp_path, 64, 10, 0.05, prezeroed=True)
    assert len(sizes) > 6          # 720 bytes a write: the 4096-byte region wrapped
    assert set(sizes) == {4096}


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
    ((".", 64, 1, 0.1, "yes"), "prezeroed"),
])
def test_fdatasync_baseline_rejects_bad_arguments(tmp_path, monkeypatch, args, name):
    from tether.bench.fsync_baseline import fdatasync_baseline
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=name):
        fdatasync_baseline(*args)
