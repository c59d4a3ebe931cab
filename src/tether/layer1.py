"""The layer-1 modules (tether._native, compiled from ext/) or their pure-Python twins
(tether._reference), chosen once: TETHER_PUREPYTHON=1 selects the twins, as msgpack's
MSGPACK_PUREPYTHON does. A missing compiled module is an ImportError, never a fallback."""
from __future__ import annotations

import importlib
import os
from types import ModuleType

PACKAGE = "tether._reference" if os.environ.get("TETHER_PUREPYTHON") == "1" else "tether._native"


def module(name: str) -> ModuleType:
    """tether._native.NAME (or its twin under TETHER_PUREPYTHON=1)."""
    return importlib.import_module(f"{PACKAGE}.{name}")


RangeSet = module("rangeset").RangeSet
