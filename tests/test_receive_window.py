"""ReceiveWindow: native against its pure-Python twin under random batches, and the edge
cases of the contract (ext/README.md "receive_window") on both."""
from __future__ import annotations

import importlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NATIVE = importlib.import_module("tether._native.receive_window")
REFERENCE = importlib.import_module("tether._reference.receive_window")
MAX = 2**64 - 1


@pytest.fixture(params=[NATIVE, REFERENCE], ids=["native", "reference"])
def ReceiveWindow(request):
    return request.param.ReceiveWindow


def batch(first: int, n: int) -> list[bytes]:
    """Payloads that name their number, so delivery order can be checked."""
    return [b"%d" % (first + i) for i in range(n)]


def numbers(delivered: list[bytes]) -> list[int]:
    return [int(p) for p in delivered]


STATE = ("held", "buffered", "buffer_remaining", "floor", "highest", "duplicates", "refused",
         "delivered", "has_gap")


def outcome(window, method: str, *args):
    try:
        return ("ok", getattr(window, method)(*args))
    except Exception as exc:  # compared between the twins, class and message
        return ("raised", type(exc), str(exc))


def state(window) -> tuple:
    return tuple(getattr(window, name) for name in STATE) + (window.ack_ranges(1000),)


# ---- differential ----

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    capacity=st.sampled_from([1, 2, 3, 8, 63, 64, 65, 130]),
    ordered=st.booleans(),
    first_number=st.sampled_from([1, 1, 1, 500, MAX - 100, MAX - 5]),
    data=st.data(),
)
def test_native_matches_reference(capacity, ordered, first_number, data):
    native = NATIVE.ReceiveWindow(capacity, ordered, first_number)
    reference = REFERENCE.ReceiveWindow(capacity, ordered, first_number)
    seen: list[int] = []
    for _ in range(data.draw(st.integers(1, 60), label="steps")):
        op = data.draw(st.sampled_from(["accept"] * 6 + ["release", "release", "ranges"]))
        if op == "accept":
            # Around the window: old duplicates, reordering, beyond the window.
            floor = reference.floor
            lo = max(0, floor - 6)
            hi = min(MAX, floor + capacity + 4)
            first = data.draw(st.integers(lo, hi))
            n = data.draw(st.integers(0, min(12, MAX - first + 1)))
            call = ("accept", first, batch(first, n))
        elif op == "release":
            call = ("release", data.draw(st.integers(0, reference.held + 1)))
        else:
            call = ("ack_ranges", data.draw(st.integers(0, 5)))
        got, want = outcome(native, *call), outcome(reference, *call)
        assert got == want, call
        assert state(native) == state(reference), call
        assert native.held + native.buffered <= capacity
        if op == "accept" and got[0] == "ok":
            seen.extend(numbers(got[1]))
    # Each message delivered exactly once; in order when ordered.
    assert len(seen) == len(set(seen)) == native.delivered
    if ordered:
        assert seen == list(range(first_number, first_number + len(seen)))


# ---- construction and arguments ----

def test_constructor_validates(ReceiveWindow):
    for capacity in (0, 65537):
        with pytest.raises(ValueError, match="capacity"):
            ReceiveWindow(capacity)
    with pytest.raises(ValueError, match="first_number"):
        ReceiveWindow(8, True, 0)
    with pytest.raises(ValueError, match="first_number"):
        ReceiveWindow(8, True, 2**64)
    with pytest.raises(TypeError, match="capacity"):
        ReceiveWindow("8")
    w = ReceiveWindow(8)
    assert (w.floor, w.highest, w.held, w.buffered, w.buffer_remaining, w.has_gap) == (1, 0, 0, 0, 8, False)
    assert w.ack_ranges(4) == []


def test_accept_arguments(ReceiveWindow):
    w = ReceiveWindow(8)
    with pytest.raises(TypeError, match="payloads"):
        w.accept(1, (b"a",))
    with pytest.raises(ValueError, match="first_number"):
        w.accept(-1, [b"a"])
    with pytest.raises(TypeError, match="first_number"):
        w.accept(1.0, [b"a"])
    with pytest.raises(ValueError, match="2\\*\\*64-1"):
        w.accept(MAX, [b"a", b"b"])
    with pytest.raises(ValueError, match="max_ranges"):
        w.ack_ranges(0)
    with pytest.raises(ValueError, match="held"):
        w.release(1)
    with pytest.raises(ValueError):
        w.release(-1)
    assert w.accept(5, []) == []
    assert (w.duplicates, w.refused, w.delivered) == (0, 0, 0)


# ---- ordering and de-duplication ----

def test_ordered_delivers_the_in_order_run(ReceiveWindow):
    w = ReceiveWindow(16)
    assert w.accept(3, batch(3, 2)) == []
    assert (w.buffered, w.has_gap, w.highest, w.floor) == (2, True, 4, 1)
    assert w.accept(6, batch(6, 1)) == []
    assert w.ack_ranges(8) == [(3, 4), (6, 6)]
    assert numbers(w.accept(1, batch(1, 2))) == [1, 2, 3, 4]
    assert (w.buffered, w.held, w.floor, w.has_gap) == (1, 4, 5, True)
    assert w.ack_ranges(8) == [(1, 4), (6, 6)]
    assert numbers(w.accept(4, batch(4, 4))) == [5, 6, 7]  # 4 and 6 are duplicates
    assert (w.duplicates, w.delivered, w.has_gap, w.buffer_remaining) == (2, 7, False, 9)
    assert w.ack_ranges(8) == [(1, 7)]


def test_unordered_delivers_on_arrival_exactly_once(ReceiveWindow):
    w = ReceiveWindow(16, ordered=False)
    assert numbers(w.accept(3, batch(3, 2))) == [3, 4]
    assert (w.buffered, w.held, w.floor, w.has_gap) == (0, 2, 1, True)
    assert numbers(w.accept(1, batch(1, 5))) == [1, 2, 5]
    assert numbers(w.accept(2, batch(2, 3))) == []
    assert (w.duplicates, w.delivered, w.floor, w.has_gap) == (5, 5, 6, False)
    assert w.ack_ranges(3) == [(1, 5)]


def test_old_and_zero_numbers_are_duplicates(ReceiveWindow):
    w = ReceiveWindow(8, True, 100)
    assert w.accept(0, batch(0, 3)) == []
    assert w.accept(98, batch(98, 3)) == [b"100"]
    assert (w.duplicates, w.refused, w.delivered) == (5, 0, 1)


# ---- the window bound ----

def test_never_holds_more_than_capacity(ReceiveWindow):
    w = ReceiveWindow(4)
    assert w.accept(2, batch(2, 6)) == []  # 2..4 buffered, 5..7 beyond floor + 4
    assert (w.buffered, w.refused, w.highest) == (3, 3, 4)
    assert w.ack_ranges(4) == [(2, 4)]  # refused numbers are not acknowledged
    assert numbers(w.accept(1, batch(1, 1))) == [1, 2, 3, 4]
    assert (w.held, w.buffer_remaining) == (4, 0)
    assert w.accept(5, batch(5, 1)) == []  # held by the application: no room
    assert w.refused == 4
    w.release(3)
    assert numbers(w.accept(5, batch(5, 5))) == [5, 6, 7]
    assert (w.held, w.refused, w.floor) == (4, 6, 8)


def test_unordered_window_bounds_held_messages(ReceiveWindow):
    w = ReceiveWindow(4, ordered=False)
    # all of floor 1 + capacity 4 is accepted although 1 is late: what was advertised fits
    assert numbers(w.accept(2, batch(2, 3))) == [2, 3, 4]
    assert (w.held, w.refused, w.buffer_remaining) == (3, 0, 1)
    assert numbers(w.accept(1, batch(1, 5))) == [1]  # then 5 is refused: held reached 4
    assert (w.held, w.duplicates, w.refused, w.buffer_remaining, w.floor) == (4, 3, 1, 0, 5)
    assert numbers(w.accept(3, batch(3, 1))) == []  # a duplicate even with no room left
    assert (w.duplicates, w.refused) == (4, 1)
    w.release(4)
    assert numbers(w.accept(5, batch(5, 5))) == [5, 6, 7, 8]  # 9: held is 4 again
    assert (w.held, w.refused) == (4, 2)


# ---- the top of the number space ----

def test_last_number_and_rollover(ReceiveWindow):
    w = ReceiveWindow(8, True, MAX - 2)
    assert w.accept(MAX, [b"c"]) == []
    assert w.ack_ranges(2) == [(MAX, MAX)]
    assert w.accept(MAX - 2, [b"a", b"b"]) == [b"a", b"b", b"c"]
    assert (w.floor, w.highest, w.has_gap) == (2**64, MAX, False)
    assert w.ack_ranges(2) == [(MAX - 2, MAX)]
    assert w.accept(MAX, [b"c"]) == []
    assert w.duplicates == 1


def test_last_number_unordered(ReceiveWindow):
    w = ReceiveWindow(4, False, MAX)
    assert w.accept(MAX, [b"z"]) == [b"z"]
    assert w.accept(MAX, [b"z"]) == []
    assert (w.floor, w.duplicates, w.ack_ranges(1)) == (2**64, 1, [(MAX, MAX)])


# ---- acknowledgement ranges ----

def test_ack_ranges_keep_the_lowest(ReceiveWindow):
    """A full ack keeps the lowest ranges: every number below its last range is accounted
    for (a resent message keeps its old number; newer ranges must not crowd it out)."""
    w = ReceiveWindow(64)
    w.accept(1, batch(1, 3))
    for n in range(5, 40, 3):  # runs of two with gaps of one
        w.accept(n, batch(n, 2))
    full = w.ack_ranges(1000)
    assert full[0] == (1, 3) and full[1] == (5, 6) and full[-1] == (38, 39)
    assert len(full) == 13
    for most in range(1, 15):
        got = w.ack_ranges(most)
        if most >= len(full):
            assert got == full
        else:
            assert got == full[:most]


def test_ack_ranges_without_a_cumulative_range(ReceiveWindow):
    w = ReceiveWindow(200, ordered=False)
    for n in (150, 3, 70, 71, 72, 64, 127, 128):  # across bitmap words
        w.accept(n, batch(n, 1))
    assert w.ack_ranges(10) == [(3, 3), (64, 64), (70, 72), (127, 128), (150, 150)]
    assert w.ack_ranges(2) == [(3, 3), (64, 64)]


def test_ring_wraps_over_many_windows():
    rng = random.Random(7)
    native = NATIVE.ReceiveWindow(64)
    reference = REFERENCE.ReceiveWindow(64)
    next_number = 1
    for _ in range(400):
        first = max(1, next_number - rng.randrange(0, 70))
        n = rng.randrange(1, 20)
        got = native.accept(first, batch(first, n))
        assert got == reference.accept(first, batch(first, n))
        assert native.ack_ranges(5) == reference.ack_ranges(5)
        native.release(native.held)
        reference.release(reference.held)
        next_number = max(next_number, first + n)
    assert native.floor > 300  # the 64-slot ring wrapped several times
    assert state(native) == state(reference)


def test_payload_references_are_released():
    import gc
    import weakref

    class Payload:
        pass

    w = NATIVE.ReceiveWindow(8)
    items = [Payload() for _ in range(4)]
    refs = [weakref.ref(p) for p in items]
    w.accept(2, items[1:])  # buffered
    del items
    gc.collect()
    assert [r() is None for r in refs] == [True, False, False, False]
    delivered = w.accept(1, [Payload()])
    assert len(delivered) == 4
    del delivered
    gc.collect()
    assert all(r() is None for r in refs)
    waiting = Payload()
    assert w.accept(7, [waiting]) == []  # buffered above the gap at 5
    ref = weakref.ref(waiting)
    del waiting
    gc.collect()
    assert ref() is not None
    del w
    gc.collect()
    assert ref() is None
