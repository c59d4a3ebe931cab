"""Progress lines while a benchmark runs, and the results table or JSON at the end."""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, Any


@dataclass
class Result:
    """One row of a benchmark table."""

    name: str
    msgs_per_s: float
    mb_per_s: float
    p50_us: float | None = None
    p99_us: float | None = None
    p999_us: float | None = None
    ratio: float | None = None          # msgs_per_s / the same run's baseline row
    baseline: str | None = None         # which row `ratio` divides by
    extra: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        row = asdict(self)
        extra = row.pop("extra")
        row.update(extra)
        return row


def percentiles_us(latencies_s: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """p50, p99, p99.9 of latencies given in seconds, as microseconds."""
    if not latencies_s:
        return None, None, None
    ordered = sorted(latencies_s)
    n = len(ordered)

    def at(q: float) -> float:
        return ordered[min(n - 1, int(q * n))] * 1e6

    return at(0.50), at(0.99), at(0.999)


def make_result(name: str, count: int, payload_size: int, seconds: float,
                latencies_s: Sequence[float] = (), **extra) -> Result:
    """A Result from a count of messages of one size moved in `seconds`."""
    seconds = max(seconds, 1e-9)
    p50, p99, p999 = percentiles_us(latencies_s)
    return Result(name, count / seconds, count * payload_size / seconds / 1e6, p50, p99, p999,
                  extra=dict(extra))


def apply_ratios(results: list[Result], baseline_name: str) -> None:
    """Set each row's ratio to its msgs/s over the baseline row's (same run)."""
    base = next((r for r in results if r.name == baseline_name), None)
    if base is None or base.msgs_per_s <= 0:
        return
    for r in results:
        r.ratio = r.msgs_per_s / base.msgs_per_s
        r.baseline = baseline_name


class Progress:
    """A one-line progress indicator on stderr: rewritten in place on a terminal, a line
    per second otherwise (so CI logs stay short)."""

    def __init__(self, stream: IO[str] | None = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self._last = 0.0

    def update(self, label: str, done: int, total: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < (0.2 if self.tty else 1.0):
            return
        self._last = now
        pct = 100.0 * done / total if total else 100.0
        line = f"{label}: {done}/{total} ({pct:.0f}%)"
        if self.tty:
            self.stream.write("\r\x1b[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self, label: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.write(f"{label}: done\n")
        self.stream.flush()


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(results: list[Result]) -> str:
    """The results as an aligned text table."""
    header = ("name", "msgs/s", "MB/s", "p50 us", "p99 us", "p99.9 us", "ratio")
    rows = [header] + [
        (r.name, _fmt(r.msgs_per_s, ",.0f"), _fmt(r.mb_per_s, ",.1f"), _fmt(r.p50_us, ",.0f"),
         _fmt(r.p99_us, ",.0f"), _fmt(r.p999_us, ",.0f"),
         "-" if r.ratio is None else f"{r.ratio:.2f}x")
        for r in results
    ]
    if any("resent" in r.extra for r in results):   # sessions: messages the sender resent
        rows = [row + (cell,) for row, cell in zip(rows, ["resent"] + [
            _fmt(r.extra.get("resent"), ",d") for r in results])]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def emit(results: list[Result], as_json: bool, stream: IO[str] | None = None, *,
         native: bool | None = None) -> None:
    """Print the table, or `{"results": [...]}` when as_json (with `"native"`, whether the
    compiled core ran, when given)."""
    stream = stream or sys.stdout
    if as_json:
        document: dict[str, Any] = {"results": [r.as_json() for r in results]}
        if native is not None:
            document["native"] = native
        json.dump(document, stream, indent=2)
        stream.write("\n")
    else:
        stream.write(format_table(results) + "\n")
    stream.flush()
