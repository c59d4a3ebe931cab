"""Reading the records of one segment, damaged or not.

`scan_segment` walks the records from the header on. At a record that is not intact it notes
a damaged region and carries on at the next intact record, so every intact record is found,
also those after damage. How far a damaged region reaches:

* a record whose header checks but whose payload fails its CRC: exactly that record (its
  length is known);
* a record whose header checks but whose length runs past the end of the data, or fewer bytes
  than a record header at the end: to the end (a record cut short; nothing can follow it);
* any other damage: to the next position, searched byte by byte, where an intact record (or
  the clean-close marker) starts, or to the end if there is none.

The search costs an 8-byte CRC per position (the record header's own check) and skips runs of
zero bytes at once, so it is linear in the damaged bytes.

In a preallocated segment (segment.py) the scan also notes the sync marks (the last one's offset) and stops
at the zero tail: once only zero bytes are left, the data has ended (segment.py). A damaged
range "to the end" then reaches the last nonzero byte, not the end of the file.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

from .segment import (
    CLOSE_LENGTH,
    CRC_SEED,
    MAX_RECORD_SIZE,
    RECORD_HEADER,
    RECORD_HEADER_SIZE,
    SECTOR_SIZE,
    SYNC_LENGTH,
)

_crc32 = zlib.crc32
_unpack = RECORD_HEADER.unpack_from
_ZEROS = bytes(RECORD_HEADER_SIZE)
_NONZERO = re.compile(rb"[^\x00]")


@dataclass(frozen=True)
class Damage:
    """A damaged byte range of a segment: `length` bytes from `offset`, and what is wrong at
    its start. `after_close` is True if it follows the clean-close marker; `records_before`:
    how many intact records the segment holds before it."""

    offset: int
    length: int
    what: str
    after_close: bool = False
    records_before: int = 0


@dataclass
class SegmentContents:
    """What `scan_segment` found: every intact record in order, where the intact records before
    the first damage end, the damaged ranges, and the offset of the clean-close marker if it
    is the last thing in the segment. Preallocated segments: `synced_to`, the offset of the last intact
    sync mark (0: none); `zero_from`, where the zero tail starts (None: no zero tail);
    `data_end`, where the data ends (the zero tail's start, else the file's end)."""

    records: list[bytes] = field(default_factory=list)
    intact_end: int = 0
    damage: list[Damage] = field(default_factory=list)
    close_at: int | None = None
    synced_to: int = 0
    zero_from: int | None = None
    data_end: int = 0


def data_end(data: bytes, start: int) -> int:
    """The offset just past the last nonzero byte of `data` at or after `start` (`start` if
    there is none)."""
    end = len(data)
    while end > start:
        low = max(start, end - 65536)
        chunk = data[low:end]
        if chunk.count(0) != len(chunk):
            return low + len(chunk.rstrip(b"\x00"))
        end = low
    return start


def holds_zero_sector(data: bytes, offset: int, length: int, first: bool = False) -> bool:
    """True if `data[offset:offset + length]` holds a sector (SECTOR_SIZE-aligned) a torn
    write may have left unwritten: a whole sector of zero bytes, or, if `first` (the range
    starts the torn write), the zero bytes from `offset` to the end of its sector (the
    sector also held synced bytes before `offset`, written with zeros after them)."""
    end = min(offset + length, len(data))
    sector = offset - offset % SECTOR_SIZE
    if sector < offset and not first:
        sector += SECTOR_SIZE
    while sector < end:
        low = max(sector, offset)
        high = sector + SECTOR_SIZE
        if high > end:
            return False
        if data.count(0, low, high) == high - low:
            return True
        sector += SECTOR_SIZE
    return False


def scan_segment(data: bytes, start: int, salt: int, preallocated: bool = True) -> SegmentContents:
    """Scan `data[start:]`, the records of a segment with `salt`, `preallocated` or not."""
    key = salt ^ CRC_SEED
    contents = SegmentContents()
    records = contents.records
    damage = contents.damage
    view = memoryview(data)
    size = len(data)
    marks = preallocated
    # where the data ends: damage "to the end" reaches this far; from here on, only zeros
    limit = data_end(data, start) if marks else size
    pos = start
    close_at: int | None = None
    while pos < size:
        if pos >= limit:
            if close_at is None:
                contents.zero_from = pos
                break
            # close() cuts the zero tail before its marker: zeros after it are not ours
            what, end = "zero bytes", size
            close_at = None
            damage.append(Damage(pos, end - pos, what, True, len(records)))
            pos = end
            break
        end = -1     # where a damaged record is known to end; -1: search, limit: to the end
        if size - pos < RECORD_HEADER_SIZE:
            what, end = f"torn record header ({size - pos} of {RECORD_HEADER_SIZE} bytes)", limit
        else:
            length, payload_crc, header_crc = _unpack(data, pos)
            body = pos + RECORD_HEADER_SIZE
            if _crc32(view[pos:pos + 8], key) != header_crc:
                what = "record header fails its CRC check"
            elif length == CLOSE_LENGTH and payload_crc == key:
                close_at = pos
                pos = body
                continue
            elif marks and length == SYNC_LENGTH and payload_crc == key:
                contents.synced_to = pos
                close_at = None
                pos = body
                continue
            elif length > MAX_RECORD_SIZE:
                what = f"impossible record length {length}"
            elif length > size - body:
                what, end = f"torn record (length {length}, only {size - body} bytes present)", limit
            else:
                payload = data[body: body + length]
                if _crc32(payload, key) == payload_crc:
                    records.append(payload)
                    close_at = None
                    pos = body + length
                    continue
                what, end = "record fails its CRC check", body + length
        if not damage:
            contents.intact_end = pos
        if end < 0:
            found = next_intact(data, pos + 1, salt, marks)
            end = limit if found is None else found
        if damage and damage[-1].offset + damage[-1].length == pos:
            last = damage.pop()      # adjacent damaged ranges are one
            damage.append(Damage(last.offset, end - last.offset, last.what, last.after_close, last.records_before))
        else:
            damage.append(Damage(pos, end - pos, what, close_at is not None, len(records)))
        close_at = None
        pos = end
    if not damage:
        contents.intact_end = pos
    contents.close_at = close_at
    contents.data_end = limit
    return contents


def next_intact(data: bytes, pos: int, salt: int, marks: bool = True) -> int | None:
    """The first offset >= `pos` in `data` where an intact record, the clean-close marker or
    (if `marks`) a sync mark of a segment with `salt` starts, or None."""
    key = salt ^ CRC_SEED
    view = memoryview(data)
    size = len(data)
    last = size - RECORD_HEADER_SIZE
    q = pos
    while q <= last:
        if data[q] == 0 and data.startswith(_ZEROS, q):
            # Zero bytes never pass (an empty payload's CRC is the key, never 0): go to the
            # first position whose header bytes hold a nonzero byte.
            nonzero = _NONZERO.search(data, q)
            if nonzero is None:
                return None
            q = max(q + 1, nonzero.start() - RECORD_HEADER_SIZE + 1)
            continue
        length, payload_crc, header_crc = _unpack(data, q)
        if _crc32(view[q:q + 8], key) == header_crc:
            if length == CLOSE_LENGTH or (marks and length == SYNC_LENGTH):
                if payload_crc == key:
                    return q
            elif length <= size - q - RECORD_HEADER_SIZE:
                body = q + RECORD_HEADER_SIZE
                if _crc32(view[body:body + length], key) == payload_crc:
                    return q
        q += 1
    return None
