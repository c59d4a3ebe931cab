"""Queue settings (the table in docs/queues.md), queue names and addresses: defaults and validation."""
from __future__ import annotations

from datetime import timedelta

import pytest

from tether.queue.core.address import parse_remote, split_subqueue, validate_queue_name
from tether.queue.core.retry_rule import POISON, RETRY_LATER, RETRY_NOW, after_failure
from tether.queue.core.settings import QueueSettings


def test_defaults_follow_the_design_table():
    s = QueueSettings.from_kwargs()
    assert s.durable is True
    assert s.exactly_once is True
    assert s.time_to_live == 86400.0
    assert s.dead_letter_queue == "system"
    assert s.receive_retry_count == 5
    assert s.max_retry_cycles == 2
    assert s.retry_cycle_delay == 1800.0
    assert s.receive_error_handling == "fault"
    assert s.max_message_size == 65536
    assert s.validity_duration == 300.0
    assert s.max_length is None
    assert s.attempts_per_message == 18


def test_round_trip_through_a_dict():
    s = QueueSettings.from_kwargs(durable=False, time_to_live=None, max_length=3,
                                  dead_letter_queue="dlq", receive_error_handling="move",
                                  retry_cycle_delay=timedelta(seconds=2))
    assert s.retry_cycle_delay == 2.0
    assert QueueSettings.from_dict(s.as_dict()) == s


@pytest.mark.parametrize("name, value, error", [
    ("durable", 1, TypeError),
    ("exactly_once", "yes", TypeError),
    ("time_to_live", 0, ValueError),
    ("time_to_live", -1, ValueError),
    ("time_to_live", float("inf"), ValueError),
    ("time_to_live", "1d", TypeError),
    ("dead_letter_queue", "", ValueError),
    ("dead_letter_queue", "a;b", ValueError),
    ("dead_letter_queue", "$dead", ValueError),
    ("dead_letter_queue", 5, TypeError),
    ("receive_retry_count", -1, ValueError),
    ("receive_retry_count", 1.5, TypeError),
    ("receive_retry_count", True, TypeError),
    ("max_retry_cycles", -1, ValueError),
    ("retry_cycle_delay", -0.1, ValueError),
    ("receive_error_handling", "explode", ValueError),
    ("max_message_size", 0, ValueError),
    ("validity_duration", 0, ValueError),
    ("validity_duration", float("nan"), ValueError),
    ("max_length", 0, ValueError),
    ("max_length", 2.0, TypeError),
])
def test_bad_values_name_the_setting(name, value, error):
    with pytest.raises(error, match=name):
        QueueSettings.from_kwargs(**{name: value})


def test_unknown_setting_is_refused():
    with pytest.raises(ValueError, match="unknown queue setting 'max_lenght'"):
        QueueSettings.from_kwargs(max_lenght=3)


def test_zero_retry_delay_and_counts_are_allowed():
    s = QueueSettings.from_kwargs(retry_cycle_delay=0, receive_retry_count=0, max_retry_cycles=0)
    assert s.attempts_per_message == 1


@pytest.mark.parametrize("retries, cycles", [(0, 0), (1, 1), (2, 3), (5, 2)])
def test_poison_rule_allows_exactly_the_product_of_attempts(retries, cycles):
    s = QueueSettings.from_kwargs(receive_retry_count=retries, max_retry_cycles=cycles)
    steps = [after_failure(s, n) for n in range(1, s.attempts_per_message + 1)]
    assert steps[-1] == POISON
    assert POISON not in steps[:-1]
    assert steps.count(RETRY_LATER) == cycles
    assert steps.count(RETRY_NOW) == retries * (cycles + 1)


@pytest.mark.parametrize("name", ["", "a;b", "a/b", "a b", "$x", "x" * 256, "tab\t"])
def test_bad_queue_names(name):
    with pytest.raises(ValueError):
        validate_queue_name(name)


def test_queue_name_type():
    with pytest.raises(TypeError):
        validate_queue_name(b"orders")


def test_subqueues():
    assert split_subqueue("orders") == ("orders", None)
    assert split_subqueue("orders;poison") == ("orders", "poison")
    assert split_subqueue("orders;retry") == ("orders", "retry")
    with pytest.raises(ValueError, match="unknown sub-queue"):
        split_subqueue("orders;other")


def test_remote_addresses():
    a = parse_remote("tether://127.0.0.1:7601/orders")
    assert (a.host, a.port, a.queue) == ("127.0.0.1", 7601, "orders")
    assert str(a) == "tether://127.0.0.1:7601/orders"
    assert a.authority == "127.0.0.1:7601"
    for bad in ("tether://127.0.0.1/orders", "tether://:7601/orders", "tether://h:7601/",
                "tether://h:7601/a;zz", "tether://h:99999/q", "tether://h:7601/q?x=1",
                "tether://a:7600@evil:1/q"):
        with pytest.raises(ValueError, match="bad queue address"):
            parse_remote(bad)


def test_max_message_size_is_bounded():
    # one record must hold a batch of them: an unbounded size could stop the durable store
    from tether.queue.core.settings import MAX_MESSAGE_SIZE_LIMIT
    limit = MAX_MESSAGE_SIZE_LIMIT
    assert QueueSettings.from_kwargs(max_message_size=limit).max_message_size == limit
    with pytest.raises(ValueError, match="max_message_size must be <="):
        QueueSettings.from_kwargs(max_message_size=limit + 1)
