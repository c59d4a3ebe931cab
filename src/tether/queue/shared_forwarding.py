"""Store-and-forward out of a shared (PostgreSQL) store: the database's side of it.

Several queue managers send into one transmission queue (`$xmit:HOST:PORT`) of the
database, and the target de-duplicates what reaches it by (producer id, sequence). For that
to hold across processes, three things live in the queue's row of `tether_forwarders`
rather than in any process:

- the *producer id* the forwarder shows the target: random, made with the row, the same
  whichever manager forwards (so a manager taking over resends under the id the target
  knows, and the target drops what it has already);
- the *numbering*: a message joining the queue takes `next_sequence` with the row locked
  until its transaction commits, so sequences are committed in the order they were given
  (and in key order, the order forwarders take them). The floor told to the target (every
  sequence below is settled) is therefore the lowest sequence still in the queue, or, when
  none is, the committed `next_sequence`: a send still committing has a sequence at or
  above it;
- the *holder*: the one manager forwarding the queue now. Another may take it only once
  the holder's lease is gone from `tether_owners`, which the sweep deletes in the same
  transaction that returns its peek-locks: a new forwarder starts from the front of a queue
  that has all of the old one's messages back.
"""
from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

from .core import Entry
from .core.system_queues import TRANSMISSION_PREFIX
from .store.postgres_schema import NOW

#: A new transmission queue numbers from the database's clock in microseconds: above what
#: an earlier queue of the same name could have used, as the journal's numbering does.
_FIRST_SEQUENCE = f"(({NOW}) * 1000000)::int8"


def is_transmission(name: str) -> bool:
    """True for a transmission queue's name."""
    return name.startswith(TRANSMISSION_PREFIX)


async def define(conn: Any, name: str) -> None:
    """The row of transmission queue `name`, if the queue is defined (kept if it exists)."""
    await conn.execute(f"INSERT INTO tether_forwarders (queue, producer, next_sequence) "
                       f"SELECT $1, $2, {_FIRST_SEQUENCE} WHERE EXISTS (SELECT 1 FROM tether_queues "
                       f"WHERE name = $1) ON CONFLICT DO NOTHING", name, os.urandom(16))


async def delete(conn: Any, name: str) -> None:
    """Forget transmission queue `name`'s row (a queue made again starts afresh)."""
    await conn.execute("DELETE FROM tether_forwarders WHERE queue = $1", name)


async def number(conn: Any, entries: list[Entry]) -> None:
    """Give the entries bound for transmission queues their sequences, in order, with each
    queue's row locked until `conn`'s transaction ends (call inside it, before the insert)."""
    wanted: dict[str, list[Entry]] = defaultdict(list)
    for entry in entries:
        if is_transmission(entry.queue.name):
            wanted[entry.queue.name].append(entry)
    for name in sorted(wanted):       # one lock order for every manager: no deadlock
        numbered = wanted[name]
        first = await conn.fetchval("UPDATE tether_forwarders SET next_sequence = next_sequence + $2 "
                                    "WHERE queue = $1 RETURNING next_sequence - $2", name, len(numbered))
        if first is None:       # (a queue defined before this table was added) start it now
            await define(conn, name)
            first = await conn.fetchval("UPDATE tether_forwarders SET next_sequence = next_sequence + $2 "
                                        "WHERE queue = $1 RETURNING next_sequence - $2", name, len(numbered))
        for n, entry in enumerate(numbered):
            entry.sequence = first + n


async def lowest_sequence(conn: Any, name: str) -> int:
    """Every sequence of transmission queue `name` below the result is settled (see the
    module docstring)."""
    return await conn.fetchval(
        "SELECT least((SELECT min(sequence) FROM tether_messages WHERE queue = ANY($2::text[])), "
        "(SELECT next_sequence FROM tether_forwarders WHERE queue = $1))",
        name, [name, name + ";retry", name + ";poison"])


async def raise_numbering(conn: Any, name: str, next_sequence: int) -> int | None:
    """Number from `next_sequence` on (the target has seen the ones below from us): the
    numbering before, or None when it was there already."""
    return await conn.fetchval(
        "WITH old AS (SELECT next_sequence FROM tether_forwarders WHERE queue = $1 FOR UPDATE) "
        "UPDATE tether_forwarders f SET next_sequence = $2 FROM old "
        "WHERE f.queue = $1 AND old.next_sequence < $2 RETURNING old.next_sequence", name, next_sequence)


async def hold(conn: Any, name: str, owner: bytes) -> bytes | None:
    """Become (or stay) the forwarder of `name` if nobody alive holds it: its producer id
    at the target, or None while another manager holds it."""
    await define(conn, name)
    return await conn.fetchval(
        "UPDATE tether_forwarders f SET holder = $2 WHERE queue = $1 AND (holder IS NULL OR holder = $2 "
        "OR NOT EXISTS (SELECT 1 FROM tether_owners o WHERE o.owner = f.holder)) RETURNING producer",
        name, owner)


async def holds(conn: Any, name: str, owner: bytes) -> bool:
    """True while `owner` is the forwarder of `name` and its lease is alive."""
    return bool(await conn.fetchval(
        "SELECT 1 FROM tether_forwarders f JOIN tether_owners o ON o.owner = f.holder "
        "WHERE f.queue = $1 AND f.holder = $2", name, owner))
