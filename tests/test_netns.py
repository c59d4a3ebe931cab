"""tether.netns: hosts in network namespaces on a bridge, made, cut, restored and removed;
a thread entering one. Root and `ip` are needed (else skipped, saying which)."""
from __future__ import annotations

import os
import shutil
import socket
import threading

import pytest

from tether import netns

from qm_hosts import unavailable_reason

needs_netns = pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")
pytestmark = pytest.mark.netns


def test_the_skip_reason_says_what_is_missing(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "needs root" in unavailable_reason()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "`ip`" in unavailable_reason()


def test_host_names_are_checked():
    for names in ([], ["a", "a"], [str(i) for i in range(201)]):
        with pytest.raises(ValueError, match="distinct host names"):
            netns.BridgedHosts(names)


def _in_namespace(namespace: str, fn):
    """fn() on a thread inside `namespace`; its result or exception."""
    out: dict = {}

    def main():
        try:
            netns.enter(namespace)
            out["result"] = fn()
        except BaseException as exc:
            out["error"] = exc
    thread = threading.Thread(target=main)
    thread.start()
    thread.join(30)
    if "error" in out:
        raise out["error"]
    return out["result"]


def _reaches(address: str, port: int, timeout: float) -> bool:
    """A TCP connection is made within `timeout` (SYNs are resent meanwhile)."""
    with socket.socket() as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
            return True
        except OSError:
            return False


@needs_netns
def test_bridged_hosts_reach_each_other_until_cut_and_are_removed():
    with netns.BridgedHosts(["x", "y"], prefix="tether-test-") as hosts:
        made = {hosts.switch, hosts.namespace("x"), hosts.namespace("y")}
        assert made <= set(netns.namespaces())
        assert hosts.address("x") == "10.201.0.1" and hosts.address("y") == "10.201.0.2"

        def listen():
            sock = socket.socket()
            sock.bind((hosts.address("y"), 0))
            sock.listen()
            return sock
        server = _in_namespace(hosts.namespace("y"), listen)
        port = server.getsockname()[1]
        try:
            assert _in_namespace(hosts.namespace("x"), lambda: _reaches(hosts.address("y"), port, 10))
            # the test process itself is not on the bridge
            assert not _reaches(hosts.address("y"), port, 1)
            hosts.cut("y")
            assert not _in_namespace(hosts.namespace("x"), lambda: _reaches(hosts.address("y"), port, 1))
            hosts.restore("y")
            assert _in_namespace(hosts.namespace("x"), lambda: _reaches(hosts.address("y"), port, 10))
        finally:
            server.close()
    assert not made & set(netns.namespaces())


@needs_netns
def test_bridged_hosts_are_removed_when_the_body_fails():
    with pytest.raises(RuntimeError):
        with netns.BridgedHosts(["x"], prefix="tether-test-") as hosts:
            raise RuntimeError("a test failed")
    assert not {hosts.switch, hosts.namespace("x")} & set(netns.namespaces())


def test_entering_a_namespace_that_does_not_exist_is_an_error():
    with pytest.raises(OSError):
        _in_namespace("tether-test-no-such-namespace", lambda: None)
