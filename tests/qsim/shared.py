"""`SharedRun`: one seeded run of several queue managers on one PostgreSQL database, on the
simulated clock (sim_loop.py: every statement runs alone, so a seed replays the same).

Each seed picks the retry settings of queue `in`, two or three managers, consumers on each
(plain, in transactions, holding groups), and a fate per message: `ok` (fails a chosen
number of times, by abandon, an expired lock or a rolled-back transaction, then completed),
`tx` (moved on from `tx` to `out` by a transaction after its failures), `poison` (always
fails), `expire` (its time-to-live ends before it becomes visible), `later` (scheduled:
never delivered before its delay). Before the consumers start, `pri` gets messages of random
priorities from several managers, received one at a time by turns. One manager may crash
mid-run (its connections dropped, its lease left to run out in simulated time).

Checked: `pri` delivered in priority order, FIFO within one; every message accounted for
exactly once (completed once after exactly its failures; poison met receive_error_handling
after exactly (receive_retry_count+1)*(max_retry_cycles+1) deliveries; expired ones in
$dead with reason `expired`; nothing doubled, nothing left); first deliveries of one
sender's same-priority messages of `in` follow the order they were sent; scheduled ones not
before their time; a group held by one consumer at a time, its messages completed once each
in send order; and after a crash, every lock the crashed manager held comes back no sooner
than its lease (>= 2/3 client_grace after the crash) or its own lock deadline allowed, and
uncounted only when the lease, not the lock, ran out first. (After a crash a lock may come
back as one more failed delivery: a message that made poison is allowed then.)
"""
from __future__ import annotations

import asyncio
import hashlib
import random
from collections import Counter, defaultdict
from typing import Any

import tether
from tether import LockLost, QueueError, TransactionError

#: Simulated seconds a manager's lease lasts without renewal.
CLIENT_GRACE = 3.0
EPSILON = 1e-6
GROUP_VALIDITY = 1.0
#: Longest simulated time an application works on a message before settling it.
WORK = 0.05


class _RollBack(Exception):
    pass


class SharedRun:
    """One seed (see the module docstring); `await run(loop)`; `errors` lists what broke."""

    def __init__(self, seed: int, url: str, size: int = 1) -> None:
        self.seed = seed
        self.url = url
        rng = self.rng = random.Random(seed)
        self.settings = dict(receive_retry_count=rng.choice([0, 1, 2]), max_retry_cycles=rng.choice([0, 1]),
                             retry_cycle_delay=rng.uniform(0.1, 0.3),
                             receive_error_handling=rng.choice(["move", "drop", "reject"]),
                             validity_duration=rng.uniform(0.4, 0.8))
        self.per_message = (self.settings["receive_retry_count"] + 1) * (self.settings["max_retry_cycles"] + 1)
        self.fates: dict[bytes, tuple[str, int]] = {}
        for i in range(rng.randint(30, 60) * size):
            fate = rng.choices(["ok", "tx", "poison", "expire", "later"], [6, 2, 1, 1, 1])[0]
            failures = rng.randint(0, self.per_message - 1) if fate in ("ok", "tx", "later") else 0
            self.fates[b"%d.%s" % (i, fate.encode())] = (fate, failures)
        self.groups = {f"g{g}": [b"g%d.%d" % (g, k) for k in range(rng.randint(1, 5))]
                       for g in range(rng.randint(2, 6) * size)}
        self.priorities = [(b"p%d" % i, rng.randint(0, 7)) for i in range(rng.randint(5, 25))]
        self.managers_n = rng.choice([2, 3])
        self.crash = rng.random() < 0.6
        self.completed: Counter[bytes] = Counter()
        self.completed_at: dict[bytes, int] = {}
        self.uncertain: set[bytes] = set()
        self.errors: list[str] = []
        self.trace: list[tuple] = []
        self.sent_at: dict[bytes, tuple[float, int, int, int]] = {}   # body -> (time, sender, priority, n)
        self.visible_at: dict[bytes, float] = {}
        self.first_delivered: dict[bytes, float] = {}
        self.holding: dict[int, dict[bytes, tuple[float, int]]] = defaultdict(dict)  # manager -> body -> lock
        self.crashed: tuple[int, float, dict[bytes, tuple[float, int]]] | None = None
        self.group_done: dict[str, list[bytes]] = defaultdict(list)
        self.group_holds: list[list] = []      # [group, holder, start step, end step or None]
        self.loop: Any = None

    # ---- recording ----

    def fail(self, text: str) -> None:
        self.errors.append(f"seed {self.seed}: {text}")

    def now(self) -> float:
        return self.loop.time()

    def log(self, *event: Any) -> None:
        self.trace.append((round(self.now(), 6),) + event)

    def digest(self) -> str:
        """The run's schedule, as one hash (two runs of a seed must agree)."""
        return hashlib.sha256(repr(self.trace).encode()).hexdigest()[:16]

    def _delivered(self, n: int, m: Any, how: str) -> None:
        body = m.body
        self.log("deliver", n, how, body, m.delivery_count)
        validity = GROUP_VALIDITY if how == "group" else self.settings["validity_duration"]
        self.holding[n][body] = (self.now() + validity, m.delivery_count)
        if body not in self.first_delivered:
            self.first_delivered[body] = self.now()
            self._check_order(body)
        visible = self.visible_at.get(body)
        if visible is not None and self.now() < visible - EPSILON:
            self.fail(f"{body!r} delivered at {self.now():.6f}, before its scheduled time {visible:.6f}")

    def _check_order(self, body: bytes) -> None:
        """First deliveries from `in` of one sender's same-priority messages in send order."""
        if body not in self.sent_at or self.sent_at[body][3] < 0:
            return
        _, sender, priority, n = self.sent_at[body]
        for other, (_, s2, p2, n2) in self.sent_at.items():
            if s2 == sender and p2 == priority and 0 <= n2 < n and other not in self.first_delivered \
                    and self.fates[other][0] == "ok":
                self.fail(f"{body!r} (sender {sender}, n={n}) delivered first while {other!r} (n={n2}), sent "
                          f"before it with the same priority, was never delivered")

    def _settled(self, n: int, body: bytes) -> None:
        self.holding[n].pop(body, None)

    def _completed(self, body: bytes, delivery_count: int) -> None:
        self.completed[body] += 1
        self.completed_at[body] = delivery_count
        self.log("completed", body, delivery_count)

    # ---- consumers ----

    async def consume(self, n: int, qm: tether.QueueManager, rng: random.Random, stop: asyncio.Event) -> None:
        validity = self.settings["validity_duration"]
        while not stop.is_set():
            try:
                if rng.random() < 0.3:
                    await self._in_transaction(n, qm, rng)
                    continue
                m = await qm.receive(rng.choice(["in", "out"]), timeout=0.1)
                if m is None:
                    continue
                self._delivered(n, m, "receive")
                await asyncio.sleep(rng.uniform(0, WORK))      # the application works on it
                body = m.body
                fate, failures = self.fates.get(body.rstrip(b"!"), ("?", 0))
                if body.endswith(b"!") or (fate in ("ok", "later") and m.delivery_count > failures):
                    try:
                        await m.complete()
                    except LockLost:
                        self._settled(n, body)
                        continue          # (its lock ran out first: a failure after all)
                    except QueueError:
                        self.uncertain.add(body)
                        raise
                    self._settled(n, body)
                    self._completed(body, m.delivery_count)
                elif rng.random() < 0.2:
                    await asyncio.sleep(validity * 1.3)     # the lock runs out: a failure
                    self._settled(n, body)
                else:
                    await m.abandon()
                    self._settled(n, body)
            except QueueError:
                if stop.is_set() or qm.operations.store._closed:
                    self.log("consumer-end", n)
                    return
                raise
        self.log("consumer-end", n)

    async def _in_transaction(self, n: int, qm: tether.QueueManager, rng: random.Random) -> None:
        pending = None
        m = None
        try:
            async with qm.transaction() as tx:
                m = await tx.receive(rng.choice(["in", "tx"]), timeout=0.1)
                if m is not None:
                    self._delivered(n, m, "tx")
                    await asyncio.sleep(rng.uniform(0, WORK))
                    fate, failures = self.fates.get(m.body, ("?", 0))
                    if not (fate in ("ok", "tx", "later") and m.delivery_count > failures):
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
                self.uncertain.add(pending[0] if pending[2] != "tx" else pending[0] + b"!")
            raise
        finally:
            if m is not None and not qm.operations.store._closed:
                self._settled(n, m.body)
        if pending is not None and pending[2] != "tx":
            self._completed(pending[0], pending[1])

    async def group_consumer(self, n: int, qm: tether.QueueManager, rng: random.Random,
                             stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with qm.accept_group("grp", timeout=0.3) as group:
                    hold = [group.group_id, n, len(self.trace), None]
                    self.group_holds.append(hold)
                    self.log("hold", n, group.group_id)
                    try:
                        while True:
                            m = await group.receive(timeout=0.05)
                            if m is None:
                                break
                            self._delivered(n, m, "group")
                            await asyncio.sleep(rng.uniform(0, WORK))
                            if m.delivery_count == 1 and rng.random() < 0.3:
                                await m.abandon()
                            else:
                                await m.complete()
                                self._completed(m.body, m.delivery_count)
                                self.group_done[group.group_id].append(m.body)
                            self._settled(n, m.body)
                    finally:
                        if not qm.operations.store._closed:
                            hold[3] = len(self.trace)
                            self.log("release", n, group.group_id)
            except TimeoutError:
                continue
            except QueueError:
                if stop.is_set() or qm.operations.store._closed:
                    return
                raise

    # ---- the run ----

    async def _send(self, sender: int, qm: tether.QueueManager, body: bytes, rng: random.Random, n: int) -> None:
        fate = self.fates[body][0]
        self.log("send", sender, body)
        if fate == "tx":
            await qm.send("tx", body)
            return
        if fate == "expire":
            await qm.send("in", body, time_to_live=0.2, delay=0.6)
            return
        if fate == "later":
            delay = rng.uniform(0.1, 2.0)
            self.visible_at[body] = self.now() + delay
            await qm.send("in", body, delay=delay)
            return
        if rng.random() < 0.5:
            priority = rng.randint(0, 7)
            self.sent_at[body] = (self.now(), sender, priority, n)
            await qm.send("in", body, priority=priority)
        else:
            self.sent_at[body] = (self.now(), sender, 3, n)
            async with qm.transaction() as tx:
                await tx.send("in", body)

    async def _priorities(self, managers: list) -> None:
        """`pri`: sent by several managers while nobody receives, then received by turns:
        highest priority first, send order within one."""
        for body, priority in self.priorities:
            await self.rng.choice(managers).send("pri", body, priority=priority)
        order = []
        for _ in range(len(self.priorities) + 1):
            m = await self.rng.choice(managers).receive("pri", timeout=0)
            if m is None:
                break
            order.append(m.body)
            await m.complete()
        expected = [b for b, _ in sorted(self.priorities, key=lambda bp: -bp[1])]
        if order != expected:
            self.fail(f"pri delivered {order}, expected {expected} (priority, then send order)")
        self.log("priorities", len(order))

    async def run(self, loop: Any) -> None:
        self.loop = loop
        rng = self.rng
        managers = [await tether.QueueManager.open(self.url, client_grace=CLIENT_GRACE, clock=loop.clock)
                    for _ in range(self.managers_n)]
        alive = dict(enumerate(managers))
        stop = asyncio.Event()
        tasks: list[asyncio.Task] = []
        try:
            for qm in managers:
                for name in ("in", "tx", "out"):
                    await qm.create_queue(name, **self.settings)
                await qm.create_queue("pri")
                await qm.create_queue("grp", receive_retry_count=10, validity_duration=GROUP_VALIDITY)
            await self._priorities(managers)
            for n, qm in enumerate(managers):
                for c in range(rng.randint(1, 3)):
                    tasks.append(asyncio.create_task(self.consume(n, qm, random.Random(f"{self.seed}-{n}-{c}"),
                                                                  stop)))
                tasks.append(asyncio.create_task(self.group_consumer(n, qm, random.Random(f"{self.seed}-{n}-g"),
                                                                     stop)))
            bodies = list(self.fates)
            rng.shuffle(bodies)
            groups = [(g, b) for g, bs in self.groups.items() for b in bs]
            batches = range(0, len(bodies), 10)
            crash_at = rng.choice(batches) if self.crash else None
            for start in batches:
                if start == crash_at:
                    await self._crash(rng, alive)
                sender = rng.choice(sorted(alive))
                for k, body in enumerate(bodies[start:start + 10]):
                    await self._send(sender, alive[sender], body, rng, start + k)
                count = rng.randint(0, 4)
                for group, body in groups[:count]:
                    self.log("send", sender, body)
                    await alive[sender].send("grp", body, group_id=group)
                del groups[:count]
                await asyncio.sleep(rng.uniform(0, 0.1))
            for group, body in groups:
                self.log("send", 0, body)
                await managers[0].send("grp", body, group_id=group)
            await self._settle(managers[0])
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for task in tasks:
                if not task.cancelled() and task.exception() is not None:
                    self.fail(f"a consumer failed: {task.exception()!r}")
            try:
                await self._check(managers[0])
            finally:
                for qm in alive.values():
                    await qm.close()

    async def _crash(self, rng: random.Random, alive: dict) -> None:
        """Kill a manager other than the first, once it holds a lock (or after a second)."""
        victim = rng.choice(sorted(alive)[1:])
        for _ in range(100):
            if self.holding[victim]:
                break
            await asyncio.sleep(0.01)
        self.crashed = (victim, self.now(), dict(self.holding[victim]))
        self.log("crash", victim, sorted(self.holding[victim]))
        alive.pop(victim).operations.abort()
        for hold in self.group_holds:
            if hold[1] == victim and hold[3] is None:
                hold[3] = len(self.trace)

    async def _settle(self, qm: tether.QueueManager) -> None:
        """Until every message has met its fate (bounded, in simulated time)."""
        expected_done = sum(1 for fate, _ in self.fates.values() if fate in ("ok", "tx", "later"))
        expected_done += sum(len(bs) for bs in self.groups.values())
        for _ in range(600):
            infos = [await qm.queue_info(name) for name in ("in", "tx", "out", "grp")]
            busy = any(i["depth"] or i["in_flight"] or i["retrying"] or i["scheduled"] for i in infos)
            done = sum(1 for body, (fate, _) in self.fates.items()
                       if (fate in ("ok", "later") and (self.completed[body] or body in self.uncertain))
                       or (fate == "tx" and (self.completed[body + b"!"] or body + b"!" in self.uncertain)))
            done += sum(1 for bs in self.groups.values() for b in bs if self.completed[b])
            if not busy and (done >= expected_done or self.crash):
                return      # (after a crash one may have become poison instead: _check decides)
            await asyncio.sleep(0.5)
        self.fail(f"did not settle in 300 simulated seconds: {[dict(i) for i in infos]}, {done} of "
                  f"{expected_done} done")

    # ---- the checks at the end ----

    async def _check(self, qm: tether.QueueManager) -> None:
        left: dict[str, list] = {}
        for name in ("in", "tx", "out", "grp", "pri", "in;poison", "tx;poison", "out;poison", "grp;poison", "$dead",
                     "in;retry", "grp;retry"):
            left[name] = []
            while True:
                m = await qm.receive(name, timeout=0)
                if m is None:
                    break
                left[name].append(m)
                await m.complete()
        seen = Counter(self.completed)
        for messages in left.values():
            for m in messages:
                seen[m.body] += 1
        for body, count in seen.items():
            if count > 1:
                self.fail(f"{body!r} is there {count} times (completed {self.completed[body]})")
        self._check_fates(left, seen)
        self._check_groups(left)
        self._check_crash()

    def _check_fates(self, left: dict, seen: Counter) -> None:
        handling = self.settings["receive_error_handling"]
        for body, (fate, failures) in self.fates.items():
            if fate in ("ok", "tx", "later") and self.crash and self._poisoned(body, left, handling):
                continue        # (a lock the crash left ran out before the lease: one failure more)
            if fate in ("ok", "later"):
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
                if body in self.first_delivered:
                    self.fail(f"{body!r} was delivered although it expired before it became visible")
            elif handling == "move":
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
        if left["pri"]:
            self.fail(f"pri still holds {[m.body for m in left['pri']]}")

    def _check_groups(self, left: dict) -> None:
        for group, bodies in self.groups.items():
            if self.group_done[group] != bodies:
                self.fail(f"group {group}: completed {self.group_done[group]}, sent {bodies}; left: "
                          f"{[m.body for m in left['grp'] if m.body in bodies]}")
        holds: dict[str, list] = defaultdict(list)
        for hold in self.group_holds:
            holds[hold[0]].append(hold)
        for group, spans in holds.items():
            spans.sort(key=lambda h: h[2])
            for a, b in zip(spans, spans[1:]):
                if a[3] is None or b[2] < a[3]:
                    self.fail(f"group {group} held by manager {b[1]} (from step {b[2]}) while manager {a[1]} "
                              f"held it (steps {a[2]}..{a[3]})")

    def _check_crash(self) -> None:
        if self.crashed is None:
            return
        victim, at, held = self.crashed
        lease_floor = at + CLIENT_GRACE * 2 / 3
        for body, (deadline, count) in held.items():
            later = [e for e in self.trace if e[1] == "deliver" and e[4] == body and e[0] >= at and e[2] != victim]
            if not later:
                continue        # (completed by nobody after: the accounting above decides)
            t, got = later[0][0], later[0][5]
            if got == count:            # uncounted: the lease ran out and the others returned it
                if t < lease_floor - EPSILON:
                    self.fail(f"{body!r} held by crashed manager {victim} came back uncounted at {t:.6f}, "
                              f"before its lease could run out (>= {lease_floor:.6f})")
            elif got == count + 1:      # counted: its lock deadline came first
                if t < min(deadline, lease_floor) - EPSILON:
                    self.fail(f"{body!r} held by crashed manager {victim} came back at {t:.6f}, before its lock "
                              f"({deadline:.6f}) or lease could run out")
            else:
                self.fail(f"{body!r} held by crashed manager {victim} at delivery {count} came back as delivery "
                          f"{got}")

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


def _where(left: dict, body: bytes) -> list:
    return [(name, m.delivery_count, m.attempts, m.dead_letter_reason) for name, ms in left.items()
            for m in ms if m.body in (body, body + b"!")]
