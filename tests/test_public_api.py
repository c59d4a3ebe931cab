"""The package's face: what `import tether` offers, to a reader (dir, help), to a type
checker (py.typed, annotations, the settings' TypedDicts) and to `async with`."""
from __future__ import annotations

import dataclasses
import datetime
import pathlib
import pydoc
import re
import subprocess
import sys
import typing

import pytest

import tether
from tether.queue.core.settings import QueueOptions, QueueSettings
from tether.queue.manager import ListenOptions
from tether.session.sansio.settings import SessionOptions, SessionSettings, SessionTuning

API = ["connect", "serve", "Session", "Server", "SessionSettings", "open_connection", "start_server",
       "create_connection", "create_server", "SessionTransport", "QueueManager", "QueueClient", "Message",
       "QueueSettings", "NATIVE", "TetherError", "QueueError", "QueueNotFound"]


def test_dir_and_all_list_the_public_names():
    for name in API:
        assert name in dir(tether), name
        assert name in tether.__all__, name
    for name in tether.__all__:
        assert getattr(tether, name) is not None


def test_help_lists_the_public_names():
    text = pydoc.render_doc(tether, renderer=pydoc.plaintext)
    for name in ("connect", "serve", "QueueManager", "QueueClient", "Message", "NATIVE"):
        assert re.search(rf"\b{name}\b", text), name
    # the functions and classes are documented there, not only named
    assert "Open a client session" in text
    assert "Listen for sessions" in text


def test_importing_tether_stays_cheap():
    code = "import sys, tether; print(sorted(m for m in sys.modules if m.startswith('tether')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(out) == ["tether", "tether.errors"]


def test_native_says_the_compiled_core_is_in_use():
    assert tether.NATIVE is True      # conftest refuses to run the tests on an unbuilt core


def test_the_package_is_typed():
    assert (pathlib.Path(tether.__file__).parent / "py.typed").is_file()


async def test_serve_is_an_async_context_manager():
    async with tether.serve(None, "tcp://127.0.0.1:0") as server:
        assert isinstance(server, tether.Server) and server.sockets
        async with tether.connect(server.url_bound) as client:
            peer = await server.accept()
            await client.send(b"hello")
            assert await peer.recv() == b"hello"
    assert server.sockets == ()
    await server.wait_closed()


async def test_serve_and_connect_refuse_bad_settings_at_the_call():
    with pytest.raises(TypeError, match="unknown session setting 'ack_intervall'"):
        tether.serve(None, "udp://127.0.0.1:0", ack_intervall=0.1)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="max_transfer_window"):
        tether.connect("udp://127.0.0.1:9", max_transfer_window=0)


def _annotations(typed_dict: type) -> dict[str, object]:
    return typing.get_type_hints(typed_dict)


def _field_types(cls: type) -> dict[str, object]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def test_session_options_are_the_session_settings():
    assert _annotations(SessionOptions) == _field_types(SessionSettings)
    tuning = _field_types(SessionSettings)
    del tuning["connect_timeout"]
    assert _annotations(SessionTuning) == tuning
    assert not SessionOptions.__total__


def test_queue_options_are_the_queue_settings_and_take_timedeltas():
    options = _annotations(QueueOptions)
    fields = _field_types(QueueSettings)
    assert options.keys() == fields.keys()
    for name, annotation in options.items():
        durations = {datetime.timedelta} if name == "retry_cycle_delay" or name == "time_to_live" \
            or name == "validity_duration" else set()
        assert set(typing.get_args(annotation) or (annotation,)) == \
            set(typing.get_args(fields[name]) or (fields[name],)) | durations, name
    assert QueueSettings.from_kwargs(retry_cycle_delay=datetime.timedelta(minutes=1)).retry_cycle_delay == 60.0


def test_listen_options_are_the_session_settings_and_the_service_settings():
    assert set(_annotations(ListenOptions)) == set(_annotations(SessionOptions)) | {"client_grace", "limits"}


MYPY_PROGRAM = '''
import tether

async def main() -> None:
    server = await tether.serve(None, "udp://127.0.0.1:0", max_transfer_window=64)
    reveal_type(server)
    async with tether.connect("udp://127.0.0.1:9", ordered=False) as session:
        reveal_type(session)
    reveal_type(await tether.connect("udp://127.0.0.1:9"))
    qm = await tether.QueueManager.open(None)
    reveal_type(await qm.create_queue("orders", time_to_live=60.0))
    await tether.connect("udp://127.0.0.1:9", max_transfer_window="64")
    await tether.connect("udp://127.0.0.1:9", window=64)
    reveal_type(tether.NATIVE)
'''


@pytest.mark.slow
def test_a_type_checker_sees_the_api(tmp_path):
    """mypy --strict on a program using the API: the types it reveals, and the mistakes it
    catches (a wrong type or an unknown name for a setting)."""
    pytest.importorskip("mypy")
    program = tmp_path / "program.py"
    program.write_text(MYPY_PROGRAM)
    # an installed tether is found as a user's would be (site-packages, py.typed); a
    # checkout's src/ through MYPYPATH
    where = pathlib.Path(tether.__file__).resolve().parent.parent
    env = {"PATH": "/usr/bin:/bin"} | ({"MYPYPATH": str(where)} if where.name == "src" else {})
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"),
         "--follow-imports", "silent", "--python-version", "3.11", str(program)],
        capture_output=True, text=True, cwd=tmp_path, env=env)
    out = result.stdout
    assert 'Revealed type is "tether.session.adapters.api.Server"' in out, out
    assert out.count('Revealed type is "tether.session.adapters.session.Session"') == 2, out
    assert 'Revealed type is "tether.queue.core.settings.QueueSettings"' in out, out
    assert re.search(r'Revealed type is "(builtins\.)?bool"', out), out
    assert 'Argument "max_transfer_window" to "connect" has incompatible type "str"; expected "int"' in out, out
    assert 'Unexpected keyword argument "window" for "connect"' in out, out
    assert out.count("error:") == 2, out
