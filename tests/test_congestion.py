"""PathModel, the UDP congestion controller, driven directly: acks at a steady rate make
the delivery-rate samples, and each rule of the model is checked on its own."""
from __future__ import annotations

import pytest

from tether.session.sansio import congestion
from tether.session.sansio.congestion import (
    DRAIN,
    K_BANDWIDTH_SAMPLES,
    K_MINIMUM_WINDOW_PACKETS,
    PROBE_BANDWIDTH,
    STARTUP,
    PathModel,
)

PACKET = 1452
RTT = 0.010


class Flow:
    """Acks of `rate` bytes per second arriving every millisecond, with RTT samples of RTT."""

    def __init__(self, model: PathModel, rate: float, now: float = 0.0) -> None:
        self.model = model
        self.rate = rate
        self.now = now

    def run(self, seconds: float, *, in_flight: int | None = None, app_limited: bool = False,
            srtt: float = RTT) -> None:
        step = 0.001
        for _ in range(round(seconds / step)):
            self.now += step
            if app_limited:
                self.model.on_app_limited()
            self.model.on_rtt(RTT)
            self.model.on_sent(int(self.rate * step))
            self.model.on_acked(int(self.rate * step), self.now, srtt, in_flight)


def _steady(rate: float = 1e6) -> tuple[PathModel, Flow]:
    """A model past startup, its estimate at `rate`."""
    model = PathModel(PACKET, 4096)
    flow = Flow(model, rate)
    flow.run(0.5, in_flight=0)
    assert model.state == PROBE_BANDWIDTH
    return model, flow


def test_the_estimate_is_the_delivery_rate_and_the_window_twice_the_bdp() -> None:
    model, flow = _steady(1e6)
    assert model.bandwidth == pytest.approx(1e6, rel=0.05)
    assert model.min_rtt == RTT
    flow.run(0.2)
    assert model.cwnd == pytest.approx(2 * 1e6 * RTT, rel=0.05)
    assert any(model.pacing_rate(RTT) == pytest.approx(g * model.bandwidth)
               for g in congestion.K_PROBE_GAINS)


def test_a_random_loss_leaves_the_window_and_the_estimate_alone() -> None:
    model, flow = _steady()
    flow.run(0.2)
    cwnd, bandwidth = model.cwnd, model.bandwidth
    for number in range(100, 200, 10):      # ten loss periods
        model.on_lost(number, number + 5)
        flow.run(0.003)
    assert model.losses == 10 and model.recovery_start == 195
    assert model.cwnd == pytest.approx(cwnd, rel=0.05)
    assert model.bandwidth == pytest.approx(bandwidth, rel=0.05)


def test_a_loss_with_a_queue_ends_startup_and_drain_ends_once_the_queue_is_gone() -> None:
    model = PathModel(PACKET, 4096)
    flow = Flow(model, 1e6)
    # a smoothed RTT twice the minimum: startup is queueing; one round, no plateau yet
    flow.run(0.025, in_flight=100_000, srtt=2 * RTT)
    assert model.state == STARTUP and model.bandwidth
    model.on_lost(5, 50)
    assert model.state == DRAIN
    assert model.pacing_rate(RTT) == pytest.approx(model.bandwidth / congestion.K_STARTUP_GAIN)
    flow.run(0.001, in_flight=100_000)      # still a queue's worth in flight
    assert model.state == DRAIN
    flow.run(0.001, in_flight=int(model.bandwidth * RTT))
    assert model.state == PROBE_BANDWIDTH


def test_a_loss_before_any_estimate_does_not_end_startup() -> None:
    model = PathModel(PACKET, 4096)
    model.on_lost(1, 10)
    assert model.state == STARTUP and model.cwnd == 10 * PACKET


def test_a_loss_while_probing_for_bandwidth_ends_the_probe() -> None:
    model, flow = _steady()
    for _ in range(2 * len(congestion.K_PROBE_GAINS) * 10):
        if model.pacing_gain > 1:
            break
        flow.run(0.001)
    assert model.pacing_gain > 1
    model.on_lost(10**6, 10**6 + 1)
    assert model.pacing_gain < 1


def test_application_limited_rounds_never_lower_the_estimate_but_measured_ones_do() -> None:
    model, flow = _steady(1e7)
    flow.rate = 1e6
    flow.run(0.5, app_limited=True)         # 50 rounds of an application sending slowly
    assert model.bandwidth == pytest.approx(1e7, rel=0.05)
    flow.run(RTT * (K_BANDWIDTH_SAMPLES + 2))   # the path itself slowed down
    assert model.bandwidth == pytest.approx(1e6, rel=0.05)
    assert model.cwnd == pytest.approx(2 * 1e6 * RTT, rel=0.05)


def test_the_window_stays_within_the_flow_control_window_and_the_floor() -> None:
    model = PathModel(PACKET, 8)
    assert model.cwnd == 8 * PACKET
    Flow(model, 1e9).run(0.5)
    assert model.cwnd == 8 * PACKET
    slow, flow = _steady(1e3)               # 2 x BDP would be 20 bytes
    flow.run(0.2)
    assert slow.cwnd == congestion.K_MODEL_FLOOR_PACKETS * PACKET


def test_a_sample_is_at_most_what_was_sent_in_its_round() -> None:
    """Acks that report at once what earlier acks left out do not raise the estimate above
    the rate the sender sent at."""
    model, flow = _steady(1e6)
    now = flow.now
    for _ in range(3 * K_BANDWIDTH_SAMPLES):
        now += RTT / 2
        model.on_sent(int(1e6 * RTT / 2))
        model.on_acked(int(5e6 * RTT / 2), now, RTT)    # five times what was sent
    assert model.bandwidth == pytest.approx(1e6, rel=0.05)


def test_a_loss_in_startup_on_an_unqueued_path_does_not_end_it() -> None:
    model = PathModel(PACKET, 4096)
    flow = Flow(model, 1e6)
    flow.run(0.025)                          # smoothed RTT = minimum RTT: no queue
    model.on_lost(5, 50)
    assert model.state == STARTUP


def test_persistent_congestion_collapses_the_window_and_starts_over() -> None:
    model, flow = _steady()
    model.on_persistent_congestion()
    assert model.cwnd == K_MINIMUM_WINDOW_PACKETS * PACKET
    assert model.state == STARTUP and model.bandwidth == 0.0
    flow.run(0.3, in_flight=0)
    assert model.bandwidth == pytest.approx(1e6, rel=0.05)
