"""check() and repair() of tether.queue.store.repair: check lists every problem and changes
nothing; repair keeps every intact record in order (also after damage), moves each damaged
byte range to quarantine/, and leaves a journal that Journal.open opens cleanly."""
from __future__ import annotations

import asyncio
import errno
import os
import shutil
import stat
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.errors import JournalCorrupt, QueueError
from tether.queue.store import segment as seg
from tether.queue.store.journal import Journal
from tether.queue.store.repair import QUARANTINE_DIR, check, repair

FRAME = seg.RECORD_HEADER_SIZE


def numbered(i: int, size: int = 60) -> bytes:
    head = b"rec-%06d:" % i
    return head + bytes((i + k) % 251 for k in range(max(0, size - len(head))))


RECORDS = [numbered(i) for i in range(60)]
PER_SEGMENT = (1024 - seg.HEADER_SIZE) // (FRAME + 60)       # 13 records of 72 bytes


def seg_files(path) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.endswith(".seg"))


def all_bytes(path) -> dict[str, bytes]:
    return {os.path.join(root, name): open(os.path.join(root, name), "rb").read()
            for root, _dirs, names in os.walk(path) for name in names}


def record_offset(i: int) -> tuple[int, int]:
    """(segment index, offset) of record i in a journal of RECORDS with 1024-byte segments."""
    return i // PER_SEGMENT, seg.HEADER_SIZE + (i % PER_SEGMENT) * (FRAME + 60)


async def write_journal(path, records=RECORDS, segment_size=1024) -> None:
    # appending, not preallocated: the offsets these tests compute are those of that layout
    # (test_journal_prealloc.py has the preallocated one's)
    async with await Journal.open(path, segment_size=segment_size, preallocate=False) as journal:
        for r in records:
            await journal.append(r)


async def reopen(path) -> tuple[list[bytes], list[str]]:
    async with await Journal.open(path) as journal:
        return journal.recovered, journal.recovery_log


def damage(path, offset: int, data: bytes) -> None:
    content = bytearray(path.read_bytes())
    content[offset: offset + len(data)] = data
    path.write_bytes(bytes(content))


@pytest.fixture
async def damaged(tmp_path):
    """A journal with a damaged record in segment 1, a damaged header in segment 3, and a
    missing segment 4: (directory, segment names, the records repair must keep)."""
    await write_journal(tmp_path)
    names = seg_files(tmp_path)
    assert len(names) == 5
    _, at = record_offset(5)
    damage(tmp_path / names[0], at + 20, b"XYZ")                        # record 5
    damage(tmp_path / names[2], 0, b"NOPE")                             # segment 3's header
    os.unlink(tmp_path / names[3])                                      # segment 4
    keep = [r for i, r in enumerate(RECORDS) if i != 5 and i // PER_SEGMENT != 3]
    return tmp_path, names, keep


async def test_check_lists_every_problem_and_changes_nothing(damaged):
    directory, names, keep = damaged
    before = all_bytes(directory)
    report = check(directory)
    assert all_bytes(directory) == before
    assert report.records == len(keep) and not report.clean
    summary = [(os.path.basename(p.path), p.offset, p.length, p.torn_tail) for p in report.problems]
    assert summary == [(names[0], record_offset(5)[1], FRAME + 60, False),
                       (names[2], 0, seg.HEADER_SIZE, False),
                       (names[3], 0, 0, False)]
    whats = [p.what for p in report.problems]
    assert "CRC" in whats[0] and "bad magic" in whats[1] and "missing" in whats[2]
    assert report.corruption == report.problems


async def test_repair_keeps_every_intact_record_in_order_and_quarantines_the_damage(damaged):
    directory, names, keep = damaged
    original = all_bytes(directory)
    report = repair(directory)
    assert report.records == len(keep) and len(report.quarantined) == 2
    quarantine = directory / QUARANTINE_DIR
    assert stat.S_IMODE(os.stat(quarantine).st_mode) == 0o700
    _, at = record_offset(5)
    expected = {f"{names[0]}.{at}.bad": original[str(directory / names[0])][at: at + FRAME + 60],
                f"{names[2]}.0.bad": original[str(directory / names[2])][: seg.HEADER_SIZE]}
    assert {n: (quarantine / n).read_bytes() for n in os.listdir(quarantine)} == expected
    assert all(stat.S_IMODE(os.stat(quarantine / n).st_mode) == 0o600 for n in expected)
    new = seg_files(directory)
    assert new[0] == report.new_start and seg.parse_segment_name(new[0]) > seg.parse_segment_name(names[-1])
    assert check(directory).clean
    assert await reopen(directory) == (keep, [])


async def test_repair_of_a_clean_journal_changes_nothing(tmp_path):
    await write_journal(tmp_path)
    before = all_bytes(tmp_path)
    report = repair(tmp_path)
    assert report.clean and report.records == len(RECORDS) and report.new_start is None
    assert all_bytes(tmp_path) == before


async def test_torn_tail_is_reported_as_such_and_repaired(tmp_path):
    await write_journal(tmp_path)
    last = tmp_path / seg_files(tmp_path)[-1]
    os.truncate(last, os.path.getsize(last) - FRAME - 5)      # no close marker, record cut short
    report = check(tmp_path)
    assert [p.torn_tail for p in report.problems] == [True] and report.corruption == []
    repaired = repair(tmp_path)
    assert repaired.records == len(RECORDS) - 1 and len(repaired.quarantined) == 1
    assert await reopen(tmp_path) == (RECORDS[:-1], [])


async def test_prev_size_mismatch_is_reported_and_every_record_kept(tmp_path):
    await write_journal(tmp_path)
    names = seg_files(tmp_path)
    _, at = record_offset(PER_SEGMENT - 1)
    os.truncate(tmp_path / names[0], at)          # segment 1 loses its last record cleanly
    report = repair(tmp_path)
    [problem] = report.problems
    assert not problem.damaged and problem.length == FRAME + 60 and report.quarantined == []
    assert await reopen(tmp_path) == ([r for i, r in enumerate(RECORDS) if i != PER_SEGMENT - 1], [])


async def test_repair_removes_rewrite_leftovers(tmp_path):
    await write_journal(tmp_path)
    names = seg_files(tmp_path)
    damage(tmp_path / names[1], seg.HEADER_SIZE + 30, b"!")
    leftover = tmp_path / (seg.segment_name(99) + seg.TMP_SUFFIX)
    leftover.write_bytes(b"half a rewrite")
    assert check(tmp_path).leftovers == [leftover.name]
    report = repair(tmp_path)
    assert report.new_start == seg.segment_name(100)          # above the leftover's number too
    assert not leftover.exists()
    recovered, log = await reopen(tmp_path)
    assert len(recovered) == len(RECORDS) - 1 and log == []


async def test_check_and_repair_refuse_while_a_journal_holds_the_directory(damaged):
    directory, _names, _keep = damaged
    (directory / seg_files(directory)[0]).rename(directory / "aside")
    async with await Journal.open(directory / "live") as journal:
        await journal.append(b"x")
        for tool in (check, repair):
            with pytest.raises(QueueError, match="in use"):
                tool(directory / "live")


@pytest.mark.parametrize("tool", [check, repair])
def test_bad_directory_is_refused_by_name(tmp_path, tool):
    with pytest.raises(ValueError, match="does not exist"):
        tool(tmp_path / "missing")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ValueError, match="not a directory"):
        tool(tmp_path / "file")
    with pytest.raises(ValueError, match="directory"):
        tool(None)


async def test_other_format_version_is_refused(tmp_path):
    import struct
    import zlib
    await write_journal(tmp_path, [b"a"])
    path = tmp_path / seg.segment_name(1)
    body = struct.pack("<4sHHQQQI", seg.MAGIC, seg.VERSION + 1, 0, 1, 1, 0, 5)
    damage(path, 0, body + struct.pack("<I", zlib.crc32(body)))
    before = all_bytes(tmp_path)
    for tool in (check, repair):
        with pytest.raises(JournalCorrupt, match="format version"):
            tool(tmp_path)
    assert all_bytes(tmp_path) == before


async def test_quarantine_that_is_a_symlink_gets_nothing(damaged, tmp_path_factory):
    directory, _names, _keep = damaged
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    os.symlink(elsewhere, directory / QUARANTINE_DIR)
    before = all_bytes(directory)
    with pytest.raises(OSError, match="not a directory"):
        repair(directory)
    assert os.listdir(elsewhere) == [] and all_bytes(directory) == before


async def test_repair_that_fails_before_its_commit_leaves_the_old_journal(damaged, monkeypatch):
    directory, names, keep = damaged
    real_rename = os.rename

    def no_start(src, dst):
        if str(src).endswith(seg.TMP_SUFFIX) and seg.parse_segment_name(os.path.basename(dst)) == 6:
            raise OSError(errno.EIO, "simulated I/O error")
        return real_rename(src, dst)

    old = {p: b for p, b in all_bytes(directory).items() if QUARANTINE_DIR not in p}
    monkeypatch.setattr(os, "rename", no_start)
    with pytest.raises(OSError, match="simulated"):
        repair(directory)
    monkeypatch.undo()
    assert {p: b for p, b in all_bytes(directory).items() if QUARANTINE_DIR not in p} == old
    repair(directory)                                     # a second repair finishes the job
    assert await reopen(directory) == (keep, [])


async def test_repair_cut_short_after_its_commit_is_finished_by_open(damaged, monkeypatch):
    directory, names, keep = damaged

    def eio(path):
        raise OSError(errno.EIO, "simulated I/O error")

    monkeypatch.setattr(os, "unlink", eio)
    with pytest.raises(OSError, match="simulated"):
        repair(directory)
    monkeypatch.undo()
    recovered, log = await reopen(directory)              # the damaged old segments are obsolete
    assert recovered == keep and "replaced by a rewrite" in log[0]
    assert seg_files(directory) == [seg.segment_name(6)]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    path = tmp_path_factory.mktemp("template")
    asyncio.run(write_journal(path))
    return path


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_repair_after_random_damage_keeps_every_untouched_record(template, data):
    """Bytes changed anywhere (one or several places, headers included): check counts what
    repair keeps; repair keeps every record whose bytes were not touched, in order, plus at
    most the touched ones that still check; then the journal opens cleanly."""
    names = seg_files(template)
    hits = data.draw(st.lists(st.tuples(st.sampled_from(names), st.integers(0, 1023), st.integers(1, 255)),
                              min_size=1, max_size=4), label="hits")
    with tempfile.TemporaryDirectory() as scratch:
        directory = os.path.join(scratch, "journal")
        shutil.copytree(template, directory)
        touched = set()
        for name, offset, mask in hits:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                content = bytearray(f.read())
            offset %= len(content)
            content[offset] ^= mask
            with open(path, "wb") as f:
                f.write(bytes(content))
            for i in range(len(RECORDS)):
                index, at = record_offset(i)
                if names[index] == name and at <= offset < at + FRAME + 60:
                    touched.add(i)
        report = check(directory)
        repaired = repair(directory)
        assert repaired.records == report.records

        async def reopen_it() -> tuple[list[bytes], list[str]]:
            async with await Journal.open(directory) as journal:
                return journal.recovered, journal.recovery_log

        recovered, log = asyncio.run(reopen_it())
        assert log == [] and len(recovered) == report.records
        untouched = [r for i, r in enumerate(RECORDS) if i not in touched]
        assert [r for r in recovered if r in untouched] == untouched
        assert all(r in RECORDS for r in recovered)
        assert recovered == sorted(recovered, key=RECORDS.index)
