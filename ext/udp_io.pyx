# cython: language_level=3, boundscheck=False, wraparound=False
"""Reading and writing a UDP socket in batches: `DatagramReader.read()` takes every datagram waiting
(up to a bound) with recvmmsg, several per system call, and cuts the buffers UDP_GRO
coalesced back into the datagrams sent, in C (contract: ext/README.md "udp_io").

`send_runs()` sends a list of runs of datagrams (each a GSO buffer or one datagram, to
one address each) with sendmmsg: the packets a turn of the event loop made for several
sessions, acknowledgements included, go in one system call.

Like journal_io this module does I/O: the session adapter calls it when the event loop
says the socket is readable, and at the end of such a turn. The pure-Python twin is tether._reference.udp_io (one
recvmsg per datagram); both hand over the same batches from the same traffic.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Malloc
from libc.errno cimport EAGAIN, EBADF, EINTR, errno
from libc.string cimport memcmp, memcpy, memset

__all__ = ["BUFFER_SIZE", "DatagramReader", "send_runs"]

cdef enum:
    # One slot per datagram read: the largest UDP payload, or the largest buffer GRO coalesces.
    SLOT_SIZE = 65536
    ADDRESS_CACHE_MAX = 4096     # distinct source addresses remembered (cleared when full)
    SEND_BATCH = 1024            # messages per sendmmsg (UIO_MAXIOV)

BUFFER_SIZE = SLOT_SIZE

cdef extern from *:
    """
    #include <sys/socket.h>
    #include <sys/uio.h>
    #include <netinet/in.h>
    #include <netdb.h>
    #ifndef SOL_UDP
    #define SOL_UDP 17
    #endif
    #ifndef UDP_GRO
    #define UDP_GRO 104
    #endif
    #include <arpa/inet.h>
    #ifndef UDP_SEGMENT
    #define UDP_SEGMENT 103
    #endif
    #define TETHER_GRO_CMSG_SPACE CMSG_SPACE(sizeof(int))
    #define TETHER_GSO_CMSG_SPACE CMSG_SPACE(sizeof(uint16_t))

    /* A UDP_SEGMENT control message of `segment` bytes into `space`. */
    static void tether_put_segment(struct msghdr *m, char *space, unsigned short segment) {
        struct cmsghdr *c;
        m->msg_control = space;
        m->msg_controllen = TETHER_GSO_CMSG_SPACE;
        c = CMSG_FIRSTHDR(m);
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        memcpy(CMSG_DATA(c), &segment, sizeof segment);
    }

    /* The segment size UDP_GRO reported for this message, or 0. */
    static int tether_gro_segment(struct msghdr *m) {
        struct cmsghdr *c;
        for (c = CMSG_FIRSTHDR(m); c != NULL; c = CMSG_NXTHDR(m, c)) {
            if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO
                    && c->cmsg_len >= CMSG_LEN(sizeof(int))) {
                int v;
                memcpy(&v, CMSG_DATA(c), sizeof v);
                return v;
            }
        }
        return 0;
    }
    """
    ctypedef unsigned int socklen_t
    struct iovec:
        void* iov_base
        size_t iov_len
    struct msghdr:
        void* msg_name
        socklen_t msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    struct sockaddr:
        unsigned short sa_family
    struct sockaddr_storage:
        unsigned short ss_family
    struct in_addr:
        unsigned int s_addr
    struct sockaddr_in:
        unsigned short sin_port
    struct sockaddr_in6:
        unsigned short sin6_port
        unsigned int sin6_flowinfo
        unsigned int sin6_scope_id
    int recvmmsg(int fd, mmsghdr* msgvec, unsigned int vlen, int flags, void* timeout) nogil
    int getnameinfo(const sockaddr* sa, socklen_t salen, char* host, socklen_t hostlen,
                    char* serv, socklen_t servlen, int flags) nogil
    const char* gai_strerror(int errcode)
    int tether_gro_segment(msghdr* m) nogil
    void tether_put_segment(msghdr* m, char* space, unsigned short segment) nogil
    int sendmmsg(int fd, mmsghdr* msgvec, unsigned int vlen, int flags) nogil
    int inet_pton(int af, const char* src, void* dst) nogil
    unsigned short htons(unsigned short v) nogil
    unsigned int htonl(unsigned int v) nogil
    int TETHER_GSO_CMSG_SPACE
    struct sockaddr_in_full "sockaddr_in":
        unsigned short sin_family
        unsigned short sin_port
        in_addr sin_addr
    struct in6_addr:
        pass
    struct sockaddr_in6_full "sockaddr_in6":
        unsigned short sin6_family
        unsigned short sin6_port
        unsigned int sin6_flowinfo
        in6_addr sin6_addr
        unsigned int sin6_scope_id
    int AF_INET, AF_INET6, MSG_DONTWAIT, NI_NUMERICHOST, NI_MAXHOST
    int TETHER_GRO_CMSG_SPACE
    unsigned short ntohs(unsigned short v) nogil
    unsigned int ntohl(unsigned int v) nogil

cdef class DatagramReader:
    """Batches of datagrams from a non-blocking UDP socket `sock` (any object with
    fileno()): `read()` returns, in arrival order, a list of (bodies, address) with the
    datagrams of consecutive reads from one address together. A read is one datagram, or
    with `gro` one buffer the kernel coalesced, cut at the segment size it reports.

    One `read()` makes at most `max_reads` reads and stops early once it has
    `max_datagrams` datagrams: reads go `min(reads left, datagrams left)` per system call,
    so a call that took coalesced buffers may end a little past `max_datagrams` (at most
    one call's buffers). Errors (an ICMP unreachable on a connected socket) count in
    `errors`, each as a read, and reading goes on."""

    cdef object _sock
    cdef readonly bint gro
    cdef readonly Py_ssize_t max_reads
    cdef readonly Py_ssize_t max_datagrams
    cdef readonly Py_ssize_t errors        # reads that failed
    cdef readonly Py_ssize_t coalesced     # reads that handed over several datagrams (GRO)
    cdef readonly Py_ssize_t reads         # datagrams or coalesced buffers read, in all
    cdef readonly Py_ssize_t calls         # system calls that returned something
    cdef mmsghdr* _msgs
    cdef iovec* _iovs
    cdef sockaddr_storage* _names
    cdef char* _buffers
    cdef char* _controls
    cdef dict _addresses                   # raw sockaddr bytes -> the Python address
    cdef sockaddr_storage _last_name       # the last address converted, and its object
    cdef socklen_t _last_len
    cdef object _last_address

    def __cinit__(self, sock, *, gro=False, max_reads=32, max_datagrams=256):
        cdef Py_ssize_t i
        if not hasattr(sock, "fileno"):
            raise TypeError(f"sock must be a socket (an object with fileno()), not {type(sock).__name__}")
        if type(max_reads) is not int or not 1 <= max_reads <= 1024:
            raise ValueError(f"max_reads must be an int from 1 to 1024, not {max_reads!r}")
        if type(max_datagrams) is not int or max_datagrams < 1:
            raise ValueError(f"max_datagrams must be a positive int, not {max_datagrams!r}")
        self._sock = sock
        self.gro = bool(gro)
        self.max_reads = max_reads
        self.max_datagrams = max_datagrams
        self._addresses = {}
        self._last_len = 0
        self._last_address = None
        n = max_reads
        self._msgs = <mmsghdr*>PyMem_Calloc(n, sizeof(mmsghdr))
        self._iovs = <iovec*>PyMem_Calloc(n, sizeof(iovec))
        self._names = <sockaddr_storage*>PyMem_Calloc(n, sizeof(sockaddr_storage))
        # (pages of the buffers are touched only as far as datagrams fill them)
        self._buffers = <char*>PyMem_Malloc(n * SLOT_SIZE)
        self._controls = <char*>PyMem_Calloc(n, TETHER_GRO_CMSG_SPACE)
        if not (self._msgs and self._iovs and self._names and self._buffers and self._controls):
            raise MemoryError()
        for i in range(n):
            self._iovs[i].iov_base = self._buffers + i * SLOT_SIZE
            self._iovs[i].iov_len = SLOT_SIZE
            self._msgs[i].msg_hdr.msg_iov = &self._iovs[i]
            self._msgs[i].msg_hdr.msg_iovlen = 1
            self._msgs[i].msg_hdr.msg_name = &self._names[i]

    def __dealloc__(self):
        PyMem_Free(self._msgs)
        PyMem_Free(self._iovs)
        PyMem_Free(self._names)
        PyMem_Free(self._buffers)
        PyMem_Free(self._controls)

    cdef object _address(self, sockaddr_storage* name, socklen_t length):
        """The address as the socket module gives it: (host, port) for IPv4, (host, port,
        flowinfo, scope_id) for IPv6; the same object for the same address."""
        cdef char host[1025]
        cdef int rc
        if length == self._last_len and memcmp(name, &self._last_name, length) == 0:
            return self._last_address
        if length == 0:
            return None
        key = PyBytes_FromStringAndSize(<char*>name, length)
        address = self._addresses.get(key)
        if address is None:
            family = name.ss_family
            if family != AF_INET and family != AF_INET6:
                raise OSError(f"datagram from an address of family {family}: only IPv4 and IPv6 are read")
            rc = getnameinfo(<sockaddr*>name, length, host, sizeof(host), NULL, 0, NI_NUMERICHOST)
            if rc != 0:
                raise OSError(f"getnameinfo: {gai_strerror(rc).decode()}")
            if family == AF_INET:
                address = (host.decode("ascii"), ntohs((<sockaddr_in*>name).sin_port))
            else:
                address = (host.decode("ascii"), ntohs((<sockaddr_in6*>name).sin6_port),
                           ntohl((<sockaddr_in6*>name).sin6_flowinfo),
                           (<sockaddr_in6*>name).sin6_scope_id)
            if len(self._addresses) >= ADDRESS_CACHE_MAX:
                self._addresses.clear()
            self._addresses[key] = address
        memcpy(&self._last_name, name, length)
        self._last_len = length
        self._last_address = address
        return address

    def read(self):
        """Every datagram waiting, up to the bounds: [(bodies, address), ...]."""
        cdef int fd = self._sock.fileno()
        cdef Py_ssize_t taken = 0, datagrams = 0, i, length, segment, offset, piece
        cdef unsigned int vlen
        cdef int got, err
        cdef char* data
        cdef list batch = []
        cdef list bodies
        cdef mmsghdr* m
        if fd < 0:
            return batch
        while taken < self.max_reads and datagrams < self.max_datagrams:
            vlen = <unsigned int>min(self.max_reads - taken, self.max_datagrams - datagrams)
            for i in range(vlen):
                m = &self._msgs[i]
                m.msg_hdr.msg_namelen = sizeof(sockaddr_storage)
                if self.gro:
                    m.msg_hdr.msg_control = self._controls + i * TETHER_GRO_CMSG_SPACE
                    m.msg_hdr.msg_controllen = TETHER_GRO_CMSG_SPACE
                else:
                    m.msg_hdr.msg_control = NULL
                    m.msg_hdr.msg_controllen = 0
                m.msg_hdr.msg_flags = 0
            with nogil:
                got = recvmmsg(fd, self._msgs, vlen, MSG_DONTWAIT, NULL)
                err = errno
            if got < 0:
                if err == EAGAIN:      # (EWOULDBLOCK on Linux)
                    break
                taken += 1       # an error costs a read, so the loop is bounded
                if err != EINTR:
                    self.errors += 1
                continue
            self.calls += 1
            for i in range(got):
                m = &self._msgs[i]
                data = <char*>self._iovs[i].iov_base
                length = m.msg_len
                segment = tether_gro_segment(&m.msg_hdr) if self.gro else 0
                address = self._address(&self._names[i], m.msg_hdr.msg_namelen)
                if batch and (<tuple>batch[len(batch) - 1])[1] == address:
                    bodies = (<tuple>batch[len(batch) - 1])[0]
                else:
                    bodies = []
                    batch.append((bodies, address))
                if 0 < segment < length:
                    self.coalesced += 1
                    offset = 0
                    while offset < length:
                        piece = min(segment, length - offset)
                        bodies.append(PyBytes_FromStringAndSize(data + offset, piece))
                        offset += piece
                        datagrams += 1
                else:
                    bodies.append(PyBytes_FromStringAndSize(data, length))
                    datagrams += 1
            taken += got
            self.reads += got
            if <unsigned int>got < vlen:
                break            # drained
        return batch


cdef socklen_t _put_address(object address, sockaddr_storage* out, Py_ssize_t index) except 0:
    """A numeric (host, port) or (host, port, flowinfo, scope_id) into `out`; its length."""
    cdef sockaddr_in_full* v4 = <sockaddr_in_full*>out
    cdef sockaddr_in6_full* v6 = <sockaddr_in6_full*>out
    if not isinstance(address, tuple) or len(address) not in (2, 4) \
            or not isinstance(address[0], str) or type(address[1]) is not int:
        raise TypeError(f"runs[{index}]: the address must be (host, port) or "
                        f"(host, port, flowinfo, scope_id), not {address!r}")
    host = (<str>address[0]).encode("ascii", "replace")
    port = address[1]
    if not 0 <= port <= 65535:
        raise ValueError(f"runs[{index}]: port {port} out of range")
    memset(out, 0, sizeof(sockaddr_storage))
    if len(address) == 2 and inet_pton(AF_INET, host, &v4.sin_addr) == 1:
        v4.sin_family = AF_INET
        v4.sin_port = htons(port)
        return sizeof(sockaddr_in_full)
    if inet_pton(AF_INET6, host, &v6.sin6_addr) == 1:
        v6.sin6_family = AF_INET6
        v6.sin6_port = htons(port)
        if len(address) == 4:
            v6.sin6_flowinfo = htonl(address[2])
            v6.sin6_scope_id = address[3]
        return sizeof(sockaddr_in6_full)
    raise ValueError(f"runs[{index}]: {address[0]!r} is not a numeric IP address")


def send_runs(sock, runs, connected):
    """Send runs of datagrams in order, as many per system call as will go (sendmmsg):
    each run is (buffer, segment, count, address), `count` datagrams of `segment` bytes
    joined in `buffer` (the last may be shorter), sent with a UDP_SEGMENT control message
    when count > 1 (segmentation offload) and as one datagram otherwise; `address` a
    numeric (host, port) or (host, port, flowinfo, scope_id), ignored when `connected`.
    Returns (sent, error): the first `sent` runs went, and error is the errno that
    stopped the next one (0: every run went)."""
    cdef int fd
    cdef Py_ssize_t n, i, base = 0, chunk
    cdef int got, err = 0
    cdef mmsghdr* msgs = NULL
    cdef iovec* iovs = NULL
    cdef sockaddr_storage* names = NULL
    cdef char* controls = NULL
    cdef object run, buffer
    if not isinstance(runs, list):
        raise TypeError(f"runs must be a list, not {type(runs).__name__}")
    n = len(runs)
    for i in range(n):
        run = runs[i]
        if not isinstance(run, tuple) or len(run) != 4 or type(run[0]) is not bytes \
                or type(run[1]) is not int or type(run[2]) is not int:
            raise TypeError(f"runs[{i}] must be (bytes, segment, count, address)")
        if run[2] < 1 or not 1 <= run[1] <= 65535:
            raise ValueError(f"runs[{i}]: segment {run[1]} or count {run[2]} out of range")
    fd = sock.fileno()
    if n == 0:
        return 0, 0
    if fd < 0:
        return 0, EBADF
    chunk = min(n, SEND_BATCH)
    msgs = <mmsghdr*>PyMem_Calloc(chunk, sizeof(mmsghdr))
    iovs = <iovec*>PyMem_Calloc(chunk, sizeof(iovec))
    names = <sockaddr_storage*>PyMem_Calloc(chunk, sizeof(sockaddr_storage))
    controls = <char*>PyMem_Calloc(chunk, TETHER_GSO_CMSG_SPACE)
    try:
        if not (msgs and iovs and names and controls):
            raise MemoryError()
        while base < n:
            chunk = min(n - base, SEND_BATCH)
            for i in range(chunk):
                run = runs[base + i]
                buffer = run[0]
                iovs[i].iov_base = <void*>PyBytes_AS_STRING(buffer)
                iovs[i].iov_len = PyBytes_GET_SIZE(buffer)
                memset(&msgs[i].msg_hdr, 0, sizeof(msghdr))
                msgs[i].msg_hdr.msg_iov = &iovs[i]
                msgs[i].msg_hdr.msg_iovlen = 1
                if not connected:
                    msgs[i].msg_hdr.msg_name = &names[i]
                    msgs[i].msg_hdr.msg_namelen = _put_address(run[3], &names[i], base + i)
                if run[2] > 1:
                    tether_put_segment(&msgs[i].msg_hdr, controls + i * TETHER_GSO_CMSG_SPACE,
                                       <unsigned short>run[1])
            i = 0
            while i < chunk:
                with nogil:
                    got = sendmmsg(fd, msgs + i, <unsigned int>(chunk - i), 0)
                    err = errno
                if got < 0:
                    if err == EINTR:
                        continue
                    return base + i, err
                i += got
            base += chunk
        return n, 0
    finally:
        PyMem_Free(msgs)
        PyMem_Free(iovs)
        PyMem_Free(names)
        PyMem_Free(controls)
