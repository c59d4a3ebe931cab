"""Reassembly of fragmented messages: bounded whatever the peer sends."""
from __future__ import annotations

import pytest

from tether.errors import ProtocolError
from tether.session.sansio.fragments import Fragment, Reassembler, cut


def test_cut_and_join_round_trip_in_any_order():
    payload = bytes(range(256)) * 3
    pieces = cut(payload, 100)
    for piece in pieces:
        piece.first = 5
    r = Reassembler(max_message_size=1000, max_partial=2)
    out, absorbed = r.join(list(reversed(pieces)))
    assert out == [payload] and absorbed == len(pieces) - 1 and not r.has_partial


def test_a_partial_message_is_refused_once_its_pieces_exceed_max_message_size():
    """Fragments absorbed are released from the receive window, so the window does not
    bound a partial message: its bytes must be checked as they arrive, not only when the
    last piece completes it (a peer announcing a huge total never would)."""
    r = Reassembler(max_message_size=100, max_partial=4)
    r.join([Fragment(b"x" * 60, 0, 50, first=1)])
    with pytest.raises(ProtocolError, match="max_message_size"):
        r.join([Fragment(b"x" * 60, 1, 50, first=1)])


def test_a_huge_announced_total_costs_nothing_up_front():
    """The fragment count is the peer's claim: storage grows with what arrives."""
    import tracemalloc
    total = 4 * 1024 * 1024
    r = Reassembler(max_message_size=total, max_partial=8)
    tracemalloc.start()
    try:
        for first in range(1, 5):
            r.join([Fragment(b"y", 0, total, first=first)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.has_partial
    assert peak < 1024 * 1024
