"""The disk's own limit for a journal: a plain loop of os.write + os.fdatasync.

A journal that batches `batch_size` records per fdatasync can at best match this loop on
the same disk with the same batch size; benchmarks print it beside the journal's figure so
the journal's overhead is a ratio measured in the same run.
"""
from __future__ import annotations

import math
import os
import tempfile
import time

# Each journal record carries an 8-byte frame header (length, CRC); the baseline writes it
# too so both move the same bytes.
RECORD_OVERHEAD = 8


def fdatasync_baseline(directory: str | os.PathLike, record_size: int, batch_size: float,
                       seconds: float) -> float:
    """Records per second of an append-only file in `directory` written `batch_size`
    records (of `record_size` bytes plus the journal's 8-byte frame) per os.write, each
    write followed by os.fdatasync, for about `seconds`. `batch_size` may be fractional
    (an average batch size): each write then carries round(batch_size * record) bytes and
    counts batch_size records. Blocks the calling thread; the file is removed after.

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
    chunk = b"\xa5" * round(batch_size * (record_size + RECORD_OVERHEAD))
    fd, path = tempfile.mkstemp(prefix="tether-fsync-baseline-", dir=directory)
    try:
        writes = 0
        start = time.perf_counter()
        deadline = start + seconds
        now = start
        while now < deadline:
            os.write(fd, chunk)
            os.fdatasync(fd)
            writes += 1
            now = time.perf_counter()
        return writes * batch_size / (now - start)
    finally:
        os.close(fd)
        os.unlink(path)
