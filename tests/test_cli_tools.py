"""`tether send`, `tether recv`, `tether queues` against a queue manager service: what they
print, and that every failure is one clear line and a non-zero exit, never a traceback."""
from __future__ import annotations

import json
import socket

import pytest

import tether
from cli_run import one_error_line as _one_error_line, tether_cli


@pytest.fixture
async def served(tmp_path):
    qm = await tether.QueueManager.open(tmp_path / "qm", listen="tcp://127.0.0.1:0")
    try:
        await qm.create_queue("orders")
        yield qm, "tether://127.0.0.1:%d" % qm.services[0].address[1]
    finally:
        await qm.close()


async def test_send_recv_and_queues(served):
    qm, base = served
    code, out, err = await tether_cli("send", base + "/orders", "hello", "--header", "k=v", "--ttl", "60")
    assert code == 0, err
    first_id = out.strip()
    code, out, err = await tether_cli("send", base + "/orders", "-", stdin=b"from stdin")
    assert code == 0, err
    code, out, err = await tether_cli("queues", base)
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["name", "durable", "depth", "in", "flight", "retrying", "dead", "poison", "faulted"]
    assert ["orders", "true", "2", "0", "0", "0", "0", "false"] in [row.split() for row in rows]
    code, out, err = await tether_cli("queues", base, "--json")
    assert code == 0, err
    infos = {info["name"]: info for info in json.loads(out)}
    assert infos["orders"]["depth"] == 2 and infos["orders"]["durable"] is True
    code, out, err = await tether_cli("recv", base + "/orders", "--count", "1", "--json")
    assert code == 0, err
    got = json.loads(out)
    assert (got["id"], got["body"], got["headers"]) == (first_id, "hello", {"k": "v"})
    code, out, err = await tether_cli("recv", base + "/orders", "--count", "1")
    assert (code, out) == (0, "from stdin\n"), err
    assert (await qm.queue_info("orders")).depth == 0


async def test_recv_timeout_is_a_clear_non_zero_exit(served):
    qm, base = served
    await qm.send("orders", b"only one")
    code, out, err = await tether_cli("recv", base + "/orders", "--count", "2", "--timeout", "0.5")
    assert out == "only one\n"
    assert "received 1 of 2" in _one_error_line(code, err)


async def test_errors_are_one_line(served):
    qm, base = served
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    cases = [
        (("send", base + "/nope", "x"), "no queue named 'nope'"),
        (("send", "http://127.0.0.1:1/q", "x"), "tether://HOST:PORT/QUEUE"),
        (("send", base, "x"), "no queue name"),
        (("send", base + "/orders", "x", "--header", "novalue"), "NAME=VALUE"),
        (("recv", "tether://127.0.0.1:%d/q" % dead_port, "--connect-timeout", "2"), "refused"),
        (("queues", "tether://127.0.0.1"), "port"),
        (("recv", base + "/orders", "--count", "0"), "--count"),
    ]
    for args, expected in cases:
        code, out, err = await tether_cli(*args)
        assert expected in _one_error_line(code, err), (args, err)
