"""asyncio drop-ins over reliable sessions: `open_connection`/`start_server` give the
standard `asyncio.StreamReader`/`StreamWriter`; `create_connection`/`create_server` run any
`asyncio.Protocol` or `BufferedProtocol` over a `SessionTransport`."""
from __future__ import annotations

from .api import create_connection, create_server, open_connection, start_server
from .server import StreamServer
from .transport import SessionTransport

__all__ = ["SessionTransport", "StreamServer", "create_connection", "create_server",
           "open_connection", "start_server"]
