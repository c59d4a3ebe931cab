"""The parts of UDP address validation on their own, without a Demux: address tokens
(address_validation.py), a session's path and its probes (path_validation.py) and the memory
of ended sessions (ended.py). How the Demux uses them is tested in test_session_engine.py;
over real sockets in test_session_udp_security.py."""
from __future__ import annotations

import random

from tether.session.sansio import ended as ended_module
from tether.session.sansio.address_validation import (
    AMPLIFICATION_LIMIT, TOKEN_LIFETIME, TOKEN_SIZE, AddressTokens, within_limit,
)
from tether.session.sansio.path_validation import (
    CHALLENGE_SIZE, CHALLENGE_WINDOW, PathChallenges, PeerPath,
)

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

THERE = ("198.51.100.7", 9)


def challenge_of(data: bytes) -> bytes:
    return b"C" * 13 + data          # 29 bytes, as a real PathChallenge with a 63-bit id


def test_a_challenge_is_at_most_three_times_its_packet_and_paced():
    path, challenges = PeerPath(HERE), PathChallenges(seeded())
    probe = lambda size, now, source=THERE: path.probe(source, size, now, 0.1, 77, challenges,
                                                       challenge_of)
    assert probe(9, 0.0) is None                      # 27 < 29: no answer at all
    first = probe(10, 0.0)
    assert first is not None and len(first) == 13 + CHALLENGE_SIZE
    assert probe(100, 0.05) is None                   # the same address within the interval
    assert probe(100, 0.05, ("192.0.2.9", 1)) is not None   # another address: its own
    assert probe(10, 0.2) == first                    # the same data, within its window
    assert path.address == HERE


def test_only_the_echo_from_the_challenged_address_moves_the_path():
    path, challenges = PeerPath(HERE), PathChallenges(seeded())
    data = path.probe(THERE, 1000, 0.0, 0.1, 77, challenges, lambda d: d)
    assert not path.answered(THERE, bytes(CHALLENGE_SIZE), 0.1, 77, challenges)
    assert not path.answered(("198.51.100.8", 9), data, 0.1, 77, challenges)
    assert not path.answered(THERE, data, 0.1, 78, challenges)            # another session
    assert not path.answered(THERE, data, 0.1, 77, PathChallenges(seeded(2)))  # another server
    assert path.address == HERE and path.epoch == 0
    assert path.answered(THERE, data, 0.1, 77, challenges)
    assert path.address == THERE and path.epoch == 1
    path.address = HERE                               # (as if it moved back by a new challenge)
    assert not path.answered(THERE, data, 0.2, 77, challenges)   # an old answer: a new epoch


def test_an_answer_is_taken_for_one_to_two_windows():
    challenges = PathChallenges(seeded())
    data = challenges.data(77, THERE, 0, CHALLENGE_WINDOW - 0.5)
    assert challenges.answers(data, 77, THERE, 0, 2 * CHALLENGE_WINDOW - 0.01)
    assert not challenges.answers(data, 77, THERE, 0, 2 * CHALLENGE_WINDOW)


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
