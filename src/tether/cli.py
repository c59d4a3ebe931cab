"""The `tether` command: benchmarks, the queue manager service and its journal, and queue tools.

Errors print one clear line to stderr and exit non-zero; never a traceback. Exit statuses
(tether.exit_codes): 0 done, 1 an error, 2 a usage error, 3 a timeout, 128 + the signal
when SIGINT or SIGTERM interrupted a command.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from . import __version__, exit_codes
from .errors import TetherError
from .runner import new_loop_runner

# `tether bench KIND`: module with configure(parser) and async run(args, progress) -> list[Result]
BENCH_KINDS = {
    "session": "tether.bench.session_bench",
    "queue": "tether.bench.queue_bench",
}
# Other sub-commands: module with configure(parser) and main(args) -> int
COMMANDS = {
    "send": ("tether.queue.cli_tools", "send a message to a queue URL"),
    "recv": ("tether.queue.cli_tools", "receive messages from a queue URL"),
    "peek": ("tether.queue.cli_tools", "show waiting messages of a queue URL without receiving them"),
    "queues": ("tether.queue.cli_tools", "list the queues of a queue manager and their counts"),
}
# `tether queue create|delete|purge`: configure(parser) and main(args) -> int
QUEUE_ADMIN = "tether.queue.queue_command"
# `tether qm check|repair`: configure_NAME(parser) and main_NAME(args) -> int
QM_JOURNAL_TOOLS = "tether.queue.store.admin"
# `tether qm passwd`: configure(parser) and main(args) -> int
QM_PASSWD = "tether.queue.passwd_command"


def _available(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name) or exc.name == module:
            return False
        raise
    return True


def _output_options(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("--json", action="store_true", default=default,
                        help="print JSON instead of a table")
    parser.add_argument("--quiet", action="store_true", default=default, help="no progress lines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether", description=__doc__.splitlines()[0],
                                     epilog="exit status: 0 done, 1 error, 2 usage error, 3 timeout, "
                                            "130/143 interrupted by SIGINT/SIGTERM")
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="throughput/latency beside a same-run baseline")
    kinds = bench.add_subparsers(dest="kind")
    for kind, module in BENCH_KINDS.items():
        if _available(module):
            p = kinds.add_parser(kind, help=f"{kind} benchmark")
            importlib.import_module(module).configure(p)
            _output_options(p, argparse.SUPPRESS)  # accepted after the kind too
    _output_options(bench, False)

    qm = sub.add_parser("qm", help="queue manager service, and its journal")
    qm_sub = qm.add_subparsers(dest="qm_command", required=True)
    if _available("tether.queue.serve_command"):
        serve = qm_sub.add_parser("serve", help="run a queue manager service")
        importlib.import_module("tether.queue.serve_command").configure(serve)
    passwd = qm_sub.add_parser("passwd", help="print the password hash for a user of the service (password on stdin)")
    importlib.import_module(QM_PASSWD).configure(passwd)
    admin = importlib.import_module(QM_JOURNAL_TOOLS)
    for name, help_text in (("check", "list the damage in a queue manager's journal (changes nothing)"),
                            ("repair", "keep every intact record of a damaged journal, quarantine the rest")):
        getattr(admin, f"configure_{name}")(qm_sub.add_parser(name, help=help_text))

    for name, (module, help_text) in COMMANDS.items():
        if _available(module):
            p = sub.add_parser(name, help=help_text)
            getattr(importlib.import_module(module), f"configure_{name}")(p)
    if _available(QUEUE_ADMIN):
        queue = sub.add_parser("queue", help="create, delete or purge a queue of a queue manager")
        importlib.import_module(QUEUE_ADMIN).configure(queue)
    return parser


async def _run_bench(args: argparse.Namespace) -> int:
    from .bench.report import Progress, emit

    kinds = [args.kind] if args.kind else [k for k, m in BENCH_KINDS.items() if _available(m)]
    progress = Progress(enabled=not args.quiet)
    everything = []
    for kind in kinds:
        module = importlib.import_module(BENCH_KINDS[kind])
        if not args.kind:
            # `tether bench` alone: each kind with its defaults
            sub = argparse.ArgumentParser()
            module.configure(sub)
            kind_args = sub.parse_args([])
            kind_args.json, kind_args.quiet = args.json, args.quiet
        else:
            kind_args = args
        results = await module.run(kind_args, progress)
        everything.extend(results)
        if not args.json:
            heading = getattr(module, "title", None)
            print(f"\n== tether bench {kind}{': ' + heading(kind_args) if heading else ''} ==")
            emit(results, as_json=False)
    if args.json:
        emit(everything, as_json=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tether` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run = new_loop_runner()
    try:
        if args.command == "bench":
            return run(_run_bench(args))
        if args.command == "qm":
            if args.qm_command == "serve":
                return importlib.import_module("tether.queue.serve_command").main(args)
            if args.qm_command == "passwd":
                return importlib.import_module(QM_PASSWD).main(args)
            return getattr(importlib.import_module(QM_JOURNAL_TOOLS), f"main_{args.qm_command}")(args)
        if args.command == "queue":
            return importlib.import_module(QUEUE_ADMIN).main(args)
        module = importlib.import_module(COMMANDS[args.command][0])
        return getattr(module, f"main_{args.command}")(args)
    except KeyboardInterrupt:
        print("tether: interrupted", file=sys.stderr)
        return exit_codes.INTERRUPTED_BASE + 2      # SIGINT
    except (TetherError, OSError, ValueError) as exc:
        print(f"tether: error: {exc}", file=sys.stderr)
        return exit_codes.TIMEOUT if isinstance(exc, TimeoutError) else exit_codes.ERROR


if __name__ == "__main__":
    sys.exit(main())
