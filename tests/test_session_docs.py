"""Every public name of the session and streams API says what it does and is typed."""
from __future__ import annotations

import inspect

import pytest

from tether.session.adapters.api import Server, connect, serve
from tether.session.adapters.session import Session
from tether.streams.api import create_connection, create_server, open_connection, start_server
from tether.streams.server import StreamServer
from tether.streams.transport import SessionTransport

CLASSES = [Session, Server, StreamServer, SessionTransport]
FUNCTIONS = [connect, serve, create_connection, create_server, open_connection, start_server]


def public_members(cls):
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            yield f"{cls.__name__}.{name}", member.fget, member.fget.__doc__
        elif inspect.isfunction(member):
            # an override of a documented asyncio method inherits its docstring
            yield f"{cls.__name__}.{name}", member, inspect.getdoc(getattr(cls, name))


MEMBERS = [m for cls in CLASSES for m in public_members(cls)] + \
          [(f.__name__, f, f.__doc__) for f in FUNCTIONS]


@pytest.mark.parametrize("name,func,doc", MEMBERS, ids=[m[0] for m in MEMBERS])
def test_public_member_has_a_docstring_and_type_hints(name, func, doc):
    assert doc and doc.strip(), f"{name} has no docstring"
    annotations = func.__annotations__
    assert "return" in annotations, f"{name} has no return type"
    params = [p for p in inspect.signature(func).parameters.values()
              if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    missing = [p.name for p in params if p.name not in annotations]
    assert not missing, f"{name}: parameters without a type: {missing}"


# ---- the tables of docs/sessions.md and docs/wire-protocol.md match the code ----

import ast  # noqa: E402
import dataclasses  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402

import tether  # noqa: E402
from tether.errors import SESSION_FAULTS  # noqa: E402
from tether.session.adapters import tcp, udp  # noqa: E402
from tether.session.sansio import congestion, ended, engine  # noqa: E402
from tether.session.sansio.engine import SessionEngine  # noqa: E402
from tether.session.sansio.frames import FrameType  # noqa: E402
from tether.session.sansio.settings import SessionSettings  # noqa: E402
from tether.session.sansio.state import TRANSITIONS, Event, State  # noqa: E402

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def table(doc: str, heading: str) -> list[list[str]]:
    """The body rows of the first table under `heading` (up to the next heading), as
    stripped cells."""
    text = (DOCS / doc).read_text()
    match = re.search(rf"^#+ {re.escape(heading)}\n(.*?)(?=^#|\Z)", text, re.S | re.M)
    assert match, f"{doc} has no heading {heading!r}"
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in match.group(1).splitlines() if line.startswith("|")]
    rows = [r for r in rows if not all(set(c) <= set("-: ") for c in r)]
    assert len(rows) > 1, f"{doc} {heading!r}: no table"
    return rows[1:]


def code(cell: str) -> str:
    """The text of a cell that is one backticked name."""
    match = re.fullmatch(r"`([^`]+)`", cell)
    assert match, f"expected a `name`, got {cell!r}"
    return match.group(1)


SETTINGS = {code(row[0]): row for row in table("sessions.md", "Settings")}


def test_every_setting_is_in_the_settings_table_and_nothing_else():
    assert set(SETTINGS) == {f.name for f in dataclasses.fields(SessionSettings)}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_documented_default_is_the_default(name):
    cell = SETTINGS[name][1]
    value = ast.literal_eval(cell.removesuffix(" s"))
    actual = getattr(SessionSettings(), name)
    assert value == actual and isinstance(value, bool) == isinstance(actual, bool), \
        f"{name}: documented default {cell!r}, actual {actual!r}"


def _accepted(name: str, value) -> bool:
    try:
        SessionSettings(**{name: value})
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_documented_range_is_what_validation_accepts(name):
    cell = SETTINGS[name][2]
    if cell == "True, False":
        assert _accepted(name, True) and _accepted(name, False)
        return
    integers = re.fullmatch(r"(\d+) \.\. (\d+)", cell)
    if integers:
        low, high = int(integers.group(1)), int(integers.group(2))
        assert _accepted(name, low) and _accepted(name, high), f"{name}: {cell} not accepted"
        assert not _accepted(name, low - 1) and not _accepted(name, high + 1), \
            f"{name}: accepts more than {cell}"
        return
    seconds = re.fullmatch(r"([\[(])(\d+(?:\.\d+)?), (\d+(?:\.\d+)?)([\])]) s", cell)
    assert seconds, f"{name}: range {cell!r} is neither 'lo .. hi', '[lo, hi] s' nor 'True, False'"
    low, high = float(seconds.group(2)), float(seconds.group(3))
    assert _accepted(name, low) == (seconds.group(1) == "["), f"{name}: lower end of {cell}"
    assert _accepted(name, high) == (seconds.group(4) == "]"), f"{name}: upper end of {cell}"
    assert _accepted(name, math.nextafter(low, math.inf)) and _accepted(name, math.nextafter(high, 0))
    assert not _accepted(name, math.nextafter(low, -math.inf))
    assert not _accepted(name, math.nextafter(high, math.inf))


def test_every_session_fault_is_in_the_faults_table_with_its_code():
    rows = {code(row[0]): code(row[1]) for row in table("sessions.md", "Faults")}
    documented = {name: rows.get(name) for name in (cls.__name__ for cls in SESSION_FAULTS.values())}
    assert documented == {cls.__name__: cls.code for cls in SESSION_FAULTS.values()}
    assert set(rows) == set(documented), f"rows for no session fault: {set(rows) - set(documented)}"


STATS = [code(row[0]) for row in table("sessions.md", "Statistics: `Session.stats`")]


@pytest.mark.parametrize("scheme", ["udp", "tcp"])
async def test_every_key_of_session_stats_is_documented(scheme):
    """Real sessions over loopback: both ends' stats, after a round trip."""
    server = await tether.serve(None, f"{scheme}://127.0.0.1:0")
    try:
        host, port = server.address
        async with tether.connect(f"{scheme}://{host}:{port}") as client:
            peer = await server.accept()
            await client.send(b"ping")
            await peer.send(await peer.recv())
            assert await client.recv() == b"ping"
            for stats in (client.stats, peer.stats):
                assert sorted(stats) == sorted(STATS), \
                    f"undocumented: {set(stats) - set(STATS)}; documented but absent: {set(STATS) - set(stats)}"
            peer.close_sending()
    finally:
        server.close()
        await server.wait_closed()


def test_every_frame_type_is_in_the_frame_table():
    rows = table("wire-protocol.md", "Frame types")
    documented = {int(row[0]): re.match(r"`(\w+)`", row[1]).group(1) for row in rows}
    assert documented == {t.value: t.name for t in FrameType}
    for row in rows:  # each array starts with its own type number
        assert row[2].startswith(f"`[{row[0]}, session_id"), row


def test_every_state_transition_is_in_the_states_table():
    documented = {(State[code(a)], Event(b), State[code(c)])
                  for a, b, c in table("wire-protocol.md", "Session states")}
    assert documented == {(s, e, n) for (s, e), n in TRANSITIONS.items()}


def test_the_close_handshake_tables_are_state_pys():
    from tether.session.sansio.state import RECEIVING_TRANSITIONS, SENDING_TRANSITIONS
    section = (DOCS / "wire-protocol.md").read_text().split("\n## Closing\n")[1].split("\n## ")[0]
    tables, rows = [], []
    for line in section.splitlines() + [""]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            tables.append(rows[2:])          # less the header and the rule
            rows = []
    assert len(tables) == 2
    for rows, transitions in zip(tables, (SENDING_TRANSITIONS, RECEIVING_TRANSITIONS)):
        documented = {(state, re.match(r"[a-z-]+", event).group(), code(after))
                      for states, event, after in rows
                      for state in re.findall(r"`([^`]+)`", states)}
        assert documented == {(s.value, e.value, n.value) for (s, e), n in transitions.items()}


def _engine(packet: int, tcp_transport: bool = False, **settings) -> SessionEngine:
    return SessionEngine.client(SessionSettings(**settings), session_id=1, token=os.urandom(16),
                                now=0.0, reliable_transport=tcp_transport, max_packet_size=packet)


# (document, phrase it contains, the code's value, the value the phrase states)
QUOTED = [
    ("wire-protocol.md", "[25 ms, 60 s]", (engine.MIN_RTO, engine.MAX_RTO), (0.025, 60.0)),
    ("wire-protocol.md", "the RTO is 0.333 s", _engine(udp.NETWORK_DATAGRAM).stats["rto"], 0.333),
    ("wire-protocol.md", "at most 65000 bytes", udp.LOOPBACK_DATAGRAM, 65000),
    ("wire-protocol.md", "at most 1452 bytes", udp.NETWORK_DATAGRAM, 1452),
    ("wire-protocol.md", "1388\nbytes in a 1452-byte datagram, 64936 in a 65000-byte one",
     (_engine(1452).fragment_size, _engine(65000).fragment_size), (1388, 64936)),
    ("wire-protocol.md", "all 32 from a 608-byte packet up",
     (_engine(607)._max_ack_ranges, _engine(608)._max_ack_ranges), (31, 32)),
    ("wire-protocol.md", "at most\n  32 ranges", _engine(65000)._max_ack_ranges, 32),
    ("wire-protocol.md", "| 8192, and 8192 payloads in total |", engine.MAX_FRAMES_PER_PACKET, 8192),
    ("wire-protocol.md", "(at most 16384, each until 120 s",
     (ended.ENDED_REMEMBERED, ended.ENDED_LINGER), (16384, 120.0)),
    ("wire-protocol.md", "reconnects after 50 ms, doubling the\nwait after each failed attempt up to 2 s",
     (tcp.RECONNECT_FIRST, tcp.RECONNECT_CAP), (0.05, 2.0)),
    ("wire-protocol.md", "| TCP write buffer | 64 MiB |", tcp.MAX_WRITE_BUFFER, 64 * 1024 * 1024),
    ("wire-protocol.md", "`max(256 KiB, max_message_size + 4096)`",
     (tcp.TCP_PACKET, tcp.max_packet_size(10**6)), (256 * 1024, 10**6 + 4096)),
    ("wire-protocol.md", "at most `min(3, max_retry_count)` times", engine.K_TERMINATE_RETRIES, 3),
    ("wire-protocol.md", "the window starts at 10 packets",
     (_engine(1452, max_transfer_window=64)._cc.cwnd, _engine(1452)._cc.cwnd), (10 * 1452, 8 * 1452)),
    ("wire-protocol.md", "twice the bandwidth times the smoothed RTT, never below 4 packets",
     (congestion.K_WINDOW_GAIN, congestion.K_MODEL_FLOOR_PACKETS), (2.0, 4)),
    ("wire-protocol.md", "pacing runs at 2.885 times the window per RTT",
     congestion.K_STARTUP_GAIN, 2.885),
    ("wire-protocol.md", "the largest of the last 10 such\n  samples", congestion.K_BANDWIDTH_SAMPLES, 10),
    ("wire-protocol.md", "a burst of at most 4\npackets or 2 ms of the rate",
     (engine.PACING_BURST_PACKETS, engine.PACING_BURST_TIME), (4, 0.002)),
    ("sessions.md", "`min(inactivity_timeout / 4, 30 s)`",
     (SessionSettings(inactivity_timeout=600).keepalive_interval,
      SessionSettings(inactivity_timeout=20).keepalive_interval), (30.0, 5.0)),
    ("sessions.md", "aborting those that have not ended within 5\n  seconds",
     tether.session.adapters.api.SERVER_CLOSE_GRACE, 5.0),
]


@pytest.mark.parametrize(("doc", "phrase", "actual", "stated"), QUOTED, ids=[q[1][:40] for q in QUOTED])
def test_numbers_the_documents_quote_are_the_code_s(doc, phrase, actual, stated):
    assert phrase in (DOCS / doc).read_text(), f"{doc} no longer says {phrase!r}: update this test"
    assert actual == stated, f"{doc} says {phrase!r} but the code has {actual!r}: update the document"
