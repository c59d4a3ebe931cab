"""Running the `tether` command as a subprocess, for the CLI tests."""
from __future__ import annotations

import asyncio
import os
import sys


async def tether_cli(*args: str, stdin: bytes = b"", password: str | None = None,
                     new_session: bool = False) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `python -m tether ARGS` with `stdin`; TETHER_PASSWORD
    set to `password` (unset without one); killed after 30 s."""
    env = {k: v for k, v in os.environ.items() if k != "TETHER_PASSWORD"}
    if password is not None:
        env["TETHER_PASSWORD"] = password
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tether", *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, start_new_session=new_session)
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode, out.decode(), err.decode()


def one_error_line(code: int, err: str) -> str:
    """The one line a failed command printed ("tether: error: ..."); asserts it failed so."""
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("tether: error: "), err
    assert "Traceback" not in err
    return lines[0]
