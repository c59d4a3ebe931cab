"""tether: reliable sessions and durable queues for Python services.

Sessions (exactly-once, ordered messages over udp://, tcp:// and tls:// URLs):

    connect(url, **settings)          a client Session (await it, or `async with`)
    serve(handler, url, **settings)   a listening Server (await it, or `async with`)
    Session, Server, SessionSettings  what they give, and the settings they take

asyncio drop-ins over sessions: open_connection, start_server (streams) and
create_connection, create_server (protocols, SessionTransport).

Queues (the MSMQ model, durable and exactly-once):

    QueueManager.open(data_dir, listen=...)   an embedded queue manager
    QueueClient.connect(url, ...)             the same methods, against `tether qm serve`
    Message, QueueSettings                    a received message; a queue's settings

Every error is a TetherError (tether.errors); queue errors are QueueErrors. NATIVE says
whether the compiled core is in use (False: the pure-Python twins). docs/configuration.md
lists every setting. tether.metrics: the process's Prometheus metrics (docs/operations.md).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import errors as _errors
from .errors import *  # noqa: F403  (every error class, listed in tether.errors.__all__)

if TYPE_CHECKING:   # what the lazy names below are, for type checkers and IDEs
    from .layer1 import NATIVE
    from .queue.client import QueueClient
    from .queue.core.settings import QueueSettings
    from .queue.manager import QueueManager
    from .queue.message import Message
    from .session.adapters.api import Server, connect, serve
    from .session.adapters.session import Session
    from .session.sansio.settings import SessionSettings
    from .streams import SessionTransport, create_connection, create_server, open_connection, start_server

__version__ = "0.1.0"

# Public names that live in submodules, imported on first use so `import tether` stays cheap.
_LAZY = {
    "connect": "tether.session.adapters.api",
    "serve": "tether.session.adapters.api",
    "Session": "tether.session.adapters.api",
    "Server": "tether.session.adapters.api",
    "SessionSettings": "tether.session.sansio.settings",
    "open_connection": "tether.streams",
    "start_server": "tether.streams",
    "create_connection": "tether.streams",
    "create_server": "tether.streams",
    "SessionTransport": "tether.streams",
    "QueueManager": "tether.queue.manager",
    "QueueClient": "tether.queue.client",
    "Message": "tether.queue.message",
    "QueueSettings": "tether.queue.core.settings",
    "NATIVE": "tether.layer1",
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


def __dir__() -> list[str]:
    # dir(tether) and help(tether) list the lazy names too
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "NATIVE",
    "Message",
    "QueueClient",
    "QueueManager",
    "QueueSettings",
    "Server",
    "Session",
    "SessionSettings",
    "SessionTransport",
    "connect",
    "create_connection",
    "create_server",
    "open_connection",
    "serve",
    "start_server",
]
__all__ += _errors.__all__
