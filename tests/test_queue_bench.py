"""`tether bench queue`: rows, ratios to the same-run baseline, JSON, and clear errors."""
from __future__ import annotations

import json

from tether.cli import main


def test_bench_queue_json_rows_and_ratios(capsys, tmp_path):
    code = main(["bench", "--json", "--quiet", "queue", "--seconds", "0.05", "--senders", "8",
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
        zeroed = rows[f"baseline-fdatasync-prezeroed-{size}"]
        assert zeroed["msgs_per_s"] > 0 and zeroed["msgs_per_fsync"] == base["msgs_per_fsync"]
        send = rows[f"durable-{size}-send"]
        assert send["vs_prezeroed"] == round(send["msgs_per_s"] / zeroed["msgs_per_s"], 3)
        assert rows[f"durable-{size}-send"]["msgs_per_fsync"] >= 1
        assert rows[f"durable-{size}-send"]["p50_us"] > 0
        one, batch = rows[f"durable-{size}-tx-per-message"], rows[f"durable-{size}-receive-batch"]
        assert one["msgs_per_s"] > 0 and batch["msgs_per_s"] > 0
        assert batch["ratio"] == batch["msgs_per_s"] / base["msgs_per_s"]
        assert batch["messages_per_transaction"] == 100 and one["messages_per_transaction"] == 1
        assert batch["vs_tx_per_message"] == round(batch["msgs_per_s"] / one["msgs_per_s"], 2)
        assert f"volatile-{size}-receive-batch" not in rows
    assert list(tmp_path.iterdir()) == []     # the journals and baseline files are removed


def test_bench_queue_table(capsys, tmp_path):
    code = main(["bench", "--quiet", "queue", "--seconds", "0.05", "--sizes", "64B", "--modes", "volatile",
                 "--repeat", "1", "--baseline-seconds", "0.05", "--data-dir", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "volatile-64B-send" in out and "baseline-fdatasync-64B" in out and "1.00x" in out


def test_bench_queue_bad_arguments(capsys):
    assert main(["bench", "--quiet", "queue", "--sizes", "2KiB"]) == 1
    err = capsys.readouterr().err
    assert "--sizes" in err and "2KiB" in err and "Traceback" not in err
    assert main(["bench", "--quiet", "queue", "--repeat", "0"]) == 1
    assert main(["bench", "--quiet", "queue", "--batch-size", "1"]) == 1
    assert "--repeat" in capsys.readouterr().err
    assert main(["bench", "--quiet", "queue", "--seconds", "0"]) == 1
    assert "--seconds" in capsys.readouterr().err
    assert main(["bench", "--quiet", "queue", "--remote", "--remote-senders", "1,x"]) == 1
    assert "--remote-senders" in capsys.readouterr().err


def test_bench_queue_remote_rows_per_sender_count_and_redis_when_present(capsys, tmp_path):
    from tether.bench import redis_peer

    code = main(["bench", "--json", "--quiet", "queue", "--remote", "--seconds", "0.2", "--remote-senders", "1,4",
                 "--sizes", "64B", "--count", "2000", "--baseline-seconds", "0.05", "--data-dir", str(tmp_path)])
    assert code == 0
    captured = capsys.readouterr()
    rows = {r["name"]: r for r in json.loads(captured.out)["results"]}
    for n in (1, 4):
        assert rows[f"remote-64B-send-{n}"]["senders"] == n and rows[f"remote-64B-send-{n}"]["msgs_per_s"] > 0
        assert rows[f"remote-64B-recv+complete-{n}"]["msgs_per_s"] > 0
    assert rows["forward-64B"]["msgs_per_s"] > 0
    if redis_peer.unavailable() is None:
        assert rows["peer-redis-aof-always-64B-xadd"]["msgs_per_s"] > 0
        assert rows["peer-redis-aof-always-64B-consume"]["msgs_per_s"] > 0
        assert rows["remote-64B-send-4"]["vs_redis"] > 0
    else:
        assert "peer-redis-aof-always rows are skipped" in captured.err
