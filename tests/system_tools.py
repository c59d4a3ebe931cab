"""System tools some tests need, installed by the test run itself where it can.

`--link veth --loss` needs `iptables`; the queue bench's Redis rows need `redis-server`
(and the `redis` package, from the test extra). On a fresh machine run as root with
apt-get, the first test run installs what is missing, once, so `.ci/run` needs nothing
done by hand. Elsewhere (not root, no apt-get, no network, or TETHER_TEST_NO_INSTALL=1)
nothing is installed and the tests that need a tool skip, naming it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

# command -> Debian package
TOOLS = {"iptables": "iptables", "redis-server": "redis-server"}
INSTALL_TIMEOUT = 600.0


def missing_packages() -> list[str]:
    return sorted({package for command, package in TOOLS.items() if shutil.which(command) is None})


def pytest_configure(config) -> None:
    if hasattr(config, "workerinput"):          # only once, in the controlling process
        return
    packages = missing_packages()
    if not packages or os.environ.get("TETHER_TEST_NO_INSTALL") == "1":
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print(f"tests: installing {', '.join(packages)} with apt-get (TETHER_TEST_NO_INSTALL=1 to skip)",
          file=sys.stderr)
    try:
        for command in (["apt-get", "update", "-q"],
                        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]):
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
            if done.returncode != 0 and command[1] == "install":
                print(f"tests: apt-get could not install {', '.join(packages)}: "
                      f"{done.stderr.strip().splitlines()[-1:] or done.returncode}", file=sys.stderr)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"tests: installing {', '.join(packages)} failed: {exc}", file=sys.stderr)
