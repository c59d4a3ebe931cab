"""codec: both twins round-trip every frame type; DATA and ACK are byte-identical to
msgpack.packb; native and reference encode the same bytes and decode the same frames; fuzzed,
truncated, bit-flipped and hostile bodies make both decoders agree, failing only with
ProtocolError and never allocating by a length field; PacketReader cuts any chunking of a
stream into the same packets."""
from __future__ import annotations

import random
import tracemalloc

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.errors import ProtocolError

from conftest import twins

native, reference = twins("codec")
MODULES = [native, reference]
MAX = 2**64 - 1
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(params=MODULES, ids=["native", "reference"])
def codec(request):
    return request.param


def packb(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def decoded(module, body, **limits):
    """('ok', repr of the frames) or ('error',): repr keeps True apart from 1 and lists
    apart from tuples. Any exception but ProtocolError fails the test."""
    try:
        return "ok", repr(module.decode_packet(body, **limits))
    except ProtocolError:
        return ("error",)


def agree(body, **limits):
    """Both decoders give the same frames, or both raise ProtocolError; returns the outcome."""
    outcome = decoded(native, body, **limits)
    assert outcome == decoded(reference, body, **limits), body.hex()
    return outcome


def raised(call, *args, **kwargs):
    """The exception type a call raises (None if it returns)."""
    try:
        call(*args, **kwargs)
    except Exception as exc:
        return type(exc)
    return None


# ---------------------------------------------------------------- frame strategies

u64 = st.one_of(
    st.sampled_from([0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63, MAX]),
    st.integers(0, MAX),
)
token = st.binary(min_size=16, max_size=16)
address_token = st.binary(min_size=1, max_size=64)
text = st.text(max_size=40)
payload = st.binary(max_size=300)


@st.composite
def data_frames(draw):
    count = draw(st.integers(1, 20))
    payloads = draw(st.lists(payload, min_size=count, max_size=count))
    first = draw(st.one_of(st.integers(0, MAX - count + 1), st.just(MAX - count + 1)))
    fragments = None
    if draw(st.booleans()):
        offsets = sorted(draw(st.sets(st.integers(0, count - 1), min_size=1)))
        fragments = []
        for offset in offsets:
            total = draw(st.integers(2, 10))
            index = draw(st.integers(0, min(total - 1, first + offset)))
            if first + offset - index + total - 1 > MAX:
                continue
            fragments.append((offset, index, total))
        fragments = fragments or None
    return (4, draw(u64), first, payloads, fragments)


@st.composite
def ack_frames(draw):
    bounds = sorted(draw(st.sets(u64, max_size=24)))
    if len(bounds) % 2:
        bounds.pop()
    ranges = [(bounds[i], bounds[i + 1]) for i in range(0, len(bounds), 2)]
    if ranges and draw(st.booleans()):
        ranges[0] = (ranges[0][0], ranges[0][0])      # a single-number range
    return (5, draw(u64), ranges, draw(u64), draw(st.booleans()))


frames = st.one_of(
    st.tuples(st.just(1), u64, token, u64, u64, st.booleans()),
    st.tuples(st.just(1), u64, token, u64, u64, st.booleans(), u64),
    st.tuples(st.just(1), u64, token, u64, u64, st.booleans(), u64, address_token),
    st.tuples(st.just(2), u64, u64, u64),
    st.tuples(st.just(2), u64, u64, u64, u64),
    st.tuples(st.just(3), u64, text),
    data_frames(),
    ack_frames(),
    st.tuples(st.just(7), u64),
    st.tuples(st.sampled_from([8, 9, 10]), u64, u64),
    st.tuples(st.just(11), u64),
    st.tuples(st.just(12), u64, text, text),
    st.tuples(st.just(13), u64, token),
    st.tuples(st.just(14), u64),
    st.tuples(st.just(15), u64, address_token),
    st.tuples(st.sampled_from([16, 17]), u64, token),
)


def wire_form(frame: tuple) -> list:
    """The msgpack array a frame is on the wire (the table in ext/README.md)."""
    if frame[0] == 4:
        out = [4, frame[1], frame[2], list(frame[3])]
        if frame[4]:
            out.append([n for triple in frame[4] for n in triple])
        return out
    if frame[0] == 5:
        return [5, frame[1], [n for pair in frame[2] for n in pair], frame[3], frame[4]]
    return list(frame)


# ---------------------------------------------------------------- round trips

@SETTINGS
@given(st.lists(frames, min_size=1, max_size=6))
def test_every_frame_round_trips_and_twins_agree(packet):
    bodies = [native.encode_frame(frame) for frame in packet]
    assert bodies == [reference.encode_frame(frame) for frame in packet]
    for frame, body in zip(packet, bodies):
        assert body == packb(wire_form(frame))       # the wire format is msgpack's own
    body = b"".join(bodies)
    for module in MODULES:
        assert repr(module.decode_packet(body)) == repr(list(packet))


@SETTINGS
@given(data_frames(), st.integers(0, 5), st.integers(-1, 5))
def test_encode_data_is_msgpack_of_the_slice(frame, start, count):
    _, session_id, first, payloads, fragments = frame
    start = min(start, len(payloads) - 1)
    if count != -1:
        count = min(max(count, 1), len(payloads) - start)
    chosen = payloads[start:] if count == -1 else payloads[start:start + count]
    expected = packb([4, session_id, first, chosen])
    for module in MODULES:
        assert module.encode_data(session_id, first, payloads, start, count) == expected
    if fragments:
        expected = packb([4, session_id, first, payloads,
                          [n for triple in fragments for n in triple]])
        for module in MODULES:
            assert module.encode_data(session_id, first, payloads, fragments=fragments) == expected


@SETTINGS
@given(ack_frames())
def test_encode_ack_is_msgpack(frame):
    _, session_id, ranges, remaining, final = frame
    expected = packb([5, session_id, [n for pair in ranges for n in pair], remaining, final])
    for module in MODULES:
        assert module.encode_ack(session_id, ranges, remaining, final) == expected
        assert module.encode_ack(session_id, tuple(ranges), remaining, final) == expected


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 70000])
def test_bin_header_boundaries(codec, size):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    body = codec.encode_data(1, 1, [data])
    assert body == packb([4, 1, 1, [data]])
    assert codec.decode_packet(body, max_message_size=size)[0][3] == [data]


@pytest.mark.parametrize("count", [15, 16, 65535, 65536])
def test_array_header_boundaries(codec, count):
    payloads = [b""] * count
    body = codec.encode_data(9, 1, payloads)
    assert body == packb([4, 9, 1, payloads])
    assert codec.decode_packet(body, max_frames=count)[0][3] == payloads
    ranges = [(2 * i, 2 * i) for i in range(count // 2)]
    assert codec.encode_ack(9, ranges, 0, True) == packb([5, 9, [n for r in ranges for n in r], 0, True])


def test_bytes_like_payloads_encode_like_bytes(codec):
    expected = packb([4, 1, 5, [b"abc", b"de", b"", b"xyz"]])
    payloads = [bytearray(b"abc"), memoryview(b"de"), b"", memoryview(b"-xyz-")[1:4]]
    assert codec.encode_data(1, 5, payloads) == expected


def test_decode_accepts_any_bytes_like_body(codec):
    body = codec.encode_data(3, 4, [b"one", b"two"]) + codec.encode_ack(3, [(1, 2)], 7, False)
    expected = codec.decode_packet(body)
    assert codec.decode_packet(bytearray(body)) == expected
    assert codec.decode_packet(memoryview(body)) == expected
    assert codec.decode_packet(memoryview(b"xx" + body)[2:]) == expected


def test_decode_rejects_what_is_not_a_contiguous_bytes_like_body(codec):
    with pytest.raises(TypeError):
        codec.decode_packet("not bytes")
    with pytest.raises(TypeError):
        codec.decode_packet(memoryview(b"\x92\x07\x01" * 2)[::2])


def test_decoded_numbers_are_plain_ints_and_payloads_plain_bytes(codec):
    [frame] = codec.decode_packet(codec.encode_data(MAX, MAX - 1, [b"a", b"b"]))
    assert frame == (4, MAX, MAX - 1, [b"a", b"b"], None)
    assert all(type(v) is int for v in frame[:3])
    assert all(type(p) is bytes for p in frame[3])


# ---------------------------------------------------------------- split_data

@SETTINGS
@given(st.lists(st.binary(max_size=400), max_size=60), st.integers(1, 3000), u64)
def test_split_data_fills_frames_greedily_within_max_body(payloads, max_body, session_id):
    first = 1
    split = native.split_data(session_id, first, payloads, max_body)
    assert split == reference.split_data(session_id, first, payloads, max_body)
    got, number = [], first
    for body in split:
        [frame] = native.decode_packet(body, max_frames=len(payloads))
        assert frame[1] == session_id and frame[2] == number
        assert len(body) <= max_body or len(frame[3]) == 1    # one payload too big on its own
        number += len(frame[3])
        got += frame[3]
    assert got == payloads
    # Greedy: no frame could have taken the first payload of the next one.
    decoded_frames = [native.decode_packet(body, max_frames=len(payloads))[0] for body in split]
    for frame, following in zip(decoded_frames, decoded_frames[1:]):
        grown = native.encode_data(session_id, frame[2], frame[3] + following[3][:1])
        assert len(grown) > max_body


def test_split_data_datagram_sized_bodies(codec):
    payloads = [bytes([i % 256]) * 64 for i in range(5000)]
    split = codec.split_data(77, 1000, payloads, 60_000)
    assert all(len(body) <= 60_000 for body in split)
    assert len(split) == 6            # 66 bytes a message: ~908 per 60 KB body
    frames = [codec.decode_packet(body)[0] for body in split]
    assert [p for f in frames for p in f[3]] == payloads
    assert [f[2] for f in frames] == [1000 + sum(len(g[3]) for g in frames[:i]) for i in range(len(frames))]


def test_split_data_empty_and_bad_arguments(codec):
    assert codec.split_data(1, 1, [], 100) == []
    with pytest.raises(ValueError):
        codec.split_data(1, 1, [b"x"], 0)
    with pytest.raises(TypeError):
        codec.split_data(1, 1, [b"x"], 1.5)
    with pytest.raises(TypeError):
        codec.split_data(1, 1, [b"x", "y"], 100)
    with pytest.raises(ValueError):
        codec.split_data(1, MAX, [b"x", b"y"], 100)   # MAX + 1 is not a number


# ---------------------------------------------------------------- encode argument errors

BAD_CALLS = [
    ("encode_data", (-1, 1, [b"x"]), {}),
    ("encode_data", (2**64, 1, [b"x"]), {}),
    ("encode_data", (True, 1, [b"x"]), {}),
    ("encode_data", (1, 1.0, [b"x"]), {}),
    ("encode_data", (1, 1, b"x"), {}),
    ("encode_data", (1, 1, []), {}),
    ("encode_data", (1, 1, ["x"]), {}),
    ("encode_data", (1, 1, [b"x", 3]), {}),
    ("encode_data", (1, 1, [memoryview(b"abcd")[::2]]), {}),
    ("encode_data", (1, MAX, [b"x", b"y"]), {}),
    ("encode_data", (1, 1, [b"x"]), {"start": 2}),
    ("encode_data", (1, 1, [b"x"]), {"start": -1}),
    ("encode_data", (1, 1, [b"x"]), {"start": 1}),
    ("encode_data", (1, 1, [b"x"]), {"count": 2}),
    ("encode_data", (1, 1, [b"x"]), {"count": -2}),
    ("encode_data", (1, 1, [b"x"]), {"count": 0}),
    ("encode_data", (1, 1, [b"x"]), {"start": 2**70}),
    ("encode_data", (1, 1, [b"x"]), {"count": "1"}),
    ("encode_data", (1, 1, [b"x", b"y"]), {"fragments": [(2, 0, 2)]}),
    ("encode_data", (1, 1, [b"x", b"y"]), {"fragments": [(1, 0, 2), (1, 1, 2)]}),
    ("encode_data", (1, 1, [b"x", b"y"]), {"fragments": [(0, 2, 2)]}),
    ("encode_data", (1, 1, [b"x", b"y"]), {"fragments": [(0, 0, 1)]}),
    ("encode_data", (1, 1, [b"x", b"y"]), {"fragments": [(0, 2, 3)]}),   # message would start at -1
    ("encode_data", (1, MAX - 1, [b"x", b"y"]), {"fragments": [(1, 0, 2)]}),
    ("encode_data", (1, 1, [b"x", b"y"]), {"fragments": [(0, 1)]}),
    ("encode_data", (1, 1, [b"x", b"y"]), {"fragments": (0, 1, 2)}),
    ("encode_data", (1, 1, [b"x", b"y"]), {"fragments": 5}),
    ("encode_ack", (1, [(2, 1)], 0, False), {}),
    ("encode_ack", (1, [(1, 2), (2, 3)], 0, False), {}),
    ("encode_ack", (1, [(5, 6), (1, 2)], 0, False), {}),
    ("encode_ack", (1, [(1, 2, 3)], 0, False), {}),
    ("encode_ack", (1, [[1, -2]], 0, False), {}),
    ("encode_ack", (1, [(1, 2)], 0, 1), {}),
    ("encode_ack", (1, [(1, 2)], -1, True), {}),
    ("encode_ack", (1, {(1, 2)}, 0, True), {}),
    ("encode_frame", ((),), {}),
    ("encode_frame", ([0, 1],), {}),
    ("encode_frame", ((18, 1),), {}),
    ("encode_frame", ((1, 1, b"k" * 16, 8, 100, True, b""),), {}),
    ("encode_frame", ((1, 1, b"k" * 16, 8, 100, True, b"t" * 65),), {}),
    ("encode_frame", ((1, 1, b"k" * 16, 8, 100, True, "token"),), {}),
    ("encode_frame", ((1, 1, b"k" * 16, 8, 100, True, b"t", b"t"),), {}),
    ("encode_frame", ((1, 1, b"k" * 16, 8, 100),), {}),
    ("encode_frame", ((15, 1),), {}),
    ("encode_frame", ((15, 1, b""),), {}),
    ("encode_frame", ((16, 1, b"c" * 8),), {}),
    ("encode_frame", ((17, 1, b"c" * 16, b"c"),), {}),
    ("encode_frame", ("7",), {}),
    ("encode_frame", ((7, 1, 2),), {}),
    ("encode_frame", ((4, 1, 2),), {}),
    ("encode_frame", ((5, 1, [], 0),), {}),
    ("encode_frame", ((1, 1, b"short", 8, 100, True),), {}),
    ("encode_frame", ((1, 1, "x" * 16, 8, 100, True),), {}),
    ("encode_frame", ((1, 1, b"k" * 16, 8, 100, 1),), {}),
    ("encode_frame", ((3, 1, b"reason"),), {}),
    ("encode_frame", ((12, 1, "code", "\ud800"),), {}),
    ("encode_frame", ((6, 1, [1, -1]),), {}),
    ("encode_frame", ((6, 1, [1, 2]),), {}),       # NACK's number, retired
    ("encode_frame", ((13, 1, bytearray(17)),), {}),
    ("encode_frame", ((7, None),), {}),
    ("frame_packet", (b"",), {}),
    ("frame_packet", ("abc",), {}),
    ("decode_packet", (b"\x92\x07\x01",), {"max_message_size": -1}),
    ("decode_packet", (b"\x92\x07\x01",), {"max_frames": 0}),
    ("decode_packet", (b"\x92\x07\x01",), {"max_frames": 1.0}),
]


@pytest.mark.parametrize("name,args,kwargs", BAD_CALLS)
def test_bad_arguments_raise_the_same_error_in_both_twins(name, args, kwargs):
    expected = raised(getattr(reference, name), *args, **kwargs)
    assert expected in (TypeError, ValueError), expected
    assert raised(getattr(native, name), *args, **kwargs) is expected


def test_error_messages_name_the_argument(codec):
    with pytest.raises(TypeError, match=r"payloads\[1\]"):
        codec.encode_data(1, 1, [b"x", "y"])
    with pytest.raises(ValueError, match="first_number"):
        codec.encode_data(1, -5, [b"x"])
    with pytest.raises(ValueError, match=r"ranges\[1\]"):
        codec.encode_ack(1, [(1, 2), (2, 3)], 0, False)
    with pytest.raises(ValueError, match="token"):
        codec.encode_frame((13, 1, b"short"))


def test_good_variants_encode_identically():
    from enum import IntEnum

    class Kind(IntEnum):
        RESUME = 13

    for frame in [(Kind.RESUME, 5, bytearray(16)), (4, 1, 2, (b"x",)), [4, 1, 2, [b"x"], []],
                  (4, 1, 2, [b"x", b"y"], [[0, 1, 2]]), (5, 1, [[1, 2]], 3, True)]:
        assert native.encode_frame(frame) == reference.encode_frame(frame)


# ---------------------------------------------------------------- strictness

def test_non_canonical_but_unsigned_integers_are_accepted():
    # uint64 holding 1, int8 holding 5, int64 holding 7: msgpack itself reads them as ints.
    body = b"\x93\x08\xcf" + (1).to_bytes(8, "big") + b"\xd0\x05"
    assert agree(body) == ("ok", repr([(8, 1, 5)]))
    assert agree(b"\x92\xd3" + (7).to_bytes(8, "big") + b"\x01") == ("ok", repr([(7, 1)]))


REJECTED = {
    "empty body": b"",
    "not an array": b"\x07",
    "empty frame": b"\x90",
    "unknown type 0": b"\x92\x00\x01",
    "unknown type 18": b"\x92\x12\x01",
    "type is negative": b"\x92\xff\x01",
    "type is a str": b"\x92\xa1\x07\x01",
    "wrong arity": b"\x93\x07\x01\x02",
    "missing field": b"\x91\x07",
    "session id negative": b"\x92\x07\xd0\xff",
    "session id float": b"\x92\x07\xcb" + bytes(8),
    "session id bool": b"\x92\x07\xc3",
    "session id nil": b"\x92\x07\xc0",
    "payload is str": packb([4, 1, 1, ["text"]]),
    "payload is int": packb([4, 1, 1, [5]]),
    "payloads not array": packb([4, 1, 1, b"x"]),
    "no payloads": packb([4, 1, 1, []]),
    "numbers overflow": packb([4, 1, MAX, [b"a", b"b"]]),
    "fragments empty": packb([4, 1, 1, [b"a"], []]),
    "fragments not triples": packb([4, 1, 1, [b"a", b"b"], [0, 1]]),
    "fragment offset out of frame": packb([4, 1, 1, [b"a"], [1, 0, 2]]),
    "fragment index >= total": packb([4, 1, 1, [b"a"], [0, 2, 2]]),
    "fragment total 1": packb([4, 1, 1, [b"a"], [0, 0, 1]]),
    "fragment offsets repeat": packb([4, 1, 1, [b"a", b"b"], [0, 0, 2, 0, 1, 2]]),
    "fragment before number 0": packb([4, 1, 0, [b"a"], [0, 1, 2]]),
    "ack odd ranges": packb([5, 1, [1, 2, 3], 0, False]),
    "ack lo > hi": packb([5, 1, [3, 2], 0, False]),
    "ack overlapping": packb([5, 1, [1, 5, 5, 6], 0, False]),
    "ack descending": packb([5, 1, [7, 8, 1, 2], 0, False]),
    "ack final is int": packb([5, 1, [], 0, 1]),
    "ack remaining negative": packb([5, 1, [], -3, True]),
    "retired NACK": packb([6, 1, [1, 2]]),
    "token 15 bytes": packb([13, 1, b"k" * 15]),
    "token 17 bytes": packb([13, 1, b"k" * 17]),
    "token is str": packb([13, 1, "k" * 16]),
    "ordered is int": packb([1, 1, b"k" * 16, 8, 100, 1]),
    "create without ordered": packb([1, 1, b"k" * 16, 8, 100]),
    "create with 8 elements": packb([1, 1, b"k" * 16, 8, 100, True, b"t", b"t"]),
    "address token empty": packb([1, 1, b"k" * 16, 8, 100, True, b""]),
    "address token 65 bytes": packb([1, 1, b"k" * 16, 8, 100, True, b"t" * 65]),
    "address token is str": packb([1, 1, b"k" * 16, 8, 100, True, "t"]),
    "retry without token": packb([15, 1]),
    "retry token empty": packb([15, 1, b""]),
    "retry token 65 bytes": packb([15, 1, b"t" * 65]),
    "challenge 8 bytes": packb([16, 1, b"c" * 8]),
    "response 17 bytes": packb([17, 1, b"c" * 17]),
    "reason is bin": packb([3, 1, b"why"]),
    "reason bad utf-8": b"\x93\x03\x01\xa2\xff\xfe",
    "reason surrogate": b"\x93\x03\x01\xa3\xed\xa0\x80",
    "field is map": b"\x92\x07\x81\xa1a\x01",
    "field is ext": b"\x92\x07\xd4\x05\x01",
    "field is timestamp": b"\x92\x07\xd6\xff" + bytes(4),
    "reserved byte": b"\x92\x07\xc1",
    "trailing garbage": packb([7, 1]) + b"\xc1",
    "trailing partial frame": packb([7, 1]) + b"\x92\x07",
    "trailing scalar": packb([7, 1]) + b"\x01",
}


@pytest.mark.parametrize("body", REJECTED.values(), ids=REJECTED.keys())
def test_malformed_frames_are_rejected_by_both(body):
    assert agree(body) == ("error",)


def test_limits(codec):
    body = codec.encode_data(1, 1, [b"x" * 100, b"y"])
    assert codec.decode_packet(body, max_message_size=100)[0][3] == [b"x" * 100, b"y"]
    with pytest.raises(ProtocolError, match="max_message_size"):
        codec.decode_packet(body, max_message_size=99)
    three = codec.encode_frame((7, 1)) * 3
    assert len(codec.decode_packet(three, max_frames=3)) == 3
    with pytest.raises(ProtocolError, match="max_frames"):
        codec.decode_packet(three, max_frames=2)
    # payloads count against max_frames across the whole packet
    two_frames = codec.encode_data(1, 1, [b"a"] * 3) + codec.encode_data(1, 4, [b"b"] * 3)
    assert len(codec.decode_packet(two_frames, max_frames=6)) == 2
    with pytest.raises(ProtocolError, match="max_frames"):
        codec.decode_packet(two_frames, max_frames=5)
    # a token is 16 bytes even when payloads may be smaller
    resume = codec.encode_frame((13, 1, b"k" * 16))
    assert codec.decode_packet(resume, max_message_size=0) == [(13, 1, b"k" * 16)]


def test_create_sequence_carries_an_ack_delay_and_an_address_token_or_none(codec):
    plain = (1, 9, b"k" * 16, 8, 100, True)
    for frame in (plain, plain + (200_000,), plain + (0, b"t"), plain + (60_000_000, b"t" * 64)):
        assert codec.decode_packet(codec.encode_frame(frame)) == [frame]
    with pytest.raises(ProtocolError, match="address_token"):
        codec.decode_packet(packb([1, 9, b"k" * 16, 8, 100, True, 5, b"t" * 65]))
    with pytest.raises(ProtocolError, match="ack_delay"):
        codec.decode_packet(packb([1, 9, b"k" * 16, 8, 100, True, b"t"]))   # the token's old place
    with pytest.raises(ProtocolError, match="6 to 8"):
        codec.decode_packet(packb([1, 9, b"k" * 16, 8, 100]))
    with pytest.raises(ValueError, match="6 to 8"):
        codec.encode_frame((1, 9, b"k" * 16, 8, 100, True, 5, b"t", b"t"))


def test_create_sequence_response_carries_an_ack_delay_or_none(codec):
    for frame in ((2, 9, 8, 100), (2, 9, 8, 100, 200_000)):
        assert codec.decode_packet(codec.encode_frame(frame)) == [frame]
    with pytest.raises(ProtocolError, match="4 or 5"):
        codec.decode_packet(packb([2, 9, 8, 100, 1, 2]))
    with pytest.raises(ProtocolError, match="ack_delay"):
        codec.decode_packet(packb([2, 9, 8, 100, -1]))


def test_error_names_the_frame_and_field():
    with pytest.raises(ProtocolError, match="DATA.*payload"):
        native.decode_packet(packb([4, 1, 1, ["text"]]))
    with pytest.raises(ProtocolError, match="ACK.*final"):
        native.decode_packet(packb([5, 1, [], 0, 1]))
    with pytest.raises(ProtocolError, match="unknown frame type 99"):
        native.decode_packet(packb([99, 1]))


# ---------------------------------------------------------------- fuzzing

def sample_packets() -> list[list[bytes]]:
    """Valid packets, each as its frames."""
    rng = random.Random(5)
    return [
        [native.encode_data(7, 1, [b"hello", b"", b"x" * 300])],
        [native.encode_data(2**40, 2**33, [bytes([i]) * i for i in range(20)],
                            fragments=[(3, 0, 2), (4, 1, 2)])],
        [native.encode_ack(2**64 - 1, [(1, 9), (12, 12), (2**40, 2**41)], 300, True)],
        [native.encode_frame((1, 5, bytes(range(16)), 8, 65536, False))],
        [native.encode_frame((1, 5, bytes(range(16)), 8, 65536, False, 200_000, bytes(range(24))))],
        [native.encode_frame((2, 5, 8, 65536, 50_000))],
        [native.encode_frame((15, 2**62 + 1, b"\xff" * 24)),
         native.encode_frame((16, 7, b"c" * 16)), native.encode_frame((17, 7, b"r" * 16))],
        [native.encode_frame((12, 5, "protocol-error", "bad frame \u00e9"))],
        [native.encode_frame((7, 5))],
        [native.encode_frame((t, rng.getrandbits(64), rng.getrandbits(20))) for t in (8, 9, 10)]
        + [native.encode_frame((13, 1, b"t" * 16))],
    ]


@pytest.mark.parametrize("frames", sample_packets(), ids=lambda f: f[0][:2].hex())
def test_every_truncation_is_rejected_by_both(frames):
    packet = b"".join(frames)
    boundaries = {sum(map(len, frames[:i])) for i in range(1, len(frames) + 1)}
    for end in range(len(packet) + 1):
        # only a prefix ending where a frame ends is itself a valid packet
        assert agree(packet[:end])[0] == ("ok" if end in boundaries else "error"), end


@pytest.mark.parametrize("frames", sample_packets(), ids=lambda f: f[0][:2].hex())
def test_every_single_bit_flip_gives_the_same_outcome_in_both(frames):
    packet = b"".join(frames)
    flipped = bytearray(packet)
    for i in range(len(packet) * 8):
        flipped[i // 8] ^= 1 << (i % 8)
        agree(bytes(flipped))
        flipped[i // 8] ^= 1 << (i % 8)


@SETTINGS
@given(st.binary(max_size=200))
def test_random_bytes(body):
    agree(body)


@SETTINGS
@given(st.binary(min_size=1, max_size=60))
def test_random_bytes_after_a_valid_frame_header(tail):
    for head in (b"\x94\x04\x01\x01", b"\x95\x05\x01", b"\x94\x04", b"\x93\x06\x01", b"\x96\x01\x01"):
        agree(head + tail)


any_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**63, MAX), st.floats(allow_nan=False),
              st.binary(max_size=20), st.text(max_size=8), u64,
              st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4))),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=8,
)


@SETTINGS
@given(frames, st.data())
def test_one_field_replaced_by_anything(frame, data):
    wire = wire_form(frame)
    where = data.draw(st.integers(0, len(wire) - 1))
    if isinstance(wire[where], list) and wire[where] and data.draw(st.booleans()):
        wire[where][data.draw(st.integers(0, len(wire[where]) - 1))] = data.draw(any_value)
    else:
        wire[where] = data.draw(any_value)
    if data.draw(st.booleans()):
        wire.append(data.draw(any_value))
    agree(packb(wire))
    agree(msgpack.packb(wire, use_bin_type=False))       # bytes as str: never a valid bin


@SETTINGS
@given(st.lists(any_value, min_size=1, max_size=7), st.integers(0, 18))
def test_frame_like_arrays(fields, frame_type):
    agree(packb([frame_type, *fields]))


# ---------------------------------------------------------------- hostile lengths

HOSTILE = {
    "bin32 of 4 GB": b"\x94\x04\x01\x01\x91\xc6\xff\xff\xff\xff" + b"x" * 10,
    "array32 of 2**32-1 payloads": b"\x94\x04\x01\x01\xdd\xff\xff\xff\xff" + b"\xc4\x00" * 5,
    "array32 of 2**32-1 ranges": b"\x95\x05\x01\xdd\xff\xff\xff\xff" + b"\x01" * 10,
    "frame of 2**32-1 fields": b"\xdd\xff\xff\xff\xff\x07\x01",
    "str32 of 4 GB": b"\x93\x03\x01\xdb\xff\xff\xff\xff" + b"x" * 10,
    "map32 of 2**32-1": b"\x92\x07\xdf\xff\xff\xff\xff" + b"\x01" * 10,
    "ext32 of 4 GB": b"\x92\x07\xc9\xff\xff\xff\xff\x05" + b"x" * 10,
    "deep nesting": b"\x91" * 100_000,
    "deep nesting in a field": b"\x92\x07" + b"\x91" * 100_000 + b"\x01",
}


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_lengths_are_rejected_without_allocating(body):
    tracemalloc.start()
    try:
        assert agree(body, max_frames=4096) == ("error",)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(body) + 200_000


# ---------------------------------------------------------------- TCP framing

def test_frame_packet(codec):
    body = codec.encode_frame((7, 1))
    assert codec.frame_packet(body) == len(body).to_bytes(4, "big") + body
    assert codec.frame_packet(bytearray(body)) == codec.frame_packet(memoryview(body))


@SETTINGS
@given(st.lists(st.binary(min_size=1, max_size=3000), max_size=12), st.randoms(use_true_random=False))
def test_packet_reader_any_chunking_gives_the_same_packets(bodies, rng):
    stream = b"".join(native.frame_packet(body) for body in bodies)
    cuts = (sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randint(0, 30))))
            if len(stream) > 1 else [])
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
    for module in MODULES:
        whole = module.PacketReader(4000)
        assert whole.feed(stream) == bodies and whole.pending == 0
        chunked = module.PacketReader(4000)
        got = []
        for chunk in chunks:
            got += chunked.feed(memoryview(chunk))
        assert got == bodies and chunked.pending == 0


def test_packet_reader_byte_by_byte(codec):
    bodies = [b"a", b"bc" * 40, bytes(300), b"\x00\x00\x00\x00"]
    stream = b"".join(codec.frame_packet(body) for body in bodies)
    reader = codec.PacketReader(1000)
    got, pendings = [], []
    for i in range(len(stream)):
        got += reader.feed(stream[i:i + 1])
        pendings.append(reader.pending)
    assert got == bodies
    assert pendings[3] == 4 and pendings[4] == 0 and pendings[-1] == 0
    assert reader.feed(b"") == []


def test_packet_reader_rejects_a_bad_length_before_buffering_the_body(codec):
    reader = codec.PacketReader(100)
    assert reader.feed(codec.frame_packet(b"ok")) == [b"ok"]
    assert reader.feed(b"\x00\x00") == [] and reader.pending == 2
    with pytest.raises(ProtocolError, match="101"):
        reader.feed(b"\x00\x65")                  # 101 > 100: refused at the prefix
    with pytest.raises(ProtocolError):
        reader.feed(codec.frame_packet(b"ok"))    # the stream is out of step for good
    assert reader.pending == 0
    with pytest.raises(ProtocolError):
        codec.PacketReader(100).feed(b"\x00\x00\x00\x00")     # length 0
    assert codec.PacketReader(100).feed(b"\x00\x00\x00\x64" + b"x" * 99) == []
    with pytest.raises(ProtocolError):
        codec.PacketReader(100).feed(b"\x00\x00\x00\x02ok\x00\x00\x10\x00")


def test_packet_reader_does_not_allocate_by_the_length_prefix(codec):
    reader = codec.PacketReader(2**32 - 1)
    tracemalloc.start()
    try:
        assert reader.feed(b"\xff\xff\xff\xff" + b"x" * 10) == []
        for _ in range(100):
            reader.feed(b"y" * 10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reader.pending == 4 + 10 + 1000
    assert peak < 100_000


def test_packet_reader_argument_checks(codec):
    with pytest.raises(ValueError):
        codec.PacketReader(0)
    with pytest.raises(ValueError):
        codec.PacketReader(2**32)
    with pytest.raises(TypeError):
        codec.PacketReader(10).feed("text")


def test_packet_reader_large_packet_then_small_ones(codec):
    big = bytes(range(256)) * 800                    # 204 800 bytes, fed in 1000-byte chunks
    stream = codec.frame_packet(big) + codec.frame_packet(b"after") + codec.frame_packet(b"x")
    reader = codec.PacketReader(len(big))
    got = []
    for i in range(0, len(stream), 1000):
        got += reader.feed(stream[i:i + 1000])
    assert got == [big, b"after", b"x"] and reader.pending == 0
    assert reader.feed(codec.frame_packet(b"again")) == [b"again"]


# ---------------------------------------------------------------- module surface

def test_both_twins_export_the_same_constants():
    names = ["CREATE_SEQUENCE", "CREATE_SEQUENCE_RESPONSE", "CREATE_SEQUENCE_REFUSED", "DATA",
             "ACK", "ACK_REQUESTED", "CLOSE_SEQUENCE", "CLOSE_SEQUENCE_RESPONSE",
             "TERMINATE_SEQUENCE", "TERMINATE_SEQUENCE_RESPONSE", "FAULT", "RESUME",
             "RESUME_RESPONSE", "RETRY", "PATH_CHALLENGE", "PATH_RESPONSE"]
    numbers = [n for n in range(1, 18) if n != 6]      # 6 was NACK, retired
    assert [getattr(native, n) for n in names] == numbers
    assert [getattr(reference, n) for n in names] == numbers
    assert native.FRAME_NAMES == reference.FRAME_NAMES == dict(zip(numbers, names))
    assert not hasattr(native, "NACK") and not hasattr(reference, "NACK")
    for name in ("TOKEN_SIZE", "ADDRESS_TOKEN_MAX", "LENGTH_PREFIX_SIZE", "U64_MAX", "MAX_BIN"):
        assert getattr(native, name) == getattr(reference, name)


def test_split_data_takes_bytes_like_payloads():
    payloads = [bytearray(b"a" * 50), memoryview(b"b" * 70), b"c" * 30] * 5
    assert native.split_data(1, 1, payloads, 200) == reference.split_data(1, 1, payloads, 200)


def test_native_reads_a_list_subclass_by_its_storage_not_its_len():
    class Lying(list):
        def __len__(self):
            return 1000

    assert native.encode_data(1, 1, Lying([b"x"])) == packb([4, 1, 1, [b"x"]])
    assert native.split_data(1, 1, Lying([b"x"]), 100) == [packb([4, 1, 1, [b"x"]])]
    assert native.encode_ack(1, Lying([(1, 2)]), 0, False) == packb([5, 1, [1, 2], 0, False])


# ---- payload_sizes: the sender's one-pass check of a batch ----

@pytest.mark.parametrize("codec", [native, reference], ids=["native", "reference"])
def test_payload_sizes(codec):
    assert codec.payload_sizes([]) == (0, 0, True)
    assert codec.payload_sizes([b"ab", b"", b"xyz"]) == (5, 3, True)
    assert codec.payload_sizes((b"ab", bytearray(b"1234"), memoryview(b"x"))) == (7, 4, False)
    with pytest.raises(TypeError, match=r"payloads\[1\]"):
        codec.payload_sizes([b"ok", "text"])
    with pytest.raises(TypeError, match="payloads"):
        codec.payload_sizes(b"not a list")


@given(st.lists(st.one_of(st.binary(max_size=40), st.binary(max_size=40).map(bytearray)), max_size=30))
def test_payload_sizes_twins_agree(payloads):
    assert native.payload_sizes(payloads) == reference.payload_sizes(payloads)


# ---------------------------------------------------------------- batches of datagrams

@SETTINGS
@given(st.lists(st.one_of(st.lists(frames, min_size=1, max_size=3).map(
                              lambda fs: b"".join(native.encode_frame(f) for f in fs)),
                          st.binary(max_size=40)), max_size=8))
def test_decode_packets_is_decode_packet_per_body(bodies):
    """One call for a run of datagrams: each body's frames, or the ProtocolError it raised,
    exactly as decode_packet one by one (a bad body spoils no other); both twins agree."""
    for module in MODULES:
        out = module.decode_packets(bodies, max_message_size=300, max_frames=50)
        assert len(out) == len(bodies)
        for body, item in zip(bodies, out):
            single = decoded(module, body, max_message_size=300, max_frames=50)
            if isinstance(item, ProtocolError):
                assert single == ("error",)
            else:
                assert single == ("ok", repr(item))
    n = native.decode_packets(bodies, max_message_size=300, max_frames=50)
    r = reference.decode_packets(bodies, max_message_size=300, max_frames=50)
    # (the twins' error messages differ in wording, as for decode_packet)
    assert [repr(x) if isinstance(x, list) else type(x) for x in n] == \
        [repr(x) if isinstance(x, list) else type(x) for x in r]


def test_decode_packets_takes_any_bytes_like_body_and_rejects_others(codec):
    body = packb([7, 1])
    assert codec.decode_packets((bytearray(body), memoryview(body), b"")) [:2] == [[(7, 1)], [(7, 1)]]
    assert isinstance(codec.decode_packets([b""])[0], ProtocolError)
    assert codec.decode_packets([]) == []
    with pytest.raises(TypeError, match=r"bodies\[1\]|bytes-like"):
        codec.decode_packets([body, 5])
    with pytest.raises(TypeError, match="bodies"):
        codec.decode_packets(body)


@SETTINGS
@given(st.lists(st.binary(min_size=1, max_size=120), max_size=30), st.integers(1, 400))
def test_pack_frames_joins_greedily_in_order(frames_, limit):
    out = native.pack_frames(frames_, limit)
    assert out == reference.pack_frames(frames_, limit)
    assert b"".join(out) == b"".join(frames_)
    # greedy: every packet within the limit unless it is one frame; no two neighbours fit together
    i = 0
    firsts = []                 # the first frame of each packet
    for packet in out:
        firsts.append(frames_[i])
        taken = 0
        while taken < len(packet):
            taken += len(frames_[i])
            i += 1
        assert taken == len(packet)
        assert len(packet) <= limit or packet == frames_[i - 1]
    for a, first_of_b in zip(out, firsts[1:]):
        assert len(a) + len(first_of_b) > limit


@SETTINGS
@given(st.lists(st.sampled_from([1, 5, 7, 100, 1452]), max_size=80), st.integers(1, 70),
       st.integers(1, 70000))
def test_segment_runs_cut_what_gso_can_send(sizes, max_segments, max_bytes):
    """Each run is count packets of segment_size bytes but the last, which may be shorter;
    within max_segments and max_bytes (unless one packet alone is bigger); in order."""
    packets = [bytes([i % 256]) * size for i, size in enumerate(sizes)]
    out = native.segment_runs(packets, max_segments, max_bytes)
    assert out == reference.segment_runs(packets, max_segments, max_bytes)
    assert b"".join(buf for buf, _, _ in out) == b"".join(packets)
    i = 0
    for buf, segment, count in out:
        run = packets[i:i + count]
        i += count
        assert buf == b"".join(run) and 1 <= count <= max_segments
        assert all(len(p) == segment for p in run[:-1]) and len(run[-1]) <= segment
        assert len(buf) <= max_bytes or count == 1
        # splitting the buffer at segment_size gives the packets back (what GRO's receiver does)
        assert [buf[j:j + segment] for j in range(0, len(buf), segment)] == run
    assert i == len(packets)


@pytest.mark.parametrize("name,args", [
    ("pack_frames", ([b"x"], 0)), ("pack_frames", ([b"x", "y"], 10)), ("pack_frames", (b"x", 10)),
    ("pack_frames", ([b"x"], 1.5)), ("segment_runs", ([b"x"], 0, 10)),
    ("segment_runs", ([b"x"], 1, 0)), ("segment_runs", ([b""], 1, 10)),
    ("segment_runs", ([bytearray(b"x")], 1, 10)), ("decode_packets", ([b"x"], -1, 4)),
    ("decode_packets", ([b"x"], 10, 0)),
])
def test_batch_functions_bad_arguments_agree(name, args):
    expected = raised(getattr(reference, name), *args)
    assert expected in (TypeError, ValueError), expected
    assert raised(getattr(native, name), *args) is expected


@st.composite
def plain_packets(draw):
    """Decoded packets that are mostly DATA runs, AckRequested and ACK of session 1,
    sometimes with fragments, another session, another frame type or an ACK in a packet
    without DATA (then data_runs gives None)."""
    packets = []
    number = draw(st.integers(1, 1000))
    for _ in range(draw(st.integers(0, 6))):
        frames = []
        for _ in range(draw(st.integers(1, 3))):
            r = draw(st.integers(0, 40))
            sid = 2 if r == 0 else 1
            if r in (1, 4):
                frames.append((5, sid, [(1, draw(st.integers(1, 9)))], 3, False))
            elif r == 2:
                frames.append((7, sid))
            elif r == 3:
                frames.append((4, sid, number, [b"f"], [(0, 0, 2)]))
                number += 1
            elif r == 5:
                frames.append((8, sid, number))
            else:
                count = draw(st.integers(1, 4))
                if draw(st.integers(0, 5)) == 0:
                    number += draw(st.integers(-3, 3))     # a gap, overlap or repeat
                    number = max(number, 0)
                frames.append((4, sid, number, [bytes([number % 256])] * count, None))
                number += count
        packets.append(frames)
    return packets


@SETTINGS
@given(plain_packets())
def test_data_runs_joins_consecutive_data_and_twins_agree(packets):
    out = native.data_runs(packets, 1)
    assert repr(out) == repr(reference.data_runs(packets, 1))
    frames = [f for p in packets for f in p]
    if out is None:
        assert any(f[1] != 1 or f[0] not in (4, 5, 7) or (f[0] == 4 and f[4]) for f in frames) \
            or any(any(f[0] == 5 for f in p) and not any(f[0] == 4 for f in p) for p in packets)
        return
    steps, data_packets, ack_requested = out
    assert data_packets == sum(1 for p in packets if any(f[0] == 4 for f in p))
    assert ack_requested == any(f[0] == 7 for f in frames)
    # the ACK frames, themselves, in arrival order among the runs
    kept = [f for f in frames if f[0] in (4, 5)]
    assert [s for s in steps if len(s) != 2] == [f for f in kept if f[0] == 5]
    assert all(s is f for s, f in zip([s for s in steps if len(s) != 2], [f for f in kept if f[0] == 5]))
    # between two ACKs, the runs are the frames' payloads in order, cut only where a frame
    # does not continue the one before
    def segments(items, is_ack):
        out, current = [], []
        for item in items:
            if is_ack(item):
                out.append(current)
                current = []
            else:
                current.append(item)
        return out + [current]
    for runs, data in zip(segments(steps, lambda s: len(s) != 2),
                          segments(kept, lambda f: f[0] == 5), strict=True):
        assert [p for _, run in runs for p in run] == [p for f in data for p in f[3]]
        assert len(runs) == 1 + sum(1 for a, b in zip(data, data[1:]) if b[2] != a[2] + len(a[3])) \
            if data else runs == []
        for first, _run in runs:
            assert any(f[2] == first for f in data)


def test_data_runs_takes_an_ack_riding_in_a_data_packet(codec):
    ack = (5, 1, [(1, 4)], 10, False)
    packets = [[(4, 1, 1, [b"a", b"b"], None), (4, 1, 3, [b"c"], None), (7, 1), ack],
               [(4, 1, 4, [b"d"], None)]]
    assert codec.data_runs(packets, 1) == ([(1, [b"a", b"b", b"c"]), ack, (4, [b"d"])], 2, True)
    # an ACK in a packet without DATA, or a frame of another kind, leaves the fast path
    assert codec.data_runs([[ack], [(4, 1, 1, [b"a"], None)]], 1) is None
    assert codec.data_runs([[(4, 1, 1, [b"a"], None), (8, 1, 1)]], 1) is None
    assert codec.data_runs([[(4, 1, 1, [b"a"], None), (5, 2, [(1, 1)], 3, False)]], 1) is None


@st.composite
def routed_batches(draw):
    """(decoded, bodies): what decode_packets gives for a batch from a few sessions, with
    undecodable packets (a ProtocolError in place of frames) and Resume packets."""
    decoded, bodies = [], []
    for _ in range(draw(st.integers(0, 12))):
        r = draw(st.integers(0, 9))
        sid = draw(st.integers(1, 3))
        if r == 0:
            decoded.append(ProtocolError("bad packet"))
        elif r == 1:
            decoded.append([(13, sid, b"t" * 16), (7, sid)])
        else:
            decoded.append([(4, sid, 1, [b"x"], None)] + [(7, sid)] * (r == 2))
        bodies.append(b"p" * draw(st.sampled_from([1, 700, 726, 727, 1452])))
    return decoded, bodies


@SETTINGS
@given(routed_batches())
def test_session_groups_split_a_batch_by_session_and_twins_agree(batch):
    decoded, bodies = batch
    groups = native.session_groups(decoded, bodies, 726)
    assert repr(groups) == repr(reference.session_groups(decoded, bodies, 726))
    # every packet once, in order within its group, with its length
    flat = sorted((id(p), size) for _, packets, sizes, _ in groups for p, size in zip(packets, sizes))
    assert flat == sorted((id(p), len(b)) for p, b in zip(decoded, bodies))
    order = {id(p): i for i, p in enumerate(decoded)}
    for sid, packets, sizes, full in groups:
        assert [order[id(p)] for p in packets] == sorted(order[id(p)] for p in packets)
        assert full == sum(1 for size in sizes if size >= 726) or sid is None
        if sid is None:
            assert len(packets) == 1 and type(packets[0]) is not list and full == 0
            continue
        assert all(p[0][1] == sid for p in packets)
        if packets[0][0][0] == 13:
            assert len(packets) == 1          # a Resume stands alone
        # the packets of a group are consecutive but for undecodable ones between them
        span = decoded[order[id(packets[0])]:order[id(packets[-1])] + 1]
        assert [p for p in span if type(p) is list] == packets
    # groups of decodable packets come in arrival order, and two in a row naming the same
    # session are split only by a Resume
    named = [g for g in groups if g[0] is not None]
    for a, b in zip(named, named[1:]):
        assert order[id(a[1][-1])] < order[id(b[1][0])]
        if a[0] == b[0]:
            assert a[1][-1][0][0] == 13 or b[1][0][0][0] == 13


def test_session_groups_bad_arguments(codec):
    with pytest.raises(ValueError, match="decoded has 1 packets but bodies has 0"):
        codec.session_groups([[(4, 1, 1, [b""], None)]], [], 10)
    with pytest.raises(TypeError):
        codec.session_groups([[(4,)]], [b"x"], 10)
    with pytest.raises(TypeError):
        codec.session_groups(5, [], 10)
    with pytest.raises(ValueError):
        codec.session_groups([], [], -1)
    assert codec.session_groups([], [], 0) == []


def test_data_runs_bad_arguments(codec):
    with pytest.raises(TypeError):
        codec.data_runs([[(4,)]], 1)
    with pytest.raises(TypeError):
        codec.data_runs([5], 1)
    with pytest.raises(TypeError):
        codec.data_runs(5, 1)
    assert codec.data_runs([], 1) == ([], 0, False)
