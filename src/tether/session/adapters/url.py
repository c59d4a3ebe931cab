"""Session URLs: udp://HOST:PORT, tcp://HOST:PORT and tls://HOST:PORT (TCP with TLS on every
connection), IPv4 or [IPv6]."""
from __future__ import annotations

from typing import NamedTuple
from urllib.parse import urlsplit

SCHEMES = ("udp", "tcp", "tls")


class SessionURL(NamedTuple):
    scheme: str
    host: str
    port: int

    @property
    def stream(self) -> bool:
        """A TCP transport (tcp:// or tls://): one connection per session, reconnect and Resume."""
        return self.scheme != "udp"

    @property
    def authority(self) -> str:
        """HOST:PORT as in the URL ([HOST]:PORT for IPv6), for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def text(self) -> str:
        """The URL itself, scheme://HOST:PORT, for messages."""
        return f"{self.scheme}://{self.authority}"


def parse(url: str) -> SessionURL:
    """Split a session URL; ValueError naming what is wrong."""
    if not isinstance(url, str):
        raise TypeError(f"url must be a str like 'udp://127.0.0.1:9000', not {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"bad url {url!r}: scheme must be udp://, tcp:// or tls://")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"bad url {url!r}: port must be 0..65535") from None
    if not parts.hostname:
        raise ValueError(f"bad url {url!r}: no host")
    if port is None:
        raise ValueError(f"bad url {url!r}: no port")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"bad url {url!r}: only scheme://host:port is allowed")
    return SessionURL(parts.scheme, parts.hostname, port)
