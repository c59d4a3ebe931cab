"""Authentication for the queue service (src/tether/queue/auth.py): scrypt password hashes,
the users table, where credentials may travel, which addresses a service may listen on,
and the identity a client's producer is bound to."""
from __future__ import annotations

import asyncio
import hashlib

import pytest

from tether import AuthenticationFailed
from tether.queue.auth import (
    ANONYMOUS,
    Access,
    User,
    Users,
    check_credentials,
    client_key,
    credentials_allowed,
    hash_password,
    is_loopback,
    origin_of,
    parse_password_hash,
    verify_password,
)
from tether.queue.permissions import Permissions

# cheap parameters keep the tests fast; the cost travels in the hash
FAST = {"n": 1024, "r": 1, "p": 1}


def test_a_hash_verifies_its_password_only():
    encoded = hash_password("correct horse", **FAST)
    scheme, n, r, p, salt, digest = encoded.split("$")
    assert (scheme, n, r, p) == ("scrypt", "1024", "1", "1")
    assert verify_password("correct horse", encoded)
    assert not verify_password("correct horsE", encoded)
    assert not verify_password("", encoded)
    assert hash_password("correct horse", **FAST) != encoded          # a fresh salt each time


def test_the_default_parameters_are_an_interactive_logins():
    stored = parse_password_hash(hash_password("pw"))
    assert (stored.n, stored.r, stored.p) == (1 << 14, 8, 1)
    assert len(stored.salt) == 16 and len(stored.digest) == 32


def test_a_hash_is_scrypt_with_the_parameters_it_names():
    stored = parse_password_hash(hash_password("pw", **FAST))
    assert stored.digest == hashlib.scrypt(b"pw", salt=stored.salt, n=1024, r=1, p=1, dklen=32)


@pytest.mark.parametrize("encoded, match", [
    ("plain", "scrypt\\$N\\$r\\$p"),
    ("bcrypt$1024$1$1$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA==", "scrypt\\$N"),
    ("scrypt$x$1$1$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA==", "numbers"),
    ("scrypt$1024$1$1$not base64!$AAAAAAAAAAAAAAAAAAAAAA==", "base64"),
    ("scrypt$1000$1$1$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA==", "power of two"),
    ("scrypt$16$1$1$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA==", "power of two >= 1024"),
    ("scrypt$1048576$8$8$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA==", "MiB"),
    ("scrypt$1024$1$1$AAAA$AAAAAAAAAAAAAAAAAAAAAA==", "salt"),
])
def test_a_malformed_hash_is_refused_saying_why(encoded, match):
    with pytest.raises(ValueError, match=match):
        parse_password_hash(encoded)


def _users(**tables) -> Users:
    return Users.from_config(tables)


def test_unknown_user_and_wrong_password_fail_alike():
    users = _users(alice={"password_hash": hash_password("pw", **FAST), "send": ["orders"]})
    assert users.authenticate("alice", "pw").permissions == Permissions(send=("orders",))
    with pytest.raises(AuthenticationFailed) as wrong:
        users.authenticate("alice", "nope")
    with pytest.raises(AuthenticationFailed) as unknown:
        users.authenticate("mallory", "pw")
    assert str(wrong.value).replace("alice", "X") == str(unknown.value).replace("mallory", "X")


@pytest.mark.parametrize("table, match", [
    ({"alice": {"send": ["q"]}}, r"users\.alice: password_hash is required"),
    ({"alice": {"password_hash": "x"}}, r"users\.alice\.password_hash: .*scrypt"),
    ({"alice": {"password_hash": "HASH", "sned": ["q"]}}, r"users\.alice: unknown keys sned"),
    ({"alice": {"password_hash": "HASH", "send": "q"}}, r"users\.alice\.send must be a list"),
    ({"alice": {"password_hash": "HASH", "admin": "no"}}, r"users\.alice\.admin must be true or false"),
    ({"-bad": {"password_hash": "HASH"}}, r"users\.-bad: user name"),
    ({"alice": "HASH"}, r"users\.alice must be a table"),
    ({}, "at least one user"),
])
def test_the_users_table_is_checked_naming_the_key(table, match):
    good = hash_password("pw", **FAST)
    table = {name: ({k: (good if v == "HASH" else v) for k, v in entry.items()} if isinstance(entry, dict)
                    else entry) for name, entry in table.items()}
    with pytest.raises(ValueError, match=match):
        Users.from_config(table)


def test_a_user_is_checked_when_made_in_code():
    with pytest.raises(ValueError, match="password_hash"):
        User("alice", "not a hash")
    with pytest.raises(ValueError, match="defined twice"):
        Users([User("a", hash_password("x", **FAST)), User("a", hash_password("y", **FAST))])


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("localhost", True), ("LOCALHOST", True),
    ("::ffff:127.0.0.1", True), ("0.0.0.0", False), ("::", False), ("10.0.0.1", False),
    ("qm.example", False), ("localhost.example", False),
])
def test_what_counts_as_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_a_client_sends_a_password_only_over_tls_or_to_loopback():
    check_credentials("tls://qm.example:7600", "alice", "pw")
    check_credentials("tcp://127.0.0.1:7600", "alice", "pw")
    check_credentials("tcp://[::1]:7600", "alice", "pw")
    check_credentials("tcp://qm.example:7600", None, None)      # anonymous: nothing to protect
    with pytest.raises(ValueError, match=r"over plain TCP to qm\.example:7600.*tls://qm\.example:7600"):
        check_credentials("tcp://qm.example:7600", "alice", "pw")
    with pytest.raises(ValueError, match="go together"):
        check_credentials("tls://qm.example:7600", "alice", None)
    with pytest.raises(ValueError, match="user name"):
        check_credentials("tls://qm.example:7600", "no spaces", "pw")


async def test_a_client_refuses_before_connecting():
    from tether import QueueClient

    # nothing listens there: the refusal comes from the URL alone
    with pytest.raises(ValueError, match="over plain TCP to 192.0.2.1:7600"):
        await QueueClient.connect("tcp://192.0.2.1:7600", user="alice", password="pw")
    with pytest.raises(ValueError, match="over plain TCP"):
        await QueueClient.connect("tether://qm.example:7600/orders", user="alice", password="pw")


async def test_a_service_refuses_a_password_that_came_over_plain_tcp_from_elsewhere():
    assert credentials_allowed(True, ("203.0.113.5", 40000))
    assert credentials_allowed(False, ("127.0.0.1", 40000))
    assert credentials_allowed(False, ("::1", 40000, 0, 0))
    assert not credentials_allowed(False, ("203.0.113.5", 40000))
    assert not credentials_allowed(False, None)                  # disconnected: unknown
    access = Access(_users(alice={"password_hash": hash_password("pw", **FAST)}))
    with pytest.raises(AuthenticationFailed, match="only over TLS or from a loopback address"):
        await access.authenticate("alice", "pw", over_tls=False, peer=("203.0.113.5", 40000))
    identity = await access.authenticate("alice", "pw", over_tls=True, peer=("203.0.113.5", 40000))
    assert identity.user == "alice"
    # the same rule without users: a password is never welcome over plain TCP from afar
    with pytest.raises(AuthenticationFailed):
        await Access(allow_anonymous=True).authenticate("alice", "pw", over_tls=False, peer=("203.0.113.5", 1))


async def test_a_service_with_users_needs_them_and_one_without_serves_anonymously():
    access = Access(_users(alice={"password_hash": hash_password("pw", **FAST)}))
    with pytest.raises(AuthenticationFailed, match="requires a user and password"):
        await access.authenticate(None, None, over_tls=True, peer=None)
    assert await Access().authenticate(None, None, over_tls=False, peer=("127.0.0.1", 1)) is ANONYMOUS
    # offered credentials mean nothing there: the session is anonymous (and the reply says so)
    assert await Access().authenticate("alice", "pw", over_tls=False, peer=("127.0.0.1", 1)) is ANONYMOUS


async def test_scrypt_runs_off_the_event_loop():
    access = Access(_users(alice={"password_hash": hash_password("pw")}))     # the real cost
    ticks = 0

    async def tick():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    ticker = asyncio.create_task(tick())
    await access.authenticate("alice", "pw", over_tls=True, peer=None)
    ticker.cancel()
    assert ticks >= 3


@pytest.mark.parametrize("url, users, allow_anonymous, match", [
    ("tcp://0.0.0.0:7600", False, False, r"refusing to listen on tcp://0\.0\.0\.0:7600: .*allow_anonymous"),
    ("tls://[::]:7600", False, False, r"refusing to listen on tls://\[::\]:7600"),
    ("tcp://qm.example:7600", False, False, "not a loopback address"),
    ("tcp://0.0.0.0:7600", True, False, r"passwords travel only over TLS or loopback; listen on tls://0\.0\.0\.0"),
])
def test_anonymous_access_and_plain_passwords_stay_on_loopback(url, users, allow_anonymous, match):
    table = _users(alice={"password_hash": hash_password("pw", **FAST)}) if users else None
    with pytest.raises(ValueError, match=match):
        Access(table, allow_anonymous=allow_anonymous).check_listen(url)


def test_listen_addresses_that_are_fine():
    users = _users(alice={"password_hash": hash_password("pw", **FAST)})
    for url in ("tcp://127.0.0.1:7600", "tcp://[::1]:0", "tcp://localhost:7600"):
        Access().check_listen(url)
        Access(users).check_listen(url)
    Access(users).check_listen("tls://0.0.0.0:7600")
    Access(allow_anonymous=True).check_listen("tcp://0.0.0.0:7600")
    with pytest.raises(ValueError, match="allow_anonymous has no meaning with users"):
        Access(users, allow_anonymous=True)


def test_identities_keep_users_apart():
    client_id = b"0123456789abcdef"
    assert client_key(None, client_id) == client_id          # anonymous: as before users existed
    alice, bob = client_key("alice", client_id), client_key("bob", client_id)
    assert len({alice, bob, client_id}) == 3 and 8 <= len(alice) <= 64
    assert origin_of(None, client_id) == client_id.hex()
    assert origin_of("qm-east", client_id) == "qm-east:" + client_id.hex()


def test_a_malformed_password_is_never_quoted():
    from tether import ProtocolError
    from tether.queue import protocol as P

    secret = "s3cret-" * 200           # too long: refused, and the refusal must not repeat it
    hello = [P.HELLO, 1, P.VERSION, b"0123456789abcdef", 0, [], "alice", secret]
    with pytest.raises(ProtocolError) as refused:
        P.parse_request(hello)
    assert "password" in str(refused.value) and "s3cret" not in str(refused.value)
