"""tether: reliable sessions and durable queues for Python services.

The public API (docs/architecture.md, "API"): `connect`, `serve`, `open_connection`,
`start_server`, `create_connection`, `create_server`, `QueueManager`, `QueueClient`, and
the error classes of `tether.errors`; `tether.metrics` (Prometheus metrics of the process).
"""
from __future__ import annotations

import importlib
from typing import Any

from . import errors as _errors
from .errors import *  # noqa: F401,F403

__version__ = "0.1.0"

# Public names that live in submodules, imported on first use so `import tether` stays cheap.
_LAZY = {
    "connect": "tether.session.adapters.api",
    "serve": "tether.session.adapters.api",
    "Session": "tether.session.adapters.api",
    "Server": "tether.session.adapters.api",
    "open_connection": "tether.streams",
    "start_server": "tether.streams",
    "create_connection": "tether.streams",
    "create_server": "tether.streams",
    "QueueManager": "tether.queue.manager",
    "Message": "tether.queue.message",
    "QueueClient": "tether.queue.client",
}


#: Submodules `tether.NAME` imports on first use: the Prometheus metrics need prometheus_client.
_SUBMODULES = ("metrics",)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"tether.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tether' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = sorted(_errors.__all__ + list(_LAZY))
