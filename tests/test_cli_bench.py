"""The `tether` command's bench: a real run, small, with its table and JSON."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tether import __version__

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def tether(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tether", *args], capture_output=True,
                          text=True, timeout=170)


def test_bench_session_json_has_every_row_with_its_baseline_ratio():
    done = tether("bench", "session", "--count", "3000", "--sizes", "64B", "--loss", "0.05", "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["native"] is True             # which core ran: the compiled one
    rows = {r["name"]: r for r in document["results"]}
    assert set(rows) == {"baseline-uvloop-tcp", "udp-64B", "tcp-64B", "udp-64B-relay", "udp-64B-loss0.05"}
    for row in rows.values():
        for key in ("msgs_per_s", "mb_per_s", "p50_us", "p99_us"):
            assert isinstance(row[key], float) and row[key] > 0, (row["name"], key)
        assert row["baseline"] == "baseline-uvloop-tcp"
    assert rows["baseline-uvloop-tcp"]["ratio"] == 1.0
    assert "done" in done.stderr  # progress went to stderr, the JSON alone to stdout


def test_bench_session_table():
    done = tether("bench", "session", "--count", "2000", "--sizes", "1KiB", "--transports", "tcp")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"tether {__version__} on the compiled core: tether.NATIVE = True"
    assert any(line.startswith("baseline-uvloop-tcp-1KiB") for line in lines)
    assert any(line.startswith("tcp-1KiB") and re.search(r" \d+\.\d\dx +\d", line) for line in lines)


@pytest.mark.parametrize("args, message", [
    (["bench", "session", "--count", "0"], "--count"),
    (["bench", "session", "--loss", "0.9"], "--loss"),
    (["bench", "session", "--transports", "sctp"], "sctp"),
])
def test_bad_bench_arguments_are_one_clear_line(args, message):
    done = tether(*args)
    assert done.returncode == 1
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
