"""SendWindow: native against its pure-Python twin under random operation sequences, and
the edge cases of the contract (ext/README.md "send_window") on both."""
from __future__ import annotations

import importlib
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.errors import InvalidAcknowledgement, MessageNumberRollover, RetryLimitExceeded

NATIVE = importlib.import_module("tether._native.send_window")
REFERENCE = importlib.import_module("tether._reference.send_window")
MAX = 2**64 - 1


@pytest.fixture(params=[NATIVE, REFERENCE], ids=["native", "reference"])
def SendWindow(request):
    return request.param.SendWindow


def payloads(n: int, start: int = 0) -> list[bytes]:
    """Distinct payloads of different lengths."""
    return [b"p%d-" % i + b"x" * (i % 7) for i in range(start, start + n)]


# ---- differential ----

STATE = ("capacity", "max_retries", "next_number", "in_flight", "free", "bytes_in_flight", "lowest_unacked")


def outcome(window, method: str, *args):
    try:
        return ("ok", getattr(window, method)(*args))
    except Exception as exc:  # compared between the twins, class and message
        return ("raised", type(exc), str(exc))


def state(window) -> tuple:
    return tuple(getattr(window, name) for name in STATE) + (window.unacked(),)


@st.composite
def ack_ranges(draw, first: int, lowest: int, next_number: int) -> list:
    """Mostly valid acks (ascending, disjoint, sent numbers, often repeating ones already
    acked); sometimes covering unsent numbers or malformed."""
    if next_number == first or draw(st.integers(0, 7)) == 0:
        lo_edge, hi_edge = max(0, lowest - 4), min(MAX, next_number + 1)
    else:
        lo_edge, hi_edge = max(first, lowest - 2), next_number - 1
    points = sorted(draw(st.sets(st.integers(lo_edge, hi_edge), max_size=8)))
    if len(points) % 2:
        points.append(points[-1])
    ranges = [(points[i], points[i + 1]) for i in range(0, len(points), 2)]
    ranges = [r for i, r in enumerate(ranges) if i == 0 or r[0] > ranges[i - 1][1]]
    if ranges and draw(st.integers(0, 15)) == 0:
        i = draw(st.integers(0, len(ranges) - 1))
        lo, hi = ranges[i]
        ranges[i] = (hi + 1, lo) if hi < MAX else (hi, lo - 1) if lo > 0 else (1, 0)
    if len(ranges) > 1 and draw(st.integers(0, 15)) == 0:
        ranges.reverse()
    return ranges


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    capacity=st.integers(1, 12),
    max_retries=st.integers(0, 4),
    first_number=st.sampled_from([0, 1, 1, 1, 1000, MAX - 40, MAX - 3, MAX]),
    data=st.data(),
)
def test_native_matches_reference(capacity, max_retries, first_number, data):
    native = NATIVE.SendWindow(capacity, max_retries, first_number)
    reference = REFERENCE.SendWindow(capacity, max_retries, first_number)
    now = 0.0
    made = 0
    for _ in range(data.draw(st.integers(1, 60), label="steps")):
        now += data.draw(st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.5, 10.0, -1.0]), label="dt")
        op = data.draw(st.sampled_from(
            ["push"] * 4 + ["ack"] * 5 + ["due"] * 2
            + ["deadline", "fast", "fast", "loss_deadline", "resume", "retries"]
        ))
        if op == "push":
            n = data.draw(st.integers(0, capacity + 2))
            batch = payloads(n, made)
            made += n
            start = data.draw(st.integers(0, n))
            count = data.draw(st.sampled_from([-1, n - start, max(0, n - start - 1)]))
            call = ("push", batch, now, start, count)
        elif op == "ack":
            ranges = data.draw(ack_ranges(first_number, reference.lowest_unacked, reference.next_number))
            call = ("apply_ack", ranges, now, data.draw(st.sampled_from([None, 0.0, 0.3, 1.0, 100.0])))
        elif op == "due":
            call = ("retransmit_due", now, data.draw(st.sampled_from([0.3, 1.0, 2.0])),
                    data.draw(st.sampled_from([1.5, 4.0, math.inf])), data.draw(st.sampled_from([-1, 0, 1, 3])))
        elif op == "deadline":
            call = ("next_deadline", data.draw(st.sampled_from([0.3, 1.0])), data.draw(st.sampled_from([1.5, 60.0])))
        elif op == "fast":
            call = ("detect_lost", now, data.draw(st.sampled_from([0.0, 0.3, 1.0, 100.0])),
                    data.draw(st.sampled_from([-1, 0, 1, 2])))
        elif op == "loss_deadline":
            call = ("loss_deadline", data.draw(st.sampled_from([0.0, 0.3, 1.0])))
        elif op == "resume":
            call = ("mark_all_sent", now, data.draw(st.booleans(), label="reset_retries"))
        else:
            call = ("retries_of", data.draw(st.integers(max(0, reference.lowest_unacked - 1),
                                                        min(MAX, reference.next_number))))
        got, want = outcome(native, *call), outcome(reference, *call)
        assert got == want, call
        assert state(native) == state(reference), call
        assert native.in_flight <= native.capacity - native.free


# ---- construction and arguments ----

def test_constructor_validates(SendWindow):
    for capacity in (0, 65537, -1):
        with pytest.raises(ValueError, match="capacity"):
            SendWindow(capacity, 3)
    with pytest.raises(ValueError, match="max_retries"):
        SendWindow(8, -1)
    with pytest.raises(ValueError, match="first_number"):
        SendWindow(8, 3, 2**64)
    with pytest.raises(TypeError, match="capacity"):
        SendWindow(8.0, 3)
    w = SendWindow(65536, 0, 0)
    assert (w.capacity, w.max_retries, w.next_number, w.lowest_unacked, w.free) == (65536, 0, 0, 0, 65536)


def test_push_arguments(SendWindow):
    w = SendWindow(8, 3)
    with pytest.raises(TypeError, match="payloads"):
        w.push((b"a",), 0.0)
    with pytest.raises(ValueError, match="start"):
        w.push([b"a"], 0.0, 2)
    with pytest.raises(ValueError, match="count"):
        w.push([b"a", b"b"], 0.0, 1, 2)
    with pytest.raises(ValueError, match="now"):
        w.push([b"a"], math.nan)
    with pytest.raises(TypeError, match="now"):
        w.push([b"a"], "0")
    with pytest.raises(TypeError):
        w.push([b"a", 5], 0.0)  # no len(): nothing taken
    assert (w.in_flight, w.next_number) == (0, 1)
    assert w.push([b"a", b"bb", b"ccc", b"dddd"], 0.0, 1, 2) == 2
    assert w.unacked() == [(1, b"bb"), (2, b"ccc")]
    assert w.bytes_in_flight == 5


def test_push_takes_len_at_push(SendWindow):
    data = bytearray(b"12345")
    w = SendWindow(4, 3)
    w.push([data], 0.0)
    data.extend(b"678")
    assert w.bytes_in_flight == 5
    assert w.apply_ack([(1, 1)], 1.0) == (1, 5, [1.0])
    assert w.bytes_in_flight == 0


# ---- window bounds ----

def test_full_window(SendWindow):
    w = SendWindow(4, 3)
    assert w.push(payloads(6), 0.0) == 4
    assert (w.free, w.in_flight, w.next_number) == (0, 4, 5)
    assert w.push(payloads(1), 0.0) == 0
    # Acked above a gap: the slots stay taken until the gap is acked.
    assert w.apply_ack([(2, 4)], 1.0)[0] == 3
    assert (w.in_flight, w.free, w.lowest_unacked) == (1, 0, 1)
    assert w.push(payloads(1), 1.0) == 0
    assert w.apply_ack([(1, 4)], 2.0)[0] == 1
    assert (w.in_flight, w.free, w.lowest_unacked) == (0, 4, 5)
    assert w.push(payloads(5), 2.0) == 4


def test_rollover_at_the_top_of_the_number_space(SendWindow):
    w = SendWindow(8, 3, first_number=MAX - 2)
    with pytest.raises(MessageNumberRollover):
        w.push(payloads(4), 0.0)
    assert (w.in_flight, w.next_number) == (0, MAX - 2)  # nothing taken
    assert w.push(payloads(3), 0.0) == 3
    assert w.next_number == 2**64
    assert w.unacked()[-1][0] == MAX
    with pytest.raises(MessageNumberRollover):
        w.push(payloads(1), 0.0)
    assert w.push([], 0.0) == 0
    with pytest.raises(InvalidAcknowledgement):
        w.apply_ack([(MAX - 3, MAX)], 1.0)
    assert w.apply_ack([(MAX, MAX)], 1.0)[0] == 1
    assert w.apply_ack([(MAX - 2, MAX)], 1.0)[0] == 2
    assert (w.lowest_unacked, w.in_flight, w.free) == (2**64, 0, 8)
    with pytest.raises(KeyError):
        w.retries_of(MAX)


def test_number_zero(SendWindow):
    w = SendWindow(4, 3, first_number=0)
    w.push(payloads(2), 0.0)
    assert w.unacked()[0][0] == 0
    assert w.apply_ack([(0, 0)], 0.5) == (1, len(payloads(1)[0]), [0.5])
    assert w.lowest_unacked == 1


# ---- acknowledgements ----

def test_ack_for_a_number_never_sent_applies_nothing(SendWindow):
    w = SendWindow(8, 3, first_number=10)
    w.push(payloads(5), 0.0)  # 10..14
    for bad in ([(10, 12), (14, 15)], [(9, 11)], [(20, 30)], [(11, 11), (10, 10)],
                [(12, 11)], [(10, 12), (12, 13)]):
        with pytest.raises(InvalidAcknowledgement):
            w.apply_ack(bad, 1.0)
        assert (w.in_flight, w.lowest_unacked) == (5, 10), bad
    with pytest.raises(ValueError, match=r"ranges\[0\]\[1\]"):
        w.apply_ack([(10, 2**64)], 1.0)
    with pytest.raises(TypeError, match=r"ranges\[1\]"):
        w.apply_ack([(10, 10), [12, 13]], 1.0)
    with pytest.raises(TypeError, match="ranges"):
        w.apply_ack(((10, 10),), 1.0)
    assert w.in_flight == 5


def test_ack_returns_new_only_and_one_sample_from_the_newest_transmission(SendWindow):
    w = SendWindow(8, 3)
    w.push(payloads(2), 0.0)
    w.push(payloads(2, 2), 1.0)
    size = [len(p) for p in payloads(4)]
    # 2 and 3 newly acked: the sample is from 3, the newer transmission (sent at 1.0)
    assert w.apply_ack([(2, 3)], 4.0) == (2, size[1] + size[2], [3.0])
    # 1 is older than a transmission already acknowledged: no sample (RFC 9002 5.1)
    assert w.apply_ack([(1, 3)], 5.0) == (1, size[0], [])
    assert w.apply_ack([(1, 3)], 6.0) == (0, 0, [])
    assert w.apply_ack([], 6.0) == (0, 0, [])
    assert w.lowest_unacked == 4
    w.push(payloads(1, 4), 7.0)
    # 4 (sent at 1.0) and 5 (at 7.0) newly acked: one sample, from 5
    assert w.apply_ack([(1, 5)], 7.5) == (2, size[3] + len(payloads(1, 4)[0]), [0.5])


def test_karns_rule_no_sample_from_a_resent_message(SendWindow):
    w = SendWindow(8, 3)
    w.push(payloads(2), 0.0)
    assert [n for n, _ in w.retransmit_due(1.5, 1.0, 60.0, limit=1)] == [1]
    acked, _, samples = w.apply_ack([(1, 2)], 2.0)
    assert (acked, samples) == (2, [2.0])  # message 2 only
    w.push(payloads(1), 3.0)
    w.mark_all_sent(4.0)  # resent on resume: ambiguous too
    assert w.apply_ack([(3, 3)], 5.0) == (1, len(payloads(1)[0]), [])


# ---- retransmission on timeout ----

def test_backoff_doubles_per_message_and_caps_at_max_rto(SendWindow):
    w = SendWindow(8, 10)
    w.push([b"a"], 0.0)
    w.push([b"b"], 0.5)
    assert w.next_deadline(1.0, 3.0) == 1.0
    assert w.retransmit_due(0.99, 1.0, 3.0) == []
    assert w.retransmit_due(1.0, 1.0, 3.0) == [(1, b"a")]
    assert (w.retries_of(1), w.retries_of(2)) == (1, 0)
    assert w.next_deadline(1.0, 3.0) == 1.5  # message 2: 0.5 + 1
    assert w.retransmit_due(1.5, 1.0, 3.0) == [(2, b"b")]
    assert w.next_deadline(1.0, 3.0) == 3.0  # message 1: 1 + 2
    assert w.retransmit_due(3.0, 1.0, 3.0) == [(1, b"a")]
    assert w.next_deadline(1.0, 3.0) == 3.5  # message 2: 1.5 + 2
    assert w.retransmit_due(3.5, 1.0, 3.0) == [(2, b"b")]
    assert w.next_deadline(1.0, 3.0) == 6.0  # message 1: 3 + min(4, 3)
    assert w.retransmit_due(6.0, 1.0, 3.0) == [(1, b"a")]
    assert w.next_deadline(1.0, 3.0) == 6.5  # message 2: 3.5 + min(4, 3)
    assert w.next_deadline(1.0, math.inf) == 7.5  # uncapped: 3.5 + 4
    assert w.retries_of(1) == 3


def test_retransmit_due_lowest_first_with_limit(SendWindow):
    w = SendWindow(8, 3)
    w.push(payloads(3), 0.0)
    w.retransmit_due(1.0, 1.0, 60.0, limit=1)  # 1 resent at 1.0
    w.push(payloads(1, 3), 1.0)
    due = w.retransmit_due(10.0, 1.0, 60.0, limit=3)
    assert [n for n, _ in due] == [1, 2, 3]
    assert [n for n, _ in w.retransmit_due(10.0, 1.0, 60.0)] == [4]
    assert w.next_deadline(1.0, 60.0) == 12.0  # 2..4 resent once at 10: 10 + 2
    w.apply_ack([(1, 4)], 11.0)
    assert w.next_deadline(1.0, 60.0) is None
    assert w.retransmit_due(100.0, 1.0, 60.0) == []


def test_deadlines_with_a_clock_that_went_backwards(SendWindow):
    w = SendWindow(8, 5)
    w.push([b"a"], 10.0)
    w.push([b"b"], 2.0)  # earlier than the message before it
    assert w.next_deadline(1.0, 60.0) == 3.0
    assert w.retransmit_due(3.0, 1.0, 60.0) == [(2, b"b")]


def test_retry_limit(SendWindow):
    w = SendWindow(8, 2)
    w.push([b"a", b"b"], 0.0)
    w.retransmit_due(1.0, 1.0, 60.0)
    w.retransmit_due(3.0, 1.0, 60.0)
    assert (w.retries_of(1), w.retries_of(2)) == (2, 2)
    with pytest.raises(RetryLimitExceeded, match="message 1 "):
        w.retransmit_due(7.0, 1.0, 60.0)
    assert (w.retries_of(1), w.retries_of(2)) == (2, 2)  # nothing marked
    assert w.next_deadline(1.0, 60.0) == 7.0
    z = SendWindow(8, 0)
    z.push([b"a"], 0.0)
    with pytest.raises(RetryLimitExceeded):
        z.retransmit_due(1.0, 1.0, 60.0)


def test_retransmit_arguments(SendWindow):
    w = SendWindow(8, 2)
    w.push([b"a"], 0.0)
    with pytest.raises(ValueError, match="rto"):
        w.retransmit_due(1.0, 0.0, 60.0)
    with pytest.raises(ValueError, match="max_rto"):
        w.next_deadline(1.0, math.nan)
    with pytest.raises(ValueError, match="limit"):
        w.retransmit_due(1.0, 1.0, 60.0, -2)
    with pytest.raises(ValueError, match="limit"):
        w.detect_lost(1.0, 1.0, -5)
    with pytest.raises(TypeError, match="number"):
        w.retries_of(1.0)


def test_large_retry_counts_do_not_overflow_the_backoff(SendWindow):
    w = SendWindow(1, 3000)
    w.push([b"a"], 0.0)
    now = 0.0
    for _ in range(1100):
        now += 2.0
        assert w.retransmit_due(now, 1.0, 2.0) == [(1, b"a")]
    assert w.next_deadline(1.0, 2.0) == now + 2.0
    assert w.next_deadline(1.0, math.inf) == math.inf


# ---- loss detection (RFC 9002 6.1: packet and time thresholds) ----

LONG = 100.0  # a loss_delay that never expires in these tests: the packet threshold alone


def test_packet_threshold_three_later_transmissions_acked(SendWindow):
    assert NATIVE.K_PACKET_THRESHOLD == REFERENCE.K_PACKET_THRESHOLD == 3
    w = SendWindow(16, 5)
    w.push(payloads(5), 0.0)  # serials 1..5
    w.apply_ack([(2, 3)], 0.1)
    assert w.detect_lost(0.1, LONG) == []  # only 2 later transmissions acked
    w.apply_ack([(2, 4)], 0.2)
    assert w.detect_lost(0.2, LONG) == [(1, payloads(1)[0])]
    assert w.retries_of(1) == 1
    assert w.detect_lost(0.3, LONG) == []  # that transmission is declared lost once
    w.push(payloads(3, 5), 0.4)  # 6..8 after the resend of 1
    w.apply_ack([(2, 4), (6, 7)], 0.5)  # serials 7, 8: 5 (serial 5) is lost, 1 (6) is not
    assert [n for n, _ in w.detect_lost(0.5, LONG)] == [5]
    w.apply_ack([(2, 4), (6, 8)], 0.6)  # serial 9
    assert [n for n, _ in w.detect_lost(0.6, LONG)] == [1]


def test_loss_detection_ignores_acks_of_resent_messages(SendWindow):
    w = SendWindow(16, 5)
    w.push(payloads(2), 0.0)  # serials 1, 2
    w.retransmit_due(1.0, 1.0, 60.0, limit=1)  # 1 again: serial 3
    w.push(payloads(3, 2), 1.0)  # serials 4..6
    w.apply_ack([(1, 1)], 1.1)  # which transmission of 1 arrived is unknown
    assert w.detect_lost(1.1, 0.0) == []
    assert w.loss_deadline(0.0) is None
    w.apply_ack([(1, 1), (5, 5)], 1.2)  # serial 6 acked: 2 (serial 2) is lost, 3 (4) is not
    assert [n for n, _ in w.detect_lost(1.2, LONG)] == [2]


def test_with_a_resend_delay_an_acked_resend_finds_an_earlier_resend_lost(SendWindow):
    """RFC 8985 by send order: 1 and 2 are resent (serials 3, 4), the resend of 1 is lost
    again; acks of the resend of 2 and of messages sent after it find it."""
    w = SendWindow(16, 5)
    w.push(payloads(2), 0.0)                          # serials 1, 2
    w.retransmit_due(1.0, 1.0, 60.0)                  # 1, 2 again: serials 3, 4
    w.push(payloads(2, 2), 1.0)                       # 3, 4: serials 5, 6
    # too soon after the resend (0.05 < 0.1): the ack of 2 may be for its first copy
    w.apply_ack([(2, 2)], 1.05, 0.1)
    assert w.detect_lost(1.05, LONG) == []
    w.apply_ack([(2, 2)], 1.2, 0.1)                   # a repeat: 2 already acked, nothing new
    assert w.detect_lost(1.2, LONG) == []
    w2 = SendWindow(16, 5)
    w2.push(payloads(2), 0.0)
    w2.retransmit_due(1.0, 1.0, 60.0)
    w2.push(payloads(2, 2), 1.0)
    w2.apply_ack([(2, 2)], 1.2, 0.1)                  # serial 4 counts: 1 (serial 3) is before it
    assert [n for n, _ in w2.detect_lost(1.2, 0.1)] == [1]   # by the time threshold
    w3 = SendWindow(16, 5)
    w3.push(payloads(2), 0.0)
    w3.retransmit_due(1.0, 1.0, 60.0)
    w3.push(payloads(4, 2), 1.0)                      # serials 5..8
    w3.apply_ack([(2, 2), (5, 6)], 1.2)               # without resend_delay: serial 8 counts
    assert [n for n, _ in w3.detect_lost(1.2, LONG)] == [1, 3]   # 3 (serial 5) too: 3 later
    with pytest.raises(ValueError, match="resend_delay"):
        SendWindow(4, 1).apply_ack([], 0.0, -1.0)
    with pytest.raises(TypeError, match="resend_delay"):
        SendWindow(4, 1).apply_ack([], 0.0, "0.1")


def test_time_threshold_declares_older_transmissions_lost(SendWindow):
    w = SendWindow(16, 5)
    w.push(payloads(1), 0.0)   # serial 1
    w.push(payloads(1, 1), 0.5)  # serial 2
    w.push(payloads(1, 2), 0.6)  # serial 3
    assert w.loss_deadline(1.0) is None  # nothing later has arrived
    w.apply_ack([(3, 3)], 0.7)  # only one transmission after 1 and 2: no packet threshold
    assert w.detect_lost(0.7, 1.0) == []
    assert w.loss_deadline(1.0) == 1.0  # 1, sent at 0.0
    assert w.detect_lost(1.0, 1.0) == [(1, payloads(1)[0])]
    assert w.loss_deadline(1.0) == 1.5  # 2, sent at 0.5; the resend of 1 is newer than 3
    assert w.detect_lost(1.49, 1.0) == []
    assert [n for n, _ in w.detect_lost(1.5, 1.0)] == [2]
    assert w.loss_deadline(1.0) is None
    with pytest.raises(ValueError, match="loss_delay"):
        w.loss_deadline(-1.0)
    with pytest.raises(ValueError, match="loss_delay"):
        w.detect_lost(1.0, math.nan)


def test_detect_lost_limit_and_retry_limit(SendWindow):
    w = SendWindow(16, 1)
    w.push(payloads(8), 0.0)
    w.apply_ack([(5, 8)], 0.1)
    assert [n for n, _ in w.detect_lost(0.1, LONG, limit=2)] == [1, 2]
    assert [n for n, _ in w.detect_lost(0.1, LONG)] == [3, 4]
    w.push(payloads(4, 8), 0.2)
    w.apply_ack([(5, 12)], 0.3)
    with pytest.raises(RetryLimitExceeded, match="message 1 "):
        w.detect_lost(0.3, LONG)
    assert [w.retries_of(n) for n in (1, 2, 3, 4)] == [1, 1, 1, 1]


# ---- resume ----

def test_unacked_and_mark_all_sent(SendWindow):
    w = SendWindow(8, 3)
    w.push(payloads(5), 0.0)
    w.apply_ack([(2, 2), (4, 4)], 0.5)
    assert w.unacked() == [(1, payloads(1)[0]), (3, payloads(3)[2]), (5, payloads(5)[4])]
    w.retransmit_due(1.0, 1.0, 60.0, limit=1)
    w.mark_all_sent(5.0)
    assert [w.retries_of(n) for n in (1, 3, 5)] == [1, 0, 0]
    assert w.next_deadline(1.0, 60.0) == 6.0
    with pytest.raises(KeyError):
        w.retries_of(2)  # acked above the gap


def test_mark_all_sent_can_start_the_retries_over(SendWindow):
    """After a peer's validated move (UDP) the retries spent on its old address don't count."""
    w = SendWindow(8, 2)
    w.push(payloads(3), 0.0)
    w.retransmit_due(1.0, 1.0, 60.0)
    w.retransmit_due(3.0, 1.0, 60.0)
    assert [w.retries_of(n) for n in (1, 2, 3)] == [2, 2, 2]
    with pytest.raises(RetryLimitExceeded):
        w.retransmit_due(7.0, 1.0, 60.0)
    w.mark_all_sent(7.0, reset_retries=True)
    assert [w.retries_of(n) for n in (1, 2, 3)] == [0, 0, 0]
    assert w.next_deadline(1.0, 60.0) == 8.0
    assert len(w.retransmit_due(8.0, 1.0, 60.0)) == 3
    with pytest.raises(TypeError, match="reset_retries"):
        w.mark_all_sent(9.0, reset_retries=1)


def test_payload_references_are_released():
    import gc
    import weakref

    class Payload:
        def __len__(self) -> int:
            return 3

    w = NATIVE.SendWindow(8, 3)
    items = [Payload() for _ in range(4)]
    refs = [weakref.ref(p) for p in items]
    w.push(items, 0.0)
    del items
    w.apply_ack([(1, 2)], 1.0)
    gc.collect()
    assert [r() is None for r in refs] == [True, True, False, False]
    del w
    gc.collect()
    assert all(r() is None for r in refs)
