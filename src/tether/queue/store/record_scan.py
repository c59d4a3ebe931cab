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
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

from .segment import CLOSE_LENGTH, CRC_SEED, MAX_RECORD_SIZE, RECORD_HEADER, RECORD_HEADER_SIZE

_crc32 = zlib.crc32
_unpack = RECORD_HEADER.unpack_from
_ZEROS = bytes(RECORD_HEADER_SIZE)
_NONZERO = re.compile(rb"[^\x00]")


@dataclass(frozen=True)
class Damage:
    """A damaged byte range of a segment: `length` bytes from `offset`, and what is wrong at
    its start. `after_close` is True if it follows the clean-close marker."""

    offset: int
    length: int
    what: str
    after_close: bool = False


@dataclass
class SegmentContents:
    """What `scan_segment` found: every intact record in order, where the intact records before
    the first damage end, the damaged ranges, and the offset of the clean-close marker if it
    is the last thing in the segment."""

    records: list[bytes] = field(default_factory=list)
    intact_end: int = 0
    damage: list[Damage] = field(default_factory=list)
    close_at: int | None = None


def scan_segment(data: bytes, start: int, salt: int) -> SegmentContents:
    """Scan `data[start:]`, the records of a segment with `salt`."""
    key = salt ^ CRC_SEED
    contents = SegmentContents()
    records = contents.records
    damage = contents.damage
    view = memoryview(data)
    size = len(data)
    pos = start
    close_at: int | None = None
    while pos < size:
        end = -1     # where a damaged record is known to end; -1: search, size: to the end
        if size - pos < RECORD_HEADER_SIZE:
            what, end = f"torn record header ({size - pos} of {RECORD_HEADER_SIZE} bytes)", size
        else:
            length, payload_crc, header_crc = _unpack(data, pos)
            body = pos + RECORD_HEADER_SIZE
            if _crc32(view[pos:pos + 8], key) != header_crc:
                what = "record header fails its CRC check"
            elif length == CLOSE_LENGTH and payload_crc == key:
                close_at = pos
                pos = body
                continue
            elif length > MAX_RECORD_SIZE:
                what = f"impossible record length {length}"
            elif length > size - body:
                what, end = f"torn record (length {length}, only {size - body} bytes present)", size
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
            found = next_intact(data, pos + 1, salt)
            end = size if found is None else found
        if damage and damage[-1].offset + damage[-1].length == pos:
            last = damage.pop()      # adjacent damaged ranges are one
            damage.append(Damage(last.offset, end - last.offset, last.what, last.after_close))
        else:
            damage.append(Damage(pos, end - pos, what, close_at is not None))
        close_at = None
        pos = end
    if not damage:
        contents.intact_end = pos
    contents.close_at = close_at
    return contents


def next_intact(data: bytes, pos: int, salt: int) -> int | None:
    """The first offset >= `pos` in `data` where an intact record or the clean-close marker of
    a segment with `salt` starts, or None."""
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
            if length == CLOSE_LENGTH:
                if payload_crc == key:
                    return q
            elif length <= size - q - RECORD_HEADER_SIZE:
                body = q + RECORD_HEADER_SIZE
                if _crc32(view[body:body + length], key) == payload_crc:
                    return q
        q += 1
    return None
