"""The parts of UDP address validation on their own, without a Demux: address tokens
(address_validation.py), a session's path and its probes (path_validation.py) and the memory
of ended sessions (ended.py). How the Demux uses them is tested in test_session_engine.py;
over real sockets in test_session_udp_security.py."""
from __future__ import annotations

import random

from tether.session import ended as ended_module
from tether.session.address_validation import (
    AMPLIFICATION_LIMIT, TOKEN_LIFETIME, TOKEN_SIZE, AddressTokens, within_limit,
)
from tether.session.path_validation import CHALLENGE_SIZE, MAX_PROBES, PeerPath

HERE = ("192.0.2.1", 4000)
TOKEN = bytes(range(16))


def seeded(seed: int = 1):
    return random.Random(seed).randbytes


# ---- address tokens ----

def test_a_token_is_valid_only_for_what_it_was_issued_for():
    tokens = AddressTokens(seeded())
    token = tokens.issue(HERE, 77, TOKEN, 50.0)
    assert len(token) == TOKEN_SIZE <= 64
    assert tokens.valid(token, HERE, 77, TOKEN, 50.5)
    assert not tokens.valid(token, ("192.0.2.1", 4001), 77, TOKEN, 50.5)
    assert not tokens.valid(token, ("192.0.2.2", 4000), 77, TOKEN, 50.5)
    assert not tokens.valid(token, HERE, 78, TOKEN, 50.5)
    assert not tokens.valid(token, HERE, 77, bytes(16), 50.5)
    for i in range(len(token)):                       # any changed byte, time included
        bad = bytearray(token)
        bad[i] ^= 0x01
        assert not tokens.valid(bytes(bad), HERE, 77, TOKEN, 50.5)
    assert not tokens.valid(token[:-1], HERE, 77, TOKEN, 50.5)
    assert not AddressTokens(seeded(2)).valid(token, HERE, 77, TOKEN, 50.5)   # another server


def test_a_token_lives_at_most_its_lifetime_and_never_comes_from_the_future():
    tokens = AddressTokens(seeded())
    token = tokens.issue(HERE, 1, TOKEN, 100.7)       # stamped with second 100
    assert tokens.valid(token, HERE, 1, TOKEN, 100 + TOKEN_LIFETIME)
    assert not tokens.valid(token, HERE, 1, TOKEN, 100 + TOKEN_LIFETIME + 0.001)
    assert not tokens.valid(token, HERE, 1, TOKEN, 99.9)


def test_the_same_offer_within_a_second_gets_the_same_token():
    # so a duplicated or replayed CreateSequence does not make the client start over
    tokens = AddressTokens(seeded())
    assert tokens.issue(HERE, 1, TOKEN, 3.1) == tokens.issue(HERE, 1, TOKEN, 3.9)
    assert tokens.issue(HERE, 1, TOKEN, 3.9) != tokens.issue(HERE, 1, TOKEN, 4.0)


def test_the_amplification_limit():
    assert AMPLIFICATION_LIMIT == 3
    assert within_limit(30, 10) and not within_limit(31, 10) and not within_limit(1, 0)


# ---- a session's path ----

def challenge_of(data: bytes) -> bytes:
    return b"C" * 13 + data          # 29 bytes, as a real PathChallenge with a 63-bit id


def test_a_probe_is_sent_within_the_budget_and_paced():
    path = PeerPath(HERE)
    there = ("198.51.100.7", 9)
    probe = lambda size, now: path.probe(there, size, now, 0.1, seeded(), challenge_of)
    assert probe(5, 0.0) is None                      # 5 bytes received: 15 to spend, < 29
    first = probe(5, 0.0)                             # 10 received: 30 to spend
    assert first is not None and len(first) == 13 + CHALLENGE_SIZE
    assert probe(100, 0.05) is None                   # budget enough, but not an interval yet
    again = probe(1, 0.1)
    assert again == first                             # the same challenge, resent
    assert path.address == HERE


def test_only_the_echo_from_the_challenged_address_moves_the_path():
    path = PeerPath(HERE)
    there = ("198.51.100.7", 9)
    data = path.probe(there, 1000, 0.0, 0.1, seeded(), lambda d: d)
    assert not path.answered(there, bytes(CHALLENGE_SIZE))
    assert not path.answered(("198.51.100.8", 9), data)
    assert path.address == HERE
    assert path.answered(there, data) and path.address == there
    assert not path.answered(there, data)             # probes end with the move


def test_an_address_never_challenged_cannot_answer():
    path = PeerPath(HERE)
    there = ("198.51.100.7", 9)
    path.probe(there, 1, 0.0, 0.1, seeded(), lambda d: d)    # seen, but no budget to challenge
    data = seeded()(CHALLENGE_SIZE)                  # even guessing the very data
    assert not path.answered(there, data) and path.address == HERE


def test_probes_are_bounded():
    path = PeerPath(HERE)
    sent = {}
    for i in range(MAX_PROBES + 2):
        sent[i] = path.probe(("x", i), 1000, 0.0, 0.1, seeded(i), lambda d: d)
    assert not path.answered(("x", 0), sent[0])      # pushed out
    assert path.answered(("x", MAX_PROBES + 1), sent[MAX_PROBES + 1])


# ---- ended sessions ----

def test_ended_ids_are_remembered_graceful_or_not():
    ended = ended_module.EndedSessions()
    ended.add(1, 10.0, None)
    ended.add(2, 10.0, 7)
    assert ended.ended(1, 11.0) and ended.ended(2, 11.0) and not ended.ended(3, 11.0)
    assert ended.terminate_number(1, 11.0) is None    # faulted: no TerminateSequence to repeat
    assert ended.terminate_number(2, 11.0) == 7


def test_ended_ids_are_bounded_in_number_and_time(monkeypatch):
    monkeypatch.setattr(ended_module, "ENDED_IDS", 3)
    ended = ended_module.EndedSessions()
    for sid in range(1, 6):
        ended.add(sid, float(sid), None)
    assert [ended.ended(sid, 5.0) for sid in range(1, 6)] == [False, False, True, True, True]
    assert len(ended) == 3
    later = 5.0 + ended_module.ENDED_ID_LIFETIME + 1
    assert not ended.ended(5, later)                  # too old, even if still held
    ended.add(9, later, 0)
    assert len(ended) == 1 and ended.ended(9, later)


def test_an_ended_id_costs_about_a_hundred_bytes():
    # (what ended.py promises for ENDED_IDS; a graceful end also keeps its TIME_WAIT entry)
    import tracemalloc
    ended = ended_module.EndedSessions()
    rng = random.Random(3)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(10_000):
            ended.add(rng.getrandbits(63) | 1, i * 0.001, None)
        per_id = (tracemalloc.get_traced_memory()[0] - before) / 10_000
    finally:
        tracemalloc.stop()
    assert per_id < 110, per_id
