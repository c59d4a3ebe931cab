"""Two network namespaces joined by a veth pair, for `tether bench session --link veth`.

`VethLink` makes them, runs commands inside them (`VethLink.command`), adds and removes
the loss rules (iptables' statistic match, which drops packets in the kernel), and removes
everything again in `VethLink.close`, which the bench calls in a `finally`. Names carry
this process's id and a random tag, so concurrent runs never share a namespace; the
interfaces live only inside the namespaces, so their names cannot collide either.

A run killed with SIGKILL cannot clean up: its namespaces stay (`ip netns list` shows
them as `tether-bench-PID-TAG-…`, and `ip netns delete NAME` removes them, with the veth
and the rules inside). The next run says so on stderr when it finds such leftovers whose
process is gone. Making, naming and removing namespaces is `tether.netns`'s, shared with the
multi-host tests.
"""
from __future__ import annotations

import shutil
import subprocess

from ..netns import Namespaces, Topology, namespaces, run
from ..netns import check_environment as _check_namespaces

PREFIX = "tether-bench-"
MTU = 1500
SENDER_ADDRESS = "10.200.0.1"
RECEIVER_ADDRESS = "10.200.0.2"
_DEVICES = ("veth0", "veth1")       # sender side, receiver side

__all__ = ["PREFIX", "VethLink", "check_environment", "namespaces"]


def check_environment(loss: float) -> None:
    """Raise a one-line OSError when this process cannot make the link."""
    try:
        _check_namespaces("--link veth")
    except PermissionError as exc:
        raise PermissionError(f"{exc}; run it as root, or use --processes on loopback") from None
    if loss and shutil.which("iptables") is None:
        raise FileNotFoundError("--loss with --link veth needs the `iptables` command, which is not on PATH")


class VethLink(Topology):
    """Sender namespace `sender_ns` (veth0, SENDER_ADDRESS) and receiver namespace
    `receiver_ns` (veth1, RECEIVER_ADDRESS), MTU 1500. Use as a context manager, or call
    `open()` and, always, `close()`."""

    def __init__(self, segment: bool = False) -> None:
        self._namespaces = Namespaces(PREFIX)
        self.sender_ns = self._namespaces.name("s")
        self.receiver_ns = self._namespaces.name("r")
        self.sender_address = SENDER_ADDRESS
        self.receiver_address = RECEIVER_ADDRESS
        # segment=True: no packet larger than the MTU crosses the veth (no TSO/GSO
        # super-packets), so a dropped packet is one packet of at most 1500 bytes
        self.segment = segment
        self.loss = 0.0

    def open(self) -> "VethLink":
        self._namespaces.warn_about_leftovers("tether bench")
        self._namespaces.add("s")
        self._namespaces.add("r")
        s, r = _DEVICES
        run("ip", "link", "add", s, "netns", self.sender_ns, "mtu", str(MTU), "type", "veth",
             "peer", "name", r, "netns", self.receiver_ns, "mtu", str(MTU))
        for ns, dev, address in ((self.sender_ns, s, self.sender_address),
                                 (self.receiver_ns, r, self.receiver_address)):
            run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", dev)
            if self.segment:
                run("ip", "-n", ns, "link", "set", dev, "gso_max_size", str(MTU))
            run("ip", "-n", ns, "link", "set", dev, "up")
        return self

    def _rule(self, ns: str, dev: str, action: str, probability: float) -> None:
        run("ip", "netns", "exec", ns, "iptables", "-w", action, "INPUT", "-i", dev,
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
        try:
            self.set_loss(0.0)
        except OSError:
            self.loss = 0.0
        self._namespaces.close()
