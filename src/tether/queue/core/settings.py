"""Queue settings: names after WCF's MSMQ binding, defaults as there (docs/queues.md).

`QueueSettings.from_kwargs(**settings)` validates every value and raises `ValueError` (or
`TypeError` for a wrong type) naming the setting; the result is immutable and round-trips
through `as_dict()` / `from_dict()` so a queue definition can be journaled.
"""
from __future__ import annotations

import math
import reprlib
from dataclasses import asdict, dataclass, fields
from datetime import timedelta
from typing import Any

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

@dataclass(frozen=True, slots=True)
class QueueSettings:
    """The validated settings of one queue."""

    durable: bool = True
    exactly_once: bool = True
    time_to_live: float | None = DAY          # seconds; None: messages never expire
    dead_letter_queue: str = DEAD_LETTER_SYSTEM
    receive_retry_count: int = 5
    max_retry_cycles: int = 2
    retry_cycle_delay: float = 1800.0
    receive_error_handling: str = "fault"
    max_message_size: int = 65536
    validity_duration: float = 300.0
    max_length: int | None = None

    @classmethod
    def from_kwargs(cls, **settings: Any) -> "QueueSettings":
        """Validated settings; unknown names, wrong types and out-of-range values raise."""
        known = {f.name for f in fields(cls)}
        for name in settings:
            if name not in known:
                raise ValueError(f"unknown queue setting {name!r} (known: {', '.join(sorted(known))})")
        values = asdict(cls())
        values.update(settings)
        return cls(
            durable=_bool("durable", values["durable"]),
            exactly_once=_bool("exactly_once", values["exactly_once"]),
            time_to_live=_seconds("time_to_live", values["time_to_live"], allow_none=True, allow_zero=False),
            dead_letter_queue=_dead_letter_queue(values["dead_letter_queue"]),
            receive_retry_count=_count("receive_retry_count", values["receive_retry_count"], minimum=0),
            max_retry_cycles=_count("max_retry_cycles", values["max_retry_cycles"], minimum=0),
            retry_cycle_delay=_seconds("retry_cycle_delay", values["retry_cycle_delay"], allow_zero=True),
            receive_error_handling=_choice("receive_error_handling", values["receive_error_handling"],
                                           RECEIVE_ERROR_HANDLING),
            max_message_size=_count("max_message_size", values["max_message_size"], minimum=1,
                                    maximum=MAX_MESSAGE_SIZE_LIMIT),
            validity_duration=_seconds("validity_duration", values["validity_duration"], allow_zero=False),
            max_length=(None if values["max_length"] is None
                        else _count("max_length", values["max_length"], minimum=1)),
        )

    @classmethod
    def from_dict(cls, data: dict) -> "QueueSettings":
        """Settings from `as_dict()` output (a journaled definition), validated again."""
        return cls.from_kwargs(**data)

    def as_dict(self) -> dict:
        """Plain values, suitable for msgpack/JSON."""
        return asdict(self)

    @property
    def attempts_per_message(self) -> int:
        """How many times a failing message is delivered before `receive_error_handling`."""
        return (self.receive_retry_count + 1) * (self.max_retry_cycles + 1)


# Values come from remote clients too (CREATE): shown by a bounded repr, since repr() of a
# value nested ~1000 deep raises RecursionError and of a huge one costs its whole size.
_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = _REPR.maxother = 80


def _show(value: Any) -> str:
    return _REPR.repr(value)[:80]


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"queue setting {name} must be True or False, not {_show(value)}")
    return value


def _number(name: str, value: Any) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"queue setting {name} must be a number of seconds, not {_show(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"queue setting {name} must be finite, not {_show(value)}")
    return value


def _seconds(name: str, value: Any, *, allow_none: bool = False, allow_zero: bool) -> float | None:
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"queue setting {name} must be a number of seconds, not None")
    seconds = _number(name, value)
    if seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"queue setting {name} must be {bound} seconds, not {_show(value)}")
    return seconds


def _count(name: str, value: Any, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"queue setting {name} must be an integer, not {_show(value)}")
    if value < minimum:
        raise ValueError(f"queue setting {name} must be >= {minimum}, not {_show(value)}")
    if maximum is not None and value > maximum:
        raise ValueError(f"queue setting {name} must be <= {maximum}, not {_show(value)}")
    return value


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"queue setting {name} must be one of {', '.join(choices)}; not {_show(value)}")
    return value


def _dead_letter_queue(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"queue setting dead_letter_queue must be a string, not {_show(value)}")
    if value in (DEAD_LETTER_NONE, DEAD_LETTER_SYSTEM):
        return value
    try:
        validate_queue_name(value)
    except ValueError as exc:
        raise ValueError(f"queue setting dead_letter_queue: {exc}") from None
    return value
