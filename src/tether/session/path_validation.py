"""Path validation for UDP server sessions (after QUIC, RFC 9000 8.2 and 9): a session sends
to its peer's validated address only, and moves to a new one only once that address has
echoed a PathChallenge.

Before this, the server followed the latest source address of any packet naming the
session: anyone who learned a session id could redirect the session's traffic to any
address (a flood aimed at a third party) with one forged datagram. Now a packet from another
address is not given to the session at all; it only makes the server send a PathChallenge
there, within the amplification limit. A PathResponse from that address carrying the
challenge's random data proves that whoever sent from it also receives there, and the
session moves. A NAT rebinding costs one round trip; a forged source address never
answers, and the session stays where it was.
"""
from __future__ import annotations

import hmac
from typing import Callable, Hashable

from .address_validation import AMPLIFICATION_LIMIT

CHALLENGE_SIZE = 16
# Addresses checked at once per session: a peer moves rarely; an attacker naming the session
# from many addresses only pushes out its own older probes, each bounded by its budget.
MAX_PROBES = 4


class _Probe:
    """One address being checked: its challenge, and the bytes each way (the budget)."""

    __slots__ = ("data", "received", "sent", "sent_at")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.received = 0
        self.sent = 0
        self.sent_at: float | None = None


class PeerPath:
    """Where one UDP session's packets go (`address`, validated) and the addresses it may
    move to. The Demux holds one per UDP session."""

    __slots__ = ("address", "_probes")

    def __init__(self, address: Hashable) -> None:
        self.address = address
        self._probes: dict[Hashable, _Probe] | None = None   # most sessions never move

    def probe(self, source: Hashable, size: int, now: float, interval: float,
              entropy: Callable[[int], bytes], encode: Callable[[bytes], bytes]) -> bytes | None:
        """A packet of `size` bytes naming the session came from `source`, which is not
        `address`. Returns a PathChallenge packet for `source` when one is due (none sent
        there yet, or the last `interval` seconds ago or more) and the bytes sent there would
        stay within the amplification limit of the bytes received from it; else None.
        `encode(data)` makes the PathChallenge packet carrying `data`."""
        probes = self._probes
        if probes is None:
            probes = self._probes = {}
        probe = probes.get(source)
        if probe is None:
            if len(probes) >= MAX_PROBES:
                del probes[next(iter(probes))]
            probe = probes[source] = _Probe(entropy(CHALLENGE_SIZE))
        probe.received += size
        if probe.sent_at is not None and now - probe.sent_at < interval:
            return None
        packet = encode(probe.data)
        if probe.sent + len(packet) > AMPLIFICATION_LIMIT * probe.received:
            return None
        probe.sent += len(packet)
        probe.sent_at = now
        return packet

    def answered(self, source: Hashable, data: bytes) -> bool:
        """A PathResponse carrying `data` came from `source`. When it echoes the challenge
        sent to `source`, the path is validated: the session moves there (True)."""
        probe = None if self._probes is None else self._probes.get(source)
        if probe is None or probe.sent_at is None or not hmac.compare_digest(probe.data, data):
            return False
        self.address = source
        self._probes = None
        return True
