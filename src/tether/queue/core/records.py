"""The operations the queue core journals.

A journal record is one msgpack array of operations, written and recovered whole, so the
operations of one record (a transaction, a move between queues, a batch of sends) take
effect together or not at all. Operations are absolute (set, not add): replaying them in
order rebuilds exactly the state they describe.

    ["m", manager_id, next_key, next_pid, FORMAT]   identity: first op of every journal
    ["q", name, settings]                          define (or redefine) a queue
    ["d", name]                                    delete a queue, its sub-queues and entries
    ["e", queue, entry]                            an entry (Entry.to_record()) joins a queue
    ["e", queue, entry, sequence]                  ... sent by its producer with `sequence` (de-duplicated)
    ["r", queue, key]                              an entry leaves a queue
    ["u", queue, key, delivery_count, attempts]    an entry's delivery counts changed
    ["p", name, pid, epoch]                        a producer's registration (or a new epoch)
    ["f", pid, floor]                              the producer settled every sequence < floor
    ["a", pid, queue, [[lo, hi], ...]]             sequences of the producer queued there
    ["c", queue, next_sequence]                    a transmission queue's numbering goes on here
"""
from __future__ import annotations

from typing import Any

import msgpack

from ...errors import JournalCorrupt

#: The layout of the operations above; a journal of another format is refused. Format 3
#: appended priority and deliver_at to an entry's record (entry.py); a format-2 journal is
#: read as it is (its entries take the defaults) and continues as format 3.
FORMAT = 3
READABLE_FORMATS = (2, 3)

IDENTITY = "m"
DEFINE = "q"
DELETE = "d"
ENQUEUE = "e"
REMOVE = "r"
UPDATE = "u"
PRODUCER = "p"
FLOOR = "f"
ACCEPTED = "a"
COUNTER = "c"

#: Length of each operation, for the shape check at replay.
OP_LENGTHS = {IDENTITY: (5,), DEFINE: (3,), DELETE: (2,), ENQUEUE: (3, 4), REMOVE: (3,), UPDATE: (5,),
              PRODUCER: (4,), FLOOR: (3,), ACCEPTED: (4,), COUNTER: (3,)}


def encoder() -> msgpack.Packer:
    """A reusable packer for records (bytes stay bytes, str stays str)."""
    return msgpack.Packer(use_bin_type=True, autoreset=True)


def decode(record: bytes) -> list:
    """The operations of one record; JournalCorrupt if it is not a list of operations (the
    journal's CRC passed, so this is a bug or a foreign file, not a torn write)."""
    try:
        ops = msgpack.unpackb(record, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:
        raise JournalCorrupt(f"journal record is not msgpack: {exc}") from None
    if not isinstance(ops, list):
        raise JournalCorrupt(f"journal record is {type(ops).__name__}, not a list of operations")
    return ops


def check_op(op: Any) -> str:
    """The kind of a decoded operation; JournalCorrupt unless it has a known shape."""
    if op.__class__ is not list or not op:
        raise JournalCorrupt(f"journal operation is not an array: {op!r:.120}")
    kind = op[0]
    lengths = OP_LENGTHS.get(kind) if kind.__class__ is str else None
    if lengths is None:
        raise JournalCorrupt(f"unknown journal operation {kind!r:.40} (a journal of another tether version?)")
    if len(op) not in lengths:
        raise JournalCorrupt(f"journal operation {kind!r} has {len(op)} fields: {op!r:.120}")
    return kind
