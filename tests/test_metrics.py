"""Prometheus metrics (tether.metrics): `tether qm serve --metrics` scraped over HTTP after
known traffic, the embedded registry, the metrics address checks, and the histogram the
journal fills."""
from __future__ import annotations

import asyncio
import math
import signal
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

import tether
import tether.metrics
from tether.histogram import Histogram
from tether.metrics_http import parse_address
from tether.queue import config as cfg


async def _http(host: str, port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


async def _scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of GET url: (name, sorted labels) -> value."""
    hostport = url.split("//", 1)[1].split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    status, headers, body = await _http(host, int(port), b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and headers["content-type"].startswith("text/plain"), (status, body[:200])
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def _value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


async def _start_service(tmp_path, *extra):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tether", "qm", "serve", "--data-dir", str(tmp_path / "data"),
        "--listen", "tcp://127.0.0.1:0", "--metrics", "127.0.0.1:0", "--log-level", "warning", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    metrics_line = await asyncio.wait_for(proc.stdout.readline(), 30)
    ready_line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if not ready_line.startswith(b"tether qm: ready "):
        proc.kill()
        raise AssertionError((metrics_line, ready_line, await proc.stderr.read()))
    assert metrics_line.startswith(b"tether qm: metrics http://127.0.0.1:"), metrics_line
    return proc, metrics_line.split()[-1].decode(), ready_line.split()[-1].decode()


async def _stop(proc):
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
    return proc.returncode


async def test_served_metrics_count_known_traffic(tmp_path):
    proc, metrics_url, service_url = await _start_service(tmp_path)
    try:
        async with tether.QueueClient.connect(service_url) as client:
            await client.create_queue("orders")
            await client.create_queue("short", time_to_live=0.05)
            await client.create_queue("fragile", receive_retry_count=0, max_retry_cycles=0,
                                      receive_error_handling="reject")
            sent, completed, expiring, rejected = 7, 3, 4, 2
            await client.send_many("orders", [b"order %d" % i for i in range(sent)])
            for _ in range(completed):
                message = await client.receive("orders", timeout=0)
                await message.complete()
            held = await client.receive("orders", timeout=0)         # in flight while scraped
            assert held is not None
            await client.send_many("short", [b"late"] * expiring)
            await client.send_many("fragile", [b"bad"] * rejected)
            for _ in range(rejected):
                message = await client.receive("fragile", timeout=0)
                await message.abandon()          # no retries: rejected to $dead at once

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while True:      # the expiry timer moves the short-lived ones to $dead
                samples = await _scrape(metrics_url)
                if _value(samples, "tether_queue_dead_lettered_total", queue="short", reason="expired") == expiring:
                    break
                assert loop.time() < deadline, "the expired messages were never dead-lettered"
                await asyncio.sleep(0.05)

            assert _value(samples, "tether_queue_sent_total", queue="orders") == sent
            assert _value(samples, "tether_queue_received_total", queue="orders") == completed
            assert _value(samples, "tether_queue_messages", queue="orders") == sent - completed - 1
            assert _value(samples, "tether_queue_in_flight", queue="orders") == 1
            assert _value(samples, "tether_queue_sent_total", queue="short") == expiring
            assert _value(samples, "tether_queue_messages", queue="short") == 0
            assert _value(samples, "tether_queue_dead", queue="short") == expiring
            assert _value(samples, "tether_queue_dead_lettered_total", queue="fragile", reason="rejected") == rejected
            assert _value(samples, "tether_queue_received_total", queue="fragile") == 0
            assert _value(samples, "tether_queue_messages", queue="$dead") == expiring + rejected
            assert _value(samples, "tether_queue_faulted", queue="orders") == 0
            # the service's side of this client's one TCP session
            assert _value(samples, "tether_sessions", transport="tcp") == 1
            assert _value(samples, "tether_sessions", transport="udp") == 0
            assert _value(samples, "tether_clients") == 1
            assert _value(samples, "tether_session_resent_total") == 0
            assert _value(samples, "tether_session_rtt_seconds_bucket", le="+Inf") == 1
            # a durable journal under fsync=always: every batch synced and timed
            assert _value(samples, "tether_journal_bytes") > 0
            syncs = _value(samples, "tether_journal_fsync_seconds_count")
            assert syncs >= 3 and _value(samples, "tether_journal_fsync_seconds_bucket", le="+Inf") == syncs
            assert _value(samples, "tether_journal_fsync_seconds_sum") > 0
            await held.complete()
            # every documented name is served
            names = {name for name, _ in samples}
            for name in ("tether_queue_messages", "tether_queue_in_flight", "tether_queue_sent_total",
                         "tether_queue_received_total", "tether_queue_dead_lettered_total",
                         "tether_journal_fsync_seconds_bucket", "tether_journal_bytes", "tether_clients",
                         "tether_sessions", "tether_session_resent_total", "tether_session_rtt_seconds_bucket"):
                assert name in names, name
        samples = await _scrape(metrics_url)
        assert _value(samples, "tether_queue_received_total", queue="orders") == completed + 1
        assert _value(samples, "tether_queue_in_flight", queue="orders") == 0
    finally:
        code = await _stop(proc)
    assert code == 0, await proc.stderr.read()


async def test_forwarder_pending_counts_what_waits_for_its_target(tmp_path):
    # nothing listens at the target: what is sent there waits in the transmission queue
    proc, metrics_url, service_url = await _start_service(tmp_path)
    try:
        async with tether.QueueClient.connect(service_url) as client:
            for _ in range(3):
                await client.send("tether://127.0.0.1:9/orders", b"for later")
            samples = await _scrape(metrics_url)
            assert _value(samples, "tether_forwarder_pending", target="127.0.0.1:9") == 3
            assert _value(samples, "tether_queue_sent_total", queue="$xmit:127.0.0.1:9") == 3
    finally:
        assert await _stop(proc) == 0


async def test_the_endpoint_answers_only_get_metrics(tmp_path):
    server = await tether.metrics.serve("127.0.0.1:0")
    try:
        host, port = server.address
        status, _, body = await _http(host, port, b"GET /other HTTP/1.1\r\n\r\n")
        assert status == 404 and b"/metrics" in body
        status, headers, _ = await _http(host, port, b"POST /metrics HTTP/1.1\r\n\r\n")
        assert status == 405 and headers["allow"] == "GET, HEAD"
        status, headers, body = await _http(host, port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0
        status, _, _ = await _http(host, port, b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"y" * 9000 + b"\r\n\r\n")
        assert status == 400
    finally:
        server.close()
        await server.wait_closed()


async def test_the_embedded_registry_reads_open_managers_and_sessions():
    async with tether.QueueManager.open() as qm:
        await qm.create_queue("embedded-orders")
        await qm.send_many("embedded-orders", [b"a", b"b"])
        message = await qm.receive("embedded-orders", timeout=0)
        await message.complete()
        server = await tether.serve(None, "udp://127.0.0.1:0")
        try:
            host, port = server.address
            async with tether.connect(f"udp://{host}:{port}") as session:
                await session.send(b"ping")
                await session.flush()
                text = tether.metrics.render().decode()
                samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                           for f in text_string_to_metric_families(text) for s in f.samples}
                assert _value(samples, "tether_queue_sent_total", queue="embedded-orders") == 2
                assert _value(samples, "tether_queue_received_total", queue="embedded-orders") == 1
                assert _value(samples, "tether_queue_messages", queue="embedded-orders") == 1
                assert _value(samples, "tether_sessions", transport="udp") >= 2     # both ends, this process
                # in memory: no journal, nothing synced (other managers of this process may sync)
                assert qm.statistics().sync_seconds is None and qm.statistics().journal_bytes == 0
            ended_before = _value(samples, "tether_sessions_ended_total")
        finally:
            server.close()
            await server.wait_closed()
    text = tether.metrics.render().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert _value(samples, "tether_queue_sent_total", queue="embedded-orders") is None    # closed: gone
    assert _value(samples, "tether_sessions_ended_total") >= ended_before + 2


@pytest.mark.parametrize("address, error", [
    ("9600", "expected HOST:PORT"),
    (":9600", "expected HOST:PORT"),
    ("127.0.0.1:http", "port must be a number"),
    ("127.0.0.1:70000", "port must be a number"),
    ("::1:9600", "brackets"),
    ("[nonsense]:9600", "not an IPv6 address"),
    (9600, "must be a string"),
])
def test_a_bad_metrics_address_is_named(address, error):
    with pytest.raises(ValueError, match=error):
        parse_address(address)
    with pytest.raises(ValueError, match="config: metrics"):
        cfg.from_dict({"data_dir": "d", "metrics": address})


def test_good_metrics_addresses_and_the_config_key():
    assert parse_address("127.0.0.1:9600") == ("127.0.0.1", 9600)
    assert parse_address("[::1]:0") == ("::1", 0)
    assert parse_address("localhost:9600") == ("localhost", 9600)
    assert cfg.from_dict({"data_dir": "d", "metrics": "127.0.0.1:9600"}).metrics == "127.0.0.1:9600"
    assert cfg.from_dict({"data_dir": "d"}).metrics is None
    assert cfg.from_dict({"data_dir": "d", "log_level": "debug"}).log_level == "DEBUG"
    with pytest.raises(ValueError, match="log_level"):
        cfg.from_dict({"data_dir": "d", "log_level": "loud"})


def test_the_histogram_counts_each_observation_in_its_bucket():
    h = Histogram((0.001, 0.01, 0.1))
    for value in (0.0005, 0.001, 0.002, 0.05, 0.5, 3.0):
        h.observe(value)
    assert h.cumulative() == [(0.001, 2), (0.01, 3), (0.1, 4), (math.inf, 6)]
    assert h.count == 6 and h.sum == pytest.approx(3.5535)
    other = Histogram((0.001, 0.01, 0.1))
    other.observe(0.02)
    h.add(other)
    assert h.cumulative()[-2:] == [(0.1, 5), (math.inf, 7)]
    with pytest.raises(ValueError):
        h.add(Histogram((1.0,)))
    with pytest.raises(ValueError, match="ascending"):
        Histogram((0.1, 0.01))


async def test_statistics_count_every_way_in_and_out(tmp_path):
    async with tether.QueueManager.open(tmp_path / "qm") as qm:
        await qm.create_queue("orders")
        await qm.create_queue("nowhere", time_to_live=0.05, dead_letter_queue="none")
        for i in range(3):
            await qm.send("orders", b"one %d" % i)               # one by one, each journaled
        await qm.send_many("orders", [b"a", b"b"])                # one record for both
        async with qm.transaction() as tx:                        # received and sent in one commit
            assert await tx.receive("orders", timeout=0) is not None
            await tx.send("orders", b"from the transaction")
        message = await qm.receive("orders", timeout=0)
        await message.complete()
        message = await qm.receive("orders", timeout=0)
        await message.abandon()                                   # a failed delivery: not received
        await qm.send("nowhere", b"gone")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not qm.statistics().dead_lettered:
            assert loop.time() < deadline, "the message never expired"
            await asyncio.sleep(0.02)
        stats = qm.statistics()
        assert stats.traffic["orders"] == (6, 2)
        assert stats.traffic["nowhere"] == (1, 0)
        assert stats.dead_lettered == {("nowhere", "expired"): 1}     # dropped, but counted
        assert {info.name: info.depth for info in stats.queues}["orders"] == 4
        assert stats.sync_seconds is not None and stats.sync_seconds.count >= 8
        assert stats.journal_bytes == qm.journal_bytes > 0 and stats.clients == 0
    with pytest.raises(tether.QueueError, match="closed"):
        qm.statistics()
