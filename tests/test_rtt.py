"""rtt: the RFC 6298 estimator and the deadline heap, native and reference.

Unit tests run on both twins (the `rtt` fixture); differential tests drive both with the
same random operations and compare every result, floats with == (both twins do the same
arithmetic in the same order, so they must agree bit for bit).
"""
from __future__ import annotations

import gc
import math
import random
import tracemalloc
import weakref

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tether._native.rtt as native
import tether._reference.rtt as reference


@pytest.fixture(params=["native", "reference"])
def rtt(request):
    return native if request.param == "native" else reference


def outcome(call, *args):
    """What a call did: ("ok", result) or ("raised", exception type, message)."""
    try:
        return ("ok", call(*args))
    except Exception as exc:
        return ("raised", type(exc), str(exc))


# ---------------------------------------------------------------- RttEstimator: RFC 6298


def test_rfc6298_constants(rtt):
    assert rtt.ALPHA == 1 / 8
    assert rtt.BETA == 1 / 4
    assert rtt.K == 4


def test_before_any_sample_rto_is_initial(rtt):
    est = rtt.RttEstimator(initial_rto=3.0)
    assert est.rto == 3.0
    assert est.srtt is None
    assert est.rttvar is None
    assert est.samples == 0


def test_rfc6298_worked_example(rtt):
    # Samples chosen as binary fractions so every step below is exact and checkable by hand.
    est = rtt.RttEstimator(initial_rto=1.0, min_rto=0.001, max_rto=60.0, granularity=0.001)
    # 2.2: SRTT = R = 1, RTTVAR = R/2 = 0.5, RTO = 1 + max(G, 4 * 0.5) = 3
    est.update(1.0)
    assert (est.srtt, est.rttvar, est.rto, est.samples) == (1.0, 0.5, 3.0, 1)
    # 2.3 with R' = 2: RTTVAR = 3/4 * 0.5 + 1/4 * |1 - 2| = 0.625 (from the old SRTT),
    # SRTT = 7/8 * 1 + 1/8 * 2 = 1.125, RTO = 1.125 + 4 * 0.625 = 3.625
    est.update(2.0)
    assert (est.srtt, est.rttvar, est.rto, est.samples) == (1.125, 0.625, 3.625, 2)
    # R' = 0.5: RTTVAR = 3/4 * 0.625 + 1/4 * |1.125 - 0.5| = 0.46875 + 0.15625 = 0.625,
    # SRTT = 7/8 * 1.125 + 1/8 * 0.5 = 1.046875, RTO = 1.046875 + 2.5 = 3.546875.
    # (Updating SRTT before RTTVAR would give RTTVAR = 0.59375 here.)
    est.update(0.5)
    assert (est.srtt, est.rttvar, est.rto, est.samples) == (1.046875, 0.625, 3.546875, 3)


def test_granularity_bounds_the_variance_term(rtt):
    # Constant samples: RTTVAR decays by 3/4 a sample (0.5, 0.375, 0.28125, 0.2109375,
    # 0.158203125, 0.11865234375) until 4 * RTTVAR < G = 0.5, then RTO = SRTT + G.
    est = rtt.RttEstimator(initial_rto=1.0, min_rto=0.01, granularity=0.5)
    est.update_many([1.0] * 5)
    assert est.rto == 1.0 + 4 * 0.158203125
    est.update(1.0)
    assert est.rttvar == 0.11865234375
    assert est.rto == 1.5


def test_zero_sample_is_valid(rtt):
    est = rtt.RttEstimator(min_rto=0.2, granularity=0.001)
    est.update(0.0)
    assert (est.srtt, est.rttvar, est.rto) == (0.0, 0.0, 0.2)


def test_int_samples_are_floats(rtt):
    a, b = rtt.RttEstimator(), rtt.RttEstimator()
    a.update(2)
    b.update(2.0)
    assert (a.srtt, a.rttvar, a.rto) == (b.srtt, b.rttvar, b.rto)
    assert type(a.srtt) is float


def test_rto_clamped_to_min(rtt):
    est = rtt.RttEstimator(min_rto=0.2)
    est.update(0.01)  # 0.01 + 4 * 0.005 = 0.03 < 0.2
    assert est.srtt == 0.01
    assert est.rto == 0.2


def test_rto_clamped_to_max(rtt):
    est = rtt.RttEstimator(max_rto=60.0)
    est.update(100.0)  # 100 + 200 > 60
    assert est.srtt == 100.0
    assert est.rto == 60.0


def test_min_equal_max_pins_the_rto(rtt):
    est = rtt.RttEstimator(initial_rto=5.0, min_rto=5.0, max_rto=5.0)
    est.update_many([0.001, 30.0, 2.0])
    assert est.rto == 5.0
    assert est.backoff() == 5.0


def test_backoff_doubles_up_to_max(rtt):
    est = rtt.RttEstimator(initial_rto=1.0, max_rto=60.0)
    # RFC 6298 5.5 applies before any sample too: the initial RTO doubles.
    assert [est.backoff() for _ in range(8)] == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert est.rto == 60.0
    assert est.samples == 0


def test_next_sample_clears_backoff(rtt):
    est = rtt.RttEstimator(min_rto=0.001)
    est.update(1.0)
    assert est.rto == 3.0
    est.backoff()
    est.backoff()
    assert est.rto == 12.0
    est.update(1.0)  # RTTVAR = 0.375, SRTT = 1: RTO = 2.5, not 12 and not 3
    assert est.rto == 2.5


@pytest.mark.parametrize("bad", [-0.001, -1.0, math.nan, math.inf, -math.inf])
def test_invalid_sample_is_refused_and_changes_nothing(rtt, bad):
    est = rtt.RttEstimator()
    est.update(0.5)
    before = (est.srtt, est.rttvar, est.rto, est.samples)
    with pytest.raises(ValueError, match="sample"):
        est.update(bad)
    with pytest.raises(ValueError, match="sample"):
        est.update_many([0.1, 0.2, bad, 0.3])
    assert (est.srtt, est.rttvar, est.rto, est.samples) == before


@pytest.mark.parametrize("bad", ["0.5", None, b"1", [0.5]])
def test_non_number_sample_is_a_type_error(rtt, bad):
    est = rtt.RttEstimator()
    with pytest.raises(TypeError, match="sample"):
        est.update(bad)
    with pytest.raises(TypeError, match="sample"):
        est.update_many([0.1, bad])
    assert est.samples == 0


def test_update_many_equals_update_one_by_one(rtt):
    samples = [random.Random(7).uniform(0.0, 3.0) for _ in range(200)]
    a, b = rtt.RttEstimator(), rtt.RttEstimator()
    a.update_many(samples)
    for sample in samples:
        b.update(sample)
    assert (a.srtt, a.rttvar, a.rto, a.samples) == (b.srtt, b.rttvar, b.rto, b.samples)


def test_update_many_takes_any_iterable(rtt):
    est = rtt.RttEstimator()
    est.update_many([])
    assert est.samples == 0
    est.update_many(x / 10 for x in range(1, 4))
    assert est.samples == 3


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"min_rto": 0.0}, "min_rto"),
        ({"min_rto": -0.5}, "min_rto"),
        ({"min_rto": math.nan}, "min_rto"),
        ({"max_rto": 0.1}, "max_rto"),  # below the default min_rto 0.2
        ({"max_rto": math.inf}, "max_rto"),
        ({"initial_rto": 0.1}, "initial_rto"),
        ({"initial_rto": 61.0}, "initial_rto"),
        ({"initial_rto": math.nan}, "initial_rto"),
        ({"granularity": -0.001}, "granularity"),
        ({"granularity": math.inf}, "granularity"),
    ],
)
def test_invalid_constructor_arguments(rtt, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        rtt.RttEstimator(**kwargs)


def test_non_number_constructor_argument(rtt):
    with pytest.raises(TypeError, match="max_rto"):
        rtt.RttEstimator(max_rto="60")


def test_constructor_values_are_kept(rtt):
    est = rtt.RttEstimator(initial_rto=2, min_rto=0.5, max_rto=30, granularity=0)
    assert (est.initial_rto, est.min_rto, est.max_rto, est.granularity) == (2.0, 0.5, 30.0, 0.0)
    assert est.rto == 2.0


# ---------------------------------------------------------------- RttEstimator: differential

valid_sample = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
any_sample = st.one_of(
    valid_sample,
    valid_sample,
    valid_sample,
    st.sampled_from([-1e-9, -1.0, math.nan, math.inf, -math.inf, 0.0, 5e-324, 1.7e308]),
)
estimator_op = st.one_of(
    st.tuples(st.just("update"), any_sample),
    st.tuples(st.just("update_many"), st.lists(any_sample, max_size=12)),
    st.tuples(st.just("backoff")),
)


@st.composite
def estimator_args(draw):
    min_rto = draw(st.floats(min_value=1e-6, max_value=10.0))
    max_rto = draw(st.floats(min_value=min_rto, max_value=1e4))
    initial_rto = draw(st.floats(min_value=min_rto, max_value=max_rto))
    granularity = draw(st.floats(min_value=0.0, max_value=1.0))
    return initial_rto, min_rto, max_rto, granularity


def estimator_state(est):
    return est.srtt, est.rttvar, est.rto, est.samples


@settings(max_examples=200, deadline=None)
@given(args=estimator_args(), ops=st.lists(estimator_op, max_size=40))
def test_estimator_native_matches_reference(args, ops):
    ours, theirs = native.RttEstimator(*args), reference.RttEstimator(*args)
    assert estimator_state(ours) == estimator_state(theirs)
    for name, *op_args in ops:
        assert outcome(getattr(ours, name), *op_args) == outcome(getattr(theirs, name), *op_args)
        assert estimator_state(ours) == estimator_state(theirs)
        assert args[1] <= ours.rto <= args[2]


@settings(max_examples=60, deadline=None)
@given(
    args=st.tuples(
        st.floats(allow_nan=True, allow_infinity=True, width=32),
        st.floats(allow_nan=True, allow_infinity=True, width=32),
        st.floats(allow_nan=True, allow_infinity=True, width=32),
        st.floats(allow_nan=True, allow_infinity=True, width=32),
    )
)
def test_estimator_constructor_native_matches_reference(args):
    ours = outcome(native.RttEstimator, *args)
    theirs = outcome(reference.RttEstimator, *args)
    assert ours[0] == theirs[0]
    if ours[0] == "raised":
        assert ours[1:] == theirs[1:]


# ---------------------------------------------------------------- DeadlineHeap


def test_empty_heap(rtt):
    heap = rtt.DeadlineHeap()
    assert len(heap) == 0
    assert not heap
    assert heap.peek() is None
    assert heap.next_deadline is None
    assert heap.pop_due(1e9) == []
    assert heap.get("a") is None
    assert heap.cancel("a") is False
    assert "a" not in heap


def test_pop_due_in_deadline_order(rtt):
    heap = rtt.DeadlineHeap()
    deadlines = {"e": 5.0, "a": 1.0, "d": 4.0, "b": 2.0, "c": 3.0}
    for key, deadline in deadlines.items():
        heap.set(key, deadline)
    assert len(heap) == 5
    assert heap.peek() == (1.0, "a")
    assert heap.next_deadline == 1.0
    assert heap.pop_due(0.5) == []
    # A deadline equal to now is due.
    assert heap.pop_due(3.0) == ["a", "b", "c"]
    assert len(heap) == 2
    assert "a" not in heap and "d" in heap
    assert heap.peek() == (4.0, "d")
    assert heap.pop_due(100.0) == ["d", "e"]
    assert heap.peek() is None


def test_equal_deadlines_first_set_first_out(rtt):
    heap = rtt.DeadlineHeap()
    for key in "abcd":
        heap.set(key, 7.0)
    heap.set("b", 7.0)  # re-setting counts as setting now: b goes behind c and d
    assert heap.peek() == (7.0, "a")
    assert heap.pop_due(7.0) == ["a", "c", "d", "b"]


def test_set_moves_a_key(rtt):
    heap = rtt.DeadlineHeap()
    heap.set("x", 10.0)
    heap.set("y", 20.0)
    heap.set("y", 5.0)
    assert (len(heap), heap.get("y"), heap.peek()) == (2, 5.0, (5.0, "y"))
    heap.set("y", 30.0)
    assert heap.peek() == (10.0, "x")
    assert heap.pop_due(25.0) == ["x"]
    assert heap.get("y") == 30.0


def test_cancel(rtt):
    heap = rtt.DeadlineHeap()
    for i in range(10):
        heap.set(i, float(i))
    assert heap.cancel(0) is True
    assert heap.cancel(0) is False
    assert heap.cancel(5) is True
    assert 5 not in heap and heap.get(5) is None
    assert len(heap) == 8
    assert heap.pop_due(100.0) == [1, 2, 3, 4, 6, 7, 8, 9]


def test_keys_are_any_hashable_and_keep_their_first_object(rtt):
    heap = rtt.DeadlineHeap()
    heap.set(("peer", 1), 2.0)
    heap.set(frozenset({1}), 1.0)
    heap.set(1, 3.0)
    heap.set(1.0, 0.5)  # the same dict key as 1: moves it, and 1 stays the key object
    assert len(heap) == 3
    first = heap.pop_due(0.5)
    assert first == [1] and type(first[0]) is int
    assert heap.pop_due(2.0) == [frozenset({1}), ("peer", 1)]


def test_unhashable_key_is_a_type_error(rtt):
    heap = rtt.DeadlineHeap()
    for call in (lambda: heap.set([1], 1.0), lambda: heap.get([1]), lambda: heap.cancel([1]),
                 lambda: [1] in heap):
        with pytest.raises(TypeError):
            call()
    assert len(heap) == 0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_deadline_or_now_is_refused(rtt, bad):
    heap = rtt.DeadlineHeap()
    heap.set("a", 1.0)
    with pytest.raises(ValueError, match="deadline"):
        heap.set("a", bad)
    with pytest.raises(ValueError, match="deadline"):
        heap.set("b", bad)
    with pytest.raises(ValueError, match="now"):
        heap.pop_due(bad)
    assert (len(heap), heap.get("a"), "b" in heap) == (1, 1.0, False)


def test_non_number_deadline_is_a_type_error(rtt):
    heap = rtt.DeadlineHeap()
    with pytest.raises(TypeError, match="deadline"):
        heap.set("a", "1.0")
    with pytest.raises(TypeError, match="now"):
        heap.pop_due(None)
    assert len(heap) == 0


def test_int_deadlines_are_floats(rtt):
    heap = rtt.DeadlineHeap()
    heap.set("a", 3)
    assert heap.get("a") == 3.0 and type(heap.get("a")) is float
    assert heap.pop_due(3) == ["a"]


def test_resetting_few_keys_keeps_memory_bounded(rtt):
    # 100k moves of 10 keys: a heap that kept every superseded entry would hold ~100k
    # entries (megabytes); a bounded one stays at its 10-key size.
    heap = rtt.DeadlineHeap()
    for key in range(10):
        heap.set(key, 0.0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(100_000):
            heap.set(i % 10, float(i % 977))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 32 * 1024
    assert len(heap) == 10
    assert sorted(heap.pop_due(1e9)) == list(range(10))


def test_heap_in_a_reference_cycle_is_collected(rtt):
    # Sessions are keys and may hold the heap: the cycle must stay visible to the GC.
    class Session:
        pass

    heap = rtt.DeadlineHeap()
    session = Session()
    session.timers = heap
    heap.set(session, 1.0)
    alive = weakref.ref(session)
    del heap, session
    gc.collect()
    assert alive() is None


# ---------------------------------------------------------------- DeadlineHeap: differential

heap_key = st.integers(min_value=0, max_value=12)
# Few distinct deadlines so ties are common.
heap_deadline = st.one_of(st.integers(min_value=0, max_value=20).map(float),
                          st.floats(min_value=-1e6, max_value=1e6))
heap_op = st.one_of(
    st.tuples(st.just("set"), heap_key, heap_deadline),
    st.tuples(st.just("set"), heap_key, heap_deadline),
    st.tuples(st.just("cancel"), heap_key),
    st.tuples(st.just("get"), heap_key),
    st.tuples(st.just("contains"), heap_key),
    st.tuples(st.just("peek")),
    st.tuples(st.just("next_deadline")),
    st.tuples(st.just("pop_due"), heap_deadline),
    st.tuples(st.just("set"), heap_key, st.sampled_from([math.nan, math.inf])),
)


def run_heap_op(heap, name, *args):
    if name == "contains":
        return outcome(lambda key: key in heap, *args)
    if name == "next_deadline":
        return outcome(lambda: heap.next_deadline)
    return outcome(getattr(heap, name), *args)


class HeapModel:
    """The obvious O(n) version: every key's (deadline, set order), sorted on demand."""

    def __init__(self):
        self.entries = {}
        self.order = 0

    def apply(self, name, *args):
        if name == "set":
            key, deadline = args
            if not math.isfinite(deadline):
                return "raised"
            self.order += 1
            self.entries[key] = (deadline, self.order)
            return None
        if name == "cancel":
            return self.entries.pop(args[0], None) is not None
        if name == "get":
            entry = self.entries.get(args[0])
            return None if entry is None else entry[0]
        if name == "contains":
            return args[0] in self.entries
        ordered = sorted(self.entries, key=self.entries.__getitem__)
        if name == "peek":
            return (self.entries[ordered[0]][0], ordered[0]) if ordered else None
        if name == "next_deadline":
            return self.entries[ordered[0]][0] if ordered else None
        due = [key for key in ordered if self.entries[key][0] <= args[0]]
        for key in due:
            del self.entries[key]
        return due


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(heap_op, max_size=80))
def test_heap_native_matches_reference_and_model(ops):
    ours, theirs, model = native.DeadlineHeap(), reference.DeadlineHeap(), HeapModel()
    for name, *args in ops:
        result = run_heap_op(ours, name, *args)
        assert result == run_heap_op(theirs, name, *args)
        expected = model.apply(name, *args)
        if expected == "raised":
            assert result[0] == "raised"
        else:
            assert result == ("ok", expected)
        assert len(ours) == len(theirs) == len(model.entries)


@pytest.mark.parametrize("seed", range(3))
def test_heap_growing_and_shrinking_matches_reference(seed):
    # Thousands of keys in bursts, so the native heap grows and shrinks its arrays.
    rng = random.Random(seed)
    ours, theirs = native.DeadlineHeap(), reference.DeadlineHeap()
    now = 0.0
    for _burst in range(12):
        for _ in range(rng.randrange(500, 3000)):
            key, deadline = rng.randrange(4000), now + rng.randrange(1000) / 10
            assert outcome(ours.set, key, deadline) == outcome(theirs.set, key, deadline)
            if rng.random() < 0.2:
                victim = rng.randrange(4000)
                assert ours.cancel(victim) == theirs.cancel(victim)
        assert len(ours) == len(theirs)
        assert ours.peek() == theirs.peek()
        # Drain most of it in a few steps so the arrays shrink.
        for _ in range(4):
            now += rng.randrange(10, 40)
            assert ours.pop_due(now) == theirs.pop_due(now)
            probe = rng.randrange(4000)
            assert ours.get(probe) == theirs.get(probe)
    assert ours.pop_due(now + 1e6) == theirs.pop_due(now + 1e6)
    assert len(ours) == len(theirs) == 0
