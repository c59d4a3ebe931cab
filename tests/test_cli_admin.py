"""`tether queue create|delete|purge`, `tether peek`, the faulted column of `tether queues`,
`--version`, the exit statuses, SIGTERM, connection errors naming the address and the
refusal of an empty body, each run as a subprocess against a served queue manager."""
from __future__ import annotations

import asyncio
import io
import json
import signal
import socket
import sys

import pytest

import tether
from tether.queue.auth import hash_password
from tether.queue.queue_command import parse_settings
from tether.table_output import print_table
from cli_run import one_error_line, tether_cli


@pytest.fixture
async def served(tmp_path):
    qm = await tether.QueueManager.open(tmp_path / "qm", listen="tcp://127.0.0.1:0")
    try:
        yield qm, "tether://127.0.0.1:%d" % qm.services[0].address[1]
    finally:
        await qm.close()


def _error_line(err: str) -> str:
    return one_error_line(1, err)


async def test_queue_create_purge_delete(served):
    qm, base = served
    code, out, err = await tether_cli("queue", "create", base + "/orders", "--set", "time_to_live=60",
                                      "--set", "receive_error_handling=move", "--set", "max_length=none",
                                      "--set", "durable=false")
    assert code == 0, err
    assert "queue orders created" in out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[2:]}
    assert rows["time_to_live"] == "60.0" and rows["receive_error_handling"] == "move"
    assert rows["durable"] == "false" and rows["max_length"] == "none"
    settings = await qm.settings("orders")
    assert (settings.time_to_live, settings.receive_error_handling, settings.durable) == (60.0, "move", False)
    # the same again is fine; different settings are refused
    code, out, err = await tether_cli("queue", "create", base + "/orders", "--set", "time_to_live=60",
                                      "--set", "receive_error_handling=move", "--set", "durable=false", "--json")
    assert code == 0, err
    assert json.loads(out)["settings"]["time_to_live"] == 60.0
    code, _, err = await tether_cli("queue", "create", base + "/orders", "--set", "time_to_live=5")
    assert code == 1 and "different settings" in _error_line(err)

    await qm.send_many("orders", [b"a", b"b", b"c"])
    held = await qm.receive("orders", timeout=0)
    code, out, err = await tether_cli("queue", "purge", base + "/orders")
    assert (code, out) == (0, "purged 2 messages from orders\n"), err
    assert (await qm.queue_info("orders")).depth == 0 and (await qm.queue_info("orders")).in_flight == 1
    await held.complete()
    code, out, err = await tether_cli("queue", "purge", base + "/orders", "--json")
    assert code == 0 and json.loads(out) == {"queue": "orders", "purged": 0}, err

    code, out, err = await tether_cli("queue", "delete", base + "/orders")
    assert (code, out) == (0, "queue orders deleted\n"), err
    assert "orders" not in await qm.queues()
    code, _, err = await tether_cli("queue", "delete", base + "/orders")
    assert code == 1 and "no queue named 'orders'" in _error_line(err)


@pytest.mark.parametrize("setting, expected", [
    ("time_to_live=soon", "--set time_to_live=soon: expected a number of seconds or none"),
    ("retry_cycle_delay=none", "--set retry_cycle_delay=none: expected a number of seconds"),
    ("durable=yes", "--set durable=yes: expected true or false"),
    ("max_length=0", "queue setting max_length must be >= 1"),
    ("max_length=1.5", "--set max_length=1.5: expected an integer or none"),
    ("receive_error_handling=explode", "queue setting receive_error_handling must be one of"),
    ("colour=blue", "--set colour: unknown queue setting"),
    ("time_to_live", "expected NAME=VALUE"),
])
def test_settings_are_validated_naming_the_setting(setting, expected):
    with pytest.raises((ValueError, TypeError)) as info:
        parse_settings([setting])
    assert expected in str(info.value)


def test_settings_of_every_type():
    assert parse_settings(["time_to_live=none", "exactly_once=TRUE", "dead_letter_queue=none",
                           "receive_retry_count=0", "validity_duration=2.5"]) == {
        "time_to_live": None, "exactly_once": True, "dead_letter_queue": "none", "receive_retry_count": 0,
        "validity_duration": 2.5}
    with pytest.raises(ValueError, match="given twice"):
        parse_settings(["max_length=3", "max_length=4"])


async def test_a_bad_setting_is_refused_before_connecting(served):
    qm, base = served
    code, _, err = await tether_cli("queue", "create", base + "/orders", "--set", "time_to_live=-1")
    assert code == 1 and "time_to_live" in _error_line(err)
    assert "orders" not in await qm.queues()


async def test_admin_commands_need_the_admin_permission(tmp_path):
    fast = {"n": 1024, "r": 1, "p": 1}
    users = {"alice": {"password_hash": hash_password("alice-pw", **fast), "send": ["*"], "receive": ["*"]},
             "root": {"password_hash": hash_password("root-pw", **fast), "admin": True}}
    async with tether.QueueManager.open(tmp_path / "qm") as qm:
        service = await qm.listen("tcp://127.0.0.1:0", users=users)
        base = "tether://127.0.0.1:%d" % service.address[1]
        for action in ("create", "purge", "delete"):
            code, _, err = await tether_cli("queue", action, base + "/orders", "--user", "alice", password="alice-pw")
            assert code == 1 and "user 'alice' may not" in _error_line(err) and "admin" in err, (action, err)
        code, _, err = await tether_cli("queue", "create", base + "/orders", "--user", "root", password="root-pw")
        assert code == 0, err
        await qm.send("orders", b"x")
        code, out, err = await tether_cli("queue", "purge", base + "/orders", "--user", "root", password="root-pw")
        assert (code, out) == (0, "purged 1 messages from orders\n"), err
        code, _, err = await tether_cli("queue", "delete", base + "/orders", "--user", "root", password="root-pw")
        assert code == 0 and "orders" not in await qm.queues(), err


async def test_peek_neither_locks_nor_counts(served):
    qm, base = served
    await qm.create_queue("orders")
    await qm.send("orders", b"first", headers={"k": "v"})
    await qm.send("orders", b"second")
    await qm.send("orders", b"third")
    code, out, err = await tether_cli("peek", base + "/orders", "--count", "2")
    assert (code, out) == (0, "first\nsecond\n"), err
    code, out, err = await tether_cli("peek", base + "/orders", "--count", "10", "--json")
    assert code == 0, err
    peeked = [json.loads(line) for line in out.splitlines()]
    assert [m["body"] for m in peeked] == ["first", "second", "third"]
    assert peeked[0]["headers"] == {"k": "v"} and peeked[0]["delivery_count"] == 0
    info = await qm.queue_info("orders")
    assert (info.depth, info.in_flight) == (3, 0)
    message = await qm.receive("orders", timeout=0)
    assert message.delivery_count == 1     # peeking counted no delivery
    await message.complete()
    code, _, err = await tether_cli("peek", base + "/orders", "--count", "0")
    assert code == 1 and "--count" in _error_line(err)
    code, _, err = await tether_cli("peek", base + "/nope")
    assert code == 1 and "no queue named 'nope'" in _error_line(err)


async def test_queues_shows_a_faulted_queue(served):
    qm, base = served
    await qm.create_queue("orders")
    await qm.create_queue("fragile", receive_retry_count=0, max_retry_cycles=0)     # fault on the first failure
    await qm.send("fragile", b"poison")
    message = await qm.receive("fragile", timeout=0)
    await message.abandon()
    assert (await qm.queue_info("fragile")).faulted
    code, out, err = await tether_cli("queues", base)
    assert code == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows["fragile"][-2:] == ["1", "true"]        # poison 1, faulted
    assert rows["orders"][-1] == "false"
    code, out, err = await tether_cli("queues", base, "--json")
    infos = {info["name"]: info for info in json.loads(out)}
    assert infos["fragile"]["faulted"] is True and infos["orders"]["faulted"] is False


def test_tables_are_drawn_with_rich_on_a_terminal():
    plain, drawn = io.StringIO(), io.StringIO()
    rows = [["orders", "12", "false"], ["$dead", "0", "true"]]
    print_table(["name", "depth", "faulted"], rows, plain, terminal=False)
    print_table(["name", "depth", "faulted"], rows, drawn, terminal=True)
    assert plain.getvalue() == "name    depth  faulted\norders     12    false\n$dead       0     true\n"
    text = drawn.getvalue()
    assert "\x1b[" in text and "│" in text     # styled, with rules: rich drew it
    for cell in ("name", "orders", "12", "$dead", "true"):
        assert cell in text


async def test_version_and_usage_exit_statuses():
    code, out, _ = await tether_cli("--version")
    assert (code, out) == (0, f"tether {tether.__version__}\n")
    code, _, err = await tether_cli("recv")
    assert code == 2 and "usage:" in err
    code, _, err = await tether_cli("queue", "explode", "tether://127.0.0.1:1/q")
    assert code == 2 and "usage:" in err


async def test_a_timeout_exits_3_and_an_error_1(served):
    qm, base = served
    await qm.create_queue("orders")
    code, _, err = await tether_cli("recv", base + "/orders", "--timeout", "0.2")
    assert code == 3 and "received 0 of 1" in err
    code, _, err = await tether_cli("recv", base + "/nope", "--timeout", "0.2")
    assert code == 1 and "no queue named" in _error_line(err)
    # something that accepts the connection and never answers: a timeout, naming the address
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        port = listener.getsockname()[1]
        code, _, err = await tether_cli("queues", f"tether://127.0.0.1:{port}", "--connect-timeout", "0.5")
    finally:
        listener.close()
    assert code == 3 and f"127.0.0.1:{port}" in _error_line(err), err


async def test_connection_errors_name_the_address():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for args in (("send", f"tether://127.0.0.1:{port}/q", "x"), ("recv", f"tether://127.0.0.1:{port}/q"),
                 ("peek", f"tether://127.0.0.1:{port}/q"), ("queues", f"tether://127.0.0.1:{port}"),
                 ("queue", "create", f"tether://127.0.0.1:{port}/q")):
        code, _, err = await tether_cli(*args, "--connect-timeout", "2")
        line = _error_line(err)
        assert code == 1 and f"tcp://127.0.0.1:{port}" in line and "refused" in line, (args, err)


async def test_an_empty_body_needs_empty(served):
    qm, base = served
    await qm.create_queue("orders")
    code, _, err = await tether_cli("send", base + "/orders", "-", stdin=b"")
    assert code == 1 and "--empty" in _error_line(err)
    code, _, err = await tether_cli("send", base + "/orders", "")
    assert code == 1 and "--empty" in _error_line(err)
    assert (await qm.queue_info("orders")).depth == 0
    code, out, err = await tether_cli("send", base + "/orders", "-", "--empty", stdin=b"")
    assert code == 0 and out.strip(), err
    message = await qm.receive("orders", timeout=0)
    assert message.body == b""
    await message.complete()


async def _wait_for_receive(qm, name, loop):
    deadline = loop.time() + 20
    while (await qm.queue_info(name)).waiting == 0:
        assert loop.time() < deadline, "the recv never started waiting"
        await asyncio.sleep(0.02)


async def test_sigterm_stops_recv_like_ctrl_c(served):
    qm, base = served
    await qm.create_queue("orders")
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tether", "recv", base + "/orders", "--count", "5",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            await _wait_for_receive(qm, "orders", loop)
            proc.send_signal(signum)
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 128 + signum, err
        assert err.decode().strip() == f"tether: interrupted ({signal.Signals(signum).name})"
        # it closed its client: nothing is left waiting or locked at the service
        deadline = loop.time() + 20
        while (await qm.queue_info("orders")).waiting:
            assert loop.time() < deadline
            await asyncio.sleep(0.02)
    await qm.send("orders", b"still here")
    message = await qm.receive("orders", timeout=0)
    assert message.body == b"still here" and message.delivery_count == 1


async def test_serve_stops_cleanly_on_sigterm_with_lower_case_log_level(tmp_path):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tether", "qm", "serve", "--data-dir", str(tmp_path / "data"),
        "--listen", "tcp://127.0.0.1:0", "--log-level", "info",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.startswith(b"tether qm: ready "), (line, await proc.stderr.read())
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err
    assert b"queue manager stopped cleanly" in err        # INFO lines: the level was taken


async def test_recv_shows_progress_on_a_terminal_while_stdout_is_a_file(served, tmp_path):
    import os
    import pty

    qm, base = served
    await qm.create_queue("orders")
    await qm.send_many("orders", [b"m%d" % i for i in range(3)])
    main_fd, terminal_fd = pty.openpty()
    out_path = tmp_path / "out"
    try:
        with open(out_path, "wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tether", "recv", base + "/orders", "--count", "3",
                stdout=out, stderr=terminal_fd)
        os.close(terminal_fd)
        terminal_fd = -1
        await asyncio.wait_for(proc.wait(), 30)
        shown = b""
        while True:
            try:
                chunk = os.read(main_fd, 65536)
            except OSError:         # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(main_fd)
        if terminal_fd >= 0:
            os.close(terminal_fd)
    assert proc.returncode == 0, shown
    assert out_path.read_bytes() == b"m0\nm1\nm2\n"
    assert b"received" in shown and b"3/3" in shown      # rich's bar, drawn on the terminal
