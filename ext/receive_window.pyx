# The receiver's window: exactly-once delivery, in order or on arrival, bounded by the
# transfer window. Numbers above the floor live in a ring bitmap (and, when ordered, a ring
# of waiting payloads), so a batch is accepted in one C loop.
# Pure-Python twin: src/tether/_reference/receive_window.py (same API, same results).

cimport cython
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF
from arguments cimport _int, _number
from libc.stdint cimport uint64_t
from libc.string cimport memset


__all__ = ["ReceiveWindow", "MAX_NUMBER", "MAX_CAPACITY"]

MAX_NUMBER = 2**64 - 1  # message numbers are unsigned 64-bit
MAX_CAPACITY = 65536

cdef Py_ssize_t _MAX_CAPACITY = 65536
cdef uint64_t _MAX = 0xFFFFFFFFFFFFFFFF
cdef object _TWO64 = 2**64


cdef extern from *:
    int __builtin_ctzll(unsigned long long) nogil


@cython.final
cdef class ReceiveWindow:
    """Exactly-once delivery of numbered messages, in order or on arrival, holding at most
    `capacity` messages (re-order buffer plus delivered-but-unreleased).

    ReceiveWindow(capacity, ordered=True, first_number=1): capacity 1..65536, first_number
    1..2**64-1 (number 0 is never accepted); ValueError otherwise.
    """

    def __cinit__(self, capacity, ordered=True, first_number=1):
        cdef Py_ssize_t cap = _int(capacity, "capacity")
        cdef Py_ssize_t ring = 64
        if not 1 <= cap <= _MAX_CAPACITY:
            raise ValueError(f"capacity must be in 1..{_MAX_CAPACITY}, got {capacity}")
        self._first = _number(first_number, "first_number")
        if self._first == 0:
            raise ValueError("first_number must be in 1..2**64-1 (number 0 is never accepted), got 0")
        self._capacity = cap
        self._ordered = bool(ordered)
        while ring < self._capacity:
            ring <<= 1
        self._mask = ring - 1
        self._bits = <uint64_t*>PyMem_Malloc((ring // 64) * sizeof(uint64_t))
        self._runs = <uint64_t*>PyMem_Malloc((self._capacity + 2) * sizeof(uint64_t))
        if self._bits == NULL or self._runs == NULL:
            raise MemoryError()
        memset(self._bits, 0, (ring // 64) * sizeof(uint64_t))
        if self._ordered:
            self._waiting = <PyObject**>PyMem_Malloc(ring * sizeof(PyObject*))
            if self._waiting == NULL:
                raise MemoryError()
            memset(self._waiting, 0, ring * sizeof(PyObject*))
        self._floor = self._first
        self._complete = False
        self._highest = self._first - 1
        self._held = 0
        self._buffered = 0
        self._seen = 0
        self._duplicates = 0
        self._refused = 0
        self._delivered = 0

    def __dealloc__(self):
        cdef uint64_t i
        if self._waiting != NULL:
            for i in range(self._mask + 1):
                if self._waiting[i] != NULL:
                    Py_DECREF(<object>self._waiting[i])
                    self._waiting[i] = NULL
        PyMem_Free(self._waiting)
        PyMem_Free(self._bits)
        PyMem_Free(self._runs)

    # ---- state ----

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def ordered(self) -> bool:
        return self._ordered

    @property
    def held(self) -> int:
        """Delivered, not yet released by the application."""
        return self._held

    @property
    def buffered(self) -> int:
        """Received out of order and waiting for the gap below (0 when unordered)."""
        return self._buffered

    @property
    def buffer_remaining(self) -> int:
        return self._capacity - self._held - self._buffered

    @property
    def floor(self) -> int:
        """The lowest number not yet received (2**64 once 2**64-1 was)."""
        return self._floor_number()

    @property
    def highest(self) -> int:
        """The highest number received (first_number - 1 when none)."""
        return self._highest

    @property
    def duplicates(self) -> int:
        return self._duplicates

    @property
    def refused(self) -> int:
        return self._refused

    @property
    def delivered(self) -> int:
        return self._delivered

    @property
    def has_gap(self) -> bool:
        """Something above the floor has been received."""
        return self._seen > 0

    cdef object _floor_number(self):
        if self._complete:
            return _TWO64
        return self._floor

    # ---- receiving ----

    def accept(self, first_number, list payloads not None) -> list:
        """Take payloads numbered first_number, first_number+1, ...; returns what became
        deliverable (ordered: the in-order run; unordered: new messages in arrival order).
        Duplicates (numbers received before, number 0, numbers below first_number) are
        counted and dropped; numbers at or beyond floor + capacity - held (unordered: once held reaches capacity) are counted as
        refused and dropped (not acknowledged: the sender resends them)."""
        cdef uint64_t first = _number(first_number, "first_number")
        cdef Py_ssize_t size = PyList_GET_SIZE(payloads)
        cdef Py_ssize_t i
        cdef uint64_t n, off, index, bit
        cdef PyObject* item
        cdef list out = []
        if size and <uint64_t>(size - 1) > _MAX - first:
            raise ValueError(f"first_number {first} with {size} payloads runs past 2**64-1")
        for i in range(size):
            n = first + <uint64_t>i
            if self._complete or n < self._floor:
                self._duplicates += 1
                continue
            off = n - self._floor
            if off >= <uint64_t>self._capacity:
                self._refused += 1  # never received: beyond every window so far
                continue
            index = n & self._mask
            bit = (<uint64_t>1) << (index & 63)
            if self._bits[index >> 6] & bit:
                self._duplicates += 1
                continue
            # Ordered: `held` counts messages below the floor, so the span shrinks by it.
            # Unordered: messages delivered above the floor are in `held` too; bound memory by
            # held alone, so every number inside an advertised floor + capacity - held fits.
            if (off >= <uint64_t>(self._capacity - self._held) if self._ordered
                    else self._held >= self._capacity):
                self._refused += 1  # not acknowledged: the sender will resend it
                continue
            if n > self._highest:
                self._highest = n
            item = PyList_GET_ITEM(payloads, i)
            if off == 0:
                out.append(<object>item)
                self._held += 1
                self._floor += 1
                if self._floor == 0:
                    self._complete = True
                # The gap closed: the received run above it follows.
                while self._seen and not self._complete:
                    index = self._floor & self._mask
                    bit = (<uint64_t>1) << (index & 63)
                    if not self._bits[index >> 6] & bit:
                        break
                    self._bits[index >> 6] &= ~bit
                    self._seen -= 1
                    if self._ordered:
                        item = self._waiting[index]
                        self._waiting[index] = NULL
                        out.append(<object>item)
                        Py_DECREF(<object>item)
                        self._buffered -= 1
                        self._held += 1
                    self._floor += 1
                    if self._floor == 0:
                        self._complete = True
            else:
                self._bits[index >> 6] |= bit
                self._seen += 1
                if self._ordered:
                    Py_INCREF(<object>item)
                    self._waiting[index] = item
                    self._buffered += 1
                else:
                    out.append(<object>item)
                    self._held += 1
        self._delivered += <uint64_t>PyList_GET_SIZE(out)
        return out

    def release(self, n) -> None:
        """The application consumed `n` delivered messages, freeing their window slots
        (ValueError if n > held)."""
        cdef Py_ssize_t count = _int(n, "n")
        if not 0 <= count <= self._held:
            raise ValueError(f"n must be in 0..{self._held} (held), got {n}")
        self._held -= count

    # ---- acknowledgement ----

    cdef uint64_t _scan(self, uint64_t off, uint64_t end, bint received) noexcept nogil:
        """The first offset in [off, end) above the floor whose bit is `received`; end if none."""
        cdef uint64_t position, word
        while off < end:
            position = (self._floor + off) & self._mask
            word = self._bits[position >> 6]
            if not received:
                word = ~word
            word >>= position & 63
            if word:
                off += <uint64_t>__builtin_ctzll(word)
                return off if off < end else end
            off += 64 - (position & 63)  # the ring is whole words, so this reaches the next one
        return end

    cdef Py_ssize_t _collect_runs(self) noexcept nogil:
        """Runs of received numbers above the floor into _runs as (first, last) offsets;
        returns how many."""
        cdef uint64_t end, off = 1, start
        cdef Py_ssize_t count = 0
        if self._seen == 0:
            return 0
        end = self._highest - self._floor + 1
        while off < end:
            start = self._scan(off, end, True)
            if start == end:
                break
            off = self._scan(start, end, False)
            self._runs[2 * count] = start
            self._runs[2 * count + 1] = off - 1
            count += 1
        return count

    def ack_ranges(self, max_ranges) -> list:
        """Received numbers as ascending closed (lo, hi) ranges, at most max_ranges (>= 1):
        when there are more, the lowest max_ranges. Empty when nothing has been received.

        The lowest, not the newest: a resent message keeps its old number, so ranges around
        it would never be among the highest while new messages arrive above, and a sender
        that sees newer messages acknowledged would declare it lost again and again. Every
        number below the last range sent is accounted for; the rest the next acks say."""
        cdef Py_ssize_t most = _int(max_ranges, "max_ranges")
        cdef Py_ssize_t runs, total, skip_to, r
        cdef bint cumulative = self._complete or self._floor > self._first
        cdef list out = []
        if most < 1 and most != -2:
            raise ValueError(f"max_ranges must be >= 1, got {max_ranges}")
        if most == -2:  # beyond 2**62 or below -1
            if max_ranges < 1:
                raise ValueError(f"max_ranges must be >= 1, got {max_ranges}")
            most = (<Py_ssize_t>1) << 62
        runs = self._collect_runs()
        if cumulative:
            out.append((self._first, self._floor_number() - 1))
        for r in range(runs):
            if len(out) >= most:
                break
            out.append((self._floor + self._runs[2 * r], self._floor + self._runs[2 * r + 1]))
        return out

    def __repr__(self) -> str:
        return (
            f"<ReceiveWindow floor={self.floor} highest={self._highest} held={self._held} "
            f"buffered={self._buffered} capacity={self._capacity}>"
        )
