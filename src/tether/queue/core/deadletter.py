"""Dead letters: the reasons a message is dead-lettered, and which queue takes it.

A message that cannot be delivered goes to its queue's dead-letter queue (`$dead` for
`dead_letter_queue="system"`, a named queue, or nowhere for `"none"`) with
`dead_letter_reason` and `dead_letter_source` set, and no time-to-live any more: a dead
letter waits until someone deals with it.
"""
from __future__ import annotations

from .settings import DEAD_LETTER_NONE, DEAD_LETTER_SYSTEM, SYSTEM_DEAD_LETTER_QUEUE, QueueSettings

EXPIRED = "expired"                      # time_to_live ran out
REJECTED = "rejected"                    # receive_error_handling="reject" after every retry failed
QUEUE_NOT_FOUND = "queue-not-found"      # store-and-forward: the target queue does not exist
MESSAGE_TOO_LARGE = "message-too-large"  # store-and-forward: over the target queue's max_message_size


def dead_letter_queue_name(settings: QueueSettings) -> str | None:
    """The queue that takes a dead letter from a queue with `settings`; None: drop it."""
    target = settings.dead_letter_queue
    if target == DEAD_LETTER_NONE:
        return None
    if target == DEAD_LETTER_SYSTEM:
        return SYSTEM_DEAD_LETTER_QUEUE
    return target
