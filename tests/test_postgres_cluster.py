"""The test cluster's own clean-up: a run killed before it could stop its PostgreSQL server
leaves it running; the next run stops it and removes its directory."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import postgres_cluster as pc
import pytest

pytestmark = pytest.mark.skipif(pc._why_not() is not None, reason=f"PostgreSQL: {pc._why_not()}")

_MAKE_AND_HANG = """
import sys, time
sys.path.insert(0, {tests!r})
import postgres_cluster as pc
cluster = pc.Cluster(pc._bin_dir())
cluster.start()
print(cluster.root, flush=True)
time.sleep(120)
"""


def _server_running(root: str) -> bool:
    return subprocess.run(["pgrep", "-f", f"postgres -D {root}/data"], capture_output=True).returncode == 0


def test_a_killed_runs_cluster_is_stopped_and_removed_by_the_next_run():
    tests = os.path.dirname(os.path.abspath(__file__))
    run = subprocess.Popen([sys.executable, "-c", _MAKE_AND_HANG.format(tests=tests)],
                           stdout=subprocess.PIPE, text=True)
    try:
        root = run.stdout.readline().strip()
        assert root, "the cluster did not start"
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=10)
    assert _server_running(root), "the killed run's server should still be running"
    pc.remove_abandoned(pc._bin_dir())
    deadline = time.monotonic() + 30
    while _server_running(root) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _server_running(root)
    assert not os.path.exists(root)


def test_a_live_runs_cluster_is_left_alone(postgres_cluster):
    pc.remove_abandoned(pc._bin_dir())
    assert os.path.exists(postgres_cluster.root) and _server_running(postgres_cluster.root)
