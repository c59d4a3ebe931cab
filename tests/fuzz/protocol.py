"""Fuzz target 3: the queue protocol decoder, `protocol.decode`, `parse_request` and
`parse_response`, on hostile frames.

An input is one queue-protocol frame (one session message). The property:

- `decode` gives a non-empty list of items or raises ProtocolError, nothing else;
- every item goes through `parse_request` and `parse_response`: each accepts it (returning
  it unchanged) or raises ProtocolError naming what is wrong;
- the inline fast paths (COMPLETE and SEND requests, REPLY and DELIVER responses) accept
  nothing the field table (`REQUESTS`, `RESPONSES`) refuses;
- an accepted request packs again and decodes to itself (the service may echo its fields);
- `error_from_code` turns any ERROR item's code into an exception without failing.
"""
from __future__ import annotations

import msgpack

from tether.errors import ProtocolError
from tether.queue import protocol as P

from fuzz.mutators import Layout

CLIENT_ID = b"fuzz-client-0001"
MESSAGE = [7, "msg-1", b"body", None, 1, 1000.5, None, None, None, 3, 3, None]


def table_accepts(item: list, table: dict, first_field: int) -> bool:
    """What the slow path of parse_request/parse_response decides, from the table alone."""
    spec = table.get(item[0]) if item[0].__class__ is int else None
    if spec is None:
        return False
    name, fields = spec
    if first_field == 2:
        fields = (("rid", P._rid),) + fields
    if len(item) != 1 + len(fields):
        return False
    try:
        for i, (field, check) in enumerate(fields, 1):
            check(name, field, item[i])
    except ProtocolError:
        return False
    return True


def parsed(parse, item) -> bool:
    """Whether `parse` accepts the item; anything but ProtocolError propagates."""
    try:
        result = parse(item)
    except ProtocolError:
        return False
    assert result is item, "a parser returned something else than the item it accepted"
    return True


class Target:
    layout = Layout()

    def __init__(self, seed: int = 1) -> None:
        self.counts = {"frames": 0, "not_frames": 0, "requests": 0, "responses": 0, "refused_items": 0}

    def seeds(self) -> list[bytes]:
        return seed_frames()

    def one(self, data: bytes) -> None:
        try:
            items = P.decode(data)
        except ProtocolError:
            self.counts["not_frames"] += 1
            return
        assert items.__class__ is list and 0 < len(items) <= P.MAX_ITEMS
        self.counts["frames"] += 1
        for item in items:
            self.item(item)

    def item(self, item) -> None:
        request = parsed(P.parse_request, item)
        response = parsed(P.parse_response, item)
        if request:
            self.counts["requests"] += 1
            assert table_accepts(item, P.REQUESTS, 2), f"parse_request's fast path took {P.brief(item, 200)}"
            try:
                # compared packed, so that a NaN in headers equals itself (a map value
                # nested past msgpack's depth limit cannot be packed: those are skipped)
                packed = P.encode([item])
                same = P.encode(P.decode(packed)) == packed
            except (RecursionError, ValueError):
                same = True
            assert same, f"an accepted request does not pack to itself: {P.brief(item, 200)}"
        if response:
            self.counts["responses"] += 1
            assert table_accepts(item, P.RESPONSES, 1), f"parse_response's fast path took {P.brief(item, 200)}"
            if item[0] in (P.ERROR, P.CONSUMER_ERROR):
                assert isinstance(P.error_from_code(item[2], item[3]), Exception)
        if not request and not response:
            self.counts["refused_items"] += 1

    def checkpoint(self) -> None:
        pass

    def figures(self) -> dict:
        return dict(self.counts)


def hello(rid: int = 1, client_id: bytes = CLIENT_ID, epoch: int = 0, held: list | None = None) -> list:
    """An anonymous HELLO of this protocol version (fields after `held`, such as version 3's
    user and password, left nil)."""
    extra = len(P.REQUESTS[P.HELLO][1]) - 4
    return [P.HELLO, rid, P.VERSION, client_id, epoch, held or []] + [None] * extra


def valid_requests() -> list[list]:
    return [
        hello(),
        hello(epoch=3, held=[5, 6]),
        [P.CREATE, 2, "orders", {"time_to_live": 60, "max_length": 10}],
        [P.DELETE, 3, "orders"],
        [P.SEND, 4, "orders", b"body", None, None, 0, None],
        [P.SEND, 5, "orders", b"body", {"n": 1, "s": "x"}, 30.5, 1, None],
        [P.SUBSCRIBE, 6, 1, "orders", 16],
        [P.CREDIT, 0, 1, 8],
        [P.UNSUBSCRIBE, 7, 1],
        [P.RELEASE, 0, [1, 2, 3]],
        [P.RECEIVE, 8, "orders", 0.5, 0],
        [P.RECEIVE, 9, "orders", None, 2],
        [P.COMPLETE, 10, 7],
        [P.ABANDON, 11, 7],
        [P.INFO, 12, None],
        [P.INFO, 13, "orders"],
        [P.TX_BEGIN, 14],
        [P.TX_SEND, 15, 1, "orders", b"in tx", None, None, None],
        [P.TX_COMMIT, 16, 1],
        [P.TX_ROLLBACK, 17, 1],
        [P.FORWARD, 18, "orders", 4, "id-4", b"forwarded", None, 1000.0, 2000.0, None],
        [P.SETTLED, 0, 5],
        [P.SEND, 19, "orders", b"body", None, None, 2, {"priority": 7, "delay": 1.5}],
        [P.TX_SEND, 20, 1, "orders", b"later", None, None, {"deliver_at": 2000.0}],
        [P.PEEK, 21, "orders", 10],
        [P.PURGE, 22, "orders"],
        [P.RENEW, 23, 5],
        [P.SETTINGS, 24, "orders"],
        [P.SEND, 25, "orders", b"grouped", None, None, 3, {"group_id": "cart-1"}],
        [P.ACCEPT_GROUP, 26, "orders", 5.0],
        [P.GROUP_RECEIVE, 27, 1, None],
        [P.GROUP_RELEASE, 28, 1],
        [P.FORWARD_BATCH, 29, [["orders", 5, "id-5", b"plain", None, 1000.0, None, None],
                               ["orders", 6, "id-6", b"full", {"k": 1}, 1000.0, 2000.0, {"priority": 2}]]],
    ]


def valid_responses() -> list[list]:
    return [
        [P.REPLY, 1, {"version": P.VERSION, "server": "tether-qm", "resumed": False, "epoch": 1,
                      "next_sequence": 0, "max_frame_bytes": 8 << 20}],
        [P.REPLY, 2, None],
        [P.REPLY, 8, [MESSAGE, 30.0]],
        [P.ERROR, 3, "queue-not-found", "no queue 'x'"],
        [P.ERROR, 0, "protocol-error", "bad"],
        [P.ERROR, 4, "value-error", "bad value"],
        [P.DELIVER, 1, MESSAGE, 30.0],
        [P.DELIVER, 1, [8, "m", b"", b"\x81\xa1k\x01", 2, 1.0, 5.0, "expired", "orders", 0, 7, "g"], 0],
        [P.CONSUMER_ERROR, 1, "poison-message", "the queue is poisoned"],
    ]


def seed_frames() -> list[bytes]:
    requests, responses = valid_requests(), valid_responses()
    frames = [P.encode([item]) for item in requests + responses]
    frames.append(P.encode(requests))
    frames.append(P.encode(responses))
    frames.append(msgpack.packb([requests[4]] * 50, use_bin_type=True))
    return frames
