"""The source journal (MSMQ's UseJournalQueue): a copy of each forwarded message that the
target queue manager acknowledged, kept in this queue manager's `$journal` queue.

A message is journaled when it was sent with `journal=True`, or, sent to another queue
manager (a tether:// address), with `journal` left unset by a manager opened with
`source_journal=True`. A forwarded message is journaled when its target accepts it: its
completion in the transmission queue and the copy's arrival in `$journal` are one journal
record. A message sent with `journal=True` to a local queue is acknowledged by being queued:
the copy joins `$journal` in the same record as the message its queue. A copy keeps the
message's id, body, headers and priority, and its destination (the tether:// address, or
the local queue); it expires `journal_time_to_live` seconds after it was acknowledged (then
it is dropped), and `$journal` keeps at most `journal_max_length` copies (the oldest go).

`JournalSettings.create()` validates the three settings, naming a bad one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: Defaults: a day, as a message's time-to-live; ten thousand copies.
DEFAULT_JOURNAL_TIME_TO_LIVE = 86400.0
DEFAULT_JOURNAL_MAX_LENGTH = 10000


@dataclass(frozen=True)
class JournalSettings:
    """The source journal's settings (see the module docstring)."""

    source_journal: bool = False
    journal_max_length: int | None = DEFAULT_JOURNAL_MAX_LENGTH
    journal_time_to_live: float | None = DEFAULT_JOURNAL_TIME_TO_LIVE

    @classmethod
    def create(cls, source_journal: Any = False, journal_max_length: Any = DEFAULT_JOURNAL_MAX_LENGTH,
               journal_time_to_live: Any = DEFAULT_JOURNAL_TIME_TO_LIVE) -> JournalSettings:
        """Validated settings: TypeError/ValueError naming the one that is wrong. None for
        journal_max_length or journal_time_to_live: no bound of that kind."""
        if not isinstance(source_journal, bool):
            raise TypeError(f"source_journal must be True or False, not {source_journal!r}")
        if journal_max_length is not None:
            if isinstance(journal_max_length, bool) or not isinstance(journal_max_length, int):
                raise TypeError(f"journal_max_length must be an integer >= 1 or None, not {journal_max_length!r}")
            if journal_max_length < 1:
                raise ValueError(f"journal_max_length must be >= 1 (or None: no limit), not {journal_max_length!r}")
        if journal_time_to_live is not None:
            if isinstance(journal_time_to_live, bool) or not isinstance(journal_time_to_live, (int, float)):
                raise TypeError(f"journal_time_to_live must be a number of seconds or None, "
                                f"not {journal_time_to_live!r}")
            if not (journal_time_to_live > 0 and math.isfinite(journal_time_to_live)):
                raise ValueError(f"journal_time_to_live must be a finite number of seconds > 0 (or None: "
                                 f"copies never expire), not {journal_time_to_live!r}")
            journal_time_to_live = float(journal_time_to_live)
        return cls(source_journal, journal_max_length, journal_time_to_live)

    def wanted(self, journal: Any, destination: str | None) -> bool:
        """Whether a message sent with `journal` (True, False, or None: the manager's
        setting, which covers forwarded messages) to `destination` (its tether:// address,
        None for a local queue) is journaled. TypeError for anything but those three."""
        if journal is None:
            return self.source_journal and destination is not None
        if not isinstance(journal, bool):
            raise TypeError(f"journal must be True, False or None, not {journal!r}")
        return journal

    def expires_at(self, now: float) -> float | None:
        """When a copy journaled at `now` expires."""
        return None if self.journal_time_to_live is None else now + self.journal_time_to_live
