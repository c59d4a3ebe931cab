"""Random operation sequences against a model: after close and reopen (and after
compactions in between) the journal rebuilds exactly the queues the model expects."""
from __future__ import annotations

import random

import pytest

import tether

QUEUES = ("a", "b")


async def run_sequence(directory, seed: int, steps: int) -> dict[str, dict[str, tuple[bytes, int]]]:
    """Random sends, receives, completes, abandons, transactions and compactions on an open
    manager; returns the model: queue -> id -> (body, failed deliveries)."""
    rng = random.Random(seed)
    model: dict[str, dict[str, tuple[bytes, int]]] = {q: {} for q in QUEUES}
    held: list[tuple[str, tether.Message]] = []
    async with tether.QueueManager.open(directory, fsync="never") as qm:
        for q in QUEUES:
            await qm.create_queue(q, receive_retry_count=1000)
        for step in range(steps):
            action = rng.random()
            if action < 0.35:
                q = rng.choice(QUEUES)
                body = b"%d-%d" % (seed, step)
                msg_id = await qm.send(q, body)
                model[q][msg_id] = (body, 0)
            elif action < 0.6:
                q = rng.choice(QUEUES)
                m = await qm.receive(q, timeout=0)
                if m is not None:
                    held.append((q, m))
            elif action < 0.75 and held:
                q, m = held.pop(rng.randrange(len(held)))
                await m.complete()
                del model[q][m.id]
            elif action < 0.85 and held:
                q, m = held.pop(rng.randrange(len(held)))
                await m.abandon()
                body, failures = model[q][m.id]
                model[q][m.id] = (body, failures + 1)
            elif action < 0.95:
                src, dst = rng.sample(QUEUES, 2)
                commit = rng.random() < 0.7
                try:
                    async with qm.transaction() as tx:
                        m = await tx.receive(src, timeout=0)
                        new_id = await tx.send(dst, b"tx-%d" % step)
                        if not commit:
                            raise LookupError
                except LookupError:
                    if m is not None:
                        body, failures = model[src][m.id]
                        model[src][m.id] = (body, failures + 1)
                else:
                    model[dst][new_id] = (b"tx-%d" % step, 0)
                    if m is not None:
                        del model[src][m.id]
            else:
                await qm.compact()
    return model


@pytest.mark.parametrize("seed", range(10))
async def test_reopen_rebuilds_the_model(tmp_path, seed):
    directory = tmp_path / "qm"
    model = await run_sequence(directory, seed, 150)
    async with tether.QueueManager.open(directory) as qm:
        for q in QUEUES:
            got = {}
            while (m := await qm.receive(q, timeout=0)) is not None:
                got[m.id] = (m.body, m.attempts)
                assert m.delivery_count == m.attempts + 1
            assert got == model[q]
