"""The on-disk format of one journal segment, and the file operations on segments.

A segment file is named ``{seq:020d}.seg`` and holds a header, then records:

    header  = magic "TJNL" | u16 version | u16 flags | u64 seq | u64 base | u64 prev_size
              | u32 crc32(previous 32 bytes)
    record  = u32 length | u32 crc32(payload, seeded with length ^ CRC_SEED) | payload

All integers are little-endian. ``seq`` repeats the number in the file name (a file renamed
by hand is caught). ``base`` is the seq of the segment that starts the journal this segment
belongs to: a segment with ``base == seq`` starts a journal (the first segment ever, or the
first segment written by a rewrite), and every older segment is obsolete once it exists.
``prev_size`` is the size the previous segment had when this one was started (0 for a start
segment): a previous segment that lost records at a record boundary would otherwise look
intact.

Seeding the record CRC with the length makes a damaged length field fail the check, and
the seed makes a run of zero bytes (a file extended but never written) fail it too.
"""
from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field

from ...errors import JournalCorrupt

MAGIC = b"TJNL"
VERSION = 1
SEGMENT_SUFFIX = ".seg"
# A rewrite writes its segments under this suffix and renames them into place when done.
TMP_SUFFIX = ".tmp"

_HEADER_BODY = struct.Struct("<4sHHQQQ")
_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER_BODY.size + _CRC.size
RECORD_HEADER = struct.Struct("<II")
RECORD_HEADER_SIZE = RECORD_HEADER.size
# Lengths are u32 on disk; stay well inside that so a length can never wrap.
MAX_RECORD_SIZE = 0x7FFF_FFFF
CRC_SEED = 0x5EED_1E55

_crc32 = zlib.crc32
_pack_record_header = RECORD_HEADER.pack


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


@dataclass(frozen=True)
class SegmentHeader:
    """A decoded segment header."""

    seq: int
    base: int
    prev_size: int


class BadHeader(Exception):
    """A segment header that is short or damaged; the message says how."""


def encode_header(seq: int, base: int, prev_size: int) -> bytes:
    """The header bytes of segment `seq` in the journal started by segment `base`, started
    when the previous segment held `prev_size` bytes (0 if seq == base)."""
    body = _HEADER_BODY.pack(MAGIC, VERSION, 0, seq, base, prev_size)
    return body + _CRC.pack(_crc32(body))


def decode_header(data: bytes, expected_seq: int) -> SegmentHeader:
    """Decode the first HEADER_SIZE bytes of a segment file.

    Raises BadHeader if the header is short, damaged, or names another segment, and
    JournalCorrupt if it is intact but written by an unknown format version (we must not
    "repair" a newer journal by deleting it)."""
    if len(data) == 0:
        raise BadHeader("empty file")
    if len(data) < HEADER_SIZE:
        raise BadHeader(f"half-written header ({len(data)} of {HEADER_SIZE} bytes)")
    body = data[: _HEADER_BODY.size]
    (crc,) = _CRC.unpack_from(data, _HEADER_BODY.size)
    magic, version, _flags, seq, base, prev_size = _HEADER_BODY.unpack(body)
    if magic != MAGIC:
        raise BadHeader("not a journal segment header (bad magic)")
    if crc != _crc32(body):
        raise BadHeader("header fails its CRC check")
    if version != VERSION:
        raise JournalCorrupt(f"segment {segment_name(expected_seq)} has format version {version}; "
                             f"this tether reads version {VERSION}")
    if seq != expected_seq:
        raise BadHeader(f"header names segment {seq}, not {expected_seq}")
    if base > seq or base == 0:
        raise BadHeader(f"header names an impossible base segment {base}")
    if (base == seq) != (prev_size == 0):
        raise BadHeader(f"header has an impossible previous segment size {prev_size}")
    return SegmentHeader(seq, base, prev_size)


def record_crc(payload: bytes) -> int:
    """The CRC stored beside `payload`."""
    return _crc32(payload, len(payload) ^ CRC_SEED)


def encode_records(records: list[bytes]) -> bytes:
    """The on-disk bytes of `records`, framed, in order."""
    parts: list[bytes] = []
    append = parts.append
    for payload in records:
        n = len(payload)
        append(_pack_record_header(n, _crc32(payload, n ^ CRC_SEED)))
        append(payload)
    return b"".join(parts)


@dataclass
class ScanResult:
    """What `scan_records` found: the intact records, where they end, and why it stopped
    early (None if the data ended cleanly on a record boundary)."""

    records: list[bytes] = field(default_factory=list)
    end: int = 0
    problem: str | None = None


def scan_records(data: bytes, start: int = HEADER_SIZE) -> ScanResult:
    """Parse records from `data[start:]`, stopping at the first torn or corrupt one."""
    result = ScanResult(end=start)
    records = result.records
    unpack = RECORD_HEADER.unpack_from
    size = len(data)
    pos = start
    while pos < size:
        if size - pos < RECORD_HEADER_SIZE:
            result.problem = f"torn record header ({size - pos} of {RECORD_HEADER_SIZE} bytes)"
            break
        length, crc = unpack(data, pos)
        body = pos + RECORD_HEADER_SIZE
        if length > size - body:
            result.problem = (f"torn record (length {length}, only {size - body} bytes present)")
            break
        payload = data[body: body + length]
        if _crc32(payload, length ^ CRC_SEED) != crc:
            result.problem = "record fails its CRC check"
            break
        records.append(payload)
        pos = body + length
    result.end = pos
    return result


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte of `data` is written (a regular-file write may be short)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def datasync(fd: int) -> None:
    """Flush `fd`'s data (and the metadata needed to read it back) to the disk."""
    # Looked up on each call so tests can count the calls with monkeypatch.
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # pragma: no cover - macOS has no fdatasync
        os.fsync(fd)


def fsync_directory(directory: str) -> None:
    """Make file creations, renames and deletions in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_segment(path: str, seq: int, base: int, prev_size: int) -> int:
    """Create the segment file `path` holding just its header, flushed; return an fd that
    appends to it. The caller fsyncs the directory."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        write_all(fd, encode_header(seq, base, prev_size))
        datasync(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd
