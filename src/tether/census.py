"""What is alive in this process, for tether.metrics to read when it is scraped.

Sessions and queue managers enter themselves here when they start (a weak reference: the
census never keeps one alive); a session that ends leaves, adding what it counted to
`ended`, so the totals tether.metrics reports never go down. Nothing here imports a
metrics library, and nothing is counted per message.
"""
from __future__ import annotations

import weakref
from typing import Any

#: live sessions (session.Session), clients' and servers' alike
sessions: weakref.WeakSet[Any] = weakref.WeakSet()
#: open queue managers (queue.manager.QueueManager)
managers: weakref.WeakSet[Any] = weakref.WeakSet()


class EndedSessions:
    """Totals of the sessions that have ended in this process."""

    __slots__ = ("count", "resent")

    def __init__(self) -> None:
        self.count = 0
        self.resent = 0


ended = EndedSessions()


def session_started(session: Any) -> None:
    """Count a new session among the live ones."""
    sessions.add(session)


def session_ended(session: Any, resent: int) -> None:
    """`session` ended after resending `resent` messages: its totals join `ended`."""
    if session in sessions:
        sessions.discard(session)
        ended.count += 1
        ended.resent += resent
