"""Opening a journal: survey its directory (survey.py), refuse it if it is corrupt, else finish
what a crash left and open the last segment for appending.

Only a torn tail is repaired: the last segment is cut back to its last intact record, or
removed if it was still being created; one line in the recovery log says so. (In a
preallocated segment a zero tail after the last record is not a repair: it is the space the
journal zero-filled ahead of its records, and appends go on into it.) Leftovers of
our own rewrite protocol are removed too (one line each kind). Anything else is corruption:
`JournalCorrupt`, naming the file and offset, and nothing in the directory is changed
(`tether qm check` lists the damage, `tether qm repair` salvages every intact record).
A journal that ends with the clean-close marker has it cut off before appends follow it.
"""
from __future__ import annotations

import logging
import os

from ...errors import JournalCorrupt
from .files import fsync_directory, lock_directory, make_private_directory, truncate_file, unlink_quietly
from .segment_files import SegmentFiles
from .survey import Problem, survey

logger = logging.getLogger("tether.journal")


def corruption_error(directory: str, problems: list[Problem]) -> JournalCorrupt:
    """The JournalCorrupt for a journal with these problems (the first one is named)."""
    first = problems[0]
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    return JournalCorrupt(
        f"journal in {directory} is damaged: {first.path} at offset {first.offset}: {first.what}{more}; "
        f"nothing was changed. `tether qm check --data-dir {directory}` lists the damage, "
        f"`tether qm repair --data-dir {directory}` keeps every intact record and quarantines the rest",
        path=first.path, offset=first.offset)


def recover(directory: str, segment_size: int, policy: str, interval: float,
            retry_interval: float, preallocate: bool = True) -> tuple[SegmentFiles, list[bytes], list[str]]:
    """Recovery, on the writer thread: create or lock the directory, then recover it. Returns
    the open segment files, the journal's records, and one line per repair."""
    make_private_directory(directory)
    lock_fd = lock_directory(directory)
    try:
        return _recover_locked(directory, lock_fd, segment_size, policy, interval, retry_interval, preallocate)
    except BaseException:
        os.close(lock_fd)
        raise


def _recover_locked(directory: str, lock_fd: int, segment_size: int, policy: str, interval: float,
                    retry_interval: float, preallocate: bool) -> tuple[SegmentFiles, list[bytes], list[str]]:
    log: list[str] = []

    def note(line: str) -> None:
        log.append(line)
        logger.warning("journal in %s: %s", directory, line)

    found = survey(directory)
    if found.corruption:
        raise corruption_error(directory, found.corruption)
    doomed: list[str] = []
    if found.obsolete:
        doomed.extend(found.obsolete)
        note(f"removed {len(found.obsolete)} segment(s) {found.obsolete[0]}..{found.obsolete[-1]}: "
             f"replaced by a rewrite that finished before the journal stopped")
    if found.unfinished:
        doomed.extend(found.unfinished)
        names = found.unfinished
        note(f"removed {len(names)} file(s) of a rewrite interrupted before it finished: "
             + (names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]}"))
    segments = found.segments
    torn = found.torn_tail
    if torn is not None:
        last = segments[-1]
        if last.stub:
            doomed.append(last.name)
            segments = segments[:-1]
            note(f"segment {last.name}: {torn.what}: removed (it was being created when the journal stopped)")
        else:
            truncate_file(last.path, torn.offset)
            last.size = torn.offset
            note(f"segment {last.name}: {torn.what} at offset {torn.offset}: truncated to {torn.offset} bytes, "
                 f"dropping {torn.length} bytes; {len(last.contents.records)} record(s) of this segment kept")
    close_at = segments[-1].contents.close_at if segments else None
    if close_at is not None:
        # Closed cleanly: the marker goes, so that appends do not follow it.
        truncate_file(segments[-1].path, close_at)
        segments[-1].size = close_at
    elif torn is None and segments and segments[-1].contents.zero_from is not None:
        zero_from = segments[-1].contents.zero_from
        logger.info("journal in %s: segment %s holds %d bytes of records and %d zero-filled bytes ahead of them",
                    directory, segments[-1].name, zero_from, segments[-1].size - zero_from)

    for name in doomed:
        unlink_quietly(os.path.join(directory, name))
    if doomed:
        fsync_directory(directory)
    files = SegmentFiles(directory, lock_fd, policy, interval, segment_size, retry_interval, preallocate)
    for segment in segments:
        header = segment.header
        assert header is not None       # a damaged header is corruption, a stub was removed
        zero_from = segment.contents.zero_from
        used = segment.size if zero_from is None or segment.size < zero_from else zero_from
        files.adopt(segment.seq, header.base, header.salt, used, segment.size, header.preallocated)
    files.open_current()
    records = found.records
    logger.info("journal in %s opened: %d records in %d segment(s)%s", directory, len(records),
                files.segment_count, f", {len(log)} repair(s)" if log else "")
    return files, records, log
