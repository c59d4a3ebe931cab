"""Stateless address validation for UDP servers (after QUIC, RFC 9000 8.1): the address
token a server hands out in a Retry, and the amplification limit it keeps towards an
address that has not proved it receives what is sent there.

A UDP source address is whatever the sender wrote into the datagram. A server that created
a session for every CreateSequence would hold state, run a handler and send data for anyone
who can forge a source address. So the first CreateSequence from an address gets only a
Retry carrying a token; the client repeats CreateSequence with the token, which proves it
received the Retry at that address. The token is a MAC under a key only this server knows,
so the server keeps nothing between the two: an attacker spraying CreateSequence from forged
addresses costs it one MAC and one small datagram each, and the datagram goes to the forged
address, where nobody answers.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import struct
from typing import Callable, Hashable

# RFC 9000 8.1: before an address is validated, a server sends it at most three times the
# bytes it received from it, so a forged source address gains an attacker little.
AMPLIFICATION_LIMIT = 3
# How long a token is accepted after it was issued. A client repeats CreateSequence at once
# on a Retry; it needs longer only when that repeat is lost and resent with backoff. A later
# repeat gets a fresh Retry (the client accepts a few, see the engine), so a short lifetime
# costs a round trip at worst, while it bounds how long a captured token can be replayed.
TOKEN_LIFETIME = 10.0
KEY_SIZE = 32
MAC_SIZE = 16     # 128 bits of HMAC-SHA256: forging one is as hard as guessing the key
# The issue time is kept in whole seconds of the server's clock: every CreateSequence of the
# same offer from the same address within a second gets the same token, so a client that
# sees a Retry repeated (a duplicated datagram, a replayed CreateSequence) sees nothing new
# and does not start over. A token is thus accepted for TOKEN_LIFETIME - 1 to TOKEN_LIFETIME s.
_ISSUED = struct.Struct(">Q")
TOKEN_SIZE = _ISSUED.size + MAC_SIZE
_DOMAIN = b"tether address token v1\x00"


class AddressTokens:
    """Issues and checks address tokens: `issued second (8 bytes) | HMAC-SHA256(key, issued,
    session id, session token, address)[:16]`. The key is random per server (from
    `entropy`), so tokens die with the server; the issue time in the token bounds its
    lifetime without the server remembering anything."""

    __slots__ = ("_key", "lifetime")

    def __init__(self, entropy: Callable[[int], bytes] = os.urandom,
                 lifetime: float = TOKEN_LIFETIME) -> None:
        self._key = entropy(KEY_SIZE)
        self.lifetime = lifetime

    def issue(self, address: Hashable, session_id: int, session_token: bytes, now: float) -> bytes:
        """A token for a CreateSequence naming `session_id` with `session_token` from
        `address`, valid for `lifetime` seconds from `now`."""
        issued = _ISSUED.pack(max(0, int(now)))
        return issued + self._mac(issued, address, session_id, session_token)

    def valid(self, token: bytes, address: Hashable, session_id: int, session_token: bytes,
              now: float) -> bool:
        """Whether `token` was issued by this server, for this address, session id and
        session token, no longer than `lifetime` seconds ago."""
        if len(token) != TOKEN_SIZE:
            return False
        issued = token[:_ISSUED.size]
        age = now - _ISSUED.unpack(issued)[0]
        if not 0.0 <= age <= self.lifetime:
            return False
        return hmac.compare_digest(token[_ISSUED.size:],
                                   self._mac(issued, address, session_id, session_token))

    def _mac(self, issued: bytes, address: Hashable, session_id: int, session_token: bytes) -> bytes:
        # The address as the socket layer gives it (host, port[, flowinfo, scope id]); repr
        # of a tuple of str and int is exact and stable. The session token binds the token
        # to this one CreateSequence, not just to the id.
        message = b"".join((_DOMAIN, issued, session_id.to_bytes(8, "big"), session_token,
                            repr(address).encode()))
        return hmac.new(self._key, message, hashlib.sha256).digest()[:MAC_SIZE]


def within_limit(reply_size: int, received: int) -> bool:
    """Whether a reply of `reply_size` bytes to a datagram of `received` bytes keeps the
    amplification limit towards an address that is not validated (RFC 9000 8.1, 10.3)."""
    return reply_size <= AMPLIFICATION_LIMIT * received
