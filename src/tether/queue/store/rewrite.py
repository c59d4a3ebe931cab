"""Writing a new start of a journal crash-safely: the protocol behind `Journal.rewrite` and
`repair`.

1. Each new segment (seq base, base + 1, ...) is written under `<name>.tmp` and synced.
2. The members (all but the start segment) are renamed into place; the directory is synced.
3. The start segment is renamed into place: from here on the new journal is the journal.
   The caller then syncs the directory and deletes every older segment.

A crash before step 3 leaves `.tmp` files and members whose start segment is missing; recovery
removes them (see survey) and the old journal stands. A crash after it leaves older segments,
which recovery removes as replaced by the newer start segment.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .files import datasync, fsync_directory, open_file, unlink_quietly, write_all
from .segment import HEADER_SIZE, RECORD_HEADER_SIZE, TMP_SUFFIX, encode_header, encode_records, segment_name


@dataclass
class NewJournal:
    """A journal start written by `write_new_journal`: its segments' sizes (seq -> bytes) and
    an fd open for writing to its last segment, at its end."""

    base: int
    salt: int
    sizes: dict[int, int]
    fd: int


def plan_segments(records: list[bytes], segment_size: int) -> list[list[bytes]]:
    """`records` split into segments: as many whole records as fit in `segment_size` bytes
    (at least one each), and at least one segment."""
    chunks: list[list[bytes]] = []
    current: list[bytes] = []
    size = HEADER_SIZE
    for record in records:
        framed = RECORD_HEADER_SIZE + len(record)
        if current and size + framed > segment_size:
            chunks.append(current)
            current, size = [], HEADER_SIZE
        current.append(record)
        size += framed
    if current or not chunks:
        chunks.append(current)
    return chunks


def write_new_journal(directory: str, base: int, salt: int, records: list[bytes], segment_size: int,
                      stray: list[str], preallocated: bool = False) -> NewJournal:
    """Steps 1 to 3: `records` become the journal started by segment `base` (which must be
    above every segment number in `directory`), in segments of at most `segment_size` bytes.

    Raises OSError if a step fails before the new journal is committed: then every file it
    wrote is removed again, and the members already renamed into place that could not be are
    appended to `stray` (they must go before a segment with their number is created). The
    segments are flagged `preallocated` (segment.py) when the journal appends that way."""
    chunks = plan_segments(records, segment_size)
    tmp_paths: list[str] = []
    placed: list[str] = []
    sizes: dict[int, int] = {}
    fd = -1
    prev_size = 0
    try:
        for i, chunk in enumerate(chunks):
            seq = base + i
            if fd >= 0:
                os.close(fd)
                fd = -1
            path = os.path.join(directory, segment_name(seq)) + TMP_SUFFIX
            # not O_APPEND: the journal zero-fills ahead of the records with pwrite, which
            # O_APPEND would turn into appends
            fd = open_file(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            tmp_paths.append(path)
            data = encode_header(seq, base, prev_size, salt, preallocated) + encode_records(chunk, salt)
            write_all(fd, data)
            datasync(fd)
            sizes[seq] = prev_size = len(data)
        # Members first, then (once they are durable) the start segment: once the start
        # exists, the whole new journal does.
        for i in range(len(chunks) - 1, 0, -1):
            target = os.path.join(directory, segment_name(base + i))
            os.rename(tmp_paths[i], target)
            placed.append(target)
        if len(chunks) > 1:
            fsync_directory(directory)
        os.rename(tmp_paths[0], os.path.join(directory, segment_name(base)))
    except OSError:
        if fd >= 0:
            os.close(fd)
        for path in tmp_paths + placed:
            try:
                unlink_quietly(path)
            except OSError:
                if path in placed:
                    stray.append(path)
        try:
            fsync_directory(directory)
        except OSError:
            pass    # a crash now leaves leftovers recovery removes
        raise
    return NewJournal(base, salt, sizes, fd)
