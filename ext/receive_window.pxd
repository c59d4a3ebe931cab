# Declarations for ext/receive_window.pyx: de-duplication and re-ordering bounded by the window.

cimport cython
from cpython.object cimport PyObject
from libc.stdint cimport uint64_t


@cython.final
cdef class ReceiveWindow:
    cdef uint64_t* _bits           # ring bitmap: number n above the floor received <=> bit n & _mask
    cdef PyObject** _waiting       # ordered mode: ring of owned payloads waiting for the gap; else NULL
    cdef uint64_t _mask            # ring size - 1 (a power of two, >= 64 and >= capacity)
    cdef Py_ssize_t _capacity
    cdef bint _ordered
    cdef uint64_t _first           # first_number (>= 1)
    cdef uint64_t _floor           # lowest number not yet received, mod 2**64
    cdef bint _complete            # floor == 2**64: every number was received
    cdef uint64_t _highest         # highest number received (first_number - 1 when none)
    cdef Py_ssize_t _held          # delivered, not yet released
    cdef Py_ssize_t _buffered      # waiting in _waiting (ordered mode)
    cdef Py_ssize_t _seen          # numbers received above the floor
    cdef uint64_t _duplicates
    cdef uint64_t _refused
    cdef uint64_t _delivered
    cdef uint64_t* _runs           # ack_ranges scratch: (first, last) offsets above the floor

    cdef object _floor_number(self)
    cdef uint64_t _scan(self, uint64_t off, uint64_t end, bint received) noexcept nogil
    cdef Py_ssize_t _collect_runs(self) noexcept nogil
