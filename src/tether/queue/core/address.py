"""Queue names and addresses.

A plain name (`orders`) is a queue of the local queue manager; `orders;retry` and
`orders;poison` are its sub-queues (MSMQ syntax); `$dead` is the system dead-letter queue.
`tether://host:port/orders` is a queue of another queue manager: a send to it goes through a
transmission queue (store-and-forward, docs/queues.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_NAME_LENGTH = 255
SUBQUEUES = ("retry", "poison")
SCHEME = "tether"
_FORBIDDEN = set(";/\\#?") | {chr(c) for c in range(33)} | {chr(127)}


def validate_queue_name(name: object) -> str:
    """`name` if it may name an application queue, else TypeError/ValueError saying why."""
    if not isinstance(name, str):
        raise TypeError(f"queue name must be a string, not {name!r}")
    if not name or len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"queue name must be 1..{MAX_NAME_LENGTH} characters, not {name!r}")
    if name[0] == "$":
        raise ValueError(f"queue name {name!r}: names starting with '$' are reserved for system queues")
    bad = _FORBIDDEN.intersection(name)
    if bad:
        raise ValueError(f"queue name {name!r} contains forbidden characters {''.join(sorted(bad))!r}")
    return name


def split_subqueue(name: str) -> tuple[str, str | None]:
    """`("orders", "poison")` for `orders;poison`, `("orders", None)` for `orders`."""
    base, sep, sub = name.partition(";")
    if not sep:
        return name, None
    if sub not in SUBQUEUES:
        raise ValueError(f"queue name {name!r}: unknown sub-queue {sub!r} (known: {', '.join(SUBQUEUES)})")
    return base, sub


@dataclass(frozen=True, slots=True)
class RemoteAddress:
    """`tether://host:port/queue`: a queue owned by another queue manager."""

    host: str
    port: int
    queue: str

    @property
    def authority(self) -> str:
        """`host:port`, which names the destination queue manager."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{SCHEME}://{self.authority}/{self.queue}"


def is_remote(address: str) -> bool:
    """True when `address` is a `tether://` URL rather than a local queue name."""
    return address.startswith(SCHEME + "://")


def parse_remote(address: str) -> RemoteAddress:
    """The parts of `tether://host:port/queue`; ValueError naming what is wrong."""
    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad queue address {address!r}: {exc}") from None
    if parts.scheme != SCHEME:
        raise ValueError(f"bad queue address {address!r}: scheme must be {SCHEME}://")
    if "@" in parts.netloc:
        # tether://a:7600@evil:1/q would go to evil:1 while reading like a:7600
        raise ValueError(f"bad queue address {address!r}: no user information (user@) allowed")
    if not parts.hostname:
        raise ValueError(f"bad queue address {address!r}: no host")
    if port is None or port == 0:
        raise ValueError(f"bad queue address {address!r}: a port 1..65535 is required")
    if parts.query or parts.fragment:
        raise ValueError(f"bad queue address {address!r}: no query or fragment allowed")
    queue = parts.path[1:] if parts.path.startswith("/") else parts.path
    try:
        base, _ = split_subqueue(queue)
        validate_queue_name(base)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad queue address {address!r}: {exc}") from None
    return RemoteAddress(parts.hostname, port, queue)
