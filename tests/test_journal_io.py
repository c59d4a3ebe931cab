"""journal_io, native against reference: the same records and salt give identical bytes
(and the bytes segment.encode_records defines), on disk too; the same errors; and a
journal written through either twin opens with the other. The native twin's write and
fdatasync fail through its failpoints (the reference's through os, see
test_journal_failures.py): a failed one fails only its batch and the journal goes on."""
from __future__ import annotations

import asyncio
import errno
import os
import random

import pytest

from conftest import twins
from tether.errors import StorageError
from tether.queue.store import segment, segment_files
from tether.queue.store.journal import Journal

NATIVE, REFERENCE = twins("journal_io")
BOTH = [NATIVE, REFERENCE]


def random_records(rng: random.Random) -> list[bytes]:
    sizes = rng.choice([(0, 0), (0, 16), (1, 300), (0, 5000)])
    return [rng.randbytes(rng.randint(*sizes)) for _ in range(rng.choice([0, 1, 2, 7, 64, 700]))]


@pytest.mark.parametrize("seed", range(60))
def test_twins_frame_and_write_identical_bytes(seed, tmp_path):
    rng = random.Random(seed)
    records = random_records(rng)
    salt = rng.choice([0, 1, segment.CRC_SEED, 0xFFFF_FFFF, rng.getrandbits(32)])
    expected = segment.encode_records(records, salt)
    assert NATIVE.frame_records(records, salt) == REFERENCE.frame_records(records, salt) == expected
    assert NATIVE.framed_size(records) == REFERENCE.framed_size(records) == len(expected)
    for twin in BOTH:
        path = tmp_path / twin.__name__
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, b"head")
            assert twin.write_records(fd, records, salt, seed % 2 == 0) == len(expected)
            assert twin.write_records(fd, tuple(records[:3]), salt, False) == len(expected[:0]) + sum(
                len(r) + 12 for r in records[:3])
        finally:
            os.close(fd)
        assert path.read_bytes() == b"head" + expected + segment.encode_records(records[:3], salt)


def test_many_records_span_several_writev_calls(tmp_path):
    records = [bytes([i % 256]) * (i % 13) for i in range(5000)]     # 10,000 iovecs
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        NATIVE.write_records(fd, records, 77, True)
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == segment.encode_records(records, 77)


@pytest.mark.parametrize("args", [
    (["x"], 1), ([b"a", bytearray(b"b")], 1), ("abc", 1), (None, 1), ([b"a"], -1), ([b"a"], 2**32),
    ([b"a"], True), ([b"a"], 1.0), ([b"a"], "1"),
])
def test_twins_refuse_the_same_arguments_the_same_way(args):
    outcomes = []
    for twin in BOTH:
        for call in (lambda: twin.frame_records(*args), lambda: twin.write_records(1, *args, False)):
            with pytest.raises((TypeError, ValueError)) as info:
                call()
            outcomes.append((type(info.value), str(info.value)))
    assert len(set(outcomes)) == 1, outcomes


@pytest.mark.parametrize("fd", [-1, 2**31, True, "3", 1.0])
def test_twins_refuse_a_bad_fd_the_same_way(fd):
    outcomes = []
    for twin in BOTH:
        with pytest.raises((TypeError, ValueError)) as info:
            twin.write_records(fd, [b"x"], 1, False)
        outcomes.append((type(info.value), str(info.value)))
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("twin", BOTH, ids=["native", "reference"])
def test_a_failed_write_or_sync_says_which_step(twin, tmp_path):
    with pytest.raises(OSError) as info:
        twin.write_records(999_999, [b"x"], 1, True)         # not an open fd: the write fails
    assert info.value.errno == errno.EBADF and info.value.journal_step == "write"
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        twin.fail_next("sync", errno.EIO)
        with pytest.raises(OSError) as info:
            twin.write_records(fd, [b"x"], 1, True)
        assert info.value.errno == errno.EIO and info.value.journal_step == "sync"
        assert info.value.strerror == os.strerror(errno.EIO)
        twin.fail_next("write", errno.ENOSPC, 2)
        for _ in range(2):
            with pytest.raises(OSError) as info:
                twin.write_records(fd, [b"y"], 1, False)
            assert info.value.errno == errno.ENOSPC and info.value.journal_step == "write"
        assert twin.write_records(fd, [b"z"], 1, True) == 13     # the failpoint is used up
    finally:
        twin.fail_next("write", 0, 0)
        twin.fail_next("sync", 0, 0)
        os.close(fd)


def test_the_journal_writes_through_the_native_twin():
    assert segment_files.journal_io is NATIVE


@pytest.mark.parametrize("first,second", [(NATIVE, REFERENCE), (REFERENCE, NATIVE)],
                         ids=["native-then-reference", "reference-then-native"])
async def test_a_journal_written_by_one_twin_opens_and_goes_on_with_the_other(first, second, tmp_path,
                                                                             monkeypatch):
    records = [os.urandom(n) for n in (0, 1, 100, 5000)] * 5
    monkeypatch.setattr(segment_files, "journal_io", first)
    async with await Journal.open(tmp_path, segment_size=4096) as journal:
        for record in records:
            await journal.append(record)
        await journal.append_many(records)
    monkeypatch.setattr(segment_files, "journal_io", second)
    async with await Journal.open(tmp_path, segment_size=4096) as journal:
        assert journal.recovered == records * 2
        await journal.append(b"second")
    async with await Journal.open(tmp_path) as journal:
        assert journal.recovered == records * 2 + [b"second"]
        assert journal.recovery_log == []


@pytest.mark.parametrize("step", ["write", "sync"])
async def test_native_failed_batches_fail_alone_and_the_journal_restores_itself(step, tmp_path):
    journal = await Journal.open(tmp_path)
    await journal.append(b"good")
    acknowledged = [b"good"]
    NATIVE.fail_next(step, errno.EIO, 2)
    try:
        batch = [b"x%d" % i for i in range(3)]
        results = await asyncio.gather(*(journal.append(r) for r in batch), return_exceptions=True)
        failed = [r for r in results if isinstance(r, StorageError)]
        assert failed and all(isinstance(r.__cause__, OSError) and r.__cause__.errno == errno.EIO for r in failed)
        assert f"could not {'write to' if step == 'write' else 'sync'} the journal in {tmp_path}" in str(failed[0])
        acknowledged += [r for r, result in zip(batch, results) if result is None]
        for i in range(3):
            try:
                await journal.append(b"next%d" % i)
            except StorageError:
                continue
            acknowledged.append(b"next%d" % i)
    finally:
        NATIVE.fail_next(step, 0, 0)
    await journal.append(b"later")
    acknowledged.append(b"later")
    assert len(acknowledged) < 8          # two batches failed
    await journal.close()
    async with await Journal.open(tmp_path) as reopened:
        # the failed batches' bytes were cut off: exactly what was acknowledged is there
        assert reopened.recovered == acknowledged
        assert reopened.recovery_log == []
