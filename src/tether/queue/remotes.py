"""How this queue manager reaches another one: `Remote`, per HOST:PORT.

A message sent to `tether://HOST:PORT/queue` waits in the transmission queue
`$xmit:HOST:PORT`; its forwarder connects to HOST:PORT as the `Remote` for that address
says: over tls:// when it has an SSL context (in the configuration: a `cafile`) or
`tls = true` (then the system's CAs verify the certificate), otherwise over plain tcp://;
with a user and password when it has them. Without a `Remote`, a forwarder connects over
plain TCP, anonymously.

    [remotes."qm-west.example:7600"]
    user = "qm-east"
    password = "..."
    cafile = "ca.pem"          # TLS, trusting this CA
    cert = "qm-east.pem"       # optional: the certificate to present (mutual TLS)
    key = "qm-east.key"

    QueueManager.open(..., remotes={"qm-west.example:7600": Remote(ssl=ctx, user="qm-east", password="...")})

A password is sent only over TLS or to a loopback address: a Remote that would send one
over plain TCP to another host is refused when it is made.
"""
from __future__ import annotations

import ssl as _ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .auth import check_credentials

#: The keys of a `[remotes."HOST:PORT"]` table and what they mean (docs/configuration.md)
REMOTE_KEYS = {
    "user": "The user the forwarders log in as at that queue manager (with password).",
    "password": "That user's password.",
    "tls": "true: connect with TLS (tls://), verifying the certificate against the system's CAs.",
    "cafile": "Connect with TLS, verifying the queue manager's certificate against this CA file.",
    "cert": "A client certificate (PEM) to present, for mutual TLS (with key).",
    "key": "The private key of cert.",
}


def normalize_authority(authority: Any) -> str:
    """`HOST:PORT` as transmission queues name it (lower-case host, IPv6 in brackets);
    ValueError naming what is wrong."""
    if not isinstance(authority, str):
        raise ValueError(f"a remote must be named HOST:PORT, not {authority!r}")
    try:
        parts = urlsplit("//" + authority)
        port = parts.port
    except ValueError:
        raise ValueError(f"remote {authority!r}: the port must be 1..65535") from None
    if not parts.hostname or not port or parts.path or parts.query or parts.fragment \
            or "@" in parts.netloc or parts.netloc != authority:
        raise ValueError(f"remote {authority!r} must be HOST:PORT (a port 1..65535, nothing else)")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}"


@dataclass(frozen=True)
class Remote:
    """How to reach one other queue manager. `ssl`: a client `ssl.SSLContext` (implies
    TLS); `tls`: True for TLS with `ssl.create_default_context()` when `ssl` is None (None:
    TLS exactly when `ssl` is given); `user` and `password`: this queue manager's
    credentials there (both or neither)."""

    ssl: _ssl.SSLContext | None = None
    tls: bool | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.ssl is not None and not isinstance(self.ssl, _ssl.SSLContext):
            raise TypeError(f"Remote ssl must be an ssl.SSLContext or None, not {type(self.ssl).__name__}")
        if self.tls is not None and not isinstance(self.tls, bool):
            raise TypeError(f"Remote tls must be True, False or None, not {self.tls!r}")
        if self.tls is False and self.ssl is not None:
            raise ValueError("Remote: tls=False contradicts ssl=: an SSL context means TLS")
        if self.ssl is not None and self.ssl.protocol == _ssl.PROTOCOL_TLS_SERVER:
            raise ValueError("Remote ssl must be a client context such as ssl.create_default_context()")
        if (self.user is None) != (self.password is None):
            raise ValueError("Remote: user and password go together: give both, or neither")

    @property
    def uses_tls(self) -> bool:
        """Whether the forwarder connects over tls://."""
        return self.ssl is not None or bool(self.tls)

    def url(self, authority: str) -> str:
        """The session URL of the queue manager at `authority` (HOST:PORT)."""
        return f"{'tls' if self.uses_tls else 'tcp'}://{authority}"

    def check(self, authority: str) -> None:
        """ValueError when the credentials would travel over plain TCP to a host that is not
        loopback."""
        check_credentials(self.url(authority), self.user, self.password)

    @classmethod
    def from_config(cls, table: Mapping[str, Any], where: str) -> Remote:
        """The Remote of a `[remotes."HOST:PORT"]` table; ValueError naming `where.KEY`."""
        if not isinstance(table, Mapping):
            raise ValueError(f"{where} must be a table")
        unknown = set(table) - REMOTE_KEYS.keys()
        if unknown:
            raise ValueError(f"{where}: unknown keys {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(sorted(REMOTE_KEYS))})")
        for key in ("user", "password", "cafile", "cert", "key"):
            if key in table and (not isinstance(table[key], str) or not table[key]):
                raise ValueError(f"{where}.{key} must be a non-empty string")
        tls = table.get("tls")
        if tls is not None and not isinstance(tls, bool):
            raise ValueError(f"{where}.tls must be true or false, not {tls!r}")
        if ("cert" in table) != ("key" in table):
            raise ValueError(f"{where}: cert and key go together (the certificate to present and its key)")
        context = None
        if "cafile" in table or "cert" in table:
            if tls is False:
                raise ValueError(f"{where}: tls = false contradicts cafile/cert, which are for TLS")
            try:
                context = _ssl.create_default_context(cafile=table.get("cafile"))
            except (OSError, _ssl.SSLError) as exc:
                raise ValueError(f"{where}.cafile: cannot load {table['cafile']!r}: {exc}") from None
            if "cert" in table:
                try:
                    context.load_cert_chain(table["cert"], table["key"])
                except (OSError, _ssl.SSLError) as exc:
                    raise ValueError(f"{where}.cert: cannot load {table['cert']!r} with key "
                                     f"{table['key']!r}: {exc}") from None
        try:
            return cls(ssl=context, tls=tls, user=table.get("user"), password=table.get("password"))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None


#: No Remote configured: plain TCP, anonymous.
DIRECT = Remote()


def validate_remotes(remotes: Mapping[str, Remote] | None, where: str = "remotes") -> dict[str, Remote]:
    """`remotes` by normalized HOST:PORT, each checked; TypeError/ValueError naming the one
    that is wrong (two names for one address included)."""
    if remotes is None:
        return {}
    if not isinstance(remotes, Mapping):
        raise TypeError(f"{where} must be a mapping of 'HOST:PORT' to Remote, not {type(remotes).__name__}")
    checked: dict[str, Remote] = {}
    for name, remote in remotes.items():
        authority = normalize_authority(name)
        if not isinstance(remote, Remote):
            raise TypeError(f"{where}[{name!r}] must be a Remote, not {type(remote).__name__}")
        if authority in checked:
            raise ValueError(f"{where}: {name!r} names {authority}, which is already configured")
        try:
            remote.check(authority)
        except ValueError as exc:
            raise ValueError(f"{where}[{name!r}]: {exc}") from None
        checked[authority] = remote
    return checked
