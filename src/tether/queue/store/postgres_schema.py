"""The PostgreSQL store's tables (docs/storage.md, "The PostgreSQL store").

`tether_queues` holds the queue definitions; `tether_messages` every message of every queue
and sub-queue (the `queue` column: `orders`, `orders;retry`, `orders;poison`, `$dead`), with
its peek-lock as three columns: the owning queue manager (`lock_owner`), the lock's number
(`lock_tag`, from one sequence, so a number is never reused) and when it runs out
(`lock_until`). `tether_owners` holds each running queue manager's lease; `tether_dedupe` the
(queue, producer, sequence) triples already accepted; `tether_groups` who holds which group;
`tether_forwarders` per transmission queue its forwarder's producer id at the target, the
next sequence to number a message with, and which queue manager forwards it now.
Times are epoch seconds (double precision) of the database's clock (`NOW` below), so hosts
whose clocks differ still agree on when a lock or a lease ran out; a store opened with a
clock of its own (tests on a simulated clock) sets `tether.now` in each session instead.

Created once, under an advisory lock, by the first queue manager that opens the database.
"""
from __future__ import annotations

#: The database's wall clock, epoch seconds; or the session's `tether.now` where a store
#: with its own clock set it (PostgresStore.open(clock=...)).
NOW = ("coalesce(nullif(current_setting('tether.now', true), '')::float8, "
       "extract(epoch from clock_timestamp())::float8)")

#: Bumped when the tables change shape; a database of another version is refused.
SCHEMA_VERSION = 1

#: The advisory lock that serialises schema creation between queue managers.
SCHEMA_LOCK = 0x7465746865720001

SCHEMA = """
CREATE TABLE IF NOT EXISTS tether_schema (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS tether_queues (
    name text PRIMARY KEY,
    settings jsonb NOT NULL
);
CREATE TABLE IF NOT EXISTS tether_owners (
    owner bytea PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    expires_at float8 NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS tether_lock_tags;
CREATE TABLE IF NOT EXISTS tether_messages (
    key bigserial PRIMARY KEY,
    queue text NOT NULL,
    id text NOT NULL,
    body bytea NOT NULL,
    headers bytea,
    enqueued_at float8 NOT NULL,
    expires_at float8,
    delivery_count integer NOT NULL DEFAULT 0,
    attempts integer NOT NULL DEFAULT 0,
    dead_letter_reason text,
    dead_letter_source text,
    destination text,
    retry_at float8,
    producer bigint NOT NULL DEFAULT 0,
    sequence bigint NOT NULL DEFAULT 0,
    origin text,
    priority smallint NOT NULL DEFAULT 3,
    visible_at float8 NOT NULL DEFAULT 0,
    group_id text,
    journal boolean NOT NULL DEFAULT false,
    lock_owner bytea,
    lock_tag bigint,
    lock_until float8
);
-- the claim: the first unlocked message of a queue, higher priority first, FIFO within one
CREATE INDEX IF NOT EXISTS tether_messages_ready
    ON tether_messages (queue, priority DESC, key) WHERE lock_owner IS NULL;
CREATE INDEX IF NOT EXISTS tether_messages_locks
    ON tether_messages (lock_until) WHERE lock_owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS tether_messages_owner
    ON tether_messages (lock_owner) WHERE lock_owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS tether_messages_expiry
    ON tether_messages (expires_at) WHERE lock_owner IS NULL AND expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS tether_messages_retry
    ON tether_messages (retry_at) WHERE retry_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS tether_messages_visible
    ON tether_messages (visible_at) WHERE visible_at > 0;
CREATE INDEX IF NOT EXISTS tether_messages_dead
    ON tether_messages (dead_letter_source) WHERE dead_letter_source IS NOT NULL;
CREATE INDEX IF NOT EXISTS tether_messages_group
    ON tether_messages (queue, group_id, key) WHERE group_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS tether_dedupe (
    queue text NOT NULL,
    producer bytea NOT NULL,
    sequence bigint NOT NULL,
    message_id text NOT NULL,
    at float8 NOT NULL,
    PRIMARY KEY (queue, producer, sequence)
);
CREATE INDEX IF NOT EXISTS tether_dedupe_at ON tether_dedupe (at);
CREATE TABLE IF NOT EXISTS tether_groups (
    queue text NOT NULL,
    group_id text NOT NULL,
    holder bytea NOT NULL,
    holder_tag bigint NOT NULL,
    PRIMARY KEY (queue, group_id)
);
-- added to schema 1 after its first release: databases made before gain the column
ALTER TABLE tether_messages ADD COLUMN IF NOT EXISTS journal boolean NOT NULL DEFAULT false;
-- one row per transmission queue (shared_forwarding.py)
CREATE TABLE IF NOT EXISTS tether_forwarders (
    queue text PRIMARY KEY,
    producer bytea NOT NULL,
    next_sequence bigint NOT NULL,
    holder bytea
);
"""

#: The columns of a message, in the order the store reads and writes them.
MESSAGE_COLUMNS = ("key", "queue", "id", "body", "headers", "enqueued_at", "expires_at", "delivery_count",
                   "attempts", "dead_letter_reason", "dead_letter_source", "destination", "retry_at",
                   "sequence", "origin", "priority", "visible_at", "group_id", "journal", "lock_tag", "lock_until")
