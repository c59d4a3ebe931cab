"""`ServiceLimits`: what one client may cost a queue service, so that no client can take
the service down for the others. Every limit has a default, is validated, and is set in
the `[limits]` table of `tether qm serve`'s configuration (or passed to `qm.listen()`);
each field says what it limits (docs/configuration.md lists them all).

A request over a limit gets `LimitExceeded` naming the limit; a connection over
max_connections(_per_address) is refused with it at HELLO.
"""
from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import LimitExceeded


def _limit(default: int | float, doc: str) -> Any:
    """A ServiceLimits field with its meaning (`metadata["doc"]`); every limit is an integer
    >= 1, or (a float default) a finite number of seconds > 0."""
    allowed = ">= 1" if isinstance(default, int) else "> 0 s"
    return field(default=default, metadata={"doc": doc, "range": allowed})


@dataclass(frozen=True)
class ServiceLimits:
    """The validated limits of one queue service (see the module docstring)."""

    max_connections: int = _limit(1024, "Sessions served at once (each a client or a forwarder).")
    max_connections_per_address: int = _limit(256, "Sessions served at once from one peer address.")
    max_pending_requests: int = _limit(
        4096, "Requests of one session being served at once (a frame of 65,536 RECEIVEs must not "
        "become 65,536 tasks).")
    max_waiting_receives: int = _limit(1024, "RECEIVE calls of one client waiting for a message.")
    max_reply_bytes: int = _limit(
        64 * 1024 * 1024, "Reply bytes a session has sent and the client not yet acknowledged: at "
        "this level its consumers stop delivering; at twice this level, or after reply_stall "
        "seconds over it, the session is dropped (a client that does not read).")
    reply_stall: float = _limit(30.0, "Seconds a session may stay over max_reply_bytes.")
    log_interval: float = _limit(
        10.0, "Seconds between two log lines about one peer's malformed input (the lines in "
        "between are counted, not written).")
    hello_timeout: float = _limit(10.0, "Seconds a new session has to say HELLO (and authenticate).")
    max_failed_logins: int = _limit(
        10, "Failed logins from one peer address per failed_login_window; beyond them its logins "
        "are refused without being checked (each check costs a scrypt computation).")
    failed_login_window: float = _limit(60.0, "Seconds over which max_failed_logins counts.")

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
    def from_kwargs(cls, **limits: Any) -> ServiceLimits:
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
