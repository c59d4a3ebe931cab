"""Session settings (names and defaults after WCF's <reliableSession>): each field carries
its default, its allowed range (a check that validates it, with a ValueError/TypeError
naming the setting) and its meaning, which docs/configuration.md is generated from
(`python -m tether.docs_config`)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, TypedDict

MAX_WINDOW = 4096
MAX_PENDING_CHANNELS = 16384
# A message larger than this would not fit the TCP framing's sanity bound; it is also far
# beyond what one reliable-session message should carry.
MAX_MESSAGE_SIZE_LIMIT = 16 * 1024 * 1024


@dataclass(frozen=True)
class Seconds:
    """A number of seconds in (low, high], or [low, high] with low_inclusive."""

    low: float
    high: float
    low_inclusive: bool = False

    def __call__(self, name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
        if not math.isfinite(value) or value > self.high or value < self.low \
                or (value == self.low and not self.low_inclusive):
            raise ValueError(f"{name} must be in {self.describe().removesuffix(' s')} seconds, not {value}")

    def describe(self) -> str:
        return f"{'[' if self.low_inclusive else '('}{_plain(self.low)}, {_plain(self.high)}] s"


def _plain(number: float) -> str:
    """31536000, not 3.1536e+07; 0.5 as 0.5."""
    return str(int(number)) if number == int(number) else repr(number)


@dataclass(frozen=True)
class Integer:
    """An int in low..high."""

    low: int
    high: int

    def __call__(self, name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        if not self.low <= value <= self.high:
            raise ValueError(f"{name} must be in {self.low}..{self.high}, not {value}")

    def describe(self) -> str:
        return f"{self.low} .. {self.high}"


@dataclass(frozen=True)
class Flag:
    """True or False."""

    def __call__(self, name: str, value: Any) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, not {value!r}")

    def describe(self) -> str:
        return "True, False"


FLAG = Flag()


def setting(default: Any, check: Seconds | Integer | Flag, doc: str) -> Any:
    """A settings field that carries its check (`metadata["check"]`) and meaning
    (`metadata["doc"]`)."""
    return field(default=default, metadata={"check": check, "doc": doc})


@dataclass(frozen=True)
class SessionSettings:
    """Every tunable of a reliable session. Construct with keyword arguments; unknown names
    raise TypeError, out-of-range values ValueError, both naming the setting."""

    ack_interval: float = setting(
        0.2, Seconds(0.0, 60.0, low_inclusive=True),
        "The longest this side waits before acknowledging data; 0 acknowledges every packet "
        "carrying data at once. Acks also go out at once on the first message, for every second "
        "full packet, on a gap or a duplicate, and when the sender asks (AckRequested), which it "
        "does only when it waits for the ack: its window nearly full, `flush()`, `close()`. So a "
        "larger value means fewer acks for messages sent now and then. The peer learns it in the "
        "handshake and waits that much longer before resending.")
    flow_control: bool = setting(
        True, FLAG,
        "UDP: respect the peer's advertised buffer and run congestion control (a model of the "
        "path's bandwidth and RTT). With False "
        "the sender sends up to its own window regardless; what the receiver's window refuses is "
        "dropped and resent, which costs retries, and no congestion window slows the sender on a "
        "congested path. TCP: no effect (the peer's buffer is always respected, and TCP does "
        "congestion control).")
    inactivity_timeout: float = setting(
        600.0, Seconds(0.0, 86400.0 * 365),
        "Fault with `InactivityTimeout` after hearing nothing from the peer for this long. A "
        "session that has sent nothing for `min(inactivity_timeout / 4, 30 s)` sends a keepalive, "
        "so a live peer is always heard. Over TCP it also bounds how long a session survives "
        "without a connection.")
    max_pending_channels: int = setting(
        4, Integer(1, MAX_PENDING_CHANNELS),
        "Server: how many new sessions may wait in the backlog of a `Server` without a handler "
        "until `accept()` takes them; a session that ends before it is accepted keeps its place. "
        "Beyond the limit CreateSequence is refused (`CreateSequenceRefused` at the client). Over "
        "UDP only clients that proved their address (answered the Retry) get a session, so forged "
        "CreateSequences cannot fill it. With a handler every session is taken at once. No effect "
        "on a client.")
    max_retry_count: int = setting(
        8, Integer(1, 1000),
        "UDP: how often one message or control frame is resent without an answer before the "
        "session faults with `RetryLimitExceeded`; a message is sent at most this plus one times. "
        "A second and later Retry from the server during the handshake count as resends of "
        "CreateSequence. TCP: not used for data (nothing is resent on a live connection). Also "
        "caps TerminateSequence's resends at `min(3, max_retry_count)` on both.")
    max_transfer_window: int = setting(
        8, Integer(1, MAX_WINDOW),
        "In messages: the most this side keeps in flight unacknowledged, and the most its receive "
        "buffer holds (out of order, plus delivered and not yet consumed). The peer learns it in "
        "the handshake. A session moves at most one window per round trip, so raise it for "
        "throughput (`tether bench` uses 4096); it also bounds memory per session.")
    ordered: bool = setting(
        True, FLAG,
        "Deliver in the order sent (True), or as messages arrive (False: still exactly once, "
        "without waiting for a gap to close). The client's setting applies to the session; a "
        "server takes each client's.")
    max_message_size: int = setting(
        65536, Integer(1, MAX_MESSAGE_SIZE_LIMIT),
        "In bytes: the largest message this side accepts; the peer learns it in the handshake. A "
        "sender is limited to the smaller of both sides' values. Over UDP, messages larger than a "
        "datagram holds are fragmented. A received message above it is a `ProtocolError`.")
    connect_timeout: float = setting(
        10.0, Seconds(0.0, 3600.0),
        "Client: how long `connect()` waits for the handshake before it gives up with "
        "`RetryLimitExceeded`; over TCP the connection (and over tls:// its TLS handshake) first "
        "gets as long again (not made in time: `TimeoutError`), and so does each reconnect "
        "attempt. Server: how long a new TCP connection may take to send its first packet before "
        "it is closed; over tls:// the TLS handshake gets as long again before that.")
    close_timeout: float = setting(
        60.0, Seconds(0.0, 86400.0),
        "How long `close()`, and leaving an `async with` block, wait for the peer to acknowledge "
        "everything and end the session. Then the session is aborted (the peer faults with "
        "`SequenceTerminated`) and `close()` raises `TimeoutError`. `close(timeout)` overrides it "
        "for one call.")

    def __post_init__(self) -> None:
        for f in fields(self):
            f.metadata["check"](f.name, getattr(self, f.name))

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> SessionSettings:
        """Settings from keyword arguments, rejecting unknown names."""
        known = {f.name for f in fields(cls)}
        for name in kwargs:
            if name not in known:
                raise TypeError(f"unknown session setting {name!r}; known: {', '.join(sorted(known))}")
        return cls(**kwargs)

    @property
    def keepalive_interval(self) -> float:
        """Idle time after which an AckRequested keepalive is sent: often enough that the
        peer hears us several times per inactivity_timeout."""
        return min(self.inactivity_timeout / 4.0, 30.0)


class SessionTuning(TypedDict, total=False):
    """SessionSettings' fields as keyword arguments, but connect_timeout (which the queue
    client takes as a parameter of its own), for type checkers."""

    ack_interval: float
    flow_control: bool
    inactivity_timeout: float
    max_pending_channels: int
    max_retry_count: int
    max_transfer_window: int
    ordered: bool
    max_message_size: int
    close_timeout: float


class SessionOptions(SessionTuning, total=False):
    """SessionSettings' fields as keyword arguments (`connect(url, **settings)`), for type
    checkers; tests keep the two the same."""

    connect_timeout: float
