"""Two network namespaces joined by a veth pair, for `tether bench session --link veth`.

`VethLink` makes them, runs commands inside them (`VethLink.command`), adds and removes
the loss rules (iptables' statistic match, which drops packets in the kernel), and removes
everything again in `VethLink.close`, which the bench calls in a `finally`. Names carry
this process's id and a random tag, so concurrent runs never share a namespace; the
interfaces live only inside the namespaces, so their names cannot collide either.

A run killed with SIGKILL cannot clean up: its namespaces stay (`ip netns list` shows
them as `tether-bench-PID-TAG-…`, and `ip netns delete NAME` removes them, with the veth
and the rules inside). The next run says so on stderr when it finds such leftovers whose
process is gone.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys

PREFIX = "tether-bench-"
MTU = 1500
SENDER_ADDRESS = "10.200.0.1"
RECEIVER_ADDRESS = "10.200.0.2"
_DEVICES = ("veth0", "veth1")       # sender side, receiver side


def check_environment(loss: float) -> None:
    """Raise a one-line OSError when this process cannot make the link."""
    if sys.platform != "linux":
        raise OSError("--link veth needs Linux network namespaces")
    if os.geteuid() != 0:
        raise PermissionError("--link veth makes network namespaces and needs root; "
                              "run it as root, or use --processes on loopback")
    if shutil.which("ip") is None:
        raise FileNotFoundError("--link veth needs the `ip` command (iproute2), which is not on PATH")
    if loss and shutil.which("iptables") is None:
        raise FileNotFoundError("--loss with --link veth needs the `iptables` command, which is not on PATH")


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise OSError(f"`{' '.join(argv)}` failed: {detail[-1] if detail else done.returncode}")


def namespaces() -> list[str]:
    """The names `ip netns list` shows."""
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def leftovers() -> list[str]:
    """Namespaces of earlier runs whose process is gone (killed before it could clean up)."""
    found = []
    for name in namespaces():
        m = re.match(re.escape(PREFIX) + r"(\d+)-", name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            found.append(name)
    return found


class VethLink:
    """Sender namespace `sender_ns` (veth0, SENDER_ADDRESS) and receiver namespace
    `receiver_ns` (veth1, RECEIVER_ADDRESS), MTU 1500. Use as a context manager, or call
    `open()` and, always, `close()`."""

    def __init__(self, segment: bool = False) -> None:
        tag = f"{os.getpid()}-{secrets.token_hex(3)}"
        self.sender_ns = f"{PREFIX}{tag}-s"
        self.receiver_ns = f"{PREFIX}{tag}-r"
        self.sender_address = SENDER_ADDRESS
        self.receiver_address = RECEIVER_ADDRESS
        # segment=True: no packet larger than the MTU crosses the veth (no TSO/GSO
        # super-packets), so a dropped packet is one packet of at most 1500 bytes
        self.segment = segment
        self.loss = 0.0
        self._made: list[str] = []

    def open(self) -> VethLink:
        stale = leftovers()
        if stale:
            print(f"tether bench: namespaces left by killed runs (remove with `ip netns delete NAME`): "
                  f"{' '.join(stale)}", file=sys.stderr)
        for ns in (self.sender_ns, self.receiver_ns):
            _run("ip", "netns", "add", ns)
            self._made.append(ns)
        s, r = _DEVICES
        _run("ip", "link", "add", s, "netns", self.sender_ns, "mtu", str(MTU), "type", "veth",
             "peer", "name", r, "netns", self.receiver_ns, "mtu", str(MTU))
        for ns, dev, address in ((self.sender_ns, s, self.sender_address),
                                 (self.receiver_ns, r, self.receiver_address)):
            _run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", dev)
            if self.segment:
                _run("ip", "-n", ns, "link", "set", dev, "gso_max_size", str(MTU))
            _run("ip", "-n", ns, "link", "set", dev, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        return self

    def _rule(self, ns: str, dev: str, action: str, probability: float) -> None:
        _run("ip", "netns", "exec", ns, "iptables", "-w", action, "INPUT", "-i", dev,
             "-m", "statistic", "--mode", "random", "--probability", f"{probability:.6f}",
             "-j", "DROP")

    def set_loss(self, probability: float) -> None:
        """Drop each packet arriving at either namespace (data at the receiver, acks at the
        sender) with this probability; 0 removes the rules."""
        if probability == self.loss:
            return
        if self.loss:
            old, self.loss = self.loss, 0.0
            for ns, dev in zip((self.sender_ns, self.receiver_ns), _DEVICES):
                self._rule(ns, dev, "-D", old)
        if probability:
            self.loss = probability     # set first, so a half-added pair is removed too
            for ns, dev in zip((self.sender_ns, self.receiver_ns), _DEVICES):
                self._rule(ns, dev, "-A", probability)

    def rules(self) -> list[str]:
        """The iptables rules inside both namespaces (for tests)."""
        out = []
        for ns in (self.sender_ns, self.receiver_ns):
            if ns in namespaces():
                done = subprocess.run(["ip", "netns", "exec", ns, "iptables", "-w", "-S"],
                                      capture_output=True, text=True, timeout=30)
                out += [line for line in done.stdout.splitlines() if line.startswith("-A")]
        return out

    def command(self, side: str, argv: list[str]) -> list[str]:
        """argv run inside the sender's or the receiver's namespace."""
        ns = self.sender_ns if side == "sender" else self.receiver_ns
        return ["ip", "netns", "exec", ns, *argv]

    def close(self) -> None:
        """Remove the rules and the namespaces (the veth goes with them). Every namespace
        is deleted even when removing a rule failed (the rules live in the namespace and
        go with it); a namespace that cannot be deleted is raised after."""
        failure: OSError | None = None
        try:
            self.set_loss(0.0)
        except OSError:
            self.loss = 0.0
        while self._made:
            ns = self._made.pop()
            try:
                _run("ip", "netns", "delete", ns)
            except OSError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def __enter__(self) -> VethLink:
        try:
            return self.open()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc_info) -> None:
        self.close()
