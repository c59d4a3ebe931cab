"""The journal's files are private and never reached through a symbolic link: its directory
is 0700, every file in it 0600, and a link planted in place of a journal file makes the
operation fail with an error naming the file, writing nothing through the link."""
from __future__ import annotations

import errno
import logging
import os
import stat

import pytest

from tether.errors import StorageError
from tether.queue.store import segment as seg
from tether.queue.store.journal import Journal


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def open_umask():
    """A umask that takes no permission away: the modes come from the journal alone."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


async def test_new_directory_is_0700_and_every_file_0600(tmp_path, open_umask, monkeypatch):
    directory = tmp_path / "new" / "journal"
    renamed: list[tuple[str, int]] = []
    real_rename = os.rename

    def record_tmp_mode(src, dst):
        renamed.append((str(src), mode(src)))
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", record_tmp_mode)
    async with await Journal.open(directory, segment_size=256) as journal:
        for _i in range(10):
            await journal.append(b"x" * 100)
        await journal.rewrite(lambda: [b"y" * 100] * 5)       # .tmp files, renamed into place
        await journal.append(b"z" * 100)
    assert mode(directory) == 0o700
    names = os.listdir(directory)
    assert "LOCK" in names and len(names) > 3
    assert {n: mode(directory / n) for n in names} == {n: 0o600 for n in names}
    assert renamed and all(src.endswith(seg.TMP_SUFFIX) and m == 0o600 for src, m in renamed)


async def test_existing_directory_open_to_others_is_made_0700(tmp_path, caplog):
    directory = tmp_path / "journal"
    directory.mkdir()
    os.chmod(directory, 0o755)
    caplog.set_level(logging.INFO, "tether.journal")
    async with await Journal.open(directory):
        pass
    assert mode(directory) == 0o700
    assert any(r.levelno == logging.INFO and "0755" in r.getMessage() and "0700" in r.getMessage()
               for r in caplog.records)


async def test_private_existing_directory_is_left_alone(tmp_path, caplog):
    directory = tmp_path / "journal"
    directory.mkdir(mode=0o700)
    caplog.set_level(logging.INFO, "tether.journal")
    async with await Journal.open(directory):
        pass
    assert mode(directory) == 0o700
    assert not any("changed to" in r.getMessage() for r in caplog.records)


async def test_symlink_in_place_of_a_segment_is_refused(tmp_path):
    directory = tmp_path / "journal"
    async with await Journal.open(directory) as journal:
        await journal.append(b"a")
    segment = directory / seg.segment_name(1)
    elsewhere = tmp_path / "elsewhere.seg"
    os.rename(segment, elsewhere)
    os.symlink(elsewhere, segment)
    before = elsewhere.read_bytes()
    with pytest.raises(OSError, match="symbolic link") as caught:
        await Journal.open(directory)
    assert caught.value.errno == errno.ELOOP and caught.value.filename == str(segment)
    assert elsewhere.read_bytes() == before and os.path.islink(segment)


@pytest.mark.parametrize("target_exists", [True, False])
async def test_symlink_in_place_of_the_lock_file_is_refused(tmp_path, target_exists):
    directory = tmp_path / "journal"
    directory.mkdir(mode=0o700)
    target = tmp_path / "victim"
    if target_exists:
        target.write_bytes(b"precious")
    os.symlink(target, directory / "LOCK")
    with pytest.raises(OSError, match="symbolic link") as caught:
        await Journal.open(directory)
    assert caught.value.filename == str(directory / "LOCK")
    if target_exists:
        assert target.read_bytes() == b"precious"
    else:
        assert not target.exists()           # not created through the link


async def test_symlink_planted_where_the_next_segment_goes_gets_nothing(tmp_path):
    directory = tmp_path / "journal"
    target = tmp_path / "victim"
    async with await Journal.open(directory, segment_size=256) as journal:
        await journal.append(b"x" * 150)
        os.symlink(target, directory / seg.segment_name(2))
        with pytest.raises(StorageError, match="start a segment"):
            await journal.append(b"y" * 150)
    assert not target.exists()


async def test_symlink_planted_as_a_rewrite_tmp_file_gets_nothing(tmp_path):
    directory = tmp_path / "journal"
    target = tmp_path / "victim"
    target.write_bytes(b"precious")
    async with await Journal.open(directory) as journal:
        await journal.append(b"a")
        os.symlink(target, str(directory / seg.segment_name(2)) + seg.TMP_SUFFIX)
        with pytest.raises(StorageError, match="symbolic link"):
            await journal.rewrite(lambda: [b"snapshot"])
        await journal.append(b"b")                     # the old journal is usable
    assert target.read_bytes() == b"precious"
    os.unlink(str(directory / seg.segment_name(2)) + seg.TMP_SUFFIX)
    async with await Journal.open(directory) as journal:
        assert journal.recovered == [b"a", b"b"]
