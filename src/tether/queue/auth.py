"""Who a client of a queue service is: password hashes, the table of users, the identity a
session gets at HELLO, and where credentials may travel (docs/security.md).

Passwords are kept as scrypt hashes (`hashlib.scrypt`, a random salt, the parameters in the
string: `scrypt$N$r$p$SALT$HASH`, base64), printed by `tether qm passwd`. Credentials
travel only over TLS or to a loopback address: a client refuses to send them over plain TCP
to any other host, and a service refuses them when they arrive that way.

A service with users authenticates every client; one without users serves everyone
anonymously with every permission, which `check_listen` allows only on loopback addresses
unless `allow_anonymous` says otherwise.

What a client holds at the service and its producer identity (epochs, sequences, floors)
are keyed by `client_key`: the client id itself for anonymous clients, a hash of the user
and the client id for users, so no user can take over another user's producer or locks by
claiming their client id. A forwarder's return queue is named after `origin_of` the same
two, which the service derives, never takes from the client.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import AuthenticationFailed
from ..session.adapters.url import parse as parse_url
from .permissions import EVERYTHING, Permissions

SCRYPT_N = 1 << 14          # 16 MiB of memory and some 50 ms per check: an interactive login's cost
SCRYPT_R = 8
SCRYPT_P = 1
MIN_SCRYPT_N = 1 << 10
MAX_SCRYPT_MEMORY = 256 * 1024 * 1024
SALT_BYTES = 16
HASH_BYTES = 32
MAX_PASSWORD = 1024         # characters
_HASH_SCHEME = "scrypt"
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_USER_KEYS = {"password_hash", "send", "receive", "admin", "forward"}


# ---- password hashes ----

@dataclass(frozen=True)
class _Hash:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes


def _scrypt(password: str, n: int, r: int, p: int, salt: bytes, length: int) -> bytes:
    memory = 128 * n * r * p
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=length,
                          maxmem=memory + 1024 * 1024)


def _check_scrypt_parameters(n: int, r: int, p: int) -> None:
    if n < MIN_SCRYPT_N or n & (n - 1):
        raise ValueError(f"scrypt N must be a power of two >= {MIN_SCRYPT_N}, not {n}")
    if r < 1 or p < 1:
        raise ValueError(f"scrypt r and p must be >= 1, not r={r} p={p}")
    if 128 * n * r * p > MAX_SCRYPT_MEMORY:
        raise ValueError(f"scrypt N={n} r={r} p={p} needs more than {MAX_SCRYPT_MEMORY >> 20} MiB")


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """The string to keep for `password`: `scrypt$N$r$p$SALT$HASH` (a random salt)."""
    _check_password(password)
    _check_scrypt_parameters(n, r, p)
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(password, n, r, p, salt, HASH_BYTES)
    b64 = base64.b64encode
    return f"{_HASH_SCHEME}${n}${r}${p}${b64(salt).decode()}${b64(digest).decode()}"


def parse_password_hash(encoded: Any) -> _Hash:
    """The parts of a hash made by `hash_password`; ValueError saying what is wrong."""
    if not isinstance(encoded, str):
        raise ValueError(f"a password hash must be a string, not {type(encoded).__name__}")
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != _HASH_SCHEME:
        raise ValueError("a password hash must look like scrypt$N$r$p$SALT$HASH (print one with `tether qm passwd`)")
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        raise ValueError("a password hash must look like scrypt$N$r$p$SALT$HASH, with numbers "
                         "and base64 (print one with `tether qm passwd`)") from None
    _check_scrypt_parameters(n, r, p)
    if len(salt) < 8 or len(digest) < 16:
        raise ValueError("a password hash needs a salt of 8 bytes or more and a hash of 16 bytes or more")
    return _Hash(n, r, p, salt, digest)


def verify_password(password: str, encoded: str) -> bool:
    """Whether `password` is the one `encoded` was made from (compared in constant time)."""
    stored = parse_password_hash(encoded)
    if not isinstance(password, str) or not 0 < len(password) <= MAX_PASSWORD:
        return False
    computed = _scrypt(password, stored.n, stored.r, stored.p, stored.salt, len(stored.digest))
    return hmac.compare_digest(computed, stored.digest)


def _check_password(password: Any) -> None:
    if not isinstance(password, str):
        raise TypeError(f"password must be a string, not {type(password).__name__}")
    if not 0 < len(password) <= MAX_PASSWORD:
        raise ValueError(f"password must be 1..{MAX_PASSWORD} characters")


def validate_user_name(name: Any) -> str:
    """`name` if it may name a user (1..64 of letters, digits, `. _ @ -`, not starting with
    a punctuation mark); ValueError otherwise."""
    if not isinstance(name, str) or not USER_NAME.fullmatch(name):
        raise ValueError(f"user name {name!r} must be 1..64 letters, digits or . _ @ - "
                         "(starting with a letter or digit)")
    return name


# ---- where credentials may travel ----

def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (127.0.0.0/8, ::1, an IPv4-mapped one) or
    `localhost`. Other names are not looked up: they count as not loopback."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def check_credentials(url: str, user: Any, password: Any) -> None:
    """A client's user and password for the service at `url` (tcp://, tls://): both or
    neither, and a password only over TLS or to a loopback address. TypeError/ValueError
    naming what is wrong."""
    if user is None and password is None:
        return
    if user is None or password is None:
        raise ValueError("user and password go together: give both, or neither for anonymous access")
    validate_user_name(user)
    _check_password(password)
    parsed = parse_url(url)
    if parsed.scheme != "tls" and not is_loopback(parsed.host):
        raise ValueError(f"refusing to send the password of user {user!r} over plain TCP to {parsed.authority}: "
                         f"credentials travel only over TLS or to a loopback address; use "
                         f"tls://{parsed.authority}")


def credentials_allowed(over_tls: bool, peer: Any) -> bool:
    """Whether a service accepts a password that came over this connection: over TLS, or
    over plain TCP from a loopback address (`peer` is the socket's peer address)."""
    if over_tls:
        return True
    host = peer[0] if isinstance(peer, tuple) and peer and isinstance(peer[0], str) else None
    return host is not None and is_loopback(host)


# ---- identities ----

def client_key(user: str | None, client_id: bytes) -> bytes:
    """What the service keys a client's producer, locks and transactions by: the client id
    of an anonymous client, a hash of the user and the client id for a user."""
    if user is None:
        return client_id
    return hashlib.sha256(b"tether-queue-user\0" + user.encode() + b"\0" + client_id).digest()


def origin_of(user: str | None, client_id: bytes) -> str:
    """The origin of a forwarder's messages at the target, which names its return queue
    (`$return:ORIGIN`): the client id in hex, after `USER:` for a user."""
    return client_id.hex() if user is None else f"{user}:{client_id.hex()}"


@dataclass(frozen=True)
class Identity:
    """Who a session is: a user (None: anonymous) and their permissions."""

    user: str | None
    permissions: Permissions


ANONYMOUS = Identity(None, EVERYTHING)


@dataclass(frozen=True)
class User:
    """One user of a queue service: the hash of their password and their permissions."""

    name: str
    password_hash: str = field(repr=False)
    permissions: Permissions = Permissions()

    def __post_init__(self) -> None:
        validate_user_name(self.name)
        try:
            parse_password_hash(self.password_hash)
        except ValueError as exc:
            raise ValueError(f"user {self.name!r}: password_hash: {exc}") from None
        if not isinstance(self.permissions, Permissions):
            raise TypeError(f"user {self.name!r}: permissions must be a Permissions, "
                            f"not {type(self.permissions).__name__}")


class Users:
    """The users of a queue service, by name."""

    def __init__(self, users: list[User]) -> None:
        self._users: dict[str, User] = {}
        for user in users:
            if not isinstance(user, User):
                raise TypeError(f"users must be User objects, not {type(user).__name__}")
            if user.name in self._users:
                raise ValueError(f"user {user.name!r} is defined twice")
            self._users[user.name] = user
        if not self._users:
            raise ValueError("users: define at least one user (or none at all, for anonymous access on loopback)")
        self._decoy: str | None = None

    @classmethod
    def from_config(cls, table: Mapping[str, Any], where: str = "users") -> "Users":
        """The users of a `[users.NAME]` TOML table (password_hash, send, receive, admin,
        forward); ValueError naming `users.NAME.KEY` when something is wrong."""
        if not isinstance(table, Mapping):
            raise ValueError(f"{where} must be a table of [{where}.NAME] tables")
        users = []
        for name, entry in table.items():
            path = f"{where}.{name}"
            if not isinstance(entry, Mapping):
                raise ValueError(f"{path} must be a table")
            try:
                validate_user_name(name)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
            unknown = set(entry) - _USER_KEYS
            if unknown:
                raise ValueError(f"{path}: unknown keys {', '.join(sorted(unknown))} "
                                 f"(known: {', '.join(sorted(_USER_KEYS))})")
            if "password_hash" not in entry:
                raise ValueError(f"{path}: password_hash is required (print one with `tether qm passwd`)")
            try:
                parse_password_hash(entry["password_hash"])
            except ValueError as exc:
                raise ValueError(f"{path}.password_hash: {exc}") from None
            users.append(User(name, entry["password_hash"], Permissions.from_config(dict(entry), path)))
        return cls(users)

    def __contains__(self, name: object) -> bool:
        return name in self._users

    def __len__(self) -> int:
        return len(self._users)

    def __getitem__(self, name: str) -> User:
        return self._users[name]

    def _decoy_hash(self) -> str:
        """A hash with a user's parameters, checked for an unknown user so that costs the same time."""
        if self._decoy is None:
            stored = parse_password_hash(next(iter(self._users.values())).password_hash)
            self._decoy = hash_password(os.urandom(16).hex(), n=stored.n, r=stored.r, p=stored.p)
        return self._decoy

    def authenticate(self, name: str, password: str) -> User:
        """The user `name` if `password` is theirs; AuthenticationFailed (the same for an
        unknown user and a wrong password, after the same work) otherwise."""
        user = self._users.get(name)
        if user is None:
            verify_password(password, self._decoy_hash())
        elif verify_password(password, user.password_hash):
            return user
        raise AuthenticationFailed(f"authentication failed for user {name!r}: unknown user or wrong password")


# ---- a service's access policy ----

class Access:
    """Who may use a queue service: its `users` (None: anonymous clients, with every
    permission) and whether anonymous access may listen beyond loopback."""

    def __init__(self, users: Users | None = None, *, allow_anonymous: bool = False) -> None:
        if users is not None and not isinstance(users, Users):
            raise TypeError(f"users must be a tether.queue.auth.Users or None, not {type(users).__name__}")
        if not isinstance(allow_anonymous, bool):
            raise TypeError(f"allow_anonymous must be True or False, not {allow_anonymous!r}")
        if users is not None and allow_anonymous:
            raise ValueError("allow_anonymous has no meaning with users: every client authenticates")
        self.users = users
        self.allow_anonymous = allow_anonymous

    def check_listen(self, url: str) -> None:
        """ValueError, naming the address, when serving at `url` would expose the queue
        manager: anonymous access beyond loopback (unless allow_anonymous), or passwords
        over plain TCP beyond loopback."""
        parsed = parse_url(url)
        if is_loopback(parsed.host):
            return
        if self.users is None and not self.allow_anonymous:
            raise ValueError(
                f"refusing to listen on {parsed.text}: it is not a loopback address, and without users "
                "anyone who reaches it may read, send, delete and forward anything. Define users "
                "(and listen on tls://), or set allow_anonymous = true if that is really what you want")
        if self.users is not None and parsed.scheme != "tls":
            raise ValueError(
                f"refusing to listen on {parsed.text}: it is not a loopback address, and passwords travel "
                f"only over TLS or loopback; listen on tls://{parsed.authority}")

    async def authenticate(self, user: str | None, password: str | None, *, over_tls: bool, peer: Any) -> Identity:
        """The identity of a session whose HELLO carried `user` and `password` (None: none),
        received over TLS or not from `peer`; AuthenticationFailed when refused."""
        if password is not None and not credentials_allowed(over_tls, peer):
            raise AuthenticationFailed("credentials are accepted only over TLS or from a loopback address: "
                                       "connect with tls://")
        if self.users is None:
            return ANONYMOUS        # no users here: credentials mean nothing (the reply says so)
        if user is None or password is None:
            raise AuthenticationFailed("this queue manager requires a user and password")
        loop = asyncio.get_running_loop()
        # scrypt takes tens of milliseconds: not on the event loop
        found = await loop.run_in_executor(None, self.users.authenticate, user, password)
        return Identity(found.name, found.permissions)
