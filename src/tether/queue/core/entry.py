"""`Entry`: one message as the queue core holds it, and its journal form.

An entry's `key` is its storage identity: a number this queue manager assigned, never
reused (the high-water mark survives restarts and compaction). Its `id` is the label a
receiver sees: assigned by the queue manager where the message was first sent, and kept
when a message is forwarded or dead-lettered, so a message can be followed end to end. Two
entries may carry the same `id` (a forwarder could send anything there); nothing in the
core is keyed by it.

`headers` are kept encoded (`headers.encode_headers` checked them once, at the sender):
the journal writes the bytes as they are and a receiver decodes its own read-only copy, so
nothing a receiver does with them can reach the store.

The journal form (`to_record`/`from_record`) is a list in the order of RECORD_FIELDS; that
tuple is the one place that says which field is where. Fields were only ever appended: a
shorter record (an older journal format) takes the defaults for the fields it lacks.

`priority` (0..7, default 3) orders an application queue's ready messages (higher first,
FIFO within one); `deliver_at` (wall-clock seconds, or None) keeps a message invisible in an
application queue until then (scheduled delivery); `group_id` (or None) makes it one of a
group, received whole by one consumer at a time (groups.py); `journal` (in a transmission
queue) keeps a copy in `$journal` once the target acknowledged it (source journal).
"""
from __future__ import annotations

from typing import Any

from ...errors import JournalCorrupt
from .lifecycle import READY

#: The journal form of an entry: these fields, in this order.
RECORD_FIELDS = (
    "key", "id", "body", "headers", "enqueued_at", "expires_at", "delivery_count", "attempts",
    "dead_letter_reason", "dead_letter_source", "destination", "retry_at", "producer",
    "sequence", "origin", "priority", "deliver_at", "group_id", "journal",
)
_RECORD_LENGTH = len(RECORD_FIELDS)
#: The fields of a format-2 journal's record (before priority and deliver_at).
_OLDEST_LENGTH = 15
#: Defaults of the fields a shorter record lacks, in order.
_LATER_DEFAULTS = (3, None, None, False)
DEFAULT_PRIORITY = 3
MAX_PRIORITY = 7


class Entry:
    """A message in the core (see the module docstring)."""

    __slots__ = RECORD_FIELDS + ("state", "before", "queue", "tag", "lock_deadline", "in_ready", "handed", "group")

    def __init__(self, key: int, id: str, body: bytes, headers: bytes | None, enqueued_at: float,
                 expires_at: float | None, delivery_count: int = 0, attempts: int = 0,
                 dead_letter_reason: str | None = None, dead_letter_source: str | None = None,
                 destination: str | None = None, retry_at: float | None = None,
                 producer: int = 0, sequence: int = 0, origin: str | None = None,
                 priority: int = DEFAULT_PRIORITY, deliver_at: float | None = None,
                 group_id: str | None = None, journal: bool = False) -> None:
        self.key = key
        self.id = id
        self.body = body
        self.headers = headers
        #: wall-clock time (seconds since the epoch) the message was first queued
        self.enqueued_at = enqueued_at
        #: wall-clock time after which it is dead-lettered as expired; None: never
        self.expires_at = expires_at
        #: deliveries so far (the one in progress included while LOCKED)
        self.delivery_count = delivery_count
        #: failed deliveries from its main queue, for the retry rule (retry_rule.py)
        self.attempts = attempts
        self.dead_letter_reason = dead_letter_reason
        self.dead_letter_source = dead_letter_source
        #: in a transmission queue: the tether:// address it is bound for
        self.destination = destination
        #: in a `;retry` sub-queue: when it goes back to its main queue
        self.retry_at = retry_at
        #: the producer number (producers.py) whose sequence de-duplicates it; 0: none
        self.producer = producer
        self.sequence = sequence
        #: forwarded in: the sending queue manager's forwarder (its return queue's name)
        self.origin = origin
        #: 0..7: higher is received first (in an application queue)
        self.priority = priority
        #: wall-clock time before which an application queue does not deliver it; None: now
        self.deliver_at = deliver_at
        #: the group it belongs to (sent with group_id=), or None
        self.group_id = group_id
        #: forwarded: keep a copy in $journal once the target has it
        self.journal = journal
        self.state = READY
        self.before = READY              # while SETTLING: the state a failed write returns it to
        self.queue: Any = None           # the core Queue holding it
        self.tag = 0                     # the current peek-lock's number (0: never locked)
        self.lock_deadline = 0.0
        self.in_ready = False            # present in its queue's ready list (maybe lazily)
        #: in a transmission queue: taken at least once (by the forwarder), so it may have
        #: reached its target; then only the target decides whether it expired
        self.handed = False
        #: while locked (or settling from locked) as a message of a group: that Group
        self.group: Any = None

    def to_record(self) -> list:
        """The journal form: the RECORD_FIELDS values, in order."""
        return [self.key, self.id, self.body, self.headers, self.enqueued_at, self.expires_at,
                self.delivery_count, self.attempts, self.dead_letter_reason, self.dead_letter_source,
                self.destination, self.retry_at, self.producer, self.sequence, self.origin, self.priority,
                self.deliver_at, self.group_id, self.journal]

    @classmethod
    def from_record(cls, record: Any) -> Entry:
        """An entry from `to_record()` output; JournalCorrupt if it is not one."""
        if record.__class__ is not list or not _OLDEST_LENGTH <= len(record) <= _RECORD_LENGTH:
            raise JournalCorrupt(f"journal message record has the wrong shape: {record!r:.120}")
        if len(record) < _RECORD_LENGTH:
            record = record + list(_LATER_DEFAULTS[len(record) - _OLDEST_LENGTH:])
        (key, id, body, headers, enqueued_at, expires_at, delivery_count, attempts, reason,
         source, destination, retry_at, producer, sequence, origin, priority, deliver_at, group_id, journal) = record
        if key.__class__ is not int or id.__class__ is not str or body.__class__ is not bytes \
                or not (headers is None or headers.__class__ is bytes):
            raise JournalCorrupt(f"journal message record has a field of the wrong type: {record!r:.120}")
        if priority.__class__ is not int or not 0 <= priority <= MAX_PRIORITY \
                or not (deliver_at is None or deliver_at.__class__ in (int, float)) \
                or not (group_id is None or group_id.__class__ is str) or journal.__class__ is not bool:
            raise JournalCorrupt(f"journal message record has a bad priority, delivery time or group: {record!r:.120}")
        return cls(key, id, body, headers, enqueued_at, expires_at, delivery_count, attempts, reason,
                   source, destination, retry_at, producer, sequence, origin, priority, deliver_at, group_id,
                   journal)

    def __repr__(self) -> str:
        return f"<Entry {self.key} id={self.id!r} {len(self.body)} bytes state={self.state}>"
