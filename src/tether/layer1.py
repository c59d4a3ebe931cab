"""The layer-1 modules (tether._native, compiled from ext/) or their pure-Python twins
(tether._reference), chosen once for the whole process:

- TETHER_PUREPYTHON=1 selects the twins, as msgpack's MSGPACK_PUREPYTHON does;
- an install built without a C compiler has no compiled module at all (setup.py builds all
  or none): the twins, with one RuntimeWarning saying so;
- otherwise the compiled modules. One that is missing while others are there is a broken
  build: ImportError naming it, never a silent mix.

`NATIVE` (also `tether.NATIVE`) says which one is in use.
"""
from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType

#: every ext/NAME.pyx, each with its twin tether._reference.NAME
NAMES = ("codec", "journal_io", "rangeset", "receive_window", "rtt", "send_window", "udp_io")
NATIVE_PACKAGE = "tether._native"
REFERENCE_PACKAGE = "tether._reference"

FALLBACK_WARNING = (
    "tether's compiled core (tether._native) is not installed: running on the pure-Python "
    "twins (tether._reference), several times slower. Reinstall with a C compiler and the "
    "Python headers, or from a binary wheel; set TETHER_PUREPYTHON=1 to choose the twins "
    "without this warning.")


def _compiled_modules() -> list[str]:
    """The names whose compiled module imports; ImportError for a broken build."""
    found, missing = [], []
    for name in NAMES:
        try:
            importlib.import_module(f"{NATIVE_PACKAGE}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{NATIVE_PACKAGE}.{name}":
                raise       # the module is there but needs something that is not
            missing.append(name)
        else:
            found.append(name)
    if found and missing:
        raise ImportError(f"tether's compiled core is incomplete: {', '.join(missing)} missing from "
                          f"{NATIVE_PACKAGE} (rebuild: python setup.py build_ext --inplace)")
    return found


def _choose() -> bool:
    if os.environ.get("TETHER_PUREPYTHON") == "1":
        return False
    if _compiled_modules():
        return True
    warnings.warn(FALLBACK_WARNING, RuntimeWarning, stacklevel=1)
    return False


#: True when the compiled modules are in use, False on the pure-Python twins
NATIVE: bool = _choose()
PACKAGE = NATIVE_PACKAGE if NATIVE else REFERENCE_PACKAGE


def module(name: str) -> ModuleType:
    """tether._native.NAME, or its twin when NATIVE is False."""
    return importlib.import_module(f"{PACKAGE}.{name}")


RangeSet = module("rangeset").RangeSet
