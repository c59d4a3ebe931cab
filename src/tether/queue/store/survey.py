"""What a journal directory holds, read without changing anything: the journal's segments in
order with every intact record, the files our own crash-safe rewrite leaves behind, and every
problem. `Journal.open` (recovery), `check` and `repair` all start from a `Survey`.

1. `*.seg.tmp` files are a rewrite that crashed before its start segment was renamed into
   place: leftovers.
2. The journal starts at the newest start segment: one whose header has base == seq, or a
   segment file with a damaged header that an intact segment names as its base (it was
   renamed into place, so its rewrite finished). Older segments are leftovers of a rewrite
   that finished. Newer segments naming a newer base belong to a rewrite that did not finish:
   leftovers, as are damaged ones numbered from that base on.
3. Every other segment from the start on belongs to the journal, and each of these is a
   problem: a missing segment number; a header that fails its checks; a `prev_size` that is
   not the previous segment's size; a damaged range among the records; zeros after the
   records of a preallocated segment that is not the last (it was cut to its records).
4. One problem is a torn tail, the unsynced end of the last batch, which `Journal.open` may
   repair: the last segment was being created (empty, a short header, or a zero-filled
   header with nothing after it), or its last damaged range reaches the end of the file with
   no intact record after it and does not follow the clean-close marker. In a preallocated
   segment (segment.py) the end is the end of its data (a zero tail after it is no problem), and a torn
   write may leave intact records between damaged ranges: the torn tail is the longest run
   of damaged ranges at the end after the last sync mark in which every range but the last
   holds a zero sector (segment.py); the records in it go with it. Every other problem is
   corruption.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from .files import read_file, read_head
from .record_scan import Damage, SegmentContents, holds_zero_sector, scan_segment
from .segment import (
    HEADER_SIZE,
    SEGMENT_SUFFIX,
    TMP_SUFFIX,
    BadHeader,
    SegmentHeader,
    decode_header,
    parse_segment_name,
    salt_field,
    segment_name,
)


@dataclass(frozen=True)
class Problem:
    """Something wrong in a journal: `length` bytes of the file `path` from `offset`, and
    what. `damaged`: those bytes are damaged (False for a missing segment, whose path does
    not exist, and for a segment size that does not match, where `length` is the difference).
    `torn_tail`: the unsynced end of the last batch, which Journal.open repairs; every other
    problem makes it refuse the journal."""

    path: str
    offset: int
    length: int
    what: str
    torn_tail: bool = False
    damaged: bool = True

    def __str__(self) -> str:
        text = f"{self.path} at offset {self.offset}: {self.what}"
        if self.length and self.damaged:
            text += f" ({self.length} bytes)"
        if self.torn_tail:
            text += " [a torn tail: Journal.open cuts it off]"
        return text


@dataclass
class SurveyedSegment:
    """One segment of the journal: its header (None if damaged), what its records hold, and
    its bytes if the survey kept them."""

    seq: int
    path: str
    size: int
    header: SegmentHeader | None
    contents: SegmentContents
    stub: bool = False
    data: bytes = b""

    @property
    def name(self) -> str:
        """The segment's file name."""
        return segment_name(self.seq)


@dataclass
class Survey:
    """A journal directory as `survey` found it."""

    directory: str
    segments: list[SurveyedSegment] = field(default_factory=list)
    obsolete: list[str] = field(default_factory=list)      # names: replaced by a finished rewrite
    unfinished: list[str] = field(default_factory=list)    # names: a rewrite that did not finish
    problems: list[Problem] = field(default_factory=list)
    highest_seq: int = 0          # the highest segment number of any file, leftovers included

    @property
    def records(self) -> list[bytes]:
        """Every intact record of the journal, in order."""
        return [r for s in self.segments for r in s.contents.records]

    @property
    def corruption(self) -> list[Problem]:
        """The problems that are not a torn tail."""
        return [p for p in self.problems if not p.torn_tail]

    @property
    def torn_tail(self) -> Problem | None:
        """The torn tail, if there is one."""
        return next((p for p in self.problems if p.torn_tail), None)


def survey(directory: str, *, keep_data: bool = False) -> Survey:
    """Survey the journal in `directory` (which must exist), changing nothing. With
    keep_data each segment's bytes are kept in the result. Raises JournalCorrupt for a
    segment of another format version, OSError for a file that cannot be read (or is a
    symbolic link)."""
    names = sorted(os.listdir(directory))
    result = Survey(directory)
    tmp = [n for n in names if parse_segment_name(n, SEGMENT_SUFFIX + TMP_SUFFIX) is not None]
    heads: dict[int, SegmentHeader | BadHeader] = {}
    for name in names:
        seq = parse_segment_name(name)
        if seq is None:
            continue
        path = os.path.join(directory, name)
        head, size = read_head(path, HEADER_SIZE)
        try:
            heads[seq] = decode_header(head, seq, size, path)
        except BadHeader as exc:
            heads[seq] = exc
    tmp_seqs = [s for s in (parse_segment_name(n, SEGMENT_SUFFIX + TMP_SUFFIX) for n in tmp) if s is not None]
    result.highest_seq = max([*heads, *tmp_seqs], default=0)
    result.unfinished.extend(tmp)
    if not heads:
        return result

    intact = {s: h for s, h in heads.items() if isinstance(h, SegmentHeader)}
    starts = {s for s, h in intact.items() if h.base == s}
    starts |= {h.base for h in intact.values() if isinstance(heads.get(h.base), BadHeader)}
    start = max(starts) if starts else min(heads)
    base = start if start in starts else (intact[start].base if start in intact else start)
    newer_bases = [h.base for s, h in intact.items() if s > start and h.base > start]
    cut = min(newer_bases, default=None)
    members: list[int] = []
    for s in sorted(heads):
        header = heads[s]
        if s < start:
            result.obsolete.append(segment_name(s))
        elif s > start and (header.base > start if isinstance(header, SegmentHeader)
                            else cut is not None and s >= cut):
            result.unfinished.append(segment_name(s))
        else:
            members.append(s)
    _walk(result, directory, members, heads, base, keep_data)
    return result


def _walk(result: Survey, directory: str, members: list[int], heads: dict, base: int,
          keep_data: bool) -> None:
    """Read the journal's segments in order, noting every problem (rule 3) and the torn tail
    (rule 4)."""
    problems = result.problems
    salts = [heads[s].salt for s in members if isinstance(heads[s], SegmentHeader)]
    expected = base
    prev: SurveyedSegment | None = None
    for i, seq in enumerate(members):
        is_last = i == len(members) - 1
        path = os.path.join(directory, segment_name(seq))
        if seq != expected:
            gap = segment_name(expected) + (f"..{segment_name(seq - 1)}" if seq - 1 > expected else "")
            problems.append(Problem(os.path.join(directory, segment_name(expected)), 0, 0,
                                    f"segment {gap} is missing", damaged=False))
            prev = None
        data = read_file(path)
        header = heads[seq]
        if isinstance(header, BadHeader):
            if header.stub:
                segment = SurveyedSegment(seq, path, len(data), None, SegmentContents(), stub=True)
                what = str(header) if is_last else f"{header}, but later segments follow"
                problems.append(Problem(path, 0, len(data), what, torn_tail=is_last))
            else:
                problems.append(Problem(path, 0, HEADER_SIZE, str(header)))
                segment = SurveyedSegment(seq, path, len(data), None, _salvage(data, [salt_field(data), *salts]))
        else:
            if header.base != base:
                problems.append(Problem(path, 0, HEADER_SIZE, f"header names base segment {header.base}, "
                                                              f"not {base} as the journal's first segment"))
            elif prev is not None and header.prev_size != prev.size:
                problems.append(Problem(prev.path, min(prev.size, header.prev_size),
                                        abs(prev.size - header.prev_size),
                                        f"segment holds {prev.size} bytes but held {header.prev_size} when "
                                        f"{segment_name(seq)} was started", damaged=False))
            segment = SurveyedSegment(seq, path, len(data), header,
                                      scan_segment(data, HEADER_SIZE, header.salt, header.preallocated))
        contents = segment.contents
        damage = contents.damage
        if not is_last and contents.zero_from is not None:
            # A finished segment was cut to its records before the next one started: zeros
            # after them are records lost (zeroed from a record boundary on), not a zero tail.
            problems.append(Problem(path, contents.zero_from, len(data) - contents.zero_from,
                                    "zero bytes after the last record of a finished segment"))
        torn_from = len(damage)
        if is_last and segment.header is not None:
            torn_from = _torn_suffix(data, contents, segment.header.preallocated)
        for d in damage[:torn_from]:
            what = d.what + (" after the clean-close marker" if d.after_close else "")
            problems.append(Problem(path, d.offset, d.length, what))
        if torn_from < len(damage):
            first = damage[torn_from]
            dropped = len(contents.records) - first.records_before
            what = first.what + (f" (a torn write; {dropped} unsynced record(s) after it go with it)"
                                 if dropped else "")
            end = max(contents.data_end, *(d.offset + d.length for d in damage[torn_from:]))
            problems.append(Problem(path, first.offset, end - first.offset, what, torn_tail=True))
            del contents.records[first.records_before:]
        if keep_data:
            segment.data = data
        result.segments.append(segment)
        prev = segment
        expected = seq + 1


def _torn_suffix(data: bytes, contents: SegmentContents, preallocated: bool) -> int:
    """The index of the first damaged range of the last segment's torn tail (rule 4), or
    len(damage) if it has none."""
    damage: list[Damage] = contents.damage
    n = len(damage)
    if not n:
        return 0
    last = damage[-1]
    reaches_end = last.offset + last.length >= contents.data_end and not last.after_close
    if not preallocated:
        return n - 1 if reaches_end else n
    # Preallocated: from the end back, the ranges a torn write explains. Each needs a sector
    # the write left unwritten (the last one may instead be a record cut short by the end);
    # none may come before an intact sync mark.
    k = n
    for j in range(n - 1, -1, -1):
        d = damage[j]
        cut_short = j == n - 1 and reaches_end
        if d.after_close or d.offset < contents.synced_to \
                or not (cut_short or holds_zero_sector(data, d.offset, d.length, first=True)):
            break
        k = j       # the torn write may start here ...
        if not (cut_short or holds_zero_sector(data, d.offset, d.length)):
            break   # ... but cannot have started earlier: a sector it wrote is here
    return k


def _salvage(data: bytes, salts: list[int | None]) -> SegmentContents:
    """The records of a segment whose header is damaged: scanned with whichever salt (the
    header's own field, else another segment's) finds the most."""
    best: SegmentContents | None = None
    for salt in dict.fromkeys(s for s in salts if s is not None):
        contents = scan_segment(data, HEADER_SIZE, salt)
        if best is None or len(contents.records) > len(best.records):
            best = contents
    return best if best is not None else scan_segment(data, HEADER_SIZE, 0)
