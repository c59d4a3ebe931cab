"""Queue settings: names after WCF's MSMQ binding, defaults as there (docs/queues.md).

`QueueSettings.from_kwargs(**settings)` validates every value and raises `ValueError` (or
`TypeError` for a wrong type) naming the setting; the result is immutable and round-trips
through `as_dict()` / `from_dict()` so a queue definition can be journaled.
"""
from __future__ import annotations

import math
import reprlib
from dataclasses import asdict, dataclass, field, fields
from datetime import timedelta
from typing import Any, Protocol, TypedDict

from .address import validate_queue_name

DAY = 86400.0

#: What happens to a message once every retry failed (`receive_error_handling`).
RECEIVE_ERROR_HANDLING = ("fault", "drop", "reject", "move")
#: `dead_letter_queue` values that are not a queue name.
DEAD_LETTER_NONE = "none"
DEAD_LETTER_SYSTEM = "system"
#: The system dead-letter queue.
SYSTEM_DEAD_LETTER_QUEUE = "$dead"


# A message must fit a journal record (4 GiB length field) many times over in one batch, and
# the session that carries it remotely (tether.session.sansio.settings.MAX_MESSAGE_SIZE_LIMIT).
MAX_MESSAGE_SIZE_LIMIT = 16 * 1024 * 1024


# Values come from remote clients too (CREATE): shown by a bounded repr, since repr() of a
# value nested ~1000 deep raises RecursionError and of a huge one costs its whole size.
_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = _REPR.maxother = 80


def _show(value: Any) -> str:
    return _REPR.repr(value)[:80]


def _number(name: str, value: Any) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"queue setting {name} must be a number of seconds, not {_show(value)}")
    seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"queue setting {name} must be finite, not {_show(seconds)}")
    return seconds


# ---- the checks: each validates a value (naming the setting when it is wrong), returns it
# normalized (a timedelta or an int of seconds becomes a float), and describes its range ----

class _Check(Protocol):
    def __call__(self, name: str, value: Any) -> Any: ...

    def describe(self) -> str: ...


class _Flag:
    def __call__(self, name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise TypeError(f"queue setting {name} must be True or False, not {_show(value)}")
        return value

    def describe(self) -> str:
        return "True, False"


class _Seconds:
    def __init__(self, *, allow_zero: bool, allow_none: bool = False) -> None:
        self.allow_zero = allow_zero
        self.allow_none = allow_none

    def __call__(self, name: str, value: Any) -> float | None:
        if value is None:
            if self.allow_none:
                return None
            raise TypeError(f"queue setting {name} must be a number of seconds, not None")
        seconds = _number(name, value)
        if seconds < 0 or (seconds == 0 and not self.allow_zero):
            bound = ">= 0" if self.allow_zero else "> 0"
            raise ValueError(f"queue setting {name} must be {bound} seconds, not {_show(value)}")
        return seconds

    def describe(self) -> str:
        text = ">= 0 s" if self.allow_zero else "> 0 s"
        return text + (", or None" if self.allow_none else "")


class _Count:
    def __init__(self, *, minimum: int, maximum: int | None = None, allow_none: bool = False) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.allow_none = allow_none

    def __call__(self, name: str, value: Any) -> int | None:
        if value is None and self.allow_none:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"queue setting {name} must be an integer, not {_show(value)}")
        if value < self.minimum:
            raise ValueError(f"queue setting {name} must be >= {self.minimum}, not {_show(value)}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"queue setting {name} must be <= {self.maximum}, not {_show(value)}")
        return value

    def describe(self) -> str:
        text = f">= {self.minimum}" if self.maximum is None else f"{self.minimum} .. {self.maximum}"
        return text + (", or None" if self.allow_none else "")


class _Choice:
    def __init__(self, choices: tuple[str, ...]) -> None:
        self.choices = choices

    def __call__(self, name: str, value: Any) -> str:
        if value not in self.choices:
            raise ValueError(f"queue setting {name} must be one of {', '.join(self.choices)}; not {_show(value)}")
        return str(value)

    def describe(self) -> str:
        return ", ".join(f'"{choice}"' for choice in self.choices)


class _DeadLetterQueue:
    def __call__(self, name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise TypeError(f"queue setting {name} must be a string, not {_show(value)}")
        if value in (DEAD_LETTER_NONE, DEAD_LETTER_SYSTEM):
            return value
        try:
            validate_queue_name(value)
        except ValueError as exc:
            raise ValueError(f"queue setting {name}: {exc}") from None
        return value

    def describe(self) -> str:
        return f'"{DEAD_LETTER_SYSTEM}", "{DEAD_LETTER_NONE}", or a queue name'


def _setting(default: Any, check: _Check, doc: str) -> Any:
    """A QueueSettings field that carries its check (`metadata["check"]`, which validates
    and normalizes a value) and meaning (`metadata["doc"]`)."""
    return field(default=default, metadata={"check": check, "doc": doc})


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """The validated settings of one queue."""

    durable: bool = _setting(
        True, _Flag(),
        "False: the queue lives in memory and is gone after a restart (its definition stays).")
    exactly_once: bool = _setting(
        True, _Flag(),
        "False: no de-duplication of resent messages and no transactions.")
    time_to_live: float | None = _setting(
        DAY, _Seconds(allow_none=True, allow_zero=False),
        "Seconds: a message not received within it is dead-lettered with reason `expired`; "
        "None: messages never expire.")
    dead_letter_queue: str = _setting(
        DEAD_LETTER_SYSTEM, _DeadLetterQueue(),
        'Where expired and rejected messages go: "system" (`$dead`), "none" (dropped), or the '
        "name of a queue of yours.")
    receive_retry_count: int = _setting(
        5, _Count(minimum=0),
        "Immediate redeliveries after a failed delivery (an abandon, a rollback, a lock that "
        "ran out).")
    max_retry_cycles: int = _setting(
        2, _Count(minimum=0),
        "Then the message waits in the `;retry` sub-queue for `retry_cycle_delay` and starts "
        "another cycle of deliveries, this many times.")
    retry_cycle_delay: float = _setting(
        1800.0, _Seconds(allow_zero=True),
        "Seconds a message waits in `;retry` between two cycles of deliveries.")
    receive_error_handling: str = _setting(
        "fault", _Choice(RECEIVE_ERROR_HANDLING),
        'What happens once every cycle failed: "fault" (the message moves to `;poison` and '
        "the queue stops delivering: receivers get PoisonMessage until `;poison` is empty), "
        '"drop" (deleted), "reject" (dead-lettered with reason `rejected`), "move" (to '
        "`;poison`; the queue goes on).")
    max_message_size: int = _setting(
        65536, _Count(minimum=1, maximum=MAX_MESSAGE_SIZE_LIMIT),
        "Bytes: the largest body, and the largest encoded headers, a send may carry "
        "(QueueMessageTooLarge beyond).")
    validity_duration: float = _setting(
        300.0, _Seconds(allow_zero=False),
        "Seconds a peek-lock lasts: a received message neither completed nor abandoned by "
        "then returns to the queue (counted as a failed delivery); `renew_lock()` extends it.")
    max_length: int | None = _setting(
        None, _Count(minimum=1, allow_none=True),
        "The most messages the queue holds; a send beyond it raises QueueFull. None: no limit.")

    @classmethod
    def from_kwargs(cls, **settings: Any) -> QueueSettings:
        """Validated settings; unknown names, wrong types and out-of-range values raise."""
        known = {f.name for f in fields(cls)}
        for name in settings:
            if name not in known:
                raise ValueError(f"unknown queue setting {name!r} (known: {', '.join(sorted(known))})")
        values = {f.name: f.metadata["check"](f.name, settings.get(f.name, f.default)) for f in fields(cls)}
        return cls(**values)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QueueSettings:
        """Settings from `as_dict()` output (a journaled definition), validated again."""
        return cls.from_kwargs(**data)

    def as_dict(self) -> dict[str, Any]:
        """Plain values, suitable for msgpack/JSON."""
        return asdict(self)

    @property
    def attempts_per_message(self) -> int:
        """How many times a failing message is delivered before `receive_error_handling`."""
        return (self.receive_retry_count + 1) * (self.max_retry_cycles + 1)


class QueueOptions(TypedDict, total=False):
    """QueueSettings' fields as keyword arguments (`create_queue(name, **settings)`), for
    type checkers; tests keep the two the same. Durations may also be timedeltas."""

    durable: bool
    exactly_once: bool
    time_to_live: float | timedelta | None
    dead_letter_queue: str
    receive_retry_count: int
    max_retry_cycles: int
    retry_cycle_delay: float | timedelta
    receive_error_handling: str
    max_message_size: int
    validity_duration: float | timedelta
    max_length: int | None
