# Declarations for ext/rtt.pyx: every field and cdef method of the RFC 6298 estimator and
# the deadline heap, so other ext modules can cimport them.

from libc.stdint cimport uint64_t


cdef class RttEstimator:
    cdef double _initial_rto
    cdef double _min_rto
    cdef double _max_rto
    cdef double _granularity
    cdef double _srtt
    cdef double _rttvar
    cdef double _rto
    cdef Py_ssize_t _samples

    cdef void _apply(self, double r) noexcept nogil


# One heap slot: ordered by (deadline, seq); `handle` finds the key and the slot's position.
cdef struct HeapEntry:
    double deadline
    uint64_t seq
    Py_ssize_t handle


cdef class DeadlineHeap:
    cdef HeapEntry* _heap          # binary min-heap of _count entries
    cdef Py_ssize_t* _position     # handle -> index in _heap
    cdef Py_ssize_t _count         # live keys; their handles are exactly 0 .. _count-1
    cdef Py_ssize_t _capacity      # slots allocated in _heap, _position and _keys
    cdef uint64_t _seq             # set() counter: orders equal deadlines first set, first out
    cdef dict _handles             # key -> handle (a Python int)
    cdef list _keys                # handle -> key object (None beyond _count)
    cdef list _numbers             # handle -> its int object, so dict stores allocate nothing

    cdef int _resize(self, Py_ssize_t capacity) except -1
    cdef Py_ssize_t _handle_of(self, object key) except -2
    cdef void _sift_up(self, Py_ssize_t index) noexcept nogil
    cdef void _sift_down(self, Py_ssize_t index) noexcept nogil
    cdef int _remove(self, Py_ssize_t handle, object key) except -1
