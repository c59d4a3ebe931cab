# The session wire format: declarations shared with any Cython module that cimports it.
cimport cython
from libc.stdint cimport uint64_t


# A bounds-checked cursor over one packet body: every read checks its length against
# end - pos before touching or allocating anything.
cdef struct Reader:
    const unsigned char* data
    Py_ssize_t pos
    Py_ssize_t end
    int frame_type          # of the frame being read, for error messages (0: not yet known)


# Build one DATA frame from payloads[start:start+count] of a list or tuple already checked
# by the caller; payload_bytes is the sum of their bin headers and lengths. fragments is
# NULL or nfragments (offset, index, total) triples.
cdef bytes build_data(uint64_t session_id, uint64_t first_number, object payloads,
                      Py_ssize_t start, Py_ssize_t count, Py_ssize_t payload_bytes,
                      const uint64_t* fragments, Py_ssize_t nfragments)

# Build one ACK frame from nranges (lo, hi) pairs held flat in ranges.
cdef bytes build_ack(uint64_t session_id, const uint64_t* ranges, Py_ssize_t nranges,
                     uint64_t buffer_remaining, bint final)

# Every frame of a packet body (see decode_packet).
cdef list decode_body(const unsigned char* data, Py_ssize_t size,
                      Py_ssize_t max_message_size, Py_ssize_t max_frames)


@cython.final
cdef class PacketReader:
    cdef readonly Py_ssize_t max_packet_size
    cdef unsigned char* _buffer     # a prefix of one packet (length prefix included)
    cdef Py_ssize_t _held           # bytes in _buffer
    cdef Py_ssize_t _capacity       # bytes allocated for _buffer
    cdef Py_ssize_t _length         # body length of the held packet; -1 until its prefix is whole
    cdef object _failure            # None, or why the stream went out of step

    cdef int _hold(self, const unsigned char* data, Py_ssize_t n) except -1
    cdef int _check_length(self, Py_ssize_t length) except -1
    cdef int _fail(self, str reason) except -1
    cdef void _release(self) noexcept
