"""Congestion control for UDP sessions: NewReno (RFC 9002 section 7), counted in bytes with
the datagram size as the segment size, with Westwood+'s reduction on loss: the window falls
to the bandwidth delivered times the minimum RTT when that is more than 0.7 of it. A
random loss on a path that is not queueing then costs little (the window already is the
path's bandwidth-delay product), while a loss from a full queue (RTT far above the minimum)
still cuts the window by 30% (CUBIC's factor). TCP sessions leave this to TCP.

Westwood+: L. A. Grieco, S. Mascolo, "Performance evaluation and comparison of Westwood+,
New Reno, and Vegas TCP congestion control", ACM CCR 34(2), 2004 (Linux tcp_westwood)."""
from __future__ import annotations

# RFC 9002 7.2: initial window of 10 datagrams, minimum of 2.
K_INITIAL_WINDOW_PACKETS = 10
K_MINIMUM_WINDOW_PACKETS = 2
# On loss the window falls to this fraction of itself: CUBIC's 0.7 (RFC 9438 4.6) rather
# than NewReno's half (RFC 9002 7.3.2). Under random loss at rate p the window saws
# between b W and W with W = sqrt(2 / (p (1 - b**2))) packets (one loss per W (1 - b)
# round trips of one packet's growth each): on average 5.5 packets at 5% loss with 0.5,
# 7.5 with 0.7, while a queue that overflows still sheds 30% of the window per loss period.
K_LOSS_REDUCTION_FACTOR = 0.7
# RFC 9002 7.7: pace at N * cwnd / smoothed RTT, N = 1.25.
K_PACING_GAIN = 1.25
# Westwood+: one bandwidth sample per RTT, low-pass filtered with this gain.
K_BANDWIDTH_GAIN = 1 / 8


class NewReno:
    """Slow start, congestion avoidance and one multiplicative decrease per recovery period
    (a loss of a message sent before the period began does not reduce the window again).

    The window never exceeds `max_packets` datagrams (at least the minimum of 2): the most
    the session's flow control lets be in flight, one message per datagram at most. Beyond
    that acks would grow it without bound while nothing could use it, and a loss would
    then cut a number that limits nothing."""

    __slots__ = ("datagram_size", "cwnd", "ssthresh", "recovery_start", "losses", "max_cwnd",
                 "bandwidth", "min_rtt", "_sample_bytes", "_sample_start")

    def __init__(self, datagram_size: int, max_packets: int | None = None) -> None:
        self.datagram_size = datagram_size
        self.max_cwnd = float("inf")
        self.cwnd = K_INITIAL_WINDOW_PACKETS * datagram_size
        self.ssthresh = float("inf")
        # First message number sent after recovery began; None when not in recovery.
        self.recovery_start: int | None = None
        self.losses = 0
        self.bandwidth = 0.0        # bytes per second acknowledged (filtered); 0: no sample yet
        self.min_rtt: float | None = None
        self._sample_bytes = 0
        self._sample_start: float | None = None
        if max_packets is not None:
            self.limit(max_packets)

    def limit(self, max_packets: int) -> None:
        """Cap the window at `max_packets` datagrams (at least the minimum window)."""
        self.max_cwnd = max(K_MINIMUM_WINDOW_PACKETS, max_packets) * self.datagram_size
        self.cwnd = min(self.cwnd, self.max_cwnd)

    def on_rtt(self, sample: float) -> None:
        """An RTT sample (the smallest one is the path's delay without queueing)."""
        if sample > 0 and (self.min_rtt is None or sample < self.min_rtt):
            self.min_rtt = sample

    def on_acked(self, acked_bytes: int, now: float | None = None, srtt: float | None = None) -> None:
        """`acked_bytes` newly acknowledged at `now`; with `srtt` the bandwidth estimate
        takes a sample once per smoothed RTT."""
        if now is not None and srtt:
            if self._sample_start is None:
                self._sample_start = now
            else:
                self._sample_bytes += acked_bytes
                elapsed = now - self._sample_start
                if elapsed >= srtt:
                    rate = self._sample_bytes / elapsed
                    self.bandwidth = rate if not self.bandwidth else (
                        self.bandwidth + K_BANDWIDTH_GAIN * (rate - self.bandwidth))
                    self._sample_bytes = 0
                    self._sample_start = now
        if self.cwnd < self.ssthresh:
            self.cwnd += acked_bytes                       # slow start
        else:
            self.cwnd += self.datagram_size * acked_bytes // max(1, int(self.cwnd))
        if self.cwnd > self.max_cwnd:
            self.cwnd = self.max_cwnd

    def on_lost(self, highest_lost_number: int, next_number: int) -> None:
        """Messages up to `highest_lost_number` were declared lost; `next_number` is the
        number the next new message will get."""
        self.losses += 1
        if self.recovery_start is not None and highest_lost_number < self.recovery_start:
            return
        self.recovery_start = next_number
        target = self.cwnd * K_LOSS_REDUCTION_FACTOR
        if self.min_rtt is not None:
            # Westwood+: no lower than what the path delivered over its unqueued RTT
            target = max(target, min(self.cwnd, self.bandwidth * self.min_rtt))
        self.ssthresh = max(target, K_MINIMUM_WINDOW_PACKETS * self.datagram_size)
        self.cwnd = self.ssthresh

    def on_persistent_congestion(self) -> None:
        """RFC 9002 7.6.2: everything sent over several probe timeouts went unacknowledged:
        the window falls to the minimum (slow start then finds the path again up to half
        what it was)."""
        self.ssthresh = max(self.cwnd * K_LOSS_REDUCTION_FACTOR,
                            K_MINIMUM_WINDOW_PACKETS * self.datagram_size)
        self.cwnd = K_MINIMUM_WINDOW_PACKETS * self.datagram_size

    def pacing_rate(self, srtt: float | None) -> float | None:
        """Bytes per second to pace new data at (None: no RTT yet, or a zero one)."""
        if not srtt:
            return None
        return K_PACING_GAIN * self.cwnd / srtt

    def available(self, bytes_in_flight: int) -> int:
        """Bytes that may be sent now."""
        return max(0, int(self.cwnd) - bytes_in_flight)
