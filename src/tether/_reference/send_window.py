"""Pure-Python twin of tether._native.send_window: the messages a sender has sent and not
yet seen acknowledged, numbered consecutively, with what retransmission needs.

Written for clarity, not speed; the tests compare every result with the native module.
A held message lives in `_held` (number -> _Sent, ascending because numbers are pushed in
order and dicts keep insertion order) and in `_by_transmission` (number -> None, oldest
transmission first: a resend moves it to the end), which is what loss detection walks.
"""
from __future__ import annotations

import math

from ..errors import InvalidAcknowledgement, MessageNumberRollover, RetryLimitExceeded
from .arguments import MAX_NUMBER, _int, _number

__all__ = ["K_PACKET_THRESHOLD", "MAX_CAPACITY", "MAX_NUMBER", "SendWindow"]

MAX_CAPACITY = 65536
MAX_RETRIES = 2**31 - 1
# RFC 9002 6.1.1 (kPacketThreshold): a message is lost once a message transmitted this many
# transmissions after it has been acknowledged.
K_PACKET_THRESHOLD = 3


def _time(value: object, name: str) -> float:
    """`value` as a finite float, or TypeError/ValueError naming `name`."""
    if isinstance(value, (str, bytes, bytearray)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    try:
        t = float(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be a number, got {type(value).__name__}") from None
    if not math.isfinite(t):
        raise ValueError(f"{name} must be finite, got {t!r}")
    return t


def _limit(value: object) -> int:
    n = _int(value, "limit")
    if n < -1:
        raise ValueError(f"limit must be -1 (no limit) or >= 0, got {n}")
    return n


def _rto_pair(rto: object, max_rto: object) -> tuple[float, float]:
    """rto finite and > 0; max_rto > 0 (inf: no cap)."""
    r = _time(rto, "rto")
    if r <= 0:
        raise ValueError(f"rto must be > 0, got {r!r}")
    if isinstance(max_rto, (str, bytes, bytearray)):
        raise TypeError(f"max_rto must be a number, got {type(max_rto).__name__}")
    try:
        m = float(max_rto)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"max_rto must be a number, got {type(max_rto).__name__}") from None
    if not m > 0:  # also refuses NaN
        raise ValueError(f"max_rto must be > 0, got {m!r}")
    return r, m


def _delay(value: object, name: str = "loss_delay") -> float:
    d = _time(value, name)
    if d < 0:
        raise ValueError(f"{name} must be >= 0, got {d!r}")
    return d


def _interval(rto: float, retries: int, max_rto: float) -> float:
    """RTO doubled per retry of this message, capped at max_rto (RFC 6298 5.5)."""
    try:
        return min(math.ldexp(rto, retries), max_rto)
    except OverflowError:  # rto * 2**retries beyond a double: the cap applies
        return max_rto


class _Sent:
    """One held message."""

    __slots__ = ("payload", "size", "first_sent", "last_sent", "retries", "resent", "serial")

    def __init__(self, payload: object, size: int, now: float, serial: int) -> None:
        self.payload = payload
        self.size = size
        self.first_sent = now
        self.last_sent = now
        self.retries = 0
        self.resent = False  # transmitted more than once (Karn's rule: no RTT sample)
        self.serial = serial  # transmission serial of its latest transmission


class SendWindow:
    """Up to `capacity` consecutive message numbers [lowest_unacked, next_number) held for
    retransmission until acknowledged."""

    def __init__(self, capacity: int, max_retries: int, first_number: int = 1) -> None:
        capacity = _int(capacity, "capacity")
        if not 1 <= capacity <= MAX_CAPACITY:
            raise ValueError(f"capacity must be in 1..{MAX_CAPACITY}, got {capacity}")
        max_retries = _int(max_retries, "max_retries")
        if not 0 <= max_retries <= MAX_RETRIES:
            raise ValueError(f"max_retries must be in 0..{MAX_RETRIES}, got {max_retries}")
        self._capacity = capacity
        self._max_retries = max_retries
        self._first = _number(first_number, "first_number")
        self._next = self._first  # may reach 2**64 once 2**64-1 was pushed
        self._held: dict[int, _Sent] = {}
        self._by_transmission: dict[int, None] = {}
        self._bytes = 0
        self._serial = 0  # transmissions so far (push and every resend)
        self._largest_acked_serial = 0  # 0: nothing sent once has been acked yet

    # ---- state ----

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def max_retries(self) -> int:
        return self._max_retries

    @property
    def next_number(self) -> int:
        return self._next

    @property
    def lowest_unacked(self) -> int:
        return next(iter(self._held), self._next)

    @property
    def in_flight(self) -> int:
        return len(self._held)

    @property
    def free(self) -> int:
        # The window spans numbers: a message acked above a gap keeps its slot.
        return self._capacity - (self._next - self.lowest_unacked)

    @property
    def bytes_in_flight(self) -> int:
        return self._bytes

    # ---- sending ----

    def push(self, payloads: list, now: float, start: int = 0, count: int = -1) -> int:
        """Record payloads[start:start+count] as sent now; returns how many fit."""
        if not isinstance(payloads, list):
            raise TypeError(f"payloads must be a list, got {type(payloads).__name__}")
        now = _time(now, "now")
        start = _int(start, "start")
        count = _int(count, "count")
        if not 0 <= start <= len(payloads):
            raise ValueError(f"start must be in 0..{len(payloads)}, got {start}")
        if count == -1:
            count = len(payloads) - start
        elif count < 0 or start + count > len(payloads):
            raise ValueError(f"count must be -1 or in 0..{len(payloads) - start}, got {count}")
        n = min(count, self.free)
        if n == 0:
            return 0
        if self._next + n - 1 > MAX_NUMBER:
            raise MessageNumberRollover(
                f"pushing {n} messages from number {self._next} would exceed 2**64-1"
            )
        sizes = [len(p) for p in payloads[start:start + n]]
        for i, size in enumerate(sizes):
            self._serial += 1
            number = self._next + i
            self._held[number] = _Sent(payloads[start + i], size, now, self._serial)
            self._by_transmission[number] = None
        self._bytes += sum(sizes)
        self._next += n
        return n

    # ---- acknowledgement ----

    def apply_ack(self, ranges: list, now: float,
                  resend_delay: float | None = None) -> tuple[int, int, list[float]]:
        """Apply one acknowledgement; (newly acked count, newly acked bytes, RTT samples):
        at most one sample, now - the send time of the newest transmission this ack newly
        acknowledges, when it was sent once (Karn's rule) and is newer than any transmission
        acknowledged before (RFC 9002 5.1). Loss detection counts the newest transmission
        acknowledged: one sent once, or with `resend_delay` a resent one whose latest
        transmission went at least that long ago (RFC 8985 6.2)."""
        if not isinstance(ranges, list):
            raise TypeError(f"ranges must be a list, got {type(ranges).__name__}")
        now = _time(now, "now")
        delay = None if resend_delay is None else _delay(resend_delay, "resend_delay")
        checked = []
        for i, item in enumerate(ranges):
            if not isinstance(item, tuple) or len(item) != 2:
                raise TypeError(f"ranges[{i}] must be a (lo, hi) tuple, got {type(item).__name__}")
            lo = _number(item[0], f"ranges[{i}][0]")
            hi = _number(item[1], f"ranges[{i}][1]")
            if lo > hi:
                raise InvalidAcknowledgement(f"ack range ({lo}, {hi}) has lo > hi")
            if checked and lo <= checked[-1][1]:
                raise InvalidAcknowledgement(
                    f"ack range ({lo}, {hi}) is not above the previous range {checked[-1]}"
                )
            if lo < self._first or hi >= self._next:
                raise InvalidAcknowledgement(
                    f"ack range ({lo}, {hi}) covers numbers never sent "
                    f"(sent: {self._first}..{self._next - 1})"
                )
            checked.append((lo, hi))
        acked = acked_bytes = 0
        newest: _Sent | None = None
        newest_resent = 0   # serial of the newest resent transmission that counts
        lowest = self.lowest_unacked
        for lo, hi in checked:
            for number in range(max(lo, lowest), hi + 1):
                sent = self._held.pop(number, None)
                if sent is None:
                    continue
                del self._by_transmission[number]
                acked += 1
                acked_bytes += sent.size
                # Only a message sent once says which transmission arrived (Karn's rule).
                if not sent.resent:
                    if newest is None or sent.serial > newest.serial:
                        newest = sent
                elif delay is not None and sent.serial > newest_resent and now - sent.last_sent >= delay:
                    newest_resent = sent.serial
        self._bytes -= acked_bytes
        samples: list[float] = []
        if newest is not None and newest.serial > self._largest_acked_serial:
            self._largest_acked_serial = newest.serial
            samples.append(now - newest.first_sent)
        if newest_resent > self._largest_acked_serial:
            self._largest_acked_serial = newest_resent
        return acked, acked_bytes, samples

    # ---- retransmission ----

    def _resend(self, due: list[int], now: float) -> list[tuple[int, object]]:
        """Mark `due` (ascending numbers) resent now, or raise if one is out of retries."""
        for number in due:
            if self._held[number].retries >= self._max_retries:
                raise RetryLimitExceeded(
                    f"message {number} was retransmitted {self._max_retries} times without acknowledgement"
                )
        out = []
        for number in due:
            sent = self._held[number]
            sent.last_sent = now
            sent.retries += 1
            sent.resent = True
            self._serial += 1
            sent.serial = self._serial
            del self._by_transmission[number]
            self._by_transmission[number] = None
            out.append((number, sent.payload))
        return out

    def retransmit_due(self, now: float, rto: float, max_rto: float, limit: int = -1) -> list:
        """Messages whose retransmission deadline has passed, lowest number first, marked resent."""
        now = _time(now, "now")
        rto, max_rto = _rto_pair(rto, max_rto)
        limit = _limit(limit)
        due = [
            number
            for number, sent in self._held.items()
            if sent.last_sent + _interval(rto, sent.retries, max_rto) <= now
        ]
        return self._resend(due if limit == -1 else due[:limit], now)

    def next_deadline(self, rto: float, max_rto: float) -> float | None:
        """The earliest retransmission deadline of a held message; None when none is held."""
        rto, max_rto = _rto_pair(rto, max_rto)
        return min(
            (s.last_sent + _interval(rto, s.retries, max_rto) for s in self._held.values()),
            default=None,
        )

    def detect_lost(self, now: float, loss_delay: float, limit: int = -1) -> list:
        """Messages declared lost (RFC 9002 6.1): transmitted before the newest transmission
        known to have arrived, and K_PACKET_THRESHOLD or more transmissions before it
        (packet threshold) or at least loss_delay ago (time threshold). Lowest number first,
        at most `limit`, marked resent like retransmit_due (same RetryLimitExceeded rule);
        the resend gets a new serial, so each transmission is declared lost at most once."""
        now = _time(now, "now")
        delay = _delay(loss_delay)
        limit = _limit(limit)
        largest = self._largest_acked_serial
        lost = []
        for number in self._by_transmission:  # oldest transmission first
            sent = self._held[number]
            if sent.serial >= largest:
                break
            if sent.serial + K_PACKET_THRESHOLD <= largest or sent.last_sent + delay <= now:
                lost.append(number)
        lost.sort()
        return self._resend(lost if limit == -1 else lost[:limit], now)

    def loss_deadline(self, loss_delay: float) -> float | None:
        """When detect_lost will next declare a message lost by the time threshold: the
        earliest last_sent + loss_delay of a message transmitted before the newest
        transmission known to have arrived; None when there is none."""
        delay = _delay(loss_delay)
        largest = self._largest_acked_serial
        best = None
        for number in self._by_transmission:
            sent = self._held[number]
            if sent.serial >= largest:
                break
            if best is None or sent.last_sent + delay < best:
                best = sent.last_sent + delay
        return best

    # ---- resume ----

    def unacked(self) -> list[tuple[int, object]]:
        """Every held message, ascending (what a resumed connection resends)."""
        return [(number, sent.payload) for number, sent in self._held.items()]

    def mark_all_sent(self, now: float, reset_retries: bool = False) -> None:
        """Everything held was just resent (on resume): last_sent = now, retries unchanged,
        or set to 0 with reset_retries (the peer proved itself alive on a new path)."""
        now = _time(now, "now")
        if type(reset_retries) is not bool:
            raise TypeError(f"reset_retries must be a bool, got {type(reset_retries).__name__}")
        reset = reset_retries
        for number, sent in self._held.items():
            sent.last_sent = now
            sent.resent = True
            if reset:
                sent.retries = 0
            self._serial += 1
            sent.serial = self._serial
            del self._by_transmission[number]
            self._by_transmission[number] = None

    def retries_of(self, number: int) -> int:
        """How many times message `number` was retransmitted; KeyError if it is not held."""
        n = _number(number, "number")
        sent = self._held.get(n)
        if sent is None:
            raise KeyError(n)
        return sent.retries

    def __repr__(self) -> str:
        return (
            f"<SendWindow {self.lowest_unacked}..{self._next} in_flight={self.in_flight} "
            f"capacity={self._capacity}>"
        )
