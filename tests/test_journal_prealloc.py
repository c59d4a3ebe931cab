"""Preallocated journal segments (format version 3): zero-filled space ahead of the records,
sync marks, and recovery from what a crash leaves of them -- a zero tail, a torn write with
sectors missing in the middle, more than one torn batch -- while damage in synced data is
still refused. Files are crafted byte by byte here; test_journal_crash.py kills real ones."""
from __future__ import annotations

import os
import random
import struct
import zlib

import pytest

from tether.errors import JournalCorrupt
from tether.queue.store import segment as seg
from tether.queue.store import segment_files
from tether.queue.store.journal import Journal
from tether.queue.store.repair import check, repair

SALT = 0x1234_5678
SECTOR = seg.SECTOR_SIZE


def numbered(i: int, size: int = 60) -> bytes:
    head = b"rec-%06d:" % i
    return head + bytes((i + k) % 251 for k in range(max(0, size - len(head))))


def batch(records: list[bytes], mark: bool = True) -> bytes:
    """A batch as the journal writes it under "always": a sync mark, then the records."""
    return (seg.sync_mark(SALT) if mark else b"") + seg.encode_records(records, SALT)


def image(batches: list[bytes], file_size: int, prev_size: int = 0, seq: int = 1, base: int = 1) -> bytes:
    """Segment `seq` (flagged preallocated) holding `batches`, zero-filled to `file_size`."""
    data = seg.encode_header(seq, base, prev_size, SALT, preallocated=True) + b"".join(batches)
    assert len(data) <= file_size
    return data + bytes(file_size - len(data))


def write(path, name: str, data: bytes) -> None:
    (path / name).write_bytes(data)


def unwrite_sectors(data: bytes, start: int, end: int, keep: set[int]) -> bytes:
    """`data` with each whole sector of [start, end) not in `keep` (sector numbers) zeroed,
    as a crash leaves a write it did not finish."""
    out = bytearray(data)
    for number in range(start // SECTOR, -(-end // SECTOR)):
        if number not in keep:
            lo, hi = max(number * SECTOR, start), min((number + 1) * SECTOR, end)
            out[lo:hi] = bytes(hi - lo)
    return bytes(out)


def all_bytes(path) -> dict[str, bytes]:
    return {name: (path / name).read_bytes() for name in sorted(os.listdir(path)) if name != "LOCK"}


async def recovered(path, **kwargs) -> tuple[list[bytes], list[str]]:
    async with await Journal.open(path, **kwargs) as journal:
        return journal.recovered, journal.recovery_log


async def refused(path) -> JournalCorrupt:
    before = all_bytes(path)
    with pytest.raises(JournalCorrupt) as caught:
        await Journal.open(path)
    assert all_bytes(path) == before
    return caught.value


FIRST = [numbered(i) for i in range(5)]               # synced
SECOND = [numbered(i) for i in range(5, 45)]          # ~2.9 KB: six sectors


# ---- the zero tail ----

async def test_a_zero_tail_is_no_damage_and_appends_go_into_it(tmp_path):
    write(tmp_path, seg.segment_name(1), image([batch(FIRST), batch(SECOND)], 65536))
    records, log = await recovered(tmp_path)
    assert records == FIRST + SECOND and log == []
    async with await Journal.open(tmp_path) as journal:
        await journal.append(b"after")
    assert await recovered(tmp_path) == (FIRST + SECOND + [b"after"], [])


async def test_check_finds_nothing_wrong_with_a_zero_tail(tmp_path):
    write(tmp_path, seg.segment_name(1), image([batch(FIRST)], 8192))
    report = check(tmp_path)
    assert report.clean and report.records == len(FIRST)
    assert repair(tmp_path).new_start is None           # nothing to repair: nothing written
    assert os.path.getsize(tmp_path / seg.segment_name(1)) == 8192


async def test_zeros_after_the_clean_close_marker_are_damage(tmp_path):
    data = seg.encode_header(1, 1, 0, SALT, preallocated=True) + batch(FIRST) + seg.close_marker(SALT)
    write(tmp_path, seg.segment_name(1), data + bytes(4096))
    error = await refused(tmp_path)
    assert "after the clean-close marker" in str(error)


# ---- torn writes ----

@pytest.mark.parametrize("keep", [{1}, {2, 4}, {5}, {0, 2, 3, 5}, set()])
async def test_a_torn_write_with_sectors_missing_anywhere_is_cut(tmp_path, keep):
    synced = image([batch(FIRST)], 0x4000)
    start = len(synced.rstrip(b"\0"))
    full = image([batch(FIRST), batch(SECOND)], 0x4000)
    end = len(full.rstrip(b"\0"))
    # the sectors of the unsynced batch the crash wrote: `keep`, counted from its first
    first_sector = start // SECTOR
    data = unwrite_sectors(full, start, end, {first_sector + k for k in keep})
    write(tmp_path, seg.segment_name(1), data)
    records, log = await recovered(tmp_path)
    # every synced record, and at most a prefix of the torn batch
    assert records[:len(FIRST)] == FIRST and records[len(FIRST):] == SECOND[:len(records) - len(FIRST)]
    assert len(records) < len(FIRST + SECOND)
    # a repair line, unless the sectors written end on a record boundary (then only zeros follow)
    assert len(log) <= 1 and all("truncated to" in line for line in log)
    assert len(log) == 1 or not data[seg.HEADER_SIZE + sum(12 + len(r) for r in records) + 12 * 2:].strip(b"\0")
    async with await Journal.open(tmp_path) as journal:
        await journal.append(b"after")
    assert await recovered(tmp_path) == (records + [b"after"], [])
    assert check(tmp_path).clean


async def test_leftovers_of_a_torn_write_are_never_read_back_as_records(tmp_path):
    full = image([batch(FIRST), batch(SECOND)], 0x4000)
    start = len(image([batch(FIRST)], 0x4000).rstrip(b"\0"))
    end = len(full.rstrip(b"\0"))
    # the first sector of the torn batch is missing, the later ones made it
    data = unwrite_sectors(full, start, end, set(range(start // SECTOR + 1, end // SECTOR + 1)))
    write(tmp_path, seg.segment_name(1), data)
    async with await Journal.open(tmp_path) as journal:
        assert journal.recovered == FIRST
        await journal.append(b"x")          # a short record: it overwrites little of the region
    # the later records of the torn batch are still nowhere
    assert await recovered(tmp_path) == (FIRST + [b"x"], [])
    assert not check(tmp_path).problems


async def test_two_torn_batches_without_marks_are_cut_together(tmp_path):
    """Under "interval" (a preallocated segment reopened so) only a batch after a completed
    sync has a mark: two unsynced batches can both be torn."""
    third = [numbered(i) for i in range(45, 80)]
    full = image([batch(FIRST), batch(SECOND, mark=False), batch(third, mark=False)], 0x4000)
    start = len(image([batch(FIRST)], 0x4000).rstrip(b"\0"))
    end = len(full.rstrip(b"\0"))
    sectors = range(start // SECTOR, -(-end // SECTOR))
    keep = {s for k, s in enumerate(sectors) if k % 3 != 1}        # one in three missing
    write(tmp_path, seg.segment_name(1), unwrite_sectors(full, start, end, keep))
    records, log = await recovered(tmp_path)
    assert records[:len(FIRST)] == FIRST and records == (FIRST + SECOND + third)[:len(records)]
    assert len(records) < len(FIRST + SECOND) and len(log) == 1


# ---- damage stays damage ----

async def test_damage_before_an_intact_sync_mark_is_refused(tmp_path):
    """A sector lost (zeroed) inside the first batch, which a later mark proves synced."""
    big = [numbered(i, 200) for i in range(20)]
    data = image([batch(big), batch(FIRST)], 0x4000)
    zeroed = unwrite_sectors(data, SECTOR * 2, SECTOR * 3, set())
    write(tmp_path, seg.segment_name(1), zeroed)
    error = await refused(tmp_path)
    assert error.offset < SECTOR * 3



async def test_a_batch_on_the_disk_but_zeros_after_a_record_in_one_sector_is_torn(tmp_path):
    """Writeback between two write calls of one batch (journal_io ends each call after a
    record) may leave a sector holding whole records then zeros, and later sectors written:
    a torn write, cut where the zeros start."""
    synced = seg.encode_header(1, 1, 0, SALT, preallocated=True) + batch(FIRST)
    full = image([batch(FIRST), batch(SECOND)], 16384)
    end = len(synced) + len(batch(SECOND))
    at = len(synced) + seg.RECORD_HEADER_SIZE
    for k, record in enumerate(SECOND[:-1]):
        at += seg.RECORD_HEADER_SIZE + len(record)
        sector_end = -(-at // SECTOR) * SECTOR
        if at == sector_end or sector_end >= end:
            continue        # no zeros, or nothing written after them (then the data just ends)
        data = bytearray(full)
        data[at:sector_end] = bytes(sector_end - at)
        case = tmp_path / str(k)
        case.mkdir()
        write(case, seg.segment_name(1), bytes(data))
        records, log = await recovered(case)
        assert records == FIRST + SECOND[:k + 1] and len(log) == 1 and f"truncated to {at}" in log[0]

async def test_a_changed_byte_with_intact_records_after_it_is_refused_before_a_zero_tail(tmp_path):
    """The last batch has no mark after it, but a flipped bit is no torn write (no zero
    sector explains it): refused, as in version 2."""
    data = bytearray(image([batch(FIRST), batch(SECOND)], 0x4000))
    at = len(image([batch(FIRST)], 0x4000).rstrip(b"\0")) + 100
    data[at] ^= 0x10
    write(tmp_path, seg.segment_name(1), bytes(data))
    error = await refused(tmp_path)
    assert "CRC" in str(error)
    report = check(tmp_path)
    assert report.corruption and not any(p.torn_tail for p in report.problems)


async def test_damage_in_an_earlier_preallocated_segment_is_refused(tmp_path):
    first = bytearray(seg.encode_header(1, 1, 0, SALT, preallocated=True) + batch(FIRST))
    first[seg.HEADER_SIZE + 30] ^= 1
    write(tmp_path, seg.segment_name(1), bytes(first))
    write(tmp_path, seg.segment_name(2), image([batch(SECOND)], 8192, prev_size=len(first), seq=2))
    error = await refused(tmp_path)
    assert error.path.endswith(seg.segment_name(1))


async def test_a_zero_tail_in_an_earlier_segment_is_refused(tmp_path):
    """A finished segment is cut to its records before the next starts: one that still has
    zeros after them does not hold what the next one says."""
    records_only = seg.encode_header(1, 1, 0, SALT, preallocated=True) + batch(FIRST)
    write(tmp_path, seg.segment_name(1), records_only + bytes(1024))
    write(tmp_path, seg.segment_name(2), image([batch(SECOND)], 8192, prev_size=len(records_only), seq=2))
    error = await refused(tmp_path)
    assert error.path.endswith(seg.segment_name(1))
    whats = [p.what for p in check(tmp_path).corruption]
    assert len(whats) == 2 and "zero bytes after the last record" in whats[0] and "held" in whats[1]


async def test_records_zeroed_at_the_end_of_an_earlier_segment_are_refused(tmp_path):
    """Synced records of a finished segment zeroed from a record boundary to its end (its size
    still what the next segment says): lost records, not a zero tail."""
    first = seg.encode_header(1, 1, 0, SALT, preallocated=True) + batch(FIRST) + batch(SECOND)
    lost = sum(seg.RECORD_HEADER_SIZE + len(r) for r in SECOND[-10:])
    write(tmp_path, seg.segment_name(1), first[:-lost] + bytes(lost))
    write(tmp_path, seg.segment_name(2), image([batch([numbered(99)])], 8192, prev_size=len(first), seq=2))
    error = await refused(tmp_path)
    assert error.path.endswith(seg.segment_name(1)) and error.offset == len(first) - lost
    assert "zero bytes after the last record" in str(error)


def test_unknown_header_flags_are_refused(tmp_path):
    body = struct.pack("<4sHHQQQI", seg.MAGIC, seg.VERSION, 0x0002, 1, 1, 0, SALT)
    write(tmp_path, seg.segment_name(1), body + struct.pack("<I", zlib.crc32(body)))
    with pytest.raises(JournalCorrupt, match="flags"):
        check(tmp_path)


# ---- repair ----

async def test_repair_keeps_the_records_of_a_damaged_preallocated_journal(tmp_path):
    data = bytearray(image([batch(FIRST), batch(SECOND)], 0x4000))
    at = seg.HEADER_SIZE + seg.RECORD_HEADER_SIZE + 40       # inside FIRST[0]
    data[at] ^= 0x10
    write(tmp_path, seg.segment_name(1), bytes(data))
    report = repair(tmp_path)
    assert report.records == len(FIRST + SECOND) - 1 and len(report.quarantined) == 1
    # the quarantined range is the damaged record, not the zero tail
    assert report.quarantined[0][0].length < 200
    assert await recovered(tmp_path) == (FIRST[1:] + SECOND, [])


# ---- version 2 journals ----

async def test_a_version_2_journal_opens_and_goes_on(tmp_path):
    data = seg.encode_header(1, 1, 0, SALT, version=2) + seg.encode_records(FIRST, SALT)
    write(tmp_path, seg.segment_name(1), data)
    async with await Journal.open(tmp_path) as journal:
        assert journal.recovered == FIRST and journal.recovery_log == []
        await journal.append(b"v3 tether")
    assert await recovered(tmp_path) == (FIRST + [b"v3 tether"], [])
    # the version 2 segment went on in its own format (no marks, no zero tail)
    assert (tmp_path / seg.segment_name(1)).read_bytes().startswith(data + seg.encode_records([b"v3 tether"], SALT))


async def test_zeros_after_a_version_2_segment_are_still_a_torn_tail(tmp_path):
    data = seg.encode_header(1, 1, 0, SALT, version=2) + seg.encode_records(FIRST, SALT)
    write(tmp_path, seg.segment_name(1), data + bytes(700))
    records, log = await recovered(tmp_path)
    assert records == FIRST and len(log) == 1 and f"truncated to {len(data)}" in log[0]


# ---- the live journal ----

async def test_the_journal_zero_fills_ahead_and_cuts_finished_segments_to_size(tmp_path):
    journal = await Journal.open(tmp_path, segment_size=64 * 1024)
    try:
        written: list[bytes] = []
        for i in range(1500):                          # ~140 KB: a few segments
            written.append(numbered(i, 80))
            await journal.append(written[-1])
        names = sorted(n for n in os.listdir(tmp_path) if n.endswith(".seg"))
        assert len(names) >= 3
        sizes = [os.path.getsize(tmp_path / n) for n in names]
        for k, name in enumerate(names[:-1]):
            data = (tmp_path / name).read_bytes()
            header = seg.decode_header(data[:seg.HEADER_SIZE], k + 1, len(data), name)
            assert header.preallocated
            assert not data.endswith(bytes(16))        # cut to its records
            nxt = (tmp_path / names[k + 1]).read_bytes()
            assert seg.decode_header(nxt[:seg.HEADER_SIZE], k + 2, len(nxt), "").prev_size == sizes[k]
        # the current segment has zeros ahead of its records
        last = journal.size_bytes - sum(sizes[:-1])     # its records
        assert sizes[-1] > last
    finally:
        await journal.close()
    assert os.path.getsize(tmp_path / names[-1]) == journal.size_bytes - sum(sizes[:-1]) + seg.RECORD_HEADER_SIZE
    assert await recovered(tmp_path, segment_size=64 * 1024) == (written, [])



async def test_the_zero_job_syncs_through_a_file_description_of_its_own(tmp_path, monkeypatch):
    """The zero job's fsync writes back the batches' pages too, and Linux reports a failed
    writeback once per open file description: through the batches' fd, an error the zero job
    only logs would leave the batch whose pages were lost to be acknowledged (its fdatasync
    sees nothing new). So the zero job must write and sync through another description."""
    zero_fds: list[tuple[int, int]] = []               # (fd, inode) of each zero write
    real_pwrite = os.pwrite

    def spy(fd, data, offset):
        zero_fds.append((fd, os.fstat(fd).st_ino))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(segment_files.os, "pwrite", spy)
    journal = await Journal.open(tmp_path, segment_size=1024 * 1024)
    try:
        for i in range(300):
            await journal.append(numbered(i, 200))
        files = journal._files
        assert files._zeroed > files.last_size and zero_fds      # a zero job ran
        batch_fd, batch_ino = files._fd, os.fstat(files._fd).st_ino
        assert all(ino == batch_ino for _fd, ino in zero_fds)     # the current segment ...
        assert all(fd != batch_fd for fd, _ino in zero_fds)       # ... not through the batches' fd
        # and the batches' position was never moved by it
        assert os.lseek(batch_fd, 0, os.SEEK_CUR) == files.last_size
    finally:
        await journal.close()

async def test_preallocate_false_and_other_policies_append_as_before(tmp_path):
    for policy, preallocate in [("always", False), ("interval", True), ("never", True)]:
        directory = tmp_path / f"{policy}-{preallocate}"
        async with await Journal.open(directory, fsync=policy, preallocate=preallocate) as journal:
            for i in range(200):
                await journal.append(numbered(i))
            name = seg.segment_name(1)
            data = (directory / name).read_bytes()
            assert len(data) == journal.size_bytes
            assert not seg.decode_header(data[:seg.HEADER_SIZE], 1, len(data), name).preallocated


@pytest.mark.parametrize("bad", ["yes", 1, None])
async def test_preallocate_must_be_a_bool(tmp_path, bad):
    with pytest.raises(ValueError, match="preallocate"):
        await Journal.open(tmp_path, preallocate=bad)


# ---- a crash image from a live journal, at every batch ----

@pytest.mark.parametrize("seed", range(6))
async def test_any_crash_of_the_unsynced_batch_keeps_every_synced_one(tmp_path, seed):
    """Write batches for real, then make the image a power loss could leave after batch k
    was synced: batch k + 1's sectors each written or not. Recovery keeps batches 1..k and at
    most a prefix of k + 1, and never refuses."""
    rng = random.Random(seed)
    live = tmp_path / "live"
    batches = [[numbered(1000 * b + i, rng.choice([20, 90, 300])) for i in range(rng.randint(1, 30))]
               for b in range(12)]
    ends = []
    async with await Journal.open(live) as journal:
        for records in batches:
            await journal.append_many(records)
            ends.append(journal.size_bytes)
        data = (live / seg.segment_name(1)).read_bytes()
        assert len(data) > ends[-1]                     # zeros ahead of the records
    for k in range(len(batches) - 1):
        start, end = ends[k], ends[k + 1]
        sectors = range(start // SECTOR, -(-end // SECTOR))
        written = data[:end] + bytes(len(data) - end)      # what was written when it crashed
        crash = unwrite_sectors(written, start, end, {s for s in sectors if rng.random() < 0.5})
        case = tmp_path / f"case{k}"
        case.mkdir()
        write(case, seg.segment_name(1), crash)
        records, _log = await recovered(case)
        synced = [r for b in batches[:k + 1] for r in b]
        assert records[:len(synced)] == synced
        assert records[len(synced):] == batches[k + 1][:len(records) - len(synced)]


def test_zero_chunk_settings_are_sane():
    assert segment_files.ZERO_MIN_CHUNK <= segment_files.ZERO_MAX_CHUNK
    assert segment_files.ZERO_MAX_CHUNK % segment_files.ZERO_PIECE == 0


@pytest.mark.parametrize("seed", range(3))
async def test_a_flipped_bit_is_refused_unless_nothing_intact_follows_it(tmp_path, seed):
    """A killed preallocated journal (records, then zeros) with one bit flipped anywhere:
    refused and unchanged while any intact record or mark follows the damaged one; else cut
    there as a torn tail, keeping every record before it."""
    rng = random.Random(seed)
    batches = [[numbered(100 * b + i, rng.choice([10, 70, 200])) for i in range(rng.randint(1, 8))]
               for b in range(6)]
    frames: list[tuple[int, int, bytes | None]] = []       # (start, end, record; None: a mark)
    pos = seg.HEADER_SIZE
    for records in batches:
        frames.append((pos, pos + seg.RECORD_HEADER_SIZE, None))
        pos += seg.RECORD_HEADER_SIZE
        for record in records:
            frames.append((pos, pos + seg.RECORD_HEADER_SIZE + len(record), record))
            pos = frames[-1][1]
    template = image([batch(records) for records in batches], pos + 3000)
    for case in range(25):
        offset = rng.randrange(seg.HEADER_SIZE, pos + 200)
        damaged = bytearray(template)
        damaged[offset] ^= 1 << rng.randrange(8)
        directory = tmp_path / f"case{case}"
        directory.mkdir()
        write(directory, seg.segment_name(1), bytes(damaged))
        hit = next((k for k, (start, end, _r) in enumerate(frames) if start <= offset < end), len(frames))
        before = [r for _s, _e, r in frames[:hit] if r is not None]
        if hit < len(frames) - 1:
            await refused(directory)
        else:
            records, log = await recovered(directory)
            assert records == before and len(log) == 1, (offset, hit)
