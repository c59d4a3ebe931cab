"""The on-disk format of one journal segment (format version 3; version 2 is still read).

A segment file is named ``{seq:020d}.seg`` and holds a header, then records:

    header  = magic "TJNL" | u16 version | u16 flags | u64 seq | u64 base | u64 prev_size
              | u32 salt | u32 crc32(previous 36 bytes)                        (40 bytes)
    record  = u32 length | u32 crc32(payload, key) | u32 crc32(previous 8 bytes, key) | payload
    key     = salt ^ CRC_SEED

All integers are little-endian. ``seq`` repeats the number in the file name (a file renamed
by hand is caught). ``base`` is the seq of the segment that starts the journal this segment
belongs to: a segment with ``base == seq`` starts a journal (the first segment ever, or the
first segment written by a rewrite), and every older segment is obsolete once it exists.
``prev_size`` is the size the previous segment had when this one was started (0 for a start
segment): a previous segment that lost records at a record boundary would otherwise look
intact. ``salt`` is drawn at random when a journal starts and copied into each of its
segments.

Why each record header carries its own CRC, seeded with the salt (new in version 2; version 1
had ``u32 length | u32 crc`` and no salt):

* After damage, recovery looks for the next intact record byte by byte. A header check makes
  each try cost a CRC of 8 bytes; without it every position whose length field happened to
  fit cost a CRC of that length, so the search grew with the cube of the damaged region
  (a torn 16 MiB record of binary data took minutes).
* A header whose own CRC holds but whose length runs past the end of the file is a record
  cut short: nothing after its header can be another record, so no search is needed.
* Unknown to anyone who cannot read the file, the salt keeps a record framed inside a
  message body (by a client, on purpose) from passing for a real record when the record
  around it is damaged or torn.

The clean-close marker (version 2) is a record header alone with length CLOSE_LENGTH (never a
record's length), written and synced by ``close()`` as the last bytes of the journal and
removed again by the next open before it appends. A journal that ends with it was closed
cleanly, so damage after it, or in a record before it, cannot be a write cut short by a
crash: recovery refuses to open it instead of truncating acknowledged records.

Seeding the record CRC with the salt also makes a run of zero bytes (a file extended but never
written) fail it: an empty payload's CRC is the key itself, which is never zero.

Version 3 (this tether writes it) keeps version 2's layout and gives the header's `flags` a
meaning: FLAG_PREALLOCATED (bit 0) says the segment was written preallocated, and only such a
segment may hold the two things below; other bits are refused. A segment without it is read
exactly as in version 2.

* Zero-filled space ahead of the records. While a segment is appended under fsync "always",
  the journal writes zeros (real writes, synced, never fallocate) ahead of the last record,
  so a batch's fdatasync overwrites blocks the file already has and need not commit a new
  file size. The data of a segment therefore ends at its last record: what follows it up to
  the end of the file is all zeros (the "zero tail"), which is not damage. A finished segment
  is cut to its last record before the next one starts, and `close()` cuts the zero tail off
  before its marker, so `prev_size` and closed segments mean what they meant in version 2.
* The sync mark: a record header alone with length SYNC_LENGTH (never a record's length),
  written at the start of a batch that is written after a completed fdatasync of everything
  before it (every batch under "always"). Intact, it proves that every byte before it was on
  the disk; it is not a record.

Recovery's rule for the last segment when it is preallocated (survey.py applies it): a crash
may leave any mix of the sectors (SECTOR_SIZE) written since the last completed sync -- a
later sector on the disk, an earlier one still zero -- and zeros after them. So, going back
from the end of the data, a damaged range belongs to a torn write if no intact sync mark
follows it and it holds a sector the write did not reach: a whole sector of zeros, or, for
the range where the torn write starts, the zeros from its start to the end of its sector
(that sector also held synced bytes, written then with zeros after them); the last range
may instead be a record cut short by the end of the data. The segment is cut where the
first of these ranges starts, with every record after it: no sync mark follows them, so
they were never synced (under "always": never acknowledged). Damage before an intact sync
mark, damage with intact records after it that no unwritten sector explains (a changed
byte), and damage after the clean-close marker (zeros included) are refused, as in
version 2. What no rule can tell apart: damage in the last synced batch that looks like an
unwritten sector, with nothing synced after it, is cut as a torn write, as a damaged last
record is in the appending layout.
"""
from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass

from ...errors import JournalCorrupt

MAGIC = b"TJNL"
VERSION = 3
# Versions this tether reads: 2 (no zero tail, no sync marks) and 3.
READ_VERSIONS = (2, 3)
# Header flag (version 3): the segment is preallocated (may hold sync marks and a zero tail).
FLAG_PREALLOCATED = 0x0001
SEGMENT_SUFFIX = ".seg"
# A rewrite writes its segments under this suffix and renames them into place when done.
TMP_SUFFIX = ".tmp"

_HEADER_BODY = struct.Struct("<4sHHQQQI")
_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER_BODY.size + _CRC.size
_V1_HEADER_BODY_SIZE = 32          # version 1: the same fields without the salt
_SALT_OFFSET = _HEADER_BODY.size - 4
RECORD_HEADER = struct.Struct("<III")     # length, payload CRC, header CRC
RECORD_HEADER_SIZE = RECORD_HEADER.size
_LENGTH_AND_CRC = struct.Struct("<II")
# Lengths are u32 on disk; stay well inside that so a length can never wrap.
MAX_RECORD_SIZE = 0x7FFF_FFFF
# The length field of the clean-close marker: above MAX_RECORD_SIZE, so never a record's.
CLOSE_LENGTH = 0xFFFF_FFFF
# The length field of the sync mark (version 3), likewise.
SYNC_LENGTH = 0xFFFF_FFFE
# The unit a disk writes whole: a torn write leaves each such sector old or new.
SECTOR_SIZE = 512
CRC_SEED = 0x5EED_1E55

_crc32 = zlib.crc32
_pack_length_and_crc = _LENGTH_AND_CRC.pack
_pack_crc = _CRC.pack


def segment_name(seq: int) -> str:
    """The file name of segment number `seq`."""
    return f"{seq:020d}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str, suffix: str = SEGMENT_SUFFIX) -> int | None:
    """The segment number in a file name made by `segment_name` (+ `suffix`), else None."""
    if not name.endswith(suffix):
        return None
    stem = name[: -len(suffix)]
    if len(stem) != 20 or not stem.isdigit():
        return None
    return int(stem)


def new_salt() -> int:
    """A random salt for a new journal."""
    while True:
        salt = int.from_bytes(os.urandom(4), "little")
        if salt != CRC_SEED:     # the key must not be 0 (zero-filled bytes would pass)
            return salt


def record_key(salt: int) -> int:
    """The CRC seed of the records of a segment with `salt`."""
    return salt ^ CRC_SEED


@dataclass(frozen=True)
class SegmentHeader:
    """A decoded segment header."""

    seq: int
    base: int
    prev_size: int
    salt: int
    version: int = VERSION
    preallocated: bool = False


class BadHeader(Exception):
    """A segment header that is short or damaged; the message says how. `stub` is True for
    a file that is empty, shorter than a header, or a zero-filled header with nothing after
    it: what a crash leaves of a segment that was being created."""

    def __init__(self, message: str, stub: bool = False) -> None:
        super().__init__(message)
        self.stub = stub


def encode_header(seq: int, base: int, prev_size: int, salt: int, preallocated: bool = False,
                  version: int = VERSION) -> bytes:
    """The header bytes of segment `seq` in the journal started by segment `base` with
    `salt`, started when the previous segment held `prev_size` bytes (0 if seq == base),
    flagged FLAG_PREALLOCATED if `preallocated`. (`version`: tests write version-2 segments.)"""
    flags = FLAG_PREALLOCATED if preallocated else 0
    body = _HEADER_BODY.pack(MAGIC, version, flags, seq, base, prev_size, salt)
    return body + _CRC.pack(_crc32(body))


def salt_field(head: bytes) -> int | None:
    """The salt a (possibly damaged) header's bytes hold, if they are long enough."""
    if len(head) < _SALT_OFFSET + 4:
        return None
    return int.from_bytes(head[_SALT_OFFSET:_SALT_OFFSET + 4], "little")


def decode_header(head: bytes, expected_seq: int, file_size: int, path: str) -> SegmentHeader:
    """Decode the first HEADER_SIZE bytes `head` of the segment file `path` (`file_size`
    bytes long).

    Raises BadHeader if the header is short, damaged, or names another segment, and
    JournalCorrupt if it is intact but of another format version (we must not "repair" a
    journal of another version by rewriting it)."""
    if file_size == 0:
        raise BadHeader("empty file", stub=True)
    if file_size < HEADER_SIZE:
        raise BadHeader(f"half-written header ({file_size} of {HEADER_SIZE} bytes)", stub=True)
    if file_size == HEADER_SIZE and not any(head):
        raise BadHeader("zero-filled header", stub=True)
    body = head[: _HEADER_BODY.size]
    (crc,) = _CRC.unpack_from(head, _HEADER_BODY.size)
    magic, version, flags, seq, base, prev_size, salt = _HEADER_BODY.unpack(body)
    if magic != MAGIC:
        raise BadHeader("not a journal segment header (bad magic)")
    if version not in READ_VERSIONS:
        v1 = version == 1 and _CRC.unpack_from(head, _V1_HEADER_BODY_SIZE)[0] == _crc32(head[:_V1_HEADER_BODY_SIZE])
        if v1 or crc == _crc32(body):
            raise JournalCorrupt(f"segment {path} has format version {version}; this tether reads versions "
                                 f"{' and '.join(map(str, READ_VERSIONS))} only", path=path, offset=4)
        raise BadHeader("header fails its CRC check")
    if crc != _crc32(body):
        raise BadHeader("header fails its CRC check")
    if version == 2:
        flags = 0       # version 2 wrote 0 and never read them
    elif flags & ~FLAG_PREALLOCATED:
        raise JournalCorrupt(f"segment {path} has header flags {flags:#06x} this tether does not know",
                             path=path, offset=6)
    if seq != expected_seq:
        raise BadHeader(f"header names segment {seq}, not {expected_seq}")
    if base > seq or base == 0:
        raise BadHeader(f"header names an impossible base segment {base}")
    if (base == seq) != (prev_size == 0):
        raise BadHeader(f"header has an impossible previous segment size {prev_size}")
    return SegmentHeader(seq, base, prev_size, salt, version, bool(flags & FLAG_PREALLOCATED))


def encode_records(records: list[bytes], salt: int) -> bytes:
    """The on-disk bytes of `records`, framed for a segment with `salt`, in order."""
    key = salt ^ CRC_SEED
    parts: list[bytes] = []
    append = parts.append
    for payload in records:
        head = _pack_length_and_crc(len(payload), _crc32(payload, key))
        append(head)
        append(_pack_crc(_crc32(head, key)))
        append(payload)
    return b"".join(parts)


def _bare_header(length: int, salt: int) -> bytes:
    key = salt ^ CRC_SEED
    head = _pack_length_and_crc(length, _crc32(b"", key))
    return head + _pack_crc(_crc32(head, key))


def close_marker(salt: int) -> bytes:
    """The clean-close marker of a segment with `salt`."""
    return _bare_header(CLOSE_LENGTH, salt)


def sync_mark(salt: int) -> bytes:
    """The sync mark of a version-3 segment with `salt` (see the module docstring)."""
    return _bare_header(SYNC_LENGTH, salt)
