"""Headers are checked by encoding them once at the sender's queue manager (nesting at most
32 deep, at most max_message_size bytes), never break the store for anyone, and reach
receivers read-only."""
from __future__ import annotations

import pytest

import tether
from tether.queue.core.headers import MAX_HEADER_DEPTH


def _nested(depth: int) -> dict:
    """A header map whose innermost map is `depth` maps deep (the map itself is 1)."""
    inner: dict = {"leaf": 1}
    for _ in range(depth - 1):
        inner = {"k": inner}
    return inner


def _nested_list(depth: int) -> list:
    """An array nested so that, inside the header map, it reaches `depth` + 1 levels."""
    inner: list = [1]
    for _ in range(depth - 1):
        inner = [inner]
    return inner


async def test_deeply_nested_headers_are_refused_and_the_store_keeps_working(tmp_path):
    async with tether.QueueManager.open(tmp_path) as qm:
        await qm.create_queue("q")
        with pytest.raises(ValueError, match="nested more than 32 deep"):
            await qm.send("q", b"x", headers=_nested(1021))
        with pytest.raises(ValueError, match="nested more than 32 deep"):
            await qm.send("q", b"x", headers={"list": _nested_list(MAX_HEADER_DEPTH)})
        # the durable store still takes work, for this sender and everyone else
        sent = await qm.send("q", b"fine", headers=_nested(MAX_HEADER_DEPTH))
        m = await qm.receive("q", timeout=0)
        assert m.id == sent and m.headers == _nested(MAX_HEADER_DEPTH)
        await m.complete()
    async with tether.QueueManager.open(tmp_path) as qm:
        assert (await qm.queue_info("q")).depth == 0


async def test_headers_over_max_message_size_are_a_queue_message_too_large(tmp_path):
    async with tether.QueueManager.open(tmp_path) as qm:
        await qm.create_queue("small", max_message_size=100)
        with pytest.raises(tether.QueueError) as refused:
            await qm.send("small", b"x", headers={"big": "y" * 200})
        assert isinstance(refused.value, tether.MessageTooLarge)
        assert "headers encode to" in str(refused.value)
        assert (await qm.queue_info("small")).depth == 0


@pytest.mark.parametrize("headers, error", [
    ({"k": object()}, TypeError),
    ({1: "numeric name"}, TypeError),
    ({"k": 1 << 70}, ValueError),
    (["not", "a", "map"], TypeError),
])
async def test_bad_headers_are_refused_before_anything_is_queued(qm, headers, error):
    await qm.create_queue("q")
    with pytest.raises(error):
        await qm.send("q", b"x", headers=headers)
    assert (await qm.queue_info("q")).depth == 0


async def test_received_headers_are_read_only_and_changes_cannot_reach_the_store(qm):
    await qm.create_queue("q")
    await qm.send("q", b"x", headers={"k": "v", "nested": {"a": [1, 2]}})
    m = await qm.receive("q", timeout=0)
    with pytest.raises(TypeError):
        m.headers["k"] = "changed"
    with pytest.raises(TypeError):
        m.headers["nested"]["a"] = 3
    with pytest.raises(AttributeError):
        m.headers["nested"]["a"].append(3)      # arrays are tuples
    await m.abandon()
    again = await qm.receive("q", timeout=0)
    assert again.headers == {"k": "v", "nested": {"a": (1, 2)}}
    # a received message's headers can be sent on as they are
    await qm.send("q", b"copy", headers=again.headers)
    await again.complete()
    copy = await qm.receive("q", timeout=0)
    assert copy.headers == again.headers


async def test_a_remote_client_gets_the_same_checks_and_read_only_headers(tmp_path):
    async with tether.QueueManager.open(tmp_path, listen="tcp://127.0.0.1:0") as qm:
        await qm.create_queue("q")
        async with tether.QueueClient.connect(qm.services[0].url) as client:
            with pytest.raises(ValueError, match="nested more than 32 deep"):
                await client.send("q", b"x", headers=_nested(1021))
            await client.send("q", b"x", headers={"k": [1, {"n": None}]})
            m = await client.receive("q", timeout=5)
            assert m.headers == {"k": (1, {"n": None})}
            with pytest.raises(TypeError):
                m.headers["k"] = 2
            await m.complete()
