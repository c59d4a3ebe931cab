"""Tables for the `tether` command: drawn with `rich` when the output is a terminal,
plain aligned text otherwise (what scripts and tests read)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import IO


def print_table(titles: Sequence[str], rows: Sequence[Sequence[str]], out: IO[str], *,
                terminal: bool | None = None, numeric_from: int = 1) -> None:
    """Print `rows` under `titles` to `out`: columns from `numeric_from` on are right-aligned.
    `terminal` (default: whether `out` is one) draws the table with rich."""
    if terminal is None:
        terminal = out.isatty()
    if terminal:
        from rich.console import Console
        from rich.table import Table

        table = Table(show_edge=False, pad_edge=False, header_style="bold")
        for i, title in enumerate(titles):
            table.add_column(title, justify="right" if i >= numeric_from else "left")
        for row in rows:
            table.add_row(*row)
        Console(file=out, force_terminal=True).print(table)
        return
    widths = [max([len(title)] + [len(row[i]) for row in rows]) for i, title in enumerate(titles)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.rjust(w) if i >= numeric_from else cell.ljust(w)
                         for i, (cell, w) in enumerate(zip(cells, widths))).rstrip()

    print(line(titles), file=out)
    for row in rows:
        print(line(row), file=out)
