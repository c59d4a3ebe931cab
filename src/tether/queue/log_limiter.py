"""`LogLimiter`: at most one log line per key (a peer) per interval; the lines it holds back
are counted and the count goes out with the next line, so a flood of malformed input cannot
turn into a flood of log lines (each written synchronously)."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

#: Keys kept at most; the oldest are forgotten beyond it (peers come and go).
MAX_KEYS = 4096


class LogLimiter:
    """One line per key per `interval` seconds (see the module docstring)."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._state: dict[Hashable, tuple[float, int]] = {}     # key -> (last written, held back)

    def log(self, logger: logging.Logger, level: int, key: Hashable, message: str, *args: object) -> bool:
        """Write the line now, or count it; True when it was written."""
        now = self._clock()
        last, held = self._state.get(key, (float("-inf"), 0))
        if now - last < self.interval:
            self._state[key] = (last, held + 1)
            return False
        if held:
            message += " (and %d more like it since the last line about this peer)"
            args = (*args, held)
        logger.log(level, message, *args)
        self._state.pop(key, None)
        self._state[key] = (now, 0)
        if len(self._state) > MAX_KEYS:
            del self._state[next(iter(self._state))]
        return True
