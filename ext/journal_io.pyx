# cython: language_level=3, boundscheck=False, wraparound=False
"""The journal's batch write: records framed with the segment format record header
(`u32 length | u32 crc32(payload, key) | u32 crc32(previous 8 bytes, key)`, key =
salt ^ CRC_SEED, little-endian; see src/tether/queue/store/segment.py), after a sync mark
if asked (a record header alone with length SYNC_LENGTH), written with writev at the fd's
position and fdatasync'ed in one call, with the GIL released for the CRCs, the write and
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

__all__ = ["BatchWriter", "frame_records", "framed_size", "write_records", "CRC_SEED", "MAX_RECORD_SIZE",
           "RECORD_HEADER_SIZE", "SYNC_LENGTH", "fail_next"]

CRC_SEED = 0x5EED_1E55
MAX_RECORD_SIZE = 0x7FFF_FFFF
RECORD_HEADER_SIZE = 12
SYNC_LENGTH = 0xFFFF_FFFE
# the same limit as a C constant: the per-record check compares C integers (comparing with
# the module's Python int cost ~0.1 us per record, most of submit() for large batches)
cdef Py_ssize_t _MAX_RECORD = 0x7FFF_FFFF


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
        if PyBytes_GET_SIZE(item) > _MAX_RECORD:
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


cdef inline void _sync_mark(unsigned char *head, uint32_t key) noexcept nogil:
    # a header alone: length SYNC_LENGTH, the CRC of an empty payload (the key itself)
    _put32(head, 0xFFFFFFFE)
    _put32(head + 4, key)
    _put32(head + 8, <uint32_t>crc32(key, head, 8))


def framed_size(records) -> int:
    """Bytes `records` take framed: their lengths plus a 12-byte header each."""
    cdef tuple items = _records(records)
    cdef Py_ssize_t i, total = 0
    for i in range(PyTuple_GET_SIZE(items)):
        total += PyBytes_GET_SIZE(<object>PyTuple_GET_ITEM(items, i)) + HEAD
    return total


def frame_records(records, salt, bint mark=False) -> bytes:
    """The on-disk bytes of `records` (a list of bytes), framed for a segment with `salt`,
    in order, after a sync mark if `mark`: identical to segment.encode_records (with
    segment.sync_mark before)."""
    cdef uint32_t key = _key(salt)
    cdef tuple items = _records(records)
    cdef Py_ssize_t i, n = PyTuple_GET_SIZE(items), total = HEAD if mark else 0, length
    for i in range(n):
        total += PyBytes_GET_SIZE(<object>PyTuple_GET_ITEM(items, i)) + HEAD
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)
    cdef const unsigned char *payload
    if mark:
        _sync_mark(p, key)
        p += HEAD
    for i in range(n):
        item = <object>PyTuple_GET_ITEM(items, i)
        payload = <const unsigned char *>PyBytes_AS_STRING(item)
        length = PyBytes_GET_SIZE(item)
        _header(p, payload, <uint32_t>length, key)
        memcpy(p + HEAD, payload, length)
        p += HEAD + length
    return out


cdef int _write_all(int fd, iovec *iov, int count, int lead) noexcept nogil:
    """writev every byte the `count` iovecs hold (a short write goes on where it stopped);
    0, or the errno of the call that failed. May change `iov`. `lead` iovecs (the sync
    mark) come before the records' pairs (header, payload).

    Each call but the last ends after a payload, never between a record's header and its
    payload: between two calls, writeback may put the page of the first call's end on the
    disk with zeros after it, and a crash then must leave whole records before those zeros
    (what recovery's torn-write rule expects of the sector where the zeros start)."""
    cdef int first = 0, batch
    cdef ssize_t written
    while first < count:
        batch = count - first
        if batch > IOV_BATCH:
            batch = IOV_BATCH
            if (first + batch - lead) & 1:
                batch -= 1
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


def write_records(fd, records, salt, bint sync, bint mark=False) -> int:
    """Frame `records` for `salt` (after a sync mark if `mark`), write them at `fd`'s
    position (writev; a short write goes on where it stopped), then fdatasync(fd) if `sync`.
    The GIL is released for the CRCs, the write and the sync. Returns the bytes written
    (framed_size(records), plus 12 for the mark).

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
    cdef int m = 1 if mark else 0       # iovecs before the records': the mark's
    cdef iovec *rec
    global _fail_write_times, _fail_sync_times
    if n or m:
        heads = <unsigned char *>PyMem_Malloc((n + m) * HEAD)
        iov = <iovec *>PyMem_Malloc((2 * n + m) * sizeof(iovec))
        if heads == NULL or iov == NULL:
            PyMem_Free(heads)
            PyMem_Free(iov)
            raise MemoryError()
    rec = iov + m
    try:
        if m:
            iov[0].iov_base = heads + n * HEAD
            iov[0].iov_len = HEAD
            total = HEAD
        for i in range(n):
            item = <object>PyTuple_GET_ITEM(items, i)
            rec[2 * i].iov_base = heads + i * HEAD
            rec[2 * i].iov_len = HEAD
            rec[2 * i + 1].iov_base = PyBytes_AS_STRING(item)
            rec[2 * i + 1].iov_len = PyBytes_GET_SIZE(item)
            total += HEAD + PyBytes_GET_SIZE(item)
        # `items` holds every payload until we return, and bytes never change
        with nogil:
            if m:
                _sync_mark(heads + n * HEAD, key)
            for i in range(n):
                _header(heads + i * HEAD, <const unsigned char *>rec[2 * i + 1].iov_base,
                        <uint32_t>rec[2 * i + 1].iov_len, key)
            if _fail_write_times > 0:
                _fail_write_times -= 1
                err, step = _fail_write_errno, STEP_WRITE
            elif n or m:
                err = _write_all(cfd, iov, <int>(2 * n + m), m)
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


# ---- BatchWriter: write_records on a thread of its own that never takes the GIL ----

from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    int pthread_create(pthread_t *thread, void *attr, void *(*start)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t thread, void **result)
    int pthread_mutex_init(pthread_mutex_t *mutex, void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *mutex)
    int pthread_mutex_lock(pthread_mutex_t *mutex)
    int pthread_mutex_unlock(pthread_mutex_t *mutex)
    int pthread_cond_init(pthread_cond_t *cond, void *attr)
    int pthread_cond_destroy(pthread_cond_t *cond)
    int pthread_cond_wait(pthread_cond_t *cond, pthread_mutex_t *mutex)
    int pthread_cond_signal(pthread_cond_t *cond)

cdef extern from "<sched.h>" nogil:
    struct sched_param:
        int sched_priority
    int sched_setscheduler(int pid, int policy, const sched_param *param)
    int SCHED_BATCH

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    int EFD_CLOEXEC
    int EFD_NONBLOCK

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec *ts)
    int CLOCK_MONOTONIC

cdef extern from "<unistd.h>" nogil:
    ssize_t c_write "write"(int fd, const void *buf, size_t count)
    ssize_t c_read "read"(int fd, void *buf, size_t count)
    int c_close "close"(int fd)

from libc.stdlib cimport calloc, free
from libc.stdint cimport uint64_t

cdef enum:
    STEP_SKIPPED = 3

ctypedef struct Job:
    long long token
    int fd
    int sync
    int mark                 # 1: iov[0] is a sync mark (its header at heads + count * HEAD)
    Py_ssize_t count
    iovec *iov
    unsigned char *heads
    uint32_t key
    PyObject *keep           # the records' tuple: its payloads live until the job is collected
    Py_ssize_t total
    int err
    int step
    double seconds           # how long the write and sync took
    Job *next

ctypedef struct Shared:
    pthread_mutex_t lock
    pthread_cond_t wake
    Job *pending_head
    Job *pending_tail
    Job *done_head
    Job *done_tail
    int stopping             # close(): end once every pending job ran
    int stopped              # a job failed: later jobs are skipped until resume()
    int idle                 # the writer waits on `wake`: submit() must signal it
    int background           # run the thread under SCHED_BATCH (see BatchWriter)
    int event_fd


cdef void _run_job(Job *job) noexcept nogil:
    cdef Py_ssize_t i
    cdef int rc
    cdef iovec *rec = job.iov + job.mark
    global _fail_write_times, _fail_sync_times
    if job.mark:
        _sync_mark(job.heads + job.count * HEAD, job.key)
    for i in range(job.count):
        _header(job.heads + i * HEAD, <const unsigned char *>rec[2 * i + 1].iov_base,
                <uint32_t>rec[2 * i + 1].iov_len, job.key)
    if _fail_write_times > 0:
        _fail_write_times -= 1
        job.err, job.step = _fail_write_errno, STEP_WRITE
        return
    if job.count or job.mark:
        job.err = _write_all(job.fd, job.iov, <int>(2 * job.count + job.mark), job.mark)
        if job.err:
            job.step = STEP_WRITE
            return
    if job.sync:
        if _fail_sync_times > 0:
            _fail_sync_times -= 1
            job.err, job.step = _fail_sync_errno, STEP_SYNC
            return
        while True:
            rc = fdatasync(job.fd)
            if rc == 0 or errno != EINTR:
                break
        if rc != 0:
            job.err, job.step = errno, STEP_SYNC


cdef void *_writer_main(void *arg) noexcept nogil:
    cdef Shared *s = <Shared *>arg
    cdef Job *job
    cdef int skip, was_empty
    cdef uint64_t one = 1
    cdef timespec t0, t1
    cdef sched_param param
    if s.background:
        # pid 0: this thread. Best effort: if refused, the thread runs as before.
        param.sched_priority = 0
        sched_setscheduler(0, SCHED_BATCH, &param)
    pthread_mutex_lock(&s.lock)
    while True:
        while s.pending_head == NULL and not s.stopping:
            s.idle = 1
            pthread_cond_wait(&s.wake, &s.lock)
        s.idle = 0
        job = s.pending_head
        if job == NULL:
            break
        s.pending_head = job.next
        if s.pending_head == NULL:
            s.pending_tail = NULL
        job.next = NULL
        skip = s.stopped
        pthread_mutex_unlock(&s.lock)
        if skip:
            job.step = STEP_SKIPPED
        else:
            clock_gettime(CLOCK_MONOTONIC, &t0)
            _run_job(job)
            clock_gettime(CLOCK_MONOTONIC, &t1)
            job.seconds = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9
        pthread_mutex_lock(&s.lock)
        if job.step == STEP_WRITE or job.step == STEP_SYNC:
            s.stopped = 1
        was_empty = s.done_head == NULL
        if s.done_tail == NULL:
            s.done_head = job
        else:
            s.done_tail.next = job
        s.done_tail = job
        if was_empty:
            # the syscall outside the lock (the loop may be waiting for it); the loop reads
            # the eventfd before it takes the list, so no finished job goes unsignalled
            pthread_mutex_unlock(&s.lock)
            c_write(s.event_fd, &one, 8)
            pthread_mutex_lock(&s.lock)
    pthread_mutex_unlock(&s.lock)
    return NULL


cdef class BatchWriter:
    """write_records on a thread of its own (a pthread that never takes the GIL): the loop
    submits a batch and goes on; the thread frames, writes and fdatasyncs the batches one
    at a time in submission order, and `event_fd` (an eventfd) becomes readable when jobs
    have finished; `finished()` collects them. After a failed job the writer stops: the
    jobs queued behind it are not run (reported "skipped") until `resume()`.

    `background=True` runs the thread under SCHED_BATCH: waking it (a submit while it
    waits) never preempts the submitting thread, which on a busy machine otherwise loses
    its CPU to the writer at each batch; the writer runs on an idle CPU or at the next
    scheduling tick instead. For batches nobody waits on a sync for (fsync "never")."""

    cdef Shared *_s
    cdef pthread_t _thread
    cdef bint _running
    cdef readonly int event_fd

    def __cinit__(self, background=False):
        if not isinstance(background, bool):
            raise TypeError(f"background must be a bool, got {type(background).__name__}")
        self._s = <Shared *>calloc(1, sizeof(Shared))
        if self._s == NULL:
            raise MemoryError()
        self._s.background = 1 if background else 0
        pthread_mutex_init(&self._s.lock, NULL)
        pthread_cond_init(&self._s.wake, NULL)
        fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
        if fd < 0:
            err = errno
            self._free_shared()
            raise OSError(err, strerror(err).decode("utf-8", "replace"))
        self._s.event_fd = self.event_fd = fd
        if pthread_create(&self._thread, NULL, _writer_main, self._s) != 0:
            c_close(fd)
            self._free_shared()
            raise RuntimeError("could not start the journal writer thread")
        self._running = True

    cdef void _free_shared(self):
        if self._s != NULL:
            pthread_cond_destroy(&self._s.wake)
            pthread_mutex_destroy(&self._s.lock)
            free(self._s)
            self._s = NULL

    def submit(self, token, fd, records, salt, bint sync, bint mark=False) -> int:
        """Queue a job writing `records` framed for `salt` (after a sync mark if `mark`) at
        `fd`, then fdatasync(fd) if `sync`; returns the bytes it writes. `token` (an int)
        names it in finished()."""
        cdef uint32_t key = _key(salt)
        cdef tuple items = _records(records)
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError(f"fd must be an int, got {type(fd).__name__}")
        if fd < 0 or fd > 0x7FFF_FFFF:
            raise ValueError(f"fd must be in 0..2**31-1, got {fd}")
        if not self._running:
            raise ValueError("the writer is closed")
        cdef long long ctoken = token
        cdef Py_ssize_t i, n = PyTuple_GET_SIZE(items)
        cdef Job *job = <Job *>PyMem_Malloc(sizeof(Job))
        if job == NULL:
            raise MemoryError()
        cdef int m = 1 if mark else 0
        job.heads = <unsigned char *>PyMem_Malloc((n + m) * HEAD + 1)
        job.iov = <iovec *>PyMem_Malloc((2 * n + m) * sizeof(iovec) + 1)
        if job.heads == NULL or job.iov == NULL:
            PyMem_Free(job.heads)
            PyMem_Free(job.iov)
            PyMem_Free(job)
            raise MemoryError()
        job.token, job.fd, job.sync, job.mark, job.count, job.key = ctoken, <int>fd, sync, m, n, key
        job.total, job.err, job.step, job.next, job.seconds = 0, 0, STEP_NONE, NULL, 0.0
        cdef iovec *rec = job.iov + m
        if m:
            job.iov[0].iov_base = job.heads + n * HEAD
            job.iov[0].iov_len = HEAD
            job.total = HEAD
        for i in range(n):
            item = <object>PyTuple_GET_ITEM(items, i)
            rec[2 * i].iov_base = job.heads + i * HEAD
            rec[2 * i].iov_len = HEAD
            rec[2 * i + 1].iov_base = PyBytes_AS_STRING(item)
            rec[2 * i + 1].iov_len = PyBytes_GET_SIZE(item)
            job.total += HEAD + PyBytes_GET_SIZE(item)
        Py_INCREF(items)
        job.keep = <PyObject *>items
        cdef Shared *s = self._s
        cdef Py_ssize_t total = job.total
        cdef int wake
        # The GIL stays held: the writer thread holds the lock for a few instructions only
        # and never takes the GIL, so this cannot deadlock, and it saves a GIL handoff.
        pthread_mutex_lock(&s.lock)
        if s.pending_tail == NULL:
            s.pending_head = job
        else:
            s.pending_tail.next = job
        s.pending_tail = job
        # Signal only a writer that waits: a busy one takes the job when its current job is
        # done (it looks at the list under the lock before it waits). (glibc's signal with
        # no waiter makes no syscall either; this states the hand-over rule in our code.
        # What a wake-up costs the loop on a busy machine is the woken writer preempting
        # it: see `background`.)
        wake = s.idle
        s.idle = 0
        pthread_mutex_unlock(&s.lock)
        if wake:
            pthread_cond_signal(&s.wake)        # outside the lock: the thread wakes to a free lock
        return total

    def finished(self) -> list:
        """The jobs finished since the last call, in submission order: (token, bytes, errno,
        step, seconds, message) with step None (written, and synced if asked), "write" or
        "sync" (failed with errno; message: the error's text) or "skipped" (not run: an
        earlier job failed); seconds: how long its write and sync took (0.0 when skipped)."""
        cdef uint64_t count
        cdef Job *job
        cdef Job *nxt
        if self._s == NULL:
            return []
        c_read(self.event_fd, &count, 8)        # reset before collecting (non-blocking)
        pthread_mutex_lock(&self._s.lock)       # held briefly by the writer thread only
        job = self._s.done_head
        self._s.done_head = self._s.done_tail = NULL
        pthread_mutex_unlock(&self._s.lock)
        out = []
        while job != NULL:
            nxt = job.next
            if job.step == STEP_NONE:
                out.append((job.token, job.total, 0, None, job.seconds, None))
            elif job.step == STEP_SKIPPED:
                out.append((job.token, 0, 0, "skipped", 0.0, None))
            else:
                out.append((job.token, 0, job.err, "write" if job.step == STEP_WRITE else "sync", job.seconds,
                            strerror(job.err).decode("utf-8", "replace")))
            _free_job(job)
            job = nxt
        return out

    def resume(self) -> None:
        """After a failed job: run the jobs submitted from now on again."""
        if self._s != NULL:
            pthread_mutex_lock(&self._s.lock)
            self._s.stopped = 0
            pthread_mutex_unlock(&self._s.lock)

    @property
    def stopped(self) -> bool:
        """True after a failed job, until resume()."""
        return self._s != NULL and self._s.stopped != 0

    def close(self) -> None:
        """Run what is queued, end the thread, close event_fd. Unfinished jobs' outcomes
        are dropped (collect them with finished() first). Idempotent."""
        cdef Job *job
        cdef Job *nxt
        if not self._running:
            return
        self._running = False
        with nogil:
            pthread_mutex_lock(&self._s.lock)
            self._s.stopping = 1
            pthread_cond_signal(&self._s.wake)
            pthread_mutex_unlock(&self._s.lock)
            pthread_join(self._thread, NULL)
        job = self._s.done_head
        while job != NULL:
            nxt = job.next
            _free_job(job)
            job = nxt
        c_close(self.event_fd)
        self._free_shared()

    def __dealloc__(self):
        if self._running:
            self.close()


cdef void _free_job(Job *job):
    Py_XDECREF(job.keep)
    PyMem_Free(job.heads)
    PyMem_Free(job.iov)
    PyMem_Free(job)
