"""The queues a queue manager keeps for itself, whose names start with `$`.

    $dead                   the system dead-letter queue
    $xmit:HOST:PORT         a transmission queue: messages bound for that queue manager,
                            which a forwarder moves there (store-and-forward)
    $return:PRODUCER        rejected messages (receive_error_handling="reject") that came
                            from another queue manager's forwarder, waiting for it to take
                            them back to its own dead-letter queue
    $journal                the source journal: a copy of each message sent with
                            journal=True (or by a manager with source_journal=True) once the
                            queue manager it was forwarded to acknowledged it
"""
from __future__ import annotations

from .settings import SYSTEM_DEAD_LETTER_QUEUE, QueueSettings

TRANSMISSION_PREFIX = "$xmit:"
RETURN_PREFIX = "$return:"
JOURNAL_QUEUE = "$journal"

#: Dead letters never expire and never move on.
DEAD_LETTER_SETTINGS = QueueSettings(time_to_live=None, dead_letter_queue="none", receive_error_handling="move")
#: A message that keeps failing to forward ends in the transmission queue's ;poison.
TRANSMISSION_SETTINGS = QueueSettings(receive_error_handling="move")
RETURN_SETTINGS = QueueSettings(time_to_live=None, dead_letter_queue="none", receive_error_handling="move")
#: Journal copies expire by their own expires_at (journal_time_to_live) and are then dropped.
JOURNAL_SETTINGS = QueueSettings(time_to_live=None, dead_letter_queue="none", receive_error_handling="move")


def settings_for(name: str) -> QueueSettings | None:
    """The fixed settings of a system queue, or None if `name` is not one."""
    if name == SYSTEM_DEAD_LETTER_QUEUE:
        return DEAD_LETTER_SETTINGS
    if name.startswith(TRANSMISSION_PREFIX):
        return TRANSMISSION_SETTINGS
    if name.startswith(RETURN_PREFIX):
        return RETURN_SETTINGS
    if name == JOURNAL_QUEUE:
        return JOURNAL_SETTINGS
    return None
