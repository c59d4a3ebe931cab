"""Message headers: checked by encoding them once, at the sender's queue manager, and handed
to receivers as read-only copies.

A header map has string names and msgpack values (nil, bool, integers, floats, strings,
bytes, arrays, maps), nested at most MAX_HEADER_DEPTH deep, and encodes to at most the
queue's max_message_size bytes. A map that breaks a rule is refused with TypeError or
ValueError naming the rule, before anything is queued: the journal writes the encoded bytes
as they are, so a header can never make a later journal write fail.
"""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import msgpack

#: Deepest nesting of arrays and maps inside a header map (the map itself is depth 1).
MAX_HEADER_DEPTH = 32

_SCALARS = (str, bytes, int, float, bool, type(None))
_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 64) - 1


class HeadersTooLarge(ValueError):
    """Headers that encode to more bytes than allowed."""


def _builtin(value: Any) -> Any:
    # a received message's (read-only) headers sent on again
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot serialize {type(value).__name__}")


# One reused Packer (a new one per call costs ~0.7 us); it resets itself after a failed pack.
_packer = msgpack.Packer(use_bin_type=True, default=_builtin)


def encode_headers(headers: Any, max_bytes: int) -> bytes | None:
    """The encoded form of a header map (None for an empty one). TypeError for a value of a
    type msgpack cannot carry or a non-string name; ValueError for nesting deeper than
    MAX_HEADER_DEPTH or an encoding over `max_bytes`."""
    if headers is None:
        return None
    if not isinstance(headers, Mapping):
        raise TypeError(f"headers must be a dict, not {type(headers).__name__}")
    if not headers:
        return None
    for name in headers:
        if name.__class__ is not str:
            raise TypeError(f"header names must be strings, not {name!r:.60}")
    _check_values(headers)
    try:
        data = _packer.pack(headers)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"headers must hold msgpack-serializable values: {exc}") from None
    if len(data) > max_bytes:
        raise HeadersTooLarge(f"headers encode to {len(data)} bytes, over the limit of {max_bytes} "
                         f"(the queue's max_message_size)")
    return data


def _check_values(headers: Mapping) -> None:
    """TypeError/ValueError for a value msgpack cannot carry or nesting over the limit
    (iterative: a hostile depth must not exhaust the C stack)."""
    stack: list[tuple[Any, int]] = [(headers, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, Mapping):
            items: Any = value.items()
            children = [v for kv in items for v in kv]
        elif isinstance(value, (list, tuple)):
            children = value
        else:
            continue
        for child in children:
            if child.__class__ in _SCALARS:
                if child.__class__ is int and not _INT_MIN <= child <= _INT_MAX:
                    raise ValueError(f"header integer {child} does not fit 64 bits")
                continue
            if isinstance(child, (Mapping, list, tuple)):
                if depth + 1 > MAX_HEADER_DEPTH:
                    raise ValueError(f"headers are nested more than {MAX_HEADER_DEPTH} deep")
                stack.append((child, depth + 1))
            elif not isinstance(child, _SCALARS):
                raise TypeError(f"headers must hold msgpack-serializable values, not {type(child).__name__}")


def _frozen_map(pairs: list[tuple[Any, Any]]) -> Mapping:
    return MappingProxyType(dict(pairs))


_EMPTY: Mapping = MappingProxyType({})


def decode_headers(data: bytes | None) -> Mapping:
    """A read-only copy of encoded headers: maps are read-only, arrays are tuples."""
    if data is None:
        return _EMPTY
    return msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=False,
                           object_pairs_hook=_frozen_map)


def plain_headers(data: bytes | None) -> dict | None:
    """Encoded headers as plain (mutable) dicts and lists: for re-encoding on the wire."""
    if data is None:
        return None
    return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)
