"""`tether qm check` and `tether qm repair`: a queue manager's journal from the shell.

    tether qm check --data-dir ./data     # one line per problem, then a summary
    tether qm repair --data-dir ./data    # keep every intact record, quarantine the rest

check exits 0 when the journal is clean, 1 when it found damage (a torn tail included, which
Journal.open would cut off by itself; the summary says whether Journal.open refuses the
journal), 2 for a usage error (no such directory). repair exits 0 after a successful repair
(or when there was nothing to repair), 1 if it failed, 2 for a usage error. Both refuse to
run while a queue manager holds the directory. Every failure is one line on stderr
("tether: error: ..."), never a traceback.
"""
from __future__ import annotations

import argparse
import sys

from ...errors import TetherError
from .repair import JournalReport, check, repair

EXIT_OK = 0
EXIT_DAMAGED = 1
EXIT_FAILED = 1
EXIT_USAGE = 2


def _data_dir(parser: argparse.ArgumentParser, action: str) -> None:
    parser.add_argument("--data-dir", required=True, metavar="DIR",
                        help=f"the queue manager's data directory (its journal) to {action}")


def configure_check(parser: argparse.ArgumentParser) -> None:
    """Options of `tether qm check`."""
    _data_dir(parser, "check; nothing in it is changed")


def configure_repair(parser: argparse.ArgumentParser) -> None:
    """Options of `tether qm repair`."""
    _data_dir(parser, "repair (stop the queue manager first)")


def _fail(exc: BaseException, status: int) -> int:
    print(f"tether: error: {exc}", file=sys.stderr)
    return status


def _run(work, args: argparse.Namespace) -> JournalReport | int:
    """`work(args.data_dir)`, or the exit status of its failure (the line already printed)."""
    try:
        return work(args.data_dir)
    except ValueError as exc:            # what --data-dir names is no directory
        return _fail(exc, EXIT_USAGE)
    except (TetherError, OSError) as exc:
        return _fail(exc, EXIT_FAILED)


def main_check(args: argparse.Namespace) -> int:
    """`tether qm check --data-dir DIR`."""
    report = _run(check, args)
    if isinstance(report, int):
        return report
    for problem in report.problems:
        print(problem)
    counted = f"{report.records} intact record(s) in {report.segments} segment(s)"
    if report.clean:
        print(f"journal in {report.directory}: clean: {counted}")
    elif report.corruption:
        print(f"journal in {report.directory}: {counted}; {len(report.problems)} problem(s): the queue manager "
              f"refuses this journal. `tether qm repair --data-dir {report.directory}` keeps every intact record "
              f"and quarantines the damaged bytes")
    else:
        print(f"journal in {report.directory}: {counted}; a torn tail (the end of a write cut short by a crash), "
              f"which the queue manager cuts off when it opens the journal")
    if report.leftovers:
        print(f"note: {len(report.leftovers)} file(s) left by a journal rewrite, which the queue manager removes "
              f"when it opens the journal")
    return EXIT_OK if report.clean else EXIT_DAMAGED


def main_repair(args: argparse.Namespace) -> int:
    """`tether qm repair --data-dir DIR`."""
    report = _run(repair, args)
    if isinstance(report, int):
        return report
    if report.clean:
        print(f"journal in {report.directory}: clean, nothing to repair: {report.records} intact record(s)")
        return EXIT_OK
    moved = {id(problem) for problem, _ in report.quarantined}
    for problem, target in report.quarantined:
        print(f"quarantined {problem} -> {target}")
    for problem in report.problems:
        if id(problem) not in moved:
            print(f"noted {problem}")
    total = sum(problem.length for problem, _ in report.quarantined)
    print(f"journal in {report.directory} repaired: kept {report.records} intact record(s) in a new journal "
          f"starting at {report.new_start}; quarantined {len(report.quarantined)} damaged range(s), {total} bytes")
    return EXIT_OK
