"""Argument conversion shared by the pure-Python twins (the twin of ext/arguments.pxd):
errors name the argument, with the same messages as the compiled modules."""
from __future__ import annotations

import operator

MAX_NUMBER = 2**64 - 1  # message numbers are unsigned 64-bit


def _int(value: object, name: str) -> int:
    """`value` as an int (an int or __index__), TypeError naming `name` otherwise."""
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None


def _number(value: object, name: str) -> int:
    """`value` as an int in 0..MAX_NUMBER, or TypeError/ValueError naming `name`."""
    n = _int(value, name)
    if n < 0 or n > MAX_NUMBER:
        raise ValueError(f"{name} must be in 0..2**64-1, got {n}")
    return n
