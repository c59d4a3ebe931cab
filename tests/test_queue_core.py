"""QueueCore, driven directly (no asyncio, no files): one test per bug the queue simulation
(tests/qsim/, tests/test_queue_sim.py) found, each named after what broke, with the seed
that found it."""
from __future__ import annotations

from tether.queue.core import QueueCore, QueueSettings
from tether.queue.core.system_queues import settings_for

XMIT = "$xmit:target:7600"
DESTINATION = "tether://target:7600/orders"


def _written(core: QueueCore, now: float) -> None:
    """Cut and write every record the core has open."""
    while (cut := core.cut()) is not None:
        core.written(cut[0], now)


def _core(*queues: tuple[str, QueueSettings]) -> QueueCore:
    core = QueueCore(b"core-test-manager", journaled=True)
    core.start()
    for name, settings in queues:
        core.define(name, settings)
    _written(core, 0.0)
    return core


def _forward(core: QueueCore, body: bytes, now: float) -> int | None:
    """A message for the remote queue, into the transmission queue: its record."""
    return core.send_one(core.prepare(XMIT, body, now, destination=DESTINATION), now)


# ---- the forwarder's floor (tell no floor above a message still to be sent) ----

def test_lowest_sequence_covers_a_send_still_being_written():
    # forward seed 0: a completion became durable while the next message's send was
    # still being written; the floor was the next unused sequence, above that message
    core = _core((XMIT, settings_for(XMIT)))
    _forward(core, b"first", 1.0)
    _written(core, 1.0)
    first = core.take(XMIT, 1.0)
    assert first.sequence == 1
    completion = core.complete(first, first.tag, 1.1)
    completing = core.cut()
    _forward(core, b"second", 1.2)
    sending = core.cut()
    core.written(completing[0], 1.3)
    assert completion == completing[0]
    assert core.lowest_sequence(XMIT) == 2          # the second message, not yet queued
    core.written(sending[0], 1.4)
    assert core.lowest_sequence(XMIT) == 2


def test_lowest_sequence_forgets_a_send_whose_write_failed():
    core = _core((XMIT, settings_for(XMIT)))
    _forward(core, b"lost", 1.0)
    core.failed(core.cut()[0], 1.0)
    assert core.lowest_sequence(XMIT) == 2          # nothing holds sequence 1 any more


def test_lowest_sequence_is_the_lowest_even_when_a_later_one_is_released_in_front():
    # forward seed 59: a message refused for now was released to the front, then one
    # taken meanwhile (sending was paused) was released in front of it
    core = _core((XMIT, settings_for(XMIT)))
    for body in (b"one", b"two", b"three"):
        _forward(core, body, 1.0)
    _written(core, 1.0)
    one = core.take(XMIT, 1.0)
    two = core.take(XMIT, 1.0)
    core.release(one, one.tag, 1.1)
    core.release(two, two.tag, 1.2)
    assert [e.sequence for e in core._queue(XMIT).ready_entries()] == [2, 1, 3]
    assert core.lowest_sequence(XMIT) == 1


# ---- time-to-live running out while a message is locked ----

def _one_ttl_message(ttl: float = 1.0, **settings) -> tuple[QueueCore, object]:
    core = _core(("q", QueueSettings.from_kwargs(time_to_live=ttl, validity_duration=10.0, **settings)))
    core.send_one(core.prepare("q", b"m", 0.0), 0.0)
    _written(core, 0.0)
    entry = core.take("q", 0.5)
    core.handle_timer(1.0)                   # the expiry comes while it is locked: nothing yet
    assert core.info("q").in_flight == 1
    return core, entry


def _dead_lettered_by(core: QueueCore, now: float) -> None:
    assert core.next_deadline() is not None and core.next_deadline() <= now
    core.handle_timer(now)
    _written(core, now)
    assert (core.info("q").depth, core.info("q").in_flight, core.info("$dead").depth) == (0, 0, 1)
    dead = core.take("$dead", now)
    assert dead.dead_letter_reason == "expired"


def test_a_message_released_after_its_time_to_live_ran_out_is_dead_lettered():
    # ttl seed 0: released (uncounted) after its expiry, it waited forever in the queue
    core, entry = _one_ttl_message()
    assert core.release(entry, entry.tag, 1.5)
    _dead_lettered_by(core, 1.5)


class _Waiter:
    def __init__(self) -> None:
        self.got = []

    def hand(self, entry) -> None:
        self.got.append(entry)

    def fail(self, error: BaseException) -> None:
        raise AssertionError(error)


def test_a_message_released_after_its_time_to_live_ran_out_is_not_delivered():
    # ttl seed 31: a receiver waiting on the queue got it, expired
    core, entry = _one_ttl_message()
    waiter = _Waiter()
    core.wait("q", waiter)
    assert core.release(entry, entry.tag, 1.5)
    assert waiter.got == []
    _dead_lettered_by(core, 1.5)


def test_a_message_back_from_retry_after_its_time_to_live_ran_out_is_not_delivered():
    # ttl seed 194: the move back from ;retry was written after the expiry; a waiting
    # receiver got it
    core = _core(("q", QueueSettings.from_kwargs(time_to_live=2.0, validity_duration=10.0, receive_retry_count=0,
                                                 max_retry_cycles=1, retry_cycle_delay=0.5)))
    core.send_one(core.prepare("q", b"m", 0.0), 0.0)
    _written(core, 0.0)
    entry = core.take("q", 0.1)
    core.abandon(entry, entry.tag, 1.0)
    _written(core, 1.0)
    assert core.info("q").retrying == 1
    waiter = _Waiter()
    core.wait("q", waiter)
    core.handle_timer(1.5)                       # the retry delay ended: back to q ...
    move = core.cut()
    core.written(move[0], 2.5)                   # ... written after the expiry (2.0)
    assert waiter.got == []
    _dead_lettered_by(core, 2.5)


def test_a_message_retried_at_once_whose_time_to_live_ran_out_during_the_write_is_dead_lettered():
    core = _core(("q", QueueSettings.from_kwargs(time_to_live=1.0, validity_duration=10.0, receive_retry_count=2)))
    core.send_one(core.prepare("q", b"m", 0.0), 0.0)
    _written(core, 0.0)
    entry = core.take("q", 0.5)
    core.abandon(entry, entry.tag, 0.9)          # an immediate retry, being journaled ...
    update = core.cut()
    core.handle_timer(1.0)                       # ... when the expiry comes
    core.written(update[0], 1.1)
    _dead_lettered_by(core, 1.1)


def test_lowest_sequence_of_a_message_back_from_retry():
    # a message keeps its key and sequence through ;retry and back: two entries, one life
    core = _core((XMIT, settings_for(XMIT)))
    settings = core.settings(XMIT)
    _forward(core, b"failing", 1.0)
    _forward(core, b"next", 1.0)
    _written(core, 1.0)
    now = 1.0
    for _ in range(settings.receive_retry_count + 1):
        entry = core.take(XMIT, now)
        assert entry.sequence == 1
        core.abandon(entry, entry.tag, now)
        _written(core, now)
    assert core.info(XMIT).retrying == 1       # (the floor is not asked meanwhile)
    now += settings.retry_cycle_delay
    core.handle_timer(now)
    _written(core, now)
    assert core.info(XMIT).retrying == 0
    assert core.lowest_sequence(XMIT) == 1
    for sequence in (2, 1):
        entry = core.take(XMIT, now)
        assert entry.sequence == sequence
        core.complete(entry, entry.tag, now)
        _written(core, now)
    assert core.lowest_sequence(XMIT) == 3


# ---- found reading the core for the simulation (no seed: the simulation deletes no queue) ----

def test_a_queue_deleted_while_a_message_expires_in_the_same_record():
    # Queue.entries() listed a message whose expiry was being written twice (locked-or-
    # settling, and again from the ready list): the delete dropped it twice and raised
    core = _core(("q", QueueSettings.from_kwargs(time_to_live=1.0)))
    core.send_one(core.prepare("q", b"m", 0.0), 0.0)
    _written(core, 0.0)
    core.delete("q")
    core.handle_timer(1.0)                       # its expiry joins the delete's record
    assert [e.key for e in core._queue("q").entries()] == [1]
    _written(core, 1.0)
    assert not core.has_queue("q")


def test_a_message_locked_while_the_expiry_index_is_compacted_still_expires():
    # the index's compaction kept only ready messages: one locked meanwhile, released
    # later, had no expiry any more
    core = QueueCore(b"core-test-manager", journaled=False)
    core.define("q", QueueSettings.from_kwargs(time_to_live=100.0, validity_duration=1000.0))
    core.send_one(core.prepare("q", b"held", 0.0), 0.0)
    held = core.take("q", 0.0)
    for _ in range(3000):                        # enough leaving for the index to be compacted
        core.send_one(core.prepare("q", b"x", 1.0), 1.0)
        entry = core.take("q", 1.0)
        core.complete(entry, entry.tag, 1.0)
    assert core.release(held, held.tag, 2.0)
    core.handle_timer(100.0)
    assert (core.info("q").depth, core.info("$dead").depth) == (0, 1)
