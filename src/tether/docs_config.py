"""Writes docs/configuration.md from the settings' own definitions: every name, default,
range and meaning comes from the fields of SessionSettings, QueueSettings, ServiceConfig
and ServiceLimits and from the key tables of auth.py and remotes.py, so the reference
cannot drift from the code.

    python -m tether.docs_config            # writes docs/configuration.md
    python -m tether.docs_config --check    # exit 1 when it is stale
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .queue.auth import USER_KEYS
from .queue.config import ServiceConfig
from .queue.core.settings import QueueSettings
from .queue.limits import ServiceLimits
from .queue.remotes import REMOTE_KEYS
from .session.sansio.settings import SessionSettings

DEFAULT_PATH = Path("docs") / "configuration.md"

HEADER = """# Configuration reference

Every setting tether takes, with its default, what it accepts and what it does. This file
is generated from the settings' own definitions (`python -m tether.docs_config`); a test
fails when it is stale, so edit the definitions, not this file:
`src/tether/session/sansio/settings.py`, `src/tether/queue/core/settings.py`,
`src/tether/queue/config.py`, `src/tether/queue/limits.py`, `src/tether/queue/auth.py`
(`USER_KEYS`) and `src/tether/queue/remotes.py` (`REMOTE_KEYS`).

An unknown name or a value of the wrong type is a `TypeError`, a value out of range a
`ValueError` (in the configuration file: an error naming the key); nothing is ignored.
"""

SESSIONS = """## Session settings

Keyword arguments of `tether.connect(url, ...)` and `tether.serve(handler, url, ...)`, of the
streams drop-ins (`open_connection`, `start_server`, `create_connection`, `create_server`),
of `QueueManager.listen()` and of `QueueClient.connect()` (which takes `connect_timeout` as
a parameter of its own). Each side of a session has its own settings; the meanings say
which ones the peer learns. Type checkers know them as
`tether.session.sansio.settings.SessionOptions`.
"""

QUEUES = """## Queue settings

Keyword arguments of `create_queue(name, ...)` on a `QueueManager` or a `QueueClient`, and
the keys of a `[queues.NAME]` table in the service's configuration file. Durations are
seconds (a `datetime.timedelta` also works from Python). Type checkers know them as
`tether.queue.core.settings.QueueOptions`.
"""

SERVICE = """## The queue service's configuration file

`tether qm serve --config FILE` reads a TOML file; `--listen` and `--data-dir` on the
command line override the file's `listen` and `data_dir`. Relative paths are relative to
the working directory.

### Top-level keys
"""

LIMITS = """### `[limits]`

What the service takes on, and what one client may cost it: a request over a limit gets
`LimitExceeded` naming the limit, a connection over `max_connections(_per_address)` is
refused at HELLO.
"""

TLS = """### `[tls]`

Required by a `tls://` listen URL, refused without one.
"""

QUEUE_TABLES = """### `[queues.NAME]`

A queue created at start (or checked, when it exists, against these settings): any of
the [queue settings](#queue-settings) above, e.g.

```toml
[queues.orders]
receive_error_handling = "move"
time_to_live = 3600
```
"""

USERS = """### `[users.NAME]`

With any user, every client authenticates as one of them (`tether qm passwd` prints a
password hash) and may do what its permissions say.
"""

REMOTES = """### `[remotes."HOST:PORT"]`

How this queue manager's forwarders reach the queue manager at HOST:PORT (the authority of
a `tether://HOST:PORT/queue` address): over TCP and anonymously unless said here.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _python(value: Any) -> str:
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value!r}`"


def _toml(value: Any) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, list):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    return f"`{value!r}`"


def _table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _checked_rows(cls: type) -> list[tuple[str, str, str, str]]:
    """(name, default, range, meaning) of a settings class whose fields carry a check."""
    return [(f"`{f.name}`", _python(f.default), f.metadata["check"].describe(), f.metadata["doc"])
            for f in dataclasses.fields(cls)]


def _service_rows(prefix: str) -> list[tuple[str, str, str, str]]:
    """The ServiceConfig fields set by TOML keys of one table ("" for the top level)."""
    rows = []
    for f in dataclasses.fields(ServiceConfig):
        key = f.metadata.get("toml")
        if key is None:
            continue
        table, _, name = key.rpartition(".")
        if table == prefix:
            rows.append((f"`{name}`", _toml(_default(f)), f.metadata["range"], f.metadata["doc"]))
    return rows


def _limit_rows() -> list[tuple[str, str, str, str]]:
    return [(f"`{f.name}`", _toml(f.default), f.metadata["range"], f.metadata["doc"])
            for f in dataclasses.fields(ServiceLimits)]


def render() -> str:
    """The text of docs/configuration.md."""
    settings_head = ("Setting", "Default", "Range", "Meaning")
    key_head = ("Key", "Default", "Takes", "Meaning")
    parts = [
        HEADER,
        SESSIONS, _table(settings_head, _checked_rows(SessionSettings)),
        QUEUES, _table(settings_head, _checked_rows(QueueSettings)),
        SERVICE, _table(key_head, _service_rows("")),
        LIMITS, _table(key_head, _service_rows("limits") + _limit_rows()),
        TLS, _table(key_head, _service_rows("tls")),
        QUEUE_TABLES,
        USERS, _table(("Key", "Meaning"), [(f"`{k}`", v) for k, v in USER_KEYS.items()]),
        REMOTES, _table(("Key", "Meaning"), [(f"`{k}`", v) for k, v in REMOTE_KEYS.items()]),
    ]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the reference (or with --check, exit 1 when the file differs from it)."""
    parser = argparse.ArgumentParser(prog="python -m tether.docs_config", description=__doc__.splitlines()[0]
                                     if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale, write nothing")
    parser.add_argument("--output", type=Path, default=DEFAULT_PATH, help=f"default: {DEFAULT_PATH}")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run python -m tether.docs_config", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
