# Declarations for ext/send_window.pyx: the ring of sent-but-unacknowledged messages.

cimport cython
from cpython.object cimport PyObject
from libc.stdint cimport uint32_t, uint64_t


# One ring slot. Inside the window [lowest_unacked, next_number) a slot with payload NULL
# was acked above a gap and waits for the gap to close; outside the window payload is NULL.
cdef struct SentSlot:
    PyObject* payload      # owned reference while unacked
    Py_ssize_t size        # len(payload), taken at push
    double first_sent
    double last_sent
    uint64_t serial        # transmission serial of the latest transmission
    uint32_t retries
    uint32_t older         # transmission-order list: ring index of the previous / next
    uint32_t newer         #   transmission, or NIL
    bint resent            # transmitted more than once: its ack is ambiguous (Karn's rule)


@cython.final
cdef class SendWindow:
    cdef SentSlot* _slots          # ring of _mask + 1 slots; number n lives at n & _mask
    cdef uint64_t _mask
    cdef Py_ssize_t _capacity
    cdef Py_ssize_t _max_retries
    cdef uint64_t _first           # first_number
    cdef uint64_t _next            # next_number mod 2**64
    cdef bint _exhausted           # next_number == 2**64 (2**64-1 was pushed)
    cdef Py_ssize_t _span          # next_number - lowest_unacked
    cdef Py_ssize_t _in_flight     # unacked slots in the window
    cdef Py_ssize_t _bytes         # sum of their sizes
    cdef uint64_t _serial          # transmissions so far (push and every resend)
    cdef uint64_t _largest_acked_serial
    cdef uint32_t _oldest          # unacked slots in transmission (= serial) order
    cdef uint32_t _newest
    cdef double _last_tx_time      # time of the newest transmission
    cdef bint _tx_monotone         # transmission times never went backwards since the list was empty
    cdef uint64_t* _ranges         # apply_ack scratch: validated (lo, hi) pairs
    cdef Py_ssize_t _ranges_cap    # pairs _ranges can hold
    cdef uint32_t* _picked         # scratch: window offsets chosen for a resend
    cdef PyObject** _released      # scratch: payload references dropped by one ack

    cdef object _next_number(self)
    cdef void _link_newest(self, uint32_t index) noexcept nogil
    cdef void _unlink(self, uint32_t index) noexcept nogil
    cdef void _note_transmission(self, double now) noexcept nogil
    cdef Py_ssize_t _parse_ranges(self, list ranges) except -1
    cdef list _resend(self, Py_ssize_t count, double now)
    cdef double _scan_lost(self, double delay, double t, Py_ssize_t* count, bint* found) noexcept nogil
