# The sender's window: messages sent and not yet acknowledged, numbered consecutively,
# held in a ring of C slots so an ack, a retransmission scan or a push is a C loop.
# Pure-Python twin: src/tether/_reference/send_window.py (same API, same results).

cimport cython
from cpython.bytes cimport PyBytes_CheckExact, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_New, PyList_SET_ITEM
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject, PyObject_Length
from cpython.ref cimport Py_DECREF, Py_INCREF
from cpython.tuple cimport PyTuple_Check, PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.math cimport INFINITY, fmin, isfinite, ldexp
from arguments cimport _int, _number
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport qsort
from libc.string cimport memset


from tether.errors import InvalidAcknowledgement, MessageNumberRollover, RetryLimitExceeded

__all__ = ["SendWindow", "K_PACKET_THRESHOLD", "MAX_NUMBER", "MAX_CAPACITY"]

MAX_NUMBER = 2**64 - 1  # message numbers are unsigned 64-bit
MAX_CAPACITY = 65536
# RFC 9002 6.1.1 (kPacketThreshold): a message is lost once a message transmitted this many
# transmissions after it has been acknowledged.
K_PACKET_THRESHOLD = 3

cdef uint64_t _K_PACKET_THRESHOLD = 3
cdef Py_ssize_t _MAX_CAPACITY = 65536
cdef Py_ssize_t _MAX_RETRIES = 2**31 - 1
cdef uint64_t _MAX = 0xFFFFFFFFFFFFFFFF
cdef uint32_t NIL = 0xFFFFFFFF
cdef object _TWO64 = 2**64


cdef uint64_t _range_end(object value, Py_ssize_t i, int which) except? 0xFFFFFFFFFFFFFFFF:
    """One end of ranges[i]; the name is only formatted on error."""
    if type(value) is int:
        try:
            return value
        except OverflowError:
            pass
    return _number(value, f"ranges[{i}][{which}]")


cdef double _time(object value, str name) except? -1.0:
    """`value` as a finite float, or TypeError/ValueError naming `name`."""
    cdef double t
    if type(value) is float:
        t = value
    elif isinstance(value, (str, bytes, bytearray)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    else:
        try:
            t = float(value)
        except TypeError:
            raise TypeError(f"{name} must be a number, got {type(value).__name__}") from None
    if not isfinite(t):
        raise ValueError(f"{name} must be finite, got {t!r}")
    return t


cdef double _delay(object value, str name="loss_delay") except? -1.0:
    cdef double d = _time(value, name)
    if d < 0:
        raise ValueError(f"{name} must be >= 0, got {d!r}")
    return d


cdef double _rto(object value) except? -1.0:
    cdef double r = _time(value, "rto")
    if r <= 0:
        raise ValueError(f"rto must be > 0, got {r!r}")
    return r


cdef double _max_rto(object value) except? -1.0:
    """max_rto > 0; inf means no cap."""
    cdef double m
    if isinstance(value, (str, bytes, bytearray)):
        raise TypeError(f"max_rto must be a number, got {type(value).__name__}")
    try:
        m = float(value)
    except TypeError:
        raise TypeError(f"max_rto must be a number, got {type(value).__name__}") from None
    if not m > 0:  # also refuses NaN
        raise ValueError(f"max_rto must be > 0, got {m!r}")
    return m


cdef Py_ssize_t _limit(object value) except -2:
    cdef Py_ssize_t n = _int(value, "limit")
    if n == -2 and value > 0:
        return -1  # more than could ever be held: no limit
    if n < -1:
        raise ValueError(f"limit must be -1 (no limit) or >= 0, got {value}")
    return n


cdef inline double _interval(double rto, uint32_t retries, double max_rto) noexcept nogil:
    # RTO doubled per retry of this message, capped at max_rto (RFC 6298 5.5); ldexp is
    # exact and overflows to inf, which the cap then replaces.
    return fmin(ldexp(rto, <int>retries), max_rto)


cdef int _compare_offsets(const void* a, const void* b) noexcept nogil:
    cdef uint32_t x = (<const uint32_t*>a)[0]
    cdef uint32_t y = (<const uint32_t*>b)[0]
    return (x > y) - (x < y)


@cython.final
cdef class SendWindow:
    """Up to `capacity` consecutive message numbers [lowest_unacked, next_number) held for
    retransmission until acknowledged.

    SendWindow(capacity, max_retries, first_number=1): capacity 1..65536 (ValueError
    otherwise), max_retries 0..2**31-1, first_number 0..2**64-1.
    """

    def __cinit__(self, capacity, max_retries, first_number=1):
        cdef Py_ssize_t cap = _int(capacity, "capacity")
        cdef Py_ssize_t retries = _int(max_retries, "max_retries")
        cdef Py_ssize_t ring = 1
        if not 1 <= cap <= _MAX_CAPACITY:
            raise ValueError(f"capacity must be in 1..{_MAX_CAPACITY}, got {capacity}")
        if not 0 <= retries <= _MAX_RETRIES:
            raise ValueError(f"max_retries must be in 0..{_MAX_RETRIES}, got {max_retries}")
        self._first = _number(first_number, "first_number")
        while ring < cap:
            ring <<= 1
        self._slots = <SentSlot*>PyMem_Malloc(ring * sizeof(SentSlot))
        self._picked = <uint32_t*>PyMem_Malloc(cap * sizeof(uint32_t))
        self._released = <PyObject**>PyMem_Malloc(cap * sizeof(PyObject*))
        self._ranges_cap = 16
        self._ranges = <uint64_t*>PyMem_Malloc(2 * self._ranges_cap * sizeof(uint64_t))
        if (self._slots == NULL or self._picked == NULL or self._released == NULL
                or self._ranges == NULL):
            raise MemoryError()
        memset(self._slots, 0, ring * sizeof(SentSlot))
        self._mask = ring - 1
        self._capacity = cap
        self._max_retries = retries
        self._next = self._first
        self._exhausted = False
        self._span = 0
        self._in_flight = 0
        self._bytes = 0
        self._serial = 0
        self._largest_acked_serial = 0
        self._oldest = NIL
        self._newest = NIL
        self._last_tx_time = -INFINITY
        self._tx_monotone = True

    def __dealloc__(self):
        cdef Py_ssize_t off
        cdef SentSlot* slot
        if self._slots != NULL:
            for off in range(self._span):
                slot = &self._slots[(self._next - <uint64_t>self._span + <uint64_t>off) & self._mask]
                if slot.payload != NULL:
                    Py_DECREF(<object>slot.payload)
                    slot.payload = NULL
        PyMem_Free(self._slots)
        PyMem_Free(self._picked)
        PyMem_Free(self._released)
        PyMem_Free(self._ranges)

    # ---- state ----

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def max_retries(self) -> int:
        return self._max_retries

    @property
    def next_number(self) -> int:
        """The number the next pushed message gets (2**64 once 2**64-1 was pushed)."""
        return self._next_number()

    @property
    def lowest_unacked(self) -> int:
        """The lowest number not yet acknowledged; next_number when nothing is held."""
        return self._next_number() - self._span

    @property
    def in_flight(self) -> int:
        """Unacknowledged messages held."""
        return self._in_flight

    @property
    def free(self) -> int:
        """capacity - (next_number - lowest_unacked): a message acked above a gap keeps its slot."""
        return self._capacity - self._span

    @property
    def bytes_in_flight(self) -> int:
        """Sum of len(payload) of the unacknowledged messages."""
        return self._bytes

    cdef object _next_number(self):
        if self._exhausted:
            return _TWO64
        return self._next

    # ---- the transmission-order list (oldest transmission first) ----

    cdef void _link_newest(self, uint32_t index) noexcept nogil:
        cdef SentSlot* slot = &self._slots[index]
        slot.older = self._newest
        slot.newer = NIL
        if self._newest == NIL:
            self._oldest = index
        else:
            self._slots[self._newest].newer = index
        self._newest = index

    cdef void _unlink(self, uint32_t index) noexcept nogil:
        cdef SentSlot* slot = &self._slots[index]
        if slot.older == NIL:
            self._oldest = slot.newer
        else:
            self._slots[slot.older].newer = slot.newer
        if slot.newer == NIL:
            self._newest = slot.older
        else:
            self._slots[slot.newer].older = slot.older

    cdef void _note_transmission(self, double now) noexcept nogil:
        # While transmission times only grow, last_sent grows along the list, which lets
        # the deadline scans stop early; a clock that went backwards turns that off.
        if now < self._last_tx_time:
            self._tx_monotone = False
        self._last_tx_time = now

    # ---- sending ----

    def push(self, list payloads not None, now, start=0, count=-1) -> int:
        """Record payloads[start:start+count] (count -1: to the end) as sent now, as many as
        fit in .free; returns how many were taken. Raises MessageNumberRollover (nothing
        taken) when a number would exceed 2**64-1."""
        cdef double t = _time(now, "now")
        cdef Py_ssize_t size = PyList_GET_SIZE(payloads)
        cdef Py_ssize_t first = _int(start, "start")
        cdef Py_ssize_t n = _int(count, "count")
        cdef Py_ssize_t i, length
        cdef uint32_t index
        cdef PyObject* item
        cdef SentSlot* slot
        if not 0 <= first <= size:
            raise ValueError(f"start must be in 0..{size}, got {start}")
        if n == -1:
            n = size - first
        elif n < 0 or n > size - first:
            raise ValueError(f"count must be -1 or in 0..{size - first}, got {count}")
        if n > self._capacity - self._span:
            n = self._capacity - self._span
        if n == 0:
            return 0
        if self._exhausted or <uint64_t>(n - 1) > _MAX - self._next:
            raise MessageNumberRollover(
                f"pushing {n} messages from number {self._next_number()} would exceed 2**64-1"
            )
        # Sizes first: a payload without len() raises before anything is taken.
        for i in range(n):
            item = PyList_GET_ITEM(payloads, first + i)
            if PyBytes_CheckExact(<object>item):
                length = PyBytes_GET_SIZE(<object>item)
            else:
                length = PyObject_Length(<object>item)
            self._slots[(self._next + <uint64_t>i) & self._mask].size = length
        if PyList_GET_SIZE(payloads) < first + n:  # a __len__ shrank the list
            raise ValueError("payloads changed size during push")
        self._note_transmission(t)
        for i in range(n):
            item = PyList_GET_ITEM(payloads, first + i)
            Py_INCREF(<object>item)
            index = <uint32_t>((self._next + <uint64_t>i) & self._mask)
            slot = &self._slots[index]
            slot.payload = item
            slot.first_sent = t
            slot.last_sent = t
            slot.retries = 0
            slot.resent = False
            self._serial += 1
            slot.serial = self._serial
            self._bytes += slot.size
            self._link_newest(index)
        self._next += <uint64_t>n
        if self._next == 0:
            self._exhausted = True
        self._span += n
        self._in_flight += n
        return n

    # ---- acknowledgement ----

    cdef Py_ssize_t _parse_ranges(self, list ranges) except -1:
        """Validate every range into self._ranges; returns how many. Raises before anything
        is applied."""
        cdef Py_ssize_t count = PyList_GET_SIZE(ranges)
        cdef Py_ssize_t i
        cdef uint64_t lo, hi
        cdef uint64_t* grown
        cdef object item
        if count > self._ranges_cap:
            grown = <uint64_t*>PyMem_Realloc(self._ranges, 2 * count * sizeof(uint64_t))
            if grown == NULL:
                raise MemoryError()
            self._ranges = grown
            self._ranges_cap = count
        for i in range(count):
            item = <object>PyList_GET_ITEM(ranges, i)
            if not PyTuple_Check(item) or PyTuple_GET_SIZE(item) != 2:
                raise TypeError(f"ranges[{i}] must be a (lo, hi) tuple, got {type(item).__name__}")
            lo = _range_end(<object>PyTuple_GET_ITEM(item, 0), i, 0)
            hi = _range_end(<object>PyTuple_GET_ITEM(item, 1), i, 1)
            if lo > hi:
                raise InvalidAcknowledgement(f"ack range ({lo}, {hi}) has lo > hi")
            if i > 0 and lo <= self._ranges[2 * i - 1]:
                raise InvalidAcknowledgement(
                    f"ack range ({lo}, {hi}) is not above the previous range "
                    f"({self._ranges[2 * i - 2]}, {self._ranges[2 * i - 1]})"
                )
            if lo < self._first or (not self._exhausted and hi >= self._next):
                raise InvalidAcknowledgement(
                    f"ack range ({lo}, {hi}) covers numbers never sent "
                    f"(sent: {self._first}..{self._next_number() - 1})"
                )
            self._ranges[2 * i] = lo
            self._ranges[2 * i + 1] = hi
        return count

    def apply_ack(self, list ranges not None, now, resend_delay=None) -> tuple:
        """Apply one acknowledgement: ascending, disjoint (lo, hi) ranges as received (they
        may repeat acks already applied). Returns (newly acked count, newly acked bytes,
        RTT samples): at most one sample, now - the send time of the newest transmission
        this ack newly acknowledges, when it was sent once (Karn's rule) and is newer than
        any transmission acknowledged before (RFC 9002 5.1). A range with lo > hi, not above
        the previous one, or covering a number never sent raises InvalidAcknowledgement and
        applies nothing.

        Loss detection counts the newest transmission acknowledged: a message sent once, or,
        with `resend_delay` (seconds, >= 0), a resent one whose latest transmission went at
        least that long ago (RFC 8985 6.2: an ack sooner than the minimum RTT after the
        resend is for an earlier copy). So a resend lost again is found by the resends and
        new messages sent after it, not only by a timeout."""
        cdef double t = _time(now, "now")
        cdef bint by_resends = resend_delay is not None
        cdef double delay = _delay(resend_delay, "resend_delay") if by_resends else 0.0
        cdef uint64_t newest_any = 0
        cdef Py_ssize_t count = self._parse_ranges(ranges)
        cdef Py_ssize_t r, acked = 0, acked_bytes = 0, i
        cdef uint64_t lowest = self._next - <uint64_t>self._span
        cdef uint64_t lo, hi, off, end
        cdef uint64_t newest = 0
        cdef double newest_sent = 0.0
        cdef uint32_t index
        cdef SentSlot* slot
        cdef list samples
        if self._span > 0:
            for r in range(count):
                lo = self._ranges[2 * r]
                hi = self._ranges[2 * r + 1]
                if hi < lowest:
                    continue
                # Clip to the window; hi < next_number was checked, so end < span.
                off = lo - lowest if lo > lowest else 0
                end = hi - lowest
                while off <= end:
                    index = <uint32_t>((lowest + off) & self._mask)
                    slot = &self._slots[index]
                    off += 1
                    if slot.payload == NULL:
                        continue
                    self._released[acked] = slot.payload
                    slot.payload = NULL
                    acked += 1
                    acked_bytes += slot.size
                    # Only a message sent once says which transmission arrived.
                    if not slot.resent:
                        if slot.serial > newest:
                            newest = slot.serial
                            newest_sent = slot.first_sent
                    elif by_resends and slot.serial > newest_any and t - slot.last_sent >= delay:
                        newest_any = slot.serial
                    self._unlink(index)
            # The window's low edge moves up over everything acked.
            while self._span > 0 and self._slots[lowest & self._mask].payload == NULL:
                lowest += 1
                self._span -= 1
        self._in_flight -= acked
        self._bytes -= acked_bytes
        if self._in_flight == 0:
            self._tx_monotone = True
            self._last_tx_time = -INFINITY
        if newest > self._largest_acked_serial:
            self._largest_acked_serial = newest
            samples = [t - newest_sent]
        else:
            samples = []
        if newest_any > self._largest_acked_serial:
            self._largest_acked_serial = newest_any
        # Payloads are dropped last: a destructor then sees a consistent window.
        for i in range(acked):
            Py_DECREF(<object>self._released[i])
        return acked, acked_bytes, samples

    # ---- retransmission ----

    cdef list _resend(self, Py_ssize_t count, double now):
        """Mark the window offsets self._picked[:count] (ascending) resent now and return
        their (number, payload); RetryLimitExceeded (nothing marked) if one is out of retries."""
        cdef uint64_t lowest = self._next - <uint64_t>self._span
        cdef Py_ssize_t i
        cdef uint32_t index
        cdef SentSlot* slot
        cdef list out = PyList_New(count)
        for i in range(count):
            slot = &self._slots[(lowest + self._picked[i]) & self._mask]
            if slot.retries >= self._max_retries:
                raise RetryLimitExceeded(
                    f"message {lowest + self._picked[i]} was retransmitted "
                    f"{self._max_retries} times without acknowledgement"
                )
        if count:
            self._note_transmission(now)
        for i in range(count):
            index = <uint32_t>((lowest + self._picked[i]) & self._mask)
            slot = &self._slots[index]
            slot.last_sent = now
            slot.retries += 1
            slot.resent = True
            self._serial += 1
            slot.serial = self._serial
            self._unlink(index)
            self._link_newest(index)
            item = (lowest + self._picked[i], <object>slot.payload)
            Py_INCREF(item)
            PyList_SET_ITEM(out, i, item)
        return out

    def retransmit_due(self, now, rto, max_rto, limit=-1) -> list:
        """Messages whose deadline last_sent + min(rto * 2**retries, max_rto) <= now, lowest
        number first, at most `limit` (-1: all), each marked resent (last_sent = now,
        retries += 1). RetryLimitExceeded (nothing marked) if one of them already has
        max_retries retries."""
        cdef double t = _time(now, "now")
        cdef double r = _rto(rto)
        cdef double m = _max_rto(max_rto)
        cdef Py_ssize_t most = _limit(limit)
        cdef double least = fmin(r, m)
        cdef uint64_t lowest = self._next - <uint64_t>self._span
        cdef Py_ssize_t count = 0
        cdef uint32_t index = self._oldest
        cdef SentSlot* slot
        while index != NIL:
            slot = &self._slots[index]
            if self._tx_monotone and slot.last_sent + least > t:
                break  # every later transmission is at least as late, its deadline too
            if slot.last_sent + _interval(r, slot.retries, m) <= t:
                self._picked[count] = <uint32_t>((index - lowest) & self._mask)
                count += 1
            index = slot.newer
        qsort(self._picked, count, sizeof(uint32_t), _compare_offsets)
        if most != -1 and count > most:
            count = most
        return self._resend(count, t)

    def next_deadline(self, rto, max_rto):
        """The earliest retransmission deadline of a held message; None when none is held."""
        cdef double r = _rto(rto)
        cdef double m = _max_rto(max_rto)
        cdef double least = fmin(r, m)
        cdef double best = INFINITY, deadline
        cdef uint32_t index = self._oldest
        cdef SentSlot* slot
        if self._in_flight == 0:
            return None
        while index != NIL:
            slot = &self._slots[index]
            if self._tx_monotone and slot.last_sent + least >= best:
                break
            deadline = slot.last_sent + _interval(r, slot.retries, m)
            if deadline < best:
                best = deadline
            index = slot.newer
        return best

    cdef double _scan_lost(self, double delay, double t, Py_ssize_t* count, bint* found) noexcept nogil:
        """Walk the transmissions older than the newest one known to have arrived (the list
        is in serial order: stop at the first that is not). With `count`, put the window
        offsets of those lost by either threshold at `t` into _picked; return the earliest
        last_sent + delay of the others (all of them without `count`), `found` saying
        whether there was one."""
        cdef uint64_t lowest = self._next - <uint64_t>self._span
        cdef uint64_t largest = self._largest_acked_serial
        cdef double best = INFINITY, deadline
        cdef uint32_t index = self._oldest
        cdef SentSlot* slot
        found[0] = False
        while index != NIL:
            slot = &self._slots[index]
            if slot.serial >= largest:
                break
            deadline = slot.last_sent + delay
            if count != NULL and (slot.serial + _K_PACKET_THRESHOLD <= largest or deadline <= t):
                self._picked[count[0]] = <uint32_t>((index - lowest) & self._mask)
                count[0] += 1
            elif not found[0] or deadline < best:
                best = deadline
                found[0] = True
            index = slot.newer
        return best

    def detect_lost(self, now, loss_delay, limit=-1) -> list:
        """Messages declared lost (RFC 9002 6.1): transmitted before the newest transmission
        known to have arrived, and K_PACKET_THRESHOLD or more transmissions before it
        (packet threshold) or at least loss_delay ago (time threshold). Lowest number first,
        at most `limit`, marked resent like retransmit_due (same RetryLimitExceeded rule);
        the resend gets a new serial, so each transmission is declared lost at most once."""
        cdef double t = _time(now, "now")
        cdef double delay = _delay(loss_delay)
        cdef Py_ssize_t most = _limit(limit)
        cdef Py_ssize_t count = 0
        cdef bint found
        self._scan_lost(delay, t, &count, &found)
        qsort(self._picked, count, sizeof(uint32_t), _compare_offsets)
        if most != -1 and count > most:
            count = most
        return self._resend(count, t)

    def loss_deadline(self, loss_delay):
        """When detect_lost will next declare a message lost by the time threshold: the
        earliest last_sent + loss_delay of a message transmitted before the newest
        transmission known to have arrived; None when there is none."""
        cdef double delay = _delay(loss_delay)
        cdef bint found
        cdef double best = self._scan_lost(delay, INFINITY, NULL, &found)
        return best if found else None

    # ---- resume ----

    def unacked(self) -> list:
        """Every held message as (number, payload), ascending (what a resume resends)."""
        cdef uint64_t lowest = self._next - <uint64_t>self._span
        cdef Py_ssize_t off
        cdef SentSlot* slot
        cdef list out = []
        for off in range(self._span):
            slot = &self._slots[(lowest + <uint64_t>off) & self._mask]
            if slot.payload != NULL:
                out.append((lowest + <uint64_t>off, <object>slot.payload))
        return out

    def mark_all_sent(self, now, reset_retries=False) -> None:
        """Everything held was just resent (after a resume): last_sent = now, retries unchanged,
        or set to 0 with reset_retries (the peer proved itself alive on a new path)."""
        cdef double t = _time(now, "now")
        cdef bint reset
        cdef uint64_t lowest = self._next - <uint64_t>self._span
        cdef Py_ssize_t off
        cdef uint32_t index
        cdef SentSlot* slot
        if type(reset_retries) is not bool:
            raise TypeError(f"reset_retries must be a bool, got {type(reset_retries).__name__}")
        reset = reset_retries
        if self._in_flight:
            self._note_transmission(t)
        for off in range(self._span):
            index = <uint32_t>((lowest + <uint64_t>off) & self._mask)
            slot = &self._slots[index]
            if slot.payload != NULL:
                slot.last_sent = t
                slot.resent = True
                if reset:
                    slot.retries = 0
                self._serial += 1
                slot.serial = self._serial
                self._unlink(index)
                self._link_newest(index)

    def retries_of(self, number) -> int:
        """How many times message `number` was retransmitted; KeyError if it is not held."""
        cdef uint64_t n = _number(number, "number")
        cdef uint64_t off = n - (self._next - <uint64_t>self._span)
        if off >= <uint64_t>self._span or self._slots[n & self._mask].payload == NULL:
            raise KeyError(n)
        return self._slots[n & self._mask].retries

    def __repr__(self) -> str:
        return (
            f"<SendWindow {self.lowest_unacked}..{self.next_number} in_flight={self._in_flight} "
            f"capacity={self._capacity}>"
        )
