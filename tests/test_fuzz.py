"""Fuzzing (tests/fuzz/): the regressions the fuzzers found."""
from __future__ import annotations

import asyncio
import logging

import pytest

from tether.errors import ProtocolError
from tether.queue import protocol as P

# ---------------------------------------------------------------- regressions


def nested(depth: int, inner: bytes = b"\x01") -> bytes:
    """msgpack of `inner` wrapped in `depth` one-element arrays."""
    return b"\x91" * depth + inner


@pytest.mark.parametrize("depth", [998, 999, 1000, 1022])
def test_a_deeply_nested_item_is_a_protocol_error(depth):
    # found by the protocol fuzzer: repr() of an item nested ~1000 deep (msgpack decodes up
    # to 1024) raised RecursionError while the error message was being written
    [item] = P.decode(nested(depth + 1))
    for parse in (P.parse_request, P.parse_response):
        with pytest.raises(ProtocolError, match=r"\[\[\[\["):
            parse(item)


def test_a_deeply_nested_field_is_a_protocol_error_naming_it():
    # [SEND, 1, "q", <body nested 1000 deep>, nil, nil, 0]
    frame = b"\x91\x97\x04\x01\xa1q" + nested(1000, b"\xc4\x00") + b"\xc0\xc0\x00"
    [item] = P.decode(frame)
    with pytest.raises(ProtocolError, match="field body must be bytes"):
        P.parse_request(item)
    with pytest.raises(ProtocolError, match="unknown response op"):
        P.parse_response([[item]])


def test_error_messages_show_a_bounded_repr_of_huge_values():
    with pytest.raises(ProtocolError) as raised:
        P.parse_request([P.SEND, 1, "q", list(range(100_000)), None, None, 0])
    assert len(str(raised.value)) < 200 and "[0, 1, 2" in str(raised.value)


async def test_a_session_ending_while_batches_wait_their_turn_fails_no_request(caplog):
    # found by the service fuzzer: a batch waiting for the previous batch's turn was
    # cancelled when its session ended, and awaiting that turn directly cancelled it too;
    # the previous batch then failed setting it (InvalidStateError, "queue request failed")
    import tether
    from fuzz.service import HostileSession

    hello = P.encode([[P.HELLO, 1, P.VERSION, b"fuzz-client-0001", 0, []]])
    batches = P.encode([[P.FORWARD, 2, "q", 1, "fwd-1", b"f", None, 1.0, None],
                        [P.SETTLED, 0, 1], [P.SEND, 3, "q", b"s", None, None, 2]])
    async with tether.QueueManager.open(None, listen="tcp://127.0.0.1:0") as qm:
        await qm.create_queue("q")
        for rounds in range(4):      # end the session after 0..3 loop turns of its requests
            session = HostileSession([hello, batches], one_by_one=True,
                                     ending=tether.SequenceClosed("closed"), settle_rounds=rounds)
            await qm.services[0]._handle(session)
            await asyncio.sleep(0.01)
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR], rounds
