"""QueueCore's send paths, driven directly (no asyncio, no files): what a record of many
sends costs and does, and the batch send's outcomes."""
from __future__ import annotations

import random

import pytest

from tether.errors import QueueFull, QueueMessageTooLarge, QueueNotFound
from tether.queue.core import QueueCore, QueueSettings
from tether.queue.core.lifecycle import GONE
from tether.queue.core.producers import ProducerTable


def _written(core: QueueCore, now: float) -> None:
    while (cut := core.cut()) is not None:
        core.written(cut[0], now)


def _core(**settings) -> QueueCore:
    core = QueueCore(b"core-sends-manager", journaled=True)
    core.start()
    core.define("q", QueueSettings(**settings))
    _written(core, 0.0)
    return core


def test_plain_sends_in_one_record_share_one_effect():
    # each plain send used to open a run of its own (a fresh bound method never matched
    # the last run's): two closures per message, and one apply per message at the write
    core = _core()
    records = {core.send_body("q", b"m%d" % i, 1.0)[1] for i in range(50)}
    assert len(records) == 1
    assert core.records.open_effects == 1
    _written(core, 1.0)
    assert core.info("q").depth == 50
    assert [core.take("q", 2.0).body for _ in range(50)] == [b"m%d" % i for i in range(50)]


def test_a_failed_record_of_plain_sends_queues_none_of_them():
    core = _core()
    entries = [core.prepare_plain("q", b"x", 1.0) for _ in range(20)]
    for entry in entries:
        core.send_one(entry, 1.0)
    core.failed(core.cut()[0], 1.0)
    assert core.info("q").depth == 0
    assert all(entry.state == GONE for entry in entries)
    core.send_body("q", b"again", 2.0)
    _written(core, 2.0)
    assert core.take("q", 2.0).body == b"again"


def test_plain_sends_up_to_max_length_counting_those_being_written():
    core = _core(max_length=3)
    for _ in range(3):
        core.send_body("q", b"x", 1.0)
    with pytest.raises(QueueFull):
        core.send_body("q", b"x", 1.0)
    _written(core, 1.0)
    assert core.info("q").depth == 3


# ---- the batch send (a service's SEND_BATCH, a forwarder's FORWARD_BATCH) ----

def test_a_batch_answers_ids_and_the_record_each_waits_for():
    core = _core()
    producer, record = core.open_producer(b"producer-one", 0, 1.0)
    _written(core, 1.0)
    first = [core.prepare_plain("q", b"a", 1.0), core.prepare_plain("q", b"b", 1.0)]
    ids, waits = core.send(first, 1.0, producer=producer, epoch=producer.epoch, sequences=[1, 2])
    earlier = waits[0]
    assert waits == [earlier, earlier] and earlier is not None
    core.cut()                                      # sequences 1 and 2 are being written
    core.send([core.prepare_plain("q", b"c", 1.0)], 1.0, producer=producer, epoch=producer.epoch,
              sequences=[0])
    _written(core, 1.0)                             # ... and now 0 is queued, 1 and 2 still in flight
    batch = [core.prepare_plain("q", body, 2.0) for body in (b"new", b"again", b"old", b"pending")]
    ids, waits = core.send(batch, 2.0, producer=producer, epoch=producer.epoch, sequences=[5, 5, 0, 2])
    assert ids == [entry.id for entry in batch]
    assert ids[0] == ids[1]                         # a sequence twice in one batch: one message
    this = core.records.open_number
    assert waits == [this, this, None, earlier]     # queued before: nothing to wait for
    assert core.records.open_effects == 1


def test_a_batch_refuses_what_does_not_fit_and_waits_for_nothing_there():
    core = _core(max_length=2)
    entries = [core.prepare_plain("q", b"x", 1.0) for _ in range(3)]
    ids, waits = core.send(entries, 1.0)
    assert isinstance(ids[2], QueueFull) and waits[2] is None
    assert waits[0] == waits[1] == core.records.open_number
    _written(core, 1.0)
    assert core.info("q").depth == 2


def test_accept_many_is_accept_of_each():
    rng = random.Random(12)
    for _ in range(200):
        table = ProducerTable()
        one = table.register(b"producer-one", 1, 1, 0.0)
        many = table.register(b"producer-two", 2, 1, 0.0)
        floor = rng.randrange(0, 20)
        table.raise_floor(one, floor)
        table.raise_floor(many, floor)
        keys = [(rng.choice("ab"), rng.randrange(0, 60)) for _ in range(rng.randrange(1, 40))]
        if rng.random() < 0.5:                      # a run, as a client's batch is
            start = rng.randrange(0, 40)
            keys = [("a", start + k) for k in range(rng.randrange(1, 30))]
        table.reserve_many(many, keys, 7)
        for queue, sequence in keys:
            table.reserve(one, queue, sequence, 7)
        assert one.pending == many.pending
        table.accept_many(many, keys, 3.0)
        for queue, sequence in keys:
            table.accept(one, queue, sequence, 3.0)
        assert not many.pending and not one.pending
        assert {q: list(r) for q, r in one.accepted.items()} == {q: list(r) for q, r in many.accepted.items()}
        assert one.last_seen == many.last_seen


def test_unreserve_many_forgets_the_batch_only():
    table = ProducerTable()
    producer = table.register(b"producer-one", 1, 1, 0.0)
    table.reserve_many(producer, [("a", 1), ("a", 2)], 4)
    table.reserve(producer, "b", 9, 5)
    table.unreserve_many(producer, [("a", 1), ("a", 2)])
    assert producer.pending == {("b", 9): 5}


# ---- a service's batch of plain bodies, and a written batch joining its queue at once ----

def test_prepare_plain_many_stops_at_the_first_refusal_and_numbers_on():
    core = _core(max_message_size=4)
    entries, refusal = core.prepare_plain_many("q", [b"a", bytearray(b"bb"), b"toolong", b"c"], 1.0)
    assert [e.body for e in entries] == [b"a", b"bb"]           # a bytearray is converted, as prepare() does
    assert entries[1].body.__class__ is bytes
    assert isinstance(refusal, QueueMessageTooLarge)
    rest, refusal = core.prepare_plain_many("q", [b"c", b"d"], 1.0)
    assert refusal is None
    keys = [e.key for e in entries + rest]
    assert keys == sorted(keys) and len(set(keys)) == 4 and len({e.id for e in entries + rest}) == 4
    assert all(e.expires_at == 1.0 + 86400 and e.queue is rest[0].queue for e in entries + rest)
    none, refusal = core.prepare_plain_many("nowhere", [b"x"], 1.0)
    assert none == [] and isinstance(refusal, QueueNotFound)
    none, refusal = core.prepare_plain_many("q", ["text"], 1.0)
    assert none == [] and isinstance(refusal, TypeError)


class _Waiter:
    def __init__(self) -> None:
        self.entries: list = []

    def hand(self, entry) -> None:
        self.entries.append(entry)

    def fail(self, error: BaseException) -> None:
        raise AssertionError(f"a waiter failed: {error!r}")


@pytest.mark.parametrize("seed", range(40))
def test_a_written_batch_joins_its_queue_as_one_send_at_a_time_would(seed):
    # priorities, time-to-lives out of order, delivery times, groups and receivers already
    # waiting, mixed in one batch: every message is handed, received, scheduled or
    # expired exactly as if each had been sent alone, in the batch's order
    rng = random.Random(seed)
    core = _core(dead_letter_queue="system")
    waiters = [_Waiter() for _ in range(rng.choice([0, 0, 1, 3]))]
    for waiter in waiters:
        core.wait("q", waiter)
    sent = []
    for n in range(rng.randrange(1, 60)):
        options = {}
        if rng.random() < 0.3:
            options["priority"] = rng.randrange(0, 8)
        if rng.random() < 0.3:
            options["time_to_live"] = rng.choice([5.0, 10.0, 20.0])
        if rng.random() < 0.1:
            options["delay"] = 3.0
        if rng.random() < 0.1:
            options["group_id"] = "g"
        entry = core.prepare("q", b"%d" % n, 1.0, **options) if options else core.prepare_plain("q", b"%d" % n, 1.0)
        sent.append(entry)
    ids, waits = core.send(sent, 1.0)
    assert core.info("q").depth == 0                # nothing is queued before it is written
    _written(core, 1.0)
    handed = [e for w in waiters for e in w.entries]
    # receivers that waited get the first messages they can take (not delayed, not grouped)
    takeable = [e for e in sent if e.deliver_at is None and e.group_id is None]
    idle = [[]] * (len(waiters) - len(takeable))
    assert [w.entries for w in waiters] == [[e] for e in takeable[:len(waiters)]] + idle
    assert core.info("q").depth + core.info("q").scheduled + len(handed) == len(sent)
    earliest = min([e.expires_at for e in sent] + [e.deliver_at for e in sent if e.deliver_at is not None])
    assert core.next_deadline() <= earliest
    # expired ones leave for $dead when the timer runs; the rest are received by priority, FIFO within one
    core.handle_timer(12.0)
    _written(core, 12.0)
    expired = [e for e in sent if e not in handed and e.expires_at <= 12.0]
    assert core.info("q").dead == len(expired)
    ready = sorted((e for e in sent if e not in handed and e.expires_at > 12.0 and e.group_id is None),
                   key=lambda e: (-e.priority, e.deliver_at is not None))
    # (sorted() is stable: FIFO within a priority, where the delayed ones joined once due)
    taken = []
    while (entry := core.take("q", 12.0)) is not None:
        taken.append(entry)
    assert [e.body for e in taken] == [e.body for e in ready]


def test_a_batch_resending_what_was_queued_pending_or_below_the_floor_queues_it_once():
    core = _core()
    producer, _ = core.open_producer(b"producer-one", 0, 1.0)
    _written(core, 1.0)

    def send(sequences):
        entries = [core.prepare_plain("q", b"%d" % s, 1.0) for s in sequences]
        return core.send(entries, 1.0, producer=producer, epoch=producer.epoch, sequences=sequences)

    send([1, 2, 3])
    _written(core, 1.0)
    send([10, 11])
    in_flight = core.cut()[0]                       # 10 and 11 are being written
    core.raise_floor(producer, 2)                   # 1 is settled at the producer
    ids, waits = send([1, 3, 4, 11, 12, 12, 4])
    this = core.records.open_number
    assert waits == [None, None, this, in_flight, this, this, this]
    assert ids[2] == ids[6] and ids[4] == ids[5]
    core.written(in_flight, 1.0)
    _written(core, 1.0)
    bodies = []
    while (entry := core.take("q", 2.0)) is not None:
        bodies.append(entry.body)
    assert bodies == [b"1", b"2", b"3", b"10", b"11", b"4", b"12"]
