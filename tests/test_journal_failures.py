"""The journal when the disk fails under it: a failed write or sync fails its batch with
StorageError, the journal restores its files to their last good state by itself, and later
appends work without reopening. A real full disk (a small tmpfs mounted here; needs root) and
injected errors for each path: write, fdatasync, the restore itself, segment rollover,
rewrite, the interval policy's background sync, close."""
from __future__ import annotations

import asyncio
import errno
import os
import time

import pytest

from tether.errors import StorageError
from tether.queue.store import segment as seg
from tether.queue.store.journal import Journal

from full_disk import fill_disk

pytestmark = pytest.mark.fault


def numbered(i: int, size: int = 40) -> bytes:
    head = b"rec-%06d:" % i
    return head + bytes((i + k) % 251 for k in range(max(0, size - len(head))))


def seg_files(path) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.endswith(".seg"))


async def reopened(path, **kwargs) -> tuple[list[bytes], list[str]]:
    async with await Journal.open(path, **kwargs) as journal:
        return journal.recovered, journal.recovery_log


def eio(*_args, **_kwargs):
    raise OSError(errno.EIO, "simulated I/O error")


class FailNext:
    """Wraps an os function: the next `times` calls whose first argument passes `which`
    raise OSError(code); every other call goes through."""

    def __init__(self, real, times: int = 1, code: int = errno.EIO, which=lambda *a: True) -> None:
        self.real, self.times, self.code, self.which = real, times, code, which
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.times > 0 and self.which(*args):
            self.times -= 1
            raise OSError(self.code, os.strerror(self.code))
        return self.real(*args, **kwargs)


def is_segment_fd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").endswith(seg.SEGMENT_SUFFIX)
    except OSError:
        return False


@pytest.fixture(autouse=True)
def twin(request, monkeypatch):
    """Journal batches through the twin a test asks for (`twin` param), else through the
    pure-Python twin: the injected errors below fail os.write and os.fdatasync, which only
    it calls (test_journal_io.py fails the native twin's calls with its failpoints)."""
    from tether._reference import journal_io as reference
    from tether.queue.store import segment_files

    name = getattr(request, "param", "reference")
    if name == "reference":
        monkeypatch.setattr(segment_files, "journal_io", reference)
    return name


# ---- a real full disk ----

@pytest.mark.parametrize("twin", ["native", "reference"], indirect=True)
async def test_full_disk_fails_appends_then_appends_work_again_once_space_is_freed(small_tmpfs, twin):
    directory = small_tmpfs / "journal"
    journal = await Journal.open(directory, segment_size=8192)
    acknowledged = [numbered(i, 1000) for i in range(100)]
    for record in acknowledged:
        await journal.append(record)
    fill_disk(small_tmpfs / "filler")
    failures: list[StorageError] = []
    for i in range(100, 160):          # writes into fresh pages and new segments: both fail
        try:
            await journal.append(numbered(i, 1000))
        except StorageError as exc:
            failures.append(exc)
        else:
            acknowledged.append(numbered(i, 1000))
    assert len(failures) > 40
    assert all(isinstance(e.__cause__, OSError) and e.__cause__.errno == errno.ENOSPC for e in failures)
    assert str(directory) in str(failures[0]) and "No space left on device" in str(failures[0])
    # a compaction fails too, and leaves the journal as it was
    with pytest.raises(StorageError, match="No space left"):
        await journal.rewrite(lambda: list(acknowledged))
    os.unlink(small_tmpfs / "filler")
    for i in range(200, 230):          # the same journal, not reopened
        await journal.append(numbered(i, 1000))
        acknowledged.append(numbered(i, 1000))
    await journal.close()       # which cuts the zero-filled space ahead of the records
    marker = seg.RECORD_HEADER_SIZE
    assert journal.size_bytes + marker == sum(os.path.getsize(directory / n) for n in seg_files(directory))
    recovered, log = await reopened(directory)
    assert recovered == acknowledged
    assert log == []


# ---- injected errors ----

async def test_failed_write_midway_fails_its_batch_and_cuts_what_it_wrote(tmp_path, monkeypatch):
    journal = await Journal.open(tmp_path)
    await journal.append_many([b"a", b"b"])
    size = journal.size_bytes       # of the records (zero-filled space may follow them)
    real_write = os.write
    calls = []

    def half_then_eio(fd, data):
        calls.append(fd)
        if len(calls) == 1:
            return real_write(fd, bytes(data)[: len(data) // 2])    # a short write...
        raise OSError(errno.EIO, "simulated I/O error")            # ...then the disk fails

    monkeypatch.setattr(os, "write", half_then_eio)
    with pytest.raises(StorageError, match="simulated I/O error") as caught:
        await journal.append(b"c" * 100)
    assert caught.value.__cause__.errno == errno.EIO
    monkeypatch.undo()
    assert os.path.getsize(tmp_path / seg.segment_name(1)) == size     # the half batch is gone
    await journal.append(b"d")
    await journal.close()
    assert await reopened(tmp_path) == ([b"a", b"b", b"d"], [])


async def test_several_failed_fdatasyncs_fail_only_their_batches(tmp_path, monkeypatch):
    journal = await Journal.open(tmp_path)
    await journal.append(b"first")
    monkeypatch.setattr(os, "fdatasync", FailNext(os.fdatasync, times=3))
    outcomes = []
    for i in range(6):
        try:
            await journal.append(numbered(i))
            outcomes.append(True)
        except StorageError:
            outcomes.append(False)
    assert outcomes == [False, False, False, True, True, True]
    await journal.close()
    assert await reopened(tmp_path) == ([b"first"] + [numbered(i) for i in range(3, 6)], [])


async def test_failed_restore_fails_appends_fast_then_retries_and_goes_on(tmp_path, monkeypatch):
    journal = await Journal.open(tmp_path, retry_interval=0.3)
    await journal.append(b"good")
    truncate = FailNext(os.ftruncate, times=1)
    monkeypatch.setattr(os, "ftruncate", truncate)
    real_write = os.write
    writes = []

    def torn_write(fd, data):
        writes.append(fd)
        if len(writes) == 1:
            real_write(fd, bytes(data)[:5])       # leaves a torn record behind
            raise OSError(errno.EIO, "simulated I/O error")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", torn_write)
    with pytest.raises(StorageError, match="restoring its last good state failed too"):
        await journal.append(b"lost")
    # failed: each append fails at once, without touching the disk, until a retry is due
    start = time.monotonic()
    for _ in range(5):
        with pytest.raises(StorageError, match="cannot write"):
            await journal.append(b"refused")
    assert len(writes) == 1 and truncate.calls == 1
    assert time.monotonic() - start < 0.3
    await asyncio.sleep(0.35)
    await journal.append(b"after")               # the retry restores, then this is written
    assert truncate.calls == 2
    await journal.close()
    # nothing was written on top of the torn bytes: they were cut off first
    assert await reopened(tmp_path) == ([b"good", b"after"], [])


async def test_batch_queued_behind_a_failed_one_is_written_after_the_restore(tmp_path, monkeypatch):
    journal = await Journal.open(tmp_path, max_in_flight=2)
    await journal.append(b"good")
    real_write = os.write
    writes = []
    gate = asyncio.Event()

    def first_torn(fd, data):
        writes.append(bytes(data))
        if len(writes) == 1:
            real_write(fd, bytes(data)[:7])
            raise OSError(errno.EIO, "simulated I/O error")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", first_torn)
    results: list[object] = []

    def done(arg, error):
        results.append((arg, error))
        if len(results) == 2:
            gate.set()

    journal.append_then(b"first batch", done, 1)     # goes to the writer at once
    journal.append_then(b"second batch", done, 2)    # queued behind it
    await asyncio.wait_for(gate.wait(), 5)
    assert results[0][0] == 1 and isinstance(results[0][1], StorageError)
    assert results[1] == (2, None)
    await journal.close()
    assert await reopened(tmp_path) == ([b"good", b"second batch"], [])


async def test_failed_rollover_fails_the_batch_and_the_next_one_starts_the_segment(tmp_path, monkeypatch):
    journal = await Journal.open(tmp_path, segment_size=256)
    records = [numbered(i, 100) for i in range(2)]
    await journal.append_many(records)
    real_open = os.open

    def no_new_segment(path, flags, *args):
        if str(path).endswith(seg.segment_name(2)) and flags & os.O_CREAT:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_new_segment)
    with pytest.raises(StorageError, match="start a segment"):
        await journal.append(numbered(2, 100))
    monkeypatch.undo()
    await journal.append(numbered(3, 100))
    assert seg_files(tmp_path) == [seg.segment_name(1), seg.segment_name(2)]
    await journal.close()
    assert await reopened(tmp_path, segment_size=256) == (records + [numbered(3, 100)], [])


async def test_half_made_segment_of_a_failed_rollover_is_removed(tmp_path, monkeypatch):
    journal = await Journal.open(tmp_path, segment_size=256)
    await journal.append_many([numbered(i, 100) for i in range(2)])
    # the new segment's header is written, its fdatasync fails: the file is ours, half made
    calls = FailNext(os.fdatasync, times=1, which=lambda fd: os.fstat(fd).st_size == seg.HEADER_SIZE)
    monkeypatch.setattr(os, "fdatasync", calls)
    with pytest.raises(StorageError):
        await journal.append(numbered(2, 100))
    assert seg_files(tmp_path) == [seg.segment_name(1)]
    monkeypatch.undo()
    await journal.append(numbered(3, 100))       # no "file exists": segment 2 is made afresh
    await journal.close()
    recovered, log = await reopened(tmp_path, segment_size=256)
    assert recovered[-1] == numbered(3, 100) and log == []


async def test_rewrite_whose_cleanup_fails_finishes_it_before_the_next_append(tmp_path, monkeypatch):
    journal = await Journal.open(tmp_path, segment_size=256, retry_interval=0.05)
    await journal.append_many([numbered(i, 100) for i in range(6)])
    old = seg_files(tmp_path)
    monkeypatch.setattr(os, "unlink", eio)
    with pytest.raises(StorageError, match="finish rewriting"):
        await journal.rewrite(lambda: [b"snapshot"])
    with pytest.raises(StorageError):
        await journal.append(b"refused")       # the old segments are not gone yet
    monkeypatch.undo()
    await asyncio.sleep(0.06)
    await journal.append(b"after")
    assert not set(old) & set(seg_files(tmp_path))
    await journal.close()
    assert await reopened(tmp_path, segment_size=256) == ([b"snapshot", b"after"], [])


async def test_rewrite_survives_one_failed_cleanup_step(tmp_path, monkeypatch):
    journal = await Journal.open(tmp_path, segment_size=256)
    await journal.append_many([numbered(i, 100) for i in range(6)])
    old = seg_files(tmp_path)
    monkeypatch.setattr(os, "unlink", FailNext(os.unlink, times=1))
    await journal.rewrite(lambda: [b"snapshot"])      # the restore deletes what is left
    assert not set(old) & set(seg_files(tmp_path))
    await journal.append(b"after")
    await journal.close()
    assert await reopened(tmp_path, segment_size=256) == ([b"snapshot", b"after"], [])


# ---- the interval policy ----

async def test_interval_failed_background_sync_loses_no_acknowledged_record(tmp_path, monkeypatch):
    journal = await Journal.open(tmp_path, fsync="interval", fsync_interval=0.3)
    truncates = FailNext(os.ftruncate, times=0)
    monkeypatch.setattr(os, "ftruncate", truncates)
    syncs = FailNext(os.fdatasync, times=1)
    monkeypatch.setattr(os, "fdatasync", syncs)
    acknowledged = [numbered(i) for i in range(10)]
    for record in acknowledged:
        await journal.append(record)               # returns once written, well within the interval
    assert syncs.calls == 0
    await asyncio.sleep(0.5)                       # the background sync fails, then the restore runs
    assert syncs.calls == 1 and truncates.calls == 1    # cut back to the last sync, written again
    assert not journal._files.dirty and journal._files.broken is None
    await journal.close()
    assert await reopened(tmp_path) == (acknowledged, [])


async def test_interval_failed_restore_is_retried_by_the_timer(tmp_path, monkeypatch):
    journal = await Journal.open(tmp_path, fsync="interval", fsync_interval=0.3, retry_interval=0.1)
    monkeypatch.setattr(os, "fdatasync", FailNext(os.fdatasync, times=1))
    truncates = FailNext(os.ftruncate, times=2)
    monkeypatch.setattr(os, "ftruncate", truncates)
    jobs = []
    real_sync_if_due = journal._files.sync_if_due
    monkeypatch.setattr(journal._files, "sync_if_due", lambda: (jobs.append(1), real_sync_if_due()))
    acknowledged = [numbered(i) for i in range(5)]
    start = time.monotonic()
    for record in acknowledged:
        await journal.append(record)
    deadline = time.monotonic() + 3
    while (journal._files.broken is not None or truncates.calls < 3) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    elapsed = time.monotonic() - start
    # the sync failed, two restores failed, the third worked: with no append to trigger it
    assert truncates.calls == 3 and journal._files.broken is None
    # a timer job per retry (every 0.1 s; twice that for slack, plus one per append), not a
    # busy loop until a retry is due (thousands); a loaded machine stretches `elapsed`
    assert len(jobs) <= len(acknowledged) + 2 * elapsed / 0.1, (len(jobs), elapsed)
    await journal.close()
    assert await reopened(tmp_path) == (acknowledged, [])


async def test_interval_close_reports_acknowledged_batches_it_could_not_sync(tmp_path, monkeypatch):
    journal = await Journal.open(tmp_path, fsync="interval", fsync_interval=10)
    await journal.append(b"first")          # written, acknowledged, never synced
    monkeypatch.setattr(os, "fdatasync", eio)
    monkeypatch.setattr(os, "ftruncate", eio)
    with pytest.raises(StorageError, match="could not sync"):
        await journal.close()
