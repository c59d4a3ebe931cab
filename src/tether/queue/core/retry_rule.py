"""The poison-message rule: how a failed delivery is retried, and when it is poison.

After a failed delivery (abandon, expired peek-lock, rolled-back transaction) a message is
redelivered at once `receive_retry_count` times; then it waits in the `;retry` sub-queue for
`retry_cycle_delay` and starts another cycle, `max_retry_cycles` times. So a message that
always fails is delivered exactly (receive_retry_count+1)*(max_retry_cycles+1) times before
`receive_error_handling` applies (docs/queues.md).
"""
from __future__ import annotations

from .settings import QueueSettings

RETRY_NOW = 0          # back to the front of the queue for an immediate redelivery
RETRY_LATER = 1        # to the `;retry` sub-queue for retry_cycle_delay
POISON = 2             # every retry failed: apply receive_error_handling


def after_failure(settings: QueueSettings, failures: int) -> int:
    """What to do with a message that has now failed `failures` times (>= 1) in its queue."""
    per_cycle = settings.receive_retry_count + 1
    if failures % per_cycle:
        return RETRY_NOW
    if failures // per_cycle <= settings.max_retry_cycles:
        return RETRY_LATER
    return POISON
