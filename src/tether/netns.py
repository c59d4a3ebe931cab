"""Network namespaces as hosts of their own on one Linux machine: made, joined, cut and
removed by the process that needs them (`tether bench session --link veth`, the multi-host
tests).

`check_environment` says in one line why they cannot be made here (not Linux, not root, no
`ip`). `Namespaces` makes namespaces and removes every one of them in `close()`, also when
making the next one failed. `BridgedHosts` is the multi-host topology: one namespace per
host, each with an `eth0` on a bridge in a namespace of its own (the switch), addresses
only inside them; `cut(host)` and `restore(host)` take that host's switch port down and up,
a silent partition (the host's own interface stays up). `enter(namespace)` moves the
calling thread into a namespace, so a thread of the test process can open connections
there.

Names carry a prefix, this process's id and a random tag, so concurrent runs never share a
namespace. A run killed with SIGKILL cannot clean up: `leftovers(prefix)` lists the
namespaces whose process is gone (`ip netns delete NAME` removes one, with everything in it).
"""
from __future__ import annotations

import abc
import ctypes
import os
import re
import secrets
import shutil
import subprocess
import sys

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"


def check_environment(purpose: str) -> None:
    """Raise a one-line OSError saying why network namespaces cannot be made here, for
    `purpose` (e.g. "--link veth")."""
    if sys.platform != "linux":
        raise OSError(f"{purpose} needs Linux network namespaces")
    if os.geteuid() != 0:
        raise PermissionError(f"{purpose} makes network namespaces and needs root")
    if shutil.which("ip") is None:
        raise FileNotFoundError(f"{purpose} needs the `ip` command (iproute2), which is not on PATH")


def run(*argv: str) -> None:
    """Run a command (`ip ...`); OSError with its last line of error output if it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise OSError(f"`{' '.join(argv)}` failed: {detail[-1] if detail else done.returncode}")


def namespaces() -> list[str]:
    """The names `ip netns list` shows."""
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def leftovers(prefix: str) -> list[str]:
    """Namespaces named `prefix`PID-... whose process is gone (killed before it could clean up)."""
    found = []
    for name in namespaces():
        m = re.match(re.escape(prefix) + r"(\d+)-", name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            found.append(name)
    return found


def enter(namespace: str) -> None:
    """Move the calling thread into network namespace `namespace` (sockets it opens from now
    on live there). Only this thread moves; call it on a thread of its own."""
    fd = os.open(os.path.join(NETNS_DIR, namespace), os.O_RDONLY)
    try:
        setns = getattr(os, "setns", None)
        if setns is not None:               # Python 3.12+
            setns(fd, CLONE_NEWNET)
        else:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(fd, CLONE_NEWNET) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, f"setns into {namespace}: {os.strerror(errno)}")
    finally:
        os.close(fd)


class Namespaces:
    """Namespaces named `prefix`PID-TAG-SUFFIX, made by `add` and all removed by `close`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.tag = f"{os.getpid()}-{secrets.token_hex(3)}"
        self.made: list[str] = []

    def name(self, suffix: str) -> str:
        """The full name of this set's namespace `suffix`."""
        return f"{self.prefix}{self.tag}-{suffix}"

    def warn_about_leftovers(self, who: str) -> None:
        """Say on stderr which namespaces killed runs left behind (they are not ours to delete)."""
        stale = leftovers(self.prefix)
        if stale:
            print(f"{who}: namespaces left by killed runs (remove with `ip netns delete NAME`): "
                  f"{' '.join(stale)}", file=sys.stderr)

    def add(self, suffix: str) -> str:
        """Make namespace `suffix` with its loopback up; its full name."""
        ns = self.name(suffix)
        run("ip", "netns", "add", ns)
        self.made.append(ns)
        run("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def close(self) -> None:
        """Delete every namespace made (with the interfaces and rules inside); one that
        cannot be deleted is raised after the others are gone."""
        failure: OSError | None = None
        while self.made:
            ns = self.made.pop()
            try:
                run("ip", "netns", "delete", ns)
            except OSError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure


class Topology(abc.ABC):
    """Namespaces joined somehow, made by the subclass's `open()` and removed by its
    `close()`; as a context manager, whatever `open()` made is removed also when it fails
    half-way."""

    @abc.abstractmethod
    def open(self) -> "Topology":
        """Make the namespaces and links; self."""

    @abc.abstractmethod
    def close(self) -> None:
        """Remove everything `open()` made (also after it failed half-way)."""

    def __enter__(self):
        try:
            return self.open()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc_info) -> None:
        self.close()


class BridgedHosts(Topology):
    """Hosts `names` (namespaces), each with `eth0` at `subnet`.N/24 (N = 1, 2, ...) on a
    bridge in a namespace of its own. Use as a context manager, or call `open()` and,
    always, `close()`."""

    BRIDGE = "br0"

    def __init__(self, names: list[str], *, prefix: str = "tether-hosts-", subnet: str = "10.201.0") -> None:
        if len(set(names)) != len(names) or not names or len(names) > 200:
            raise ValueError(f"BridgedHosts needs 1..200 distinct host names, not {names!r}")
        self.names = list(names)
        self.subnet = subnet
        self._namespaces = Namespaces(prefix)
        self.switch = self._namespaces.name("switch")

    def namespace(self, host: str) -> str:
        """The namespace of `host`."""
        return self._namespaces.name(host)

    def address(self, host: str) -> str:
        """The IPv4 address of `host` on the bridge."""
        return f"{self.subnet}.{self.names.index(host) + 1}"

    def _port(self, host: str) -> str:
        return f"port{self.names.index(host)}"

    def open(self) -> "BridgedHosts":
        self._namespaces.warn_about_leftovers("tether")
        switch = self._namespaces.add("switch")
        run("ip", "-n", switch, "link", "add", self.BRIDGE, "type", "bridge")
        run("ip", "-n", switch, "link", "set", self.BRIDGE, "up")
        for host in self.names:
            ns = self._namespaces.add(host)
            port = self._port(host)
            run("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", switch)
            run("ip", "-n", switch, "link", "set", port, "master", self.BRIDGE)
            run("ip", "-n", switch, "link", "set", port, "up")
            run("ip", "-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
        return self

    def cut(self, host: str) -> None:
        """Take `host`'s switch port down: nothing reaches it or leaves it, silently."""
        run("ip", "-n", self.switch, "link", "set", self._port(host), "down")

    def restore(self, host: str) -> None:
        """Bring `host`'s switch port back up."""
        run("ip", "-n", self.switch, "link", "set", self._port(host), "up")

    def command(self, host: str, argv: list[str]) -> list[str]:
        """argv run inside `host`'s namespace."""
        return ["ip", "netns", "exec", self.namespace(host), *argv]

    def close(self) -> None:
        """Remove every namespace (the veths and the bridge go with them)."""
        self._namespaces.close()
