"""Session settings: the table of docs/sessions.md (names and defaults after WCF's
<reliableSession>), each validated with a ValueError/TypeError that names the setting."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

MAX_WINDOW = 4096
MAX_PENDING_CHANNELS = 16384
# A message larger than this would not fit the TCP framing's sanity bound; it is also far
# beyond what one reliable-session message should carry.
MAX_MESSAGE_SIZE_LIMIT = 16 * 1024 * 1024


@dataclass(frozen=True)
class SessionSettings:
    """Every tunable of a reliable session. Construct with keyword arguments; unknown names
    raise TypeError, out-of-range values ValueError, both naming the setting."""

    ack_interval: float = 0.2
    flow_control: bool = True
    inactivity_timeout: float = 600.0
    max_pending_channels: int = 4
    max_retry_count: int = 8
    max_transfer_window: int = 8
    ordered: bool = True
    max_message_size: int = 65536
    # Not in WCF's table: how long connect() waits for the handshake (and a TCP client for
    # a reconnect) before giving up.
    connect_timeout: float = 10.0
    # WCF's CloseTimeout: the longest close() (and leaving `async with`) waits for the peer
    # to acknowledge everything; then the session is aborted and close() raises TimeoutError.
    close_timeout: float = 60.0

    def __post_init__(self) -> None:
        _seconds("ack_interval", self.ack_interval, low=0.0, high=60.0, low_inclusive=True)
        _flag("flow_control", self.flow_control)
        _seconds("inactivity_timeout", self.inactivity_timeout, low=0.0, high=86400.0 * 365)
        _integer("max_pending_channels", self.max_pending_channels, 1, MAX_PENDING_CHANNELS)
        _integer("max_retry_count", self.max_retry_count, 1, 1000)
        _integer("max_transfer_window", self.max_transfer_window, 1, MAX_WINDOW)
        _flag("ordered", self.ordered)
        _integer("max_message_size", self.max_message_size, 1, MAX_MESSAGE_SIZE_LIMIT)
        _seconds("connect_timeout", self.connect_timeout, low=0.0, high=3600.0)
        _seconds("close_timeout", self.close_timeout, low=0.0, high=86400.0)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "SessionSettings":
        """Settings from keyword arguments, rejecting unknown names."""
        known = {f.name for f in fields(cls)}
        for name in kwargs:
            if name not in known:
                raise TypeError(f"unknown session setting {name!r}; known: {', '.join(sorted(known))}")
        return cls(**kwargs)

    @property
    def keepalive_interval(self) -> float:
        """Idle time after which an AckRequested keepalive is sent: often enough that the
        peer hears us several times per inactivity_timeout."""
        return min(self.inactivity_timeout / 4.0, 30.0)


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {value!r}")


def _integer(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in {low}..{high}, not {value}")


def _seconds(name: str, value: Any, low: float, high: float, low_inclusive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value > high or value < low or (value == low and not low_inclusive):
        bound = "[" if low_inclusive else "("
        raise ValueError(f"{name} must be in {bound}{low}, {high}] seconds, not {value}")
