"""RangeSet: the native module against its pure-Python twin (every result compared), both
against a plain Python set on a small domain, edge cases at 0 and 2**64-1, and bad input."""
from __future__ import annotations

import pickle
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from conftest import twins

native, reference = twins("rangeset")

MAX = 2**64 - 1
IMPLS = [native.RangeSet, reference.RangeSet]


@pytest.fixture(params=IMPLS, ids=["native", "reference"])
def RangeSet(request):
    return request.param


def outcome(call, *args):
    """(result, None) or (None, (exception type, message)): lets errors be compared too."""
    try:
        return call(*args), None
    except (TypeError, ValueError, OverflowError) as exc:
        return None, (type(exc), str(exc))


def assert_well_formed(ranges: list[tuple[int, int]]) -> None:
    for lo, hi in ranges:
        assert 0 <= lo <= hi <= MAX
    for (_, prev_hi), (lo, _) in zip(ranges, ranges[1:]):
        assert lo > prev_hi + 1, "ranges must be sorted, disjoint and non-adjacent"


# Numbers cluster near 0 and near 2**64-1 so that adds collide, touch and merge.
numbers = st.one_of(
    st.integers(0, 200),
    st.integers(MAX - 200, MAX),
    st.integers(0, MAX),
)
spans = st.one_of(st.integers(0, 20), st.integers(0, MAX))


@st.composite
def ranges(draw):
    lo = draw(numbers)
    return lo, min(MAX, lo + draw(spans))


# ---- differential: the same operations on both twins, every result compared ----

class TwinMachine(RuleBasedStateMachine):
    @initialize(initial=st.lists(ranges(), max_size=6))
    def start(self, initial):
        self.native = native.RangeSet(initial)
        self.reference = reference.RangeSet(initial)

    def both(self, method, *args):
        got = outcome(getattr(self.native, method), *args)
        want = outcome(getattr(self.reference, method), *args)
        assert got == want, (method, args)
        return got

    @rule(n=numbers)
    def add(self, n):
        self.both("add", n)

    @rule(r=ranges())
    def add_range(self, r):
        self.both("add_range", *r)

    @rule(r=ranges())
    def add_range_reversed(self, r):
        self.both("add_range", r[1], r[0])  # lo > hi when the range has more than one number

    @rule(batch=st.lists(numbers, max_size=30))
    def add_many(self, batch):
        self.both("add_many", batch)

    @rule(start=numbers, size=st.integers(1, 60), gap_every=st.integers(2, 10), swaps=st.integers(0, 3),
          seed=st.integers(0, 2**16))
    def add_many_mostly_ascending(self, start, size, gap_every, swaps, seed):
        # The common case: consecutive numbers with a few lost and a few re-ordered.
        batch = [n for n in range(start, min(MAX, start + size) + 1) if (n - start) % gap_every]
        rnd = random.Random(seed)
        for _ in range(swaps if len(batch) > 1 else 0):
            i = rnd.randrange(len(batch) - 1)
            batch[i], batch[i + 1] = batch[i + 1], batch[i]
        self.both("add_many", tuple(batch))

    @rule(n=numbers)
    def contains(self, n):
        self.both("contains", n)
        self.both("__contains__", n)

    @rule(floor=numbers)
    def first_missing(self, floor):
        self.both("first_missing", floor)

    @rule(floor=numbers)
    def remove_below(self, floor):
        self.both("remove_below", floor)

    @rule(m=st.integers(-1, 8))
    def encode(self, m):
        self.both("encode", m)

    @rule(bad=st.sampled_from([-1, 2**64, 1.5, "7", None]))
    def bad_number(self, bad):
        _, error = self.both("add", bad)
        assert error is not None

    @precondition(lambda self: self.native.range_count < 50)
    @rule()
    def copy_and_diverge(self):
        native_copy, reference_copy = self.native.copy(), self.reference.copy()
        assert native_copy == self.native and reference_copy == self.reference
        native_copy.add_range(0, MAX)
        reference_copy.add_range(0, MAX)
        assert native_copy.ranges() == reference_copy.ranges() == [(0, MAX)]

    @invariant()
    def same_contents(self):
        got = self.native.ranges()
        assert got == self.reference.ranges()
        assert_well_formed(got)
        assert list(self.native) == got
        assert self.native.count == self.reference.count == sum(hi - lo + 1 for lo, hi in got)
        assert self.native.range_count == self.reference.range_count == len(got)
        assert self.native.min == self.reference.min
        assert self.native.max == self.reference.max
        assert bool(self.native) == bool(self.reference) == bool(got)
        assert repr(self.native) == repr(self.reference)


TwinMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_twins_agree = TwinMachine.TestCase


# ---- both twins against a plain set on a small domain (catches a bug they share) ----

small = st.integers(0, 60)
small_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), small),
        st.tuples(st.just("add_range"), small, st.integers(0, 8)),
        st.tuples(st.just("add_many"), st.lists(small, max_size=12)),
        st.tuples(st.just("remove_below"), small),
    ),
    max_size=30,
)


@pytest.mark.parametrize("impl", IMPLS, ids=["native", "reference"])
@settings(max_examples=150, deadline=None)
@given(ops=small_ops, probes=st.lists(small, max_size=10))
def test_matches_a_plain_set(impl, ops, probes):
    rs, model = impl(), set()
    for op, *args in ops:
        if op == "add":
            assert rs.add(args[0]) == (args[0] not in model)
            model.add(args[0])
        elif op == "add_range":
            new = set(range(args[0], args[0] + args[1] + 1))
            assert rs.add_range(args[0], args[0] + args[1]) == len(new - model)
            model |= new
        elif op == "add_many":
            assert rs.add_many(args[0]) == len(set(args[0]) - model)
            model.update(args[0])
        else:
            rs.remove_below(args[0])
            model = {n for n in model if n >= args[0]}
        assert rs.count == len(model)
        assert_well_formed(rs.ranges())
        assert {n for lo, hi in rs.ranges() for n in range(lo, hi + 1)} == model
    for p in probes:
        assert (p in rs) == (p in model)
        assert rs.first_missing(p) == min(n for n in range(p, 200) if n not in model)
    assert rs.min == (min(model) if model else None)
    assert rs.max == (max(model) if model else None)


# ---- edge cases (each runs on both twins) ----

def test_no_len_iteration_yields_ranges(RangeSet):
    # len() would have to be the count while iteration yields ranges; list(rs) would then
    # preallocate count slots. So RangeSet has .count and .range_count and no __len__.
    rs = RangeSet([(1, 2**40), (2**41, 2**42)])
    with pytest.raises(TypeError):
        len(rs)
    assert list(rs) == [(1, 2**40), (2**41, 2**42)]
    assert sorted(rs, reverse=True) == [(2**41, 2**42), (1, 2**40)]


def test_empty(RangeSet):
    rs = RangeSet()
    assert rs.ranges() == [] and list(rs) == []
    assert rs.count == 0 and rs.range_count == 0
    assert rs.min is None and rs.max is None
    assert not rs
    assert rs.first_missing() == 0 and rs.first_missing(MAX) == MAX
    assert rs.encode(3) == [] and rs.encode(0) == []
    assert 0 not in rs and MAX not in rs
    rs.remove_below(MAX)
    assert rs == RangeSet()
    assert repr(rs) == "RangeSet([])"


def test_constructor_normalises(RangeSet):
    rs = RangeSet([(10, 12), (1, 3), (4, 4), (2, 2), (20, 30), [13, 13], (25, 40)])
    assert rs.ranges() == [(1, 4), (10, 13), (20, 40)]
    assert RangeSet(iter([(5, 5)])).ranges() == [(5, 5)]


def test_zero_and_top(RangeSet):
    rs = RangeSet()
    assert rs.add(0) is True and rs.add(0) is False
    assert rs.add(MAX) is True and rs.add(MAX) is False
    assert rs.ranges() == [(0, 0), (MAX, MAX)]
    assert 0 in rs and MAX in rs and 1 not in rs and MAX - 1 not in rs
    assert rs.first_missing(0) == 1
    assert rs.first_missing(MAX) is None  # nothing above 2**64-1 can be missing
    assert rs.first_missing(MAX - 1) == MAX - 1
    assert rs.add(MAX - 1) is True and rs.ranges() == [(0, 0), (MAX - 1, MAX)]
    assert rs.add(1) is True and rs.ranges() == [(0, 1), (MAX - 1, MAX)]
    assert rs.min == 0 and rs.max == MAX and rs.count == 4


def test_full_set_counts_beyond_int64(RangeSet):
    rs = RangeSet()
    assert rs.add_range(0, MAX) == 2**64
    assert rs.count == 2**64 and rs.range_count == 1
    assert list(rs) == [(0, MAX)]  # no __len__ for list() to preallocate by
    assert rs.first_missing() is None and rs.first_missing(12345) is None
    assert rs.add_range(0, MAX) == 0 and rs.add(7) is False and rs.add_many([0, MAX]) == 0
    rs.remove_below(1)
    assert rs.count == MAX and rs.ranges() == [(1, MAX)]
    rs.remove_below(MAX)
    assert rs.ranges() == [(MAX, MAX)] and rs.count == 1


def test_huge_ranges_count(RangeSet):
    rs = RangeSet([(0, 2**63), (2**63 + 2, MAX)])
    assert rs.count == 2**64 - 1
    assert rs.first_missing() == 2**63 + 1
    assert rs.add_range(2**63, 2**63 + 2) == 1
    assert rs.count == 2**64 and rs.ranges() == [(0, MAX)]
    half = RangeSet()
    assert half.add_range(2**63, MAX) == 2**63
    assert half.count == 2**63
    assert list(half) == [(2**63, MAX)] and tuple(half) == ((2**63, MAX),)


def test_adjacent_merge(RangeSet):
    rs = RangeSet([(1, 3), (5, 7)])
    assert rs.add(4) is True
    assert rs.ranges() == [(1, 7)]
    assert rs.add_range(8, 9) == 2 and rs.ranges() == [(1, 9)]
    assert rs.add_range(0, 0) == 1 and rs.ranges() == [(0, 9)]
    assert rs.add_many([11, 10]) == 2 and rs.ranges() == [(0, 11)]


def test_overlapping_merge(RangeSet):
    rs = RangeSet([(10, 20), (30, 40), (50, 60)])
    assert rs.add_range(15, 55) == 18  # 21..29 and 41..49
    assert rs.ranges() == [(10, 60)]
    assert rs.add_range(5, 65) == 10
    assert rs.add_range(6, 64) == 0
    assert rs.ranges() == [(5, 65)]


def test_add_range_inside_gap_and_spanning(RangeSet):
    rs = RangeSet([(0, 0), (10, 10), (20, 20)])
    assert rs.add_range(2, 8) == 7 and rs.ranges() == [(0, 0), (2, 8), (10, 10), (20, 20)]
    assert rs.add_range(1, 19) == 11  # 1, 9 and 11..19
    assert rs.ranges() == [(0, 20)]


def test_add_many_batches(RangeSet):
    rs = RangeSet([(100, 100)])
    assert rs.add_many([]) == 0
    assert rs.add_many(range(1, 50)) == 49
    assert rs.add_many(n for n in (60, 59, 58, 101, 99)) == 5  # generator, descending
    assert rs.add_many((5, 5, 5, 200, 1)) == 1  # duplicates, tuple
    assert rs.ranges() == [(1, 49), (58, 60), (99, 101), (200, 200)]
    assert rs.add_many([MAX, 0, MAX - 1, MAX, 50]) == 4
    assert rs.ranges() == [(0, 50), (58, 60), (99, 101), (200, 200), (MAX - 1, MAX)]


@pytest.mark.parametrize(
    "batch,expected",
    [
        ([0, MAX], [(0, 0), (MAX, MAX)]),  # MAX + 1 wraps to 0 in C: must not touch the run at 0
        ([MAX, 0], [(0, 0), (MAX, MAX)]),
        ([0, 1, MAX, MAX - 1, 2], [(0, 2), (MAX - 1, MAX)]),
        ([MAX, MAX - 1, 0, MAX], [(0, 0), (MAX - 1, MAX)]),
    ],
)
def test_add_many_wraparound_at_the_ends(RangeSet, batch, expected):
    rs = RangeSet()
    assert rs.add_many(batch) == len(set(batch))
    assert rs.ranges() == expected


def test_add_many_large_mostly_ascending(RangeSet):
    rnd = random.Random(7)
    batch = [n for n in range(1, 20001) if rnd.random() > 0.01]
    for _ in range(30):  # a little re-ordering
        i = rnd.randrange(len(batch) - 1)
        batch[i], batch[i + 1] = batch[i + 1], batch[i]
    rs = RangeSet([(19990, 30000)])
    expected = reference.RangeSet()
    for n in batch:
        expected.add(n)
    expected.add_range(19990, 30000)
    assert rs.add_many(batch) == expected.count - (30000 - 19990 + 1)
    assert rs.ranges() == expected.ranges()


def test_add_many_random_order(RangeSet):
    rnd = random.Random(11)
    batch = [rnd.randrange(5000) for _ in range(3000)] + [rnd.randrange(MAX) for _ in range(100)]
    rs = RangeSet([(2000, 2100)])
    new = rs.add_many(batch)
    assert new == len(set(batch) - set(range(2000, 2101)))
    assert rs.count == len(set(batch) | set(range(2000, 2101)))
    assert all(n in rs for n in batch)
    assert_well_formed(rs.ranges())


def test_add_in_the_middle_keeps_order(RangeSet):
    rs = RangeSet()
    for n in (50, 10, 30, 20, 40, 31, 29, 11, 49, 0):
        assert rs.add(n) is True
    assert rs.ranges() == [(0, 0), (10, 11), (20, 20), (29, 31), (40, 40), (49, 50)]
    assert rs.add(30) is False


def test_first_missing_with_floor(RangeSet):
    rs = RangeSet([(0, 4), (6, 9), (20, 20)])
    assert rs.first_missing() == 5
    assert rs.first_missing(0) == 5
    assert rs.first_missing(3) == 5  # floor inside a range
    assert rs.first_missing(5) == 5  # floor in a gap
    assert rs.first_missing(6) == 10
    assert rs.first_missing(15) == 15  # floor between ranges
    assert rs.first_missing(20) == 21
    assert rs.first_missing(100) == 100  # floor above everything
    assert RangeSet([(3, 4)]).first_missing() == 0


def test_remove_below(RangeSet):
    rs = RangeSet([(0, 4), (6, 9), (20, 20), (MAX, MAX)])
    rs.remove_below(0)
    assert rs.ranges() == [(0, 4), (6, 9), (20, 20), (MAX, MAX)]
    rs.remove_below(2)  # inside a range: it is cut
    assert rs.ranges() == [(2, 4), (6, 9), (20, 20), (MAX, MAX)]
    rs.remove_below(5)  # in a gap
    assert rs.ranges() == [(6, 9), (20, 20), (MAX, MAX)] and rs.count == 6
    rs.remove_below(21)
    assert rs.ranges() == [(MAX, MAX)] and rs.min == MAX
    rs.remove_below(MAX)
    assert rs.ranges() == [(MAX, MAX)]
    rs.add_range(0, 10)
    rs.remove_below(11)
    assert rs.ranges() == [(MAX, MAX)] and rs.count == 1


def test_remove_below_many_then_grow_again(RangeSet):
    rs = RangeSet()
    rs.add_many(range(0, 20000, 2))  # 10000 ranges
    rs.remove_below(19990)
    assert rs.ranges() == [(n, n) for n in range(19990, 20000, 2)]
    rs.add_many(range(0, 100, 2))
    assert rs.range_count == 55 and rs.min == 0


@pytest.mark.parametrize("max_ranges", [0, 1, 2, 3, 4, 10])
def test_encode_keeps_the_top(RangeSet, max_ranges):
    all_ranges = [(1, 2), (4, 4), (6, 9)]
    rs = RangeSet(all_ranges)
    expected = all_ranges[max(0, len(all_ranges) - max_ranges):] if max_ranges else []
    assert rs.encode(max_ranges) == expected
    assert rs.ranges() == all_ranges  # encode does not change the set


def test_encode_huge_max_ranges(RangeSet):
    rs = RangeSet([(1, 2), (4, 4)])
    assert rs.encode(2**70) == [(1, 2), (4, 4)]
    assert rs.encode(True) == [(4, 4)]


def test_copy_is_independent(RangeSet):
    rs = RangeSet([(1, 5)])
    other = rs.copy()
    assert other == rs and other is not rs and type(other) is RangeSet
    other.add(7)
    rs.remove_below(3)
    assert rs.ranges() == [(3, 5)] and other.ranges() == [(1, 5), (7, 7)]


def test_equality_hash_bool_repr_pickle(RangeSet):
    a = RangeSet([(1, 3)])
    assert a == RangeSet([(3, 3), (1, 2)])
    assert a != RangeSet([(1, 4)])
    assert a != RangeSet([(1, 1), (3, 3)])  # same count, different numbers
    assert a != [(1, 3)]
    with pytest.raises(TypeError):
        hash(a)
    assert bool(a) and not RangeSet()
    assert repr(a) == "RangeSet([(1, 3)])"
    assert eval(repr(a), {"RangeSet": RangeSet}) == a
    assert pickle.loads(pickle.dumps(RangeSet([(0, 0), (5, MAX)]))) == RangeSet([(0, 0), (5, MAX)])


def test_ints_of_other_types_are_accepted(RangeSet):
    class Number:
        def __init__(self, value):
            self.value = value

        def __index__(self):
            return self.value

    rs = RangeSet([(Number(1), True)])
    assert rs.add(Number(MAX)) is True
    assert rs.add_many([Number(5), False]) == 2
    assert rs.ranges() == [(0, 1), (5, 5), (MAX, MAX)]


def test_add_many_survives_a_list_that_shrinks_while_read(RangeSet):
    batch = [1, 2, 3]

    class Shrinking:
        def __index__(self):
            del batch[:]
            return 10

    batch.insert(1, Shrinking())
    rs = RangeSet()
    assert rs.add_many(batch) == 2  # what was read before the list shrank; no crash
    assert rs.ranges() == [(1, 1), (10, 10)]


# ---- bad input: both twins raise the same error, naming the argument ----

BAD_CALLS = [
    ("add", (-1,), ValueError, "n must be in 0..2**64-1, got -1"),
    ("add", (2**64,), ValueError, "n must be in 0..2**64-1, got 18446744073709551616"),
    ("add", (-(2**70),), ValueError, "n must be in"),
    ("add", (1.0,), TypeError, "n must be an int, got float"),
    ("add", ("1",), TypeError, "n must be an int, got str"),
    ("add", (None,), TypeError, "n must be an int, got NoneType"),
    ("contains", (-1,), ValueError, "n must be in 0..2**64-1"),
    ("contains", (2.5,), TypeError, "n must be an int"),
    ("__contains__", (2**64,), ValueError, "n must be in 0..2**64-1"),
    ("add_range", (-1, 5), ValueError, "lo must be in 0..2**64-1, got -1"),
    ("add_range", (1, 2**64), ValueError, "hi must be in 0..2**64-1, got 18446744073709551616"),
    ("add_range", (1, "5"), TypeError, "hi must be an int, got str"),
    ("add_range", (5, 4), ValueError, "lo must be <= hi, got lo=5, hi=4"),
    ("add_range", (MAX, 0), ValueError, f"lo must be <= hi, got lo={MAX}, hi=0"),
    ("add_many", (5,), TypeError, "numbers must be an iterable, got int"),
    ("add_many", (None,), TypeError, "numbers must be an iterable, got NoneType"),
    ("add_many", ([1, 2, -3],), ValueError, "numbers[2] must be in 0..2**64-1, got -3"),
    ("add_many", ((1, 2**64),), ValueError, "numbers[1] must be in 0..2**64-1"),
    ("add_many", (["1"],), TypeError, "numbers[0] must be an int, got str"),
    ("add_many", (frozenset([1.5]),), TypeError, "numbers[0] must be an int, got float"),
    ("first_missing", (-1,), ValueError, "floor must be in 0..2**64-1, got -1"),
    ("first_missing", (2**64,), ValueError, "floor must be in 0..2**64-1"),
    ("first_missing", ("0",), TypeError, "floor must be an int, got str"),
    ("remove_below", (-5,), ValueError, "floor must be in 0..2**64-1, got -5"),
    ("remove_below", (1.0,), TypeError, "floor must be an int, got float"),
    ("encode", (-1,), ValueError, "max_ranges must be >= 0, got -1"),
    ("encode", (2.0,), TypeError, "max_ranges must be an int, got float"),
]


@pytest.mark.parametrize("method,args,error,message", BAD_CALLS, ids=[f"{c[0]}{c[1]!r}"[:40] for c in BAD_CALLS])
def test_bad_arguments(RangeSet, method, args, error, message):
    rs = RangeSet([(1, 3), (10, 10)])
    with pytest.raises(error) as info:
        getattr(rs, method)(*args)
    assert str(info.value).startswith(message)
    assert rs.ranges() == [(1, 3), (10, 10)], "a failed call must change nothing"


@pytest.mark.parametrize(
    "arg,error,message",
    [
        (5, TypeError, "ranges must be an iterable, got int"),
        ([5], TypeError, "ranges[0] must be a (lo, hi) pair, got int"),
        ([(1, 2, 3)], TypeError, "ranges[0] must be a (lo, hi) pair, got tuple"),
        ([(1, 2), (4, 3)], ValueError, "ranges[1] must have lo <= hi, got (4, 3)"),
        ([(-1, 2)], ValueError, "ranges[0][0] must be in 0..2**64-1, got -1"),
        ([(1, 2**64)], ValueError, f"ranges[0][1] must be in 0..2**64-1, got {2**64}"),
        ([(1, 2.0)], TypeError, "ranges[0][1] must be an int, got float"),
    ],
)
def test_bad_constructor_arguments(RangeSet, arg, error, message):
    with pytest.raises(error) as info:
        RangeSet(arg)
    assert str(info.value) == message


def test_bad_batch_adds_nothing(RangeSet):
    rs = RangeSet([(5, 5)])
    with pytest.raises(ValueError, match=r"numbers\[3\]"):
        rs.add_many([1, 2, 3, -1, 4])
    assert rs.ranges() == [(5, 5)]
