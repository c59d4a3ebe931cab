# cython: language_level=3
"""RangeSet: a set of 64-bit message numbers kept as sorted, disjoint, non-adjacent closed
ranges in a C array, searched by binary search (contract: ext/README.md "rangeset").

The pure-Python twin is tether._reference.rangeset; both raise the same errors with the
same messages.
"""

cimport cython
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_Check
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.stdint cimport UINT64_MAX, uint64_t
from libc.stdlib cimport qsort
from libc.string cimport memcpy, memmove

import operator

__all__ = ["RangeSet", "MAX_NUMBER"]

MAX_NUMBER = 2**64 - 1  # message numbers are unsigned 64-bit

cdef object FULL_COUNT = 2**64  # the count of the full set, which uint64_t cannot hold
cdef Py_ssize_t MIN_CAPACITY = 8


# ---- argument checks (the messages match the reference twin's) ----

cdef uint64_t _number_slow(object value, object name) except? 0xFFFFFFFFFFFFFFFF:
    """`value` (not an exact int) as a number, or TypeError/ValueError naming `name`."""
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if n < 0 or n > MAX_NUMBER:
        raise ValueError(f"{name} must be in 0..2**64-1, got {n}")
    return <uint64_t>n


cdef inline uint64_t _number(object value, object name) except? 0xFFFFFFFFFFFFFFFF:
    """`value` as an int in 0..2**64-1, or TypeError/ValueError naming `name`."""
    if PyLong_Check(value):
        try:
            return <uint64_t>value
        except OverflowError:
            pass  # negative or too big: _number_slow says which
    return _number_slow(value, name)


cdef uint64_t _batch_number(object value, Py_ssize_t index) except? 0xFFFFFFFFFFFFFFFF:
    """A batch item that is not a plain in-range int; the error names it numbers[index]."""
    return _number_slow(value, f"numbers[{index}]")


cdef inline uint64_t _batch_item(object item, Py_ssize_t i) except? 0xFFFFFFFFFFFFFFFF:
    """The batch's item i as a number (the fast path of _number for add_many)."""
    if PyLong_Check(item):
        try:
            return <uint64_t>item
        except OverflowError:
            pass
    return _batch_number(item, i)


cdef object _count_arg(object value, str name):
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if n < 0:
        raise ValueError(f"{name} must be >= 0, got {n}")
    return n


cdef object _iterate(object value, str name):
    try:
        return iter(value)
    except TypeError:
        raise TypeError(f"{name} must be an iterable, got {type(value).__name__}") from None


# ---- runs: a batch coalesced into ranges before it touches the set ----

cdef struct Runs:
    Range* items
    Py_ssize_t size
    Py_ssize_t capacity


cdef int _runs_push(Runs* runs, uint64_t lo, uint64_t hi) except -1:
    cdef Py_ssize_t capacity
    cdef Range* grown
    if runs.size == runs.capacity:
        capacity = runs.capacity * 2 if runs.capacity else MIN_CAPACITY
        grown = <Range*>PyMem_Realloc(runs.items, capacity * sizeof(Range))
        if grown is NULL:
            raise MemoryError()
        runs.items = grown
        runs.capacity = capacity
    runs.items[runs.size].lo = lo
    runs.items[runs.size].hi = hi
    runs.size += 1
    return 0


cdef inline int _runs_add(Runs* runs, uint64_t x) except -1:
    """Extend the last run by x when x is in it or touches it, else start a new run: a
    mostly ascending (or descending) batch becomes a few runs in one pass."""
    cdef Range* last
    if runs.size:
        last = &runs.items[runs.size - 1]
        if x - last.lo <= last.hi - last.lo:  # lo <= x <= hi, in unsigned arithmetic
            return 0
        if x == last.hi + 1 and last.hi != UINT64_MAX:
            last.hi = x
            return 0
        if x + 1 == last.lo and x != UINT64_MAX:
            last.lo = x
            return 0
    return _runs_push(runs, x, x)


cdef int _compare_lo(const void* a, const void* b) noexcept nogil:
    cdef uint64_t x = (<const Range*>a).lo
    cdef uint64_t y = (<const Range*>b).lo
    return (x > y) - (x < y)


cdef inline bint _touches(uint64_t lo, uint64_t prev_hi) noexcept:
    """Whether a range starting at lo (>= the previous range's lo) overlaps or touches a
    range ending at prev_hi, without overflowing at 0 or 2**64-1."""
    return lo == 0 or lo - 1 <= prev_hi


cdef void _normalise(Runs* runs) noexcept:
    """Sort the runs by lo (only if needed) and merge overlapping or touching ones in place."""
    cdef Py_ssize_t i, m
    cdef Range* r = runs.items
    if runs.size < 2:
        return
    for i in range(1, runs.size):
        if r[i].lo < r[i - 1].lo:
            qsort(r, runs.size, sizeof(Range), _compare_lo)
            break
    m = 0
    for i in range(1, runs.size):
        if _touches(r[i].lo, r[m].hi):
            if r[i].hi > r[m].hi:
                r[m].hi = r[i].hi
        else:
            m += 1
            r[m] = r[i]
    runs.size = m + 1


@cython.final
cdef class RangeSet:
    """Sorted, disjoint, non-adjacent closed ranges [lo, hi] of numbers in 0..2**64-1."""

    def __cinit__(self):
        self._ranges = NULL
        self._len = 0
        self._capacity = 0
        self._count = 0

    def __dealloc__(self):
        PyMem_Free(self._ranges)
        self._ranges = NULL

    def __init__(self, ranges=()):
        """The union of `ranges` ((lo, hi) pairs in any order, may overlap)."""
        cdef Runs runs
        cdef Py_ssize_t i = 0
        cdef uint64_t lo, hi
        runs.items = NULL
        runs.size = runs.capacity = 0
        self._len = 0
        self._count = 0
        try:
            for pair in _iterate(ranges, "ranges"):
                name = f"ranges[{i}]"
                if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                    raise TypeError(f"{name} must be a (lo, hi) pair, got {type(pair).__name__}")
                lo = _number(pair[0], f"{name}[0]")
                hi = _number(pair[1], f"{name}[1]")
                if lo > hi:
                    raise ValueError(f"{name} must have lo <= hi, got ({lo}, {hi})")
                _runs_push(&runs, lo, hi)
                i += 1
            if runs.size:
                _normalise(&runs)
                self._merge_runs(runs.items, runs.size)
        finally:
            PyMem_Free(runs.items)

    # ---- internals ----

    cdef Py_ssize_t _find(self, uint64_t n) noexcept:
        """Index of the first range with hi >= n (_len when none)."""
        cdef Py_ssize_t lo = 0, hi = self._len, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self._ranges[mid].hi < n:
                lo = mid + 1
            else:
                hi = mid
        return lo

    cdef int _reserve(self, Py_ssize_t n) except -1:
        cdef Py_ssize_t capacity
        cdef Range* grown
        if n <= self._capacity:
            return 0
        capacity = max(n, self._capacity * 2, MIN_CAPACITY)
        grown = <Range*>PyMem_Realloc(self._ranges, capacity * sizeof(Range))
        if grown is NULL:
            raise MemoryError()
        self._ranges = grown
        self._capacity = capacity
        return 0

    cdef void _shrink(self) noexcept:
        # Give memory back after remove_below dropped most ranges; halving keeps it amortised.
        cdef Py_ssize_t capacity = self._capacity // 2
        cdef Range* shrunk
        if capacity < MIN_CAPACITY or self._len > capacity // 2:
            return
        shrunk = <Range*>PyMem_Realloc(self._ranges, capacity * sizeof(Range))
        if shrunk is not NULL:  # on failure the larger block is still valid
            self._ranges = shrunk
            self._capacity = capacity

    cdef int _insert(self, Py_ssize_t i, uint64_t lo, uint64_t hi) except -1:
        self._reserve(self._len + 1)
        if i < self._len:
            memmove(&self._ranges[i + 1], &self._ranges[i], (self._len - i) * sizeof(Range))
        self._ranges[i].lo = lo
        self._ranges[i].hi = hi
        self._len += 1
        return 0

    cdef void _delete(self, Py_ssize_t i, Py_ssize_t n) noexcept:
        if n <= 0:
            return
        if i + n < self._len:
            memmove(&self._ranges[i], &self._ranges[i + n], (self._len - i - n) * sizeof(Range))
        self._len -= n

    cdef int _merge_runs(self, Range* runs, Py_ssize_t k) except -1:
        """Add runs (sorted, disjoint, non-adjacent, k >= 1): merge them with the ranges
        from the first one they can touch; the ranges below stay where they are."""
        cdef Py_ssize_t s, i, j, m, tail
        cdef uint64_t old_tail = 0, new_tail = 0
        cdef Range r
        cdef Range* out
        s = self._find(runs[0].lo - 1) if runs[0].lo else 0
        if s == self._len:
            # Everything lies above the set without touching it: append (the ascending case).
            self._reserve(self._len + k)
            memcpy(&self._ranges[self._len], runs, k * sizeof(Range))
            self._len += k
            for j in range(k):
                self._count += runs[j].hi - runs[j].lo + 1
            return 0
        tail = self._len - s
        out = <Range*>PyMem_Malloc((tail + k) * sizeof(Range))
        if out is NULL:
            raise MemoryError()
        i = s
        j = 0
        m = 0
        while i < self._len or j < k:
            if j == k or (i < self._len and self._ranges[i].lo <= runs[j].lo):
                r = self._ranges[i]
                old_tail += r.hi - r.lo + 1
                i += 1
            else:
                r = runs[j]
                j += 1
            if m and _touches(r.lo, out[m - 1].hi):
                if r.hi > out[m - 1].hi:
                    out[m - 1].hi = r.hi
            else:
                out[m] = r
                m += 1
        for j in range(m):
            new_tail += out[j].hi - out[j].lo + 1
        try:
            self._reserve(s + m)
            memcpy(&self._ranges[s], out, m * sizeof(Range))
        finally:
            PyMem_Free(out)
        self._len = s + m
        self._count += new_tail - old_tail  # modulo 2**64, like _count itself
        return 0

    cdef object _count_object(self):
        if self._len and self._count == 0:
            return FULL_COUNT
        return self._count

    # ---- C API ----

    cdef bint c_contains(self, uint64_t n) noexcept:
        cdef Py_ssize_t i = self._find(n)
        return i < self._len and self._ranges[i].lo <= n

    cdef int c_add(self, uint64_t n) except -1:
        cdef Py_ssize_t i, last = self._len - 1
        cdef Range* r = self._ranges
        # The common case first: n at or just above the top.
        if last >= 0 and n > r[last].hi:
            if n - 1 == r[last].hi:
                r[last].hi = n
            else:
                self._insert(self._len, n, n)
            self._count += 1
            return 1
        i = self._find(n)
        if i < self._len and r[i].lo <= n:
            return 0
        # Here r[i - 1].hi < n < r[i].lo, so n - 1 and n + 1 cannot overflow when compared.
        if i > 0 and r[i - 1].hi == n - 1:
            if i < self._len and r[i].lo == n + 1:
                r[i - 1].hi = r[i].hi
                self._delete(i, 1)
            else:
                r[i - 1].hi = n
        elif i < self._len and r[i].lo == n + 1:
            r[i].lo = n
        else:
            self._insert(i, n, n)
        self._count += 1
        return 1

    cdef int c_add_range(self, uint64_t lo, uint64_t hi) except -1:
        cdef Range run
        run.lo = lo
        run.hi = hi
        return self._merge_runs(&run, 1)

    cdef int c_remove_below(self, uint64_t floor) except -1:
        cdef Py_ssize_t i = self._find(floor), j
        cdef uint64_t removed = 0
        for j in range(i):
            removed += self._ranges[j].hi - self._ranges[j].lo + 1
        if i < self._len and self._ranges[i].lo < floor:
            removed += floor - self._ranges[i].lo
            self._ranges[i].lo = floor
        self._delete(0, i)
        self._count -= removed  # modulo 2**64: right even when the set was full
        self._shrink()
        return 0

    # ---- adding ----

    def add(self, n) -> bool:
        """Add n; True when it was not present."""
        return self.c_add(_number(n, "n")) == 1

    def add_range(self, lo, hi) -> int:
        """Add every number of [lo, hi]; how many were new. lo > hi -> ValueError."""
        cdef uint64_t first = _number(lo, "lo")
        cdef uint64_t last = _number(hi, "hi")
        cdef uint64_t before = self._count
        cdef bint was_empty = self._len == 0
        if first > last:
            raise ValueError(f"lo must be <= hi, got lo={first}, hi={last}")
        self.c_add_range(first, last)
        if was_empty and self._count == 0:
            return FULL_COUNT  # [0, 2**64-1] into an empty set
        return self._count - before

    def add_many(self, numbers) -> int:
        """Add every number of the batch; how many were new. Nothing is added when any
        number is invalid (the error names it as numbers[i])."""
        cdef Runs runs
        cdef Py_ssize_t i
        cdef object item
        cdef uint64_t before = self._count
        runs.items = NULL
        runs.size = runs.capacity = 0
        if type(numbers) is not list and type(numbers) is not tuple:
            numbers = list(_iterate(numbers, "numbers"))
        try:
            # Coalesce the whole batch into runs first (C loop, one pass), so the set is
            # touched once per run and nothing changes if an item is bad.
            if type(numbers) is list:
                i = 0
                while i < PyList_GET_SIZE(numbers):  # re-read: __index__ could resize the list
                    item = <object>PyList_GET_ITEM(numbers, i)
                    _runs_add(&runs, _batch_item(item, i))
                    i += 1
            else:
                for i in range(PyTuple_GET_SIZE(numbers)):
                    item = <object>PyTuple_GET_ITEM(numbers, i)
                    _runs_add(&runs, _batch_item(item, i))
            if runs.size:
                _normalise(&runs)
                self._merge_runs(runs.items, runs.size)
        finally:
            PyMem_Free(runs.items)
        return self._count - before  # at most len(numbers), so never the 2**64 ambiguity

    # ---- removing ----

    def remove_below(self, floor) -> None:
        """Drop every number < floor."""
        self.c_remove_below(_number(floor, "floor"))

    # ---- queries ----

    def contains(self, n) -> bool:
        """True when n is in the set."""
        return self.c_contains(_number(n, "n"))

    def __contains__(self, n) -> bool:
        return self.c_contains(_number(n, "n"))

    def first_missing(self, floor=0):
        """The smallest number >= floor not in the set; None when the set holds all of
        floor..2**64-1."""
        cdef uint64_t f = _number(floor, "floor")
        cdef Py_ssize_t i = self._find(f)
        if i == self._len or self._ranges[i].lo > f:
            return f
        if self._ranges[i].hi == UINT64_MAX:
            return None
        return self._ranges[i].hi + 1  # ranges never touch: hi + 1 is missing

    # No __len__: iteration yields ranges, and list(rs) would preallocate len(rs) slots
    # (MemoryError on a set of a few big ranges). The count is .count, the ranges .range_count.

    @property
    def count(self) -> int:
        """How many numbers the set holds (up to 2**64, beyond a C ssize_t)."""
        return self._count_object()

    @property
    def range_count(self) -> int:
        """How many ranges."""
        return self._len

    @property
    def min(self):
        """The smallest number, None when empty."""
        return self._ranges[0].lo if self._len else None

    @property
    def max(self):
        """The largest number, None when empty."""
        return self._ranges[self._len - 1].hi if self._len else None

    def ranges(self) -> list:
        """Every range as a (lo, hi) tuple, ascending."""
        return self._slice(0)

    def __iter__(self):
        return iter(self._slice(0))

    def encode(self, max_ranges) -> list:
        """The `max_ranges` ranges nearest the top, ascending (an ack carries a bounded
        number of ranges); max_ranges < 0 -> ValueError."""
        cdef object m = _count_arg(max_ranges, "max_ranges")
        if m >= self._len:
            return self._slice(0)
        return self._slice(self._len - <Py_ssize_t>m)

    cdef list _slice(self, Py_ssize_t start):
        cdef Py_ssize_t i
        return [(self._ranges[i].lo, self._ranges[i].hi) for i in range(start, self._len)]

    # ---- the rest of the set protocol ----

    def copy(self) -> RangeSet:
        """An independent RangeSet with the same numbers."""
        cdef RangeSet other = RangeSet.__new__(RangeSet)
        if self._len:
            other._reserve(self._len)
            memcpy(other._ranges, self._ranges, self._len * sizeof(Range))
        other._len = self._len
        other._count = self._count
        return other

    def __eq__(self, other):
        cdef RangeSet that
        cdef Py_ssize_t i
        if not isinstance(other, RangeSet):
            return NotImplemented
        that = <RangeSet>other
        if that._len != self._len or that._count != self._count:
            return False
        for i in range(self._len):
            if self._ranges[i].lo != that._ranges[i].lo or self._ranges[i].hi != that._ranges[i].hi:
                return False
        return True

    __hash__ = None  # mutable

    def __bool__(self) -> bool:
        return self._len > 0

    def __repr__(self) -> str:
        return f"RangeSet({self._slice(0)!r})"

    def __reduce__(self):
        return (RangeSet, (self._slice(0),))

