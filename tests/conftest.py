"""Shared fixtures. `twins(name)` gives the compiled module and its pure-Python twin."""
from __future__ import annotations

import importlib

import pytest

# shared fixtures from modules of their own
pytest_plugins = ["full_disk", "system_tools", "postgres_cluster"]


def twins(name: str):
    """(native, reference) modules for ext/NAME.pyx and src/tether/_reference/NAME.py."""
    return (
        importlib.import_module(f"tether._native.{name}"),
        importlib.import_module(f"tether._reference.{name}"),
    )


@pytest.fixture
def reference_journal_io(monkeypatch):
    """Journal batches written through the pure-Python twin of journal_io, which calls
    os.write and os.fdatasync: for tests that count or fail those with monkeypatch (the
    native twin makes the calls in C, with the GIL released)."""
    from tether._reference import journal_io
    from tether.queue.store import segment_files

    monkeypatch.setattr(segment_files, "journal_io", journal_io)
    return journal_io


def pytest_configure(config):
    # Tests must run the compiled extensions: a missing build is an error, not a skip.
    import tether._native  # noqa: F401



def pytest_asyncio_loop_factories(config, item):
    """Async tests run on uvloop, as users do; tests that need plain asyncio make their own loop."""
    import uvloop

    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(params=["memory", "durable"])
async def qm(request, tmp_path):
    """A queue manager, in memory and journal-backed (each test runs on both)."""
    import tether

    data_dir = None if request.param == "memory" else tmp_path / "qm"
    manager = await tether.QueueManager.open(data_dir)
    try:
        yield manager
    finally:
        await manager.close()


@pytest.fixture(params=["embedded", "client", "postgres-embedded", "postgres-client"])
async def api(request, tmp_path):
    """(a queue manager with a service, what the test drives: the manager itself or a
    QueueClient of its service): the same test embedded and over the wire, on the journal
    and on the PostgreSQL store (a fresh database of the run's private cluster)."""
    import tether

    store = tmp_path / "qm"
    if request.param.startswith("postgres"):
        store = request.getfixturevalue("postgres_url")
    qm = await tether.QueueManager.open(store, listen="tcp://127.0.0.1:0")
    try:
        if request.param.endswith("embedded"):
            yield qm, qm
        else:
            async with tether.QueueClient.connect(qm.services[0].url) as client:
                yield qm, client
    finally:
        await qm.close()
