"""Structure-aware mutations for msgpack inputs, shared by every fuzz target.

Byte-level mutations (libFuzzer's, through atheris.Mutate) rarely get past the first msgpack
header of a frame, so half of the mutations here parse the input as msgpack, change one
value of the tree (a boundary integer, another type, a longer or shorter array, a value
spliced from a seed) and pack it again. That reaches the decoders' field checks and the
engine's and the service's meaning checks, which bytes alone hardly ever do.

An input is laid out as `Layout` says: `header` config bytes, then parts joined by
`separator` (packets of one engine run, frames of one queue session), each part a stream
of msgpack objects.
"""
from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

# Values that sit on the boundaries the codec, the engine and the protocol check.
INTERESTING_INTS = [
    0, 1, 2, 3, 7, 8, 15, 16, 31, 32, 127, 128, 255, 256, 1023, 1024, 4096, 8192, 65535, 65536,
    65537, 2**20, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1,
    -1, -2, -128, -129, -2**31, -2**63,
]
OTHER_VALUES: list[Any] = [
    None, True, False, 0.0, -0.5, 1.5, 1e300, float("inf"), float("nan"), b"", b"\x00" * 16,
    b"x" * 300, "", "x", "\u00e9" * 3, [], [[]], {}, {"k": 1}, {1: 2}, msgpack.ExtType(5, b"ab"),
]
SEPARATOR_DEFAULT = b"\xc1\xc1\xc1\xc1"     # 0xc1 is msgpack's never-used byte


@dataclass(frozen=True)
class Layout:
    """How a target's input is cut: config bytes, then msgpack parts."""

    header: int = 0
    separator: bytes | None = None

    def split(self, data: bytes) -> tuple[bytes, list[bytes]]:
        head, rest = data[:self.header], data[self.header:]
        if self.separator is None:
            return head, [rest]
        return head, rest.split(self.separator)

    def join(self, head: bytes, parts: list[bytes]) -> bytes:
        return head + (self.separator or b"").join(parts)


def unpack_stream(part: bytes) -> list | None:
    """The msgpack objects of `part`, or None if it is not a clean stream of them."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, unicode_errors="surrogateescape",
                                max_buffer_size=max(len(part), 1))
    try:
        unpacker.feed(part)
        objects = list(unpacker)
    except Exception:       # any malformed input: the byte-level mutator handles it
        return None
    return objects


@dataclass
class Deep:
    """A value wrapped in `depth` one-element arrays: deeper than msgpack.packb nests."""

    inner: Any
    depth: int


def pack_value(obj: Any, use_bin: bool) -> bytes:
    """msgpack bytes of obj, packing arrays and maps here so that a Deep can sit anywhere."""
    if isinstance(obj, Deep):
        return b"\x91" * obj.depth + pack_value(obj.inner, use_bin)
    if isinstance(obj, list):
        n = len(obj)
        head = bytes([0x90 | n]) if n < 16 else (b"\xdc" + n.to_bytes(2, "big") if n < 65536
                                                   else b"\xdd" + n.to_bytes(4, "big"))
        return head + b"".join(pack_value(item, use_bin) for item in obj)
    if isinstance(obj, dict):
        n = len(obj)
        head = bytes([0x80 | n]) if n < 16 else (b"\xde" + n.to_bytes(2, "big") if n < 65536
                                                   else b"\xdf" + n.to_bytes(4, "big"))
        return head + b"".join(pack_value(k, use_bin) + pack_value(v, use_bin) for k, v in obj.items())
    return msgpack.packb(obj, use_bin_type=use_bin, unicode_errors="surrogateescape")


def pack_stream(objects: list, rng: random.Random) -> bytes:
    # now and then bytes go as str (use_bin_type=False): what a careless peer sends
    use_bin = rng.random() < 0.9
    out = []
    for obj in objects:
        try:
            out.append(pack_value(obj, use_bin))
        except Exception:   # an unpackable value (a huge int made by a mutation): drop it
            continue
    return b"".join(out)


def _slots(obj: Any, found: list, depth: int = 0) -> None:
    """Every (container, key) under obj, to pick one to mutate."""
    if depth > 8 or len(found) > 200:
        return
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            found.append((obj, i))
            _slots(item, found, depth + 1)
    elif isinstance(obj, dict):
        for key in list(obj):
            found.append((obj, key))
            _slots(obj[key], found, depth + 1)


def _new_value(old: Any, rng: random.Random, donors: list) -> Any:
    roll = rng.random()
    if isinstance(old, int) and not isinstance(old, bool) and roll < 0.5:
        return rng.choice([old + 1, old - 1, old * 2, old ^ (1 << rng.randrange(64)),
                           rng.getrandbits(rng.choice([8, 16, 32, 64])), rng.choice(INTERESTING_INTS)])
    if isinstance(old, (bytes, str)) and roll < 0.5:
        if old and rng.random() < 0.5:
            cut = rng.randrange(len(old) + 1)
            return old[:cut] + old[cut + 1:] if rng.random() < 0.5 else old[:cut] + old[cut:] * 2
        return old * rng.choice([0, 2, 17])
    if isinstance(old, list) and roll < 0.5:
        return old[:rng.randrange(len(old) + 1)] if old and rng.random() < 0.5 else old + old[:3]
    if roll < 0.52:
        # nesting around the depths where recursion limits sit (Python's 1000, msgpack's 1024)
        return Deep(old, rng.choice([2, 100, 500, 990, 1000, 1010, 1100, 5000]))
    if donors and roll < 0.75:
        return copy.deepcopy(rng.choice(donors))      # donors are never changed in place
    if roll < 0.9:
        return rng.choice(INTERESTING_INTS)
    return copy.deepcopy(rng.choice(OTHER_VALUES))


def _donor_values(objects: list, limit: int = 64) -> list:
    found: list = []
    for obj in objects:
        _slots(obj, found)
    values = [container[key] for container, key in found[:limit]]
    return values + objects[:8]


def mutate_objects(objects: list, rng: random.Random, donors: list) -> list:
    """One structural change to a stream of msgpack objects (in place where it can)."""
    slots: list = []
    for obj in objects:
        _slots(obj, slots)
    roll = rng.random()
    if slots and roll < 0.7:
        container, key = rng.choice(slots)
        if isinstance(container, list) and rng.random() < 0.2:
            kind = rng.randrange(3)
            if kind == 0:
                del container[key]
            elif kind == 1:
                container.insert(key, _new_value(container[key], rng, donors))
            else:
                container[key] = [container[key]]
        else:
            container[key] = _new_value(container[key], rng, donors)
        return objects
    # stream level: drop, repeat, reorder or splice whole objects
    if objects and roll < 0.8:
        del objects[rng.randrange(len(objects))]
    elif objects and roll < 0.9:
        objects.insert(rng.randrange(len(objects) + 1), copy.deepcopy(rng.choice(objects)))
    elif len(objects) > 1 and roll < 0.95:
        i, j = rng.randrange(len(objects)), rng.randrange(len(objects))
        objects[i], objects[j] = objects[j], objects[i]
    elif donors:
        objects.insert(rng.randrange(len(objects) + 1), copy.deepcopy(rng.choice(donors)))
    return objects


class StructureMutator:
    """The custom mutator of one target: half libFuzzer's byte mutations, half msgpack-aware
    ones (one value, one object, one part, or the config byte)."""

    def __init__(self, layout: Layout, seeds: list[bytes],
                 byte_mutate: Callable[[bytes, int, random.Random], bytes] | None = None) -> None:
        self.layout = layout
        self.byte_mutate = byte_mutate or _byte_mutate
        self.seed_parts: list[bytes] = []
        donors: list = []
        for seed in seeds:
            _, parts = layout.split(seed)
            self.seed_parts.extend(p for p in parts if p)
            donors.extend(_donor_values(unpack_stream(parts[0]) or []) if parts else [])
        self.donors = donors[:2000]

    def __call__(self, data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.5:
            out = self.byte_mutate(data, max_size, rng)
        else:
            try:
                out = self.structured(data, rng)
            except RecursionError:      # copying a very deep value: mutate its bytes instead
                out = self.byte_mutate(data, max_size, rng)
        return out[:max_size]

    def structured(self, data: bytes, rng: random.Random) -> bytes:
        head, parts = self.layout.split(data)
        roll = rng.random()
        if head and roll < 0.1:
            flipped = bytearray(head)
            flipped[rng.randrange(len(head))] ^= 1 << rng.randrange(8)
            return self.layout.join(bytes(flipped), parts)
        if self.layout.separator is not None and roll < 0.3:
            if parts and rng.random() < 0.3:
                del parts[rng.randrange(len(parts))]
            elif parts and rng.random() < 0.5:
                parts.insert(rng.randrange(len(parts) + 1), rng.choice(parts))
            elif self.seed_parts:
                parts.insert(rng.randrange(len(parts) + 1), rng.choice(self.seed_parts))
            return self.layout.join(head, parts)
        if not parts:
            return data
        where = rng.randrange(len(parts))
        objects = unpack_stream(parts[where])
        if objects is None:
            return self.byte_mutate(data, max(len(data) * 2, 64), rng)
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            objects = mutate_objects(objects, rng, self.donors)
        parts[where] = pack_stream(objects, rng)
        return self.layout.join(head, parts)


def _byte_mutate(data: bytes, max_size: int, rng: random.Random) -> bytes:
    """Byte-level mutation without atheris: flips, inserts, deletes, copies."""
    buf = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4])):
        roll = rng.random()
        if buf and roll < 0.3:
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        elif buf and roll < 0.45:
            buf[rng.randrange(len(buf))] = rng.choice([0, 0xff, 0x7f, 0x80, 0xc1, rng.randrange(256)])
        elif roll < 0.6:
            at = rng.randrange(len(buf) + 1)
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 2, 4, 8])))
        elif buf and roll < 0.8:
            at = rng.randrange(len(buf))
            del buf[at:at + rng.choice([1, 2, 4, 16])]
        elif buf:
            a, b = sorted(rng.randrange(len(buf) + 1) for _ in range(2))
            at = rng.randrange(len(buf) + 1)
            buf[at:at] = buf[a:b]
    return bytes(buf[:max_size])
