"""`tether.metrics`: Prometheus metrics of this process's queue managers and sessions.

    import tether.metrics
    server = await tether.metrics.serve("127.0.0.1:9600")   # http://127.0.0.1:9600/metrics
    # or, in an application that already exports metrics:
    prometheus_client.start_http_server(9600, registry=tether.metrics.registry)

`registry` (a prometheus_client CollectorRegistry) holds one collector that reads the live
state of every open QueueManager and every live session of this process when it is
scraped; nothing is counted per message beyond the integer additions of the queue core.
`tether qm serve` serves it when its configuration has `metrics = "HOST:PORT"`. Every
name, its labels and its meaning: docs/operations.md.

With several queue managers in one process, the series of a queue name they share are
added together.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from . import census
from .errors import QueueError
from .histogram import SYNC_BUCKETS, Histogram
from .metrics_http import MetricsServer, parse_address, serve_registry
from .queue.core.system_queues import TRANSMISSION_PREFIX

__all__ = ["CONTENT_TYPE", "MetricsServer", "TetherCollector", "parse_address", "registry", "render", "serve"]

#: the Content-Type of render()'s text
CONTENT_TYPE = CONTENT_TYPE_LATEST
#: transports a session runs over: each has a tether_sessions series, 0 when none is live
TRANSPORTS = ("udp", "tcp", "tls")
#: bucket upper bounds (seconds) of the sessions' smoothed round-trip times
RTT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class TetherCollector:
    """Reads the census (census.py) into metric families at each scrape."""

    def collect(self) -> Iterator[Metric]:
        """Every tether metric, from the state of this instant."""
        yield from self._queue_metrics()
        yield from self._session_metrics()

    def _queue_metrics(self) -> Iterator[Metric]:
        gauges = {
            "depth": GaugeMetricFamily("tether_queue_messages", "Messages ready to be received", labels=["queue"]),
            "in_flight": GaugeMetricFamily("tether_queue_in_flight", "Messages received under a peek-lock, "
                                           "not yet completed or abandoned", labels=["queue"]),
            "retrying": GaugeMetricFamily("tether_queue_retrying", "Messages waiting in the ;retry sub-queue",
                                          labels=["queue"]),
            "poison": GaugeMetricFamily("tether_queue_poison", "Messages in the ;poison sub-queue", labels=["queue"]),
            "dead": GaugeMetricFamily("tether_queue_dead", "Messages of this queue now in a dead-letter queue",
                                      labels=["queue"]),
            "scheduled": GaugeMetricFamily("tether_queue_scheduled", "Messages whose delivery time is still to come",
                                           labels=["queue"]),
            "bytes": GaugeMetricFamily("tether_queue_bytes", "Body bytes held by the queue and its sub-queues",
                                       labels=["queue"]),
            "faulted": GaugeMetricFamily("tether_queue_faulted", "1 while a poison message stops the queue "
                                         "(receive_error_handling=fault)", labels=["queue"]),
        }
        sent = CounterMetricFamily("tether_queue_sent", "Messages sent (or forwarded) to the queue", labels=["queue"])
        received = CounterMetricFamily("tether_queue_received", "Messages received from the queue (or its "
                                       "sub-queues) and completed", labels=["queue"])
        dead_lettered = CounterMetricFamily("tether_queue_dead_lettered", "Messages of the queue dead-lettered, "
                                            "by reason", labels=["queue", "reason"])
        pending = GaugeMetricFamily("tether_forwarder_pending", "Messages waiting to be forwarded to the queue "
                                    "manager at target (its transmission queue)", labels=["target"])
        values: dict[str, Counter[str]] = {key: Counter() for key in gauges}
        traffic: Counter[tuple[str, str]] = Counter()
        deaths: Counter[tuple[str, str]] = Counter()
        waiting: Counter[str] = Counter()
        journal_bytes = 0
        clients = 0
        syncs = Histogram(SYNC_BUCKETS)
        shared_seen: set[str] = set()
        for manager in list(census.managers):
            try:
                stats = manager.statistics()
            except QueueError:      # closed (it leaves the census once collected)
                continue
            # several managers of this process on one database: its queues are counted once
            queues = [] if stats.shared_store in shared_seen else stats.queues
            if stats.shared_store is not None:
                shared_seen.add(stats.shared_store)
            for info in queues:
                for key in values:
                    values[key][info.name] += int(info[key])
                if info.name.startswith(TRANSMISSION_PREFIX):
                    waiting[info.name[len(TRANSMISSION_PREFIX):]] += (info.depth + info.in_flight + info.retrying
                                                                      + info.scheduled)
            for name, (sent_count, received_count) in stats.traffic.items():
                traffic[name, "sent"] += sent_count
                traffic[name, "received"] += received_count
            deaths.update(stats.dead_lettered)
            journal_bytes += stats.journal_bytes
            clients += stats.clients
            if stats.sync_seconds is not None:
                syncs.add(stats.sync_seconds)
        for key, family in gauges.items():
            for name, value in values[key].items():
                family.add_metric([name], value)
            yield family
        for (name, kind), value in traffic.items():
            (sent if kind == "sent" else received).add_metric([name], value)
        yield sent
        yield received
        for (name, reason), value in deaths.items():
            dead_lettered.add_metric([name, reason], value)
        yield dead_lettered
        for target, value in waiting.items():
            pending.add_metric([target], value)
        yield pending
        yield GaugeMetricFamily("tether_journal_bytes", "Bytes the queue managers' journals take on disk",
                                value=journal_bytes)
        yield GaugeMetricFamily("tether_clients", "Clients the queue services know (connected, or away "
                                "within client_grace)", value=clients)
        yield HistogramMetricFamily("tether_journal_fsync_seconds", "Seconds each journal batch took to write "
                                    "and fdatasync (fsync=always)", buckets=_buckets(syncs), sum_value=syncs.sum)

    def _session_metrics(self) -> Iterator[Metric]:
        live: Counter[str] = Counter({transport: 0 for transport in TRANSPORTS})
        resent = census.ended.resent
        rtts = Histogram(RTT_BUCKETS)
        for session in list(census.sessions):
            if session.closed:
                continue
            live[session.transport] += 1
            engine = session.engine
            resent += engine.messages_resent
            rtt = engine.stats["rtt"]
            if rtt is not None:         # None until the first round trip was measured
                rtts.observe(rtt)
        sessions = GaugeMetricFamily("tether_sessions", "Live reliable sessions (clients' and servers')",
                                     labels=["transport"])
        for transport, count in live.items():
            sessions.add_metric([transport], count)
        yield sessions
        yield CounterMetricFamily("tether_session_resent", "Messages sessions sent again (lost, or "
                                  "unacknowledged in time)", value=resent)
        yield CounterMetricFamily("tether_sessions_ended", "Sessions that have ended", value=census.ended.count)
        yield GaugeHistogramMetricFamily("tether_session_rtt_seconds", "Live sessions by their smoothed "
                                         "round-trip time (once one was measured)", buckets=_buckets(rtts), gsum_value=rtts.sum)


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    return [("+Inf" if bound == float("inf") else repr(bound), count) for bound, count in histogram.cumulative()]


#: The registry of tether's metrics (one TetherCollector).
registry = CollectorRegistry(auto_describe=False)
registry.register(TetherCollector())


def render() -> bytes:
    """The registry in Prometheus' text format (what GET /metrics answers)."""
    return generate_latest(registry)


async def serve(address: str) -> MetricsServer:
    """Serve `registry` over HTTP at "HOST:PORT" (port 0: any free one), path /metrics;
    returns the MetricsServer (its `.url`; `close()` it). ValueError naming a bad address,
    OSError when it cannot be bound."""
    return await serve_registry(address, render, CONTENT_TYPE)
