"""`QueueService`: a queue manager served over reliable sessions (protocol.py), to
`QueueClient`s and to other queue managers' forwarders.

    tether qm serve --listen tcp://127.0.0.1:7600 --data-dir ./data [--config qm.toml]
    qm = await QueueManager.open("./data", listen="tcp://127.0.0.1:7600")   # embedded

Each client names itself with its client id in HELLO. What it holds here -- its peek-locked
messages and open transactions -- belongs to that id, not to the session, so a client that
lost its connection and comes back (on the same session, or a new one) still completes what
it received before; whatever was delivered but never reached it (not in HELLO's held list)
is released at once, uncounted. A client gone for `client_grace` seconds (its connection
dropped, or its session ended, and it did not come back) has its locks released, uncounted,
and its transactions rolled back: a killed consumer strands nothing for long.

Who may connect is the service's `Access` (auth.py): with users, every session
authenticates in HELLO and each request is checked against its user's permissions
(permissions.py); without, clients are anonymous with every permission, which is allowed
only on loopback addresses unless allow_anonymous. tls:// serves over TLS (`ssl=`, a
server context; with a CA to verify clients, mutual TLS).

The requests of one session are handled by connection.py.
"""
from __future__ import annotations

import asyncio
import logging
import math
from ssl import SSLContext
from typing import Any, Mapping, Protocol

from ..session.adapters.api import serve
from ..session.adapters.url import parse as parse_url
from . import protocol as P
from .auth import Access, Users
from .connection import ClientState, Connection, peer_host
from .core.producers import Producer
from .limits import FailedLogins, ServiceLimits, exceeded
from .log_limiter import LogLimiter
from .operations import QueueOperations

log = logging.getLogger("tether.queue.service")

#: Seconds a client that went away keeps its locks and transactions, waiting for it.
CLIENT_GRACE = 15.0


class ServedManager(Protocol):
    """What the service needs of the queue manager it serves."""

    operations: QueueOperations

    async def create_queue(self, name: str, **settings: Any) -> Any: ...

    async def delete_queue(self, name: str) -> None: ...

    async def route(self, address: str) -> str: ...

    async def return_queue(self, origin: str) -> str: ...

    def queues(self) -> list[str]: ...

    async def queue_info(self, name: str) -> Any: ...

    def transaction(self) -> Any: ...


class QueueService:
    """Serves one QueueManager at one URL. Start with `await QueueService.start(qm, url)`
    (or `qm.listen(url)`); `address` is the bound (host, port); `close()` stops it."""

    def __init__(self, manager: ServedManager, *, client_grace: float = CLIENT_GRACE,
                 access: Access | None = None, tls: bool = False, limits: ServiceLimits | None = None) -> None:
        if isinstance(client_grace, bool) or not isinstance(client_grace, (int, float)) \
                or not (client_grace > 0 and math.isfinite(client_grace)):
            raise ValueError(f"client_grace must be a finite number of seconds > 0, not {client_grace!r}")
        self.manager = manager
        self.access = access if access is not None else Access()
        self.tls = tls      # sessions arrive over TLS: credentials may come from anywhere
        self.operations = manager.operations
        self.client_grace = float(client_grace)
        if limits is not None and not isinstance(limits, ServiceLimits):
            raise TypeError(f"limits must be a ServiceLimits, not {type(limits).__name__}")
        self.limits = limits if limits is not None else ServiceLimits()
        self.connections: set[Connection] = set()
        self._per_address: dict[Any, int] = {}
        #: one log line per peer per limits.log_interval about malformed input
        self.log_limiter = LogLimiter(self.limits.log_interval)
        #: peers whose logins failed too often lately are refused without a check
        self.failed_logins = FailedLogins(self.limits.max_failed_logins, self.limits.failed_login_window)
        self.clients: dict[bytes, ClientState] = {}
        self._server: Any = None
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._tasks: set[asyncio.Task] = set()

    @classmethod
    async def start(cls, manager: ServedManager, url: str, *, ssl: SSLContext | None = None,
                    users: Users | Mapping[str, Any] | None = None, allow_anonymous: bool = False,
                    client_grace: float = CLIENT_GRACE, limits: ServiceLimits | None = None,
                    **session_settings: Any) -> "QueueService":
        """Listen at `url` (tcp://HOST:PORT or tls://HOST:PORT with `ssl`, a server
        `ssl.SSLContext`; port 0 picks a free one). `users`: a `Users` (or the dict of a
        `[users]` table) whose every client must authenticate; None: anonymous clients with
        every permission, refused (ValueError naming the address) beyond loopback unless
        `allow_anonymous`. `limits`: what one client may cost (ServiceLimits; its defaults
        otherwise)."""
        if users is not None and not isinstance(users, Users):
            users = Users.from_config(users)
        access = Access(users, allow_anonymous=allow_anonymous)
        access.check_listen(url)
        service = cls(manager, client_grace=client_grace, access=access, tls=parse_url(url).scheme == "tls",
                      limits=limits)
        settings = dict(P.SESSION_SETTINGS)
        settings.update(session_settings)
        service._server = await serve(service._handle, url, ssl=ssl, **settings)
        log.info("queue service listening on %s", service.url)
        return service

    @property
    def address(self) -> tuple:
        """The (host, port) actually bound."""
        return self._server.address

    @property
    def url(self) -> str:
        """The URL clients connect to, with the port actually bound."""
        return self._server.url_bound

    async def close(self) -> None:
        """Stop serving: open transactions roll back, subscriptions stop, sessions close.
        Locked messages stay locked in the manager (redelivered after their lock expires,
        or after the manager restarts)."""
        if self._closing:
            return
        self._closing = True
        for state in list(self.clients.values()):
            if state.connection is not None:
                state.connection.stop_consumers()
            await state.rollback_transactions()
            state.release_groups()
            state.cancel_grace()
        self._server.close()
        await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        self.clients.clear()
        log.info("queue service at %s closed", self.url)

    # ---- sessions ----

    async def _handle(self, session: Any) -> None:
        connection = Connection(self, session)
        refusal = self._admit(connection)
        if refusal is not None:
            await connection.refuse(refusal)
            return
        try:
            await connection.run()
        finally:
            connection.ended()
            self._release(connection)

    def _admit(self, connection: Connection) -> BaseException | None:
        """Count a new session in, or the LimitExceeded refusing it."""
        limits = self.limits
        address = peer_host(connection.session.peer_address)
        if len(self.connections) >= limits.max_connections:
            return exceeded("max_connections", limits.max_connections, "too many connections to this service")
        if self._per_address.get(address, 0) >= limits.max_connections_per_address:
            return exceeded("max_connections_per_address", limits.max_connections_per_address,
                            f"too many connections from {address}")
        self.connections.add(connection)
        self._per_address[address] = self._per_address.get(address, 0) + 1
        return None

    def _release(self, connection: Connection) -> None:
        if connection not in self.connections:
            return
        self.connections.discard(connection)
        address = peer_host(connection.session.peer_address)
        left = self._per_address.get(address, 1) - 1
        if left:
            self._per_address[address] = left
        else:
            self._per_address.pop(address, None)

    def attach(self, client_id: bytes, producer: Producer, epoch: int, connection: Connection,
               held: list[int]) -> tuple[ClientState, bool]:
        """A session said HELLO as `client_id`: its state (new, or resumed: the locks it does
        not list in `held` are released), and whether it was resumed."""
        state = self.clients.get(client_id)
        resumed = state is not None
        if state is None:
            state = self.clients[client_id] = ClientState(client_id, self.operations)
        else:
            state.cancel_grace()
            old = state.connection
            if old is not None and old is not connection:
                old.stop_consumers()
                old.state = None
            # delivered on an earlier session but never seen by the client: release at once
            state.release_all_but(set(held))
            log.info("client %s reconnected (%d locks kept)", client_id.hex()[:12], len(state.locks))
        state.producer = producer
        state.epoch = epoch
        state.connection = connection
        return state, resumed

    def away(self, state: ClientState, connection: Connection) -> None:
        """The client's connection dropped or its session ended: it has client_grace
        seconds to come back before its locks and transactions are let go."""
        if state.connection is not connection or self._closing or state.grace is not None:
            return
        state.grace = self._loop.call_later(self.client_grace, self._gone, state)

    def back(self, state: ClientState, connection: Connection) -> None:
        """The client's connection is back (a resumed session)."""
        if state.connection is connection:
            state.cancel_grace()

    def detach(self, state: ClientState, connection: Connection) -> None:
        """The session ended."""
        if state.connection is not connection:
            return
        self.away(state, connection)
        state.connection = None

    def _gone(self, state: ClientState) -> None:
        state.grace = None
        if self.clients.get(state.client_id) is not state:
            return
        if state.connection is not None and state.connection.linked:
            return
        if state.connection is not None:
            state.connection.stop_consumers()
            state.connection.abort("the client did not come back within client_grace")
        del self.clients[state.client_id]
        released = state.release_all_but(set())
        groups = state.release_groups()
        log.info("client %s did not come back within %g s: %d locks and %d groups released, its transactions "
                 "roll back", state.client_id.hex()[:12], self.client_grace, released, groups)
        task = self._loop.create_task(state.rollback_transactions())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

