"""Which implementation of layer 1 an engine runs on: the compiled one (what users get), or
the pure-Python twins: tests run the simulation on both. `default()` is the one
tether.layer1 chose for the process (the twins under TETHER_PUREPYTHON=1 or in an install
built without a compiler; see tether.NATIVE)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from types import ModuleType

from ... import layer1


@dataclass(frozen=True)
class Core:
    SendWindow: type
    ReceiveWindow: type
    RttEstimator: type
    DeadlineHeap: type
    codec: ModuleType


@cache
def load(package: str = "tether._native") -> Core:
    """The layer-1 classes from `package` (tether._native or tether._reference)."""
    def mod(name: str) -> ModuleType:
        return importlib.import_module(f"{package}.{name}")

    return Core(
        SendWindow=mod("send_window").SendWindow,
        ReceiveWindow=mod("receive_window").ReceiveWindow,
        RttEstimator=mod("rtt").RttEstimator,
        DeadlineHeap=mod("rtt").DeadlineHeap,
        codec=mod("codec"),
    )


def native() -> Core:
    return load("tether._native")


def reference() -> Core:
    return load("tether._reference")


def default() -> Core:
    """The core tether.layer1 chose: compiled, unless tether.NATIVE is False."""
    return load(layer1.PACKAGE)
