"""`tether bench queue --remote`: a queue manager service in a child process (durable,
fsync policy as given) and QueueClients in this one; 64 B messages by default.

    remote-{size}-send-{n}             n concurrent client.send() calls (each count of
                                       `--remote-senders`: 1, 8, 64) fill a queue for
                                       `--seconds`
    remote-{size}-recv+complete-{n}    n consumers receive and complete all of it
    forward-{size}                     store-and-forward: an embedded queue manager here with
                                       `--count` messages in its transmission queue, delivered
                                       to the service once it comes up (from the first landed
                                       message to the last)
    baseline-fdatasync-{size}          os.write + os.fdatasync of `--senders` messages per sync
                                       on the same disk, in the same run: every row's ratio
    peer-redis-aof-always-{size}-xadd / -consume
                                       Redis Streams with appendfsync always on this machine
                                       (bench/redis_peer.py), where redis-server and the redis
                                       package are present; each tether row also carries its
                                       ratio to these (vs_redis)
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import sys
import tempfile
import time

from .fsync_baseline import fdatasync_baseline
from .report import Progress, Result, apply_ratios, make_result

SIZES = {"64B": 64, "1KiB": 1024}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, default=100_000, help="messages per phase")
    parser.add_argument("--senders", type=int, default=256,
                        help="concurrent senders, and concurrent consumers (default 256)")
    parser.add_argument("--prefetch", type=int, default=1024, help="the consumers' client prefetch")
    # `tether bench queue --remote` passes queue_bench's options (same names) to run()
    parser.add_argument("--sizes", default="64B", help="comma-separated: 64B,1KiB")
    parser.add_argument("--fsync", default="always", choices=("always", "interval", "never"),
                        help="journal fsync policy of the service")
    parser.add_argument("--no-forward", action="store_true", help="skip the store-and-forward row")
    parser.add_argument("--data-dir", default=None, help="directory for journals (default: a temporary one)")
    parser.add_argument("--baseline-seconds", type=float, default=1.0)
    parser.add_argument("--remote-senders", default="1,8,64",
                        help="comma-separated counts of concurrent senders (and consumers) for the remote rows")
    parser.add_argument("--seconds", type=float, default=2.0, help="how long each remote send row runs")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _start_service(data_dir: str, fsync: str, port: int = 0) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tether", "qm", "serve", "--listen", f"tcp://127.0.0.1:{port}",
        "--data-dir", data_dir, "--fsync", fsync, "--log-level", "WARNING",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
    except BaseException:
        proc.kill()
        raise
    if not line.startswith(b"tether qm: ready "):
        proc.kill()
        raise RuntimeError(f"the queue manager service did not start: {line!r}")
    return proc, line.split()[-1].decode()


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _timed(label: str, workers: int, seconds: float, work, progress: Progress) -> tuple[int, float, list[float]]:
    """`workers` tasks call work() until `seconds` have passed: (calls, seconds, latencies)."""
    latencies: list[float] = []
    clock = time.perf_counter
    start = clock()
    stop_at = start + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        record = latencies.append
        while clock() < stop_at:
            t0 = clock()
            await work()
            record(clock() - t0)
            done += 1
            if not done & 4095:
                progress.update(label, int((clock() - start) * 1000), int(seconds * 1000))

    await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = clock() - start
    progress.done(label)
    return done, elapsed, latencies


async def _counted(label: str, workers: int, count: int, work, progress: Progress) -> tuple[float, list[float]]:
    """`workers` tasks call work() `count` times in all: (seconds, latencies)."""
    latencies: list[float] = []
    remaining = count
    clock = time.perf_counter

    async def worker() -> None:
        nonlocal remaining
        record = latencies.append
        while remaining > 0:
            remaining -= 1
            t0 = clock()
            await work()
            record(clock() - t0)
            done = count - remaining
            if not done & 4095:
                progress.update(label, done, count)

    start = clock()
    await asyncio.gather(*(worker() for _ in range(workers)))
    seconds = clock() - start
    progress.done(label)
    return seconds, latencies


async def _client_rows(size_name: str, size: int, args: argparse.Namespace, directory: str,
                       progress: Progress, senders: list[int]) -> list[Result]:
    from ..queue.client import QueueClient

    proc, url = await _start_service(os.path.join(directory, f"service-{size_name}"), args.fsync)
    rows: list[Result] = []
    try:
        body = (bytes(range(256)) * (size // 256 + 1))[:size]
        for n in senders:
            queue = f"bench-{n}"
            extra = {"senders": n, "fsync": args.fsync, "prefetch": args.prefetch}
            async with QueueClient.connect(url, prefetch=args.prefetch) as client:
                await client.create_queue(queue)
                send = client.send

                async def send_one(send=send, queue: str = queue) -> None:
                    await send(queue, body)

                sent, send_s, send_lat = await _timed(f"remote {size_name} send x{n}", n, args.seconds,
                                                      send_one, progress)
                receive = client.receive

                async def receive_one(receive=receive, queue: str = queue) -> None:
                    message = await receive(queue)
                    await message.complete()

                recv_s, recv_lat = await _counted(f"remote {size_name} recv+complete x{n}", n, sent,
                                                  receive_one, progress)
            rows.append(make_result(f"remote-{size_name}-send-{n}", sent, size, send_s, send_lat, **extra))
            rows.append(make_result(f"remote-{size_name}-recv+complete-{n}", sent, size, recv_s, recv_lat, **extra))
    finally:
        await _stop(proc)
    return rows


async def _forward_row(size_name: str, size: int, args: argparse.Namespace, directory: str,
                       progress: Progress) -> Result:
    from ..queue.client import QueueClient
    from ..queue.manager import QueueManager

    port = _free_port()
    address = f"tether://127.0.0.1:{port}/bench"
    body = (bytes(range(256)) * (size // 256 + 1))[:size]
    label = f"forward {size_name}"
    target_dir = os.path.join(directory, f"target-{size_name}")
    os.makedirs(target_dir, exist_ok=True)
    async with QueueManager.open(target_dir) as target:      # the queue, defined before start
        await target.create_queue("bench")
    proc = None
    try:
        async with QueueManager.open(os.path.join(directory, f"sender-{size_name}"), fsync=args.fsync) as qm:
            await qm.send(address, body)
            for start in range(1, args.count, 4096):
                await asyncio.gather(*(qm.send(address, body) for _ in range(min(4096, args.count - start))))
                progress.update(f"{label} (filling)", start, args.count)
            proc, url = await _start_service(target_dir, args.fsync, port)
            ready_t = time.perf_counter()
            # timed from the first message landing, so the forwarder's reconnect backoff
            # (it has been retrying since the fill) is not counted
            start_t, first = 0.0, 0
            async with QueueClient.connect(url) as client:
                while True:
                    depth = (await client.queue_info("bench")).depth
                    now = time.perf_counter()
                    if not start_t and depth:
                        start_t, first = now, depth
                    progress.update(label, depth, args.count)
                    if depth >= args.count:
                        break
                    await asyncio.sleep(0.005)
            seconds = max(now - start_t, 1e-6)
            counted = args.count - first
            if counted <= 0:        # everything landed before the first look: time it all
                counted, seconds = args.count, max(now - ready_t, 1e-6)
    finally:
        if proc is not None:
            await _stop(proc)
    progress.done(label)
    return make_result(f"forward-{size_name}", counted, size, seconds, fsync=args.fsync)


async def run(args: argparse.Namespace, progress: Progress) -> list[Result]:
    """The remote rows of every size and sender count, the forwarding row, each size's
    baseline, and the Redis peer rows where Redis is here."""
    from . import redis_peer

    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    for size_name in sizes:
        if size_name not in SIZES:
            raise ValueError(f"--sizes: unknown {size_name!r} (choose from {', '.join(SIZES)})")
    try:
        senders = [int(n) for n in args.remote_senders.split(",") if n.strip()]
    except ValueError:
        raise ValueError(f"--remote-senders must be comma-separated counts, not {args.remote_senders!r}") from None
    if not senders or min(senders) < 1:
        raise ValueError(f"--remote-senders must be counts >= 1, not {args.remote_senders!r}")
    if args.count < 1 or args.senders < 1 or args.prefetch < 1:
        raise ValueError("--count, --senders and --prefetch must be >= 1")
    if not args.seconds > 0:
        raise ValueError(f"--seconds must be > 0, not {args.seconds!r}")
    if args.data_dir is not None:
        os.makedirs(args.data_dir, exist_ok=True)
    directory = tempfile.mkdtemp(prefix="tether-bench-remote-", dir=args.data_dir)
    results: list[Result] = []
    why_no_redis = redis_peer.unavailable()
    if why_no_redis is not None:
        print(f"tether bench: the peer-redis-aof-always rows are skipped: {why_no_redis}", file=sys.stderr)
    loop = asyncio.get_running_loop()
    try:
        for size_name in sizes:
            size = SIZES[size_name]
            group = await _client_rows(size_name, size, args, directory, progress, senders)
            if not getattr(args, "no_forward", False):
                group.append(await _forward_row(size_name, size, args, directory, progress))
            label = f"baseline {size_name} fdatasync"
            progress.update(label, 0, 1, force=True)
            per_s = await loop.run_in_executor(
                None, fdatasync_baseline, directory, size, float(args.senders), args.baseline_seconds)
            progress.done(label)
            baseline = f"baseline-fdatasync-{size_name}"
            group.append(make_result(baseline, int(per_s), size, 1.0, msgs_per_fsync=args.senders))
            if why_no_redis is None:
                peer = await loop.run_in_executor(
                    None, redis_peer.run, directory, size, size_name, max(senders), args.seconds,
                    lambda label: progress.update(label, 0, 1, force=True))
                _compare_with_redis(group, peer)
                group.extend(peer)
            apply_ratios(group, baseline)
            results.extend(group)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return results


def _compare_with_redis(rows: list[Result], peer: list[Result]) -> None:
    """Each tether row's msgs/s over Redis's (XADD for sends and forwarding, XREADGROUP +
    XACK for receives), in the row's `vs_redis`."""
    xadd, consume = peer[0].msgs_per_s, peer[1].msgs_per_s
    for row in rows:
        if row.name.startswith(("remote-", "forward-")):
            versus = consume if "recv" in row.name else xadd
            if versus > 0:
                row.extra["vs_redis"] = round(row.msgs_per_s / versus, 3)
