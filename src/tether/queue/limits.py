"""`ServiceLimits`: what one client may cost a queue service, so that no client can take
the service down for the others. Every limit has a default, is validated, and is set in
the `[limits]` table of `tether qm serve`'s configuration (or passed to `qm.listen()`).

    max_connections              sessions served at once (each a client or a forwarder)
    max_connections_per_address  ... from one peer address
    max_pending_requests         requests of one session being served at once (a frame of
                                 65,536 RECEIVEs must not become 65,536 tasks)
    max_waiting_receives         RECEIVE calls of one client waiting for a message
    max_reply_bytes              reply bytes a session has sent and the client not yet
                                 acknowledged: at this level its consumers stop delivering,
                                 at twice this level, or after reply_stall seconds over it,
                                 the session is dropped (a client that does not read)
    reply_stall                  see max_reply_bytes
    log_interval                 seconds between two log lines about one peer's malformed
                                 input (the lines in between are counted, not written)
    hello_timeout                seconds a new session has to say HELLO (and authenticate)
    max_failed_logins            failed logins from one peer address per failed_login_window
                                 seconds; beyond them its logins are refused without being
                                 checked (each check costs a scrypt computation)
    failed_login_window          see max_failed_logins

A request over a limit gets `LimitExceeded` naming the limit; a connection over
max_connections(_per_address) is refused with it at HELLO.
"""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

from ..errors import LimitExceeded


@dataclass(frozen=True)
class ServiceLimits:
    """The validated limits of one queue service (see the module docstring)."""

    max_connections: int = 1024
    max_connections_per_address: int = 256
    max_pending_requests: int = 4096
    max_waiting_receives: int = 1024
    max_reply_bytes: int = 64 * 1024 * 1024
    reply_stall: float = 30.0
    log_interval: float = 10.0
    hello_timeout: float = 10.0
    max_failed_logins: int = 10
    failed_login_window: float = 60.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" or isinstance(f.default, int):
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"limit {f.name} must be an integer >= 1, not {value!r}")
            else:
                if isinstance(value, bool) or not isinstance(value, (int, float)) \
                        or not (value > 0 and math.isfinite(value)):
                    raise ValueError(f"limit {f.name} must be a finite number of seconds > 0, not {value!r}")

    @classmethod
    def from_kwargs(cls, **limits: Any) -> "ServiceLimits":
        """Limits from keyword arguments; ValueError naming an unknown or bad one."""
        known = {f.name for f in fields(cls)}
        unknown = set(limits) - known
        if unknown:
            raise ValueError(f"unknown limits {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
        return cls(**limits)

    def as_dict(self) -> dict[str, Any]:
        """The limits as plain values."""
        return asdict(self)


class FailedLogins:
    """Failed logins per peer address in a sliding window (see max_failed_logins)."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._failures: dict[Any, deque[float]] = {}

    def _recent(self, address: Any) -> deque[float]:
        failures = self._failures.get(address)
        if failures is None:
            return deque()
        oldest = self._clock() - self.window
        while failures and failures[0] < oldest:
            failures.popleft()
        if not failures:
            del self._failures[address]
        return failures

    def blocked(self, address: Any) -> bool:
        """True while `address` has failed `limit` logins within the window."""
        return len(self._recent(address)) >= self.limit

    def failed(self, address: Any) -> None:
        """One more failed login from `address`."""
        self._recent(address)
        self._failures.setdefault(address, deque()).append(self._clock())
        if len(self._failures) > 65536:        # bounded: the oldest addresses go first
            del self._failures[next(iter(self._failures))]


def exceeded(limit: str, value: int, what: str) -> LimitExceeded:
    """The LimitExceeded for `what` going over `limit`=`value`."""
    return LimitExceeded(f"{what}: over the limit {limit}={value}")
