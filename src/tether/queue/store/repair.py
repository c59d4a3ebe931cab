"""Checking and repairing a journal directory, for a journal `Journal.open` refuses.

`check(directory)` lists every problem (file, offset, length of the damaged range, what is
wrong) and counts the intact records, changing nothing. `repair(directory)` keeps every
intact record in order -- also those after damage and those in a segment whose header is
damaged -- moves each damaged byte range to `quarantine/<segment>.<offset>.bad` (0600) inside
the directory, so nothing is thrown away, and writes the records as a new journal with the
crash-safe rewrite protocol (rewrite.py), in new segments numbered above every existing one.
Then `Journal.open` succeeds. Both refuse to run while a Journal holds the directory.

A crash during a repair leaves either the old journal (with `.tmp` files and quarantine files
a second repair writes again) or the new one (with old segments Journal.open removes).
"""
from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass, field

from .files import (
    DIR_MODE,
    datasync,
    fsync_directory,
    lock_directory,
    make_private_directory,
    unlink_quietly,
    write_all,
    write_new_file,
)
from .rewrite import write_new_journal
from .segment import close_marker, new_salt, segment_name
from .survey import Problem, Survey, survey

logger = logging.getLogger("tether.journal")

QUARANTINE_DIR = "quarantine"
DEFAULT_SEGMENT_SIZE = 64 * 1024 * 1024


@dataclass
class JournalReport:
    """What `check` found, or what `repair` did.

    `records`: the intact records (found, or kept by the repair), in `segments` segments.
    `problems`: every problem, in journal order. `leftovers`: files of an interrupted or
    finished rewrite, which Journal.open removes (not problems). `quarantined`: for each
    damaged range the repair moved aside, the problem and the quarantine file. `new_start`:
    the first segment of the journal the repair wrote (None if it wrote none)."""

    directory: str
    records: int
    segments: int
    problems: list[Problem] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    quarantined: list[tuple[Problem, str]] = field(default_factory=list)
    new_start: str | None = None

    @property
    def clean(self) -> bool:
        """No problem at all."""
        return not self.problems

    @property
    def corruption(self) -> list[Problem]:
        """The problems that make Journal.open refuse the journal (all but a torn tail)."""
        return [p for p in self.problems if not p.torn_tail]


def check(directory: str | os.PathLike) -> JournalReport:
    """Survey the journal in `directory` and report every problem; changes nothing.
    Raises ValueError if `directory` is not an existing directory, QueueError if a Journal
    holds it, JournalCorrupt if it holds another format version, OSError if a file cannot
    be read (or is a symbolic link)."""
    path = _existing_directory(directory)
    lock_fd = lock_directory(path, create=False)
    try:
        found = survey(path)
    finally:
        if lock_fd >= 0:
            os.close(lock_fd)
    return _report(found)


def repair(directory: str | os.PathLike, *, segment_size: int = DEFAULT_SEGMENT_SIZE) -> JournalReport:
    """Repair the journal in `directory` (see the module docstring); a clean journal is left
    as it is. The new segments hold at most `segment_size` bytes (a record larger than that
    gets a segment of its own). Raises as `check`, and OSError if writing fails (the journal
    is then the old one or the repaired one, never a mix)."""
    path = _existing_directory(directory)
    if isinstance(segment_size, bool) or not isinstance(segment_size, int) or segment_size < 256:
        raise ValueError(f"segment_size must be an int >= 256, got {segment_size!r}")
    lock_fd = lock_directory(path)
    try:
        make_private_directory(path)
        found = survey(path, keep_data=True)
        report = _report(found)
        if report.clean:
            return report
        report.quarantined = _quarantine(path, found)
        report.new_start = _write_repaired_journal(path, found, segment_size)
    finally:
        os.close(lock_fd)
    logger.info("journal in %s repaired: %d records kept, %d damaged ranges quarantined", path,
                report.records, len(report.quarantined))
    return report


def _existing_directory(directory: object) -> str:
    if not isinstance(directory, (str, os.PathLike)):
        raise ValueError(f"directory must be a str or os.PathLike, got {directory!r}")
    path = os.fspath(directory)
    if not isinstance(path, str) or not path:
        raise ValueError(f"directory must be a non-empty str path, got {directory!r}")
    if not os.path.exists(path):
        raise ValueError(f"journal directory {path} does not exist")
    if not os.path.isdir(path):
        raise ValueError(f"journal directory {path} is not a directory")
    return os.path.abspath(path)


def _report(found: Survey) -> JournalReport:
    return JournalReport(found.directory, len(found.records), len(found.segments), list(found.problems),
                         [*found.obsolete, *found.unfinished])


def _quarantine(directory: str, found: Survey) -> list[tuple[Problem, str]]:
    """Copy each damaged byte range to its quarantine file, durably, before anything is
    deleted."""
    where = os.path.join(directory, QUARANTINE_DIR)
    try:
        os.mkdir(where, DIR_MODE)
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(where).st_mode):
            raise OSError(errno.ENOTDIR, "is not a directory (the quarantine files go there)", where) from None
    segments = {s.path: s for s in found.segments}
    done: list[tuple[Problem, str]] = []
    for problem in found.problems:
        segment = segments.get(problem.path)
        if segment is None or not problem.damaged:
            continue      # a missing segment or a size that does not match: no bytes to keep
        target = os.path.join(where, f"{segment.name}.{problem.offset}.bad")
        write_new_file(target, segment.data[problem.offset: problem.offset + problem.length])
        done.append((problem, target))
    fsync_directory(where)
    fsync_directory(directory)
    return done


def _write_repaired_journal(directory: str, found: Survey, segment_size: int) -> str:
    """Write every intact record as a new journal above every existing segment, then delete
    the old files; returns the new start segment's name."""
    base = found.highest_seq + 1
    new = write_new_journal(directory, base, new_salt(), found.records, segment_size, [])
    try:
        fsync_directory(directory)
        for name in [*(s.name for s in found.segments), *found.obsolete, *found.unfinished]:
            unlink_quietly(os.path.join(directory, name))
        fsync_directory(directory)
        # closed cleanly, as close() leaves a journal
        write_all(new.fd, close_marker(new.salt))
        datasync(new.fd)
    finally:
        os.close(new.fd)
    return segment_name(base)
