"""A seeded simulation family for the PostgreSQL store: competing queue managers on one
database, in real time (a shared database cannot run on the queue simulation's simulated
clock, tests/qsim/, whose checks are per step of one core).

Each seed picks the queue's retry settings, two or three managers with consumers each,
and a fate per message: `ok` (fails a chosen number of times, by abandon, an expired lock
or a rolled-back transaction, then is completed), `tx` (sent to `tx`, from where only
transactions take it, failing a chosen number of times, then moving it on to `out`),
`poison` (always fails) or `expire` (its time-to-live ends before it becomes visible). One
manager may crash mid-run (connections dropped, its lease left to run out). At the end
every message is accounted for exactly once: completed once after exactly its failures,
poison handled per receive_error_handling after exactly (receive_retry_count+1)*
(max_retry_cycles+1) deliveries, expired ones in $dead with reason `expired`; nothing
doubled, nothing else anywhere. (After a crash a lock the crashed manager held may come back
uncounted, its lease ran out first, or as one more failed delivery, its validity_duration
did: both are allowed then, and so is a message that this failure made poison.)
A failing seed names itself:
    TETHER_PGSIM_SEED=N python -m pytest tests/test_queue_postgres_sim.py -k replay
"""
from __future__ import annotations

import asyncio
import os
import random
from collections import Counter

import pytest

import tether
from tether import LockLost, QueueError, TransactionError

CI_SEEDS = 6
CLIENT_GRACE = 1.0


class Seed:
    """One seeded run (see the module docstring)."""

    def __init__(self, seed: int, url: str) -> None:
        self.seed = seed
        self.url = url
        rng = self.rng = random.Random(seed)
        self.settings = dict(receive_retry_count=rng.choice([0, 1, 2]), max_retry_cycles=rng.choice([0, 1]),
                             retry_cycle_delay=rng.uniform(0.1, 0.3),
                             receive_error_handling=rng.choice(["move", "drop", "reject"]),
                             validity_duration=rng.uniform(0.4, 0.8))
        self.per_message = (self.settings["receive_retry_count"] + 1) * (self.settings["max_retry_cycles"] + 1)
        self.fates: dict[bytes, tuple[str, int]] = {}
        for i in range(rng.randint(40, 90)):
            fate = rng.choices(["ok", "tx", "poison", "expire"], [6, 2, 1, 1])[0]
            failures = rng.randint(0, self.per_message - 1) if fate in ("ok", "tx") else 0
            self.fates[b"%d.%s" % (i, fate.encode())] = (fate, failures)
        self.crash = rng.random() < 0.6
        self.completed: Counter[bytes] = Counter()
        self.completed_at: dict[bytes, int] = {}
        self.uncertain: set[bytes] = set()       # a complete or commit cut short by the crash
        self.errors: list[str] = []

    def fail(self, text: str) -> None:
        self.errors.append(f"seed {self.seed}: {text}")

    async def consume(self, qm: tether.QueueManager, rng: random.Random, stop: asyncio.Event) -> None:
        validity = self.settings["validity_duration"]
        while not stop.is_set():
            try:
                if rng.random() < 0.3:
                    await self._in_transaction(qm, rng)
                    continue
                m = await qm.receive(rng.choice(["in", "out"]), timeout=0.1)
                if m is None:
                    continue
                body = m.body
                fate, failures = self.fates.get(body.rstrip(b"!"), ("?", 0))
                if body.endswith(b"!") or fate == "ok" and m.delivery_count > failures:
                    try:
                        await m.complete()
                    except LockLost:
                        continue          # (its lock ran out first: a failure after all)
                    except QueueError:
                        self.uncertain.add(body)
                        raise
                    self._completed(body, m.delivery_count)
                elif rng.random() < 0.2:
                    await asyncio.sleep(validity * 1.3)     # the lock runs out: a failure
                else:
                    await m.abandon()
            except QueueError:
                if stop.is_set() or qm.operations.store._closed:
                    return
                raise

    async def _in_transaction(self, qm: tether.QueueManager, rng: random.Random) -> None:
        pending = None
        try:
            async with qm.transaction() as tx:
                m = await tx.receive(rng.choice(["in", "tx"]), timeout=0.1)
                if m is not None:
                    fate, failures = self.fates.get(m.body, ("?", 0))
                    if not (fate in ("ok", "tx") and m.delivery_count > failures):
                        raise _RollBack()
                    if fate == "tx":
                        await tx.send("out", m.body + b"!")
                    pending = (m.body, m.delivery_count, fate)      # and commit
        except _RollBack:
            return
        except TransactionError:
            return                             # a lock ran out: rolled back, a failure
        except QueueError:
            if pending is not None:
                self.uncertain.add(pending[0] if pending[2] == "ok" else pending[0] + b"!")
            raise
        if pending is not None and pending[2] == "ok":
            self._completed(pending[0], pending[1])

    def _completed(self, body: bytes, delivery_count: int) -> None:
        self.completed[body] += 1
        self.completed_at[body] = delivery_count

    async def run(self) -> None:
        rng = self.rng
        managers = [await tether.QueueManager.open(self.url, client_grace=CLIENT_GRACE)
                    for _ in range(rng.choice([2, 3]))]
        crashed = None
        stop = asyncio.Event()
        tasks: dict[int, list[asyncio.Task]] = {}
        try:
            for qm in managers:
                for name in ("in", "tx", "out"):
                    await qm.create_queue(name, **self.settings)
            for n, qm in enumerate(managers):
                tasks[n] = [asyncio.create_task(self.consume(qm, random.Random(f"{self.seed}-{n}-{c}"), stop))
                            for c in range(rng.randint(1, 3))]
            bodies = list(self.fates)
            rng.shuffle(bodies)
            for start in range(0, len(bodies), 10):
                sender = rng.choice(managers)
                for body in bodies[start:start + 10]:
                    if self.fates[body][0] == "tx":
                        await sender.send("tx", body)
                    elif self.fates[body][0] == "expire":
                        await sender.send("in", body, time_to_live=0.2, delay=0.6)
                    elif rng.random() < 0.5:
                        await sender.send("in", body, priority=rng.randint(0, 7))
                    else:
                        async with sender.transaction() as tx:
                            await tx.send("in", body)
                await asyncio.sleep(rng.uniform(0, 0.1))
            if self.crash:
                await asyncio.sleep(rng.uniform(0, 0.5))
                crashed = managers.pop(rng.randrange(1, len(managers)))
                crashed.operations.abort()
            await self._settle(managers[0])
        finally:
            stop.set()
            for group in tasks.values():
                for task in group:
                    task.cancel()
            await asyncio.gather(*(t for group in tasks.values() for t in group), return_exceptions=True)
            for task_group in tasks.values():
                for task in task_group:
                    if not task.cancelled() and task.exception() is not None:
                        self.fail(f"a consumer failed: {task.exception()!r}")
            checker = managers[0]
            try:
                await self._check(checker)
            finally:
                for qm in managers:
                    await qm.close()

    async def _settle(self, qm: tether.QueueManager) -> None:
        """Until every message has met its fate (bounded)."""
        expected_done = sum(1 for fate, _ in self.fates.values() if fate in ("ok", "tx"))
        for _ in range(300):
            infos = [await qm.queue_info(name) for name in ("in", "tx", "out")]
            busy = any(i["depth"] or i["in_flight"] or i["retrying"] or i["scheduled"] for i in infos)
            done = sum(1 for body, (fate, _) in self.fates.items()
                       if fate == "ok" and (self.completed[body] or body in self.uncertain)
                       or fate == "tx" and (self.completed[body + b"!"] or body + b"!" in self.uncertain))
            if not busy and (done >= expected_done or self.crash):
                return      # (after a crash one may have become poison instead: _check decides)
            await asyncio.sleep(0.1)
        self.fail(f"did not settle: {[dict(i) for i in infos]}, {done} of {expected_done} done")

    async def _check(self, qm: tether.QueueManager) -> None:
        left: dict[str, list] = {}
        for name in ("in", "tx", "out", "in;poison", "tx;poison", "out;poison", "$dead", "in;retry"):
            left[name] = []
            while True:
                m = await qm.receive(name, timeout=0)
                if m is None:
                    break
                left[name].append(m)
                await m.complete()
        seen = Counter(self.completed)
        for name, messages in left.items():
            for m in messages:
                seen[m.body] += 1
        for body, count in seen.items():
            if count > 1:
                self.fail(f"{body!r} is there {count} times (completed {self.completed[body]})")
        handling = self.settings["receive_error_handling"]
        for body, (fate, failures) in self.fates.items():
            if fate in ("ok", "tx") and self.crash and self._poisoned(body, left, handling):
                continue        # (a lock the crash left ran out before the lease: one failure more)
            if fate == "ok":
                # a lock the crashed manager held comes back uncounted when its lease runs out
                # first, or as a failed delivery when its validity_duration does
                allowed = {failures + 1, failures + 2} if self.crash else {failures + 1}
                if self.completed[body] == 1 and self.completed_at[body] not in allowed:
                    self.fail(f"{body!r} completed at delivery {self.completed_at[body]}, not {sorted(allowed)}")
                if self.completed[body] + (body in self.uncertain) < 1:
                    self.fail(f"{body!r} was never completed; left: {_where(left, body)}")
            elif fate == "tx":
                moved = body + b"!"
                if self.completed[moved] + (moved in self.uncertain) < 1:
                    self.fail(f"{body!r} never made it through 'out'; left: {_where(left, body)}")
                if seen[body]:
                    self.fail(f"{body!r} was moved on and is still there: {_where(left, body)}")
            elif fate == "expire":
                dead = [m for m in left["$dead"] if m.body == body]
                if len(dead) != 1 or dead[0].dead_letter_reason != "expired":
                    self.fail(f"{body!r} should be in $dead as expired: {_where(left, body)}")
            else:
                if handling == "move":
                    poison = [m for m in left["in;poison"] if m.body == body]
                    if len(poison) != 1 or poison[0].attempts != self.per_message:
                        self.fail(f"{body!r} should be in in;poison after {self.per_message} failures: "
                                  f"{_where(left, body)}")
                elif handling == "reject":
                    dead = [m for m in left["$dead"] if m.body == body]
                    if len(dead) != 1 or dead[0].dead_letter_reason != "rejected":
                        self.fail(f"{body!r} should be in $dead as rejected: {_where(left, body)}")
                elif seen[body]:
                    self.fail(f"{body!r} should have been dropped: {_where(left, body)}")
        if self.errors:
            raise AssertionError("\n".join(self.errors[:20]) + f"\nsettings: {self.settings}, crash: {self.crash}")


    def _poisoned(self, body: bytes, left: dict, handling: str) -> bool:
        """True when `body` met receive_error_handling after every attempt failed."""
        if self.completed[body] or self.completed[body + b"!"]:
            return False
        if handling == "move":
            return any(m.body == body and m.attempts == self.per_message
                       for name in ("in;poison", "tx;poison") for m in left[name])
        if handling == "reject":
            return any(m.body == body and m.dead_letter_reason == "rejected" for m in left["$dead"])
        return not any(m.body in (body, body + b"!") for ms in left.values() for m in ms)


class _RollBack(Exception):
    pass


def _where(left: dict, body: bytes) -> list:
    return [(name, m.delivery_count, m.attempts, m.dead_letter_reason) for name, ms in left.items()
            for m in ms if m.body in (body, body + b"!")]


@pytest.mark.parametrize("seed", range(CI_SEEDS))
async def test_competing_managers_seed(seed, postgres_url):
    await Seed(seed, postgres_url).run()


@pytest.mark.skipif("TETHER_PGSIM_SEED" not in os.environ, reason="set TETHER_PGSIM_SEED to replay one seed")
async def test_replay(postgres_url):
    await Seed(int(os.environ["TETHER_PGSIM_SEED"]), postgres_url).run()


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(CI_SEEDS, CI_SEEDS + 200))
async def test_competing_managers_soak(seed, postgres_url):
    await Seed(seed, postgres_url).run()
