"""The shell session of README.md's "The queue manager service from the shell" runs as
written and prints what it shows (on free ports instead of 7600 and 9600; a line `…`
stands for any one line, such as a new message's id)."""
from __future__ import annotations

import asyncio
import os
import pathlib
import re
import shutil
import signal
import socket
import sys

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## The queue manager service from the shell\n"
# `tether` in the session is this checkout's: a shell function running `python -m tether`
PRELUDE = 'set -o pipefail; tether() { "$TETHER_PYTHON" -m tether "$@"; }; '


def _session() -> list[tuple[str, list[str]]]:
    text = README.read_text().split(SECTION, 1)[1]
    block = re.search(r"```console\n(.*?)```", text, re.S).group(1)
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    return steps


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _matches(expected: list[str], got: list[str]) -> bool:
    return len(expected) == len(got) and all(e == g or (e == "…" and g) for e, g in zip(expected, got))


async def test_the_readme_shell_session(tmp_path):
    if shutil.which("curl") is None:
        pytest.skip("the session uses curl")
    steps = _session()
    assert steps[0][0].endswith("&") and steps[-1][0] == "kill %1", steps
    ports = {"7600": str(_free_port()), "9600": str(_free_port())}

    def local(text: str) -> str:
        for port, free in ports.items():
            text = text.replace(f":{port}", f":{free}")
        return text

    env = {**os.environ, "TETHER_PYTHON": sys.executable}
    command, expected = steps[0]
    assert command.startswith("tether qm serve ")
    # the service in the background (`&`): exec'd, so that `kill %1` is a SIGTERM to it
    serve = await asyncio.create_subprocess_exec(
        "bash", "-c", 'exec "$TETHER_PYTHON" -m ' + local(command[:-1]), cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        got = [(await asyncio.wait_for(serve.stdout.readline(), 30)).decode().rstrip("\n") for _ in expected]
        assert got == [local(line) for line in expected], (got, await serve.stderr.read())
        for command, expected in steps[1:-1]:
            done = await asyncio.create_subprocess_exec(
                "bash", "-c", PRELUDE + local(command), cwd=tmp_path, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(done.communicate(), 60)
            got = out.decode().splitlines()
            assert done.returncode == 0 and _matches([local(line) for line in expected], got), (command, got, err)
        serve.send_signal(signal.SIGTERM)        # `kill %1`
        await asyncio.wait_for(serve.wait(), 30)
        assert serve.returncode == 0, await serve.stderr.read()
    finally:
        if serve.returncode is None:
            serve.kill()
            await serve.wait()
