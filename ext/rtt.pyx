# distutils: extra_compile_args = -ffp-contract=off
# (no fused multiply-add: the differential tests compare floats with the pure-Python twin
# bit for bit, and an FMA rounds once where Python rounds twice)
"""RFC 6298 retransmission timer (`RttEstimator`) and a heap of many deadlines
(`DeadlineHeap`) so one asyncio `loop.call_at` can serve many sessions.

Pure-Python twin: tether._reference.rtt (same API, same arithmetic in the same order).
"""

cimport cython
from cpython.dict cimport PyDict_GetItemWithError
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.ref cimport PyObject
from libc.math cimport fabs, isfinite
from libc.stdint cimport uint64_t

__all__ = ["ALPHA", "BETA", "K", "RttEstimator", "DeadlineHeap"]

# RFC 6298 section 2.3: the smoothing gains and the variance multiplier.
cdef double RFC6298_ALPHA = 1.0 / 8.0
cdef double RFC6298_BETA = 1.0 / 4.0
cdef double RFC6298_K = 4.0
ALPHA = RFC6298_ALPHA
BETA = RFC6298_BETA
K = RFC6298_K

# Below this many slots the heap never shrinks (a few sessions should not reallocate).
cdef Py_ssize_t MIN_CAPACITY = 16


cdef inline double _real(object value, str name) except? -1.0:
    """`value` as a C double; TypeError naming `name` unless it is an int or a float."""
    if type(value) is float:
        return PyFloat_AS_DOUBLE(value)
    if isinstance(value, (int, float)):
        return float(value)
    raise TypeError(f"{name} must be a real number, not {type(value).__name__}")


cdef inline double _finite(object value, str name) except? -1.0:
    """`value` as a finite C double; ValueError naming `name` when it is inf or NaN."""
    cdef double result = _real(value, name)
    if not isfinite(result):
        raise ValueError(f"{name} must be finite, got {result!r}")
    return result


cdef inline double _sample(object value) except? -1.0:
    """One RTT sample, checked: a finite number >= 0."""
    cdef double result = _real(value, "sample")
    if not (isfinite(result) and result >= 0.0):
        raise ValueError(f"sample must be a finite number >= 0, got {result!r}")
    return result


@cython.final
cdef class RttEstimator:
    """Smoothed RTT and retransmission timeout per RFC 6298.

    Feed it RTT samples taken only from messages sent once (Karn's rule, RFC 6298 section 3;
    the send window already does that). `rto` is what a retransmission timer should wait,
    including any `backoff()` since the last sample.
    """

    def __init__(
        self,
        initial_rto=1.0,
        min_rto=0.2,
        max_rto=60.0,
        granularity=0.001,
    ):
        """Raises TypeError for a non-number and ValueError naming the argument when
        min_rto <= 0, max_rto < min_rto, initial_rto is outside [min_rto, max_rto],
        granularity < 0, or any of them is not finite."""
        cdef double initial = _finite(initial_rto, "initial_rto")
        cdef double low = _finite(min_rto, "min_rto")
        cdef double high = _finite(max_rto, "max_rto")
        cdef double g = _finite(granularity, "granularity")
        if low <= 0.0:
            raise ValueError(f"min_rto must be > 0, got {low!r}")
        if high < low:
            raise ValueError(f"max_rto must be >= min_rto ({low!r}), got {high!r}")
        if not (low <= initial <= high):
            raise ValueError(
                f"initial_rto must be within [min_rto, max_rto] = [{low!r}, {high!r}],"
                f" got {initial!r}"
            )
        if g < 0.0:
            raise ValueError(f"granularity must be >= 0, got {g!r}")
        self._initial_rto = initial
        self._min_rto = low
        self._max_rto = high
        self._granularity = g
        self._srtt = 0.0
        self._rttvar = 0.0
        self._samples = 0
        # RFC 6298 section 2.1: until a sample arrives the RTO is the initial value.
        self._rto = initial

    def update(self, sample) -> None:
        """Apply one RTT sample in seconds; clears any backoff.
        A negative or non-finite sample raises ValueError."""
        self._apply(_sample(sample))

    def update_many(self, samples) -> None:
        """Apply samples in order, as if by update() each. All are checked first: one bad
        sample raises ValueError (TypeError for a non-number) and nothing is applied."""
        # A tuple copy: checking a sample can run Python code (int subclasses) that could
        # resize a list under the loop.
        cdef tuple items = tuple(samples)
        cdef Py_ssize_t n = len(items)
        cdef Py_ssize_t i
        cdef double* checked
        if n == 0:
            return
        checked = <double*>PyMem_Malloc(n * sizeof(double))
        if checked == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                checked[i] = _sample(items[i])
            for i in range(n):
                self._apply(checked[i])
        finally:
            PyMem_Free(checked)

    cdef void _apply(self, double r) noexcept nogil:
        cdef double spread
        cdef double rto
        if self._samples == 0:
            # RFC 6298 section 2.2: the first measurement.
            self._srtt = r
            self._rttvar = r / 2.0
        else:
            # RFC 6298 section 2.3: RTTVAR first, from the SRTT before this sample.
            self._rttvar = (1.0 - RFC6298_BETA) * self._rttvar + RFC6298_BETA * fabs(self._srtt - r)
            self._srtt = (1.0 - RFC6298_ALPHA) * self._srtt + RFC6298_ALPHA * r
        self._samples += 1
        # Python's max(G, K*RTTVAR) and min/max clamping, selecting the same operand.
        spread = RFC6298_K * self._rttvar
        rto = self._srtt + (spread if spread > self._granularity else self._granularity)
        # RFC 6298 sections 2.4 and 2.5: clamp to the configured floor and ceiling.
        if self._min_rto > rto:
            rto = self._min_rto
        if self._max_rto < rto:
            rto = self._max_rto
        self._rto = rto

    def backoff(self) -> float:
        """Double the RTO after a retransmission timeout (RFC 6298 section 5.5), capped at
        max_rto; the next sample recomputes it. Returns the new RTO."""
        cdef double doubled = self._rto * 2.0
        self._rto = self._max_rto if self._max_rto < doubled else doubled
        return self._rto

    @property
    def srtt(self):
        """Smoothed RTT in seconds; None before the first sample."""
        return self._srtt if self._samples else None

    @property
    def rttvar(self):
        """RTT variation in seconds; None before the first sample."""
        return self._rttvar if self._samples else None

    @property
    def rto(self) -> float:
        """Current retransmission timeout in seconds, backoff included."""
        return self._rto

    @property
    def samples(self) -> int:
        """How many samples have been applied."""
        return self._samples

    @property
    def initial_rto(self) -> float:
        """The RTO used before the first sample."""
        return self._initial_rto

    @property
    def min_rto(self) -> float:
        """Floor of the RTO (RFC 6298 section 2.4)."""
        return self._min_rto

    @property
    def max_rto(self) -> float:
        """Ceiling of the RTO, backoff included (RFC 6298 section 2.5)."""
        return self._max_rto

    @property
    def granularity(self) -> float:
        """Clock granularity G in RFC 6298 section 2.2: the least variance term."""
        return self._granularity

    def __repr__(self):
        return (
            f"RttEstimator(srtt={self.srtt!r}, rttvar={self.rttvar!r}, rto={self._rto!r},"
            f" samples={self._samples})"
        )


cdef inline bint _before(const HeapEntry* a, const HeapEntry* b) noexcept nogil:
    """Heap order: earlier deadline first; equal deadlines in the order they were set."""
    return a.deadline < b.deadline or (a.deadline == b.deadline and a.seq < b.seq)


@cython.final
cdef class DeadlineHeap:
    """The earliest of many deadlines, so one `loop.call_at` can serve many timers.

    Each key has at most one deadline. Keys are any hashables, compared as dict keys are (a
    key keeps the object it was first set with). Equal deadlines come out in the order they
    were set. A binary heap in C arrays with each key's position tracked, so set, cancel
    and pop are O(log n) and memory follows the number of live keys.
    """

    def __cinit__(self):
        self._heap = NULL
        self._position = NULL
        self._count = 0
        self._capacity = 0
        self._seq = 0
        self._handles = {}
        self._keys = []
        self._numbers = []

    def __dealloc__(self):
        PyMem_Free(self._heap)
        PyMem_Free(self._position)

    cdef int _resize(self, Py_ssize_t capacity) except -1:
        # Each array is stored as soon as it is reallocated, so a failed grow leaves both at
        # least _capacity long; a failed shrink keeps the larger block, which is just as good.
        cdef bint growing = capacity > self._capacity
        cdef HeapEntry* heap = <HeapEntry*>PyMem_Realloc(self._heap, capacity * sizeof(HeapEntry))
        if heap != NULL:
            self._heap = heap
        elif growing:
            raise MemoryError()
        cdef Py_ssize_t* position = <Py_ssize_t*>PyMem_Realloc(
            self._position, capacity * sizeof(Py_ssize_t))
        if position != NULL:
            self._position = position
        elif growing:
            raise MemoryError()
        if growing:
            self._keys.extend([None] * (capacity - self._capacity))
            self._numbers.extend(range(self._capacity, capacity))
        else:
            del self._keys[capacity:]
            del self._numbers[capacity:]
        self._capacity = capacity
        return 0

    cdef Py_ssize_t _handle_of(self, object key) except -2:
        """The handle of `key`, or -1 when it has no deadline (TypeError if unhashable)."""
        cdef PyObject* handle = PyDict_GetItemWithError(self._handles, key)
        if handle == NULL:
            return -1
        return <Py_ssize_t><object>handle

    cdef void _sift_up(self, Py_ssize_t index) noexcept nogil:
        cdef HeapEntry entry = self._heap[index]
        cdef Py_ssize_t parent
        while index > 0:
            parent = (index - 1) >> 1
            if not _before(&entry, &self._heap[parent]):
                break
            self._heap[index] = self._heap[parent]
            self._position[self._heap[index].handle] = index
            index = parent
        self._heap[index] = entry
        self._position[entry.handle] = index

    cdef void _sift_down(self, Py_ssize_t index) noexcept nogil:
        cdef HeapEntry entry = self._heap[index]
        cdef Py_ssize_t count = self._count
        cdef Py_ssize_t child
        while True:
            child = 2 * index + 1
            if child >= count:
                break
            if child + 1 < count and _before(&self._heap[child + 1], &self._heap[child]):
                child += 1
            if not _before(&self._heap[child], &entry):
                break
            self._heap[index] = self._heap[child]
            self._position[self._heap[index].handle] = index
            index = child
        self._heap[index] = entry
        self._position[entry.handle] = index

    cdef int _remove(self, Py_ssize_t handle, object key) except -1:
        """Drop `handle` (whose key is `key`) from the dict and the heap, then give its
        number to the highest handle so handles stay 0 .. count-1 and memory can shrink."""
        cdef Py_ssize_t last = self._count - 1
        cdef Py_ssize_t index = self._position[handle]
        cdef object moved_key
        # Python-level updates first: if one raises, the C arrays are untouched.
        if handle != last:
            moved_key = self._keys[last]
            self._handles[moved_key] = self._numbers[handle]
        del self._handles[key]
        # Take the heap entry out: the last entry fills the hole and sifts either way.
        self._count = last
        if index != last:
            self._heap[index] = self._heap[last]
            self._position[self._heap[index].handle] = index
            if index > 0 and _before(&self._heap[index], &self._heap[(index - 1) >> 1]):
                self._sift_up(index)
            else:
                self._sift_down(index)
        # Renumber: the highest handle takes the freed number.
        if handle != last:
            self._keys[handle] = moved_key
            self._position[handle] = self._position[last]
            self._heap[self._position[handle]].handle = handle
        self._keys[last] = None
        if self._capacity > MIN_CAPACITY and self._count < self._capacity // 4:
            self._resize(self._capacity // 2)
        return 0

    def set(self, key, deadline) -> None:
        """Add `key` with `deadline`, or move it there. A non-finite deadline raises ValueError."""
        cdef double when = _finite(deadline, "deadline")
        cdef Py_ssize_t handle = self._handle_of(key)
        cdef Py_ssize_t index
        cdef double previous
        self._seq += 1
        if handle >= 0:
            index = self._position[handle]
            previous = self._heap[index].deadline
            self._heap[index].deadline = when
            self._heap[index].seq = self._seq
            # A new seq sorts after every equal deadline, so "not earlier" moves it down.
            if when < previous:
                self._sift_up(index)
            else:
                self._sift_down(index)
            return
        if self._count == self._capacity:
            self._resize(self._capacity * 2 if self._capacity else MIN_CAPACITY)
        handle = self._count
        self._handles[key] = self._numbers[handle]
        self._keys[handle] = key
        self._heap[handle].deadline = when
        self._heap[handle].seq = self._seq
        self._heap[handle].handle = handle
        self._count += 1
        self._sift_up(handle)

    def cancel(self, key) -> bool:
        """Forget `key`; True when it had a deadline."""
        cdef Py_ssize_t handle = self._handle_of(key)
        if handle < 0:
            return False
        self._remove(handle, key)
        return True

    def get(self, key):
        """The deadline of `key`, or None."""
        cdef Py_ssize_t handle = self._handle_of(key)
        if handle < 0:
            return None
        return self._heap[self._position[handle]].deadline

    def peek(self):
        """(deadline, key) of the earliest deadline, or None when empty."""
        if self._count == 0:
            return None
        return (self._heap[0].deadline, self._keys[self._heap[0].handle])

    @property
    def next_deadline(self):
        """The earliest deadline, or None when empty."""
        if self._count == 0:
            return None
        return self._heap[0].deadline

    def pop_due(self, now) -> list:
        """Remove and return the keys whose deadline is <= now, earliest first."""
        cdef double until = _finite(now, "now")
        cdef list due = []
        cdef Py_ssize_t handle
        cdef object key
        while self._count > 0 and self._heap[0].deadline <= until:
            handle = self._heap[0].handle
            key = self._keys[handle]
            self._remove(handle, key)
            due.append(key)
        return due

    def __len__(self):
        return self._count

    def __contains__(self, key):
        return key in self._handles

    def __repr__(self):
        return f"DeadlineHeap(len={self._count}, next_deadline={self.next_deadline!r})"
