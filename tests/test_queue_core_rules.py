"""The queue core's timing rules, with a simulated clock: no sleeps. Time-to-live, peek-lock
expiry, retry cycles and poison handling are decided by QueueCore from the `now` it is
given, so a test moves time forward by passing a later `now`."""
from __future__ import annotations

import pytest

from tether.errors import LockLost, PoisonMessage, QueueFull
from tether.queue.core import QueueCore, QueueSettings


class Journal:
    """Writes every record at once (or fails it) and keeps the ops."""

    def __init__(self, core: QueueCore) -> None:
        self.core = core
        self.ops: list[list] = []
        self.fail_next = False

    def flush(self, now: float) -> None:
        while (cut := self.core.cut()) is not None:
            number, ops = cut
            if self.fail_next:
                self.fail_next = False
                self.core.failed(number, now)
            else:
                self.ops.extend(ops)
                self.core.written(number, now)


def new_core(**settings) -> tuple[QueueCore, Journal]:
    core = QueueCore(b"core-rules-test", journaled=True)
    journal = Journal(core)
    core.start()
    core.define("q", QueueSettings(**settings))
    journal.flush(0.0)
    return core, journal


def send(core: QueueCore, journal: Journal, body: bytes, now: float, **fields) -> str:
    entry = core.prepare("q", body, now, **fields)
    core.send_one(entry, now)
    journal.flush(now)
    return entry.id


def tick(core: QueueCore, journal: Journal, now: float) -> None:
    core.handle_timer(now)
    journal.flush(now)


def test_time_to_live_dead_letters_exactly_at_expiry():
    core, journal = new_core(time_to_live=10)
    sent = send(core, journal, b"x", now=100.0)
    assert core.next_deadline() == 110.0
    tick(core, journal, 109.999)
    assert core.info("q").depth == 1
    tick(core, journal, 110.0)
    assert core.info("q").depth == 0
    dead = core.take("$dead", 110.0)
    assert (dead.id, dead.dead_letter_reason, dead.dead_letter_source, dead.expires_at) == (sent, "expired", "q", None)


def test_a_lock_expires_after_validity_duration_as_a_failed_delivery():
    core, journal = new_core(validity_duration=30, time_to_live=None)
    send(core, journal, b"x", now=0.0)
    entry = core.take("q", 1.0)
    tag = entry.tag
    assert entry.lock_deadline == 31.0
    tick(core, journal, 30.9)
    assert core.info("q").in_flight == 1
    tick(core, journal, 31.0)
    with pytest.raises(LockLost):
        core.complete(entry, tag, 31.0)
    again = core.take("q", 31.0)
    assert (again.delivery_count, again.attempts) == (2, 1)


def test_renewing_a_lock_moves_its_deadline_and_keeps_expiry_order():
    core, journal = new_core(validity_duration=10, time_to_live=None)
    send(core, journal, b"a", now=0.0)
    send(core, journal, b"b", now=0.0)
    a = core.take("q", 0.0)
    b = core.take("q", 1.0)
    assert core.renew(a, a.tag, 5.0) == 15.0
    tick(core, journal, 11.0)         # b's lock ran out, a's was renewed
    assert core.lock_valid(a, a.tag, 11.0) and not core.lock_valid(b, b.tag, 11.0)
    tick(core, journal, 15.0)
    assert not core.lock_valid(a, a.tag, 15.0)


@pytest.mark.parametrize("retries, cycles", [(0, 0), (1, 0), (2, 1), (5, 2)])
def test_a_message_that_always_fails_is_delivered_exactly_so_often(retries, cycles):
    core, journal = new_core(receive_retry_count=retries, max_retry_cycles=cycles, retry_cycle_delay=60,
                             receive_error_handling="move", time_to_live=None)
    send(core, journal, b"x", now=0.0)
    now = 0.0
    deliveries = 0
    while core.info("q").poison == 0:
        entry = core.take("q", now)
        if entry is None:                   # waiting in ;retry: let the delay pass
            assert core.info("q").retrying == 1
            now = core.next_deadline()
            tick(core, journal, now)
            continue
        deliveries += 1
        core.abandon(entry, entry.tag, now)
        journal.flush(now)
    assert deliveries == (retries + 1) * (cycles + 1)
    poisoned = core.take("q;poison", now)
    assert poisoned.attempts == deliveries


@pytest.mark.parametrize("mode, where", [("drop", None), ("reject", "$dead"), ("move", "q;poison"),
                                          ("fault", "q;poison")])
def test_every_receive_error_handling_mode(mode, where):
    core, journal = new_core(receive_retry_count=0, max_retry_cycles=0, receive_error_handling=mode,
                             time_to_live=None)
    sent = send(core, journal, b"x", now=0.0)
    send(core, journal, b"next", now=0.0)
    entry = core.take("q", 0.0)
    core.abandon(entry, entry.tag, 0.0)
    journal.flush(0.0)
    if where is not None:
        moved = core.take(where, 0.0)
        assert moved.id == sent
        if mode == "reject":
            assert moved.dead_letter_reason == "rejected"
    if mode == "fault":
        with pytest.raises(PoisonMessage):
            core.take("q", 0.0)
        core.complete(moved, moved.tag, 0.0)        # dealt with: the queue resumes
        journal.flush(0.0)
    assert core.take("q", 0.0).body == b"next"


def test_max_length_counts_sends_still_being_written():
    core, journal = new_core(max_length=2)
    core.send_one(core.prepare("q", b"1", 0.0), 0.0)
    core.send_one(core.prepare("q", b"2", 0.0), 0.0)
    with pytest.raises(QueueFull):
        core.send_one(core.prepare("q", b"3", 0.0), 0.0)
    journal.flush(0.0)
    assert core.info("q").depth == 2


def test_a_failed_write_changes_nothing_and_timer_work_waits_before_retrying():
    core, journal = new_core(time_to_live=10)
    send(core, journal, b"x", now=0.0)
    journal.fail_next = True
    tick(core, journal, 10.0)               # the expiry's move could not be written
    assert core.info("q").depth == 1 and core.take("$dead", 10.0) is None
    assert core.next_deadline() >= 11.0     # not spinning on a failing disk
    tick(core, journal, core.next_deadline())
    assert core.info("q").depth == 0 and core.take("$dead", 12.0).body == b"x"


def test_a_failed_send_is_nowhere_and_the_next_one_works():
    core, journal = new_core()
    entry = core.prepare("q", b"lost", 0.0)
    record = core.send_one(entry, 0.0)
    journal.fail_next = True
    journal.flush(0.0)
    assert record is not None and core.info("q").depth == 0
    send(core, journal, b"kept", now=0.0)
    assert core.take("q", 0.0).body == b"kept"
    assert all(op[0] != "e" or op[2][2] != b"lost" for op in journal.ops)



def test_many_waiters_leave_in_constant_time_each():
    core, journal = new_core()

    class Waiter:
        def hand(self, entry):
            self.entry = entry

        def fail(self, error):
            self.error = error

    waiters = [Waiter() for _ in range(32768)]
    for w in waiters:
        core.wait("q", w)
    for w in waiters[1:]:
        core.stop_waiting("q", w)           # an O(n) removal would make this quadratic
    assert core.info("q").waiting == 1
    send(core, journal, b"x", now=0.0)
    assert waiters[0].entry.body == b"x" and core.info("q").waiting == 0


def test_a_producer_registration_that_cannot_be_written_is_taken_back():
    core, journal = new_core()
    producer, record = core.open_producer(b"producer-x", 0, 0.0)
    journal.fail_next = True
    journal.flush(0.0)
    assert record is not None and len(core.producers) == 0      # not journaled: not known
    again, _ = core.open_producer(b"producer-x", 0, 1.0)
    journal.flush(1.0)
    assert again.pid != producer.pid                            # its number is never reused
    bumped, _ = core.open_producer(b"producer-x", 0, 2.0)
    journal.fail_next = True
    journal.flush(2.0)
    assert bumped.epoch == again.epoch == 1                     # the epoch bump is taken back


def test_the_forwarding_floor_counts_messages_still_being_journaled_in():
    """A transmission queue numbers a message when it is sent; until its record is written
    it is in no list, but the floor (everything below is settled) must stay below it: a
    floor told past it made the target drop the message as a duplicate once it came."""
    from tether.queue.core.system_queues import settings_for

    core, journal = new_core()
    xmit = "$xmit:127.0.0.1:9"
    core.define(xmit, settings_for(xmit))
    journal.flush(0.0)
    first = core.prepare(xmit, b"first", 0.0, destination="tether://127.0.0.1:9/q")
    core.send_one(first, 0.0)
    journal.flush(0.0)
    taken = core.take(xmit, 0.0)
    core.complete(taken, taken.tag, 0.0)
    completion = core.cut()
    second = core.prepare(xmit, b"second", 0.0, destination="tether://127.0.0.1:9/q")
    core.send_one(second, 0.0)              # numbered; its record is not written yet
    sending = core.cut()
    core.written(completion[0], 0.0)        # first is gone, second is in no list yet
    assert core.lowest_sequence(xmit) == second.sequence
    core.written(sending[0], 0.0)
    assert core.lowest_sequence(xmit) == second.sequence
    failed = core.prepare(xmit, b"third", 0.0, destination="tether://127.0.0.1:9/q")
    core.send_one(failed, 0.0)
    assert core.lowest_sequence(xmit) == second.sequence
    journal.fail_next = True
    journal.flush(0.0)
    assert core.lowest_sequence(xmit) == second.sequence
    done = core.take(xmit, 0.0)
    core.complete(done, done.tag, 0.0)
    journal.flush(0.0)
    assert core.lowest_sequence(xmit) == failed.sequence + 1   # nothing left: the next number


def test_a_message_past_its_time_to_live_is_never_received_even_before_the_timer_runs():
    core, journal = new_core(time_to_live=10)
    send(core, journal, b"late", now=0.0)
    send(core, journal, b"fresh", now=5.0)
    taken = core.take("q", 12.0)                  # no timer tick since the first one expired
    assert taken.body == b"fresh"
    journal.flush(12.0)
    dead = core.take("$dead", 12.0)
    assert (dead.body, dead.dead_letter_reason) == (b"late", "expired")
