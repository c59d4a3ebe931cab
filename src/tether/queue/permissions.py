"""What an authenticated user of a queue service may do, and the check of every request
against it (docs/security.md, "Users and permissions").

    send      SEND and TX_SEND to queues whose name matches one of the fnmatch patterns;
              a remote address (tether://host:port/queue) only by a pattern that itself
              starts with tether://, matched against the address as the queue manager
              normalizes it (lower-case host): `*` alone never lets a user make the queue
              manager open a transmission queue and connect out
    receive   RECEIVE, SUBSCRIBE, PEEK and ACCEPT_GROUP on matching queues, and on their sub-queues
              (`orders;poison` is covered by `orders`); COMPLETE, ABANDON and RELEASE
              name a peek-lock, which only the client that received the message holds
    admin     CREATE, DELETE and PURGE, every `$` system queue ($dead, $xmit:..., $return:...),
              INFO of every queue (without it INFO shows only the queues the user may
              send to or receive from)
    forward   FORWARD into application queues (as another queue manager's forwarder),
              and receiving its own return queue (its rejects)

Patterns never match a `$` queue: only `admin` reaches those.
"""
from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from ..errors import PermissionDenied
from . import protocol as P
from .core.address import SCHEME, is_remote, parse_remote

REMOTE_PREFIX = SCHEME + "://"
_KEYS = ("send", "receive", "admin", "forward")
# remember this many answers of `may_send` per session (the same addresses recur)
_SEND_CACHE = 4096


def _patterns(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) and p for p in value):
        raise ValueError(f"{where} must be a list of queue name patterns (non-empty strings), not {value!r}")
    for pattern in value:
        if pattern.startswith("$"):
            raise ValueError(f"{where}: pattern {pattern!r}: patterns never grant `$` system queues; admin = true does")
        if ";" in pattern:
            raise ValueError(f"{where}: pattern {pattern!r}: name the main queue; its sub-queues come with it")
    return tuple(value)


@dataclass(frozen=True)
class Permissions:
    """A user's permissions: fnmatch patterns of queue names for `send` and `receive`,
    and the `admin` and `forward` flags (see the module docstring)."""

    send: tuple[str, ...] = ()
    receive: tuple[str, ...] = ()
    admin: bool = False
    forward: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "send", _patterns(self.send, "send"))
        object.__setattr__(self, "receive", _patterns(self.receive, "receive"))
        for flag in ("admin", "forward"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be true or false, not {getattr(self, flag)!r}")

    @classmethod
    def from_config(cls, table: dict[str, Any], where: str) -> Permissions:
        """The permissions in a `[users.NAME]` table (its other keys are not looked at);
        ValueError naming `where.KEY` when one is wrong."""
        values = {}
        for key in _KEYS:
            if key in table:
                values[key] = table[key]
        try:
            return cls(**values)
        except ValueError as exc:
            raise ValueError(f"{where}.{exc}") from None

    @property
    def unrestricted(self) -> bool:
        """Everything is allowed (the anonymous identity of a loopback service)."""
        return self.admin and self.forward and "*" in self.send and "*" in self.receive \
            and REMOTE_PREFIX + "*" in self.send

    def may_send(self, address: str) -> bool:
        """SEND/TX_SEND to `address`: a local queue name, or tether://host:port/queue."""
        if is_remote(address):
            try:
                canonical = str(parse_remote(address))
            except ValueError:
                return True     # not an address at all: the queue manager refuses it, saying why
            return any(p.startswith(REMOTE_PREFIX) and fnmatchcase(canonical, p) for p in self.send)
        base = address.partition(";")[0]
        if base.startswith("$"):
            return self.admin
        return any(not p.startswith(REMOTE_PREFIX) and fnmatchcase(base, p) for p in self.send)

    def may_receive(self, queue: str, own_return_queue: str | None = None) -> bool:
        """RECEIVE/SUBSCRIBE on `queue` (or one of its sub-queues). `own_return_queue`: the
        return queue of this session's forwarder identity, which `forward` may read."""
        base = queue.partition(";")[0]
        if base.startswith("$"):
            return self.admin or (self.forward and base == own_return_queue)
        return any(not p.startswith(REMOTE_PREFIX) and fnmatchcase(base, p) for p in self.receive)


#: Every permission: anonymous access to a service that has no users.
EVERYTHING = Permissions(send=("*", REMOTE_PREFIX + "*"), receive=("*",), admin=True, forward=True)


class RequestGuard:
    """The permission check of one session: its user, their permissions and the return
    queue that is the session's own (for a forwarder)."""

    __slots__ = ("user", "permissions", "own_return_queue", "unrestricted", "_sends")

    def __init__(self, user: str | None, permissions: Permissions, own_return_queue: str | None) -> None:
        self.user = user
        self.permissions = permissions
        self.own_return_queue = own_return_queue
        self.unrestricted = permissions.unrestricted
        self._sends: dict[str, bool] = {}

    def _denied(self, what: str, why: str) -> PermissionDenied:
        who = "anonymous clients" if self.user is None else f"user {self.user!r}"
        return PermissionDenied(f"{who} may not {what} ({why})")

    def _may_send(self, address: str) -> bool:
        allowed = self._sends.get(address)
        if allowed is None:
            allowed = self.permissions.may_send(address)
            if len(self._sends) < _SEND_CACHE:
                self._sends[address] = allowed
        return allowed

    def _send_refusal(self, address: str) -> PermissionDenied | None:
        if self._may_send(address):
            return None
        if address.startswith("$"):
            return self._denied(f"send to {address!r}", "system queues need admin")
        return self._denied(f"send to {address!r}", "no send pattern matches it")

    def _receive_refusal(self, queue: str) -> PermissionDenied | None:
        if self.permissions.may_receive(queue, self.own_return_queue):
            return None
        if queue.startswith("$"):
            return self._denied(f"receive from {queue!r}", "system queues need admin")
        return self._denied(f"receive from {queue!r}", "no receive pattern matches it")

    def refusal(self, item: list) -> PermissionDenied | None:
        """The PermissionDenied for a checked request item (protocol.parse_request), or
        None when the user may make it."""
        if self.unrestricted:
            return None
        op = item[0]
        permissions = self.permissions
        if op == P.SEND or op == P.SEND_BATCH:
            return self._send_refusal(item[2])
        if op == P.TX_SEND:
            return self._send_refusal(item[3])
        if op == P.RECEIVE or op == P.SUBSCRIBE or op == P.PEEK or op == P.ACCEPT_GROUP:
            return self._receive_refusal(item[3] if op == P.SUBSCRIBE else item[2])
        if op == P.FORWARD or op == P.FORWARD_BATCH:
            if not permissions.forward:
                return self._denied("forward messages", "forward = false: only queue managers' users forward")
            if not permissions.admin:
                # (a batch is refused whole when one of its messages is)
                for queue in ([item[2]] if op == P.FORWARD else [message[0] for message in item[2]]):
                    if queue.startswith("$"):
                        return self._denied(f"forward to {queue!r}", "system queues need admin")
            return None
        if op == P.CREATE or op == P.DELETE or op == P.PURGE:
            if not permissions.admin:
                verb = {P.CREATE: "create", P.DELETE: "delete", P.PURGE: "purge"}[op]
                return self._denied(f"{verb} queue {item[2]!r}", "admin = false")
            return None
        if op == P.INFO or op == P.SETTINGS:
            name = item[2]
            if name is not None and not self.visible(name):
                return self._denied(f"see queue {name!r}", "neither send nor receive permission for it")
            return None
        # settling by lock tag, credit, transactions' begin/commit/rollback, the floor:
        # each touches only what this client holds
        return None

    def visible(self, name: str) -> bool:
        """Whether INFO shows queue `name` to this user."""
        if self.unrestricted or self.permissions.admin:
            return True
        return self._may_send(name) or self.permissions.may_receive(name, self.own_return_queue)
