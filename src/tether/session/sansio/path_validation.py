"""Path validation for UDP server sessions (after QUIC, RFC 9000 8.2 and 9): a session sends
to its peer's validated address only, and moves to a new one only once that address has
echoed a PathChallenge.

Before this, the server followed the latest source address of any packet naming the
session: anyone who learned a session id could redirect the session's traffic to any
address (a flood aimed at a third party) with one forged datagram. Now a packet from another
address is not given to the session at all; it only makes the server send a PathChallenge
there, at most three times the size of that packet. A PathResponse from that address
carrying the challenge's data proves that whoever sent from it also receives there, and the
session moves. A NAT rebinding costs one round trip; a forged source address never
answers, and the session stays where it was.

The challenge data is a MAC, not a random number kept in a table: the server remembers no
challenge, so no number of forged addresses can push the real peer's challenge out of a
table before it answers, and a forged packet costs the server no memory. The MAC covers the
session id, the address, the session's path epoch (bumped at each move, so a late or
replayed answer from a former address is worthless) and a time window.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Callable, Hashable

from .address_validation import within_limit

CHALLENGE_SIZE = 16
KEY_SIZE = 32
# A challenge's data changes every window; an answer is taken during the window the data
# was sent in and the next one, so a challenge can be answered for 10 to 20 s.
CHALLENGE_WINDOW = 10.0
_DOMAIN = b"tether path challenge v1\x00"


class PathChallenges:
    """The data of every path challenge one server sends, and the check of the answers:
    `HMAC-SHA256(key, session id, address, path epoch, window)[:16]`, under a random
    per-server key (from `entropy`)."""

    __slots__ = ("_key",)

    def __init__(self, entropy: Callable[[int], bytes]) -> None:
        self._key = entropy(KEY_SIZE)

    def data(self, session_id: int, address: Hashable, epoch: int, now: float) -> bytes:
        """The challenge for `address` in the current window."""
        return self._mac(session_id, address, epoch, int(now // CHALLENGE_WINDOW))

    def answers(self, data: bytes, session_id: int, address: Hashable, epoch: int,
                now: float) -> bool:
        """Whether `data`, from `address`, echoes a challenge sent there (this window or
        the last one) for this session in its current path epoch."""
        window = int(now // CHALLENGE_WINDOW)
        return any(hmac.compare_digest(data, self._mac(session_id, address, epoch, w))
                   for w in (window, window - 1))

    def _mac(self, session_id: int, address: Hashable, epoch: int, window: int) -> bytes:
        message = b"".join((_DOMAIN, session_id.to_bytes(8, "big"), epoch.to_bytes(8, "big"),
                            window.to_bytes(8, "big", signed=True), repr(address).encode()))
        return hmac.new(self._key, message, hashlib.sha256).digest()[:CHALLENGE_SIZE]


class PeerPath:
    """Where one UDP session's packets go (`address`, validated) and how many times it has
    moved (`epoch`). The Demux holds one per UDP session."""

    __slots__ = ("address", "epoch", "_probed", "_probed_at")

    def __init__(self, address: Hashable) -> None:
        self.address = address
        self.epoch = 0
        self._probed: Hashable = None       # the address challenged last, and when
        self._probed_at = 0.0

    def probe(self, source: Hashable, size: int, now: float, interval: float,
              session_id: int, challenges: PathChallenges,
              encode: Callable[[bytes], bytes]) -> bytes | None:
        """A packet of `size` bytes naming the session came from `source`, which is not
        `address`. Returns the PathChallenge packet (made by `encode(data)`) to send back to
        `source`, or None: when it would be more than three times the packet (the
        amplification limit, kept per packet, so nothing need be remembered per address),
        or when `source` was already challenged less than `interval` seconds ago (the peer's
        packets come in bursts; one challenge per round trip is enough)."""
        if source == self._probed and now - self._probed_at < interval:
            return None
        packet = encode(challenges.data(session_id, source, self.epoch, now))
        if not within_limit(len(packet), size):
            return None
        self._probed, self._probed_at = source, now
        return packet

    def answered(self, source: Hashable, data: bytes, now: float, session_id: int,
                 challenges: PathChallenges) -> bool:
        """A PathResponse carrying `data` came from `source`. When it echoes the challenge
        sent to `source`, the path is validated: the session moves there (True)."""
        if source == self.address or not challenges.answers(data, session_id, source,
                                                            self.epoch, now):
            return False
        self.address = source
        self.epoch += 1
        self._probed = None
        return True
