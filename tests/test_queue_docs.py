"""docs/queues.md says what the code does: its settings table is QueueSettings, its file map
is the queue package, its error table is every queue error, its protocol table is
protocol.py's."""
from __future__ import annotations

import dataclasses
import pathlib
import re

import tether
from tether.queue import protocol as P
from tether.queue.core.settings import QueueSettings

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "queues.md").read_text()


def _table(heading: str) -> list[list[str]]:
    section = DOC.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[1:]


def test_every_setting_is_in_the_table_with_its_default():
    rows = {row[0].strip("`"): row[1] for row in _table("Settings")}
    fields = {f.name: f.default for f in dataclasses.fields(QueueSettings)}
    assert set(rows) == set(fields)
    for name, default in fields.items():
        shown = rows[name]
        if isinstance(default, bool) or default is None:
            assert f"`{default}`" in shown, (name, shown)
        elif isinstance(default, str):
            assert f'`"{default}"`' in shown, (name, shown)
        else:
            assert re.match(rf"{default:g}\b", shown), (name, shown)


def test_the_file_map_is_the_queue_package():
    section = DOC.split("## Where it lives\n", 1)[1]
    listed = set(re.findall(r"^\s+([a-z_]+\.py)\b", section, re.M))
    package = ROOT / "src" / "tether" / "queue"
    actual = {p.name for p in package.rglob("*.py") if p.name != "__init__.py" and "store" not in p.parts}
    assert listed == actual, (sorted(actual - listed), sorted(listed - actual))


def test_every_queue_error_is_in_the_error_table():
    listed = {row[0].strip("`") for row in _table("Errors")}
    errors = {name for name in tether.errors.__all__
              if issubclass(getattr(tether.errors, name), tether.QueueError) and name != "QueueError"}
    assert listed == errors, (sorted(errors - listed), sorted(listed - errors))


def test_the_protocol_table_has_every_request_with_its_number():
    section = DOC.split("## The queue protocol\n", 1)[1].split("\n## ", 1)[0]
    for op, (name, _) in P.REQUESTS.items():
        upper = name.upper().replace("-", "_")
        assert re.search(rf"{upper} \({op}\)", section), f"{upper} ({op}) is not in the protocol table"
    assert f"(version {P.VERSION})" in section
    for op, name in ((P.REPLY, "REPLY"), (P.ERROR, "ERROR"), (P.DELIVER, "DELIVER"),
                     (P.CONSUMER_ERROR, "CONSUMER_ERROR")):
        assert f"{name}({op})" in section


STORAGE = (ROOT / "docs" / "storage.md").read_text()


def test_storage_names_every_file_of_the_store_package():
    section = STORAGE.split("## Where it lives\n", 1)[1]
    listed = set(re.findall(r"^\s+([a-z_]+\.py)\b", section, re.M))
    actual = {p.name for p in (ROOT / "src" / "tether" / "queue" / "store").glob("*.py") if p.name != "__init__.py"}
    assert listed == actual, (sorted(actual - listed), sorted(listed - actual))


def test_storage_lists_every_journal_operation():
    from tether.queue.core import records as R

    section = STORAGE.split("## What is written\n", 1)[1].split("\n## ", 1)[0]
    listed = {row.split("|")[1].strip().strip("`") for row in section.splitlines()
              if row.startswith("| `")}
    assert listed == set(R.OP_LENGTHS)
