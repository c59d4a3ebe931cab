"""The disk's own limit for a journal: a plain loop of os.write + os.fdatasync.

A journal that batches `batch_size` records per fdatasync can at best match this loop on
the same disk with the same batch size; benchmarks print it beside the journal's figure so
the journal's overhead is a ratio measured in the same run.

Two shapes of the loop: appending (each fdatasync also commits the file's new size), and
overwriting a file whose blocks were written with zeros and synced first (`prezeroed`: the
fdatasync then writes data blocks only). A preallocating journal writes the second way, so
the benchmark shows both.
"""
from __future__ import annotations

import math
import os
import tempfile
import time

# Each journal record carries an 8-byte frame header (length, CRC); the baseline writes it
# too so both move the same bytes.
RECORD_OVERHEAD = 8
# The prezeroed loop overwrites this much, from the start again when it reaches the end
# (rewriting written blocks costs what the first overwrite did).
PREZEROED_BYTES = 8 * 1024 * 1024


def fdatasync_baseline(directory: str | os.PathLike, record_size: int, batch_size: float,
                       seconds: float, prezeroed: bool = False) -> float:
    """Records per second of an append-only file in `directory` written `batch_size`
    records (of `record_size` bytes plus the journal's 8-byte frame) per os.write, each
    write followed by os.fdatasync, for about `seconds`. `batch_size` may be fractional
    (an average batch size): each write then carries round(batch_size * record) bytes and
    counts batch_size records. With `prezeroed`, the file is first filled with
    PREZEROED_BYTES of zeros and synced (not timed), and the loop overwrites it in place.
    Blocks the calling thread; the file is removed after.

    Raises ValueError naming a bad argument."""
    if not isinstance(directory, (str, os.PathLike)) or not os.path.isdir(directory):
        raise ValueError(f"directory must be an existing directory, got {directory!r}")
    if isinstance(record_size, bool) or not isinstance(record_size, int) or record_size < 1:
        raise ValueError(f"record_size must be an int >= 1, got {record_size!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, float)) \
            or not math.isfinite(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a finite number >= 1, got {batch_size!r}")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
            or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"seconds must be a finite number > 0, got {seconds!r}")
    if not isinstance(prezeroed, bool):
        raise ValueError(f"prezeroed must be a bool, got {prezeroed!r}")
    chunk = b"\xa5" * round(batch_size * (record_size + RECORD_OVERHEAD))
    fd, path = tempfile.mkstemp(prefix="tether-fsync-baseline-", dir=directory)
    try:
        region = 0
        if prezeroed:
            region = max(PREZEROED_BYTES, len(chunk))
            zeros = bytes(1 << 20)
            for offset in range(0, region, len(zeros)):
                os.pwrite(fd, zeros[:region - offset], offset)
            os.fsync(fd)
        writes = 0
        offset = 0
        start = time.perf_counter()
        deadline = start + seconds
        now = start
        while now < deadline:
            if prezeroed:
                if offset + len(chunk) > region:
                    offset = 0
                os.pwrite(fd, chunk, offset)
                offset += len(chunk)
            else:
                os.write(fd, chunk)
            os.fdatasync(fd)
            writes += 1
            now = time.perf_counter()
        return writes * batch_size / (now - start)
    finally:
        os.close(fd)
        os.unlink(path)
