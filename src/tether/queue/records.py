"""The operations a queue manager journals, and their replay.

A journal record is one msgpack array of operations, written and recovered whole, so every
group of operations in one record (a transaction, a move between queues, a whole batch of
concurrent sends) is atomic. Operations are absolute (set, not add), so replaying them in
order rebuilds exactly the state they describe.

    ["q", name, settings]                      define (or redefine) a queue
    ["d", name]                                delete a queue, its sub-queues and messages
    ["e", queue, message]                      a message (Message.to_record()) joins a queue
    ["r", queue, id]                           a message leaves a queue
    ["u", queue, id, delivery_count, attempts] a message's delivery counts changed
    ["s", [id, ...], time]                     forwarded ids accepted at `time` (de-duplication)
    ["f", [id, ...]]                           accepted ids the sender will never send again
"""
from __future__ import annotations

from typing import Iterable

import msgpack

from ..errors import JournalCorrupt

DEFINE = "q"
DELETE = "d"
ENQUEUE = "e"
REMOVE = "r"
UPDATE = "u"
SEEN = "s"
FORGET = "f"

# Message.to_record() field positions used by replay
_DELIVERY_COUNT = 5
_ATTEMPTS = 6


def encoder() -> msgpack.Packer:
    """A reusable packer for records (bytes stay bytes, str stays str)."""
    return msgpack.Packer(use_bin_type=True, autoreset=True)


def decode(record: bytes) -> list:
    """The operations of one record; JournalCorrupt if it is not a list of operations
    (the journal's CRC passed, so this is a bug or a foreign file, not a torn write)."""
    try:
        ops = msgpack.unpackb(record, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:
        raise JournalCorrupt(f"journal record is not msgpack: {exc}") from None
    if not isinstance(ops, list):
        raise JournalCorrupt(f"journal record is {type(ops).__name__}, not a list of operations")
    return ops


class ReplayState:
    """Queue definitions and messages rebuilt from records, in journal order."""

    def __init__(self) -> None:
        self.definitions: dict[str, dict] = {}
        self.messages: dict[str, dict[str, list]] = {}
        #: de-duplication: forwarded message id -> when it was first seen
        self.seen: dict[str, float] = {}

    def apply_records(self, records: Iterable[bytes]) -> None:
        """Replay journal records in order; JournalCorrupt for a malformed one."""
        for record in records:
            for op in decode(record):
                self.apply(op)

    def apply(self, op: list) -> None:
        """Replay one operation (see the module docstring for the forms)."""
        try:
            kind = op[0]
            if kind == ENQUEUE:
                self.messages.setdefault(op[1], {})[op[2][0]] = op[2]
            elif kind == REMOVE:
                queue = self.messages.get(op[1])
                if queue is not None:
                    queue.pop(op[2], None)
            elif kind == UPDATE:
                message = self.messages.get(op[1], {}).get(op[2])
                if message is not None:
                    message[_DELIVERY_COUNT] = op[3]
                    message[_ATTEMPTS] = op[4]
            elif kind == SEEN:
                seen, when = self.seen, op[2]
                for message_id in op[1]:
                    seen.setdefault(message_id, when)
            elif kind == FORGET:
                seen = self.seen
                for message_id in op[1]:
                    seen.pop(message_id, None)
            elif kind == DEFINE:
                self.definitions[op[1]] = op[2]
            elif kind == DELETE:
                name = op[1]
                self.definitions.pop(name, None)
                for queue in (name, name + ";retry", name + ";poison"):
                    self.messages.pop(queue, None)
            else:
                raise JournalCorrupt(f"unknown journal operation {kind!r}")
        except (IndexError, TypeError, KeyError) as exc:
            raise JournalCorrupt(f"malformed journal operation {op!r:.200}: {exc}") from None
