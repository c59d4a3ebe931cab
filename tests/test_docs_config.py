"""docs/configuration.md is what `python -m tether.docs_config` makes from the settings'
own definitions, and those definitions cover every setting and configuration key."""
from __future__ import annotations

import dataclasses
import pathlib
import re
import subprocess
import sys

import pytest

from tether import docs_config
from tether.queue import config
from tether.queue.auth import USER_KEYS
from tether.queue.core.settings import QueueSettings
from tether.queue.limits import ServiceLimits
from tether.queue.remotes import REMOTE_KEYS
from tether.session.sansio.settings import SessionSettings

ROOT = pathlib.Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "configuration.md"


def test_the_reference_is_up_to_date():
    assert REFERENCE.read_text() == docs_config.render(), \
        "docs/configuration.md is stale: run python -m tether.docs_config"


def test_check_fails_on_a_stale_file_and_writing_fixes_it(tmp_path):
    stale = tmp_path / "configuration.md"
    stale.write_text(docs_config.render().replace("ack_interval", "ack_intervals", 1))
    command = [sys.executable, "-m", "tether.docs_config", "--output", str(stale)]
    checked = subprocess.run([*command, "--check"], capture_output=True, text=True)
    assert checked.returncode == 1 and "stale" in checked.stderr
    assert subprocess.run(command).returncode == 0
    assert subprocess.run([*command, "--check"]).returncode == 0
    assert stale.read_text() == docs_config.render()


@pytest.mark.parametrize("cls", [SessionSettings, QueueSettings])
def test_every_setting_carries_its_check_and_meaning(cls):
    for f in dataclasses.fields(cls):
        assert f.metadata["doc"].strip(), f.name
        assert f.metadata["check"].describe(), f.name
        f.metadata["check"](f.name, f.default)      # the default passes its own check


def _section(title: str) -> str:
    text = REFERENCE.read_text()
    start = text.index(title)
    end = text.find("\n#", start + len(title))
    return text[start:end if end != -1 else None]


def _keys(section: str) -> set[str]:
    return set(re.findall(r"^\| `([^`]+)` \|", section, re.MULTILINE))


def test_every_key_of_the_configuration_file_is_documented():
    tables = {"limits", "queues", "tls", "users", "remotes"}
    assert _keys(_section("### Top-level keys")) == config._TOP - tables
    for table in tables:
        assert f"### `[{table}." in REFERENCE.read_text() or f"### `[{table}]`" in REFERENCE.read_text(), table
    assert _keys(_section("### `[limits]`")) == config._LIMITS
    assert _keys(_section("### `[tls]`")) == config._TLS
    assert _keys(_section("### `[users.NAME]`")) == set(USER_KEYS)
    assert _keys(_section('### `[remotes."HOST:PORT"]`')) == set(REMOTE_KEYS)


def test_the_documented_defaults_are_the_defaults():
    service = config.ServiceConfig()
    top = _section("### Top-level keys") + _section("### `[limits]`")
    for key, value in (("fsync", service.fsync), ("fsync_interval", service.fsync_interval),
                       ("max_frame_bytes", service.max_frame_bytes), ("client_grace", service.client_grace)):
        assert re.search(rf"^\| `{key}` \| `\"?{re.escape(str(value))}\"?` \|", top, re.MULTILINE), key
    limits = ServiceLimits()
    for f in dataclasses.fields(ServiceLimits):
        assert f"| `{f.name}` | `{getattr(limits, f.name)!r}` |" in top, f.name
    queues = _section("## Queue settings")
    assert "| `time_to_live` | `86400.0` | > 0 s, or None |" in queues


def test_the_documented_ranges_are_what_validation_accepts():
    # each range is the check that validates the value: its ends pass, beyond them fails
    for f in dataclasses.fields(QueueSettings):
        check = f.metadata["check"]
        minimum = getattr(check, "minimum", None)
        if minimum is not None:
            check(f.name, minimum)
            with pytest.raises(ValueError, match=f.name):
                check(f.name, minimum - 1)
        maximum = getattr(check, "maximum", None)
        if maximum is not None:
            check(f.name, maximum)
            with pytest.raises(ValueError, match=f.name):
                check(f.name, maximum + 1)
    with pytest.raises(ValueError, match="limits.max_frame_bytes"):
        config.from_dict({"limits": {"max_frame_bytes": config.MIN_FRAME_BYTES - 1}})
    config.from_dict({"limits": {"max_frame_bytes": config.MAX_FRAME_BYTES}, "data_dir": "x"})


def test_the_sessions_guide_agrees_with_the_reference():
    # docs/sessions.md keeps its own table of the same settings, checked against the code by
    # test_session_docs; here its ranges against the reference's
    guide = (ROOT / "docs" / "sessions.md").read_text()
    for f in dataclasses.fields(SessionSettings):
        match = re.search(rf"^\| `{f.name}` \| [^|]+ \| ([^|]+) \|", guide, re.MULTILINE)
        assert match, f.name
        assert match.group(1).strip() == f.metadata["check"].describe(), f.name
