# RangeSet: 64-bit message numbers as a sorted C array of closed ranges (ext/README.md "rangeset").

from libc.stdint cimport uint64_t


cdef struct Range:
    uint64_t lo
    uint64_t hi


cdef class RangeSet:
    cdef Range* _ranges          # sorted, disjoint, non-adjacent; PyMem_Malloc'd
    cdef Py_ssize_t _len         # ranges in use
    cdef Py_ssize_t _capacity    # ranges allocated
    cdef uint64_t _count         # numbers held modulo 2**64: 0 with _len > 0 is the full set, 2**64

    # internals
    cdef Py_ssize_t _find(self, uint64_t n) noexcept
    cdef int _reserve(self, Py_ssize_t n) except -1
    cdef void _shrink(self) noexcept
    cdef int _insert(self, Py_ssize_t i, uint64_t lo, uint64_t hi) except -1
    cdef void _delete(self, Py_ssize_t i, Py_ssize_t n) noexcept
    cdef int _merge_runs(self, Range* runs, Py_ssize_t k) except -1
    cdef object _count_object(self)
    cdef list _slice(self, Py_ssize_t start)

    # C API for the other layer-1 modules: no argument checks, numbers are already uint64_t.
    cdef bint c_contains(self, uint64_t n) noexcept
    cdef int c_add(self, uint64_t n) except -1                        # 1 when n was new, else 0
    cdef int c_add_range(self, uint64_t lo, uint64_t hi) except -1   # lo <= hi; see .count for the change
    cdef int c_remove_below(self, uint64_t floor) except -1
