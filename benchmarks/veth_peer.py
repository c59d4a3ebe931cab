"""One side of a benchmarks/veth_udp.py row:
python veth_peer.py recv|send udp|tcp|raw HOST PORT SIZE SECONDS WINDOW; prints one JSON line."""
import asyncio
import json
import os
import sys
import time

import msgpack
import uvloop

import tether
from tether.errors import SequenceClosed

mode, proto, host, port, size, seconds, window = sys.argv[1:8]
port, size, seconds, window = int(port), int(size), float(seconds), int(window)
BATCH = 1024
payload = (bytes(range(256)) * (size // 256 + 1))[:size]
batch = [payload] * BATCH


def cpu():
    t = os.times()
    return f"{t.user:.2f}u+{t.system:.2f}s"


class RawRecv(asyncio.Protocol):
    def __init__(self, done):
        self.u = msgpack.Unpacker(max_buffer_size=64 << 20)
        self.got = 0
        self.done = done
        self.first = None

    def data_received(self, data):
        if self.first is None:
            self.first = time.perf_counter()
        self.u.feed(data)
        for b in self.u:
            self.got += len(b)

    def connection_lost(self, exc):
        self.done.set_result(None)


async def recv():
    if proto == "raw":
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        proto_obj = []
        def factory():
            p = RawRecv(done)
            proto_obj.append(p)
            return p
        srv = await loop.create_server(factory, host, port)
        print("READY", flush=True)
        await done
        p = proto_obj[0]
        print(json.dumps({"got": p.got, "elapsed": time.perf_counter() - p.first, "cpu": cpu()}), flush=True)
        srv.close()
        return
    server = await tether.serve(None, f"{proto}://{host}:{port}", max_transfer_window=window)
    print("READY", flush=True)
    s = await server.accept()
    got = 0
    first = None
    try:
        while True:
            m = await s.recv_many()
            if first is None:
                first = time.perf_counter()
            got += len(m)
    except SequenceClosed:
        pass
    end = time.perf_counter()
    st = s.stats
    try:
        await asyncio.wait_for(s.wait_closed(), 5)
    except Exception:
        pass
    print(json.dumps({"got": got, "elapsed": end - first, "cpu": cpu(), "dups": st["duplicates"],
                      "refused": st["refused"], "pk": st["packets_received"]}), flush=True)
    server.close()
    await server.wait_closed()


async def send():
    if proto == "raw":
        r, w = await asyncio.open_connection(host, port)
        start = time.perf_counter()
        sent = 0
        packb = msgpack.packb
        while time.perf_counter() - start < seconds:
            for _ in range(16):
                w.write(packb(batch, use_bin_type=True))
                sent += BATCH
                await w.drain()
        w.close()
        await w.wait_closed()
        print(json.dumps({"sent": sent, "elapsed": time.perf_counter() - start, "cpu": cpu(), "resent": 0}), flush=True)
        return
    s = await tether.connect(f"{proto}://{host}:{port}", max_transfer_window=window)
    start = time.perf_counter()
    sent = 0
    while time.perf_counter() - start < seconds:
        for _ in range(16):
            await s.send_many(batch)
            sent += BATCH
    await s.flush()
    elapsed = time.perf_counter() - start
    st = s.stats
    await s.close(timeout=30)
    print(json.dumps({"sent": sent, "elapsed": elapsed, "cpu": cpu(), "resent": st["resent"],
                      "pk": st["packets_sent"], "fr": st["fast_retransmits"], "rto": st["retransmission_timeouts"],
                      "cwnd": st["cwnd"], "rtt": st["rtt"]}), flush=True)


uvloop.run(recv() if mode == "recv" else send())
