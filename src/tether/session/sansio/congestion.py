"""Congestion control for UDP sessions: a model of the path in the manner of BBR (Cardwell
et al., "BBR: Congestion-Based Congestion Control", ACM Queue 14(5), 2016), not a reaction
to each loss. TCP sessions leave this to TCP.

The sender measures how fast the peer acknowledges bytes (one delivery-rate sample per
round trip) and keeps the largest of the last K_BANDWIDTH_SAMPLES samples as the path's
bottleneck bandwidth. New data is paced at that rate times a gain that cycles through
K_PROBE_GAINS (a round a quarter faster to find more bandwidth, a round a quarter slower to
drain what that queued, then six at the estimate), and the window caps what is in flight at
K_WINDOW_GAIN times the bandwidth times the smoothed RTT. A random loss changes neither the estimate
nor the window: at 5% random loss a loss-based controller (NewReno, CUBIC) holds a window of
a few packets whatever the path could carry. A queue that overflows is handled by the model
itself: the delivery rate cannot exceed the bottleneck, so the pacing rate settles there and
only the probing round adds to the queue; a loss during that round ends it early.

Until the estimate stops growing (by K_STARTUP_GROWTH over K_STARTUP_ROUNDS rounds) the
window grows as in slow start and the pacing gain is K_STARTUP_GAIN; one round at its
inverse then drains the queue startup built. Rounds in which the sender had nothing to send
(application-limited) only raise the estimate, never lower it.
"""
from __future__ import annotations

# RFC 9002 7.2: initial window of 10 datagrams, minimum of 2 (persistent congestion).
K_INITIAL_WINDOW_PACKETS = 10
K_MINIMUM_WINDOW_PACKETS = 2
# Once the model sets it, the window is never below this (BBR's floor: a few packets keep
# acks flowing and the delivery rate measurable).
K_MODEL_FLOOR_PACKETS = 4
# BBR's startup gain, 2/ln 2: the smallest that doubles the sending rate each round.
K_STARTUP_GAIN = 2.885
K_STARTUP_GROWTH = 1.25
K_STARTUP_ROUNDS = 3
# Drain (pacing at 1 / K_STARTUP_GAIN) ends once what is in flight fits one bandwidth-delay
# product, or after this many rounds.
K_DRAIN_ROUNDS = 3
# A loss in startup ends it when the smoothed RTT is above this many minimum RTTs (startup
# overran a queue); a random loss on a path that is not queueing does not.
K_QUEUE_RTT = 1.25
# Pacing gains of the probing cycle, one per round.
K_PROBE_GAINS = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
# The window: this many bandwidth-delay products, the delay being the smoothed RTT. With the
# minimum RTT instead (BBR's choice), acks that come once per flight and a receiver's own
# processing time (on a loaded host, RTTs from 0.1 to 10 ms) made the window limit the very
# delivery rate it is computed from: on the veth bench it spiralled down to a few packets.
# With the smoothed RTT the window always allows twice the estimate; pacing, not the window,
# keeps the queue short, and drain empties what startup queued.
K_WINDOW_GAIN = 2.0
# The bandwidth estimate is the largest of this many recent delivery-rate samples (rounds).
K_BANDWIDTH_SAMPLES = 10

STARTUP, DRAIN, PROBE_BANDWIDTH = "startup", "drain", "probe_bandwidth"


class PathModel:
    """The path's bottleneck bandwidth and RTT, and the window and pacing rate they give.

    The window never exceeds `max_packets` datagrams (at least the minimum of 2): the most
    the session's flow control lets be in flight, one message per datagram at most."""

    __slots__ = ("datagram_size", "cwnd", "max_cwnd", "state", "bandwidth", "min_rtt",
                 "recovery_start", "losses", "rounds", "_samples", "_sample_bytes",
                 "_sample_start", "_app_limited", "_cycle", "_startup_best", "_startup_stalls",
                 "_round_min_rtt", "_min_rtts", "_drain_rounds", "_srtt", "_sample_sent")

    def __init__(self, datagram_size: int, max_packets: int | None = None) -> None:
        self.datagram_size = datagram_size
        self.max_cwnd = float("inf")
        self.cwnd: float = K_INITIAL_WINDOW_PACKETS * datagram_size
        self.state = STARTUP
        self.bandwidth = 0.0        # bytes per second: the largest recent sample (0: none yet)
        self.min_rtt: float | None = None
        # First message number sent after the last loss period began; None before any loss.
        self.recovery_start: int | None = None
        self.losses = 0             # loss events reported (each may cover several messages)
        self.rounds = 0             # delivery-rate sample periods completed
        self._samples: list[float] = []
        self._sample_bytes = 0
        self._sample_start: float | None = None
        self._app_limited = False   # the current sample period had nothing to send at times
        self._cycle = 0             # index into K_PROBE_GAINS
        self._startup_best = 0.0
        self._startup_stalls = 0
        self._round_min_rtt: float | None = None
        self._min_rtts: list[float] = []
        self._drain_rounds = 0
        self._srtt: float | None = None
        self._sample_sent = 0
        if max_packets is not None:
            self.limit(max_packets)

    def limit(self, max_packets: int) -> None:
        """Cap the window at `max_packets` datagrams (at least the minimum window)."""
        self.max_cwnd = max(K_MINIMUM_WINDOW_PACKETS, max_packets) * self.datagram_size
        self.cwnd = min(self.cwnd, self.max_cwnd)

    @property
    def pacing_gain(self) -> float:
        if self.state == STARTUP:
            return K_STARTUP_GAIN
        if self.state == DRAIN:
            return 1 / K_STARTUP_GAIN
        return K_PROBE_GAINS[self._cycle]

    def on_rtt(self, sample: float) -> None:
        """An RTT sample: the smallest of the last K_BANDWIDTH_SAMPLES rounds is the path's
        delay with the least queueing (a window, not for ever: one lucky early sample must
        not hold the window below what the path needs now)."""
        if sample <= 0:
            return
        if self._round_min_rtt is None or sample < self._round_min_rtt:
            self._round_min_rtt = sample
        if self.min_rtt is None or sample < self.min_rtt:
            self.min_rtt = sample

    def on_sent(self, nbytes: int) -> None:
        """`nbytes` of DATA (new or resent) went out: a round's delivery rate is at most
        what was sent in it. An ack that reports at once what earlier acks left out (a
        truncated ack, a lost one) would otherwise make a sample above the path's rate, and
        the pacer would then overrun the bottleneck's queue."""
        self._sample_sent += nbytes

    def on_app_limited(self) -> None:
        """The sender had window to spare and nothing to send: this round's delivery rate
        says how fast the application sent, not what the path carries."""
        self._app_limited = True

    def on_acked(self, acked_bytes: int, now: float | None = None, srtt: float | None = None,
                 in_flight: int | None = None) -> None:
        """`acked_bytes` newly acknowledged at `now`, leaving `in_flight` bytes in flight;
        with `srtt` a delivery-rate sample is taken once per smoothed RTT, and the window
        follows the model."""
        if srtt:
            self._srtt = srtt
        if now is not None and srtt:
            if self._sample_start is None:
                self._sample_start = now
                self._sample_sent = 0
                self._app_limited = False
            else:
                self._sample_bytes += acked_bytes
                elapsed = now - self._sample_start
                if elapsed >= srtt:
                    self._end_round(min(self._sample_bytes, self._sample_sent) / elapsed)
                    self._sample_bytes = 0
                    self._sample_sent = 0
                    self._sample_start = now
        if (self.state == DRAIN and in_flight is not None and self.min_rtt is not None
                and in_flight <= self.bandwidth * self.min_rtt):
            self._probe()           # the queue startup built is gone
        if not self.bandwidth or not srtt or self.min_rtt is None:
            self.cwnd += acked_bytes                       # slow start until a sample
        else:
            bdp = self.bandwidth * srtt
            if self.state == STARTUP:
                # slow start, at most startup's gain over the model (the estimate lags a round)
                self.cwnd = max(self.cwnd, min(self.cwnd + acked_bytes, K_STARTUP_GAIN * bdp))
            else:
                target = max(K_WINDOW_GAIN * bdp, K_MODEL_FLOOR_PACKETS * self.datagram_size)
                # grow toward the model as acks arrive; fall to it at once
                self.cwnd = min(target, self.cwnd + acked_bytes)
        if self.cwnd > self.max_cwnd:
            self.cwnd = self.max_cwnd

    def _end_round(self, rate: float) -> None:
        self.rounds += 1
        if self._round_min_rtt is not None:
            self._min_rtts.append(self._round_min_rtt)
            if len(self._min_rtts) > K_BANDWIDTH_SAMPLES:
                del self._min_rtts[0]
            self.min_rtt = min(self._min_rtts)
            self._round_min_rtt = None
        app_limited, self._app_limited = self._app_limited, False
        if not app_limited or rate > self.bandwidth:
            self._samples.append(rate)
            if len(self._samples) > K_BANDWIDTH_SAMPLES:
                del self._samples[0]
            self.bandwidth = max(self._samples)
        if self.state == STARTUP:
            if app_limited:
                return
            if self.bandwidth >= self._startup_best * K_STARTUP_GROWTH:
                self._startup_best = self.bandwidth
                self._startup_stalls = 0
            else:
                self._startup_stalls += 1
                if self._startup_stalls >= K_STARTUP_ROUNDS:
                    self.state = DRAIN
                    self._drain_rounds = 0
        elif self.state == DRAIN:
            self._drain_rounds += 1
            if self._drain_rounds >= K_DRAIN_ROUNDS:
                self._probe()
        else:
            self._cycle = (self._cycle + 1) % len(K_PROBE_GAINS)

    def _queueing(self) -> bool:
        """The smoothed RTT is well above the smallest: a queue is standing."""
        return (self.min_rtt is None or self._srtt is None
                or self._srtt > K_QUEUE_RTT * self.min_rtt)

    def _probe(self) -> None:
        self.state = PROBE_BANDWIDTH
        self._cycle = 2              # start at a gain of 1: nothing to drain, nothing probed yet

    def on_lost(self, highest_lost_number: int, next_number: int) -> None:
        """Messages up to `highest_lost_number` were declared lost; `next_number` is the
        number the next new message will get. The window stays (the model, not the loss,
        says what the path carries); a loss while probing for more bandwidth ends the probe:
        the queue it built overflowed."""
        self.losses += 1
        if self.state == STARTUP and self.bandwidth and self._queueing():
            # startup doubles the rate each round: a loss with the RTT up means it overran a
            # queue (a random loss on an unqueued path does not end it)
            self.state = DRAIN
            self._drain_rounds = 0
        if self.recovery_start is not None and highest_lost_number < self.recovery_start:
            return
        self.recovery_start = next_number
        if self.state == PROBE_BANDWIDTH and K_PROBE_GAINS[self._cycle] > 1:
            self._cycle += 1

    def on_persistent_congestion(self) -> None:
        """RFC 9002 7.6.2: everything sent over several probe timeouts went unacknowledged:
        the path is not what the model says. The window falls to the minimum and the model
        starts over from startup."""
        self.cwnd = K_MINIMUM_WINDOW_PACKETS * self.datagram_size
        self.state = STARTUP
        self.bandwidth = 0.0
        self._samples.clear()
        self._sample_bytes = 0
        self._sample_sent = 0
        self._sample_start = None
        self._startup_best = 0.0
        self._startup_stalls = 0

    def pacing_rate(self, srtt: float | None) -> float | None:
        """Bytes per second to pace new data at (None: no RTT yet, or a zero one)."""
        if self.bandwidth and self.state != STARTUP:
            return self.pacing_gain * self.bandwidth
        if not srtt:
            return None
        # no estimate yet, or still in startup: the window per RTT, at startup's gain
        return K_STARTUP_GAIN * max(self.cwnd / srtt, self.bandwidth)

    def available(self, bytes_in_flight: int) -> int:
        """Bytes that may be sent now."""
        return max(0, int(self.cwnd) - bytes_in_flight)
