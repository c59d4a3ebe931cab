"""Fuzz target 1: the session frame codec, native (ext/codec.pyx) against its pure-Python twin.

An input is one config byte and a body. Every public decoding entry point gets it:

- `decode_packet(body)` with limits from the config byte: both twins give the same frames
  (compared by repr, so True stays apart from 1) or both raise ProtocolError; a frame that
  decodes encodes again (`encode_frame`, byte-identical in both) and decodes to itself;
- `PacketReader.feed`: the body as a raw TCP stream, cut into chunks the input chooses:
  both twins cut the same packets, hold the same `pending`, fail at the same chunk with
  ProtocolError and stay failed; and the body framed twice by `frame_packet` comes back
  whole from any chunking;
- DATA batches: payloads cut from the body go through `split_data` (both twins, the same
  bytes) and every frame decodes back to its slice of the batch, numbered consecutively.

Nothing but ProtocolError may come out of a decoder; anything else is a finding.
"""
from __future__ import annotations

import zlib

from fuzz.mutators import Layout

from tether._native import codec as native
from tether._reference import codec as reference
from tether.errors import ProtocolError

MAX = 2**64 - 1
MESSAGE_LIMITS = [0, 1, 15, 16, 255, 300, 65536, 16 * 2**20]
FRAME_LIMITS = [1, 2, 3, 8, 64, 4096, 8192, 2**32 - 1]
PACKET_LIMITS = [1, 5, 16, 300, 4096, 65536, 2**20, 2**32 - 1]
BODY_LIMITS = [1, 16, 40, 100, 300, 1452, 65000, 2**20]


def outcome(module, body, max_message_size: int, max_frames: int) -> tuple:
    """('ok', frames, repr) or ('error',); any exception but ProtocolError propagates."""
    try:
        frames = module.decode_packet(body, max_message_size, max_frames)
    except ProtocolError:
        return ("error",)
    return ("ok", frames, repr(frames))


def feed_all(module, stream: bytes, cuts: list[int], max_packet: int) -> list:
    """What a PacketReader says chunk by chunk: packets and pending, or the error class."""
    reader = module.PacketReader(max_packet)
    said = []
    failed = False
    for a, b in zip([0, *cuts], [*cuts, len(stream)]):
        try:
            said.append(("packets", reader.feed(stream[a:b]), reader.pending))
        except ProtocolError:
            said.append(("error", reader.pending))
            failed = True
    if failed:
        try:
            reader.feed(b"\x00\x00\x00\x01x")       # out of step for good
        except ProtocolError:
            said.append(("still failed",))
        else:
            raise AssertionError("a PacketReader that failed accepted more data")
    return said


def chunk_cuts(stream: bytes, config: int) -> list[int]:
    """Chunk boundaries chosen by the input (the same for the same input): none, a few, or
    every byte of a short stream."""
    if len(stream) < 2:
        return []
    if config & 0x80 and len(stream) <= 64:
        return list(range(1, len(stream)))
    state = zlib.crc32(stream) | 1
    cuts = set()
    for _ in range((0, 1, 3, 7, 15)[config % 5]):
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        cuts.add(1 + state % (len(stream) - 1))
    return sorted(cuts)


class Target:
    layout = Layout(header=1)

    def __init__(self, seed: int = 1) -> None:
        self.counts = {"decoded": 0, "rejected": 0, "stream_failed": 0, "batches": 0}

    def seeds(self) -> list[bytes]:
        return [bytes([config]) + body for config, body in seed_bodies()]

    def one(self, data: bytes) -> None:
        if not data:
            return
        config, body = data[0], data[1:]
        self.decode(body, config)
        self.stream(body, config)
        self.batch(body, config)

    def decode(self, body: bytes, config: int) -> None:
        limits = (MESSAGE_LIMITS[config & 7], FRAME_LIMITS[(config >> 3) & 7])
        got = outcome(native, body if config & 0x40 == 0 else bytearray(body), *limits)
        twin = outcome(reference, body, *limits)
        assert got[0] == twin[0] and got[-1] == twin[-1], \
            f"native {got[0]} and reference {twin[0]} disagree on {body.hex()[:200]}"
        if got[0] == "error":
            self.counts["rejected"] += 1
            return
        self.counts["decoded"] += 1
        frames = got[1]
        encoded = [native.encode_frame(frame) for frame in frames]
        assert encoded == [reference.encode_frame(frame) for frame in frames], "twins encode differently"
        again = b"".join(encoded)
        assert repr(native.decode_packet(again, *limits)) == got[2], "a decoded packet does not round-trip"
        assert repr(reference.decode_packet(again, *limits)) == got[2]

    def stream(self, body: bytes, config: int) -> None:
        max_packet = PACKET_LIMITS[(config >> 2) & 7]
        cuts = chunk_cuts(body, config)
        said = feed_all(native, body, cuts, max_packet)
        assert said == feed_all(reference, body, cuts, max_packet), "PacketReaders disagree"
        if said and said[-1] == ("still failed",):
            self.counts["stream_failed"] += 1
        if body:
            framed = native.frame_packet(body)
            assert framed == reference.frame_packet(body)
            stream = framed + framed
            cuts = chunk_cuts(stream, config ^ 0x80)
            for module in (native, reference):
                reader = module.PacketReader(len(body))
                got = []
                for a, b in zip([0, *cuts], [*cuts, len(stream)]):
                    got += reader.feed(stream[a:b])
                assert got == [body, body] and reader.pending == 0, "a framed body did not come back whole"

    def batch(self, body: bytes, config: int) -> None:
        payloads = body.split(b"\x00")[:200]
        crc = zlib.crc32(body)
        session_id = (crc * 0x9E3779B97F4A7C15) & MAX
        first = 1 if config & 0x20 else max(MAX - len(payloads) + 1 - (crc % 3), 0)
        max_body = BODY_LIMITS[config & 7]
        split = native.split_data(session_id, first, payloads, max_body)
        assert split == reference.split_data(session_id, first, payloads, max_body), "split_data differs"
        number, got = first, []
        for frame_body in split:
            [frame] = native.decode_packet(frame_body, 2**32 - 1, 2**32 - 1)
            assert frame == reference.decode_packet(frame_body, 2**32 - 1, 2**32 - 1)[0]
            assert frame[0] == native.DATA and frame[1] == session_id and frame[2] == number
            assert len(frame_body) <= max_body or len(frame[3]) == 1, "a DATA frame is over max_body"
            number += len(frame[3])
            got += frame[3]
        assert got == payloads, "a DATA batch did not decode to its payloads"
        self.counts["batches"] += 1

    def checkpoint(self) -> None:
        pass

    def figures(self) -> dict:
        return dict(self.counts)


def seed_bodies() -> list[tuple[int, bytes]]:
    """Valid packets of every frame type (and a few TCP streams), with a config byte each."""
    enc = native.encode_frame
    token = bytes(range(16))
    frames = [
        enc((1, 5, token, 8, 65536, True)),
        enc((2, 5, 64, 8 * 2**20)),
        enc((3, 5, "too many sessions waiting")),
        native.encode_data(5, 1, [b"hello", b"", b"x" * 40]),
        native.encode_data(2**40, 2**33, [bytes([i]) * i for i in range(12)], fragments=[(3, 0, 2), (4, 1, 2)]),
        native.encode_data(MAX, MAX, [b"last"]),
        native.encode_ack(5, [(1, 9), (12, 12), (2**40, 2**41)], 300, True),
        native.encode_ack(5, [], 0, False),
        enc((7, 5)),
        enc((8, 5, 9)), enc((9, 5, 9)), enc((10, 5, 2**32)),
        enc((11, 5)),
        enc((12, 5, "protocol-error", "bad frame \u00e9")),
        enc((13, 5, token)),
        enc((14, 5)),
    ]
    out = [(config, frame) for config in (0x3e, 0x2e) for frame in frames]
    out.append((0x36, b"".join(frames)))                       # one packet of every frame
    stream = b"".join(native.frame_packet(frame) for frame in frames[:6])
    out.append((0x5f, stream))                                 # a TCP stream of packets
    return out
