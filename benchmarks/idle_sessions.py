"""How much memory a server needs per idle session (issue 3's goal: 10,000 idle sessions
with keepalives under 300 MB RSS in one server process).

    python benchmarks/idle_sessions.py --sessions 10000 --scheme udp

The server runs in a child process; this process opens the sessions, lets several keepalive
intervals pass, checks a sample of sessions still works, and prints the server's RSS before
and after, and per session.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time

SERVER = r"""
import asyncio, os, sys, json
import tether

async def main():
    scheme, timeout = sys.argv[1], float(sys.argv[2])
    server = await tether.serve(None, f"{scheme}://127.0.0.1:0", inactivity_timeout=timeout,
                                max_pending_channels=16384)
    async def accept_all():
        while True:
            session = await server.accept()
            asyncio.ensure_future(echo(session))
    async def echo(session):
        try:
            async for m in session:
                await session.send(m)
        except tether.TetherError:
            pass  # the client aborts every session at the end
    asyncio.ensure_future(accept_all())
    print(json.dumps({"port": server.address[1], "pid": os.getpid()}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

import uvloop
uvloop.run(main())
"""


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def main(args: argparse.Namespace) -> dict:
    import tether

    child = subprocess.Popen([sys.executable, "-c", SERVER, args.scheme, str(args.inactivity)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(child.stdout.readline())
        base = rss_mb(info["pid"])
        url = f"{args.scheme}://127.0.0.1:{info['port']}"
        sessions = []
        start = time.perf_counter()
        for i in range(0, args.sessions, 500):
            batch = min(500, args.sessions - i)
            sessions += await asyncio.gather(*[
                tether.connect(url, inactivity_timeout=args.inactivity) for _ in range(batch)])
            print(f"connected {len(sessions)}/{args.sessions}", file=sys.stderr, flush=True)
        connect_s = time.perf_counter() - start
        idle = args.inactivity * 1.5  # several keepalive intervals (inactivity/4 each)
        print(f"idle for {idle:.0f} s ...", file=sys.stderr, flush=True)
        await asyncio.sleep(idle)
        sample = sessions[:: max(1, len(sessions) // 50)]
        for s in sample:
            await s.send(b"ping")
        replies = await asyncio.wait_for(asyncio.gather(*[s.recv() for s in sample]), 30)
        alive = sum(r == b"ping" for r in replies)
        after = rss_mb(info["pid"])
        for s in sessions:
            s.abort()
        return {"sessions": len(sessions), "connect_s": round(connect_s, 2),
                "server_rss_mb_before": round(base, 1), "server_rss_mb_idle": round(after, 1),
                "kb_per_session": round((after - base) * 1024 / len(sessions), 1),
                "sample_alive": f"{alive}/{len(sample)}"}
    finally:
        child.stdin.close()
        child.terminate()
        child.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--scheme", choices=["udp", "tcp"], default="udp")
    parser.add_argument("--inactivity", type=float, default=8.0,
                        help="inactivity_timeout of both sides (keepalives every quarter of it)")
    import uvloop
    print(json.dumps(uvloop.run(main(parser.parse_args())), indent=2))
