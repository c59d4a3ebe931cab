"""The session wire format, in plain Python (twin of ext/codec.pyx).

A packet body is one or more frames back to back; a frame is a msgpack array whose first
element is the frame type (the table in ext/README.md, section "codec"). Encoding checks
every field and then lets ``msgpack.packb`` write the bytes; decoding lets a
``msgpack.Unpacker`` with tight limits parse each frame and then checks every field, so
this twin and the hand-written native reader accept and reject exactly the same bodies.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import msgpack

from tether.errors import ProtocolError

CREATE_SEQUENCE = 1
CREATE_SEQUENCE_RESPONSE = 2
CREATE_SEQUENCE_REFUSED = 3
DATA = 4
ACK = 5
# 6 was NACK, retired: loss detection needs no more than the ACK's ranges.
ACK_REQUESTED = 7
CLOSE_SEQUENCE = 8
CLOSE_SEQUENCE_RESPONSE = 9
TERMINATE_SEQUENCE = 10
TERMINATE_SEQUENCE_RESPONSE = 11
FAULT = 12
RESUME = 13
RESUME_RESPONSE = 14
RETRY = 15
PATH_CHALLENGE = 16
PATH_RESPONSE = 17

FRAME_NAMES: dict[int, str] = {
    CREATE_SEQUENCE: "CREATE_SEQUENCE",
    CREATE_SEQUENCE_RESPONSE: "CREATE_SEQUENCE_RESPONSE",
    CREATE_SEQUENCE_REFUSED: "CREATE_SEQUENCE_REFUSED",
    DATA: "DATA",
    ACK: "ACK",
    ACK_REQUESTED: "ACK_REQUESTED",
    CLOSE_SEQUENCE: "CLOSE_SEQUENCE",
    CLOSE_SEQUENCE_RESPONSE: "CLOSE_SEQUENCE_RESPONSE",
    TERMINATE_SEQUENCE: "TERMINATE_SEQUENCE",
    TERMINATE_SEQUENCE_RESPONSE: "TERMINATE_SEQUENCE_RESPONSE",
    FAULT: "FAULT",
    RESUME: "RESUME",
    RESUME_RESPONSE: "RESUME_RESPONSE",
    RETRY: "RETRY",
    PATH_CHALLENGE: "PATH_CHALLENGE",
    PATH_RESPONSE: "PATH_RESPONSE",
}

TOKEN_SIZE = 16              # Resume token: 128 random bits
ADDRESS_TOKEN_MAX = 64       # a server's address token is opaque to the client, and bounded
LENGTH_PREFIX_SIZE = 4       # TCP: 4-byte big-endian body length before each packet
U64_MAX = 2**64 - 1
MAX_BIN = 2**32 - 1          # bin32 is the largest msgpack binary

# Field kinds of the frames that have no list in them.
_UINT, _TOKEN, _ADDRESS_TOKEN, _STR, _BOOL = "uint", "token", "address_token", "str", "bool"
# The last fields of CREATE_SEQUENCE (ack_delay, address_token) and CREATE_SEQUENCE_RESPONSE
# (ack_delay) may be left out, from the end (_OPTIONAL).
_SIMPLE_FIELDS: dict[int, tuple[tuple[str, str], ...]] = {
    CREATE_SEQUENCE: (("session_id", _UINT), ("token", _TOKEN), ("window", _UINT),
                      ("max_message_size", _UINT), ("ordered", _BOOL), ("ack_delay", _UINT),
                      ("address_token", _ADDRESS_TOKEN)),
    CREATE_SEQUENCE_RESPONSE: (("session_id", _UINT), ("window", _UINT), ("max_message_size", _UINT),
                               ("ack_delay", _UINT)),
    CREATE_SEQUENCE_REFUSED: (("session_id", _UINT), ("reason", _STR)),
    ACK_REQUESTED: (("session_id", _UINT),),
    CLOSE_SEQUENCE: (("session_id", _UINT), ("last_number", _UINT)),
    CLOSE_SEQUENCE_RESPONSE: (("session_id", _UINT), ("last_number", _UINT)),
    TERMINATE_SEQUENCE: (("session_id", _UINT), ("last_number", _UINT)),
    TERMINATE_SEQUENCE_RESPONSE: (("session_id", _UINT),),
    FAULT: (("session_id", _UINT), ("code", _STR), ("reason", _STR)),
    RESUME: (("session_id", _UINT), ("token", _TOKEN)),
    RESUME_RESPONSE: (("session_id", _UINT),),
    RETRY: (("session_id", _UINT), ("address_token", _ADDRESS_TOKEN)),
    PATH_CHALLENGE: (("session_id", _UINT), ("data", _TOKEN)),
    PATH_RESPONSE: (("session_id", _UINT), ("data", _TOKEN)),
}
_OPTIONAL = {CREATE_SEQUENCE: 2, CREATE_SEQUENCE_RESPONSE: 1}


def _arities(frame_type: int) -> tuple[int, int]:
    """The fewest and most elements a simple frame has, type included."""
    most = len(_SIMPLE_FIELDS[frame_type]) + 1
    return most - _OPTIONAL.get(frame_type, 0), most


def _arity_text(frame_type: int) -> str:
    fewest, most = _arities(frame_type)
    if fewest == most:
        return str(most)
    return f"{fewest} or {most}" if fewest + 1 == most else f"{fewest} to {most}"


# ---------------------------------------------------------------- encoding

def _uint(value: object, what: str) -> int:
    """`value` as a plain int in 0..2**64-1 (bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not 0 <= value <= U64_MAX:
        raise ValueError(f"{what} must be in 0..2**64-1, got {value}")
    return int(value)


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be a bool, not {type(value).__name__}")
    return value


def _binary(value: object, what: str) -> bytes | bytearray | memoryview:
    """A payload as msgpack packs it: bytes, bytearray or a C-contiguous memoryview."""
    if isinstance(value, (bytes, bytearray)):
        data = value
    elif isinstance(value, memoryview):
        if not memoryview(value).c_contiguous:   # memoryview() raises on a released view
            raise TypeError(f"{what} must be a contiguous bytes-like object")
        data = value
    else:
        raise TypeError(f"{what} must be bytes, bytearray or memoryview, not {type(value).__name__}")
    if memoryview(data).nbytes > MAX_BIN:
        raise ValueError(f"{what} is larger than 2**32-1 bytes")
    return data


def _token(value: object, what: str) -> bytes:
    data = _binary(value, what)
    if memoryview(data).nbytes != TOKEN_SIZE:
        raise ValueError(f"{what} must be {TOKEN_SIZE} bytes, got {memoryview(data).nbytes}")
    return bytes(data)


def _address_token(value: object, what: str) -> bytes:
    data = _binary(value, what)
    if not 1 <= memoryview(data).nbytes <= ADDRESS_TOKEN_MAX:
        raise ValueError(f"{what} must be 1..{ADDRESS_TOKEN_MAX} bytes, got {memoryview(data).nbytes}")
    return bytes(data)


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} cannot be encoded as UTF-8") from None
    if len(encoded) > MAX_BIN:
        raise ValueError(f"{what} is longer than 2**32-1 bytes")
    return str(value)


def _sequence(value: object, what: str) -> list | tuple:
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{what} must be a list or tuple, not {type(value).__name__}")
    return value


def _slice(payloads: object, first_number: int, start: object, count: object) -> list:
    """payloads[start:start+count] (count -1: to the end), every bound checked."""
    seq = _sequence(payloads, "payloads")
    start = _index(start, "start", 0)
    count = _index(count, "count", -1)
    if start > len(seq):
        raise ValueError(f"start {start} is beyond the {len(seq)} payloads")
    if count == -1:
        count = len(seq) - start
    elif count > len(seq) - start:
        raise ValueError(f"count {count} is beyond the {len(seq) - start} payloads after start")
    if count == 0:
        raise ValueError("a DATA frame needs at least one payload")
    _check_numbers(first_number, count)
    return [_binary(seq[i], f"payloads[{i}]") for i in range(start, start + count)]


def _index(value: object, what: str, lowest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < lowest:
        raise ValueError(f"{what} must be >= {lowest}, got {value}")
    return int(value)


def _check_numbers(first_number: int, count: int) -> None:
    if first_number + count - 1 > U64_MAX:
        raise ValueError(f"first_number {first_number} + {count} payloads exceeds 2**64-1")


def _fragments(fragments: object, first_number: int, count: int) -> list[int]:
    """Validated (offset, index, total) triples, flattened for the wire."""
    flat: list[int] = []
    previous = -1
    for i, triple in enumerate(_sequence(fragments, "fragments")):
        what = f"fragments[{i}]"
        if not isinstance(triple, (list, tuple)) or len(triple) != 3:
            raise TypeError(f"{what} must be an (offset, index, total) tuple")
        offset, index, total = (_uint(v, f"{what}[{k}]") for k, v in enumerate(triple))
        problem = _fragment_problem(offset, index, total, previous, first_number, count)
        if problem:
            raise ValueError(f"{what}: {problem}")
        previous = offset
        flat += (offset, index, total)
    return flat


def _fragment_problem(offset: int, index: int, total: int, previous: int,
                      first_number: int, count: int) -> str | None:
    """Why a fragment triple is inconsistent with its frame, or None when it is sound."""
    if offset >= count:
        return f"offset {offset} is beyond the frame's {count} payloads"
    if offset <= previous:
        return "offsets must be strictly ascending"
    if total < 2:
        return f"total {total} must be at least 2"
    if index >= total:
        return f"index {index} must be below total {total}"
    message_first = first_number + offset - index   # number of fragment 0 of this message
    if message_first < 0 or message_first + total - 1 > U64_MAX:
        return "the message's numbers fall outside 0..2**64-1"
    return None


def _ranges(ranges: object) -> list[int]:
    """Validated ascending, disjoint (lo, hi) ranges, flattened for the wire."""
    flat: list[int] = []
    previous_hi = -1
    for i, pair in enumerate(_sequence(ranges, "ranges")):
        what = f"ranges[{i}]"
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise TypeError(f"{what} must be a (lo, hi) tuple")
        lo, hi = _uint(pair[0], f"{what} lo"), _uint(pair[1], f"{what} hi")
        if lo > hi:
            raise ValueError(f"{what}: lo {lo} > hi {hi}")
        if lo <= previous_hi:
            raise ValueError(f"{what}: ranges must be ascending and disjoint")
        previous_hi = hi
        flat += (lo, hi)
    return flat


def _pack(obj: list) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def encode_data(session_id: int, first_number: int, payloads: list, start: int = 0,
                count: int = -1, fragments: Iterable[tuple[int, int, int]] | None = None) -> bytes:
    """One DATA frame carrying payloads[start:start+count] (count -1: to the end), numbered
    first_number, first_number+1, ...; `fragments` marks payloads that are pieces of a larger
    message as (offset, index, total) (empty or None: none). TypeError/ValueError name a bad
    argument; at least one payload is required."""
    session_id = _uint(session_id, "session_id")
    first_number = _uint(first_number, "first_number")
    chosen = _slice(payloads, first_number, start, count)
    frame: list = [DATA, session_id, first_number, chosen]
    if fragments is not None:
        flat = _fragments(fragments, first_number, len(chosen))
        if flat:
            frame.append(flat)
    return _pack(frame)


def encode_ack(session_id: int, ranges: list[tuple[int, int]], buffer_remaining: int,
               final: bool) -> bytes:
    """One ACK frame: `ranges` ascending, disjoint (lo, hi) pairs (may be empty)."""
    return _pack([ACK, _uint(session_id, "session_id"), _ranges(ranges),
                  _uint(buffer_remaining, "buffer_remaining"), _bool(final, "final")])


def encode_frame(frame: tuple) -> bytes:
    """Any frame, as the tuple decode_packet returns (DATA may omit its fragments);
    every field is checked (TypeError/ValueError naming it)."""
    _sequence(frame, "frame")
    if not frame:
        raise ValueError("frame is empty")
    frame_type = _uint(frame[0], "frame type")
    name = FRAME_NAMES.get(frame_type)
    if name is None:
        raise ValueError(f"unknown frame type {frame_type}")
    arity = len(frame)
    if frame_type == DATA:
        if arity not in (4, 5):
            raise ValueError(f"a DATA frame has 4 or 5 fields, got {arity}")
        return encode_data(frame[1], frame[2], frame[3],
                           fragments=frame[4] if arity == 5 else None)
    if frame_type == ACK:
        if arity != 5:
            raise ValueError(f"an ACK frame has 5 fields, got {arity}")
        return encode_ack(frame[1], frame[2], frame[3], frame[4])
    fields = _SIMPLE_FIELDS[frame_type]
    fewest, most = _arities(frame_type)
    if not fewest <= arity <= most:
        raise ValueError(f"a {name} frame has {_arity_text(frame_type)} fields, got {arity}")
    out: list = [frame_type]
    for (field, kind), value in zip(fields, frame[1:]):
        what = f"{name} {field}"
        if kind == _UINT:
            out.append(_uint(value, what))
        elif kind == _TOKEN:
            out.append(_token(value, what))
        elif kind == _ADDRESS_TOKEN:
            out.append(_address_token(value, what))
        elif kind == _STR:
            out.append(_text(value, what))
        else:
            out.append(_bool(value, what))
    return _pack(out)


def payload_sizes(payloads: list) -> tuple[int, int, bool]:
    """(total bytes, largest, all exactly bytes) of a list or tuple of payloads: what a
    sender checks before queueing a batch. TypeError names a payload that is not bytes-like."""
    items = _sequence(payloads, "payloads")
    total = largest = 0
    exact = True
    for i, item in enumerate(items):
        if type(item) is not bytes:
            exact = False
        size = memoryview(_binary(item, f"payloads[{i}]")).nbytes
        total += size
        largest = max(largest, size)
    return total, largest, exact


def split_data(session_id: int, first_number: int, payloads: list, max_body: int) -> list[bytes]:
    """DATA frames for consecutive payloads, greedily filled: each frame is at most max_body
    bytes, except that a payload too large for any frame gets a frame of its own."""
    session_id = _uint(session_id, "session_id")
    first_number = _uint(first_number, "first_number")
    seq = _sequence(payloads, "payloads")
    if isinstance(max_body, bool) or not isinstance(max_body, int):
        raise TypeError(f"max_body must be an int, not {type(max_body).__name__}")
    if max_body < 1:
        raise ValueError(f"max_body must be >= 1, got {max_body}")
    _check_numbers(first_number, len(seq))
    items = [_binary(p, f"payloads[{i}]") for i, p in enumerate(seq)]
    frames: list[bytes] = []
    start = 0
    while start < len(items):
        head = 2 + _uint_size(session_id) + _uint_size(first_number + start)  # fixarray, type
        size = _array_header_size(1) + _bin_size(items[start])
        end = start + 1
        while end < len(items):
            grown = size + _bin_size(items[end]) + _array_header_size(end + 1 - start) \
                - _array_header_size(end - start)
            if head + grown > max_body:
                break
            size, end = grown, end + 1
        frames.append(_pack([DATA, session_id, first_number + start, items[start:end]]))
        start = end
    return frames


def _uint_size(n: int) -> int:
    """Bytes msgpack uses for a non-negative int."""
    return 1 if n < 0x80 else 2 if n < 2**8 else 3 if n < 2**16 else 5 if n < 2**32 else 9


def _bin_size(data: bytes | bytearray | memoryview) -> int:
    """Bytes msgpack uses for a bin: header and data."""
    n = memoryview(data).nbytes
    return n + (2 if n < 2**8 else 3 if n < 2**16 else 5)


def _array_header_size(n: int) -> int:
    return 1 if n < 16 else 3 if n < 2**16 else 5


# ---------------------------------------------------------------- decoding

def _contiguous(data: object, what: str) -> bytes:
    """The bytes of a bytes-like object (TypeError for anything else)."""
    if isinstance(data, bytes):
        return data
    view = memoryview(data)      # TypeError: not bytes-like; ValueError: released view
    if not view.c_contiguous:
        raise TypeError(f"{what} must be a contiguous bytes-like object")
    return view.tobytes()


def _limit(value: object, what: str, lowest: int, highest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not lowest <= value <= highest:
        raise ValueError(f"{what} must be in {lowest}..{highest}, got {value}")
    return int(value)


def _kind_of(value: object) -> str:
    """The msgpack type a decoded value came from, for error messages."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "negative int" if value < 0 else "int"
    return {float: "float", str: "str", bytes: "bin", list: "array",
            dict: "map"}.get(type(value), "ext")


def _want_uint(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError(f"{what} must be an unsigned int, got {_kind_of(value)}")
    return value


def _want(value: object, kind: type, what: str) -> Any:
    if type(value) is not kind:
        expected = {bytes: "bin", str: "str", bool: "bool", list: "array"}[kind]
        raise ProtocolError(f"{what} must be {expected}, got {_kind_of(value)}")
    return value


def _decode_data(frame: list, max_message_size: int, budget: list[int]) -> tuple:
    if len(frame) not in (4, 5):
        raise ProtocolError(f"DATA frame has {len(frame)} elements, expected 4 or 5")
    session_id = _want_uint(frame[1], "DATA session_id")
    first_number = _want_uint(frame[2], "DATA first_number")
    payloads = _want(frame[3], list, "DATA payloads")
    if not payloads:
        raise ProtocolError("DATA frame carries no payloads")
    budget[0] -= len(payloads)
    if budget[0] < 0:
        raise ProtocolError("packet carries more payloads than max_frames")
    if first_number + len(payloads) - 1 > U64_MAX:
        raise ProtocolError("DATA message numbers exceed 2**64-1")
    for i, payload in enumerate(payloads):
        _want(payload, bytes, f"DATA payload {i}")
        if len(payload) > max_message_size:
            raise ProtocolError(f"DATA payload {i} is {len(payload)} bytes, over "
                                f"max_message_size {max_message_size}")
    fragments = None
    if len(frame) == 5:
        flat = _want(frame[4], list, "DATA fragments")
        if not flat or len(flat) % 3:
            raise ProtocolError("DATA fragments must be a non-empty flat list of "
                                "(offset, index, total) triples")
        fragments = []
        previous = -1
        for k in range(0, len(flat), 3):
            offset, index, total = (_want_uint(v, "DATA fragment field") for v in flat[k:k + 3])
            problem = _fragment_problem(offset, index, total, previous, first_number, len(payloads))
            if problem:
                raise ProtocolError(f"DATA fragment {k // 3}: {problem}")
            previous = offset
            fragments.append((offset, index, total))
    return (DATA, session_id, first_number, payloads, fragments)


def _decode_ack(frame: list) -> tuple:
    if len(frame) != 5:
        raise ProtocolError(f"ACK frame has {len(frame)} elements, expected 5")
    session_id = _want_uint(frame[1], "ACK session_id")
    flat = _want(frame[2], list, "ACK ranges")
    if len(flat) % 2:
        raise ProtocolError("ACK ranges must be a flat list of (lo, hi) pairs")
    ranges = []
    previous_hi = -1
    for k in range(0, len(flat), 2):
        lo = _want_uint(flat[k], "ACK range lo")
        hi = _want_uint(flat[k + 1], "ACK range hi")
        if lo > hi:
            raise ProtocolError(f"ACK range {k // 2}: lo {lo} > hi {hi}")
        if lo <= previous_hi:
            raise ProtocolError(f"ACK range {k // 2}: ranges must be ascending and disjoint")
        previous_hi = hi
        ranges.append((lo, hi))
    buffer_remaining = _want_uint(frame[3], "ACK buffer_remaining")
    final = _want(frame[4], bool, "ACK final")
    return (ACK, session_id, ranges, buffer_remaining, final)


def _decode_simple(frame_type: int, frame: list) -> tuple:
    name = FRAME_NAMES[frame_type]
    fields = _SIMPLE_FIELDS[frame_type]
    fewest, most = _arities(frame_type)
    if not fewest <= len(frame) <= most:
        raise ProtocolError(f"{name} frame has {len(frame)} elements, expected {_arity_text(frame_type)}")
    out: list = [frame_type]
    for (field, kind), value in zip(fields, frame[1:]):
        what = f"{name} {field}"
        if kind == _UINT:
            out.append(_want_uint(value, what))
        elif kind == _TOKEN:
            if len(_want(value, bytes, what)) != TOKEN_SIZE:
                raise ProtocolError(f"{what} must be {TOKEN_SIZE} bytes, got {len(value)}")
            out.append(value)
        elif kind == _ADDRESS_TOKEN:
            if not 1 <= len(_want(value, bytes, what)) <= ADDRESS_TOKEN_MAX:
                raise ProtocolError(f"{what} must be 1..{ADDRESS_TOKEN_MAX} bytes, got {len(value)}")
            out.append(value)
        elif kind == _STR:
            out.append(_want(value, str, what))
        else:
            out.append(_want(value, bool, what))
    return tuple(out)


def decode_packet(body: bytes, max_message_size: int = 65536, max_frames: int = 4096) -> list[tuple]:
    """Every frame of a packet body, as tuples (DATA: payloads list and fragments list or
    None; ACK: ranges as (lo, hi) tuples). Anything malformed, truncated, oversized (a
    payload over max_message_size; more than max_frames frames, or more payloads in total),
    wrong-typed, of an unknown frame type, or followed by trailing bytes raises ProtocolError."""
    data = _contiguous(body, "body")
    max_message_size = _limit(max_message_size, "max_message_size", 0, MAX_BIN)
    max_frames = _limit(max_frames, "max_frames", 1, MAX_BIN)
    if not data:
        raise ProtocolError("empty packet: a packet carries at least one frame")
    # Limits so that no length field makes msgpack allocate more than the body could hold;
    # the payload limit is checked afterwards so that its error says max_message_size.
    unpacker = msgpack.Unpacker(
        raw=False, strict_map_key=True, max_buffer_size=len(data), max_bin_len=len(data),
        max_str_len=len(data), max_array_len=len(data), max_map_len=0, max_ext_len=0)
    unpacker.feed(data)
    frames: list[tuple] = []
    budget = [max_frames]
    while unpacker.tell() < len(data):
        if len(frames) == max_frames:
            raise ProtocolError(f"packet carries more than max_frames={max_frames} frames")
        try:
            frame = unpacker.unpack()
        except msgpack.OutOfData:
            raise ProtocolError("truncated frame") from None
        except ValueError as exc:    # msgpack's FormatError, StackError, limits, bad UTF-8
            raise ProtocolError(f"malformed frame: {exc!r}") from None
        frame = _want(frame, list, "frame")
        if not frame:
            raise ProtocolError("frame is an empty array")
        frame_type = _want_uint(frame[0], "frame type")
        if frame_type == DATA:
            frames.append(_decode_data(frame, max_message_size, budget))
        elif frame_type == ACK:
            frames.append(_decode_ack(frame))
        elif frame_type in _SIMPLE_FIELDS:
            frames.append(_decode_simple(frame_type, frame))
        else:
            raise ProtocolError(f"unknown frame type {frame_type}")
    return frames


def decode_packets(bodies: list, max_message_size: int = 65536, max_frames: int = 4096) -> list:
    """decode_packet for each body of a list or tuple, in one call: a list with, for each
    body, its frames or the ProtocolError that body raised (a bad packet spoils no other).
    A body that is not bytes-like raises TypeError for the whole call."""
    seq = _sequence(bodies, "bodies")
    max_message_size = _limit(max_message_size, "max_message_size", 0, MAX_BIN)
    max_frames = _limit(max_frames, "max_frames", 1, MAX_BIN)
    out: list = []
    for i, body in enumerate(seq):
        _contiguous(body, f"bodies[{i}]")
        try:
            out.append(decode_packet(body, max_message_size, max_frames))
        except ProtocolError as exc:
            out.append(exc)
    return out


def data_runs(packets: list, session_id: int) -> tuple | None:
    """The receive fast path of a batch of decoded packets (lists of frames) that carry
    nothing but DATA without fragments, AckRequested and ACK (an ACK only in a packet that
    also carries DATA: over TCP an ack rides in the last data packet), all naming
    session_id: (steps, data_packets, ack_requested). steps are, in arrival order,
    (first_number, payloads) with the payloads of DATA frames that continue one another
    joined, and each ACK frame as decoded (a 5-tuple), which also ends the run before it;
    data_packets is how many packets carry DATA. None when any frame is something else
    (the caller then takes the packets frame by frame)."""
    steps: list = []
    run: list | None = None        # the payloads of the run that a DATA frame may continue
    run_next = 0
    data_packets = 0
    ack_requested = False
    for i, frames in enumerate(_sequence(packets, "packets")):
        has_data = has_ack = False
        for j, frame in enumerate(_sequence(frames, f"packets[{i}]")):
            if not isinstance(frame, tuple) or len(frame) < 2:
                raise TypeError(f"packets[{i}][{j}] must be a decoded frame tuple")
            if frame[1] != session_id:
                return None
            if frame[0] == DATA:
                if len(frame) != 5 or frame[4] is not None:
                    return None
                first, payloads = frame[2], frame[3]
                if run is not None and first == run_next:
                    run.extend(payloads)
                else:
                    run = list(payloads)
                    steps.append((first, run))
                run_next = first + len(payloads)
                has_data = True
            elif frame[0] == ACK_REQUESTED:
                ack_requested = True
            elif frame[0] == ACK:
                if len(frame) != 5:
                    return None
                steps.append(frame)
                run = None
                has_ack = True
            else:
                return None
        if has_data:
            data_packets += 1
        elif has_ack:
            return None
    return steps, data_packets, ack_requested


def session_groups(decoded: list, bodies: list, full_size: int) -> list[tuple]:
    """A batch of packets split by the session they name, for routing a run at a time:
    `decoded` is what decode_packets gave for `bodies`. Returns, in order, tuples
    (session_id, packets, sizes, full): consecutive packets (their frame lists) whose
    first frames name session_id, their lengths in bytes, and how many of those are at
    least full_size. A packet that did not decode is a group of its own, (None, [the
    error], [length], 0), and does not end the group around it (it names no session);
    each packet opening with Resume (type 13), checked on its own, is a group of its own."""
    decoded = _sequence(decoded, "decoded")
    bodies = _sequence(bodies, "bodies")
    if len(bodies) != len(decoded):
        raise ValueError(f"decoded has {len(decoded)} packets but bodies has {len(bodies)}")
    limit = _limit(full_size, "full_size", 0, sys.maxsize)
    groups: list[tuple] = []
    group: list | None = None      # [session_id, packets, sizes, full] of the open group
    for i, (frames, body) in enumerate(zip(decoded, bodies)):
        size = len(body)
        if type(frames) is not list or not frames:
            groups.append((None, [frames], [size], 0))
            continue
        first = frames[0]
        if not isinstance(first, tuple) or len(first) < 2:
            raise TypeError(f"decoded[{i}][0] must be a decoded frame tuple")
        alone = first[0] == RESUME
        if group is not None and not alone and first[1] == group[0]:
            group[1].append(frames)
            group[2].append(size)
            group[3] += int(size >= limit)
            continue
        if group is not None:
            groups.append(tuple(group))
            group = None
        if alone:
            groups.append((first[1], [frames], [size], int(size >= limit)))
        else:
            group = [first[1], [frames], [size], int(size >= limit)]
    if group is not None:
        groups.append(tuple(group))
    return groups


# ---------------------------------------------------------------- packets for datagrams

def _bytes_items(items: object, what: str) -> list:
    seq = _sequence(items, what)
    for i, item in enumerate(seq):
        if not isinstance(item, bytes):
            raise TypeError(f"{what}[{i}] must be bytes, not {type(item).__name__}")
    return list(seq)


def pack_frames(frames: list, max_packet_size: int) -> list[bytes]:
    """Encoded frames (bytes) joined greedily, in order, into packet bodies of at most
    max_packet_size bytes; a frame larger than that alone is a packet of its own."""
    items = _bytes_items(frames, "frames")
    limit = _limit(max_packet_size, "max_packet_size", 1, 2**63 - 1)
    packets: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for frame in items:
        if current and size + len(frame) > limit:
            packets.append(b"".join(current))
            current, size = [], 0
        current.append(frame)
        size += len(frame)
    if current:
        packets.append(b"".join(current))
    return packets


def segment_runs(packets: list, max_segments: int, max_bytes: int) -> list[tuple[bytes, int, int]]:
    """Packets (bytes) grouped for UDP segmentation offload, in order: a list of
    (buffer, segment_size, count) where buffer joins count consecutive packets that all
    have segment_size bytes except the last, which may be shorter. A run holds at most
    max_segments packets and max_bytes bytes (a packet larger than max_bytes is a run of
    its own); a run of one packet is that packet itself."""
    items = _bytes_items(packets, "packets")
    segments = _limit(max_segments, "max_segments", 1, 2**63 - 1)
    limit = _limit(max_bytes, "max_bytes", 1, 2**63 - 1)
    for i, packet in enumerate(items):
        if not packet:
            raise ValueError(f"packets[{i}] is empty")
    runs: list[tuple[bytes, int, int]] = []
    i = 0
    while i < len(items):
        run = [items[i]]
        segment = total = len(items[i])
        while i + len(run) < len(items) and len(run) < segments:
            nxt = items[i + len(run)]
            if len(nxt) > segment or total + len(nxt) > limit:
                break
            run.append(nxt)
            total += len(nxt)
            if len(nxt) < segment:
                break    # a shorter packet ends its run
        runs.append((b"".join(run), segment, len(run)))
        i += len(run)
    return runs


# ---------------------------------------------------------------- TCP framing

def frame_packet(body: bytes) -> bytes:
    """A packet for a TCP stream: 4-byte big-endian body length, then the body."""
    data = _contiguous(body, "body")
    if not data:
        raise ValueError("body is empty: a packet carries at least one frame")
    if len(data) > MAX_BIN:
        raise ValueError(f"body of {len(data)} bytes does not fit a 4-byte length")
    return len(data).to_bytes(LENGTH_PREFIX_SIZE, "big") + data


class PacketReader:
    """Cuts a TCP byte stream into packet bodies. A length prefix of 0 or over
    max_packet_size raises ProtocolError as soon as its 4 bytes arrive; after that the
    stream is out of step, so every later feed raises too."""

    def __init__(self, max_packet_size: int) -> None:
        self.max_packet_size = _limit(max_packet_size, "max_packet_size", 1, MAX_BIN)
        self._buffer = bytearray()
        self._offset = 0                 # start of the first unconsumed byte in _buffer
        self._failure: str | None = None

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole packet."""
        return len(self._buffer) - self._offset

    def feed(self, data: bytes) -> list[bytes]:
        """The packet bodies completed by `data`, in stream order."""
        if self._failure is not None:
            raise ProtocolError(f"stream already failed: {self._failure}")
        chunk = _contiguous(data, "data")
        self._buffer += chunk
        packets: list[bytes] = []
        buffer = self._buffer
        while len(buffer) - self._offset >= LENGTH_PREFIX_SIZE:
            start = self._offset + LENGTH_PREFIX_SIZE
            length = int.from_bytes(buffer[self._offset:start], "big")
            if length == 0 or length > self.max_packet_size:
                self._fail(f"packet length {length} is not in 1..{self.max_packet_size}")
            if len(buffer) - start < length:
                break
            packets.append(bytes(buffer[start:start + length]))
            self._offset = start + length
        # Drop what was consumed, once per feed: what stays is part of one packet, so each
        # byte is moved at most once.
        if self._offset:
            del buffer[:self._offset]
            self._offset = 0
        return packets

    def _fail(self, reason: str) -> None:
        self._failure = reason
        self._buffer = bytearray()
        self._offset = 0
        raise ProtocolError(reason)
