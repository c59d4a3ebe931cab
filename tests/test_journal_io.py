"""journal_io, native against reference: the same records and salt give identical bytes
(and the bytes segment.encode_records defines), on disk too; the same errors; and a
journal written through either twin opens with the other. The native twin's write and
fdatasync fail through its failpoints (the reference's through os, see
test_journal_failures.py): a failed one fails only its batch and the journal goes on."""
from __future__ import annotations

import asyncio
import errno
import functools
import os
import random
import socket
import time

import pytest

from tether.errors import StorageError
from tether.queue.store import segment, segment_files
from tether.queue.store.journal import Journal

from conftest import twins

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



@pytest.mark.parametrize("mark", [False, True])
def test_each_write_call_ends_at_a_record_boundary(mark):
    """Between two write calls of one batch, writeback may put the first call's end on the
    disk with zeros after it; recovery's torn-write rule needs whole records before such
    zeros. A SOCK_SEQPACKET socket makes each writev call one message, so the calls show."""
    records = [b"r%03d" % i + bytes(12) for i in range(700)]        # 1,400 iovecs and more
    ends = {0, 12} if mark else {0}
    offset = 12 if mark else 0
    for record in records:
        offset += 12 + len(record)
        ends.add(offset)
    for twin in BOTH:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            twin.write_records(ours.fileno(), records, 77, False, mark)
            theirs.setblocking(False)
            messages = []
            while sum(map(len, messages)) < offset:
                messages.append(theirs.recv(1 << 20))
        finally:
            ours.close()
            theirs.close()
        assert b"".join(messages) == (segment.sync_mark(77) if mark else b"") + segment.encode_records(records, 77)
        assert len(messages) > (1 if twin is NATIVE else 0)
        at = 0
        for message in messages:
            at += len(message)
            assert at in ends, (twin.__name__, [len(m) for m in messages])

@pytest.mark.parametrize("args", [
    (["x"], 1), ([b"a", bytearray(b"b")], 1), ("abc", 1), (None, 1), ([b"a"], -1), ([b"a"], 2**32),
    ([b"a"], True), ([b"a"], 1.0), ([b"a"], "1"),
])
def test_twins_refuse_the_same_arguments_the_same_way(args):
    outcomes = []
    for twin in BOTH:
        for call in (functools.partial(twin.frame_records, *args),
                     functools.partial(twin.write_records, 1, *args, False)):
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


# ---- BatchWriter: the same outcomes, bytes and order from both twins ----

def collect(writer, count: int, timeout: float = 10.0) -> list[tuple]:
    """finished() until `count` outcomes came, waiting on the eventfd between calls."""
    import select

    out: list[tuple] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        assert time.monotonic() < deadline, f"only {len(out)} of {count} jobs finished"
        select.select([writer.event_fd], [], [], 0.5)
        out += writer.finished()
    return out


def outcome_shape(outcome: tuple) -> tuple:
    token, written, err, step, seconds, message = outcome
    assert seconds >= 0.0 and (message is None) == (step in (None, "skipped"))
    return token, written, err, step


@pytest.mark.parametrize("marks", [False, True], ids=["records", "with-sync-marks"])
@pytest.mark.parametrize("seed", range(8))
def test_batch_writer_twins_write_the_same_bytes_in_order(seed, marks, tmp_path):
    rng = random.Random(seed)
    jobs = [(random_records(rng)[:50], rng.getrandbits(32), rng.random() < 0.3, marks and rng.random() < 0.5)
            for _ in range(40)]
    results = []
    for twin in BOTH:
        path = tmp_path / twin.__name__
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        writer = twin.BatchWriter()
        try:
            sizes = [writer.submit(token, fd, records, salt, sync, mark)
                     for token, (records, salt, sync, mark) in enumerate(jobs)]
            outcomes = [outcome_shape(o) for o in collect(writer, len(jobs))]
        finally:
            writer.close()
            os.close(fd)
        assert outcomes == [(token, size, 0, None) for token, size in enumerate(sizes)]
        results.append(path.read_bytes())
    assert results[0] == results[1] == b"".join(
        (segment.sync_mark(salt) if mark else b"") + segment.encode_records(r, salt) for r, salt, _, mark in jobs)


@pytest.mark.parametrize("twin", BOTH, ids=["native", "reference"])
def test_batch_writer_runs_jobs_submitted_while_it_is_busy_and_while_it_waits(twin, tmp_path):
    # The native writer is signalled only when it waits for work; a job queued while it
    # writes is taken when that write is done. Bursts (busy) and single jobs after it went
    # idle (waiting) must all run, in order.
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    writer = twin.BatchWriter()
    expected = []
    token = 0
    try:
        for burst in (1, 30, 1, 5, 1, 1, 60):
            for _ in range(burst):
                records = [b"%d" % token] * (token % 7)
                writer.submit(token, fd, records, 11, token % 3 == 0)
                expected.append(records)
                token += 1
            assert [o[0] for o in collect(writer, burst)] == list(range(token - burst, token))
            time.sleep(0.01)          # the writer goes back to waiting
    finally:
        writer.close()
        os.close(fd)
    assert path.read_bytes() == b"".join(segment.encode_records(r, 11) for r in expected)


def _threads() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


@pytest.mark.parametrize("twin", BOTH, ids=["native", "reference"])
@pytest.mark.parametrize("background", [False, True])
def test_batch_writer_background_runs_its_thread_under_sched_batch(twin, background, tmp_path):
    before = _threads()
    writer = twin.BatchWriter(background=background)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        writer.submit(1, fd, [b"one"], 5, False)         # the thread has started and set its policy
        assert [o[0] for o in collect(writer, 1)] == [1]
        new = _threads() - before
        policies = {os.sched_getscheduler(tid) for tid in new}
        assert policies == {os.SCHED_BATCH if background else os.SCHED_OTHER}
    finally:
        writer.close()
        os.close(fd)
    with pytest.raises(TypeError, match="background must be a bool"):
        twin.BatchWriter(background=1)


@pytest.mark.skipif(os.environ.get("TETHER_JOURNAL_FAST", "1") == "0", reason="the fast path is turned off")
async def test_a_journal_under_never_writes_in_the_background_and_under_always_not(tmp_path):
    for policy, expected in (("never", True), ("always", False)):
        before = _threads()
        journal = await Journal.open(tmp_path / policy, fsync=policy)
        try:
            await journal.append(b"x")
            policies = {os.sched_getscheduler(tid) for tid in _threads() - before}
            assert (os.SCHED_BATCH in policies) == expected, (policy, policies)
        finally:
            await journal.close()


@pytest.mark.parametrize("twin", BOTH, ids=["native", "reference"])
@pytest.mark.parametrize("step", ["write", "sync"])
def test_batch_writer_stops_after_a_failed_job_until_resumed(twin, step, tmp_path):
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    writer = twin.BatchWriter()
    try:
        writer.submit(1, fd, [b"one"], 5, True)
        assert [outcome_shape(o) for o in collect(writer, 1)] == [(1, 15, 0, None)]
        twin.fail_next(step, errno.ENOSPC)
        for token in (2, 3, 4):
            writer.submit(token, fd, [b"x%d" % token], 5, True)
        outcomes = collect(writer, 3)
        assert [outcome_shape(o) for o in outcomes] == [(2, 0, errno.ENOSPC, step), (3, 0, 0, "skipped"),
                                                        (4, 0, 0, "skipped")]
        assert outcomes[0][5] == os.strerror(errno.ENOSPC)
        assert writer.stopped
        writer.submit(5, fd, [b"five"], 5, False)            # still stopped: skipped too
        assert [outcome_shape(o) for o in collect(writer, 1)] == [(5, 0, 0, "skipped")]
        writer.resume()
        assert not writer.stopped
        writer.submit(6, fd, [b"six"], 5, True)
        assert [outcome_shape(o) for o in collect(writer, 1)] == [(6, 15, 0, None)]
    finally:
        twin.fail_next(step, 0, 0)
        writer.close()
        os.close(fd)
    expected = segment.encode_records([b"one"], 5)
    if step == "sync":                                       # written, then its sync failed
        expected += segment.encode_records([b"x2"], 5)
    assert path.read_bytes() == expected + segment.encode_records([b"six"], 5)


@pytest.mark.parametrize("twin", BOTH, ids=["native", "reference"])
def test_batch_writer_close_runs_what_is_queued_and_refuses_more(twin, tmp_path):
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    writer = twin.BatchWriter()
    event_fd = writer.event_fd
    for token in range(100):
        writer.submit(token, fd, [b"%d" % token], 9, False)
    writer.close()
    writer.close()                                           # idempotent
    os.close(fd)
    assert path.read_bytes() == segment.encode_records([b"%d" % t for t in range(100)], 9)
    assert writer.finished() == []
    with pytest.raises(OSError):
        os.fstat(event_fd)                                   # closed with the writer
    with pytest.raises(ValueError, match="closed"):
        writer.submit(1, 0, [b"x"], 1, False)


@pytest.mark.parametrize("args", [
    (1, ["x"], 1), (1, [b"a"], -1), (-1, [b"a"], 1), (True, [b"a"], 1), (1, "abc", 1),
])
def test_batch_writer_twins_refuse_the_same_arguments_the_same_way(args, tmp_path):
    outcomes = []
    for twin in BOTH:
        writer = twin.BatchWriter()
        try:
            with pytest.raises((TypeError, ValueError)) as info:
                writer.submit(1, *args, False)
            outcomes.append((type(info.value), str(info.value)))
        finally:
            writer.close()
    assert outcomes[0] == outcomes[1]


async def test_the_journal_batches_go_through_the_batch_writer(tmp_path):
    journal = await Journal.open(tmp_path, preallocate=False)      # file sizes are record bytes
    try:
        assert isinstance(journal._writer, NATIVE.BatchWriter)
        await asyncio.gather(*(journal.append(b"%d" % i) for i in range(50)))
        assert journal.sync_count >= 1 and journal.record_count == 50
        # the loop accounted the bytes the writer thread wrote
        assert journal.size_bytes == sum(os.path.getsize(tmp_path / n) for n in os.listdir(tmp_path)
                                         if n.endswith(".seg"))
    finally:
        await journal.close()


async def test_a_journal_under_interval_writes_without_the_batch_writer(tmp_path):
    async with await Journal.open(tmp_path, fsync="interval") as journal:
        assert journal._writer is None
        await journal.append(b"x")


@pytest.mark.parametrize("step", ["write", "sync"])
async def test_batches_queued_behind_a_failed_one_are_written_after_the_restore_in_order(step, tmp_path):
    journal = await Journal.open(tmp_path, max_in_flight=4)
    journal._commit.turn_seconds = 10.0       # pipelined: up to 4 batches in flight
    await journal.append(b"good")
    outcomes: dict[bytes, BaseException | None] = {}
    done = asyncio.Event()

    def report(record: bytes, error: BaseException | None) -> None:
        outcomes[record] = error
        if len(outcomes) == 6:
            done.set()

    NATIVE.fail_next(step, errno.EIO, 1)
    try:
        for i in range(6):                   # each goes at once: 4 in flight, 2 wait
            journal.append_then(b"r%d" % i, report, b"r%d" % i)
        assert journal.batches_in_flight == 4
        await asyncio.wait_for(done.wait(), 10)
    finally:
        NATIVE.fail_next(step, 0, 0)
    assert isinstance(outcomes[b"r0"], StorageError) and outcomes[b"r0"].__cause__.errno == errno.EIO
    assert all(outcomes[b"r%d" % i] is None for i in range(1, 6))
    await journal.append(b"later")
    await journal.close()
    async with await Journal.open(tmp_path) as reopened:
        assert reopened.recovered == [b"good"] + [b"r%d" % i for i in range(1, 6)] + [b"later"]
        assert reopened.recovery_log == []


async def test_pipelining_stays_split_while_a_sync_is_quicker_than_the_round(tmp_path):
    # split into cohorts, each cohort's turn is its share of the round: comparing a sync
    # with one turn flipped the state whenever the sync took between a share and the round
    journal = await Journal.open(tmp_path, max_in_flight=2)
    commit = journal._commit
    try:
        commit.write_seconds, commit.turn_seconds = 0.9e-3, 1.0e-3     # one cohort: its turn is the round
        assert commit.pipelined
        commit.turn_seconds = 0.5e-3                 # split in two: a turn is half the round
        assert commit.pipelined
        commit.write_seconds = 1.1e-3                # a sync longer than the round: merge
        assert not commit.pipelined
        commit.turn_seconds = 0.6e-3                 # merged, a turn is the round again
        assert not commit.pipelined
        commit.turn_seconds = 1.2e-3
        assert commit.pipelined
    finally:
        await journal.close()


# ---- sync marks (format version 3) ----

@pytest.mark.parametrize("seed", range(12))
def test_twins_write_the_same_sync_marks(seed, tmp_path):
    rng = random.Random(seed)
    records = random_records(rng)[:40]
    salt = rng.getrandbits(32)
    expected = segment.sync_mark(salt) + segment.encode_records(records, salt)
    assert NATIVE.frame_records(records, salt, True) == REFERENCE.frame_records(records, salt, True) == expected
    assert NATIVE.frame_records([], salt, True) == REFERENCE.frame_records([], salt, True) == segment.sync_mark(salt)
    for twin in BOTH:
        path = tmp_path / twin.__name__
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            assert twin.write_records(fd, records, salt, seed % 2 == 0, True) == len(expected)
            assert twin.write_records(fd, [], salt, False, True) == segment.RECORD_HEADER_SIZE
        finally:
            os.close(fd)
        assert path.read_bytes() == expected + segment.sync_mark(salt)
