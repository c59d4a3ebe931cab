"""`tether bench session`: ordered exactly-once sessions over UDP and TCP, beside a baseline
measured in the same run: the same messages over raw uvloop TCP with no acknowledgements
(`baseline-uvloop-tcp`, see `tether.bench.session_peer`). Every row's ratio divides by the
baseline row of the same message size.

Where sender and receiver run:
- by default both in this process, on one event loop, over loopback, for the sessions and
  the baseline alike (`--loss P` adds UDP rows through an in-process lossy relay);
- `--processes`: each in a process of its own, over loopback;
- `--link veth`: each in a process of its own, in two network namespaces joined by a veth
  pair with an MTU of 1500 (`tether.bench.netns`), made for the run and removed after it;
  `--loss P` adds rows where iptables drops packets at random in both directions.

Every row runs for `--seconds` (default 2), or moves exactly `--count` messages. Messages
count only once the receiving application has them, each checked for its number, and the
receiver's count must equal the sender's.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
from typing import Any

from . import session_peer
from .relay import UdpRelay
from .report import Progress, Result, make_result

DEFAULT_SECONDS = 2.0
PEER_STARTUP_TIMEOUT = 60.0     # a worker process's import, bind and first line
_SIZE = re.compile(r"^(\d+)(B|KiB)?$")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS,
                        help=f"how long each row sends (default {DEFAULT_SECONDS:g})")
    parser.add_argument("--count", type=int, default=None,
                        help="send exactly this many messages per row instead of running --seconds")
    parser.add_argument("--link", choices=("loopback", "veth"), default="loopback",
                        help="veth: sender and receiver in two network namespaces joined by a "
                             "veth pair (MTU 1500), each in its own process (needs root)")
    parser.add_argument("--processes", action="store_true",
                        help="sender and receiver in separate processes (always so with --link veth)")
    parser.add_argument("--loss", type=float, default=0.0,
                        help="also run rows dropping this fraction of packets (0..0.5): through an "
                             "in-process relay (UDP) on loopback, with iptables on --link veth")
    parser.add_argument("--segment", action="store_true",
                        help="--link veth: no packet above the MTU crosses the veth (no TSO/GSO "
                             "super-packets), as on a wire; implied by --loss")
    parser.add_argument("--window", type=int, default=4096, help="max_transfer_window (default 4096)")
    parser.add_argument("--transports", default="udp,tcp", help="comma-separated: udp,tcp")
    parser.add_argument("--sizes", default="64B,1KiB",
                        help="comma-separated message sizes: 64B, 1KiB, 256 ... (multiples of 8, 16..65536)")


def parse_size(text: str) -> tuple[str, int]:
    """'64B' -> ('64B', 64), '1KiB' or '1024' -> ('1KiB', 1024)."""
    m = _SIZE.match(text.strip())
    if not m:
        raise ValueError(f"--sizes: unknown size {text!r} (like 64B, 1KiB or 256)")
    size = int(m.group(1)) * (1024 if m.group(2) == "KiB" else 1)
    session_peer.check_size(size)
    return (f"{size // 1024}KiB" if size % 1024 == 0 else f"{size}B"), size


def _validate(args: argparse.Namespace) -> tuple[list[str], list[tuple[str, int]]]:
    if not 0 < args.seconds <= 3600:
        raise ValueError(f"--seconds must be in (0, 3600], not {args.seconds:g}")
    if args.count is not None and args.count < 1:
        raise ValueError(f"--count must be at least 1, not {args.count}")
    if not 0.0 <= args.loss <= 0.5:
        raise ValueError(f"--loss must be in [0, 0.5], not {args.loss:g}")
    if not 1 <= args.window <= 4096:
        raise ValueError(f"--window must be in 1..4096, not {args.window}")
    transports = [t for t in args.transports.split(",") if t]
    for t in transports:
        if t not in ("udp", "tcp"):
            raise ValueError(f"--transports: unknown transport {t!r} (udp, tcp)")
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes:
        raise ValueError("--sizes: no size given")
    if args.segment and args.link != "veth":
        raise ValueError("--segment applies to --link veth only")
    if args.loss and args.processes and args.link == "loopback":
        raise ValueError("--loss with --processes needs --link veth (on loopback, loss runs "
                         "in one process through a relay)")
    return transports, sizes


def title(args: argparse.Namespace) -> str:
    """What the table measured, for its heading."""
    if args.link == "veth":
        text = "veth (MTU 1500), sender and receiver in separate processes"
        if args.loss:
            text += f"; loss {args.loss:g} each way"
        if args.loss or args.segment:
            text += "; no packets above the MTU"
    elif args.processes:
        text = "loopback, sender and receiver in separate processes"
    else:
        text = "loopback, sender and receiver in one process"
    how_long = f"{args.count:,} messages" if args.count else f"{args.seconds:g} s"
    return f"{text}; {how_long} a row, window {args.window}"


class _InProcess:
    """Both sides on this event loop, over loopback (and optionally a lossy UDP relay)."""

    async def row(self, kind: str, size: int, args: argparse.Namespace,
                  relay_loss: float | None = None) -> tuple[dict, dict]:
        side = session_peer.receiver(kind, size, args.window)
        port = await side.start("127.0.0.1")
        relay = None
        target = ("127.0.0.1", port)
        if relay_loss is not None:
            relay = await UdpRelay(target, loss=relay_loss, seed=1).start()
            target = relay.address
        try:
            receiving = asyncio.ensure_future(side.run())
            sending = asyncio.ensure_future(session_peer.send(
                kind, target[0], target[1], size, args.window, args.seconds, args.count))
            try:
                done, _ = await asyncio.wait((receiving, sending), return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()          # the first failure, if any
                sent, received = sending.result(), await receiving
                # one process does both sides: its CPU time is no one side's
                sent.pop("sender_cpu_s", None)
                received.pop("receiver_cpu_s", None)
                return sent, received
            finally:
                for task in (receiving, sending):
                    if not task.done():
                        task.cancel()
                await asyncio.gather(receiving, sending, return_exceptions=True)
        finally:
            if relay is not None:
                relay.close()


class _Processes:
    """Each side in a process of its own: `python -m tether.bench.session_peer`, inside
    the veth namespaces when there is a link."""

    def __init__(self, link: Any = None) -> None:
        self.link = link
        self.receiver_host = link.receiver_address if link else "127.0.0.1"

    def _argv(self, side: str, argv: list[str]) -> list[str]:
        argv = [sys.executable, "-m", "tether.bench.session_peer", *argv]
        return self.link.command(side, argv) if self.link else argv

    async def row(self, kind: str, size: int, args: argparse.Namespace) -> tuple[dict, dict]:
        common = ["--kind", kind, "--size", str(size), "--window", str(args.window)]
        procs: list[asyncio.subprocess.Process] = []

        async def start(side: str, argv: list[str]) -> asyncio.subprocess.Process:
            proc = await asyncio.create_subprocess_exec(
                *self._argv(side, argv), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": _pythonpath()})
            procs.append(proc)
            return proc

        async def finish(proc: asyncio.subprocess.Process, what: str, timeout: float) -> dict:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
            lines = out.decode().splitlines()
            if proc.returncode != 0 or not lines:
                detail = err.decode().strip().splitlines()
                raise OSError(f"{kind} {what} failed (exit status {proc.returncode}): "
                              f"{detail[-1] if detail else 'no output'}")
            return json.loads(lines[-1])

        try:
            receiver = await start("receiver", ["receive", "--host", self.receiver_host, *common])
            first = await asyncio.wait_for(receiver.stdout.readline(), PEER_STARTUP_TIMEOUT)
            if not first:
                await finish(receiver, "receiver", PEER_STARTUP_TIMEOUT)   # raises its error
                raise OSError(f"{kind} receiver ended before it listened")
            port = json.loads(first)["port"]
            extra = ["--seconds", repr(args.seconds)] + (["--count", str(args.count)] if args.count else [])
            sender = await start("sender", ["send", "--host", self.receiver_host, "--port", str(port),
                                            *common, *extra])
            budget = PEER_STARTUP_TIMEOUT + args.seconds + 2 * session_peer.CLOSE_TIMEOUT
            sending = asyncio.ensure_future(finish(sender, "sender", budget))
            receiving = asyncio.ensure_future(finish(receiver, "receiver", budget))
            try:
                done, _ = await asyncio.wait((receiving, sending), return_when=asyncio.FIRST_EXCEPTION)
                for task in (receiving, sending):   # the receiver's failure says more
                    if task in done and task.exception() is not None:
                        raise task.exception()
                return await sending, await receiving
            finally:
                for task in (receiving, sending):
                    task.cancel()
                await asyncio.gather(receiving, sending, return_exceptions=True)
        finally:
            for proc in procs:              # only the processes this row started
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()


def _pythonpath() -> str:
    """This tether first, so the workers run the same code as the bench."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    rest = os.environ.get("PYTHONPATH")
    return here + (os.pathsep + rest if rest else "")


def _result(name: str, size: int, sent: dict, received: dict, **extra) -> Result:
    if received["received"] != sent["sent"]:
        raise session_peer.DeliveryError(
            f"{name}: the sender sent {sent['sent']:,} messages and the receiving application "
            f"got {received['received']:,}")
    # from the first send to the last delivery, and never shorter than the time the sender
    # kept sending (its last batch may be delivered before the deadline it stopped at)
    elapsed = max(received["end"], sent["stopped"]) - sent["start"]
    counters = {k: v for k, v in {**sent, **received}.items()
                if k in ("retransmission_timeouts", "fast_retransmits", "tail_probes", "duplicates", "refused",
                         "srtt", "cwnd", "receiver_packets", "receiver_sent")}
    # CPU per message on each side (separate processes only): what a loaded machine blurs
    # least
    count = max(received["received"], 1)
    for side in ("sender", "receiver"):
        if f"{side}_cpu_s" in {**sent, **received}:
            counters[f"{side}_cpu_us_per_msg"] = round({**sent, **received}[f"{side}_cpu_s"] * 1e6 / count, 3)
    return make_result(name, received["received"], size, elapsed, received["latencies"],
                       resent=sent["resent"], elapsed_s=round(elapsed, 3), messages=received["received"],
                       **counters, **extra)


async def _rows(args: argparse.Namespace, transports: list[str], sizes: list[tuple[str, int]],
                runner: Any, link: Any, progress: Progress) -> list[Result]:
    where = "veth" if link else ("loopback-processes" if args.processes else "loopback")
    segmented = {"segmented": link.segment} if link else {}
    results: list[Result] = []

    async def row(name: str, kind: str, size: int, loss: float, **kw) -> Result:
        sent, received = await runner.row(kind, size, args, **kw)
        progress.done(name)
        return _result(name, size, sent, received, loss=loss, link=where, **segmented,
                       transport="tcp-raw" if kind == "raw" else kind, **(
                           {"relay": True} if kw else {}))

    for label, size in sizes:
        suffix = "" if label == "64B" else f"-{label}"
        group = [await row(f"baseline-uvloop-tcp{suffix}", "raw", size, 0.0)]
        for t in transports:
            group.append(await row(f"{t}-{label}", t, size, 0.0))
        if args.loss and link is None and "udp" in transports:
            # the same relay without loss first: the fair lossless figure for the lossy row
            group.append(await row(f"udp-{label}-relay", "udp", size, 0.0, relay_loss=0.0))
            group.append(await row(f"udp-{label}-loss{args.loss:g}", "udp", size, args.loss,
                                   relay_loss=args.loss))
        elif args.loss and link is not None:
            link.set_loss(args.loss)
            try:
                group.append(await row(f"baseline-uvloop-tcp{suffix}-loss{args.loss:g}", "raw",
                                       size, args.loss))
                for t in transports:
                    group.append(await row(f"{t}-{label}-loss{args.loss:g}", t, size, args.loss))
            finally:
                link.set_loss(0.0)
        baseline = group[0]
        for r in group:
            r.ratio = r.msgs_per_s / baseline.msgs_per_s
            r.baseline = baseline.name
        results.extend(group)
    return results


async def run(args: argparse.Namespace, progress: Progress) -> list[Result]:
    """Every configured row, then ratios against the same-size baseline."""
    transports, sizes = _validate(args)
    if args.link == "loopback" and not args.processes:
        return await _rows(args, transports, sizes, _InProcess(), None, progress)
    if args.link == "loopback":
        return await _rows(args, transports, sizes, _Processes(), None, progress)

    from .netns import VethLink, check_environment

    check_environment(args.loss)
    # SIGTERM (and SIGHUP) end the run the way Ctrl-C does, through the finally below
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    stopped: list[int] = []

    def stop(signum: int) -> None:
        stopped.append(signum)
        task.cancel()

    handled = [s for s in (signal.SIGTERM, signal.SIGHUP) if _add_signal_handler(loop, s, stop)]
    try:
        with VethLink(segment=args.segment or args.loss > 0) as link:
            return await _rows(args, transports, sizes, _Processes(link), link, progress)
    except asyncio.CancelledError:
        if stopped:
            raise KeyboardInterrupt from None
        raise
    finally:
        for s in handled:
            loop.remove_signal_handler(s)


def _add_signal_handler(loop: asyncio.AbstractEventLoop, signum: int, callback) -> bool:
    try:
        loop.add_signal_handler(signum, callback, signum)
    except (NotImplementedError, RuntimeError, ValueError):
        return False            # not the main thread, or no signals here
    return True
