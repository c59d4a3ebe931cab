"""Drive client SessionEngines and a server Demux over the simulated network, event by event,
checking the invariants after every step (after aioquic's tests/test_connection.py and h11's
ConnectionPair, with a seeded network in between).

The server side mirrors what the adapters do (udp.py, tcp.py, session.py): route each
packet through the Demux by session id with its source address, send a UDP session's
packets to the address the Demux validated, bind a TCP connection to a session on its first
packet, drop what a session sends while it has no connection, release consumed messages,
and re-arm one timer per session at next_timer().

Over UDP it also checks what address validation promises (demux.py): a session is created
only for an address that received its Retry, and never twice under one id; the server
sends an address it has not validated at most three times the bytes it received from it; a
session moves only to an address that echoed a challenge sent there; and a packet reaches
no session but the one it was routed to, and that one only from its validated address.
"""
from __future__ import annotations

import math
import random
import traceback
import zlib
from collections import deque
from typing import Any

from tether.errors import (
    InactivityTimeout,
    ProtocolError,
    RetryLimitExceeded,
    SequenceTerminated,
    SessionFault,
    TetherError,
    UnknownSequence,
)
from tether.session.sansio.core import Core
from tether.session.sansio.demux import Demux
from tether.session.sansio.engine import SessionEngine
from tether.session.sansio.events import Connected, MessagesDelivered, PeerClosed, SessionEnded
from tether.session.sansio.frames import FrameType as F

from .app import App, AppPlan, Bodies
from .network import Clock, Direction, Path
from .scenarios import SERVER_ADDRESS, ClientSpec, Scenario

# A run that takes more steps than this is stuck in a loop (the largest scenarios take ~10^5).
MAX_STEPS = 3_000_000
# handle_timer(now) followed by packets_to_send(now) must move next_timer() past now; a timer
# that stays due would spin the adapter's event loop.
MAX_TIMER_SPINS = 3
# Faults a session may end with when its peer is gone for good.
PARTITION_FAULTS = (RetryLimitExceeded, InactivityTimeout)
# ... when the server forgot it (restart), or the peer aborted or terminated it.
RESTART_FAULTS = (UnknownSequence, RetryLimitExceeded, InactivityTimeout)
ABORTED_PEER_FAULTS = (SequenceTerminated, UnknownSequence, RetryLimitExceeded, InactivityTimeout)
# A client must notice a server restart within its keepalive interval plus this.
RESTART_NOTICE = 10.0
STRAY_PLAN = AppPlan(total=0, close_role="none")
# RFC 9000 8.1: the most the server may send an address it has not validated, per byte
# received from it (checked here independently of the code's own constant).
AMPLIFICATION = 3
# Captured CreateSequence datagrams an attacker keeps for replay ("spoofed" family), and
# how long it goes on after every session ended (replaying the ended sessions' ones).
CAPTURED_CREATES = 64
SPOOF_AFTER_END = 1.0
# ... and when it gives up anyway: a session left to its inactivity timeout (600 s) would
# otherwise be spoofed at for ten minutes of simulated time, to no further purpose
SPOOF_UNTIL = 60.0


def _single_frame_of_type(body: bytes, kind: int) -> bool:
    """Cheaply: `body` starts with a 3-element frame of this type (Retry, PathChallenge)."""
    return len(body) > 2 and body[0] == 0x93 and body[1] == kind


class SimulationFailure(AssertionError):
    """An invariant broke; the message says which, where, and how to replay the seed."""


class Endpoint:
    """One side of one session: its engine (None until the server creates it), its
    application, and where its packets go."""

    def __init__(self, name: str, side: int, index: int, app: App, spec: ClientSpec | None) -> None:
        self.name = name
        self.side = side            # 0 client, 1 server
        self.index = index          # the client (path) it belongs to; -1 for a stray
        self.app = app
        self.spec = spec
        self.engine: SessionEngine | None = None
        self.peer: Endpoint | None = None
        self.addr: Any = None       # client: own address; server: the peer's latest address
        self.conn: int | None = None  # TCP server side: the connection epoch bound to it
        self.connected = False      # Connected event seen
        self.accepted = False
        self.removed = False
        self.timer_at: float | None = None
        self.timer_version = 0
        self.spins = 0
        self.victim = bool(spec and spec.victim)
        self.crashed = False        # server side of a restart: the engine is gone
        self.aborted = False        # "abort" family: this side aborted or closed early
        self.stray = spec is None
        self.events_after_end = 0
        self.packets_dropped_unlinked = 0
        self.cc_seen: tuple | None = None   # (controller, recovery_start, cwnd) at the last check
        self.cc_reductions = 0              # loss periods begun


class Simulation:
    """One scenario on one layer-1 core. `run()` returns when every event has happened, or
    raises SimulationFailure naming the broken invariant and the replay command."""

    def __init__(self, scenario: Scenario, core: Core, *, core_name: str = "native",
                 trace: bool = False) -> None:
        self.scenario = scenario
        self.core = core
        self.core_name = core_name
        self.clock = Clock()
        self.tcp = scenario.reliable_transport
        self.bodies = Bodies(scenario.seed)
        self.trace: list | deque = [] if trace else deque(maxlen=60)
        # the server's randomness (token key, path challenges): seeded, so runs replay
        self._server_rng = random.Random(f"{scenario.seed}-server")
        self.demux = self._new_demux()
        self.clients: list[Endpoint] = []
        self.servers: list[Endpoint] = []       # server side of each client, by index
        self.strays: list[Endpoint] = []        # server sessions no client meant to open
        self.replaced: list[Endpoint] = []      # server sessions lost in a restart, replaced
        self.by_session: dict[int, Endpoint] = {}
        self.paths: list[Path] = []
        self.addr_owner: dict[Any, int] = {}
        self.steps = 0
        self.attacker_replies = 0
        self.finished_at: float | None = None
        # address validation bookkeeping (UDP): bytes from each address, bytes sent to each
        # address while it was not validated, the addresses validated, Retries and path
        # challenges delivered, and the ids created by the current server incarnation
        self.received_from: dict[Any, int] = {}
        self.sent_unvalidated: dict[Any, int] = {}
        self.validated: set = set()
        self.retries_delivered: set = set()
        self.challenges_sent: dict[tuple, set] = {}
        self.created_ids: set = set()
        self.captured: list[tuple[bytes, Any]] = []
        self.spoofed_sent = 0
        self.moves = 0
        seed = scenario.seed
        for i, spec in enumerate(scenario.clients):
            rng = random.Random(f"{seed}-{i}")
            max_message = min(spec.settings.max_message_size, scenario.server_settings.max_message_size)
            client = Endpoint(f"c{i}", 0, i, App(0, spec.plan, random.Random(rng.random()),
                                                  self.bodies, max_message), spec)
            server = Endpoint(f"s{i}", 1, i, App(1, spec.server_plan, random.Random(rng.random()),
                                                  self.bodies, max_message), spec)
            client.peer, server.peer = server, client
            client.addr = ("c", i, 0)
            self.addr_owner[client.addr] = i
            up = Direction(f"c{i}>s", self.clock, random.Random(rng.random()), spec.up,
                           self._make_server_receiver(i), reliable=self.tcp,
                           partitions=spec.up_partitions)
            down = Direction(f"s>c{i}", self.clock, random.Random(rng.random()), spec.down,
                             self._make_client_receiver(client), reliable=self.tcp,
                             partitions=spec.down_partitions)
            self.paths.append(Path(up, down))
            self.clients.append(client)
            self.servers.append(server)
            self.by_session[spec.session_id] = server
            self.clock.at(spec.start, self._start_client, client)
            for t in spec.address_changes:
                self.clock.at(t, self._change_address, client)
            for t, delay in spec.cuts:
                self.clock.at(t, self._cut, i, delay)
        if scenario.attack_interval:
            self.attack_rng = random.Random(f"{seed}-attacker")
            self.clock.at(0.0, self._attack)
        if scenario.spoof_interval:
            self.spoof_rng = random.Random(f"{seed}-spoofer")
            # from the first client's start (scheduled after it): before any session exists
            # the run would count as finished, which stops the spoofer
            self.clock.at(min(spec.start for spec in scenario.clients), self._spoof)
        if scenario.restart_at is not None:
            self.clock.at(scenario.restart_at, self._restart)
        if scenario.abort_at is not None:
            self.clock.at(scenario.abort_at, self._abort)

    # ---- running ----

    def run(self) -> Simulation:
        scenario = self.scenario
        try:
            while self.clock.step():
                self.steps += 1
                if self.steps > MAX_STEPS:
                    self.fail(f"more than {MAX_STEPS} steps: a loop that never settles")
                if self.clock.now > scenario.time_limit:
                    self.fail(f"still running at t={self.clock.now:.3f} (limit {scenario.time_limit}): "
                              + self._states())
                if self.finished_at is None and self._all_ended():
                    self.finished_at = self.clock.now
            self._check_final()
        except SimulationFailure:
            raise
        except Exception as exc:  # an engine or demux raised: always a bug
            self.fail(f"unexpected {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        return self

    def _all_ended(self) -> bool:
        # A client not yet started has not ended: an abort drawn before it starts must not
        # mark the run finished (the spoofer and other scenario events stop at that mark).
        if any(ep.engine is None for ep in self.clients):
            return False
        return all(ep.app.ended for ep in self.clients + self.servers if ep.engine is not None)

    def fail(self, message: str) -> None:
        s = self.scenario
        family = s.family
        where = f"t={self.clock.now:.6f} step={self.steps} core={self.core_name}"
        recent = "\n".join(f"    {_fmt(item)}" for item in list(self.trace)[-40:])
        raise SimulationFailure(
            f"{message}\n  at {where}\n{s.describe()}\n  states: {self._states()}\n"
            f"  last events:\n{recent}\n"
            f"  replay: TETHER_SIM_FAMILY={family} TETHER_SIM_SEED={s.seed} TETHER_SIM_CORE={self.core_name} "
            f"python -m pytest tests/test_session_sim.py -k replay -s")

    def _states(self) -> str:
        out = []
        for ep in self.clients + self.servers + self.strays:
            e = ep.engine
            if e is None:
                out.append(f"{ep.name}:-")
                continue
            a = ep.app
            out.append(f"{ep.name}:{e.state.value} sent={a.handed}/{a.plan.total} recv={a.received} "
                       f"inbox={a.waiting} in_flight={e._sw.in_flight} pending={e.pending_count}"
                       + (f" error={type(a.error).__name__}" if a.error else ""))
        return "; ".join(out)

    def _record(self, *item: Any) -> None:
        self.trace.append((round(self.clock.now, 9),) + item)

    # ---- clients ----

    def _start_client(self, client: Endpoint) -> None:
        spec = client.spec
        engine = SessionEngine.client(
            spec.settings, session_id=spec.session_id, token=spec.token, now=self.clock.now,
            reliable_transport=self.tcp, max_packet_size=self.scenario.max_packet_size, core=self.core)
        client.engine = engine
        engine.start(self.clock.now)
        self._pump(client)

    def _new_demux(self) -> Demux:
        s = self.scenario
        return Demux(s.server_settings, reliable_transport=self.tcp,
                     max_packet_size=s.max_packet_size, core=self.core,
                     entropy=self._server_rng.randbytes)

    def _make_client_receiver(self, client: Endpoint):
        def receive(body: bytes, src: Any, dst: Any) -> None:
            if dst != client.addr:
                self.paths[client.index].down.stats.misaddressed += 1
                return  # the old address: nobody listens there any more
            if client.engine is None:
                return
            if not self.tcp and _single_frame_of_type(body, F.RETRY):
                retry = self._decode_first(body)
                if retry is not None:   # (a corrupting path may have broken it)
                    self.retries_delivered.add((retry[1], dst))
            client.engine.receive_packet(body, self.clock.now)
            self._pump(client)
        return receive

    def _change_address(self, client: Endpoint) -> None:
        old = client.addr
        client.addr = (old[0], old[1], old[2] + 1)
        self.addr_owner[client.addr] = client.index
        self._record("addr", client.name, client.addr[2])

    def _cut(self, index: int, reconnect_after: float) -> None:
        """TCP: the connection breaks; in-flight packets are lost; the client reconnects
        after `reconnect_after` (inf: never) and resumes."""
        path = self.paths[index]
        if not path.connected:
            return
        path.cut()
        server = self.servers[index]
        server.conn = None
        self._record("cut", f"c{index}")
        if math.isfinite(reconnect_after):
            self.clock.after(reconnect_after, self._reconnect, index)

    def _reconnect(self, index: int) -> None:
        path = self.paths[index]
        client = self.clients[index]
        if path.connected:
            return
        path.connected = True
        self._record("reconnect", client.name)
        if client.engine is not None and not client.engine.is_finished:
            client.engine.resume(self.clock.now)
            self._pump(client)

    def _client_transmit(self, client: Endpoint, packets: list[bytes]) -> None:
        path = self.paths[client.index]
        if self.tcp and not path.connected:
            client.packets_dropped_unlinked += len(packets)
            return
        for body in packets:
            if self.scenario.spoof_interval and len(body) > 1 and body[1] == F.CREATE_SEQUENCE:
                # an on-path attacker records CreateSequence (with its token) to replay it
                self.captured.append((body, client.addr))
                del self.captured[:-CAPTURED_CREATES]
            path.up.transmit(body, client.addr, SERVER_ADDRESS)

    # ---- server ----

    def _make_server_receiver(self, index: int):
        def receive(body: bytes, src: Any, dst: Any) -> None:
            if self.tcp:
                self._server_tcp_packet(index, body)
            else:
                self._server_udp_packet(body, src)
        return receive

    def _server_udp_packet(self, body: bytes, src: Any) -> None:
        self.received_from[src] = self.received_from.get(src, 0) + len(body)
        live = [(ep, ep.engine.packets_received, ep.engine.state) for ep in self.servers + self.strays
                if ep.engine is not None and not ep.crashed and not ep.engine.is_finished]
        routed = self.demux.route(body, self.clock.now, source=src)
        for reply in routed.replies:
            self._server_send(src, reply)
        engine = routed.engine
        for ep, received, state in live:
            if ep.engine is not engine and (ep.engine.packets_received != received
                                            or ep.engine.state is not state):
                self.fail(f"{ep.name}: a packet from {src} routed elsewhere reached the session "
                          f"(validated address {ep.addr})")
        if engine is None:
            return
        if routed.created:
            if routed.address != src:
                self.fail(f"a session created for {src} sends to {routed.address}")
            ep = self._created(engine, src)
        else:
            ep = self._endpoint_of(engine)
            if routed.address != ep.addr:
                self._check_move(ep, src, routed.address, body)
                ep.addr = routed.address
                self.validated.add(ep.addr)
            elif src != ep.addr:
                self.fail(f"{ep.name}: a packet from {src} reached the session, whose validated "
                          f"address is {ep.addr}")
        self._pump(ep)

    def _decode_first(self, body: bytes) -> tuple | None:
        try:
            return self.core.codec.decode_packet(body, 1 << 24, 1 << 16)[0]
        except ProtocolError:
            return None

    def _check_move(self, ep: Endpoint, src: Any, to: Any, body: bytes) -> None:
        """A session moves only to the address the packet came from, and only when that
        packet echoes a PathChallenge the server sent to that very address."""
        self.moves += 1
        sid = ep.engine.session_id
        answers = {f[2] for f in self.core.codec.decode_packet(body, 1 << 24, 1 << 16)
                   if f[0] == F.PATH_RESPONSE}
        if to != src or not answers & self.challenges_sent.get((sid, src), set()):
            self.fail(f"{ep.name}: moved from {ep.addr} to {to} on a packet from {src} that "
                      f"echoes no challenge sent there")

    def _server_tcp_packet(self, index: int, body: bytes) -> None:
        path = self.paths[index]
        epoch = path.up.epoch
        server = self.servers[index]
        bound = next((ep for ep in [server] + self.strays
                      if ep.conn == epoch and ep.index == index and ep.engine is not None
                      and not ep.crashed), None)
        if bound is not None:  # later packets of a bound connection go straight to its session
            bound.engine.receive_packet(body, self.clock.now)
            self._pump(bound)
            return
        routed = self.demux.route(body, self.clock.now, opening=True)
        for reply in routed.replies:
            path.down.transmit(reply, SERVER_ADDRESS, self.clients[index].addr)
        engine = routed.engine
        if engine is None:
            # refused or unknown: the server closes the connection once its replies are out
            # (TCP delivers what was written before the FIN); the client reconnects
            self._record("server-closes", f"c{index}")
            self.clock.at(path.down.last_arrival, self._cut, index, 0.05)
            return
        ep = self._created(engine, self.clients[index].addr) if routed.created else self._endpoint_of(engine)
        ep.conn = epoch
        if ep.index == -1:
            ep.index = index
        self._pump(ep)

    def _endpoint_of(self, engine: SessionEngine) -> Endpoint:
        for ep in [self.by_session.get(engine.session_id)] + self.strays:
            if ep is not None and ep.engine is engine:
                return ep
        self.fail(f"the demux routed to an engine the server never created ({engine.session_id:#x})")

    def _created(self, engine: SessionEngine, src: Any) -> Endpoint:
        if not self.tcp:
            if engine.session_id in self.created_ids:
                self.fail(f"session id {engine.session_id:#x} opened twice by one server")
            if (engine.session_id, src) not in self.retries_delivered:
                self.fail(f"session {engine.session_id:#x} created for {src}, which never received "
                          f"its Retry (a forged source address)")
            self.created_ids.add(engine.session_id)
            self.validated.add(src)
        ep = self.by_session.get(engine.session_id)
        if ep is not None and (ep.crashed or (ep.removed and not ep.peer.connected)):
            # After a restart (or the server application ending the session at once), a
            # client still connecting sends CreateSequence again and opens a new session with
            # the same id: a new one for the server application.
            old = ep
            client = old.peer
            if client.app.received:
                self.fail(f"{client.name}: took {client.app.received} messages from a server "
                          f"incarnation that then forgot the session; the new one starts over")
            ep = Endpoint(old.name + "'", 1, old.index,
                          App(1, old.spec.server_plan, random.Random(f"{self.scenario.seed}-again"),
                              self.bodies, old.app.max_message), old.spec)
            ep.peer, client.peer = client, ep
            self.servers[old.index] = ep
            self.by_session[engine.session_id] = ep
            self.replaced.append(old)
        if ep is None or ep.engine is not None:
            # A session nobody meant to open: a forged or corrupted CreateSequence, or a
            # duplicate CreateSequence arriving after the real session ended.
            ep = Endpoint(f"x{len(self.strays)}", 1, self.addr_owner.get(src, -1),
                          App(1, STRAY_PLAN, random.Random(0), self.bodies, 1), None)
            self.strays.append(ep)
            self._record("stray", ep.name, f"{engine.session_id:#x}")
        ep.engine = engine
        ep.addr = src
        self._record("created", ep.name)
        delay = ep.spec.accept_delay if ep.spec else 0.0
        if delay:
            self.clock.after(delay, self._accept, ep)
        else:
            self._accept(ep, pump=False)
        return ep

    def _accept(self, ep: Endpoint, pump: bool = True) -> None:
        if ep.accepted or ep.crashed:
            return
        if ep.removed:
            # ended before the app took it: taking it now frees its slot (Server.accept)
            ep.accepted = True
            self.demux.accepted(ep.engine)
            return
        ep.accepted = True
        self.demux.accepted(ep.engine)
        self._app_start(ep)
        if pump:
            self._pump(ep)

    def _server_send(self, addr: Any, body: bytes) -> None:
        if not self.tcp:
            if addr not in self.validated:
                sent = self.sent_unvalidated[addr] = self.sent_unvalidated.get(addr, 0) + len(body)
                if sent > AMPLIFICATION * self.received_from.get(addr, 0):
                    self.fail(f"sent {sent} bytes to {addr}, which is not validated and sent "
                              f"{self.received_from.get(addr, 0)}")
            if _single_frame_of_type(body, F.PATH_CHALLENGE):
                frame = self._decode_first(body)   # the server's own: it always decodes
                self.challenges_sent.setdefault((frame[1], addr), set()).add(frame[2])
        index = self.addr_owner.get(addr)
        if index is None:
            self.attacker_replies += 1
            return
        self.paths[index].down.transmit(body, SERVER_ADDRESS, addr)

    def _server_transmit(self, ep: Endpoint, packets: list[bytes]) -> None:
        if self.tcp:
            if ep.index < 0:
                return
            path = self.paths[ep.index]
            if ep.conn is None or ep.conn != path.down.epoch or not path.connected:
                ep.packets_dropped_unlinked += len(packets)
                return  # no connection: the adapter drops them; a Resume brings them back
            for body in packets:
                path.down.transmit(body, SERVER_ADDRESS, self.clients[ep.index].addr)
            return
        for body in packets:
            self._server_send(ep.addr, body)

    # ---- the attacker (family "attacked") ----

    def _attack(self) -> None:
        if self.finished_at is not None:
            return
        rng = self.attack_rng
        codec = self.core.codec
        pick = rng.random()
        if pick < 0.3:
            body = rng.randbytes(rng.randint(0, 64))
        elif pick < 0.5:
            victim = rng.choice(self.scenario.clients)
            body = codec.encode_frame((13, victim.session_id, rng.randbytes(16)))  # wrong-token Resume
        else:
            sid = rng.getrandbits(64)
            frames = [
                (4, sid, rng.randint(1, 100), [b"x" * rng.randint(0, 40)]),
                (5, sid, [(1, rng.randint(1, 50))], rng.randint(0, 10), False),
                (7, sid), (8, sid, 3), (10, sid, 3), (12, sid, "protocol-error", "boo"),
                (13, sid, rng.randbytes(16)),
            ]
            frame = rng.choice(frames)
            body = codec.encode_data(sid, frame[2], frame[3]) if frame[0] == 4 else codec.encode_frame(frame)
        self._record("attack", len(body))
        self._server_udp_packet(body, ("attacker",))
        self.clock.after(self.attack_rng.expovariate(1.0 / self.scenario.attack_interval), self._attack)

    # ---- the spoofer (family "spoofed") ----

    def _spoof(self) -> None:
        """An attacker who sees the traffic (it knows every session id and captures
        CreateSequence datagrams) and forges source addresses, but never the address a
        session has validated (that takes being on its path, which UDP cannot defend; see
        docs/sessions.md, Security) and never answers a challenge. Nothing it sends may
        create a session, move one, end one or reach one."""
        if (self.finished_at is not None and self.clock.now > self.finished_at + SPOOF_AFTER_END) \
                or self.clock.now > SPOOF_UNTIL:
            return
        rng = self.spoof_rng
        codec = self.core.codec
        live = [ep for ep in self.servers if ep.engine is not None and not ep.crashed
                and not ep.engine.is_finished]
        pick = rng.random()
        if pick < 0.2 or (pick < 0.6 and not live):
            # CreateSequence from a forged address (with a made-up token, sometimes): the
            # Retry goes where nobody answers, or to a client that did not open that session
            fields = (F.CREATE_SEQUENCE, rng.getrandbits(63) | 1, rng.randbytes(16),
                      rng.choice((8, 64)), 65536, True)
            if rng.random() < 0.3:
                fields += (200_000, rng.randbytes(rng.choice((16, 24))))
            kind, body, src = "create", codec.encode_frame(fields), self._forged_address(rng, None)
        elif pick < 0.6:
            ep = rng.choice(live)
            sid = ep.engine.session_id
            sent = ep.engine.stats["sent"]
            frames = [
                (F.FAULT, sid, rng.choice(("sequence-terminated", "protocol-error")), "forged"),
                (F.TERMINATE_SEQUENCE, sid, sent), (F.TERMINATE_SEQUENCE_RESPONSE, sid),
                (F.CLOSE_SEQUENCE, sid, rng.randint(0, 3)), (F.CLOSE_SEQUENCE_RESPONSE, sid, 0),
                (F.ACK_REQUESTED, sid), (F.PATH_RESPONSE, sid, rng.randbytes(16)),
                (F.ACK, sid, [(1, max(1, sent))], rng.randint(0, 64), False),
                (F.DATA, sid, rng.randint(1, 50), [b"forged" * rng.randint(1, 20)]),
                (F.CREATE_SEQUENCE, sid, ep.engine.token, 8, 65536, True),
            ]
            frame = rng.choice(frames)
            body = (codec.encode_data(sid, frame[2], frame[3]) if frame[0] == F.DATA
                    else codec.encode_frame(frame))
            kind, src = f"forged-{F(frame[0]).name.lower()}", self._forged_address(rng, ep)
        elif self.captured:
            # a captured CreateSequence, replayed from where it came (also after its session
            # ended: the id must never be opened again); from elsewhere while that is its
            # live session's validated address, which this attacker never forges
            body, src = rng.choice(self.captured)
            kind = "replay"
            named = self.by_session.get(self._decode_first(body)[1])
            if named is not None and named.engine is not None and not named.engine.is_finished \
                    and src == named.addr:
                src = self._forged_address(rng, named)
        else:
            kind = None
        if kind is not None:
            self.spoofed_sent += 1
            self._record("spoof", kind, src, len(body))
            self._server_udp_packet(body, src)
        self.clock.after(rng.expovariate(1.0 / self.scenario.spoof_interval), self._spoof)

    def _forged_address(self, rng: random.Random, ep: Endpoint | None) -> Any:
        """A source address to forge: one where nobody listens, or a client's (current or
        former) address; never the address `ep`'s session has validated."""
        choices = [("forged", rng.randrange(16))]
        for client in self.clients:
            choices.append(client.addr)
            if client.addr[2] > 0:
                choices.append((client.addr[0], client.addr[1], rng.randrange(client.addr[2])))
        if ep is not None:
            choices = [a for a in choices if a != ep.addr] or [("forged", 0)]
        return rng.choice(choices)

    # ---- restart and abort ----

    def _restart(self) -> None:
        """The server process restarts: every session it held is gone, a new Demux starts
        empty; over TCP its connections drop and the clients reconnect."""
        self._record("restart")
        for ep in self.servers + self.strays:
            if ep.engine is not None and not ep.app.ended:
                ep.crashed = True
                ep.timer_version += 1
        self.demux = self._new_demux()
        self.created_ids = set()      # a new server incarnation knows no ids
        if self.tcp:
            for i in range(len(self.paths)):
                self._cut(i, 0.1)

    def _abort(self) -> None:
        s = self.scenario
        ep = self.clients[0] if s.aborter == 0 else self.servers[0]
        if ep.engine is None or ep.app.ended or not ep.engine.is_open:
            return
        ep.aborted = True
        self._record(s.abort_kind, ep.name)
        if s.abort_kind == "abort":
            ep.engine.abort(self.clock.now, "the application aborted")
        else:
            ep.app.close_called = True
            ep.engine.close(self.clock.now)
        self._pump(ep)

    # ---- the engine loop of one endpoint (Session._pump) ----

    def _pump(self, ep: Endpoint) -> None:
        if ep.crashed:
            return
        engine = ep.engine
        app = ep.app
        now = self.clock.now
        if app.consumed:
            engine.release(app.consumed, now)
            app.consumed = 0
        self._handle_events(ep, engine.events())
        cc = engine._cc
        sent_before = engine.messages_sent
        in_flight_before = engine._sw.bytes_in_flight
        cwnd_before = None if cc is None else cc.cwnd
        probing = engine._probe_due
        packets = engine.packets_to_send(now)
        # (a tail probe, sent once per flight when acks stop, may go one packet beyond the window)
        if cc is not None and engine.messages_sent > sent_before and in_flight_before >= cwnd_before \
                and not (probing and engine._sw.bytes_in_flight - in_flight_before <= self.scenario.max_packet_size):
            self.fail(f"{ep.name}: sent new messages with {in_flight_before} bytes in flight, "
                      f"at or over the congestion window {cwnd_before}")
        if packets:
            for body in packets:
                self._record("tx", ep.name, len(body), zlib.crc32(body))
            if ep.side == 0:
                self._client_transmit(ep, packets)
            else:
                self._server_transmit(ep, packets)
        self._handle_events(ep, engine.events())
        self._arm_timer(ep)
        self._check(ep)
        if app.blocked and (engine.send_capacity > 0 or app.ended):
            app.blocked = False
            self._schedule_send(ep, 0.0)
        self._maybe_close(ep)

    def _arm_timer(self, ep: Endpoint) -> None:
        t = ep.engine.next_timer()
        if t == ep.timer_at:
            return
        ep.timer_at = t
        ep.timer_version += 1
        if t is not None:
            if math.isnan(t):
                self.fail(f"{ep.name}: next_timer() returned NaN")
            self.clock.at(t, self._fire_timer, ep, ep.timer_version)

    def _fire_timer(self, ep: Endpoint, version: int) -> None:
        if version != ep.timer_version:
            return
        now = self.clock.now
        ep.timer_at = None
        self._record("timer", ep.name)
        ep.engine.handle_timer(now)
        self._pump(ep)
        t = ep.engine.next_timer()
        if t is not None and t <= now:
            ep.spins += 1
            if ep.spins > MAX_TIMER_SPINS:
                self.fail(f"{ep.name}: next_timer() stays at {t!r} <= now {now!r} after handle_timer "
                          f"(state {ep.engine.state.value}): the adapter would spin")
        else:
            ep.spins = 0

    def _handle_events(self, ep: Endpoint, events: list) -> None:
        app = ep.app
        for event in events:
            kind = type(event)
            self._record("event", ep.name, kind.__name__,
                         len(event.messages) if kind is MessagesDelivered else
                         (type(event.error).__name__ if kind is SessionEnded else None))
            if app.ended:
                ep.events_after_end += 1
                self.fail(f"{ep.name}: event {event!r} after SessionEnded")
            if kind is MessagesDelivered:
                self._delivered(ep, event.messages)
            elif kind is Connected:
                if ep.connected:
                    self.fail(f"{ep.name}: Connected twice")
                ep.connected = True
                if ep.side == 0:
                    self._app_start(ep)
            elif kind is PeerClosed:
                if app.peer_closed:
                    self.fail(f"{ep.name}: PeerClosed twice")
                app.peer_closed = True
                self._check_peer_closed(ep)
            elif kind is SessionEnded:
                self._ended(ep, event.error)
            else:
                self.fail(f"{ep.name}: unknown event {event!r}")

    # ---- the application ----

    def _app_start(self, ep: Endpoint) -> None:
        plan = ep.app.plan
        if plan.total:
            self._schedule_send(ep, plan.start_delay)
        else:
            self.clock.after(plan.start_delay, self._maybe_close_later, ep)

    def _maybe_close_later(self, ep: Endpoint) -> None:
        if ep.engine is not None and not ep.app.ended and not ep.crashed:
            self._maybe_close(ep)
            self._pump(ep)

    def _schedule_send(self, ep: Endpoint, delay: float) -> None:
        if not ep.app.send_scheduled:
            ep.app.send_scheduled = True
            self.clock.after(delay, self._app_send, ep)

    def _app_send(self, ep: Endpoint) -> None:
        """send_many(): hand over what send_capacity allows; wait for space for the rest."""
        app = ep.app
        app.send_scheduled = False
        engine = ep.engine
        if app.ended or engine.is_finished or app.close_called or app.close_sending_called or ep.crashed:
            return
        if not app.batch:
            if app.next_index >= app.plan.total:
                return
            app.batch = app.next_batch()
        room = engine.send_capacity
        if room <= 0:
            app.blocked = True
            return
        chunk, app.batch = app.batch[:room], app.batch[room:]
        engine.send(chunk, self.clock.now)
        app.handed += len(chunk)
        self._record("send", ep.name, len(chunk))
        self._pump(ep)
        if app.ended:
            return
        if app.batch:
            if engine.send_capacity > 0:
                self._schedule_send(ep, 0.0)
            else:
                app.blocked = True
        elif app.next_index < app.plan.total:
            self._schedule_send(ep, app.next_gap())

    def _delivered(self, ep: Endpoint, messages: list) -> None:
        app = ep.app
        peer = ep.peer
        ordered = ep.engine.settings.ordered
        for message in messages:
            app.received += 1
            if ep.victim or ep.stray:
                continue  # a corrupting path may deliver anything; it must only stay bounded
            side, index, intact = self.bodies.check(message)
            if side != 1 - ep.side:
                self.fail(f"{ep.name}: delivered a message from side {side} (header {message[:5]!r})")
            if not intact:
                self.fail(f"{ep.name}: message {index} delivered with the wrong body ({len(message)} bytes)")
            if index >= peer.app.handed:
                self.fail(f"{ep.name}: message {index} delivered but the peer has sent only {peer.app.handed}")
            if ordered:
                if index != app.next_expected:
                    kind = "twice" if index < app.next_expected else "out of order"
                    self.fail(f"{ep.name}: message {index} delivered {kind}; expected {app.next_expected}")
                app.next_expected += 1
            else:
                if index in app.seen:
                    self.fail(f"{ep.name}: message {index} delivered twice (unordered)")
                app.seen.add(index)
        app.inbox.extend(messages)
        if messages and not app.consume_scheduled:
            self._schedule_consume(ep)

    def _schedule_consume(self, ep: Endpoint) -> None:
        app = ep.app
        app.consume_scheduled = True
        delay = 0.0 if app.plan.consume == "eager" else app.next_consume_delay()
        self.clock.after(delay, self._app_consume, ep)

    def _app_consume(self, ep: Endpoint) -> None:
        """recv(): one message at a time (eager: all waiting); released to the engine in
        batches of window/4 or when the inbox empties, as Session does."""
        app = ep.app
        app.consume_scheduled = False
        if app.waiting == 0 or ep.crashed:
            return
        take = app.waiting if app.plan.consume == "eager" else 1
        app.inbox_head += take
        app.consumed += take
        if app.inbox_head > 1024 and app.inbox_head * 2 > len(app.inbox):
            del app.inbox[:app.inbox_head]
            app.inbox_head = 0
        batch = max(1, ep.engine.settings.max_transfer_window // 4)
        if (app.consumed >= batch or app.waiting == 0) and not app.ended:
            self._pump(ep)
        if app.waiting:
            self._schedule_consume(ep)

    def _maybe_close(self, ep: Endpoint) -> None:
        app = ep.app
        engine = ep.engine
        if app.ended or not engine.is_open or ep.stray:
            return
        if not app.done_sending or (ep.side == 1 and not ep.accepted):
            return
        if ep.side == 0 and not ep.connected:
            return
        role = app.plan.close_role
        peer_role = ep.peer.app.plan.close_role
        now = self.clock.now
        if role == "half" or (role == "closer" and peer_role != "none"):
            if not app.close_sending_called:
                app.close_sending_called = True
                self._record("close_sending", ep.name)
                engine.close_sending(now)
                self._pump(ep)
                return
        if role == "closer" and not app.close_called and (app.peer_closed or peer_role == "none"):
            app.close_called = True
            self._record("close", ep.name)
            engine.close(now)
            self._pump(ep)

    # ---- invariants ----

    def _check(self, ep: Endpoint) -> None:
        engine = ep.engine
        app = ep.app
        settings = engine.settings
        if engine.is_finished:
            if not app.ended:
                self.fail(f"{ep.name}: engine is {engine.state.value} but no SessionEnded was emitted")
            if engine.next_timer() is not None:
                self.fail(f"{ep.name}: finished engine still asks for a timer at {engine.next_timer()}")
            return
        if app.ended:
            self.fail(f"{ep.name}: SessionEnded emitted but the engine is still {engine.state.value}")
        stats = engine.stats
        window = settings.max_transfer_window
        if stats["in_flight"] > window:
            self.fail(f"{ep.name}: {stats['in_flight']} messages in flight exceed the send window {window}")
        self._check_congestion(ep, engine)
        if stats["held"] > window or stats["buffer_remaining"] < 0:
            self.fail(f"{ep.name}: receive window over capacity: held={stats['held']} "
                      f"buffer_remaining={stats['buffer_remaining']} capacity={window}")
        if stats["held"] != app.waiting + app.consumed:
            self.fail(f"{ep.name}: engine holds {stats['held']} delivered messages but the application "
                      f"has {app.waiting + app.consumed} unreleased")
        peer = ep.peer
        if ep.victim or ep.stray or peer is None:
            return
        sw = engine._sw
        if (settings.flow_control or self.tcp) and sw.next_number - sw.lowest_unacked > engine.peer_window:
            # (an honest peer's acks never allow more; a corrupting path's may)
            self.fail(f"{ep.name}: messages {sw.lowest_unacked}..{sw.next_number - 1} in flight span "
                      f"more than the peer's window {engine.peer_window}")
        if peer.engine is not None and peer.engine.settings.flow_control and stats["refused"]:
            self.fail(f"{ep.name}: refused {stats['refused']} messages although the peer's flow control "
                      f"should never overrun this window")
        if engine.all_acknowledged and peer.app.received < app.handed:
            self.fail(f"{ep.name}: everything sent is acknowledged (flush done) but the peer received "
                      f"{peer.app.received} of {app.handed}")

    def _check_congestion(self, ep: Endpoint, engine: SessionEngine) -> None:
        """UDP with flow_control: the congestion window stays between the minimum (2
        packets) and what both windows let be in flight (one packet per message), and a loss
        that begins a loss period leaves the window where it was (the path model, not a
        loss, sets it; only persistent congestion, a run of probe timeouts, collapses it)."""
        cc = engine._cc
        if cc is None:
            return
        packet = self.scenario.max_packet_size
        most = max(2, min(engine.settings.max_transfer_window, engine.peer_window)) * packet
        if not 2 * packet <= cc.cwnd <= most:
            self.fail(f"{ep.name}: congestion window {cc.cwnd} outside [{2 * packet}, {most}] "
                      f"(windows {engine.settings.max_transfer_window}/{engine.peer_window})")
        last = ep.cc_seen
        ep.cc_seen = (cc, cc.recovery_start, cc.cwnd, engine.retransmission_timeouts)
        if last is None or last[0] is not cc or last[1] == cc.recovery_start:
            return
        ep.cc_reductions += 1
        if cc.cwnd < min(last[2], cc.max_cwnd) and engine.retransmission_timeouts == last[3] \
                and cc.state == "startup":
            # in startup nothing but acks (growth) and persistent congestion moves the window
            self.fail(f"{ep.name}: a loss cut the congestion window in startup: {last[2]} -> {cc.cwnd}")

    def _check_peer_closed(self, ep: Endpoint) -> None:
        peer = ep.peer
        if ep.victim or ep.stray or peer is None:
            return
        # (a peer that closed early, "abort" family, only had to deliver what it handed over)
        if ep.app.received != peer.app.handed or not (peer.app.done_sending or peer.aborted):
            self.fail(f"{ep.name}: PeerClosed after {ep.app.received} messages, but the peer sent "
                      f"{peer.app.handed} of {peer.app.plan.total}")

    def _ended(self, ep: Endpoint, error: TetherError | None) -> None:
        app = ep.app
        app.ended = True
        app.error = error
        app.end_time = self.clock.now
        if error is not None and not isinstance(error, SessionFault):
            self.fail(f"{ep.name}: ended with {type(error).__name__}, not a SessionFault")
        if ep.side == 1 and not ep.removed:
            ep.removed = True
            self.demux.remove(ep.engine, was_accepted=True)  # as Server: the slot waits for accept
        expect = self.scenario.expect
        if ep.stray or ep.victim:
            return
        if expect == "restart" and ep.side == 0:
            self._ended_after_restart(ep, error)
            return
        if expect == "abort":
            self._ended_after_abort(ep, error)
            return
        if expect in ("graceful", "hostile", "restart"):
            if error is not None:
                self.fail(f"{ep.name}: faulted with {type(error).__name__}: {error} under survivable conditions")
        elif expect == "partition":
            if error is None:
                if not self._complete(ep):
                    self.fail(f"{ep.name}: ended gracefully under a partition with messages missing")
            elif not isinstance(error, PARTITION_FAULTS):
                self.fail(f"{ep.name}: faulted with {type(error).__name__} ({error}); a partition "
                          f"should give RetryLimitExceeded or InactivityTimeout")
            else:
                bound = self.scenario.partition_at + ep.engine.settings.inactivity_timeout + 1.0
                if self.clock.now > bound:
                    self.fail(f"{ep.name}: took until {self.clock.now:.3f} to notice a partition from "
                              f"{self.scenario.partition_at} (bound {bound:.3f})")

    def _ended_after_restart(self, ep: Endpoint, error: TetherError | None) -> None:
        at = self.scenario.restart_at
        if error is None:
            if not self._complete(ep):
                self.fail(f"{ep.name}: ended gracefully with messages missing around a server restart")
            return
        if not isinstance(error, RESTART_FAULTS):
            self.fail(f"{ep.name}: faulted with {type(error).__name__} ({error}); a server restart "
                      f"should give UnknownSequence (or RetryLimitExceeded, InactivityTimeout)")
        if self.clock.now < at:
            self.fail(f"{ep.name}: faulted with {type(error).__name__} before the server restarted")
        bound = at + ep.engine.settings.keepalive_interval + RESTART_NOTICE
        if self.clock.now > bound:
            self.fail(f"{ep.name}: took until {self.clock.now:.3f} to notice the server restart at "
                      f"{at} (bound {bound:.3f})")

    def _ended_after_abort(self, ep: Endpoint, error: TetherError | None) -> None:
        kind = self.scenario.abort_kind
        if ep.aborted:
            expected = SequenceTerminated if kind == "abort" else None
            if (error is None) != (expected is None) or (error is not None and type(error) is not expected):
                self.fail(f"{ep.name}: after its own {kind} ended with {error!r}, expected "
                          f"{expected.__name__ if expected else None}")
            return
        if error is None:
            if ep.peer.app.received != ep.app.handed:
                self.fail(f"{ep.name}: ended gracefully but the peer received {ep.peer.app.received} "
                          f"of the {ep.app.handed} messages it sent")
        elif not isinstance(error, ABORTED_PEER_FAULTS):
            self.fail(f"{ep.name}: faulted with {type(error).__name__} ({error}); the peer's {kind} "
                      f"should give SequenceTerminated (or what a lost Fault leaves)")
        elif not any(other.aborted for other in self.clients + self.servers + self.replaced):
            self.fail(f"{ep.name}: faulted with {type(error).__name__} ({error}) but nobody aborted")

    def _complete(self, ep: Endpoint) -> bool:
        peer = ep.peer
        return (ep.app.done_sending and peer.app.received == ep.app.handed
                and ep.app.received == peer.app.handed)

    def _check_final(self) -> None:
        expect = self.scenario.expect
        for ep in self.clients + self.servers + self.strays:
            if ep.engine is None:
                if ep.side == 1 and not ep.peer.victim and expect not in ("partition", "restart"):
                    self.fail(f"{ep.name}: the server never created the session")
                continue
            if ep.crashed:
                continue
            if not ep.app.ended:
                self.fail(f"{ep.name}: never ended ({ep.engine.state.value})")
            if ep.stray or ep.victim:
                continue
            if expect == "graceful" or (expect == "hostile" and not ep.peer.victim):
                if not self._complete(ep):
                    self.fail(f"{ep.name}: graceful end but sent {ep.app.handed}/{ep.app.plan.total}, "
                              f"peer received {ep.peer.app.received}")
                peer_closes = ep.peer.app.plan.close_role != "none"
                if peer_closes and not ep.app.peer_closed:
                    self.fail(f"{ep.name}: ended without seeing the peer's close (PeerClosed)")
        if len(self.demux.sessions) != 0:
            self.fail(f"the demux still holds {len(self.demux.sessions)} sessions after every session ended")

    # ---- results ----

    def summary(self) -> dict:
        return {
            "steps": self.steps,
            "time": self.clock.now,
            "finished_at": self.finished_at,
            "strays": len(self.strays),
            "errors": {ep.name: (type(ep.app.error).__name__ if ep.app.error else None)
                       for ep in self.clients + self.servers if ep.engine is not None},
        }


def _fmt(item: tuple) -> str:
    return " ".join(str(x) for x in item)


def run_scenario(scenario: Scenario, core: Core, *, core_name: str = "native",
                 trace: bool = False) -> Simulation:
    """Run `scenario` to the end on `core`; raises SimulationFailure on a broken invariant."""
    return Simulation(scenario, core, core_name=core_name, trace=trace).run()
