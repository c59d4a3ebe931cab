"""Session settings: every default, range and type, each error naming the setting; unknown
names rejected. (tests/test_session_docs.py checks the table of docs/sessions.md against the
same code.)"""
from __future__ import annotations

import dataclasses
import math

import pytest

from tether.session.sansio.settings import MAX_MESSAGE_SIZE_LIMIT, SessionSettings

# Names and defaults after WCF's <reliableSession> (docs/sessions.md, "Settings").
DEFAULTS = {
    "ack_interval": 0.2,
    "flow_control": True,
    "inactivity_timeout": 600.0,
    "max_pending_channels": 4,
    "max_retry_count": 8,
    "max_transfer_window": 8,
    "ordered": True,
    "max_message_size": 65536,
    "connect_timeout": 10.0,
    "close_timeout": 60.0,
}

# (setting, values accepted, values out of range)
RANGES = [
    ("ack_interval", [0, 0.0, 0.001, 0.2, 60], [-0.001, 60.001, math.inf, -math.inf, math.nan]),
    ("inactivity_timeout", [0.001, 1, 600.0, 86400.0 * 365], [0, 0.0, -1, math.inf, math.nan, 86400.0 * 365 + 1]),
    ("max_pending_channels", [1, 4, 16384], [0, -1, 16385]),
    ("max_retry_count", [1, 8, 1000], [0, -1, 1001]),
    ("max_transfer_window", [1, 8, 4096], [0, -1, 4097]),
    ("max_message_size", [1, 65536, MAX_MESSAGE_SIZE_LIMIT], [0, -1, MAX_MESSAGE_SIZE_LIMIT + 1]),
    ("connect_timeout", [0.001, 10, 3600], [0, -1, 3600.5, math.nan]),
    ("close_timeout", [0.001, 60, 86400], [0, -1, 86400.5, math.inf, math.nan]),
]

# (setting, values of the wrong type)
WRONG_TYPES = [
    ("ack_interval", ["0.2", None, True, [0.2]]),
    ("inactivity_timeout", ["600", None, False]),
    ("max_pending_channels", [4.0, "4", None, True]),
    ("max_retry_count", [8.0, "8", None, True]),
    ("max_transfer_window", [8.5, "8", None, False]),
    ("max_message_size", [65536.0, b"1", None, True]),
    ("connect_timeout", ["10", None, True]),
    ("close_timeout", ["60", None, False]),
    ("flow_control", [1, 0, "yes", None]),
    ("ordered", [1, 0, "true", None]),
]


def test_defaults_are_the_documented_ones() -> None:
    s = SessionSettings()
    assert {f.name: getattr(s, f.name) for f in dataclasses.fields(s)} == DEFAULTS


def test_every_setting_is_covered_here() -> None:
    names = {f.name for f in dataclasses.fields(SessionSettings)}
    assert names == set(DEFAULTS)
    assert {name for name, _, _ in RANGES} | {"flow_control", "ordered"} == names
    assert {name for name, _ in WRONG_TYPES} == names


@pytest.mark.parametrize(("name", "good", "bad"), RANGES, ids=[r[0] for r in RANGES])
def test_range(name: str, good: list, bad: list) -> None:
    for value in good:
        assert getattr(SessionSettings(**{name: value}), name) == value
    for value in bad:
        with pytest.raises(ValueError, match=name):
            SessionSettings(**{name: value})


@pytest.mark.parametrize(("name", "values"), WRONG_TYPES, ids=[w[0] for w in WRONG_TYPES])
def test_wrong_type(name: str, values: list) -> None:
    for value in values:
        with pytest.raises(TypeError, match=name):
            SessionSettings(**{name: value})


@pytest.mark.parametrize("name", ["flow_control", "ordered"])
def test_flags_take_both_values(name: str) -> None:
    assert getattr(SessionSettings(**{name: False}), name) is False
    assert getattr(SessionSettings(**{name: True}), name) is True


def test_unknown_names_are_rejected_naming_them() -> None:
    with pytest.raises(TypeError, match="max_window") as info:
        SessionSettings.from_kwargs(max_window=8)
    # the message lists what is known, so a typo is easy to fix
    assert "max_transfer_window" in str(info.value)
    with pytest.raises(TypeError):
        SessionSettings(max_window=8)  # type: ignore[call-arg]


def test_from_kwargs_validates_like_the_constructor() -> None:
    s = SessionSettings.from_kwargs(max_transfer_window=4096, ordered=False, ack_interval=0)
    assert (s.max_transfer_window, s.ordered, s.ack_interval) == (4096, False, 0)
    with pytest.raises(ValueError, match="max_transfer_window"):
        SessionSettings.from_kwargs(max_transfer_window=0)
    assert SessionSettings.from_kwargs() == SessionSettings()


def test_settings_are_immutable() -> None:
    s = SessionSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.max_transfer_window = 16  # type: ignore[misc]


def test_the_first_bad_setting_is_named_even_among_good_ones() -> None:
    with pytest.raises(ValueError, match="max_retry_count"):
        SessionSettings(max_transfer_window=64, max_retry_count=0, ordered=False)


@pytest.mark.parametrize(("inactivity", "keepalive"), [(600.0, 30.0), (120.0, 30.0), (20.0, 5.0), (0.4, 0.1)])
def test_keepalive_interval_hears_the_peer_several_times_per_inactivity_timeout(inactivity: float,
                                                                             keepalive: float) -> None:
    assert SessionSettings(inactivity_timeout=inactivity).keepalive_interval == pytest.approx(keepalive)
