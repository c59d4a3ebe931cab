"""`tether qm serve`: a queue manager service from the command line.

    tether qm serve --listen tcp://127.0.0.1:7600 --data-dir ./data [--config qm.toml]
    tether qm serve --listen tcp://0.0.0.0:7600 --store postgresql://tether@db/tether --config qm.toml
                    [--metrics 127.0.0.1:9600]

Prints "tether qm: metrics http://HOST:PORT/metrics" (with metrics) and then
"tether qm: ready URL ..." once every address is bound; SIGTERM or SIGINT shut it down
cleanly (open transactions roll back, the journal is closed) and it exits 0. TLS, users and remotes
come from the configuration file (config.py); it refuses to start, before opening
anything, when anonymous access would reach beyond loopback (docs/security.md).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys

from ..runner import new_loop_runner
from ..session.adapters.url import parse as parse_url
from . import config as cfg
from .manager import QueueManager
from .service import QueueService
from .store.postgres import is_postgres_url


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of `tether qm serve`."""
    parser.add_argument("--listen", action="append", default=None, metavar="URL",
                        help="tcp://HOST:PORT or tls://HOST:PORT (with [tls] in --config) to serve "
                             "(repeatable; default tcp://127.0.0.1:7600, loopback)")
    parser.add_argument("--data-dir", default=None, help="journal directory (required here or in --config)")
    parser.add_argument("--store", default=None, metavar="URL",
                        help="postgresql://USER@HOST:PORT/DB: keep the queues in that database, shared with "
                             "every queue manager serving it (instead of --data-dir; needs tether[postgres])")
    parser.add_argument("--config", default=None, metavar="FILE", help="TOML configuration file")
    parser.add_argument("--fsync", default=None, choices=("always", "interval", "never"),
                        help="journal fsync policy (default always)")
    parser.add_argument("--metrics", default=None, metavar="HOST:PORT",
                        help="serve Prometheus metrics at http://HOST:PORT/metrics (port 0: any free port)")
    parser.add_argument("--log-level", default=None, type=str.upper, choices=cfg.LOG_LEVELS,
                        help="DEBUG, INFO (default), WARNING or ERROR, in any case")


def _config(args: argparse.Namespace) -> cfg.ServiceConfig:
    config = cfg.load(args.config) if args.config else cfg.ServiceConfig()
    if args.listen:
        config.listen = list(args.listen)
    if args.data_dir is not None and args.store is not None:
        raise ValueError("give --data-dir or --store, not both")
    if args.data_dir is not None:
        config.data_dir = args.data_dir
    if args.store is not None:
        if not is_postgres_url(args.store):
            raise ValueError(f"--store must be a postgresql:// URL, not {args.store!r}")
        config.data_dir = args.store
    if args.fsync is not None:
        config.fsync = args.fsync
    if args.log_level is not None:
        config.log_level = args.log_level
    if args.metrics is not None:
        config.metrics = args.metrics
    config.validate()
    if not config.data_dir:
        raise ValueError("a data directory is required: --data-dir DIR or --store postgresql://... "
                         "(or data_dir in --config)")
    return config


async def serve_forever(config: cfg.ServiceConfig, stop: asyncio.Event | None = None, *,
                        freeze_heap: bool = False) -> None:
    """Run a queue manager service until `stop` is set (or SIGTERM/SIGINT arrive).
    `freeze_heap`: once started (the journal replayed), move every object alive to the
    garbage collector's permanent generation (gc.freeze), for a process of its own."""
    log = logging.getLogger("tether.queue.service")
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    config.validate()       # anything wrong (anonymous beyond loopback, a TLS file) stops it here
    server_context = config.server_context()
    qm = await QueueManager.open(config.data_dir, fsync=config.fsync, fsync_interval=config.fsync_interval,
                                 remotes=config.remotes, max_queues=config.max_queues,
                                 max_disk_bytes=config.max_disk_bytes or None,
                                 source_journal=config.source_journal, journal_max_length=config.journal_max_length,
                                 journal_time_to_live=config.journal_time_to_live,
                                 client_grace=config.client_grace)
    services: list[QueueService] = []
    metrics = None
    try:
        if config.metrics is not None:
            from .. import metrics as tether_metrics  # prometheus_client: only when asked for

            metrics = await tether_metrics.serve(config.metrics)
            print(f"tether qm: metrics {metrics.url}", flush=True)
        for name, settings in config.queues.items():
            await qm.create_queue(name, **settings)
        for url in config.listen:
            tls = parse_url(url).scheme == "tls"
            services.append(await qm.listen(url, ssl=server_context if tls else None, users=config.users,
                                            allow_anonymous=config.allow_anonymous,
                                            client_grace=config.client_grace, limits=config.limits,
                                            max_message_size=config.max_frame_bytes))
        if freeze_heap:
            # What replay and startup made lives as long as the service: without this,
            # every full collection scans it again (with 300k messages replayed, a
            # ~0.2 s pause and ~9% of the CPU of a send burst; measured: under 2% frozen).
            gc.freeze()
        # the line scripts and tests wait for: every address actually bound
        print("tether qm: ready " + " ".join(s.url for s in services), flush=True)
        await stop.wait()
        log.info("shutting down: rolling back open transactions, closing the journal")
    finally:
        if metrics is not None:
            metrics.close()
            await metrics.wait_closed()
        await qm.close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.remove_signal_handler(signum)
            except (NotImplementedError, RuntimeError):
                pass
    log.info("queue manager stopped cleanly")


def main(args: argparse.Namespace) -> int:
    """`tether qm serve`: exit status 0 after a clean shutdown."""
    config = _config(args)
    logging.basicConfig(level=getattr(logging, config.log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    new_loop_runner()(serve_forever(config, freeze_heap=True))
    return 0
