"""Shared helpers for the micro-benchmarks: each module runs as native and as reference.

Run with `PYTHONPATH=src python -m pytest benchmarks/bench_NAME.py --benchmark-enable -q`;
compare the two rows of a group (same run): native / reference is the speed-up.
"""
from __future__ import annotations

import importlib

import pytest


def twins(name: str):
    """(native, reference) modules for ext/NAME.pyx and src/tether/_reference/NAME.py."""
    return (
        importlib.import_module(f"tether._native.{name}"),
        importlib.import_module(f"tether._reference.{name}"),
    )


@pytest.fixture(params=["native", "reference"])
def impl(request) -> str:
    """Which twin a benchmark runs; pick the module with `twins(name)[impl == 'reference']`."""
    return request.param
