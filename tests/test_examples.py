"""Every file in examples/ runs and prints what it says it prints, and README.md shows each
one as it is, with that output.

An example ends with its expected output as comments:

    # Expected output:
    #   first line
    #   a line with ... where anything may stand (an id, a port, a time)

Python files run with this interpreter; shell files with `sh`, and a `tether` on their PATH
that runs this interpreter's `python -m tether` (the code under test, not whatever
`tether` is installed). Each runs in a scratch directory with a bounded timeout.
"""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import stat
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p for p in (ROOT / "examples").iterdir() if p.suffix in (".py", ".sh"))
README = (ROOT / "README.md").read_text()
MARKER = "\n# Expected output:\n"
LANGUAGE = {".py": "python", ".sh": "sh"}
TIMEOUT = 120.0


def split(path: pathlib.Path) -> tuple[str, list[str]]:
    """(the example's code, its expected output lines)."""
    text = path.read_text()
    assert MARKER in text, f"{path.name} has no '# Expected output:' block at its end"
    code, expected = text.split(MARKER, 1)
    lines = expected.splitlines()
    assert lines and all(line.startswith("#   ") for line in lines), \
        f"{path.name}: every line of the expected output starts with '#   '"
    return code.rstrip("\n") + "\n", [line[4:] for line in lines]


def matches(expected: str, actual: str) -> bool:
    """`actual` is `expected`, where each '...' stands for any text."""
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, actual) is not None


def test_the_matcher_can_fail():
    assert matches("sent ...-1.0", "sent 0e85c3ac-1.0")
    assert not matches("sent ...-1.0", "sent 0e85c3ac-2.0")
    assert not matches("a", "a b")
    assert matches("...", "")


def test_there_are_examples():
    names = {p.name for p in EXAMPLES}
    assert {"sessions.py", "streams.py", "queue_basics.py", "service.sh", "tls_users.sh"} <= names


def _shim(directory: pathlib.Path) -> str:
    """A directory holding a `tether` that runs this interpreter's `python -m tether`."""
    script = directory / "bin" / "tether"
    script.parent.mkdir()
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m tether "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script.parent)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_prints_its_expected_output(path: pathlib.Path, tmp_path: pathlib.Path):
    _, expected = split(path)
    if path.suffix == ".sh":
        for tool in ("openssl", "curl"):
            if f"{tool} " in path.read_text() and shutil.which(tool) is None:
                pytest.skip(f"{path.name} needs {tool}, which is not installed")
        env = dict(os.environ, PATH=_shim(tmp_path) + os.pathsep + os.environ.get("PATH", ""))
        command = ["sh", str(path)]
    else:
        env = dict(os.environ)
        command = [sys.executable, str(path)]
    work = tmp_path / "work"
    work.mkdir()
    stdout, stderr, returncode = run(command, work, env)
    assert returncode == 0, f"{path.name} exited {returncode}:\n{stdout}\n{stderr}"
    actual = stdout.splitlines()
    wrong = [(e, a) for e, a in zip(expected, actual) if not matches(e, a)]
    assert len(actual) == len(expected) and not wrong, (
        f"{path.name} printed:\n{stdout}\nexpected:\n" + "\n".join(expected) + f"\nstderr:\n{stderr}")


def run(command: list[str], cwd: pathlib.Path, env: dict[str, str]) -> tuple[str, str, int]:
    """(stdout, stderr, exit status) of `command`, in a process group of its own so that
    on a timeout what it started (a `tether qm serve`) is killed with it."""
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{command[-1]} did not finish within {TIMEOUT:g} s:\n{stdout}\n{stderr}")
    return stdout, stderr, process.returncode


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_readme_shows_the_example_and_its_output(path: pathlib.Path):
    code, expected = split(path)
    block = f"```{LANGUAGE[path.suffix]}\n{code}```\n"
    assert block in README, f"README.md does not show examples/{path.name} as it is"
    after = README.split(block, 1)[1]
    shown = re.match(r"(?:(?!```).)*?```text\n(.*?)```", after, re.DOTALL)
    assert shown, f"README.md: no ```text block of output after examples/{path.name}"
    assert shown.group(1).splitlines() == expected, \
        f"README.md shows another output for examples/{path.name} than the file's"
    assert f"(examples/{path.name})" in README, f"README.md does not link examples/{path.name}"
