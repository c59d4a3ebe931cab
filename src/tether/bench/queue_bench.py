"""`tether bench queue`: an embedded queue manager, durable (journal, fsync policy as given)
and volatile, 64 B and 1 KiB messages: `--senders` concurrent senders fill a queue, then
as many consumers receive and complete every message. Rows per mode and size:

    {mode}-{size}-send            the send phase (latency: each send call)
    {mode}-{size}-recv+complete   the receive phase (latency: receive + complete)
    {mode}-{size}-total           every message sent, received and completed / both phases

    {mode}-{size}-concurrent      senders and consumers at once (latency: send to receive)

and, durable only, what transactional batching buys (one consumer, a full queue, each row
`--seconds` of receiving; the queue is refilled between, outside the timing):

    durable-{size}-tx-per-message one transaction per message: receive, commit (one fsync each)
    durable-{size}-receive-batch  receive_batch(max_messages=--batch-size): one commit, one
                                  fsync, per batch; `vs_tx_per_message` is its msgs/s over the
                                  row above, same run

With `--store postgresql://...` the same rows run once more as `postgres-{size}-...`, on a
queue manager whose store is that database (docs/storage.md), each with `vs_durable`: its
msgs/s over the journal's row of the same name, same run (a database the benchmark may
write to: it creates, fills and deletes the queue `bench`).

Beside them, measured in the same run on the same disk, `baseline-fdatasync-{size}`: a
plain os.write + os.fdatasync loop writing as many messages per fdatasync as the durable
send phase averaged per journal batch (`tether.bench.fsync_baseline`). Every row's ratio
divides by the baseline of its size, so the journal's overhead is a ratio. A journal under
fsync "always" writes into segments whose blocks were zero-filled ahead (its fdatasync
commits no file size), so `baseline-fdatasync-prezeroed-{size}` runs the same loop
overwriting a zero-filled file, and every row also carries `vs_prezeroed`: its msgs/s over
that baseline's.

Shared machines are noisy: everything runs `--repeat` times, interleaved (each mode, then
the baseline), and each row keeps its best run, as timeit does (the table's ratio is best
over best); `paired_ratio_median` (in --json) is the median over repeats of each run
divided by the baseline measured right after it.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time

from ..queue.manager import QueueManager
from .fsync_baseline import fdatasync_baseline
from .report import Progress, Result, apply_ratios, make_result

SIZES = {"64B": 64, "1KiB": 1024}
MODES = ("durable", "volatile")
SAMPLE_MASK = 7            # time one call in 8: the clock reads cost as much as a volatile send


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, default=50_000,
                        help="with --remote: messages in the forwarding row")
    parser.add_argument("--senders", type=int, default=64,
                        help="concurrent senders, and concurrent consumers (default 64)")
    parser.add_argument("--sizes", default="64B,1KiB", help="comma-separated: 64B,1KiB")
    parser.add_argument("--modes", default="durable,volatile", help="comma-separated: durable,volatile")
    parser.add_argument("--fsync", default="always", choices=("always", "interval", "never"),
                        help="journal fsync policy of the durable runs")
    parser.add_argument("--data-dir", default=None,
                        help="directory for the journal and the baseline file (default: a temporary "
                             "directory under the system temp dir)")
    parser.add_argument("--baseline-seconds", type=float, default=2.0,
                        help="how long the fdatasync baseline runs per size and repeat")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of everything, interleaved; each row keeps its best (default 3)")
    parser.add_argument("--remote", action="store_true",
                        help="the queue manager as a service in a child process, a QueueClient here, "
                             "and store-and-forward between two (bench/queue_remote_bench.py)")
    parser.add_argument("--prefetch", type=int, default=1024, help="with --remote: the client's prefetch")
    parser.add_argument("--no-forward", action="store_true", help="with --remote: skip the forwarding row")
    parser.add_argument("--remote-senders", default="1,8,64",
                        help="with --remote: comma-separated counts of concurrent senders (and consumers)")
    parser.add_argument("--batch-size", type=int, default=100,
                        help="messages per receive_batch in the durable receive-batch row (default 100)")
    parser.add_argument("--store", default=None, metavar="URL",
                        help="also run every row on a queue manager whose store is this PostgreSQL "
                             "database (postgresql://...; rows postgres-*, with vs_durable)")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="how long each send row (and the concurrent row) runs; the receive rows "
                             "take all that was sent")


def _choices(text: str, allowed, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    for item in items:
        if item not in allowed:
            raise ValueError(f"--{what}: unknown {item!r} (choose from {', '.join(allowed)})")
    if not items:
        raise ValueError(f"--{what}: nothing chosen")
    return items


async def _sends(label: str, workers: int, seconds: float, qm: QueueManager, body: bytes,
                 progress: Progress) -> tuple[int, float, list[float]]:
    """`workers` tasks sending `body` until `seconds` have passed: (messages, seconds, the
    latency of every 8th). The calls are made right in the worker loop, so the figure is
    the queue's, not a wrapper's."""
    latencies: list[float] = []
    clock = time.perf_counter
    send = qm.send
    start = clock()
    stop_at = start + seconds
    sent = 0

    async def sender() -> None:
        nonlocal sent
        record = latencies.append
        while clock() < stop_at:
            sent += 1
            if sent & SAMPLE_MASK:
                await send("bench", body)
                continue
            t0 = clock()
            await send("bench", body)
            record(clock() - t0)
            if not sent & 1023:
                progress.update(label, int((clock() - start) * 1000), int(seconds * 1000))

    await asyncio.gather(*(sender() for _ in range(workers)))
    elapsed = clock() - start
    progress.done(label)
    return sent, elapsed, latencies


async def _phase(label: str, workers: int, count: int, qm: QueueManager, body: bytes | None,
                 progress: Progress) -> tuple[float, list[float]]:
    """`workers` tasks sharing `count` receives, each followed by its complete; seconds
    taken and the latency of every 8th."""
    latencies: list[float] = []
    remaining = count
    clock = time.perf_counter
    receive = qm.receive

    async def consumer() -> None:
        nonlocal remaining
        record = latencies.append
        while remaining > 0:
            remaining -= 1
            if remaining & SAMPLE_MASK:
                await (await receive("bench")).complete()
                continue
            t0 = clock()
            await (await receive("bench")).complete()
            record(clock() - t0)
            if not remaining & 1023:
                progress.update(label, count - remaining, count)

    start = clock()
    await asyncio.gather(*(consumer() for _ in range(workers)))
    seconds = clock() - start
    progress.done(label)
    return seconds, latencies


async def _concurrent(qm: QueueManager, label: str, workers: int, count: int, body: bytes,
                      progress: Progress) -> tuple[float, list[float]]:
    """`workers` senders and `workers` consumers at once; each message carries its send
    time in a header, so the latency is send call to receive."""
    latencies: list[float] = []
    to_send = count
    to_receive = count
    clock = time.perf_counter

    async def sender() -> None:
        nonlocal to_send
        while to_send > 0:
            to_send -= 1
            await qm.send("bench", body, headers={"t": clock()})

    async def consumer() -> None:
        nonlocal to_receive
        while to_receive > 0:
            to_receive -= 1
            message = await qm.receive("bench")
            latencies.append(clock() - message.headers["t"])
            await message.complete()
            done = count - to_receive
            if not done & 1023:
                progress.update(label, done, count)

    start = clock()
    await asyncio.gather(*(sender() for _ in range(workers)), *(consumer() for _ in range(workers)))
    seconds = clock() - start
    progress.done(label)
    return seconds, latencies


async def _consume_for(label: str, qm: QueueManager, body: bytes, seconds: float, per_take: int,
                       progress: Progress) -> tuple[int, float, list[float]]:
    """One consumer taking `per_take` messages per transaction (receive_batch; 1: a plain
    transaction per message) for `seconds` of its own time: (messages, seconds, each
    transaction's latency). The queue is refilled (send_many, untimed) when it runs dry."""
    clock = time.perf_counter
    latencies: list[float] = []
    taken = 0
    spent = 0.0
    fill = [body] * 1000
    while spent < seconds:
        if (await qm.queue_info("bench")).depth < per_take:
            for _ in range(20):
                await qm.send_many("bench", fill)
        t0 = clock()
        if per_take == 1:
            async with qm.transaction() as tx:
                if await tx.receive("bench", 0) is not None:
                    taken += 1
        else:
            async with qm.receive_batch("bench", per_take, 0) as batch:
                taken += len(batch)
        took = clock() - t0
        spent += took
        latencies.append(took)
        progress.update(label, int(spent * 1000), int(seconds * 1000))
    progress.done(label)
    await qm.purge_queue("bench")
    return taken, spent, latencies


async def _run_mode(mode: str, size_name: str, size: int, args: argparse.Namespace,
                    directory: str, progress: Progress) -> tuple[list[Result], float]:
    """The rows of one mode and size, and the average messages per journal batch."""
    data_dir = args.store if mode == "postgres" else os.path.join(directory, f"qm-{mode}-{size_name}")
    body = (bytes(range(256)) * (size // 256 + 1))[:size]
    async with QueueManager.open(data_dir, fsync=args.fsync) as qm:
        if "bench" in await qm.queues():
            await qm.delete_queue("bench")      # (a database keeps what an earlier run left)
        await qm.create_queue("bench", durable=(mode != "volatile"))
        journal = getattr(qm.operations.store, "journal", None)
        batches_before = journal.batch_count if journal is not None else 0
        count, send_s, send_lat = await _sends(f"{mode} {size_name} send", args.senders, args.seconds, qm,
                                               body, progress)
        batches = (journal.batch_count - batches_before) if journal is not None else 0
        recv_s, recv_lat = await _phase(f"{mode} {size_name} recv+complete", args.senders, count, qm,
                                        None, progress)
        info = await qm.queue_info("bench")
        if info.depth or info.in_flight:
            raise RuntimeError(f"the benchmark left messages behind: {dict(info)}")
        both_s, both_lat = await _concurrent(qm, f"{mode} {size_name} concurrent", args.senders, count,
                                             body, progress)
        batch_rows = []
        if mode != "volatile":
            one = await _consume_for(f"{mode} {size_name} tx per message", qm, body, args.seconds, 1, progress)
            many = await _consume_for(f"{mode} {size_name} receive_batch", qm, body, args.seconds,
                                      args.batch_size, progress)
            batch_rows = [("tx-per-message", one, 1), ("receive-batch", many, args.batch_size)]
        if mode == "postgres":
            await qm.delete_queue("bench")
    if mode != "postgres":
        shutil.rmtree(data_dir, ignore_errors=True)
    prefix = f"{mode}-{size_name}"
    per_batch = count / batches if batches else 0.0
    extra = {"senders": args.senders, "fsync": args.fsync if mode == "durable" else None}
    if mode == "postgres":
        extra["store"] = "postgresql"
    if per_batch:
        extra["msgs_per_fsync"] = round(per_batch, 1)
    rows = [
        make_result(f"{prefix}-send", count, size, send_s, send_lat, **extra),
        make_result(f"{prefix}-recv+complete", count, size, recv_s, recv_lat, **extra),
        make_result(f"{prefix}-total", count, size, send_s + recv_s, **extra),
        make_result(f"{prefix}-concurrent", count, size, both_s, both_lat, **extra),
    ]
    for name, (taken, seconds, latencies), per_take in batch_rows:
        rows.append(make_result(f"{prefix}-{name}", taken, size, seconds, latencies, consumers=1,
                                messages_per_transaction=per_take, fsync=args.fsync))
    if batch_rows:
        one, many = rows[-2], rows[-1]
        many.extra["vs_tx_per_message"] = round(many.msgs_per_s / max(one.msgs_per_s, 1e-9), 2)
    return rows, per_batch


async def run(args: argparse.Namespace, progress: Progress) -> list[Result]:
    """Every mode and size, then each size's fdatasync baseline; ratios per size."""
    if args.remote:
        from .queue_remote_bench import run as run_remote

        return await run_remote(args, progress)
    sizes = _choices(args.sizes, SIZES, "sizes")
    modes = _choices(args.modes, MODES, "modes")
    if args.store is not None:
        from ..queue.store.postgres import is_postgres_url

        if not is_postgres_url(args.store):
            raise ValueError(f"--store must be a postgresql:// URL, not {args.store!r}")
        modes.append("postgres")
    if args.count < 1 or args.senders < 1:
        raise ValueError("--count and --senders must be >= 1")
    if not args.seconds > 0:
        raise ValueError(f"--seconds must be > 0, not {args.seconds!r}")
    if args.repeat < 1:
        raise ValueError("--repeat must be >= 1")
    if not 2 <= args.batch_size <= 4096:
        raise ValueError(f"--batch-size must be 2..4096, not {args.batch_size}")
    if args.data_dir is not None:
        os.makedirs(args.data_dir, exist_ok=True)
    directory = tempfile.mkdtemp(prefix="tether-bench-queue-", dir=args.data_dir)
    results: list[Result] = []
    try:
        for size_name in sizes:
            size = SIZES[size_name]
            best: dict[str, Result] = {}
            paired: dict[str, list[float]] = {}
            for _ in range(args.repeat):
                per_batch = float(args.senders)
                rows: list[Result] = []
                for mode in modes:
                    mode_rows, batch = await _run_mode(mode, size_name, size, args, directory, progress)
                    if mode == "durable" and batch:
                        per_batch = batch
                    rows.extend(mode_rows)
                # right after the runs it is compared with, so the shared disk's mood is alike
                base = await _baseline(size_name, size, per_batch, directory, args, progress)
                zeroed = await _baseline(size_name, size, per_batch, directory, args, progress, prezeroed=True)
                for row in rows:
                    paired.setdefault(row.name, []).append(row.msgs_per_s / max(base.msgs_per_s, 1e-9))
                _keep_best(best, rows + [base, zeroed])
            group = list(best.values())
            apply_ratios(group, f"baseline-fdatasync-{size_name}")
            prezeroed = best[f"baseline-fdatasync-prezeroed-{size_name}"].msgs_per_s
            for row in group:
                row.extra["vs_prezeroed"] = round(row.msgs_per_s / max(prezeroed, 1e-9), 3)
            for row in group:
                if row.name.startswith("postgres-"):
                    journal_row = best.get("durable-" + row.name[len("postgres-"):])
                    if journal_row is not None:
                        row.extra["vs_durable"] = round(row.msgs_per_s / max(journal_row.msgs_per_s, 1e-9), 3)
            for row in group:
                if row.name in paired:
                    ratios = sorted(paired[row.name])
                    row.extra["paired_ratio_median"] = round(ratios[len(ratios) // 2], 3)
            results.extend(group)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return results


def _keep_best(best: dict[str, Result], rows: list[Result]) -> None:
    for row in rows:
        if row.name not in best or row.msgs_per_s > best[row.name].msgs_per_s:
            best[row.name] = row


async def _baseline(size_name: str, size: int, per_batch: float, directory: str,
                    args: argparse.Namespace, progress: Progress, prezeroed: bool = False) -> Result:
    """The write + fdatasync loop, `per_batch` messages of `size` bytes per fdatasync:
    appending, or overwriting a zero-filled file (`prezeroed`)."""
    name = f"baseline-fdatasync-prezeroed-{size_name}" if prezeroed else f"baseline-fdatasync-{size_name}"
    label = f"baseline {size_name} fdatasync{' prezeroed' if prezeroed else ''}"
    progress.update(label, 0, 1, force=True)
    loop = asyncio.get_running_loop()
    per_s = await loop.run_in_executor(
        None, fdatasync_baseline, directory, size, max(1.0, per_batch), args.baseline_seconds, prezeroed)
    progress.done(label)
    return make_result(name, int(per_s), size, 1.0, msgs_per_fsync=round(per_batch, 1))
