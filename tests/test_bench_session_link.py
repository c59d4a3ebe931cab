"""`tether bench session` beyond one process: its arguments, the message check that makes a
row count only what the application got, the process split on loopback, and the veth
link: rows come out, and the namespaces and their iptables rules are gone afterwards,
also when the run is interrupted. Short runs (`--seconds 0.3`); the veth tests need root
and `ip` (and `iptables` for loss) and are skipped without them."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tether.bench import netns, session_peer
from tether.bench.session_bench import parse_size
from tether.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

HAVE_VETH = sys.platform == "linux" and os.geteuid() == 0 and shutil.which("ip") is not None
needs_veth = pytest.mark.skipif(not HAVE_VETH, reason="--link veth needs root and the `ip` command")
needs_iptables = pytest.mark.skipif(shutil.which("iptables") is None,
                                    reason="--loss with --link veth needs the `iptables` command")


def tether(*args: str, timeout: float = 100) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tether", *args], capture_output=True,
                          text=True, timeout=timeout)


def ours(pid: int) -> list[str]:
    return [n for n in netns.namespaces() if n.startswith(f"{netns.PREFIX}{pid}-")]


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def root_rules() -> str:
    if shutil.which("iptables") is None:
        return ""
    return subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True).stdout


# -- arguments -----------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--seconds", "0"], "--seconds"),
    (["--seconds", "-1"], "--seconds"),
    (["--count", "0"], "--count"),
    (["--loss", "0.9"], "--loss"),
    (["--loss", "-0.1"], "--loss"),
    (["--window", "0"], "--window"),
    (["--window", "5000"], "--window"),
    (["--transports", "sctp"], "sctp"),
    (["--sizes", "3KB"], "3KB"),
    (["--sizes", "12"], "multiple of 8"),
    (["--sizes", "8"], "multiple of 8"),
    (["--sizes", ","], "no size"),
    (["--processes", "--loss", "0.05"], "--link veth"),
    (["--segment"], "--link veth"),
])
def test_bad_arguments_are_one_clear_line(args, message, capsys):
    assert main(["bench", "--quiet", "session", *args]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_an_unknown_link_is_refused(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["bench", "session", "--link", "wifi"])
    assert stop.value.code == 2
    assert "--link" in capsys.readouterr().err


def test_sizes():
    assert parse_size("64B") == ("64B", 64)
    assert parse_size("1KiB") == ("1KiB", 1024)
    assert parse_size("1024") == ("1KiB", 1024)
    assert parse_size("136") == ("136B", 136)


def test_without_root_or_ip_the_error_says_what_is_missing(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(PermissionError, match="needs root"):
        netns.check_environment(0.0)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="`ip`"):
        netns.check_environment(0.0)
    monkeypatch.setattr(shutil, "which", lambda name: "/sbin/ip" if name == "ip" else None)
    netns.check_environment(0.0)
    with pytest.raises(FileNotFoundError, match="iptables"):
        netns.check_environment(0.05)


def test_not_root_is_one_clear_line_from_the_command():
    if os.geteuid() == 0:
        code = ("import os, sys; os.geteuid = lambda: 1000; from tether.cli import main; "
                "sys.exit(main(['bench', '--quiet', 'session', '--link', 'veth']))")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    else:
        done = tether("bench", "--quiet", "session", "--link", "veth")
    assert done.returncode == 1
    assert "needs root" in done.stderr and "Traceback" not in done.stderr


# -- what counts as delivered --------------------------------------------------------------

def test_the_receiver_counts_exactly_the_messages_sent_in_order():
    out, into = session_peer.Outgoing(64), session_peer.Incoming(64)
    for _ in range(70):                         # past the numbers' wrap at 65,536
        into.take(list(out.batch()))
    into.take(list(out.batch(5)))
    assert into.count == out.sent == 70 * session_peer.BATCH + 5
    assert len(into.latencies) == into.count // session_peer.LATENCY_EVERY + 1
    assert all(0 <= x < 60 for x in into.latencies)


@pytest.mark.parametrize("damage, words", [
    (lambda m: m[:3] + m[4:], "lost"),                  # one lost
    (lambda m: m[:4] + m[3:], "duplicated"),            # one twice
    (lambda m: m[:3] + [m[4], m[3]] + m[5:], "reordered"),
    (lambda m: m[:3] + [m[3][:-8]] + m[4:], "bytes"),   # one cut short
])
def test_a_lost_duplicated_reordered_or_damaged_message_fails_the_row(damage, words):
    out, into = session_peer.Outgoing(64), session_peer.Incoming(64)
    into.take(list(out.batch(10)))
    with pytest.raises(session_peer.DeliveryError, match=words):
        into.take(damage(list(out.batch(10))))


# -- separate processes on loopback --------------------------------------------------------

def rows_of(done: subprocess.CompletedProcess) -> dict[str, dict]:
    assert done.returncode == 0, done.stderr
    return {r["name"]: r for r in json.loads(done.stdout)["results"]}


def test_processes_on_loopback():
    rows = rows_of(tether("bench", "--quiet", "--json", "session", "--processes",
                          "--seconds", "0.3", "--sizes", "64B,1KiB"))
    assert set(rows) == {"baseline-uvloop-tcp", "udp-64B", "tcp-64B",
                         "baseline-uvloop-tcp-1KiB", "udp-1KiB", "tcp-1KiB"}
    for row in rows.values():
        assert row["link"] == "loopback-processes"
        assert row["messages"] > 0 and row["msgs_per_s"] > 0 and row["elapsed_s"] >= 0.3
        assert row["baseline"] == ("baseline-uvloop-tcp" if "1KiB" not in row["name"]
                                   else "baseline-uvloop-tcp-1KiB")
    assert rows["baseline-uvloop-tcp"]["resent"] is None
    assert isinstance(rows["udp-64B"]["resent"], int) and isinstance(rows["tcp-1KiB"]["resent"], int)


def test_a_count_moves_exactly_that_many_messages():
    rows = rows_of(tether("bench", "--quiet", "--json", "session", "--processes", "--count", "2500",
                          "--sizes", "1KiB", "--window", "64"))
    assert {r["messages"] for r in rows.values()} == {2500}


def test_in_process_rows_run_for_the_given_seconds():
    rows = rows_of(tether("bench", "--quiet", "--json", "session", "--seconds", "0.3",
                          "--sizes", "64B", "--transports", "tcp"))
    assert set(rows) == {"baseline-uvloop-tcp", "tcp-64B"}
    assert all(r["elapsed_s"] >= 0.3 and r["link"] == "loopback" for r in rows.values())


# -- the veth link -------------------------------------------------------------------------

@needs_veth
@needs_iptables
def test_veth_link_makes_and_removes_namespaces_and_rules():
    with netns.VethLink() as link:
        assert {link.sender_ns, link.receiver_ns} <= set(netns.namespaces())
        link.set_loss(0.25)
        rules = link.rules()
        assert len(rules) == 2 and all("statistic" in r and "0.25" in r for r in rules)
        link.set_loss(0.0)
        assert link.rules() == []
        link.set_loss(0.1)
    assert not {link.sender_ns, link.receiver_ns} & set(netns.namespaces())


@needs_veth
def test_veth_link_is_removed_when_the_body_fails():
    with pytest.raises(RuntimeError):
        with netns.VethLink() as link:
            raise RuntimeError("a row failed")
    assert not {link.sender_ns, link.receiver_ns} & set(netns.namespaces())


@needs_veth
@needs_iptables
def test_veth_run_with_loss_has_every_row_and_leaves_nothing_behind():
    before = root_rules()
    proc = subprocess.Popen([sys.executable, "-m", "tether", "bench", "--quiet", "--json", "session",
                             "--link", "veth", "--loss", "0.05", "--seconds", "0.3", "--sizes", "64B"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=100)
    assert proc.returncode == 0, err
    rows = {r["name"]: r for r in json.loads(out)["results"]}
    assert set(rows) == {"baseline-uvloop-tcp", "udp-64B", "tcp-64B", "baseline-uvloop-tcp-loss0.05",
                         "udp-64B-loss0.05", "tcp-64B-loss0.05"}
    for row in rows.values():
        assert row["link"] == "veth" and row["messages"] > 0 and row["msgs_per_s"] > 0
        assert row["baseline"] == "baseline-uvloop-tcp"
        assert row["loss"] == (0.05 if row["name"].endswith("loss0.05") else 0.0)
        assert row["segmented"] is True         # a drop is one packet of at most 1500 bytes
    assert ours(proc.pid) == []
    assert root_rules() == before


@needs_veth
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_veth_run_leaves_nothing_behind(signum):
    proc = subprocess.Popen([sys.executable, "-m", "tether", "bench", "--quiet", "session",
                             "--link", "veth", "--seconds", "30", "--sizes", "64B"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while len(ours(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(ours(proc.pid)) == 2
        time.sleep(1.5)                 # the first row's processes are running
        peers = children(proc.pid)
        assert peers
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert ours(proc.pid) == []
    assert not [pid for pid in peers if alive(pid)]
