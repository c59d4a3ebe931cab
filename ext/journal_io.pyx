# cython: language_level=3, boundscheck=False, wraparound=False
"""The journal's batch write: records framed with the segment format v2 record header
(`u32 length | u32 crc32(payload, key) | u32 crc32(previous 8 bytes, key)`, key =
salt ^ CRC_SEED, little-endian; see src/tether/queue/store/segment.py), written with
writev and fdatasync'ed in one call, with the GIL released for the CRCs, the write and
the sync (contract: ext/README.md "journal_io").

The pure-Python twin is tether._reference.journal_io; both produce identical bytes and
raise the same errors with the same messages.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.errno cimport EINTR, errno
from libc.stdint cimport uint32_t
from libc.string cimport memcpy, strerror

__all__ = ["frame_records", "framed_size", "write_records", "CRC_SEED", "MAX_RECORD_SIZE",
           "RECORD_HEADER_SIZE", "fail_next"]

CRC_SEED = 0x5EED_1E55
MAX_RECORD_SIZE = 0x7FFF_FFFF
RECORD_HEADER_SIZE = 12


cdef extern from "zlib.h" nogil:
    unsigned long crc32(unsigned long crc, const unsigned char *buf, unsigned int length)

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t writev(int fd, const iovec *iov, int iovcnt)

cdef extern from "<unistd.h>" nogil:
    int fdatasync(int fd)

cdef enum:
    HEAD = 12             # bytes of a record header
    IOV_BATCH = 512       # iovecs per writev call (IOV_MAX is 1024 on Linux)
    STEP_NONE = 0
    STEP_WRITE = 1
    STEP_SYNC = 2


# ---- test failpoints: the next `times` writes or syncs fail with an errno, as a full or
# failing disk would make them (both twins have them; the library never sets them) ----

cdef int _fail_write_errno = 0
cdef int _fail_write_times = 0
cdef int _fail_sync_errno = 0
cdef int _fail_sync_times = 0


def fail_next(step: str, int err, int times=1) -> None:
    """Tests only: the next `times` calls of `step` ("write" or "sync") made by
    write_records fail with errno `err` (times 0 clears it)."""
    global _fail_write_errno, _fail_write_times, _fail_sync_errno, _fail_sync_times
    if step == "write":
        _fail_write_errno, _fail_write_times = err, times
    elif step == "sync":
        _fail_sync_errno, _fail_sync_times = err, times
    else:
        raise ValueError(f"step must be 'write' or 'sync', got {step!r}")


# ---- argument checks (the messages match the reference twin's) ----

cdef uint32_t _key(object salt) except? 0:
    if isinstance(salt, bool) or not isinstance(salt, int):
        raise TypeError(f"salt must be an int, got {type(salt).__name__}")
    if salt < 0 or salt > 0xFFFF_FFFF:
        raise ValueError(f"salt must be in 0..2**32-1, got {salt}")
    return <uint32_t>(<unsigned long long>salt) ^ <uint32_t>CRC_SEED


cdef tuple _records(object records):
    """`records` as a tuple of bytes objects (held while the GIL is released), checked."""
    if not isinstance(records, (list, tuple)):
        raise TypeError(f"records must be a list of bytes, got {type(records).__name__}")
    cdef tuple items = tuple(records)
    cdef Py_ssize_t i
    cdef object item
    for i in range(PyTuple_GET_SIZE(items)):
        item = <object>PyTuple_GET_ITEM(items, i)
        if type(item) is not bytes:
            raise TypeError(f"records[{i}] must be bytes, got {type(item).__name__}")
        if PyBytes_GET_SIZE(item) > MAX_RECORD_SIZE:
            raise ValueError(f"records[{i}] is {PyBytes_GET_SIZE(item)} bytes; the limit is {MAX_RECORD_SIZE}")
    return items


cdef inline void _put32(unsigned char *p, uint32_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF
    p[2] = (v >> 16) & 0xFF
    p[3] = (v >> 24) & 0xFF


cdef inline void _header(unsigned char *head, const unsigned char *payload, uint32_t length,
                         uint32_t key) noexcept nogil:
    _put32(head, length)
    _put32(head + 4, <uint32_t>crc32(key, payload, length))
    _put32(head + 8, <uint32_t>crc32(key, head, 8))


def framed_size(records) -> int:
    """Bytes `records` take framed: their lengths plus a 12-byte header each."""
    cdef tuple items = _records(records)
    cdef Py_ssize_t i, total = 0
    for i in range(PyTuple_GET_SIZE(items)):
        total += PyBytes_GET_SIZE(<object>PyTuple_GET_ITEM(items, i)) + HEAD
    return total


def frame_records(records, salt) -> bytes:
    """The on-disk bytes of `records` (a list of bytes), framed for a segment with `salt`,
    in order: identical to segment.encode_records."""
    cdef uint32_t key = _key(salt)
    cdef tuple items = _records(records)
    cdef Py_ssize_t i, n = PyTuple_GET_SIZE(items), total = 0, length
    for i in range(n):
        total += PyBytes_GET_SIZE(<object>PyTuple_GET_ITEM(items, i)) + HEAD
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)
    cdef const unsigned char *payload
    for i in range(n):
        item = <object>PyTuple_GET_ITEM(items, i)
        payload = <const unsigned char *>PyBytes_AS_STRING(item)
        length = PyBytes_GET_SIZE(item)
        _header(p, payload, <uint32_t>length, key)
        memcpy(p + HEAD, payload, length)
        p += HEAD + length
    return out


cdef int _write_all(int fd, iovec *iov, int count) noexcept nogil:
    """writev every byte the `count` iovecs hold (a short write goes on where it stopped);
    0, or the errno of the call that failed. May change `iov`."""
    cdef int first = 0, batch
    cdef ssize_t written
    while first < count:
        batch = count - first
        if batch > IOV_BATCH:
            batch = IOV_BATCH
        written = writev(fd, iov + first, batch)
        if written < 0:
            if errno == EINTR:
                continue
            return errno
        while first < count and <size_t>written >= iov[first].iov_len:
            written -= iov[first].iov_len
            first += 1
        if first < count and written > 0:
            iov[first].iov_base = <char *>iov[first].iov_base + written
            iov[first].iov_len -= written
        while first < count and iov[first].iov_len == 0:
            first += 1
    return 0


def write_records(fd, records, salt, bint sync) -> int:
    """Frame `records` for `salt`, write them at `fd`'s position (writev; a short write goes
    on where it stopped), then fdatasync(fd) if `sync`. The GIL is released for the CRCs,
    the write and the sync. Returns the bytes written (framed_size(records)).

    A failed write or sync raises OSError (errno, strerror) whose `journal_step` is "write"
    or "sync"; how much of a failed write reached the file is unknown."""
    cdef uint32_t key = _key(salt)
    cdef tuple items = _records(records)
    cdef Py_ssize_t i, n = PyTuple_GET_SIZE(items), total = 0
    if isinstance(fd, bool) or not isinstance(fd, int):
        raise TypeError(f"fd must be an int, got {type(fd).__name__}")
    if fd < 0 or fd > 0x7FFF_FFFF:
        raise ValueError(f"fd must be in 0..2**31-1, got {fd}")
    cdef int cfd = fd
    cdef unsigned char *heads = NULL
    cdef iovec *iov = NULL
    cdef int err = 0, step = STEP_NONE, rc
    global _fail_write_times, _fail_sync_times
    if n:
        heads = <unsigned char *>PyMem_Malloc(n * HEAD)
        iov = <iovec *>PyMem_Malloc(2 * n * sizeof(iovec))
        if heads == NULL or iov == NULL:
            PyMem_Free(heads)
            PyMem_Free(iov)
            raise MemoryError()
    try:
        for i in range(n):
            item = <object>PyTuple_GET_ITEM(items, i)
            iov[2 * i].iov_base = heads + i * HEAD
            iov[2 * i].iov_len = HEAD
            iov[2 * i + 1].iov_base = PyBytes_AS_STRING(item)
            iov[2 * i + 1].iov_len = PyBytes_GET_SIZE(item)
            total += HEAD + PyBytes_GET_SIZE(item)
        # `items` holds every payload until we return, and bytes never change
        with nogil:
            for i in range(n):
                _header(heads + i * HEAD, <const unsigned char *>iov[2 * i + 1].iov_base,
                        <uint32_t>iov[2 * i + 1].iov_len, key)
            if _fail_write_times > 0:
                _fail_write_times -= 1
                err, step = _fail_write_errno, STEP_WRITE
            elif n:
                err = _write_all(cfd, iov, <int>(2 * n))
                if err:
                    step = STEP_WRITE
            if not err and sync:
                if _fail_sync_times > 0:
                    _fail_sync_times -= 1
                    err, step = _fail_sync_errno, STEP_SYNC
                else:
                    while True:
                        rc = fdatasync(cfd)
                        if rc == 0 or errno != EINTR:
                            break
                    if rc != 0:
                        err, step = errno, STEP_SYNC
    finally:
        PyMem_Free(heads)
        PyMem_Free(iov)
    if err:
        exc = OSError(err, strerror(err).decode("utf-8", "replace"))
        exc.journal_step = "write" if step == STEP_WRITE else "sync"
        raise exc
    return total
