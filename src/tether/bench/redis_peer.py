"""The `peer-redis-aof-always` rows of `tether bench queue --remote`: Redis Streams as a durable
queue with an fsync behind every write, on this machine, in the same run, so that every user
sees the comparison on their own hardware.

A private `redis-server` on a free loopback port (`appendonly yes`, `appendfsync always`, no
snapshots, its files in the bench's temporary directory) takes XADD pipelined in batches
(`senders` commands per round trip: the same concurrency the tether rows use), then
XREADGROUP + XACK in batches of as many. It needs the `redis-server` command and the `redis`
package; without them the rows are skipped and the bench says so.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable

from .report import Result, make_result


def unavailable() -> str | None:
    """Why the Redis rows cannot run here (None: they can)."""
    if shutil.which("redis-server") is None:
        return "no redis-server on PATH"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the redis package is not installed (pip install redis)"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(directory: str, size: int, size_name: str, batch: int, seconds: float,
        progress: Callable[[str], None]) -> list[Result]:
    """XADD for `seconds` (pipelined `batch` at a time), then consume all of it; two rows.
    Runs in a thread: the redis client is blocking."""
    import redis

    data_dir = os.path.join(directory, f"redis-{size_name}")
    os.makedirs(data_dir, exist_ok=True)
    port = _free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", data_dir,
         "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        body = (bytes(range(256)) * (size // 256 + 1))[:size]
        progress(f"peer redis {size_name} xadd")
        sent = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            pipe = client.pipeline(transaction=False)
            for _ in range(batch):
                pipe.xadd("bench", {"b": body})
            pipe.execute()
            sent += batch
        add_s = time.perf_counter() - start
        client.xgroup_create("bench", "consumers", id="0")
        progress(f"peer redis {size_name} consume")
        got = 0
        start = time.perf_counter()
        while got < sent:
            answer = client.xreadgroup("consumers", "c", {"bench": ">"}, count=batch)
            if not answer:
                break
            ids = [entry[0] for entry in answer[0][1]]
            client.xack("bench", "consumers", *ids)
            got += len(ids)
        consume_s = time.perf_counter() - start
        client.close()
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    extra = {"pipeline": batch, "appendfsync": "always"}
    return [make_result(f"peer-redis-aof-always-{size_name}-xadd", sent, size, add_s, **extra),
            make_result(f"peer-redis-aof-always-{size_name}-consume", got, size, consume_s, **extra)]
