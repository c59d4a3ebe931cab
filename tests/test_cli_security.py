"""The command line with TLS and users: `tether qm passwd` prints a hash the service
accepts, and `tether send`/`recv`/`queues` take tls:// URLs, `--cafile`, `--user` and the
password from TETHER_PASSWORD (never from stdin, which carries message bodies)."""
from __future__ import annotations

import asyncio
import json

import pytest

import tether
from tether.queue.auth import hash_password, parse_password_hash, verify_password
from cli_run import one_error_line as _one_error_line, tether_cli
from tls_pki import pki, server_context  # noqa: F401  (pki is a fixture)


async def test_qm_passwd_prints_a_hash_of_the_password_on_stdin():
    code, out, err = await tether_cli("qm", "passwd", stdin=b"s3cret pass\n")
    assert code == 0, err
    encoded = out.strip()
    assert verify_password("s3cret pass", encoded) and not verify_password("s3cret pass\n", encoded)
    stored = parse_password_hash(encoded)
    assert (stored.n, stored.r, stored.p) == (1 << 14, 8, 1)
    code, again, err = await tether_cli("qm", "passwd", stdin=b"s3cret pass")     # no newline: the same
    assert code == 0 and again.strip() != encoded and verify_password("s3cret pass", again.strip())
    cases = {b"": "the password is empty", b"\n": "the password is empty", b"one\ntwo\n": "one line"}
    results = await asyncio.gather(*(tether_cli("qm", "passwd", stdin=stdin) for stdin in cases))
    for message, (code, out, err) in zip(cases.values(), results):
        assert message in _one_error_line(code, err) and not out


@pytest.fixture
async def served(pki):
    users = {"alice": {"password_hash": hash_password("alice-pw", n=1024, r=1, p=1), "send": ["orders"],
                       "receive": ["orders"]}}
    qm = await tether.QueueManager.open(listen="tls://127.0.0.1:0", ssl=server_context(pki), users=users)
    try:
        await qm.create_queue("orders")
        await qm.create_queue("payroll")
        yield qm, qm.services[0].address[1]
    finally:
        await qm.close()


async def test_send_recv_and_queues_over_tls_as_a_user(served, pki):
    qm, port = served
    tls = ["--user", "alice", "--cafile", pki.ca]
    code, out, err = await tether_cli("send", f"tls://127.0.0.1:{port}/orders", "-", *tls, stdin=b"over tls",
                                      password="alice-pw")
    assert code == 0, err
    sent = out.strip()
    # tether:// with --cafile is TLS too
    code, out, err = await tether_cli("queues", f"tether://127.0.0.1:{port}", "--json", *tls, password="alice-pw")
    assert code == 0, err
    assert [info["name"] for info in json.loads(out)] == ["orders"]         # payroll is not alice's
    code, out, err = await tether_cli("recv", f"tether://127.0.0.1:{port}/orders", "--json", *tls,
                                      password="alice-pw")
    assert code == 0, err
    message = json.loads(out)
    assert (message["id"], message["body"]) == (sent, "over tls")


async def test_refusals_are_one_line(served, pki):
    qm, port = served
    url = f"tls://127.0.0.1:{port}/orders"
    cases = {   # each run at once: every one starts a process
        "authentication failed for user 'alice'":
            tether_cli("send", url, "x", "--user", "alice", "--cafile", pki.ca, password="wrong"),
        "user 'alice' may not send to 'payroll'":
            tether_cli("send", f"tls://127.0.0.1:{port}/payroll", "x", "--user", "alice", "--cafile", pki.ca,
                       password="alice-pw"),
        "certificate verify failed":       # the system's CAs do not know the test CA
            tether_cli("send", url, "x", "--user", "alice", password="alice-pw"),
        "set TETHER_PASSWORD":             # and no terminal to ask on
            tether_cli("send", url, "x", "--user", "alice", "--cafile", pki.ca, new_session=True),
        "--cafile is for TLS: use tls://":
            tether_cli("queues", f"tcp://127.0.0.1:{port}", "--cafile", pki.ca),
        "over plain TCP to qm.example:7600":
            tether_cli("send", "tether://qm.example:7600/orders", "x", "--user", "alice", password="alice-pw"),
    }
    results = await asyncio.gather(*cases.values())
    for message, (code, _, err) in zip(cases, results):
        assert message in _one_error_line(code, err), (message, err)
    assert (await qm.queue_info("orders")).depth == 0
