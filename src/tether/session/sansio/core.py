"""Which implementation of layer 1 an engine runs on: the compiled one (what users get), or
the pure-Python twins: tests run the simulation on both, and TETHER_PUREPYTHON=1 selects
the twins for everything explicitly (as msgpack's MSGPACK_PUREPYTHON does). A missing
compiled module is an ImportError, never a silent fallback."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType

from ... import layer1


@dataclass(frozen=True)
class Core:
    SendWindow: type
    ReceiveWindow: type
    RttEstimator: type
    DeadlineHeap: type
    codec: ModuleType


@lru_cache(maxsize=None)
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
    """The compiled core, unless TETHER_PUREPYTHON=1 asks for the twins (tether.layer1)."""
    return load(layer1.PACKAGE)
