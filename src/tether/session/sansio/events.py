"""What the session engine tells its adapter, returned in batches by `events()`."""
from __future__ import annotations

from dataclasses import dataclass

from ...errors import TetherError


@dataclass(slots=True)
class Connected:
    """The handshake completed (client) or the session was created (server)."""


@dataclass(slots=True)
class MessagesDelivered:
    """Messages for the application, in delivery order."""

    messages: list


@dataclass(slots=True)
class PeerClosed:
    """The peer closed its sequence and every message of it has been delivered (EOF)."""


@dataclass(slots=True)
class SessionEnded:
    """The session is over: gracefully when `error` is None, else by that fault."""

    error: TetherError | None
