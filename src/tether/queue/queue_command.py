"""`tether queue create|delete|purge URL`: queue administration from the shell.

    tether queue create tether://127.0.0.1:7600/orders --set time_to_live=3600 --set receive_error_handling=move
    tether queue purge tether://127.0.0.1:7600/orders        # prints how many were removed
    tether queue delete tether://127.0.0.1:7600/orders

A service with users lets only a user with `admin = true` do these (docs/security.md).
`--set NAME=VALUE` takes the queue settings of docs/queues.md; VALUE is read as the
setting's type says (true/false, a number, `none` where a setting may be None, or text),
and a wrong one is refused before anything is sent, naming the setting.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import fields
from typing import Any

from ..table_output import print_table
from .cli_tools import add_connection_options, connect_client, queue_url, run_command
from .core.settings import QueueSettings

ACTIONS = {
    "create": "create a queue (or check that it exists with these settings)",
    "delete": "delete a queue, its sub-queues and every message in them",
    "purge": "remove every message waiting in a queue or sub-queue; prints how many",
}
_TYPES = {f.name: str(f.type) for f in fields(QueueSettings)}


def configure(parser: argparse.ArgumentParser) -> None:
    """`tether queue ACTION URL ...`: one sub-command per action."""
    actions = parser.add_subparsers(dest="queue_action", required=True, metavar="{create,delete,purge}")
    for action, help_text in ACTIONS.items():
        sub = actions.add_parser(action, help=help_text, description=help_text)
        sub.add_argument("url", help="tether://HOST:PORT/QUEUE (tls://HOST:PORT/QUEUE over TLS)")
        if action == "create":
            sub.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="settings",
                             help=f"a queue setting (repeatable): {', '.join(_TYPES)}")
        sub.add_argument("--json", action="store_true", help="print JSON")
        add_connection_options(sub)


def setting_value(name: str, text: str) -> Any:
    """The value of queue setting `name` written as `text` on the command line; ValueError
    naming the setting when it is unknown or `text` is not of its type."""
    kind = _TYPES.get(name)
    if kind is None:
        raise ValueError(f"--set {name}: unknown queue setting (known: {', '.join(_TYPES)})")
    optional = "None" in kind
    if optional and text.lower() == "none":
        return None
    if kind.startswith("bool"):
        if text.lower() not in ("true", "false"):
            raise ValueError(f"--set {name}={text}: expected true or false")
        return text.lower() == "true"
    if kind.startswith("int"):
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"--set {name}={text}: expected an integer" + (" or none" if optional else "")) from None
    if kind.startswith("float"):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ValueError(f"--set {name}={text}: expected a number of seconds"
                             + (" or none" if optional else "")) from None
        return value
    return text


def parse_settings(items: list[str]) -> dict[str, Any]:
    """The settings of `--set NAME=VALUE ...`, validated as create_queue would (ValueError
    or TypeError naming the setting)."""
    settings: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--set {item!r}: expected NAME=VALUE")
        if name in settings:
            raise ValueError(f"--set {name}: given twice")
        settings[name] = setting_value(name, text)
    QueueSettings.from_kwargs(**settings)
    return settings


def main(args: argparse.Namespace) -> int:
    """`tether queue create|delete|purge URL`: exit status 0 when done."""
    async def work() -> int:
        service, queue = queue_url(args.url)
        settings = parse_settings(args.settings) if args.queue_action == "create" else {}
        client = await connect_client(service, args)
        try:
            if args.queue_action == "create":
                result: Any = (await client.create_queue(queue, **settings)).as_dict()
            elif args.queue_action == "delete":
                await client.delete_queue(queue)
                result = None
            else:
                result = await client.purge_queue(queue)
        finally:
            await client.close()
        _report(args, queue, result)
        return 0

    address = None
    try:
        address = queue_url(args.url)[0]
    except ValueError:
        pass        # work() raises it again, as the error
    return run_command(work, address)


def _report(args: argparse.Namespace, queue: str, result: Any) -> None:
    action = args.queue_action
    if args.json:
        key = {"create": "settings", "delete": "deleted", "purge": "purged"}[action]
        print(json.dumps({"queue": queue, key: True if action == "delete" else result}))
        return
    if action == "create":
        print(f"queue {queue} created (or already there with these settings):")
        rows = [[name, "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)]
                for name, value in result.items()]
        print_table(["setting", "value"], rows, sys.stdout, numeric_from=2)
    elif action == "delete":
        print(f"queue {queue} deleted")
    else:
        print(f"purged {result} messages from {queue}")
