"""Batched queue-manager operations for the service and the forwarder.

A service frame carries many sends (or completes); doing each with its own coroutine and
its own wait for the journal would cost a task per message. These do the whole batch's
bookkeeping in one pass, submit every journal operation together (one record, one
fdatasync) and wait once. Semantics are those of `QueueManager.send`,
`QueueManager.accept_forwarded` (de-duplication by message id on exactly_once queues,
the id remembered durably in the same record) and `Message.complete`; they use the
manager's internals, so they live beside it in this package.
"""
from __future__ import annotations

import time
from typing import Any

from ..errors import LockLost, QueueFull, TetherError
from . import records
from .message import LOCKED, SETTLING, Message

_time = time.time


async def send_batch(qm: Any, items: list[tuple], *, dedupe: bool) -> list[Any]:
    """Queue every item: (address, body, headers, time_to_live, message_id, enqueued_at,
    expires_at); message_id/enqueued_at/expires_at may be None (chosen here; expires_at
    overrides time_to_live). Returns per item its message id, or the exception refusing it
    (QueueNotFound, QueueFull, MessageTooLarge, TypeError, ValueError). With `dedupe`, an
    id already accepted on an exactly_once queue is not queued again (its id is returned)."""
    qm._check_open()
    results: list[Any] = [None] * len(items)
    steps: list[tuple[Any, list]] = []
    accepted: list[tuple[Any, Message]] = []
    seen: dict[Any, list[str]] = {}       # queue -> ids de-duplicated there
    in_batch: set[str] = set()
    window = qm._dedupe
    pending_ids = qm._dedupe_pending
    now = _time()
    for i, (address, body, headers, ttl, message_id, enqueued_at, expires_at) in enumerate(items):
        try:
            queue = qm._sendable.get(address)
            destination = None
            if queue is None:
                queue, destination = await qm.route(address)
                qm._check_open()
            message = qm._new_message(queue, body, headers, ttl, destination)
            if message_id is not None:
                message.id = message_id
            if enqueued_at is not None:
                message.enqueued_at = float(enqueued_at)
            if expires_at is not None:
                message.expires_at = float(expires_at)
            exactly_once = dedupe and queue.settings.exactly_once
            if exactly_once:
                mid = message.id
                if mid in window or mid in pending_ids or mid in in_batch:
                    results[i] = mid
                    continue
            max_length = queue.settings.max_length
            if max_length is not None and queue.held + queue.reserved >= max_length:
                raise QueueFull(f"queue {queue.name!r} holds max_length={max_length} messages")
            queue.reserved += 1
            steps.append((queue, [records.ENQUEUE, queue.name, message.to_record()]))
            accepted.append((queue, message))
            if exactly_once:
                in_batch.add(message.id)
                ids = seen.get(queue)
                if ids is None:
                    ids = seen[queue] = []
                    # the ids go in the same record as the messages (journaled with their queue)
                    steps.append((queue, [records.SEEN, ids, now]))
                ids.append(message.id)
            results[i] = message.id
        except (TetherError, TypeError, ValueError) as exc:     # MessageTooLarge is a TetherError
            results[i] = exc
    if not accepted:
        return results
    pending_ids.update(in_batch)

    def apply() -> None:
        for message_id in in_batch:
            pending_ids.discard(message_id)
            window.add(message_id, now, now)
        for queue, message in accepted:
            queue.accept_reserved(message)

    try:
        pending = qm._perform(steps, apply)
        if pending is not None:
            await pending
    except BaseException as exc:
        if not isinstance(exc, Exception):
            raise       # cancelled: the write goes on and apply() settles the ids
        pending_ids.difference_update(in_batch)
        raise
    return results


async def complete_many(qm: Any, messages: list[Message]) -> list[BaseException | None]:
    """complete() for messages received from `qm` (its own receive()), one journal record:
    per message None, or the LockLost that refused it."""
    qm._check_open()
    results: list[BaseException | None] = [None] * len(messages)
    now = _time()
    store = qm._store
    last = None
    for i, message in enumerate(messages):
        home = message._home
        if message._state != LOCKED or message._owner is not qm or message._lock_deadline < now \
                or home is None or home.deleted:
            results[i] = LockLost(f"message {message.id}: the peek-lock was lost (expired, settled or queue deleted)")
            continue
        if home.journaled:
            message._state = SETTLING
            last = store.submit([records.REMOVE, home.name, message.id], home.remove, message)
        else:
            home.remove(message)
    if last is not None:
        await last
    return results


async def accept_dead_letter(qm: Any, fields: list, reason: str, source: str) -> bool:
    """Put a dead letter that came back from another queue manager (a reject) in
    $dead: `fields` as protocol.message_fields. De-duplicated by id like a transfer, so a
    return retried after a crash lands once. False when it had landed before."""
    from .settings import SYSTEM_DEAD_LETTER_QUEUE

    qm._check_open()
    message_id, body, headers, delivery_count, enqueued_at = fields[:5]
    window, pending_ids = qm._dedupe, qm._dedupe_pending
    if message_id in window or message_id in pending_ids:
        return False
    queue = qm._queues[SYSTEM_DEAD_LETTER_QUEUE]
    message = Message(message_id, body, headers, delivery_count, enqueued_at, None, reason, source)
    now = _time()
    queue.reserved += 1
    pending_ids.add(message_id)

    def apply() -> None:
        pending_ids.discard(message_id)
        window.add(message_id, now, now)
        queue.accept_reserved(message)

    try:
        pending = qm._perform([(queue, [records.ENQUEUE, queue.name, message.to_record()]),
                               (queue, [records.SEEN, [message_id], now])], apply)
        if pending is not None:
            await pending
    except Exception:
        pending_ids.discard(message_id)
        raise
    return True


def release(message: Message) -> None:
    """Unlock a message that was received but never handed to anyone (a client's unused
    prefetch, a forwarder's unsent batch): it goes back to the front of its queue and the
    delivery does not count."""
    home = message._home
    if home is not None and message._state == LOCKED:
        home.unlock_undelivered(message)
