"""`tether bench queue`: rows, ratios to the same-run baseline, JSON, and clear errors."""
from __future__ import annotations

import json

from tether.cli import main


def test_bench_queue_json_rows_and_ratios(capsys, tmp_path):
    code = main(["bench", "--json", "--quiet", "queue", "--count", "300", "--senders", "8",
                 "--repeat", "1", "--baseline-seconds", "0.05", "--data-dir", str(tmp_path)])
    assert code == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    for size in ("64B", "1KiB"):
        base = rows[f"baseline-fdatasync-{size}"]
        assert base["ratio"] == 1.0 and base["msgs_per_s"] > 0
        for mode in ("durable", "volatile"):
            for phase in ("send", "recv+complete", "total", "concurrent"):
                row = rows[f"{mode}-{size}-{phase}"]
                assert row["msgs_per_s"] > 0
                assert row["baseline"] == f"baseline-fdatasync-{size}"
                assert row["ratio"] == row["msgs_per_s"] / base["msgs_per_s"]
                assert row["paired_ratio_median"] > 0
        assert rows[f"durable-{size}-send"]["msgs_per_fsync"] >= 1
        assert rows[f"durable-{size}-send"]["p50_us"] > 0
    assert list(tmp_path.iterdir()) == []     # the journals and baseline files are removed


def test_bench_queue_table(capsys, tmp_path):
    code = main(["bench", "--quiet", "queue", "--count", "100", "--sizes", "64B", "--modes", "volatile",
                 "--repeat", "1", "--baseline-seconds", "0.05", "--data-dir", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "volatile-64B-send" in out and "baseline-fdatasync-64B" in out and "1.00x" in out


def test_bench_queue_bad_arguments(capsys):
    assert main(["bench", "--quiet", "queue", "--sizes", "2KiB"]) == 1
    err = capsys.readouterr().err
    assert "--sizes" in err and "2KiB" in err and "Traceback" not in err
    assert main(["bench", "--quiet", "queue", "--repeat", "0"]) == 1
    assert "--repeat" in capsys.readouterr().err
