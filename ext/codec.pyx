# cython: language_level=3
"""The session wire format (ext/README.md, section "codec"), compiled.

DATA and ACK frames are written by hand, byte for byte what ``msgpack.packb(...,
use_bin_type=True)`` writes for the same array: the size is computed first, then one
bytes object is allocated and filled. The rarer frames are checked here and packed by
msgpack. Decoding is a hand-written msgpack reader that checks every length against the
bytes left before reading or allocating, so hostile length fields cost nothing.
"""
cimport cython
from cpython.buffer cimport (PyBUF_FULL_RO, PyBuffer_IsContiguous, PyBuffer_Release,
                             PyObject_GetBuffer)
from cpython.bytearray cimport PyByteArray_Check
from cpython.bool cimport PyBool_Check
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_Clear, PyErr_Occurred
from cpython.list cimport PyList_Check, PyList_CheckExact, PyList_New
from cpython.long cimport PyLong_Check
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.memoryview cimport PyMemoryView_Check
from cpython.object cimport Py_SIZE, PyObject
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_Check, PyTuple_New
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

import msgpack

from tether.errors import ProtocolError

# Raw-pointer views of a few CPython macros, so the per-payload loops touch no refcounts.
cdef extern from "Python.h":
    PyObject** PySequence_Fast_ITEMS(object seq)
    bint raw_is_bytes "PyBytes_Check"(PyObject* o)
    Py_ssize_t raw_bytes_size "PyBytes_GET_SIZE"(PyObject* o)
    char* raw_bytes_data "PyBytes_AS_STRING"(PyObject* o)
    PyObject* raw_new_bytes "PyBytes_FromStringAndSize"(const char* v, Py_ssize_t n) except NULL
    PyObject* raw_new_uint "PyLong_FromUnsignedLongLong"(unsigned long long v) except NULL
    void list_steal "PyList_SET_ITEM"(object lst, Py_ssize_t i, PyObject* item)
    void tuple_steal "PyTuple_SET_ITEM"(object tup, Py_ssize_t i, PyObject* item)
    unsigned long long raw_as_uint "PyLong_AsUnsignedLongLong"(object o) noexcept
    Py_ssize_t raw_as_ssize "PyLong_AsSsize_t"(object o) noexcept
    Py_ssize_t PY_SSIZE_T_MAX

# Big-endian loads and stores (compilers turn these into one bswap).
cdef extern from *:
    """
    static inline uint32_t tether_load16(const unsigned char *p) {
        return ((uint32_t)p[0] << 8) | (uint32_t)p[1];
    }
    static inline uint32_t tether_load32(const unsigned char *p) {
        return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
    }
    static inline uint64_t tether_load64(const unsigned char *p) {
        return ((uint64_t)tether_load32(p) << 32) | (uint64_t)tether_load32(p + 4);
    }
    static inline unsigned char *tether_store16(unsigned char *p, uint32_t v) {
        p[0] = (unsigned char)(v >> 8); p[1] = (unsigned char)v; return p + 2;
    }
    static inline unsigned char *tether_store32(unsigned char *p, uint32_t v) {
        p[0] = (unsigned char)(v >> 24); p[1] = (unsigned char)(v >> 16);
        p[2] = (unsigned char)(v >> 8); p[3] = (unsigned char)v; return p + 4;
    }
    static inline unsigned char *tether_store64(unsigned char *p, uint64_t v) {
        return tether_store32(tether_store32(p, (uint32_t)(v >> 32)), (uint32_t)v);
    }
    """
    unsigned int load16 "tether_load16"(const unsigned char* p) noexcept nogil
    unsigned int load32 "tether_load32"(const unsigned char* p) noexcept nogil
    uint64_t load64 "tether_load64"(const unsigned char* p) noexcept nogil
    unsigned char* store16 "tether_store16"(unsigned char* p, unsigned int v) noexcept nogil
    unsigned char* store32 "tether_store32"(unsigned char* p, unsigned int v) noexcept nogil
    unsigned char* store64 "tether_store64"(unsigned char* p, uint64_t v) noexcept nogil


CREATE_SEQUENCE = 1
CREATE_SEQUENCE_RESPONSE = 2
CREATE_SEQUENCE_REFUSED = 3
DATA = 4
ACK = 5
# 6 was NACK, retired: loss detection needs no more than the ACK's ranges.
ACK_REQUESTED = 7
CLOSE_SEQUENCE = 8
CLOSE_SEQUENCE_RESPONSE = 9
TERMINATE_SEQUENCE = 10
TERMINATE_SEQUENCE_RESPONSE = 11
FAULT = 12
RESUME = 13
RESUME_RESPONSE = 14
RETRY = 15
PATH_CHALLENGE = 16
PATH_RESPONSE = 17

FRAME_NAMES = {
    CREATE_SEQUENCE: "CREATE_SEQUENCE",
    CREATE_SEQUENCE_RESPONSE: "CREATE_SEQUENCE_RESPONSE",
    CREATE_SEQUENCE_REFUSED: "CREATE_SEQUENCE_REFUSED",
    DATA: "DATA",
    ACK: "ACK",
    ACK_REQUESTED: "ACK_REQUESTED",
    CLOSE_SEQUENCE: "CLOSE_SEQUENCE",
    CLOSE_SEQUENCE_RESPONSE: "CLOSE_SEQUENCE_RESPONSE",
    TERMINATE_SEQUENCE: "TERMINATE_SEQUENCE",
    TERMINATE_SEQUENCE_RESPONSE: "TERMINATE_SEQUENCE_RESPONSE",
    FAULT: "FAULT",
    RESUME: "RESUME",
    RESUME_RESPONSE: "RESUME_RESPONSE",
    RETRY: "RETRY",
    PATH_CHALLENGE: "PATH_CHALLENGE",
    PATH_RESPONSE: "PATH_RESPONSE",
}

TOKEN_SIZE = 16              # Resume token: 128 random bits
ADDRESS_TOKEN_MAX = 64       # a server's address token is opaque to the client, and bounded
LENGTH_PREFIX_SIZE = 4       # TCP: 4-byte big-endian body length before each packet
U64_MAX = 2**64 - 1
MAX_BIN = 2**32 - 1          # bin32 is the largest msgpack binary

cdef enum:
    T_DATA = 4
    T_ACK = 5
    T_RETIRED = 6      # NACK's number: decoding and encoding refuse it
    T_ACK_REQUESTED = 7
    T_RESUME = 13
    T_CREATE_SEQUENCE = 1
    T_LAST = 17
    C_TOKEN_SIZE = 16
    C_ADDRESS_TOKEN_MAX = 64
    C_PREFIX = 4
    MAX_ARITY = 8

cdef enum Kind:
    K_UINT = 1
    K_TOKEN = 2
    K_STR = 3
    K_BOOL = 4
    K_ADDRESS_TOKEN = 5

cdef uint64_t C_U64_MAX = 0xFFFFFFFFFFFFFFFF
cdef Py_ssize_t C_MAX_BIN = 0xFFFFFFFF

# (field name, kind) of the frames without lists; index = frame type. The last fields of
# CREATE_SEQUENCE (ack_delay, address_token) and CREATE_SEQUENCE_RESPONSE (ack_delay) may be
# left out, from the end (SIMPLE_OPTIONAL).
cdef tuple SIMPLE_FIELDS = (
    None,
    (("session_id", K_UINT), ("token", K_TOKEN), ("window", K_UINT),
     ("max_message_size", K_UINT), ("ordered", K_BOOL), ("ack_delay", K_UINT),
     ("address_token", K_ADDRESS_TOKEN)),
    (("session_id", K_UINT), ("window", K_UINT), ("max_message_size", K_UINT), ("ack_delay", K_UINT)),
    (("session_id", K_UINT), ("reason", K_STR)),
    None, None, None,
    (("session_id", K_UINT),),
    (("session_id", K_UINT), ("last_number", K_UINT)),
    (("session_id", K_UINT), ("last_number", K_UINT)),
    (("session_id", K_UINT), ("last_number", K_UINT)),
    (("session_id", K_UINT),),
    (("session_id", K_UINT), ("code", K_STR), ("reason", K_STR)),
    (("session_id", K_UINT), ("token", K_TOKEN)),
    (("session_id", K_UINT),),
    (("session_id", K_UINT), ("address_token", K_ADDRESS_TOKEN)),
    (("session_id", K_UINT), ("data", K_TOKEN)),
    (("session_id", K_UINT), ("data", K_TOKEN)),
)

# How many trailing fields of a simple frame may be left out, by frame type.
cdef tuple SIMPLE_OPTIONAL = (0, 2, 1) + (0,) * (T_LAST - 2)

# The same table in C for the decoder: kinds and arity by frame type (0: not simple), and
# the smallest arity (less the optional trailing fields).
cdef unsigned char SIMPLE_KINDS[T_LAST + 1][MAX_ARITY]
cdef Py_ssize_t SIMPLE_ARITY[T_LAST + 1]
cdef Py_ssize_t SIMPLE_MIN_ARITY[T_LAST + 1]
cdef tuple FIELD_NAMES = tuple(
    ("type", *(name for name, _ in fields)) if fields else () for fields in SIMPLE_FIELDS)
cdef tuple FRAME_TYPES = tuple(range(T_LAST + 1))     # the Python ints decoded frames start with


cdef int _fill_simple_tables() except -1:
    cdef Py_ssize_t t, k
    for t in range(T_LAST + 1):
        fields = SIMPLE_FIELDS[t]
        SIMPLE_ARITY[t] = len(fields) + 1 if fields else 0
        SIMPLE_MIN_ARITY[t] = SIMPLE_ARITY[t] - <Py_ssize_t>SIMPLE_OPTIONAL[t]
        for k in range(MAX_ARITY):
            SIMPLE_KINDS[t][k] = fields[k - 1][1] if fields and 1 <= k <= len(fields) else 0
    return 0


_fill_simple_tables()

cdef tuple NAMES = (
    "", "CREATE_SEQUENCE", "CREATE_SEQUENCE_RESPONSE", "CREATE_SEQUENCE_REFUSED", "DATA",
    "ACK", "", "ACK_REQUESTED", "CLOSE_SEQUENCE", "CLOSE_SEQUENCE_RESPONSE",
    "TERMINATE_SEQUENCE", "TERMINATE_SEQUENCE_RESPONSE", "FAULT", "RESUME", "RESUME_RESPONSE",
    "RETRY", "PATH_CHALLENGE", "PATH_RESPONSE",
)

cdef object packb = msgpack.packb


# ================================================================ msgpack sizes and writers

cdef inline Py_ssize_t uint_size(uint64_t v) noexcept nogil:
    if v < 0x80:
        return 1
    if v < 0x100:
        return 2
    if v < 0x10000:
        return 3
    if v < 0x100000000ULL:
        return 5
    return 9


cdef inline unsigned char* put_uint(unsigned char* p, uint64_t v) noexcept nogil:
    # The smallest encoding, as msgpack.packb chooses it.
    if v < 0x80:
        p[0] = <unsigned char>v
        return p + 1
    if v < 0x100:
        p[0] = 0xcc
        p[1] = <unsigned char>v
        return p + 2
    if v < 0x10000:
        p[0] = 0xcd
        return store16(p + 1, <unsigned int>v)
    if v < 0x100000000ULL:
        p[0] = 0xce
        return store32(p + 1, <unsigned int>v)
    p[0] = 0xcf
    return store64(p + 1, v)


cdef inline Py_ssize_t bin_header_size(Py_ssize_t n) noexcept nogil:
    if n < 0x100:
        return 2
    if n < 0x10000:
        return 3
    return 5


cdef inline unsigned char* put_bin_header(unsigned char* p, Py_ssize_t n) noexcept nogil:
    if n < 0x100:
        p[0] = 0xc4
        p[1] = <unsigned char>n
        return p + 2
    if n < 0x10000:
        p[0] = 0xc5
        return store16(p + 1, <unsigned int>n)
    p[0] = 0xc6
    return store32(p + 1, <unsigned int>n)


cdef inline Py_ssize_t array_header_size(Py_ssize_t n) noexcept nogil:
    if n < 16:
        return 1
    if n < 0x10000:
        return 3
    return 5


cdef inline unsigned char* put_array_header(unsigned char* p, Py_ssize_t n) noexcept nogil:
    if n < 16:
        p[0] = <unsigned char>(0x90 | n)
        return p + 1
    if n < 0x10000:
        p[0] = 0xdc
        return store16(p + 1, <unsigned int>n)
    p[0] = 0xdd
    return store32(p + 1, <unsigned int>n)


# ================================================================ argument checks

cdef int as_uint(object value, uint64_t* out, str what, Py_ssize_t index=-1) except -1:
    """value as a uint64 (bool is not a number here); `what` may hold {} for index."""
    if PyBool_Check(value) or not PyLong_Check(value):
        raise TypeError(f"{_what(what, index)} must be an int, not {type(value).__name__}")
    cdef unsigned long long v = raw_as_uint(value)
    if v == <unsigned long long>-1 and PyErr_Occurred():
        PyErr_Clear()     # an int argument can only fail with OverflowError here
        raise ValueError(f"{_what(what, index)} must be in 0..2**64-1, got {value}")
    out[0] = v
    return 0


cdef str _what(str what, Py_ssize_t index):
    return what.format(index) if index >= 0 else what


cdef Py_ssize_t as_index(object value, str what, Py_ssize_t lowest) except? -2:
    """value as a Py_ssize_t >= lowest; beyond Py_ssize_t it is PY_SSIZE_T_MAX, which is
    past any sequence (callers compare it with a length)."""
    if PyBool_Check(value) or not PyLong_Check(value):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    cdef Py_ssize_t v = raw_as_ssize(value)
    if v == -1 and PyErr_Occurred():
        PyErr_Clear()     # OverflowError: the int does not fit Py_ssize_t
        v = PY_SSIZE_T_MAX if value > 0 else -PY_SSIZE_T_MAX
    if v < lowest:
        raise ValueError(f"{what} must be >= {lowest}, got {value}")
    return v


cdef Py_ssize_t as_limit(object value, str what, Py_ssize_t lowest, Py_ssize_t highest) except -1:
    if PyBool_Check(value) or not PyLong_Check(value):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    cdef Py_ssize_t v = raw_as_ssize(value)
    if v == -1 and PyErr_Occurred():
        PyErr_Clear()     # OverflowError: far outside any limit
        v = -1 if value < 0 else PY_SSIZE_T_MAX
    if v < lowest or v > highest:
        raise ValueError(f"{what} must be in {lowest}..{highest}, got {value}")
    return v


cdef int check_sequence(object value, str what) except -1:
    if not (PyList_Check(value) or PyTuple_Check(value)):
        raise TypeError(f"{what} must be a list or tuple, not {type(value).__name__}")
    return 0


cdef inline Py_ssize_t payload_size(PyObject* item, Py_ssize_t index) except -1:
    """Length of one payload; bytes (the usual case) without a call."""
    if raw_is_bytes(item):
        if raw_bytes_size(item) > C_MAX_BIN:
            raise ValueError(f"payloads[{index}] is larger than 2**32-1 bytes")
        return raw_bytes_size(item)
    return buffer_payload_size(<object>item, index)


cdef Py_ssize_t buffer_payload_size(object item, Py_ssize_t index) except -1:
    """Length of a bytearray or memoryview payload (bytes subclasses take the fast path)."""
    cdef Py_buffer view
    cdef Py_ssize_t n
    if not (PyByteArray_Check(item) or PyMemoryView_Check(item)):
        raise TypeError(f"payloads[{index}] must be bytes, bytearray or memoryview, "
                        f"not {type(item).__name__}")
    PyObject_GetBuffer(item, &view, PyBUF_FULL_RO)    # ValueError on a released memoryview
    n = view.len
    contiguous = PyBuffer_IsContiguous(&view, b'C')
    PyBuffer_Release(&view)
    if not contiguous:
        raise TypeError(f"payloads[{index}] must be a contiguous bytes-like object")
    if n > C_MAX_BIN:
        raise ValueError(f"payloads[{index}] is larger than 2**32-1 bytes")
    return n


cdef unsigned char* put_payload(unsigned char* p, unsigned char* end, PyObject* item) except NULL:
    """Writes one payload as a bin; `end` guards the output against a payload that changed
    size since it was measured."""
    cdef Py_ssize_t n
    cdef Py_buffer view
    if raw_is_bytes(item):
        n = raw_bytes_size(item)
        if bin_header_size(n) + n > end - p:
            raise RuntimeError("a payload changed size while it was being encoded")
        p = put_bin_header(p, n)
        memcpy(p, raw_bytes_data(item), n)
        return p + n
    PyObject_GetBuffer(<object>item, &view, PyBUF_FULL_RO)
    n = view.len
    if bin_header_size(n) + n > end - p:
        PyBuffer_Release(&view)
        raise RuntimeError("a payload changed size while it was being encoded")
    p = put_bin_header(p, n)
    memcpy(p, view.buf, n)
    PyBuffer_Release(&view)
    return p + n


cdef int check_numbers(uint64_t first_number, Py_ssize_t count) except -1:
    if count > 0 and <uint64_t>(count - 1) > C_U64_MAX - first_number:
        raise ValueError(f"first_number {first_number} + {count} payloads exceeds 2**64-1")
    return 0


cdef str fragment_problem(uint64_t offset, uint64_t index, uint64_t total, uint64_t previous,
                          bint has_previous, uint64_t first_number, Py_ssize_t count):
    """Why a fragment triple is inconsistent with its frame, or None when it is sound."""
    if offset >= <uint64_t>count:
        return f"offset {offset} is beyond the frame's {count} payloads"
    if has_previous and offset <= previous:
        return "offsets must be strictly ascending"
    if total < 2:
        return f"total {total} must be at least 2"
    if index >= total:
        return f"index {index} must be below total {total}"
    # first_number + offset cannot overflow: check_numbers covered the frame's numbers.
    cdef uint64_t number = first_number + offset
    if index > number or total - 1 > C_U64_MAX - (number - index):
        return "the message's numbers fall outside 0..2**64-1"
    return None


# ================================================================ encoding

cdef bytes build_data(uint64_t session_id, uint64_t first_number, object payloads,
                      Py_ssize_t start, Py_ssize_t count, Py_ssize_t payload_bytes,
                      const uint64_t* fragments, Py_ssize_t nfragments):
    cdef Py_ssize_t total = (2 + uint_size(session_id) + uint_size(first_number)
                             + array_header_size(count) + payload_bytes)
    cdef Py_ssize_t i
    if nfragments:
        total += array_header_size(3 * nfragments)
        for i in range(3 * nfragments):
            total += uint_size(fragments[i])
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(out)
    cdef unsigned char* end = p + total
    cdef PyObject** items = PySequence_Fast_ITEMS(payloads)
    p[0] = 0x95 if nfragments else 0x94
    p[1] = T_DATA
    p = put_uint(p + 2, session_id)
    p = put_uint(p, first_number)
    p = put_array_header(p, count)
    for i in range(start, start + count):
        p = put_payload(p, end, items[i])
    if nfragments:
        p = put_array_header(p, 3 * nfragments)
        for i in range(3 * nfragments):
            p = put_uint(p, fragments[i])
    if p != end:
        raise RuntimeError("a payload changed size while it was being encoded")
    return out


cdef bytes build_ack(uint64_t session_id, const uint64_t* ranges, Py_ssize_t nranges,
                     uint64_t buffer_remaining, bint final):
    cdef Py_ssize_t total = (3 + uint_size(session_id) + array_header_size(2 * nranges)
                             + uint_size(buffer_remaining))
    cdef Py_ssize_t i
    for i in range(2 * nranges):
        total += uint_size(ranges[i])
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(out)
    p[0] = 0x95
    p[1] = T_ACK
    p = put_uint(p + 2, session_id)
    p = put_array_header(p, 2 * nranges)
    for i in range(2 * nranges):
        p = put_uint(p, ranges[i])
    p = put_uint(p, buffer_remaining)
    p[0] = 0xc3 if final else 0xc2
    return out


cdef bytes encode_data_checked(object session_id, object first_number, object payloads,
                               object start, object count, object fragments):
    cdef uint64_t sid, first
    cdef Py_ssize_t n, s, c, i, payload_bytes = 0, size, nfragments = 0
    cdef uint64_t* flat = NULL
    as_uint(session_id, &sid, "session_id")
    as_uint(first_number, &first, "first_number")
    check_sequence(payloads, "payloads")
    n = Py_SIZE(payloads)     # the storage the raw item pointers read, whatever __len__ says
    s = as_index(start, "start", 0)
    c = as_index(count, "count", -1)
    if s > n:
        raise ValueError(f"start {s} is beyond the {n} payloads")
    if c == -1:
        c = n - s
    elif c > n - s:
        raise ValueError(f"count {count} is beyond the {n - s} payloads after start")
    if c == 0:
        raise ValueError("a DATA frame needs at least one payload")
    check_numbers(first, c)
    cdef PyObject** items = PySequence_Fast_ITEMS(payloads)
    for i in range(s, s + c):
        size = payload_size(items[i], i)
        payload_bytes += bin_header_size(size) + size
    if fragments is None:
        return build_data(sid, first, payloads, s, c, payload_bytes, NULL, 0)
    check_sequence(fragments, "fragments")
    nfragments = len(fragments)
    if nfragments == 0:
        return build_data(sid, first, payloads, s, c, payload_bytes, NULL, 0)
    flat = <uint64_t*>PyMem_Malloc(3 * nfragments * sizeof(uint64_t))
    if flat == NULL:
        raise MemoryError()
    try:
        fill_fragments(fragments, flat, first, c)
        return build_data(sid, first, payloads, s, c, payload_bytes, flat, nfragments)
    finally:
        PyMem_Free(flat)


cdef int fill_fragments(object fragments, uint64_t* flat, uint64_t first, Py_ssize_t count) except -1:
    cdef Py_ssize_t i
    cdef int k
    for i in range(len(fragments)):
        triple = fragments[i]
        if not (PyList_Check(triple) or PyTuple_Check(triple)) or len(triple) != 3:
            raise TypeError(f"fragments[{i}] must be an (offset, index, total) tuple")
        for k in range(3):
            as_uint(triple[k], &flat[3 * i + k], f"fragments[{{}}][{k}]", i)
        problem = fragment_problem(flat[3 * i], flat[3 * i + 1], flat[3 * i + 2],
                                   flat[3 * i - 3] if i else 0, i > 0, first, count)
        if problem is not None:
            raise ValueError(f"fragments[{i}]: {problem}")
    return 0


cdef bytes encode_ack_checked(object session_id, object ranges, object buffer_remaining,
                              object final):
    cdef uint64_t sid, remaining
    cdef uint64_t small[64]       # most acks carry a few ranges: no allocation for them
    cdef uint64_t* flat = small
    cdef Py_ssize_t n, i
    as_uint(session_id, &sid, "session_id")
    check_sequence(ranges, "ranges")
    n = Py_SIZE(ranges)
    if 2 * n > 64:
        flat = <uint64_t*>PyMem_Malloc(2 * n * sizeof(uint64_t))
        if flat == NULL:
            raise MemoryError()
    cdef PyObject** items = PySequence_Fast_ITEMS(ranges)
    cdef PyObject** bounds
    try:
        for i in range(n):
            pair = <object>items[i]
            if not (PyList_Check(pair) or PyTuple_Check(pair)) or Py_SIZE(pair) != 2:
                raise TypeError(f"ranges[{i}] must be a (lo, hi) tuple")
            bounds = PySequence_Fast_ITEMS(pair)
            as_uint(<object>bounds[0], &flat[2 * i], "ranges[{}] lo", i)
            as_uint(<object>bounds[1], &flat[2 * i + 1], "ranges[{}] hi", i)
            if flat[2 * i] > flat[2 * i + 1]:
                raise ValueError(f"ranges[{i}]: lo {flat[2 * i]} > hi {flat[2 * i + 1]}")
            if i and flat[2 * i] <= flat[2 * i - 1]:
                raise ValueError(f"ranges[{i}]: ranges must be ascending and disjoint")
        as_uint(buffer_remaining, &remaining, "buffer_remaining")
        if not PyBool_Check(final):
            raise TypeError(f"final must be a bool, not {type(final).__name__}")
        return build_ack(sid, flat, n, remaining, final is True)
    finally:
        if flat != small:
            PyMem_Free(flat)


def encode_data(session_id, first_number, payloads, start=0, count=-1, fragments=None):
    """One DATA frame carrying payloads[start:start+count] (count -1: to the end), numbered
    first_number, first_number+1, ...; `fragments` marks payloads that are pieces of a larger
    message as (offset, index, total) (empty or None: none). TypeError/ValueError name a bad
    argument; at least one payload is required."""
    return encode_data_checked(session_id, first_number, payloads, start, count, fragments)


def encode_ack(session_id, ranges, buffer_remaining, final):
    """One ACK frame: `ranges` ascending, disjoint (lo, hi) pairs (may be empty)."""
    return encode_ack_checked(session_id, ranges, buffer_remaining, final)


cdef object checked_binary(object value, str what):
    if not (isinstance(value, bytes) or PyByteArray_Check(value) or PyMemoryView_Check(value)):
        raise TypeError(f"{what} must be bytes, bytearray or memoryview, not {type(value).__name__}")
    view = memoryview(value)
    if not view.c_contiguous:
        raise TypeError(f"{what} must be a contiguous bytes-like object")
    if view.nbytes > C_MAX_BIN:
        raise ValueError(f"{what} is larger than 2**32-1 bytes")
    return view


cdef object checked_field(object value, int kind, str what):
    """A field of a simple frame, checked, as msgpack should pack it."""
    cdef uint64_t number
    if kind == K_UINT:
        as_uint(value, &number, what)
        return number
    if kind == K_TOKEN:
        view = checked_binary(value, what)
        if view.nbytes != C_TOKEN_SIZE:
            raise ValueError(f"{what} must be {C_TOKEN_SIZE} bytes, got {view.nbytes}")
        return view.tobytes()
    if kind == K_ADDRESS_TOKEN:
        view = checked_binary(value, what)
        if not 1 <= view.nbytes <= C_ADDRESS_TOKEN_MAX:
            raise ValueError(f"{what} must be 1..{C_ADDRESS_TOKEN_MAX} bytes, got {view.nbytes}")
        return view.tobytes()
    if kind == K_STR:
        if not isinstance(value, str):
            raise TypeError(f"{what} must be a str, not {type(value).__name__}")
        try:
            encoded = (<str>value).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{what} cannot be encoded as UTF-8") from None
        if len(encoded) > C_MAX_BIN:
            raise ValueError(f"{what} is longer than 2**32-1 bytes")
        return str(value)
    if not PyBool_Check(value):
        raise TypeError(f"{what} must be a bool, not {type(value).__name__}")
    return value


cdef str arity_text(Py_ssize_t frame_type):
    """How many elements a simple frame has, in words ("3", "4 or 5", "6 to 8")."""
    if SIMPLE_MIN_ARITY[frame_type] == SIMPLE_ARITY[frame_type]:
        return str(SIMPLE_ARITY[frame_type])
    if SIMPLE_MIN_ARITY[frame_type] + 1 == SIMPLE_ARITY[frame_type]:
        return f"{SIMPLE_MIN_ARITY[frame_type]} or {SIMPLE_ARITY[frame_type]}"
    return f"{SIMPLE_MIN_ARITY[frame_type]} to {SIMPLE_ARITY[frame_type]}"


def encode_frame(frame):
    """Any frame, as the tuple decode_packet returns (DATA may omit its fragments);
    every field is checked (TypeError/ValueError naming it)."""
    cdef uint64_t frame_type, number
    cdef Py_ssize_t arity, i
    check_sequence(frame, "frame")
    if not frame:
        raise ValueError("frame is empty")
    as_uint(frame[0], &frame_type, "frame type")
    if frame_type < 1 or frame_type > T_LAST or frame_type == T_RETIRED:
        raise ValueError(f"unknown frame type {frame_type}")
    arity = len(frame)
    if frame_type == T_DATA:
        if arity != 4 and arity != 5:
            raise ValueError(f"a DATA frame has 4 or 5 fields, got {arity}")
        return encode_data_checked(frame[1], frame[2], frame[3], 0, -1,
                                   frame[4] if arity == 5 else None)
    if frame_type == T_ACK:
        if arity != 5:
            raise ValueError(f"an ACK frame has 5 fields, got {arity}")
        return encode_ack_checked(frame[1], frame[2], frame[3], frame[4])
    name = NAMES[frame_type]
    fields = SIMPLE_FIELDS[frame_type]
    if not SIMPLE_MIN_ARITY[frame_type] <= arity <= SIMPLE_ARITY[frame_type]:
        raise ValueError(f"a {name} frame has {arity_text(frame_type)} fields, got {arity}")
    packed = [<int>frame_type]
    for i in range(arity - 1):
        field, kind = fields[i]
        packed.append(checked_field(frame[i + 1], kind, f"{name} {field}"))
    return packb(packed, use_bin_type=True)


def payload_sizes(payloads):
    """(total bytes, largest, all exactly bytes) of a list or tuple of payloads, in one pass:
    what a sender checks before queueing a batch. TypeError names a payload that is not
    bytes-like."""
    cdef Py_ssize_t i, n, size, total = 0, largest = 0
    cdef bint exact = True
    check_sequence(payloads, "payloads")
    n = Py_SIZE(payloads)
    cdef PyObject** items = PySequence_Fast_ITEMS(payloads)
    for i in range(n):
        if not PyBytes_CheckExact(<object>items[i]):
            exact = False
        size = payload_size(items[i], i)
        total += size
        if size > largest:
            largest = size
    return total, largest, exact


def split_data(session_id, first_number, payloads, max_body):
    """DATA frames for consecutive payloads, greedily filled: each frame is at most max_body
    bytes, except that a payload too large for any frame gets a frame of its own."""
    cdef uint64_t sid, first
    cdef Py_ssize_t limit, n, s, e, size, body, grown, head
    as_uint(session_id, &sid, "session_id")
    as_uint(first_number, &first, "first_number")
    check_sequence(payloads, "payloads")
    if PyBool_Check(max_body) or not PyLong_Check(max_body):
        raise TypeError(f"max_body must be an int, not {type(max_body).__name__}")
    if max_body < 1:
        raise ValueError(f"max_body must be >= 1, got {max_body}")
    limit = PY_SSIZE_T_MAX if max_body > PY_SSIZE_T_MAX else <Py_ssize_t>max_body
    n = Py_SIZE(payloads)
    check_numbers(first, n)
    # Payloads are checked in order as the frames are cut, so a bad one raises the same
    # error as in the twin (which checks them all first); frames built before it are dropped.
    cdef PyObject** items = PySequence_Fast_ITEMS(payloads)
    frames = []
    s = 0
    while s < n:
        head = 2 + uint_size(sid) + uint_size(first + <uint64_t>s)   # fixarray, type, numbers
        size = payload_size(items[s], s)
        body = bin_header_size(size) + size
        e = s + 1
        while e < n:
            size = payload_size(items[e], e)
            grown = body + bin_header_size(size) + size
            if head + array_header_size(e + 1 - s) + grown > limit:
                break
            body = grown
            e += 1
        frames.append(build_data(sid, first + <uint64_t>s, payloads, s, e - s, body, NULL, 0))
        s = e
    return frames


# ================================================================ decoding

cdef str type_name(unsigned char b, const unsigned char* after, Py_ssize_t left):
    """The msgpack type a byte starts, for error messages."""
    if b <= 0x7f or 0xcc <= b <= 0xcf:
        return "int"
    if 0xd0 <= b <= 0xd3:
        return "negative int" if left > 0 and after[0] & 0x80 else "int"
    if b >= 0xe0:
        return "negative int"
    if b <= 0x8f or b == 0xde or b == 0xdf:
        return "map"
    if b <= 0x9f or b == 0xdc or b == 0xdd:
        return "array"
    if b <= 0xbf or 0xd9 <= b <= 0xdb:
        return "str"
    if b == 0xc0:
        return "nil"
    if b == 0xc1:
        return "the reserved byte 0xc1"
    if b == 0xc2 or b == 0xc3:
        return "bool"
    if 0xc4 <= b <= 0xc6:
        return "bin"
    if b == 0xca or b == 0xcb:
        return "float"
    return "ext"


cdef int fail(Reader* r, str what, str problem) except -1:
    """Raises ProtocolError naming the frame type (once known), the field and the offset."""
    frame = f"{NAMES[r.frame_type]} frame" if r.frame_type else "frame"
    where = f"{frame} {what}" if what else frame
    raise ProtocolError(f"{where}: {problem} (at byte {r.pos})")


cdef int truncated(Reader* r, str what) except -1:
    return fail(r, what, "truncated")


cdef int wrong_type(Reader* r, str what, str expected) except -1:
    cdef unsigned char b = r.data[r.pos]
    return fail(r, what, f"must be {expected}, got "
                f"{type_name(b, r.data + r.pos + 1, r.end - r.pos - 1)}")


cdef inline int read_uint(Reader* r, uint64_t* out, str what) except -1:
    cdef Py_ssize_t pos = r.pos, size
    cdef const unsigned char* p
    if pos >= r.end:
        return truncated(r, what)
    cdef unsigned char b = r.data[pos]
    if b < 0x80:
        out[0] = b
        r.pos = pos + 1
        return 0
    if b < 0xcc or b > 0xd3:
        return wrong_type(r, what, "an unsigned int")
    # uint8/16/32/64 (0xcc-0xcf) or int8/16/32/64 (0xd0-0xd3) holding a value >= 0
    size = 1 << ((b - 0xcc) & 3)
    if r.end - pos - 1 < size:
        return truncated(r, what)
    p = r.data + pos + 1
    if b >= 0xd0 and p[0] & 0x80:
        return wrong_type(r, what, "an unsigned int")
    if size == 1:
        out[0] = p[0]
    elif size == 2:
        out[0] = load16(p)
    elif size == 4:
        out[0] = load32(p)
    else:
        out[0] = load64(p)
    r.pos = pos + 1 + size
    return 0


@cython.cdivision(True)
cdef inline int read_array(Reader* r, Py_ssize_t* out, str what, Py_ssize_t min_item) except -1:
    """An array header; the count is checked against the bytes left (min_item each)."""
    cdef Py_ssize_t pos = r.pos, n = 0
    if pos >= r.end:
        return truncated(r, what)
    cdef unsigned char b = r.data[pos]
    if 0x90 <= b <= 0x9f:
        n = b & 0x0f
        pos += 1
    elif b == 0xdc:
        if r.end - pos < 3:
            return truncated(r, what)
        n = load16(r.data + pos + 1)
        pos += 3
    elif b == 0xdd:
        if r.end - pos < 5:
            return truncated(r, what)
        n = load32(r.data + pos + 1)
        pos += 5
    else:
        return wrong_type(r, what, "an array")
    if n > (r.end - pos) // min_item:
        return fail(r, what, f"array of {n} elements in {r.end - pos} bytes: truncated")
    r.pos = pos
    out[0] = n
    return 0


cdef inline int read_bin(Reader* r, const unsigned char** out, Py_ssize_t* size, str what) except -1:
    cdef Py_ssize_t pos = r.pos, n = 0
    if pos >= r.end:
        return truncated(r, what)
    cdef unsigned char b = r.data[pos]
    if b == 0xc4:
        if r.end - pos < 2:
            return truncated(r, what)
        n = r.data[pos + 1]
        pos += 2
    elif b == 0xc5:
        if r.end - pos < 3:
            return truncated(r, what)
        n = load16(r.data + pos + 1)
        pos += 3
    elif b == 0xc6:
        if r.end - pos < 5:
            return truncated(r, what)
        n = load32(r.data + pos + 1)
        pos += 5
    else:
        return wrong_type(r, what, "bin")
    if n > r.end - pos:
        return fail(r, what, f"bin of {n} bytes with {r.end - pos} left: truncated")
    out[0] = r.data + pos
    size[0] = n
    r.pos = pos + n
    return 0


cdef object read_str(Reader* r, str what):
    cdef Py_ssize_t pos = r.pos, n = 0
    if pos >= r.end:
        truncated(r, what)
    cdef unsigned char b = r.data[pos]
    if 0xa0 <= b <= 0xbf:
        n = b & 0x1f
        pos += 1
    elif b == 0xd9:
        if r.end - pos < 2:
            truncated(r, what)
        n = r.data[pos + 1]
        pos += 2
    elif b == 0xda:
        if r.end - pos < 3:
            truncated(r, what)
        n = load16(r.data + pos + 1)
        pos += 3
    elif b == 0xdb:
        if r.end - pos < 5:
            truncated(r, what)
        n = load32(r.data + pos + 1)
        pos += 5
    else:
        wrong_type(r, what, "str")
    if n > r.end - pos:
        fail(r, what, f"str of {n} bytes with {r.end - pos} left: truncated")
    try:
        text = PyUnicode_DecodeUTF8(<const char*>r.data + pos, n, NULL)
    except UnicodeDecodeError:
        fail(r, what, "str is not valid UTF-8")
    r.pos = pos + n
    return text


cdef inline int read_bool(Reader* r, bint* out, str what) except -1:
    if r.pos >= r.end:
        return truncated(r, what)
    cdef unsigned char b = r.data[r.pos]
    if b != 0xc2 and b != 0xc3:
        return wrong_type(r, what, "bool")
    out[0] = b == 0xc3
    r.pos += 1
    return 0


cdef tuple decode_data(Reader* r, Py_ssize_t arity, Py_ssize_t max_message_size,
                       Py_ssize_t* budget):
    cdef uint64_t sid, first
    cdef Py_ssize_t n, i, size
    cdef const unsigned char* data
    if arity != 4 and arity != 5:
        fail(r, "", f"{arity} elements, expected 4 or 5")
    read_uint(r, &sid, "session_id")
    read_uint(r, &first, "first_number")
    read_array(r, &n, "payloads", 2)      # a bin is at least 2 bytes
    if n == 0:
        fail(r, "payloads", "a DATA frame carries at least one payload")
    if n > budget[0]:
        fail(r, "payloads", "the packet carries more payloads than max_frames")
    budget[0] -= n
    if <uint64_t>(n - 1) > C_U64_MAX - first:
        fail(r, "first_number", "message numbers exceed 2**64-1")
    cdef list payloads = PyList_New(n)
    for i in range(n):
        read_bin(r, &data, &size, "payload")
        if size > max_message_size:
            fail(r, "payload", f"{size} bytes, over max_message_size {max_message_size}")
        list_steal(payloads, i, raw_new_bytes(<const char*>data, size))
    fragments = None
    if arity == 5:
        fragments = decode_fragments(r, first, n)
    return (T_DATA, sid, first, payloads, fragments)


@cython.cdivision(True)
cdef list decode_fragments(Reader* r, uint64_t first, Py_ssize_t count):
    cdef Py_ssize_t n, i
    cdef uint64_t offset, index, total, previous = 0
    read_array(r, &n, "fragments", 1)
    if n == 0 or n % 3:
        fail(r, "fragments", "must be a non-empty flat list of (offset, index, total) triples")
    if n // 3 > count:     # offsets are distinct payload positions
        fail(r, "fragments", f"{n // 3} fragments for {count} payloads")
    cdef list fragments = PyList_New(n // 3)
    for i in range(n // 3):
        read_uint(r, &offset, "fragment offset")
        read_uint(r, &index, "fragment index")
        read_uint(r, &total, "fragment total")
        problem = fragment_problem(offset, index, total, previous, i > 0, first, count)
        if problem is not None:
            fail(r, f"fragment {i}", problem)
        previous = offset
        triple = PyTuple_New(3)
        tuple_steal(triple, 0, raw_new_uint(offset))
        tuple_steal(triple, 1, raw_new_uint(index))
        tuple_steal(triple, 2, raw_new_uint(total))
        Py_INCREF(triple)          # list_steal takes the reference `triple` holds
        list_steal(fragments, i, <PyObject*>triple)
    return fragments


@cython.cdivision(True)
cdef tuple decode_ack(Reader* r, Py_ssize_t arity):
    cdef uint64_t sid, lo, hi, previous_hi = 0, remaining
    cdef Py_ssize_t n, i
    cdef bint final = False
    if arity != 5:
        fail(r, "", f"{arity} elements, expected 5")
    read_uint(r, &sid, "session_id")
    read_array(r, &n, "ranges", 1)
    if n % 2:
        fail(r, "ranges", "must be a flat list of (lo, hi) pairs")
    cdef list ranges = PyList_New(n // 2)
    for i in range(n // 2):
        read_uint(r, &lo, "range lo")
        read_uint(r, &hi, "range hi")
        if lo > hi:
            fail(r, f"range {i}", f"lo {lo} > hi {hi}")
        if i and lo <= previous_hi:
            fail(r, f"range {i}", "ranges must be ascending and disjoint")
        previous_hi = hi
        pair = PyTuple_New(2)
        tuple_steal(pair, 0, raw_new_uint(lo))
        tuple_steal(pair, 1, raw_new_uint(hi))
        Py_INCREF(pair)
        list_steal(ranges, i, <PyObject*>pair)
    read_uint(r, &remaining, "buffer_remaining")
    read_bool(r, &final, "final")
    return (T_ACK, sid, ranges, remaining, final)


cdef tuple decode_simple(Reader* r, Py_ssize_t arity):
    cdef int t = r.frame_type
    cdef Py_ssize_t i, size
    cdef uint64_t number
    cdef const unsigned char* data
    cdef bint flag = False
    cdef tuple names = FIELD_NAMES[t]
    if not SIMPLE_MIN_ARITY[t] <= arity <= SIMPLE_ARITY[t]:
        fail(r, "", f"{arity} elements, expected {arity_text(t)}")
    cdef tuple out = PyTuple_New(arity)
    Py_INCREF(FRAME_TYPES[t])
    tuple_steal(out, 0, <PyObject*>FRAME_TYPES[t])
    for i in range(1, arity):
        kind = SIMPLE_KINDS[t][i]
        if kind == K_UINT:
            read_uint(r, &number, <str>names[i])
            tuple_steal(out, i, raw_new_uint(number))
            continue
        if kind == K_TOKEN:
            read_bin(r, &data, &size, <str>names[i])
            if size != C_TOKEN_SIZE:
                fail(r, <str>names[i], f"must be {C_TOKEN_SIZE} bytes, got {size}")
            value = PyBytes_FromStringAndSize(<char*>data, size)
        elif kind == K_ADDRESS_TOKEN:
            read_bin(r, &data, &size, <str>names[i])
            if size < 1 or size > C_ADDRESS_TOKEN_MAX:
                fail(r, <str>names[i], f"must be 1..{C_ADDRESS_TOKEN_MAX} bytes, got {size}")
            value = PyBytes_FromStringAndSize(<char*>data, size)
        elif kind == K_STR:
            value = read_str(r, <str>names[i])
        else:
            read_bool(r, &flag, <str>names[i])
            value = flag
        Py_INCREF(value)
        tuple_steal(out, i, <PyObject*>value)
    return out


cdef list decode_body(const unsigned char* data, Py_ssize_t size,
                      Py_ssize_t max_message_size, Py_ssize_t max_frames):
    cdef Reader r
    cdef Py_ssize_t arity, nframes = 0, budget = max_frames
    cdef uint64_t frame_type
    r.data = data
    r.pos = 0
    r.end = size
    r.frame_type = 0
    if size == 0:
        raise ProtocolError("empty packet: a packet carries at least one frame")
    cdef list frames = []
    while r.pos < r.end:
        if nframes == max_frames:
            raise ProtocolError(f"packet carries more than max_frames={max_frames} frames")
        nframes += 1
        r.frame_type = 0
        read_array(&r, &arity, "", 1)
        if arity == 0:
            fail(&r, "", "an empty array")
        read_uint(&r, &frame_type, "type")
        if frame_type < 1 or frame_type > T_LAST or frame_type == T_RETIRED:
            fail(&r, "", f"unknown frame type {frame_type}")
        r.frame_type = <int>frame_type
        if frame_type == T_DATA:
            frames.append(decode_data(&r, arity, max_message_size, &budget))
        elif frame_type == T_ACK:
            frames.append(decode_ack(&r, arity))
        else:
            frames.append(decode_simple(&r, arity))
    return frames


cdef int get_view(object obj, Py_buffer* view, str what) except -1:
    """A C-contiguous read-only view of any bytes-like object (TypeError otherwise)."""
    PyObject_GetBuffer(obj, view, PyBUF_FULL_RO)
    if not PyBuffer_IsContiguous(view, b'C'):
        PyBuffer_Release(view)
        raise TypeError(f"{what} must be a contiguous bytes-like object")
    return 0


def decode_packet(body, max_message_size=65536, max_frames=4096):
    """Every frame of a packet body, as tuples (DATA: payloads list and fragments list or
    None; ACK: ranges as (lo, hi) tuples). Anything malformed, truncated, oversized (a
    payload over max_message_size; more than max_frames frames, or more payloads in total),
    wrong-typed, of an unknown frame type, or followed by trailing bytes raises ProtocolError."""
    cdef Py_buffer view
    cdef Py_ssize_t message_limit, frame_limit
    if PyBytes_CheckExact(body):
        message_limit = as_limit(max_message_size, "max_message_size", 0, C_MAX_BIN)
        frame_limit = as_limit(max_frames, "max_frames", 1, C_MAX_BIN)
        return decode_body(<const unsigned char*>PyBytes_AS_STRING(body), len(<bytes>body),
                           message_limit, frame_limit)
    get_view(body, &view, "body")     # held until the end: a bytearray cannot resize under us
    try:
        message_limit = as_limit(max_message_size, "max_message_size", 0, C_MAX_BIN)
        frame_limit = as_limit(max_frames, "max_frames", 1, C_MAX_BIN)
        return decode_body(<const unsigned char*>view.buf, view.len, message_limit, frame_limit)
    finally:
        PyBuffer_Release(&view)


def decode_packets(bodies, max_message_size=65536, max_frames=4096):
    """decode_packet for each body of a list or tuple, in one call: a list with, for each
    body, its frames or the ProtocolError that body raised (a bad packet spoils no other).
    A body that is not bytes-like raises TypeError for the whole call."""
    cdef Py_ssize_t i, n, message_limit, frame_limit
    cdef Py_buffer view
    check_sequence(bodies, "bodies")
    message_limit = as_limit(max_message_size, "max_message_size", 0, C_MAX_BIN)
    frame_limit = as_limit(max_frames, "max_frames", 1, C_MAX_BIN)
    n = Py_SIZE(bodies)
    out = []
    for i in range(n):
        body = bodies[i]
        try:
            if PyBytes_CheckExact(body):
                out.append(decode_body(<const unsigned char*>PyBytes_AS_STRING(body),
                                       len(<bytes>body), message_limit, frame_limit))
                continue
            get_view(body, &view, f"bodies[{i}]")
            try:
                out.append(decode_body(<const unsigned char*>view.buf, view.len,
                                       message_limit, frame_limit))
            finally:
                PyBuffer_Release(&view)
        except ProtocolError as exc:
            out.append(exc)
    return out


def data_runs(packets, session_id):
    """The receive fast path of a batch of decoded packets (lists of frames) that carry
    nothing but DATA without fragments, AckRequested and ACK (an ACK only in a packet that
    also carries DATA: over TCP an ack rides in the last data packet), all naming
    session_id: (steps, data_packets, ack_requested). steps are, in arrival order,
    (first_number, payloads) with the payloads of DATA frames that continue one another
    joined, and each ACK frame as decoded (a 5-tuple), which also ends the run before it;
    data_packets is how many packets carry DATA. None when any frame is something else
    (the caller then takes the packets frame by frame)."""
    cdef Py_ssize_t i, j, n, m, data_packets = 0
    cdef bint ack_requested = False, has_data, has_ack
    cdef list run = None
    cdef object run_next = None, first, payloads, frame, frames, kind
    check_sequence(packets, "packets")
    steps = []
    n = Py_SIZE(packets)
    for i in range(n):
        frames = packets[i]
        check_sequence(frames, f"packets[{i}]")
        has_data = False
        has_ack = False
        m = Py_SIZE(frames)
        for j in range(m):
            frame = frames[j]
            if not PyTuple_Check(frame) or Py_SIZE(frame) < 2:
                raise TypeError(f"packets[{i}][{j}] must be a decoded frame tuple")
            if frame[1] != session_id:
                return None
            kind = frame[0]
            if kind == T_DATA:
                if Py_SIZE(frame) != 5 or frame[4] is not None:
                    return None
                first = frame[2]
                payloads = frame[3]
                if run is not None and first == run_next:
                    run.extend(payloads)
                else:
                    run = list(payloads)
                    steps.append((first, run))
                run_next = first + len(payloads)
                has_data = True
            elif kind == T_ACK_REQUESTED:
                ack_requested = True
            elif kind == T_ACK:
                if Py_SIZE(frame) != 5:
                    return None
                steps.append(frame)
                run = None
                has_ack = True
            else:
                return None
        if has_data:
            data_packets += 1
        elif has_ack:
            return None
    return steps, data_packets, ack_requested


def session_groups(decoded, bodies, full_size):
    """A batch of packets split by the session they name, for routing a run at a time:
    `decoded` is what decode_packets gave for `bodies`. Returns, in order, tuples
    (session_id, packets, sizes, full): consecutive packets (their frame lists) whose
    first frames name session_id, their lengths in bytes, and how many of those are at
    least full_size. A packet that did not decode is a group of its own, (None, [the
    error], [length], 0), and does not end the group around it (it names no session);
    each packet opening with Resume (type 13), checked on its own, is a group of its own."""
    cdef Py_ssize_t i, n, full = 0, size, limit
    cdef object sid = None, frames, first
    cdef bint alone
    cdef list packets = None, sizes = None
    check_sequence(decoded, "decoded")
    check_sequence(bodies, "bodies")
    n = Py_SIZE(decoded)
    if Py_SIZE(bodies) != n:
        raise ValueError(f"decoded has {n} packets but bodies has {Py_SIZE(bodies)}")
    limit = as_limit(full_size, "full_size", 0, PY_SSIZE_T_MAX)
    groups = []
    for i in range(n):
        frames = decoded[i]
        size = len(bodies[i])
        if not (PyList_CheckExact(frames) and Py_SIZE(frames) > 0):
            groups.append((None, [frames], [size], 0))
            continue
        first = (<list>frames)[0]
        if not PyTuple_Check(first) or Py_SIZE(first) < 2:
            raise TypeError(f"decoded[{i}][0] must be a decoded frame tuple")
        alone = first[0] == T_RESUME
        if packets is not None and not alone and first[1] == sid:
            packets.append(frames)
            sizes.append(size)
            full += size >= limit
            continue
        if packets is not None:
            groups.append((sid, packets, sizes, full))
            packets = None
        if alone:
            groups.append((first[1], [frames], [size], 1 if size >= limit else 0))
        else:
            sid, packets, sizes, full = first[1], [frames], [size], (1 if size >= limit else 0)
    if packets is not None:
        groups.append((sid, packets, sizes, full))
    return groups


# ================================================================ packets for datagrams

cdef bytes _joined(PyObject** items, Py_ssize_t start, Py_ssize_t end, Py_ssize_t total):
    """items[start:end] (bytes of `total` bytes in all) copied into one new bytes."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(out)
    cdef Py_ssize_t j, size
    for j in range(start, end):
        size = raw_bytes_size(items[j])
        memcpy(p, raw_bytes_data(items[j]), size)
        p += size
    return out


def pack_frames(frames, max_packet_size):
    """Encoded frames (bytes) joined greedily, in order, into packet bodies of at most
    max_packet_size bytes; a frame larger than that alone is a packet of its own."""
    cdef Py_ssize_t i, n, limit, size, fsize, start
    cdef PyObject** items
    check_sequence(frames, "frames")
    limit = as_limit(max_packet_size, "max_packet_size", 1, PY_SSIZE_T_MAX)
    n = Py_SIZE(frames)
    items = PySequence_Fast_ITEMS(frames)
    for i in range(n):
        if not raw_is_bytes(items[i]):
            raise TypeError(f"frames[{i}] must be bytes, not {type(<object>items[i]).__name__}")
    packets = []
    start = 0
    while start < n:
        size = raw_bytes_size(items[start])
        i = start + 1
        while i < n:
            fsize = raw_bytes_size(items[i])
            if size + fsize > limit:
                break
            size += fsize
            i += 1
        packets.append(<object>items[start] if i == start + 1 else _joined(items, start, i, size))
        start = i
    return packets


def segment_runs(packets, max_segments, max_bytes):
    """Packets (bytes) grouped for UDP segmentation offload, in order: a list of
    (buffer, segment_size, count) where buffer joins count consecutive packets that all
    have segment_size bytes except the last, which may be shorter. A run holds at most
    max_segments packets and max_bytes bytes (a packet larger than max_bytes is a run of
    its own); a run of one packet is that packet itself."""
    cdef Py_ssize_t i, n, segments, limit, seg, size, total, start
    cdef PyObject** items
    check_sequence(packets, "packets")
    segments = as_limit(max_segments, "max_segments", 1, PY_SSIZE_T_MAX)
    limit = as_limit(max_bytes, "max_bytes", 1, PY_SSIZE_T_MAX)
    n = Py_SIZE(packets)
    items = PySequence_Fast_ITEMS(packets)
    for i in range(n):
        if not raw_is_bytes(items[i]):
            raise TypeError(f"packets[{i}] must be bytes, not {type(<object>items[i]).__name__}")
        if raw_bytes_size(items[i]) == 0:
            raise ValueError(f"packets[{i}] is empty")
    runs = []
    start = 0
    while start < n:
        seg = raw_bytes_size(items[start])
        total = seg
        i = start + 1
        while i < n and i - start < segments:
            size = raw_bytes_size(items[i])
            if size > seg or total + size > limit:
                break
            total += size
            i += 1
            if size < seg:
                break
        runs.append((<object>items[start] if i == start + 1 else _joined(items, start, i, total), seg, i - start))
        start = i
    return runs


# ================================================================ TCP framing

def frame_packet(body):
    """A packet for a TCP stream: 4-byte big-endian body length, then the body."""
    cdef Py_buffer view
    cdef unsigned char* p
    get_view(body, &view, "body")
    try:
        if view.len == 0:
            raise ValueError("body is empty: a packet carries at least one frame")
        if view.len > C_MAX_BIN:
            raise ValueError(f"body of {view.len} bytes does not fit a 4-byte length")
        out = PyBytes_FromStringAndSize(NULL, C_PREFIX + view.len)
        p = <unsigned char*>PyBytes_AS_STRING(out)
        store32(p, <unsigned int>view.len)
        memcpy(p + C_PREFIX, view.buf, view.len)
        return out
    finally:
        PyBuffer_Release(&view)


@cython.final
cdef class PacketReader:
    """Cuts a TCP byte stream into packet bodies. A length prefix of 0 or over
    max_packet_size raises ProtocolError as soon as its 4 bytes arrive, before any of the
    body is buffered; after that the stream is out of step, so every later feed raises too.
    Whole packets inside one chunk are cut straight from it; only a packet split across
    chunks is buffered, in memory that grows with what has arrived, not with its length."""

    def __cinit__(self, max_packet_size):
        self.max_packet_size = as_limit(max_packet_size, "max_packet_size", 1, C_MAX_BIN)
        self._buffer = NULL
        self._held = 0
        self._capacity = 0
        self._length = -1
        self._failure = None

    def __dealloc__(self):
        self._release()

    @property
    def pending(self):
        """Bytes received that do not yet make a whole packet."""
        return self._held

    cdef void _release(self) noexcept:
        PyMem_Free(self._buffer)
        self._buffer = NULL
        self._held = 0
        self._capacity = 0
        self._length = -1

    cdef int _fail(self, str reason) except -1:
        self._failure = reason
        self._release()
        raise ProtocolError(reason)

    cdef int _check_length(self, Py_ssize_t length) except -1:
        if length == 0 or length > self.max_packet_size:
            return self._fail(f"packet length {length} is not in 1..{self.max_packet_size}")
        return 0

    cdef int _hold(self, const unsigned char* data, Py_ssize_t n) except -1:
        """Appends to the partial packet; capacity doubles, up to what it can need."""
        cdef Py_ssize_t need = self._held + n, capacity
        cdef unsigned char* grown
        if need > self._capacity:
            capacity = max(need, 2 * self._capacity, 64)
            capacity = min(capacity, C_PREFIX + self.max_packet_size)
            grown = <unsigned char*>PyMem_Realloc(self._buffer, capacity)
            if grown == NULL:
                raise MemoryError()
            self._buffer = grown
            self._capacity = capacity
        memcpy(self._buffer + self._held, data, n)
        self._held = need
        return 0

    def feed(self, data):
        """The packet bodies completed by `data`, in stream order."""
        cdef Py_buffer view
        cdef const unsigned char* p
        cdef Py_ssize_t n, i = 0, take, length
        if self._failure is not None:
            raise ProtocolError(f"stream already failed: {self._failure}")
        get_view(data, &view, "data")
        packets = []
        try:
            p = <const unsigned char*>view.buf
            n = view.len
            if self._held:
                # Finish the packet begun in an earlier chunk.
                if self._held < C_PREFIX:
                    take = min(C_PREFIX - self._held, n)
                    self._hold(p, take)
                    i = take
                    if self._held < C_PREFIX:
                        return packets
                    length = load32(self._buffer)
                    self._check_length(length)
                    self._length = length
                take = min(C_PREFIX + self._length - self._held, n - i)
                self._hold(p + i, take)
                i += take
                if self._held < C_PREFIX + self._length:
                    return packets
                packets.append(PyBytes_FromStringAndSize(
                    <char*>self._buffer + C_PREFIX, self._length))
                if self._capacity > 65536 + C_PREFIX:
                    self._release()        # do not keep a large packet's memory
                self._held = 0
                self._length = -1
            # Whole packets straight from this chunk.
            while n - i >= C_PREFIX:
                length = load32(p + i)
                self._check_length(length)
                if n - i - C_PREFIX < length:
                    self._length = length
                    break
                packets.append(PyBytes_FromStringAndSize(<char*>p + i + C_PREFIX, length))
                i += C_PREFIX + length
            if i < n:
                self._hold(p + i, n - i)
            return packets
        finally:
            PyBuffer_Release(&view)
