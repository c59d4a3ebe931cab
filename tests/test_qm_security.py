"""The queue service with TLS, users and permissions, end to end in one process: TLS and
mutual TLS with a CA made here (tests/tls_pki.py), authentication failures, each permission
refusing what it does not cover while the connection goes on, producers bound to their
user, anonymous access kept to loopback, and forwarding between two queue managers over
TLS with the credentials of `remotes`."""
from __future__ import annotations

import asyncio
import ssl

import pytest

import tether
from tether import AuthenticationFailed, PermissionDenied, QueueNotFound
from tether.queue import config as cfg
from tether.queue import protocol as P
from tether.queue.auth import hash_password
from tether.queue.remotes import Remote

from tls_pki import client_context, server_context

FAST = {"n": 1024, "r": 1, "p": 1}      # cheap scrypt: the cost is in the hash string
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "root": "root-pw", "qm-east": "east-pw"}


def _users(**permissions) -> dict:
    return {name: {"password_hash": hash_password(PASSWORDS[name], **FAST), **grants}
            for name, grants in permissions.items()}


USERS = _users(alice={"send": ["orders", "jobs.*"], "receive": ["orders"]},
               bob={"send": ["orders"], "receive": ["orders"]},
               root={"admin": True},
               **{"qm-east": {"forward": True}})


@pytest.fixture
async def served(pki):
    """A queue manager with USERS over TLS, and a way to connect to it as one of them."""
    qm = await tether.QueueManager.open(listen="tls://127.0.0.1:0", ssl=server_context(pki), users=USERS)
    await qm.create_queue("orders")
    await qm.create_queue("payroll")
    url = qm.services[0].url

    def connect(user: str | None = "alice", **kwargs):
        password = kwargs.pop("password", PASSWORDS.get(user))
        return tether.QueueClient.connect(url, ssl=client_context(pki), user=user,
                                          password=None if user is None else password, **kwargs)

    try:
        yield qm, connect
    finally:
        await qm.close()


async def test_tls_round_trip_as_a_user(served):
    qm, connect = served
    async with connect() as alice:
        assert alice.url.startswith("tls://127.0.0.1:") and alice.user == "alice"
        sent = await alice.send("orders", b"over tls", headers={"k": 1})
        m = await alice.receive("orders", timeout=5)
        assert (m.id, m.body, m.headers) == (sent, b"over tls", {"k": 1})
        await m.complete()
        assert alice._session.peer_certificate is not None      # really over TLS
    assert (await qm.queue_info("orders")).depth == 0


async def test_the_server_certificate_is_verified(served, pki):
    qm, _ = served
    url = qm.services[0].url
    with pytest.raises(ssl.SSLCertVerificationError):
        await tether.QueueClient.connect(url, ssl=client_context(pki, ca=pki.other_ca), user="alice",
                                         password="alice-pw", connect_timeout=5)


async def test_mutual_tls(pki):
    server = server_context(pki, client_ca=pki.ca)
    async with tether.QueueManager.open(listen="tls://127.0.0.1:0", ssl=server, users=USERS) as qm:
        await qm.create_queue("orders")
        url = qm.services[0].url
        with_cert = client_context(pki, cert="client")
        async with tether.QueueClient.connect(url, ssl=with_cert, user="alice", password="alice-pw") as alice:
            await alice.send("orders", b"both ends verified")
            peer = alice._session.peer_certificate
            assert peer is not None
        with pytest.raises(ssl.SSLError):
            await tether.QueueClient.connect(url, ssl=client_context(pki), user="alice", password="alice-pw",
                                             connect_timeout=5)
        with pytest.raises(ssl.SSLError):
            await tether.QueueClient.connect(url, ssl=client_context(pki, cert="other-ca-client"), user="alice",
                                             password="alice-pw", connect_timeout=5)
        assert (await qm.queue_info("orders")).depth == 1


@pytest.mark.parametrize("user, password, match", [
    ("alice", "wrong", "authentication failed for user 'alice'"),
    ("mallory", "alice-pw", "authentication failed for user 'mallory'"),
    (None, None, "requires a user and password"),
])
async def test_refused_credentials_fail_connect(served, user, password, match):
    qm, connect = served
    with pytest.raises(AuthenticationFailed, match=match):
        await connect(user, password=password)
    async with connect() as alice:       # the service goes on
        await alice.send("orders", b"fine")


async def test_a_missing_permission_fails_that_request_only(served):
    qm, connect = served
    async with connect() as alice:
        await alice.send("orders", b"1")
        with pytest.raises(PermissionDenied, match="user 'alice' may not send to 'payroll'"):
            await alice.send("payroll", b"no")
        with pytest.raises(PermissionDenied, match="may not receive from 'payroll'"):
            await alice.receive("payroll", timeout=1)
        with pytest.raises(PermissionDenied, match="may not receive from 'payroll'"):
            await alice.receive("payroll", timeout=0)
        ids = await alice.send_many("orders", [b"2", b"3"])      # still connected, still numbering
        async with alice.transaction() as tx:
            m = await tx.receive("orders", timeout=5)
            assert m.body == b"1"
            with pytest.raises(PermissionDenied):
                await tx.send("payroll", b"inside a transaction")
        got = [(await alice.receive("orders", timeout=5)) for _ in range(2)]
        assert [m.id for m in got] == ids
        for m in got:
            await m.complete()
        assert alice.reconnects == 0
    assert (await qm.queue_info("payroll")).depth == 0


async def test_a_non_admin_cannot_touch_system_queues_or_definitions_or_forward(served):
    qm, connect = served
    async with connect() as alice:
        for name in ("$dead", "$dead;poison", "$xmit:127.0.0.1:9"):
            with pytest.raises(PermissionDenied, match="system queues need admin"):
                await alice.receive(name, timeout=0)
        with pytest.raises(PermissionDenied, match="may not create queue 'orders2'"):
            await alice.create_queue("orders2")
        with pytest.raises(PermissionDenied, match="may not delete queue 'orders'"):
            await alice.delete_queue("orders")
        with pytest.raises(PermissionDenied, match="may not see queue '\\$dead'"):
            await alice.queue_info("$dead")
        assert await alice.queues() == ["orders"]       # INFO: only what alice may use
    async with connect("bob") as forger:
        with pytest.raises(PermissionDenied, match="user 'bob' may not forward messages"):
            await forger.forward("orders", 1, "forged-id", b"as if from a queue manager", None, 1.0, None)
    assert "orders" in (await qm.queues()) and (await qm.queue_info("orders")).depth == 0
    async with connect("root") as root:
        await root.create_queue("orders2")
        assert {"$dead", "orders", "orders2", "payroll"} <= set(await root.queues())
        assert await root.receive("$dead", timeout=0) is None
        await root.delete_queue("orders2")


async def test_a_user_cannot_make_the_queue_manager_connect_out(served):
    qm, connect = served
    async with connect() as alice:
        for address in ("tether://127.0.0.1:9/orders", "tether://evil.example:7600/orders"):
            with pytest.raises(PermissionDenied, match="no send pattern matches it"):
                await alice.send(address, b"x")
    assert not [name for name in (await qm.queues()) if name.startswith("$xmit:")]
    assert not qm.forwarders


async def test_a_send_pattern_for_a_remote_address_allows_just_that(pki):
    users = _users(alice={"send": ["tether://127.0.0.1:9/*"]})
    async with tether.QueueManager.open(listen="tls://127.0.0.1:0", ssl=server_context(pki), users=users) as qm:
        url = qm.services[0].url
        async with tether.QueueClient.connect(url, ssl=client_context(pki), user="alice", password="alice-pw") as c:
            await c.send("tether://127.0.0.1:9/orders", b"held for 127.0.0.1:9")
            with pytest.raises(PermissionDenied):
                await c.send("tether://127.0.0.1:10/orders", b"x")
        assert [name for name in (await qm.queues()) if name.startswith("$xmit:")] == ["$xmit:127.0.0.1:9"]


async def test_claiming_another_users_client_id_gets_a_producer_of_ones_own(served):
    qm, connect = served
    shared = b"the-same-client-id"
    async with connect("alice", client_id=shared) as alice:
        first = await alice.send("orders", b"alice 1")
        m = await alice.receive("orders", timeout=5)
        async with connect("bob", client_id=shared) as bob:
            # a new instance of *bob's* producer: alice is not fenced, and bob's numbering
            # starts afresh instead of continuing (or colliding with) alice's
            assert bob.epoch == 1 and bob._next_sequence == 0
            await bob.send("orders", b"bob 1")
            with pytest.raises(tether.LockLost):
                await bob._request([P.COMPLETE, 0, m._tag])   # alice's lock is not bob's
            await alice.send("orders", b"alice 2")          # not ProducerFenced
            await m.complete()
        async with connect("alice", client_id=shared) as alice_again:
            assert alice_again.epoch == 2                   # alice's own producer, a new instance
            assert alice_again._next_sequence == 2
        with pytest.raises(tether.ProducerFenced):
            await alice.send("orders", b"fenced by alice's own new instance")
    assert m.id == first
    bodies = []
    async with connect("root") as root:
        root_seen = await root.queue_info("orders")
    assert root_seen.depth == 2
    while (m := await qm.receive("orders", timeout=0)) is not None:
        bodies.append(m.body)
        await m.complete()
    assert sorted(bodies) == [b"alice 2", b"bob 1"]


async def test_a_reconnect_whose_credentials_are_refused_stops_reconnecting(pki):
    async with tether.QueueManager.open(listen="tls://127.0.0.1:0", ssl=server_context(pki), users=USERS) as qm:
        url = qm.services[0].url
        await qm.create_queue("orders")
        client = await tether.QueueClient.connect(url, ssl=client_context(pki), user="alice", password="alice-pw",
                                                  request_timeout=30)
        try:
            await client.send("orders", b"before")
            # alice's password changes while she is away
            changed = {"alice": {"password_hash": hash_password("new", **FAST), "send": ["orders"]}}
            service = qm.services[0]
            await service.close()
            qm._services.remove(service)
            await qm.listen(url, ssl=server_context(pki), users=changed)
            with pytest.raises(AuthenticationFailed):
                await asyncio.wait_for(client.send("orders", b"after"), 10)
            assert isinstance(client.failure, AuthenticationFailed)
            reconnects = client.reconnects
            await asyncio.sleep(0.3)
            assert client.reconnects == reconnects          # it stopped trying
            with pytest.raises(AuthenticationFailed):
                await client.receive("orders", timeout=1)
        finally:
            await client.close()


async def test_anonymous_access_is_refused_beyond_loopback(tmp_path):
    with pytest.raises(ValueError, match=r"refusing to listen on tcp://0\.0\.0\.0:0.*allow_anonymous"):
        await tether.QueueManager.open(listen="tcp://0.0.0.0:0")
    async with tether.QueueManager.open() as qm:
        with pytest.raises(ValueError, match="not a loopback address"):
            await qm.listen("tcp://0.0.0.0:0")
        with pytest.raises(ValueError, match="passwords travel only over TLS or loopback"):
            await qm.listen("tcp://0.0.0.0:0", users=USERS)
        assert not qm.services                              # refused before binding
        service = await qm.listen("tcp://0.0.0.0:0", allow_anonymous=True)
        await qm.create_queue("q")
        async with tether.QueueClient.connect(f"tcp://127.0.0.1:{service.address[1]}") as client:
            assert client.user is None
            await client.send("q", b"anonymous, as allowed")


async def test_anonymous_on_loopback_has_every_permission_and_ignores_credentials():
    async with tether.QueueManager.open(listen="tcp://127.0.0.1:0") as qm:
        url = qm.services[0].url
        async with tether.QueueClient.connect(url, user="alice", password="whatever") as client:
            assert client.user is None                      # no users here: anonymous
            await client.create_queue("q")
            assert await client.receive("$dead", timeout=0) is None


async def _until(check, timeout=10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := await check()):
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
    return value


async def test_forwarding_over_tls_with_the_credentials_of_remotes(pki):
    async with tether.QueueManager.open(listen="tls://127.0.0.1:0", ssl=server_context(pki), users=USERS) as west:
        await west.create_queue("orders")
        await west.create_queue("strict", receive_retry_count=0, max_retry_cycles=0,
                                receive_error_handling="reject")
        port = west.services[0].address[1]
        # east's configuration says how to reach west: TLS trusting the test CA, as qm-east
        east_config = cfg.from_dict({"remotes": {f"127.0.0.1:{port}": {
            "user": "qm-east", "password": "east-pw", "cafile": pki.ca}}})
        async with tether.QueueManager.open(remotes=east_config.remotes) as east:
            first = await east.send(f"tether://127.0.0.1:{port}/orders", b"east to west", headers={"k": "v"})
            rejected = await east.send(f"tether://127.0.0.1:{port}/strict", b"refused there")
            m = await west.receive("orders", timeout=10)
            assert (m.id, m.body, m.headers) == (first, b"east to west", {"k": "v"})
            await m.complete()
            forwarder = east.forwarders[0]
            assert forwarder.url == f"tls://127.0.0.1:{port}"
            # the target keeps its reject in a return queue named after the authenticated
            # forwarder, which only that forwarder may read
            r = await west.receive("strict", timeout=10)
            await r.abandon()
            origin = "qm-east:" + forwarder.client_id.hex()
            assert f"$return:{origin}" in (await west.queues())
            dead = await _until(lambda: east.receive("$dead", timeout=0.2))
            assert (dead.id, dead.dead_letter_reason) == (rejected, "rejected")
            assert dead.dead_letter_source == f"tether://127.0.0.1:{port}/strict"
            await dead.complete()
            await _until(lambda: _empty(west, f"$return:{origin}"))


async def _empty(qm, name):
    info = await qm.queue_info(name)
    return info.depth == 0 and info.in_flight == 0


async def test_a_forwarder_without_forward_permission_keeps_its_messages(pki):
    async with tether.QueueManager.open(listen="tls://127.0.0.1:0", ssl=server_context(pki), users=USERS) as west:
        await west.create_queue("orders")
        port = west.services[0].address[1]
        remotes = {f"127.0.0.1:{port}": Remote(ssl=client_context(pki), user="bob", password="bob-pw")}
        async with tether.QueueManager.open(remotes=remotes) as east:
            await east.send(f"tether://127.0.0.1:{port}/orders", b"bob may not forward")
            await asyncio.sleep(0.5)
            assert (await west.queue_info("orders")).depth == 0
            xmit = await east.queue_info(f"$xmit:127.0.0.1:{port}")
            assert xmit.depth + xmit.in_flight == 1                 # kept, to be sent once allowed
            assert (await east.queue_info("$dead")).depth == 0      # not dead-lettered


async def test_a_forwarder_whose_credentials_stop_working_connects_again_once_they_work(pki, monkeypatch):
    import tether.queue.forwarder as forwarder_module

    monkeypatch.setattr(forwarder_module, "AUTH_RETRY", 0.1)
    async with tether.QueueManager.open(listen="tls://127.0.0.1:0", ssl=server_context(pki), users=USERS) as west:
        await west.create_queue("orders")
        port = west.services[0].address[1]
        url = west.services[0].url
        address = f"tether://127.0.0.1:{port}/orders"
        remotes = {f"127.0.0.1:{port}": Remote(ssl=client_context(pki), user="qm-east", password="east-pw")}
        async with tether.QueueManager.open(remotes=remotes) as east:
            await east.send(address, b"first")
            first = await west.receive("orders", timeout=10)
            assert first.body == b"first"
            await first.complete()

            async def serve_west(users):
                service = west.services[0]
                await service.close()
                west._services.remove(service)
                await west.listen(url, ssl=server_context(pki), users=users)

            await serve_west(_users(root={"admin": True}))       # qm-east is gone there
            await _until(lambda: _failed(east.forwarders[0]))
            await east.send(address, b"second")
            await asyncio.sleep(0.3)
            assert (await west.queue_info("orders")).depth == 0   # held back at east meanwhile
            await serve_west(USERS)                                # qm-east is back
            second = await west.receive("orders", timeout=10)
            assert second.body == b"second"
            await second.complete()
            assert (await east.queue_info("$dead")).depth == 0


async def _failed(forwarder):
    return forwarder.client is not None and forwarder.client.failure is not None


async def test_remotes_are_checked(pki):
    with pytest.raises(ValueError, match="over plain TCP to qm.example:7600"):
        await tether.QueueManager.open(remotes={"qm.example:7600": Remote(user="qm-east", password="pw")})
    with pytest.raises(ValueError, match="must be HOST:PORT"):
        await tether.QueueManager.open(remotes={"tether://qm.example:7600": Remote()})
    with pytest.raises(TypeError, match="must be a Remote"):
        await tether.QueueManager.open(remotes={"qm.example:7600": {"user": "x"}})
    with pytest.raises(ValueError, match="already configured"):
        await tether.QueueManager.open(remotes={"QM.example:7600": Remote(), "qm.example:7600": Remote()})
    with pytest.raises(ValueError, match="tls=False contradicts ssl="):
        Remote(ssl=client_context(pki), tls=False)
    assert Remote(tls=True).url("qm.example:7600") == "tls://qm.example:7600"
    assert Remote().url("qm.example:7600") == "tcp://qm.example:7600"
    async with tether.QueueManager.open(remotes={"QM.Example:7600": Remote(tls=True, user="a", password="p")}) as qm:
        assert list(qm.remotes) == ["qm.example:7600"]      # as transmission queues name it


async def test_queue_not_found_is_still_queue_not_found_for_a_permitted_user(served):
    qm, connect = served
    await qm.delete_queue("orders")
    async with connect() as alice:
        with pytest.raises(QueueNotFound):
            await alice.send("orders", b"x")
