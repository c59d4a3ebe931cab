"""codec: native vs reference on a UDP session's hot path, with plain msgpack as the baseline.

- encode 1M 64-byte messages as DATA frames of 64 (encode_data per batch), and with
  split_data into ~60 KB datagram bodies; baselines: msgpack.packb(payload) per message,
  and msgpack.packb([4, sid, first, batch]) per batch.
- decode the same: decode_packet per 64-message frame and per 60 KB body; baselines:
  msgpack.unpackb per message and per batch.
- 100k ACK frames with 8 ranges each, encode and decode.
- PacketReader: a 1M-message TCP stream (60 KB packets) fed in 64 KB chunks.

Run: PYTHONPATH=src python -m pytest benchmarks/bench_codec.py --benchmark-enable -q
The speed-up is reference (or baseline) time / native time within a group (same run).
"""
from __future__ import annotations

import random

import msgpack
import pytest

from conftest import twins

MESSAGES = 1_000_000
SIZE = 64
BATCH = 64
MAX_BODY = 60_000            # a UDP datagram body, well under 65 507
ACKS = 100_000
SESSION = 0x5EED_0001_2345_6789
ROUNDS = 5                   # the box is shared: report the min of a few rounds


def module(impl: str):
    return twins("codec")[impl == "reference"]


def run(benchmark, fn):
    """A few rounds of one call: the work inside is a million messages already. Each batch's
    output is dropped before the next, as a session sends or delivers it, so the figures
    measure the codec and not the memory of a million live objects."""
    return benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)


@pytest.fixture(scope="module")
def payloads() -> list[bytes]:
    rng = random.Random(64)
    return [rng.randbytes(SIZE) for _ in range(MESSAGES)]


@pytest.fixture(scope="module")
def batches(payloads) -> list[tuple[int, list[bytes]]]:
    """(first number, 64 payloads) for each DATA frame."""
    return [(1 + i, payloads[i:i + BATCH]) for i in range(0, MESSAGES, BATCH)]


@pytest.fixture(scope="module")
def frames(batches) -> list[bytes]:
    return [twins("codec")[0].encode_data(SESSION, first, batch) for first, batch in batches]


@pytest.fixture(scope="module")
def bodies(payloads) -> list[bytes]:
    return twins("codec")[0].split_data(SESSION, 1, payloads, MAX_BODY)


@pytest.fixture(scope="module")
def acks() -> list[tuple[int, list[tuple[int, int]], int, bool]]:
    rng = random.Random(5)
    out = []
    for i in range(ACKS):
        floor = 1_000_000 + 64 * i
        bounds = sorted(rng.sample(range(floor, floor + 4096), 16))
        out.append((SESSION, [(bounds[k], bounds[k + 1]) for k in range(0, 16, 2)], 4096 - i % 4096, False))
    return out


# ---------------------------------------------------------------- encode

@pytest.mark.benchmark(group="codec encode: 1M x 64 B, DATA frames of 64")
def test_encode_data_batches(benchmark, impl, batches):
    encode_data = module(impl).encode_data

    def work():
        for first, batch in batches:
            out = encode_data(SESSION, first, batch)
        return out

    assert run(benchmark, work) == twins("codec")[0].encode_data(SESSION, *batches[-1])


@pytest.mark.benchmark(group="codec encode: 1M x 64 B, DATA frames of 64")
def test_encode_baseline_packb_per_message(benchmark, payloads):
    packb = msgpack.packb

    def work():
        for p in payloads:
            packb(p)

    run(benchmark, work)


@pytest.mark.benchmark(group="codec encode: 1M x 64 B, DATA frames of 64")
def test_encode_baseline_packb_per_batch(benchmark, batches):
    packb = msgpack.packb

    def work():
        for first, batch in batches:
            out = packb([4, SESSION, first, batch])
        return out

    assert run(benchmark, work) == twins("codec")[0].encode_data(SESSION, *batches[-1])


@pytest.mark.benchmark(group="codec encode: 1M x 64 B, split_data into 60 KB bodies")
def test_split_data(benchmark, impl, payloads):
    split_data = module(impl).split_data
    out = run(benchmark, lambda: split_data(SESSION, 1, payloads, MAX_BODY))
    assert all(len(body) <= MAX_BODY for body in out)   # ~1100 bodies, 67 MB: kept, as a sender would


@pytest.mark.benchmark(group="codec encode: 1M x 64 B, split_data into 60 KB bodies")
def test_split_baseline_packb_per_message(benchmark, payloads):
    packb = msgpack.packb

    def work():
        for p in payloads:
            packb(p)

    run(benchmark, work)


# ---------------------------------------------------------------- decode

@pytest.mark.benchmark(group="codec decode: 1M x 64 B, DATA frames of 64")
def test_decode_data_batches(benchmark, impl, frames):
    decode_packet = module(impl).decode_packet

    def work():
        count = 0
        for frame in frames:
            count += len(decode_packet(frame)[0][3])
        return count

    assert run(benchmark, work) == MESSAGES


@pytest.mark.benchmark(group="codec decode: 1M x 64 B, DATA frames of 64")
def test_decode_baseline_unpackb_per_message(benchmark, payloads):
    packed = [msgpack.packb(p) for p in payloads]
    unpackb = msgpack.unpackb

    def work():
        for p in packed:
            unpackb(p)

    run(benchmark, work)


@pytest.mark.benchmark(group="codec decode: 1M x 64 B, DATA frames of 64")
def test_decode_baseline_unpackb_per_batch(benchmark, frames):
    unpackb = msgpack.unpackb

    def work():
        for frame in frames:
            unpackb(frame)

    run(benchmark, work)


@pytest.mark.benchmark(group="codec decode: 1M x 64 B, 60 KB bodies")
def test_decode_bodies(benchmark, impl, bodies):
    decode_packet = module(impl).decode_packet

    def work():
        count = 0
        for body in bodies:
            count += len(decode_packet(body)[0][3])
        return count

    assert run(benchmark, work) == MESSAGES


@pytest.mark.benchmark(group="codec decode: 1M x 64 B, 60 KB bodies")
def test_decode_bodies_baseline_unpackb(benchmark, bodies):
    unpackb = msgpack.unpackb

    def work():
        for body in bodies:
            unpackb(body)

    run(benchmark, work)


# ---------------------------------------------------------------- ACK frames

@pytest.mark.benchmark(group="codec ack: 100k ACK frames of 8 ranges, encode")
def test_encode_acks(benchmark, impl, acks):
    encode_ack = module(impl).encode_ack

    def work():
        for session_id, ranges, remaining, final in acks:
            encode_ack(session_id, ranges, remaining, final)

    run(benchmark, work)


@pytest.mark.benchmark(group="codec ack: 100k ACK frames of 8 ranges, encode")
def test_encode_acks_baseline_packb(benchmark, acks):
    packb = msgpack.packb

    def work():
        for session_id, ranges, remaining, final in acks:
            packb([5, session_id, [n for pair in ranges for n in pair], remaining, final])

    run(benchmark, work)


@pytest.mark.benchmark(group="codec ack: 100k ACK frames of 8 ranges, decode")
def test_decode_acks(benchmark, impl, acks):
    encoded = [twins("codec")[0].encode_ack(*ack) for ack in acks]
    decode_packet = module(impl).decode_packet

    def work():
        for body in encoded:
            frame = decode_packet(body)
        return frame

    assert run(benchmark, work)[0][2] == acks[-1][1]


@pytest.mark.benchmark(group="codec ack: 100k ACK frames of 8 ranges, decode")
def test_decode_acks_baseline_unpackb(benchmark, acks):
    encoded = [twins("codec")[0].encode_ack(*ack) for ack in acks]
    unpackb = msgpack.unpackb

    def work():
        for body in encoded:
            unpackb(body)

    run(benchmark, work)


# ---------------------------------------------------------------- TCP de-framing

@pytest.mark.benchmark(group="codec tcp: PacketReader, 1M x 64 B in 60 KB packets, 64 KB chunks")
def test_packet_reader(benchmark, impl, bodies):
    mod = module(impl)
    stream = b"".join(mod.frame_packet(body) for body in bodies)
    chunks = [stream[i:i + 65536] for i in range(0, len(stream), 65536)]

    def work():
        reader = mod.PacketReader(MAX_BODY)
        count = 0
        for chunk in chunks:
            count += len(reader.feed(chunk))
        return count

    assert run(benchmark, work) == len(bodies)
