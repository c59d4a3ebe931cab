"""Send and receive windows, native against reference on the same precomputed traffic.

Run: PYTHONPATH=src python -m pytest benchmarks/bench_windows.py --benchmark-enable -q
The speed-up is the reference row's time over the native row's, in the same group.
"""
from __future__ import annotations

import importlib
import random

import pytest

WINDOW = 4096
ACKS = 100_000
MESSAGES = 1_000_000
PAYLOAD = b"x" * 64


def module(name: str, impl: str):
    return importlib.import_module(f"tether.{'_native' if impl == 'native' else '_reference'}.{name}")


# ---- send window: 100k acks over a 4096 window ----

def ack_schedule(acks: int) -> list[list[tuple[int, int]]]:
    """What a receiver acks, one ack every 2 messages: a cumulative range, and while a lost
    message (every 128th, from 5) is outstanding, the range above it too; the resend
    arrives 4 acks later."""
    schedule = []
    for i in range(1, acks + 1):
        hi = 2 * i
        lost = ((hi - 5) // 128) * 128 + 5 if hi >= 5 else None
        if lost is not None and hi - lost < 8:
            ranges = [(1, lost - 1), (lost + 1, hi)] if lost > 1 else [(lost + 1, hi)]
        else:
            ranges = [(1, hi)]
        schedule.append(ranges)
    return schedule


def run_send_window(SendWindow, schedule: list, payloads: list) -> int:
    window = SendWindow(WINDOW, 8)
    now = 0.0
    window.push(payloads, now, 0, WINDOW)
    resent = 0
    for ranges in schedule:
        now += 0.0001
        # An ack never covers more than was sent: the window is refilled before each.
        window.push(payloads, now, 0, window.free)
        window.apply_ack(ranges, now)
        resent += len(window.fast_retransmit(now))
    return resent


@pytest.mark.benchmark(group="send_window: 100k acks over a 4096 window")
def test_send_window_acks(benchmark, impl):
    SendWindow = module("send_window", impl).SendWindow
    schedule = ack_schedule(ACKS)
    payloads = [PAYLOAD] * WINDOW
    resent = benchmark.pedantic(run_send_window, args=(SendWindow, schedule, payloads), rounds=3, iterations=1)
    assert resent > ACKS // 128  # the gaps were fast-retransmitted


# ---- receive window: 1M messages with 5% loss and reordering ----

def receive_traffic(messages: int, seed: int = 1) -> list[tuple[int, list]]:
    """accept() calls: frames of 64 consecutive messages, 5% of messages lost (a frame
    splits into runs of the survivors), each lost message resent 2-5 frames later (1% of
    resends twice), and neighbouring deliveries swapped 10% of the time."""
    rng = random.Random(seed)
    calls: list[tuple[int, int]] = []
    pending: list[tuple[int, int]] = []  # (frame index to arrive at, number)
    for frame, first in enumerate(range(1, messages + 1, 64)):
        run_start = None
        for n in range(first, min(first + 64, messages + 1)):
            if rng.random() < 0.05:
                pending.append((frame + rng.randint(2, 5), n))
                if run_start is not None:
                    calls.append((run_start, n - run_start))
                    run_start = None
            elif run_start is None:
                run_start = n
        if run_start is not None:
            calls.append((run_start, min(first + 64, messages + 1) - run_start))
        due = [n for at, n in pending if at <= frame]
        pending = [(at, n) for at, n in pending if at > frame]
        for n in due:
            calls.append((n, 1))
            if rng.random() < 0.01:
                calls.append((n, 1))
    calls.extend((n, 1) for _, n in sorted(pending))
    for i in range(len(calls) - 1):
        if rng.random() < 0.1:
            calls[i], calls[i + 1] = calls[i + 1], calls[i]
    return [(first, [PAYLOAD] * count) for first, count in calls]


def run_receive_window(ReceiveWindow, traffic: list) -> int:
    window = ReceiveWindow(WINDOW, True)
    delivered = 0
    for i, (first, payloads) in enumerate(traffic):
        delivered += len(window.accept(first, payloads))
        window.release(window.held)  # the application keeps up
        if i & 1:
            window.ack_ranges(16)
    return delivered


@pytest.mark.benchmark(group="receive_window: 1M messages, 5% loss, reordering")
def test_receive_window_lossy(benchmark, impl):
    ReceiveWindow = module("receive_window", impl).ReceiveWindow
    traffic = receive_traffic(MESSAGES)
    delivered = benchmark.pedantic(run_receive_window, args=(ReceiveWindow, traffic), rounds=3, iterations=1)
    assert delivered == MESSAGES
