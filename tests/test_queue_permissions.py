"""What each permission of a queue service user covers (src/tether/queue/permissions.py):
fnmatch patterns for send and receive, remote addresses only by tether:// patterns, `$`
queues only for admin, a forwarder's own return queue, and the check of each request."""
from __future__ import annotations

import pytest

from tether import PermissionDenied
from tether.queue import protocol as P
from tether.queue.core.address import parse_remote
from tether.queue.permissions import EVERYTHING, Permissions, RequestGuard


def test_send_patterns_match_local_queue_names():
    p = Permissions(send=("orders", "jobs.*"))
    assert p.may_send("orders") and p.may_send("jobs.nightly")
    assert not p.may_send("payroll") and not p.may_send("jobs")
    assert not p.may_send("Orders")             # names are case-sensitive


def test_a_remote_address_needs_a_pattern_that_names_one():
    # `*` is every local queue, never a queue manager elsewhere
    everything_local = Permissions(send=("*",))
    assert everything_local.may_send("anything")
    assert not everything_local.may_send("tether://evil.example:1/x")
    west = Permissions(send=("tether://qm-west.example:7600/*",))
    assert west.may_send("tether://qm-west.example:7600/orders")
    assert west.may_send("tether://QM-West.Example:7600/orders")   # matched as normalized
    assert not west.may_send("tether://qm-west.example:7601/orders")
    assert not west.may_send("orders")
    # userinfo cannot smuggle another host past the pattern: such an address is no address
    with pytest.raises(ValueError, match="user information"):
        parse_remote("tether://qm-west.example:7600@evil.example:1/x")


def test_receive_covers_sub_queues_and_dollar_queues_need_admin():
    p = Permissions(receive=("orders",))
    assert p.may_receive("orders") and p.may_receive("orders;poison") and p.may_receive("orders;retry")
    assert not p.may_receive("payroll")
    assert not Permissions(receive=("*",)).may_receive("$dead")
    assert not Permissions(send=("*",)).may_send("$dead")
    assert Permissions(admin=True).may_receive("$dead") and Permissions(admin=True).may_receive("$xmit:h:1")


def test_a_forwarder_reads_its_own_return_queue_only():
    p = Permissions(forward=True)
    assert p.may_receive("$return:qm-east:ab", own_return_queue="$return:qm-east:ab")
    assert not p.may_receive("$return:qm-west:cd", own_return_queue="$return:qm-east:ab")
    assert not Permissions().may_receive("$return:qm-east:ab", own_return_queue="$return:qm-east:ab")


@pytest.mark.parametrize("kwargs, match", [
    ({"send": "orders"}, "send must be a list"),
    ({"receive": [1]}, "receive must be a list"),
    ({"send": [""]}, "send must be a list"),
    ({"receive": ["$dead"]}, "admin = true does"),
    ({"receive": ["orders;poison"]}, "sub-queues come with it"),
    ({"admin": "yes"}, "admin must be true or false"),
    ({"forward": 1}, "forward must be true or false"),
])
def test_bad_permissions_are_refused_naming_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Permissions(**kwargs)
    key = next(iter(kwargs))
    with pytest.raises(ValueError, match=rf"users\.alice\.{key}\b"):
        Permissions.from_config(kwargs, "users.alice")


def _refusal(guard: RequestGuard, item: list) -> str | None:
    refusal = guard.refusal(P.parse_request(item))
    assert refusal is None or isinstance(refusal, PermissionDenied)
    return None if refusal is None else str(refusal)


def test_every_request_is_checked_against_its_permission():
    alice = RequestGuard("alice", Permissions(send=("orders",), receive=("orders",)), "$return:alice:00")
    allowed = [
        [P.SEND, 1, "orders", b"x", None, None, 0, None],
        [P.TX_SEND, 1, 1, "orders", b"x", None, None, None],
        [P.RECEIVE, 1, "orders;poison", None, 0],
        [P.SUBSCRIBE, 1, 1, "orders", 16],
        [P.INFO, 1, "orders"],
        [P.INFO, 1, None],
        [P.COMPLETE, 1, 5], [P.ABANDON, 1, 5], [P.RELEASE, 0, [5]], [P.CREDIT, 0, 1, 1],
        [P.TX_BEGIN, 1], [P.TX_COMMIT, 1, 1], [P.TX_ROLLBACK, 1, 1], [P.SETTLED, 0, 3],
    ]
    for item in allowed:
        assert _refusal(alice, item) is None, item
    refused = {
        "send to 'payroll'": [P.SEND, 1, "payroll", b"x", None, None, 0, None],
        "send to 'tether://127.0.0.1:9/orders'":
            [P.TX_SEND, 1, 1, "tether://127.0.0.1:9/orders", b"x", None, None, None],
        "receive from '$dead'": [P.RECEIVE, 1, "$dead", None, 0],
        "receive from 'payroll'": [P.SUBSCRIBE, 1, 1, "payroll", 16],
        "create queue 'new'": [P.CREATE, 1, "new", {}],
        "delete queue 'orders'": [P.DELETE, 1, "orders"],
        "see queue 'payroll'": [P.INFO, 1, "payroll"],
        "forward messages": [P.FORWARD, 1, "orders", 1, "id", b"x", None, 1.0, None, None],
    }
    for what, item in refused.items():
        assert f"user 'alice' may not {what}" in (_refusal(alice, item) or ""), item


def test_forward_permission_is_for_application_queues():
    qm = RequestGuard("qm-east", Permissions(forward=True), "$return:qm-east:00")
    assert _refusal(qm, [P.FORWARD, 1, "orders", 1, "id", b"x", None, 1.0, None, None]) is None
    assert "forward to '$dead'" in _refusal(qm, [P.FORWARD, 1, "$dead", 1, "id", b"x", None, 1.0, None, None])
    assert _refusal(qm, [P.SUBSCRIBE, 1, 1, "$return:qm-east:00", 16]) is None
    assert _refusal(qm, [P.SEND, 1, "orders", b"x", None, None, 0, None]) is not None


def test_info_shows_a_non_admin_only_their_queues():
    alice = RequestGuard("alice", Permissions(send=("in.*",), receive=("out",)), None)
    names = ["in.a", "out", "payroll", "$dead", "$xmit:h:1"]
    assert [n for n in names if alice.visible(n)] == ["in.a", "out"]
    admin = RequestGuard("root", Permissions(admin=True), None)
    assert all(admin.visible(n) for n in names)


def test_anonymous_is_unrestricted():
    guard = RequestGuard(None, EVERYTHING, None)
    assert guard.unrestricted
    assert not RequestGuard("alice", Permissions(send=("*",), receive=("*",), admin=True), None).unrestricted
