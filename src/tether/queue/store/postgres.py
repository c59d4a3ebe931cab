"""`PostgresStore`: queue state kept in a PostgreSQL database that several queue managers share.

Unlike the journal, this store is not a sink of one process's records: the database holds
the state every queue manager works on, so the queue operations go to it directly
(shared_operations.py) and the store is `shared`. What this file owns is the connection
side: a pool for the operations, one connection that LISTENs (`tether_q` carries the name of
a queue that gained a message, `tether_defs` says a queue was defined or deleted), and this
process's *lease*: a row in `tether_owners` renewed every `client_grace / 3` seconds. Every
peek-lock names its owner; once an owner's lease has run out (the process was killed, or cut
off from the database for `client_grace`), any other queue manager returns its locks to the
queues, uncounted, and its groups to whoever asks next.

Open with `await PostgresStore.open("postgresql://user@host:port/db")` (asyncpg, the
`tether[postgres]` extra).
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ...errors import StorageError
from .postgres_schema import NOW, SCHEMA, SCHEMA_LOCK, SCHEMA_VERSION

log = logging.getLogger("tether.queue")

#: Default lease of a queue manager whose process stopped renewing it (seconds).
DEFAULT_CLIENT_GRACE = 15.0
#: Connections the operations may hold at once.
DEFAULT_POOL_SIZE = 10


def is_postgres_url(value: Any) -> bool:
    """True for a postgresql:// (or postgres://) URL."""
    return isinstance(value, str) and value.startswith(("postgresql://", "postgres://"))


def redacted(url: str) -> str:
    """`url` without its password (for logs and reprs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc[1]}"))


class PostgresStore:
    """The shared store (see the module docstring). Not a record sink: `append` refuses."""

    durable = True
    #: the store holds the message state itself: operations go to it (shared_operations.py)
    shared = True

    def __init__(self, url: str, pool: Any, lock_pool: Any, listener: Any, owner: bytes,
                 client_grace: float, clock: Callable[[], float] | None = None) -> None:
        self.url = url
        #: the clock statements take `now` from (None: the database's own)
        self.clock = clock
        self.pool = pool
        #: for statements whose commit need not wait for the disk (claims, lock renewals):
        #: synchronous_commit off
        self.lock_pool = lock_pool
        self.owner = owner
        self.client_grace = client_grace
        self.recovered: list[bytes] = []
        self.recovery_log: list[str] = []
        self.size_bytes = 0
        self.sync_seconds = None        # the database syncs; tether times no batch of its own
        self._listener = listener
        self._on_queue: Callable[[str], None] | None = None
        self._on_definitions: Callable[[], None] | None = None
        self._lease_task: asyncio.Task | None = None
        self._lease_lost: Callable[[], None] | None = None
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, client_grace: float = DEFAULT_CLIENT_GRACE,
                   pool_size: int = DEFAULT_POOL_SIZE, clock: Callable[[], float] | None = None) -> PostgresStore:
        """Connect, create the tables if missing, and take a lease. With `clock` (epoch
        seconds), statements take their `now` from it instead of the database's clock (a
        simulated clock: every manager of the database must then share it). ValueError
        naming a bad setting; StorageError when the database cannot be reached or is not ours."""
        if not is_postgres_url(url):
            raise ValueError(f"a PostgreSQL store needs a postgresql:// URL, not {url!r}")
        if isinstance(client_grace, bool) or not isinstance(client_grace, (int, float)) \
                or not (client_grace > 0 and math.isfinite(client_grace)):
            raise ValueError(f"client_grace must be a finite number of seconds > 0, not {client_grace!r}")
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 2:
            raise ValueError(f"pool_size must be an integer >= 2, not {pool_size!r}")
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a callable returning epoch seconds, or None, not {clock!r}")
        try:
            import asyncpg
        except ImportError as exc:
            raise StorageError("the PostgreSQL store needs asyncpg: pip install 'tether[postgres]'") from exc
        try:
            pool = await asyncpg.create_pool(url, min_size=2, max_size=pool_size, setup=_clock_setup(clock),
                                             reset=_keep_session)
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            raise StorageError(f"cannot connect to {redacted(url)}: {exc}") from exc
        listener = None
        try:
            async with pool.acquire() as conn:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
                    await conn.execute(SCHEMA)
                    version = await conn.fetchval("SELECT version FROM tether_schema")
                    if version is None:
                        await conn.execute("INSERT INTO tether_schema VALUES ($1)", SCHEMA_VERSION)
                    elif version != SCHEMA_VERSION:
                        raise StorageError(f"{redacted(url)} holds tether tables of schema version {version}, "
                                           f"this tether uses {SCHEMA_VERSION}")
                owner = os.urandom(16)
                await conn.execute(f"INSERT INTO tether_owners VALUES ($1, $2, $3, {NOW} + $4)", owner,
                                   socket.gethostname(), os.getpid(), float(client_grace))
            listener = await asyncpg.connect(url)
            lock_pool = await asyncpg.create_pool(url, min_size=1, max_size=max(2, pool_size // 2),
                                                  server_settings={"synchronous_commit": "off"},
                                                  setup=_clock_setup(clock), reset=_keep_session)
        except BaseException as exc:
            if listener is not None:
                await listener.close()
            await pool.close()
            if isinstance(exc, asyncpg.PostgresError):
                raise StorageError(f"{redacted(url)}: {exc}") from exc
            raise
        store = cls(url, pool, lock_pool, listener, owner, float(client_grace), clock)
        store._lease_task = asyncio.get_running_loop().create_task(store._keep_lease())
        return store

    # ---- notifications ----

    async def listen(self, on_queue: Callable[[str], None], on_definitions: Callable[[], None],
                     lease_lost: Callable[[], None]) -> None:
        """Call `on_queue(name)` when a queue gained a message (anywhere), `on_definitions()`
        when a queue was defined or deleted, and `lease_lost()` after this process's lease
        ran out (its locks are gone)."""
        self._on_queue, self._on_definitions, self._lease_lost = on_queue, on_definitions, lease_lost
        await self._listener.add_listener("tether_q", self._queue_notified)
        await self._listener.add_listener("tether_defs", self._definitions_notified)

    def _queue_notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if self._on_queue is not None:
            self._on_queue(payload)

    def _definitions_notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if self._on_definitions is not None:
            self._on_definitions()

    # ---- the lease ----

    async def _keep_lease(self) -> None:
        """Renew this process's lease every client_grace / 3 seconds."""
        every = self.client_grace / 3
        while not self._closed:
            await asyncio.sleep(every)
            try:
                async with self.pool.acquire() as conn:
                    renewed = await conn.execute(
                        f"UPDATE tether_owners SET expires_at = {NOW} + $2 WHERE owner = $1", self.owner,
                        self.client_grace)
                    if renewed == "UPDATE 0":
                        # declared dead by another manager (we were cut off too long): our
                        # locks went back; carry on under the same name with a new lease
                        log.warning("the queue manager's lease had run out: its peek-locks were returned")
                        await conn.execute(f"INSERT INTO tether_owners VALUES ($1, $2, $3, {NOW} + $4) "
                                           f"ON CONFLICT (owner) DO NOTHING", self.owner, socket.gethostname(),
                                           os.getpid(), self.client_grace)
                        if self._lease_lost is not None:
                            self._lease_lost()
            except asyncio.CancelledError:
                raise
            except Exception as exc:      # the database is away: the next turn tries again
                log.warning("cannot renew the queue manager's lease: %s", exc)

    # ---- the Store interface ----

    def release_recovered(self) -> None:
        """Nothing is replayed from a shared store."""

    def append(self, record: bytes, done: Callable[[BaseException | None], None]) -> None:
        """Never called: operations go to the database (shared_operations.py), not records."""
        raise StorageError("the PostgreSQL store takes operations, not journal records")

    def wants_compaction(self, live_bytes: int) -> bool:
        """Never: PostgreSQL reclaims space itself (autovacuum)."""
        return False

    async def rewrite(self, records: list[bytes], taken: Callable[[], None]) -> None:
        """Nothing to rewrite."""
        taken()

    def abort(self) -> None:
        """End at once, giving nothing up: the connections are dropped and the lease is left
        to run out, as a killed process leaves it (the crash tests use this)."""
        self._closed = True
        if self._lease_task is not None:
            self._lease_task.cancel()
        self._listener.terminate()
        self.lock_pool.terminate()
        self.pool.terminate()

    async def close(self) -> None:
        """Give up the lease (our remaining locks return at once), close the connections."""
        if self._closed:
            return
        self._closed = True
        if self._lease_task is not None:
            self._lease_task.cancel()
            try:
                await self._lease_task
            except (asyncio.CancelledError, Exception):
                pass
        try:
            async with self.pool.acquire() as conn:
                async with conn.transaction():
                    await conn.execute(
                        "UPDATE tether_messages SET lock_owner = NULL, lock_tag = NULL, lock_until = NULL, "
                        "delivery_count = greatest(delivery_count - 1, 0) WHERE lock_owner = $1", self.owner)
                    await conn.execute("DELETE FROM tether_groups WHERE holder = $1", self.owner)
                    await conn.execute("DELETE FROM tether_owners WHERE owner = $1", self.owner)
                    await conn.execute("SELECT pg_notify('tether_q', q) FROM "
                                       "(SELECT name AS q FROM tether_queues) s")
        except Exception as exc:
            log.warning("closing the PostgreSQL store: the lease was not given up (%s); "
                        "its locks return after client_grace", exc)
        finally:
            try:
                await self._listener.close()
            finally:
                await self.lock_pool.close()
                await self.pool.close()


def _clock_setup(clock: Callable[[], float] | None) -> Callable[[Any], Any] | None:
    """A pool's `setup` that gives each connection, as it is handed out, the clock's time as
    `tether.now` (postgres_schema.NOW), unless it has that time already; None without a clock."""
    if clock is None:
        return None
    given: dict[int, float] = {}      # server process id -> the time it was given last

    async def setup(conn: Any) -> None:
        now = float(clock())
        pid = conn.get_server_pid()
        if given.get(pid) != now:
            await conn.execute("SELECT set_config('tether.now', $1, false)", repr(now))
            given[pid] = now
    return setup


async def _keep_session(conn: Any) -> None:
    """A pool's `reset`: nothing beyond asyncpg's own (an open transaction is rolled back).
    The pools' sessions hold no state to clear (no LISTEN, cursors, session advisory locks or
    settings but `tether.now`, set at every acquire), and the default reset costs a round
    trip per release."""
