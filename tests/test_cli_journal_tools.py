"""`tether qm check` and `tether qm repair` as a user runs them: what they print, their exit
status (check: 0 clean, 1 damage, 2 usage; repair: 0 done, 1 failed), and that every failure
is one `tether: error:` line, never a traceback."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tether.queue.store import segment as seg
from tether.queue.store.journal import Journal


def tether_cli(*args: str) -> tuple[int, str, str]:
    done = subprocess.run([sys.executable, "-m", "tether", *args], capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout, done.stderr


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tether: error: "), err
    return lines[0]


async def write_journal(path, count: int = 30) -> None:
    # appending, not preallocated: the segment counts below are those of that layout
    async with await Journal.open(path, segment_size=1024, preallocate=False) as journal:
        for i in range(count):
            await journal.append(b"record %03d " % i + b"x" * 40)


async def test_check_of_a_clean_journal_exits_0(tmp_path):
    await write_journal(tmp_path)
    code, out, err = tether_cli("qm", "check", "--data-dir", str(tmp_path))
    assert (code, err) == (0, "")
    assert out.strip() == f"journal in {tmp_path}: clean: 30 intact record(s) in 2 segment(s)"


async def test_check_of_a_killed_preallocated_journal_exits_0(tmp_path):
    """What a killed queue manager leaves: the records, then the zeros written ahead of them
    (a copy taken while the journal is open, so nothing cut them)."""
    journal = await Journal.open(tmp_path / "live", segment_size=64 * 1024)
    try:
        for i in range(30):
            await journal.append(b"record %03d " % i + b"x" * 40)
        (tmp_path / "copy").mkdir()
        for name in os.listdir(tmp_path / "live"):
            if name.endswith(".seg"):
                (tmp_path / "copy" / name).write_bytes((tmp_path / "live" / name).read_bytes())
    finally:
        await journal.close()
    copy = tmp_path / "copy" / seg.segment_name(1)
    assert os.path.getsize(copy) > journal.size_bytes       # zeros ahead of the records
    code, out, err = tether_cli("qm", "check", "--data-dir", str(tmp_path / "copy"))
    assert (code, err) == (0, "")
    assert out.strip() == f"journal in {tmp_path / 'copy'}: clean: 30 intact record(s) in 1 segment(s)"


async def test_check_reports_each_problem_then_repair_fixes_it(tmp_path):
    await write_journal(tmp_path)
    names = sorted(n for n in os.listdir(tmp_path) if n.endswith(".seg"))
    first = tmp_path / names[0]
    data = bytearray(first.read_bytes())
    data[seg.HEADER_SIZE + 30] ^= 0xFF                    # the first record
    first.write_bytes(bytes(data))
    second = tmp_path / names[1]
    data = bytearray(second.read_bytes())
    data[8] ^= 0x01                                       # segment 2's header
    second.write_bytes(bytes(data))

    code, out, err = tether_cli("qm", "check", "--data-dir", str(tmp_path))
    assert (code, err) == (1, "")
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"{first} at offset {seg.HEADER_SIZE}: record fails its CRC check (")
    assert lines[1].startswith(f"{second} at offset 0: header fails its CRC check (40 bytes)")
    assert lines[2].startswith(f"journal in {tmp_path}: 29 intact record(s) in 2 segment(s); 2 problem(s)")
    assert "tether qm repair" in lines[2] and len(lines) == 3

    code, out, err = tether_cli("qm", "repair", "--data-dir", str(tmp_path))
    assert (code, err) == (0, "")
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"quarantined {first} at offset {seg.HEADER_SIZE}") and lines[0].endswith(".bad")
    assert lines[1].startswith(f"quarantined {second} at offset 0")
    assert lines[2].startswith(f"journal in {tmp_path} repaired: kept 29 intact record(s)")
    assert len(os.listdir(tmp_path / "quarantine")) == 2

    code, out, _err = tether_cli("qm", "check", "--data-dir", str(tmp_path))
    assert code == 0 and "clean: 29 intact record(s)" in out
    code, out, _err = tether_cli("qm", "repair", "--data-dir", str(tmp_path))
    assert code == 0 and "nothing to repair" in out


async def test_check_of_a_torn_tail_says_the_queue_manager_cuts_it_off(tmp_path):
    await write_journal(tmp_path)
    last = tmp_path / sorted(n for n in os.listdir(tmp_path) if n.endswith(".seg"))[-1]
    os.truncate(last, os.path.getsize(last) - seg.RECORD_HEADER_SIZE - 3)
    code, out, _err = tether_cli("qm", "check", "--data-dir", str(tmp_path))
    assert code == 1
    assert "[a torn tail: Journal.open cuts it off]" in out and "cuts off when it opens" in out


@pytest.mark.parametrize("command", ["check", "repair"])
def test_missing_directory_is_a_usage_error(tmp_path, command):
    code, out, err = tether_cli("qm", command, "--data-dir", str(tmp_path / "missing"))
    assert code == 2 and out == ""
    assert "does not exist" in one_error_line(err)


@pytest.mark.parametrize("command", ["check", "repair"])
def test_no_data_dir_is_a_usage_error(command):
    code, _out, err = tether_cli("qm", command)
    assert code == 2 and "--data-dir" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["check", "repair"])
async def test_directory_held_by_a_running_journal_is_refused(tmp_path, command):
    async with await Journal.open(tmp_path) as journal:
        await journal.append(b"x")
        code, out, err = tether_cli("qm", command, "--data-dir", str(tmp_path))
    assert code == 1 and out == ""
    assert "in use" in one_error_line(err)


async def test_unreadable_journal_file_is_one_error_line(tmp_path):
    await write_journal(tmp_path)
    os.symlink(tmp_path / seg.segment_name(1), tmp_path / seg.segment_name(9))
    code, out, err = tether_cli("qm", "check", "--data-dir", str(tmp_path))
    assert code == 1 and out == ""
    assert "symbolic link" in one_error_line(err)
