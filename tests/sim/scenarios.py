"""Seeds to scenarios: a family names the kind of trouble, the seed picks everything else
(settings, network conditions, application behaviour), so (family, seed) replays exactly.

Families and what they expect:
  clean       no trouble at all; UDP or TCP, any settings              -> graceful
  lossy       UDP: loss, duplication, reordering, jitter, a bottleneck
              queue, short partitions, address changes                  -> graceful
  tcp_cuts    TCP: the connection is cut every so often; the client
              reconnects and resumes                                     -> graceful
  multi       2-3 clients on one server, lossy paths                    -> graceful
  attacked    UDP, lossy, and a third party throws garbage, frames for
              unknown sessions and wrong-token Resumes at the server    -> graceful
  spoofed     UDP, lossy, 1-2 clients that change address, and an
              attacker who knows the session ids and forges source
              addresses: CreateSequence from addresses that never
              answer, Faults, Terminates and Closes, migrations, and
              replays of captured CreateSequences (also after the
              session ended); sometimes the first session is aborted    -> graceful (abort: as
                                                                            the abort family)
  partition   a permanent partition (both ways or one way; TCP: the
              connection is cut for good) during the transfer            -> RetryLimitExceeded or
                                                                            InactivityTimeout
  hostile     two clients; one path rewrites bytes of some packets       -> that session may fault
              (a hostile or broken peer)                                    (any SessionFault); the
                                                                            other ends gracefully
  restart     the server process restarts (forgets every session; TCP:   -> the client faults with
              its connections drop) during the transfer                    UnknownSequence (or the
                                                                            retry/inactivity faults)
                                                                            within a bound
  abort       one side aborts, or closes without waiting for the peer's  -> it ends as it asked; the
              EOF, while the peer is still sending                         peer faults with
                                                                            SequenceTerminated (or
                                                                            what a lost Fault leaves)
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace

from tether.session.sansio.settings import SessionSettings

from .app import HEADER_SIZE, AppPlan
from .network import Conditions, Interval

FAMILIES = ("clean", "lossy", "tcp_cuts", "multi", "attacked", "spoofed", "partition", "hostile",
            "restart", "abort")

# Packet sizes the adapters use (udp.py: NETWORK_DATAGRAM / LOOPBACK_DATAGRAM).
UDP_NETWORK = 1452
UDP_LOOPBACK = 65000
TCP_PACKET = 256 * 1024
SERVER_ADDRESS = ("server",)


@dataclass(frozen=True)
class ClientSpec:
    """One client session of a scenario and the server application that accepts it."""

    session_id: int
    token: bytes
    settings: SessionSettings
    plan: AppPlan
    server_plan: AppPlan
    up: Conditions
    down: Conditions
    up_partitions: tuple[Interval, ...] = ()
    down_partitions: tuple[Interval, ...] = ()
    address_changes: tuple[float, ...] = ()
    cuts: tuple[tuple[float, float], ...] = ()   # TCP: (when, reconnect after)
    start: float = 0.0
    accept_delay: float = 0.0
    victim: bool = False          # its path corrupts packets: its session may fault

    def describe(self) -> str:
        s = self.settings
        lines = [
            f"  client sid={self.session_id:#x} start={self.start:.3f} accept_delay={self.accept_delay:.3f}"
            f"{' VICTIM' if self.victim else ''}",
            f"    settings: window={s.max_transfer_window} ordered={s.ordered} flow_control={s.flow_control} "
            f"ack_interval={s.ack_interval} retries={s.max_retry_count} inactivity={s.inactivity_timeout} "
            f"max_message={s.max_message_size}",
            f"    client app: {self.plan.describe()}",
            f"    server app: {self.server_plan.describe()}",
            f"    up:   {self.up.describe()} {_intervals(self.up_partitions)}",
            f"    down: {self.down.describe()} {_intervals(self.down_partitions)}",
        ]
        if self.address_changes:
            lines.append("    address changes at " + ", ".join(f"{t:.3f}" for t in self.address_changes))
        if self.cuts:
            lines.append("    cuts at " + ", ".join(f"{t:.3f}(+{d:.3f})" for t, d in self.cuts))
        return "\n".join(lines)


@dataclass(frozen=True)
class Scenario:
    seed: int
    family: str
    transport: str                      # "udp" | "tcp"
    server_settings: SessionSettings
    clients: tuple[ClientSpec, ...]
    max_packet_size: int
    expect: str                         # "graceful" | "partition" | "hostile"
    partition_at: float | None = None   # permanent partition from here
    restart_at: float | None = None     # the server forgets every session here
    abort_at: float | None = None       # "abort" family: when the aborting side acts
    aborter: int = 0                    # which side aborts (0 client, 1 server)
    abort_kind: str = "abort"           # "abort" | "close" (close() without waiting for EOF)
    attack_interval: float | None = None
    spoof_interval: float | None = None   # "spoofed": mean time between forged datagrams
    time_limit: float = 3000.0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def reliable_transport(self) -> bool:
        return self.transport == "tcp"

    def describe(self) -> str:
        s = self.server_settings
        head = (f"family={self.family} seed={self.seed} transport={self.transport} "
                f"packet={self.max_packet_size} expect={self.expect}")
        if self.partition_at is not None:
            head += f" partition_at={self.partition_at:.3f}"
        if self.attack_interval:
            head += f" attack_every={self.attack_interval * 1000:.1f}ms"
        if self.spoof_interval:
            head += f" spoof_every={self.spoof_interval * 1000:.1f}ms"
        if self.restart_at is not None:
            head += f" restart_at={self.restart_at:.3f}"
        if self.abort_at is not None:
            head += f" {self.abort_kind}_by={'client' if self.aborter == 0 else 'server'}@{self.abort_at:.3f}"
        server = (f"  server settings: window={s.max_transfer_window} flow_control={s.flow_control} "
                  f"ack_interval={s.ack_interval} retries={s.max_retry_count} "
                  f"inactivity={s.inactivity_timeout} max_message={s.max_message_size} "
                  f"max_pending={s.max_pending_channels}")
        return "\n".join([head, server] + [c.describe() for c in self.clients] + list(self.notes))


def _intervals(items: tuple[Interval, ...]) -> str:
    if not items:
        return ""
    return "partitions " + ", ".join(f"[{i.start:.3f},{i.end:.3f})" for i in items)


WINDOWS = (1, 2, 3, 4, 5, 8, 8, 8, 16, 32, 64, 256)
ACK_INTERVALS = (0.0, 0.001, 0.01, 0.05, 0.2, 0.2)


def make_scenario(family: str, seed: int) -> Scenario:
    """The scenario of `family` for `seed` (deterministic)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown scenario family {family!r}; known: {', '.join(FAMILIES)}")
    rng = random.Random(f"{family}-{seed}")
    return _BUILDERS[family](rng, seed)


# ---- building blocks ----

def _settings(rng: random.Random, *, lossy: bool, inactivity: float | None = None,
              tcp: bool = False) -> SessionSettings:
    return SessionSettings(
        ack_interval=rng.choice(ACK_INTERVALS),
        flow_control=rng.random() < 0.8,
        inactivity_timeout=inactivity if inactivity is not None else rng.choice((30.0, 120.0, 600.0)),
        max_pending_channels=4,
        # Under loss a message may need several tries; a survivable run must not exhaust them.
        max_retry_count=rng.choice((12, 16, 20)) if lossy else rng.choice((4, 8, 8)),
        max_transfer_window=rng.choice(WINDOWS),
        ordered=rng.random() < 0.7,
        max_message_size=rng.choice((2048, 4096, 16384, 65536)) if not tcp else rng.choice((4096, 65536)),
    )


def _plan(rng: random.Random, *, total: int, max_message: int, packet: int, role: str,
          fragments: bool) -> AppPlan:
    consume = rng.choice(("eager", "eager", "slow", "stalling"))
    small_max = rng.choice((HEADER_SIZE, 16, 64, 200))
    large_rate = 0.0
    large_max = 0
    limit = min(max_message, 8 * packet)
    if fragments and limit > small_max + 1 and rng.random() < 0.5:
        large_rate = rng.choice((0.02, 0.1, 0.3))
        large_max = limit if rng.random() < 0.5 else rng.randint(small_max + 1, limit)
    return AppPlan(
        total=total,
        batch_max=rng.choice((1, 4, 16, 64)),
        gap=rng.choice((0.0, 0.0005, 0.002, 0.01)),
        small_max=small_max,
        large_rate=large_rate,
        large_max=large_max,
        consume=consume,
        consume_interval=rng.choice((0.0002, 0.001, 0.005)),
        stall_rate=rng.choice((0.002, 0.01)) if consume == "stalling" else 0.0,
        stall_time=rng.choice((0.2, 1.0, 3.0)),
        start_delay=rng.choice((0.0, 0.0, 0.01, 0.1)),
        close_role=role,
    )


def _roles(rng: random.Random, client_total: int, server_total: int) -> tuple[str, str, int, int]:
    """Who closes: a closer calls close() once done and the peer's EOF has arrived; a half
    side calls close_sending() when done; none never closes (and sends nothing)."""
    pick = rng.random()
    if pick < 0.35:
        return "closer", "half", client_total, server_total
    if pick < 0.55:
        return "half", "closer", client_total, server_total
    if pick < 0.75:
        return "closer", "closer", client_total, server_total
    if pick < 0.9:
        return "closer", "none", client_total, 0      # simplex, client to server
    return "none", "closer", 0, server_total           # simplex, server to client


def _client(rng: random.Random, *, settings: SessionSettings, server_settings: SessionSettings,
            packet: int, total: tuple[int, int], up: Conditions, down: Conditions,
            fragments: bool, **extra) -> ClientSpec:
    client_role, server_role, ct, st = _roles(rng, *total)
    max_message = min(settings.max_message_size, server_settings.max_message_size)
    plan = _plan(rng, total=ct, max_message=max_message, packet=packet, role=client_role,
                 fragments=fragments)
    server_plan = _plan(rng, total=st, max_message=max_message, packet=packet, role=server_role,
                        fragments=fragments)
    tcp = packet == TCP_PACKET
    # Without flow control a UDP sender overruns a smaller or slower receive window; the
    # receiver drops the excess and every resend counts against max_retry_count, so such a
    # run may fault by design. Survivable runs keep that sender's window within the peer's
    # and the peer's reader eager. (Over TCP the engine honours the window regardless.)
    if not settings.flow_control and not tcp:
        settings = replace(settings, max_transfer_window=min(settings.max_transfer_window,
                                                             server_settings.max_transfer_window))
        server_plan = replace(server_plan, consume="eager")
    if not server_settings.flow_control and not tcp:
        settings = replace(settings, max_transfer_window=max(settings.max_transfer_window,
                                                             server_settings.max_transfer_window))
        plan = replace(plan, consume="eager")
    # flow_control also carries the congestion window: without it a sender floods a
    # bottleneck queue and its resends run out (as designed), so no bottleneck there.
    if not settings.flow_control:
        up = replace(up, bandwidth=None)
    if not server_settings.flow_control:
        down = replace(down, bandwidth=None)
    return ClientSpec(
        session_id=rng.getrandbits(64),
        token=rng.randbytes(16),
        settings=settings,
        plan=plan,
        server_plan=server_plan,
        up=up,
        down=down,
        **extra,
    )


def _server_settings(rng: random.Random, client: SessionSettings, *, lossy: bool,
                     tcp: bool = False, pending: int = 4) -> SessionSettings:
    """The server's own settings: its window and sizes may differ from the client's."""
    return SessionSettings(
        ack_interval=rng.choice(ACK_INTERVALS),
        flow_control=rng.random() < 0.8,
        inactivity_timeout=client.inactivity_timeout,
        max_pending_channels=pending,
        max_retry_count=rng.choice((12, 16, 20)) if lossy else rng.choice((4, 8, 8)),
        max_transfer_window=rng.choice(WINDOWS),
        ordered=client.ordered,
        max_message_size=rng.choice((2048, 4096, 16384, 65536)) if not tcp else rng.choice((4096, 65536)),
    )


def _clean_conditions(rng: random.Random) -> Conditions:
    return Conditions(delay=rng.choice((0.0001, 0.001, 0.02)), jitter=rng.choice((0.0, 0.0, 0.002)))


def _lossy_conditions(rng: random.Random) -> Conditions:
    bandwidth = rng.choice((None, None, 2e6, 1e7))
    return Conditions(
        delay=rng.choice((0.0005, 0.005, 0.03)),
        jitter=rng.choice((0.0, 0.001, 0.01)),
        loss=rng.choice((0.0, 0.01, 0.03, 0.1)),
        duplicate=rng.choice((0.0, 0.01, 0.05)),
        reorder=rng.choice((0.0, 0.05, 0.2)),
        reorder_delay=rng.choice((0.005, 0.05)),
        bandwidth=bandwidth,
        queue_limit=rng.choice((0.005, 0.05)),
    )


def _short_partitions(rng: random.Random, horizon: float) -> tuple[Interval, ...]:
    if rng.random() < 0.6:
        return ()
    out = []
    for _ in range(rng.randint(1, 2)):
        start = rng.random() * horizon
        out.append(Interval(start, start + rng.choice((0.05, 0.3, 1.0))))
    return tuple(sorted(out, key=lambda i: i.start))


def _totals(rng: random.Random, high: int) -> tuple[int, int]:
    return rng.randint(0, high), rng.randint(0, high)


# ---- families ----

def _clean(rng: random.Random, seed: int) -> Scenario:
    tcp = rng.random() < 0.4
    packet = TCP_PACKET if tcp else rng.choice((UDP_NETWORK, UDP_LOOPBACK))
    cs = _settings(rng, lossy=False, tcp=tcp)
    ss = _server_settings(rng, cs, lossy=False, tcp=tcp)
    client = _client(rng, settings=cs, server_settings=ss, packet=packet, total=_totals(rng, 300),
                     up=_clean_conditions(rng), down=_clean_conditions(rng), fragments=not tcp)
    return Scenario(seed, "clean", "tcp" if tcp else "udp", ss, (client,), packet, "graceful")


def _lossy(rng: random.Random, seed: int) -> Scenario:
    packet = rng.choice((UDP_NETWORK, UDP_NETWORK, UDP_LOOPBACK))
    cs = _settings(rng, lossy=True, inactivity=rng.choice((30.0, 600.0)))
    ss = _server_settings(rng, cs, lossy=True)
    changes = tuple(sorted(rng.random() * 2.0 for _ in range(rng.choice((0, 0, 1, 3)))))
    client = _client(rng, settings=cs, server_settings=ss, packet=packet, total=_totals(rng, 200),
                     up=_lossy_conditions(rng), down=_lossy_conditions(rng), fragments=True,
                     up_partitions=_short_partitions(rng, 2.0),
                     down_partitions=_short_partitions(rng, 2.0),
                     address_changes=changes)
    return Scenario(seed, "lossy", "udp", ss, (client,), packet, "graceful")


def _tcp_cuts(rng: random.Random, seed: int) -> Scenario:
    cs = _settings(rng, lossy=False, tcp=True, inactivity=rng.choice((30.0, 600.0)))
    ss = _server_settings(rng, cs, lossy=False, tcp=True)
    cuts = []
    t = 0.0
    for _ in range(rng.randint(1, 6)):
        t += rng.choice((0.001, 0.02, 0.2, 1.0)) * rng.random() * 2
        delay = rng.choice((0.05, 0.1, 0.4, 2.0))
        cuts.append((t, delay))
        t += delay
    conditions = Conditions(delay=rng.choice((0.0002, 0.002, 0.02)), jitter=rng.choice((0.0, 0.001)),
                            bandwidth=rng.choice((None, 5e6)))
    client = _client(rng, settings=cs, server_settings=ss, packet=TCP_PACKET, total=_totals(rng, 300),
                     up=conditions, down=conditions, fragments=False, cuts=tuple(cuts))
    return Scenario(seed, "tcp_cuts", "tcp", ss, (client,), TCP_PACKET, "graceful")


def _multi(rng: random.Random, seed: int) -> Scenario:
    tcp = rng.random() < 0.3
    packet = TCP_PACKET if tcp else UDP_NETWORK
    count = rng.randint(2, 3)
    first = _settings(rng, lossy=True, tcp=tcp, inactivity=60.0)
    ss = _server_settings(rng, first, lossy=True, tcp=tcp, pending=count)
    clients = []
    for i in range(count):
        cs = first if i == 0 else _settings(rng, lossy=True, tcp=tcp, inactivity=60.0)
        cond = (lambda: _clean_conditions(rng)) if tcp else (lambda: _lossy_conditions(rng))
        clients.append(_client(rng, settings=cs, server_settings=ss, packet=packet,
                               total=_totals(rng, 120), up=cond(), down=cond(), fragments=not tcp,
                               start=rng.random() * 0.05, accept_delay=rng.choice((0.0, 0.01))))
    return Scenario(seed, "multi", "tcp" if tcp else "udp", ss, tuple(clients), packet, "graceful")


def _attacked(rng: random.Random, seed: int) -> Scenario:
    scenario = _lossy(rng, seed)
    return Scenario(seed, "attacked", "udp", scenario.server_settings, scenario.clients,
                    scenario.max_packet_size, "graceful",
                    attack_interval=rng.choice((0.005, 0.02, 0.05)))


def _spoofed(rng: random.Random, seed: int) -> Scenario:
    packet = rng.choice((UDP_NETWORK, UDP_NETWORK, UDP_LOOPBACK))
    count = rng.randint(1, 2)
    # one inactivity timeout for all: an idle client that moved is heard again only by its
    # keepalive, which must come before the server's timeout runs out
    inactivity = rng.choice((30.0, 600.0))
    first = _settings(rng, lossy=True, inactivity=inactivity)
    ss = _server_settings(rng, first, lossy=True, pending=count)
    clients = []
    for i in range(count):
        cs = first if i == 0 else _settings(rng, lossy=True, inactivity=inactivity)
        changes = tuple(sorted(rng.random() * 2.0 for _ in range(rng.choice((0, 1, 2, 3)))))
        clients.append(_client(rng, settings=cs, server_settings=ss, packet=packet,
                               total=_totals(rng, 150), up=_lossy_conditions(rng),
                               down=_lossy_conditions(rng), fragments=True,
                               address_changes=changes, start=rng.random() * 0.05))
    spoof_interval = rng.choice((0.002, 0.01, 0.05))
    if rng.random() < 0.4:
        # the first session is aborted (a faulted session's id must not be reopened either)
        return Scenario(seed, "spoofed", "udp", ss, tuple(clients), packet, "abort",
                        abort_at=rng.choice((0.01, 0.05, 0.2, 0.5)), aborter=rng.randint(0, 1),
                        spoof_interval=spoof_interval)
    return Scenario(seed, "spoofed", "udp", ss, tuple(clients), packet, "graceful",
                    spoof_interval=spoof_interval)


def _partition(rng: random.Random, seed: int) -> Scenario:
    tcp = rng.random() < 0.3
    packet = TCP_PACKET if tcp else UDP_NETWORK
    inactivity = rng.choice((5.0, 20.0, 60.0))
    cs = _settings(rng, lossy=False, tcp=tcp, inactivity=inactivity)
    ss = _server_settings(rng, cs, lossy=False, tcp=tcp)
    at = rng.choice((0.0, 0.001, 0.01, 0.05, 0.2, 0.5))
    permanent = (Interval(at),)
    way = rng.choice(("both", "up", "down")) if not tcp else "both"
    cuts = ((at, math.inf),) if tcp else ()
    conditions = _clean_conditions(rng)
    client = _client(rng, settings=cs, server_settings=ss, packet=packet, total=(rng.randint(50, 400),
                     rng.randint(0, 400)), up=conditions, down=conditions, fragments=not tcp,
                     up_partitions=permanent if way in ("both", "up") and not tcp else (),
                     down_partitions=permanent if way in ("both", "down") and not tcp else (),
                     cuts=cuts)
    return Scenario(seed, "partition", "tcp" if tcp else "udp", ss, (client,), packet, "partition",
                    partition_at=at, time_limit=at + 3 * inactivity + 600.0,
                    notes=(f"  partition: {way}",))


def _hostile(rng: random.Random, seed: int) -> Scenario:
    packet = UDP_NETWORK
    cs = _settings(rng, lossy=True, inactivity=30.0)
    ss = _server_settings(rng, cs, lossy=True, pending=2)
    victim_up = Conditions(delay=0.002, corrupt=rng.choice((0.002, 0.02, 0.1)))
    victim_down = Conditions(delay=0.002, corrupt=rng.choice((0.0, 0.02)))
    victim = _client(rng, settings=cs, server_settings=ss, packet=packet, total=_totals(rng, 150),
                     up=victim_up, down=victim_down, fragments=True, victim=True)
    other = _client(rng, settings=_settings(rng, lossy=True, inactivity=30.0), server_settings=ss,
                    packet=packet, total=_totals(rng, 150), up=_lossy_conditions(rng),
                    down=_lossy_conditions(rng), fragments=True, start=0.003)
    return Scenario(seed, "hostile", "udp", ss, (victim, other), packet, "hostile", time_limit=1000.0)


def _restart(rng: random.Random, seed: int) -> Scenario:
    tcp = rng.random() < 0.4
    packet = TCP_PACKET if tcp else UDP_NETWORK
    inactivity = rng.choice((20.0, 60.0, 600.0))
    cs = _settings(rng, lossy=False, tcp=tcp, inactivity=inactivity)
    ss = _server_settings(rng, cs, lossy=False, tcp=tcp)
    client = _client(rng, settings=cs, server_settings=ss, packet=packet,
                     total=(rng.randint(20, 300), rng.randint(0, 300)),
                     up=_clean_conditions(rng), down=_clean_conditions(rng), fragments=not tcp)
    return Scenario(seed, "restart", "tcp" if tcp else "udp", ss, (client,), packet, "restart",
                    restart_at=rng.choice((0.01, 0.05, 0.2, 0.5)))


def _abort(rng: random.Random, seed: int) -> Scenario:
    tcp = rng.random() < 0.3
    packet = TCP_PACKET if tcp else UDP_NETWORK
    cs = _settings(rng, lossy=True, tcp=tcp, inactivity=rng.choice((20.0, 60.0)))
    ss = _server_settings(rng, cs, lossy=True, tcp=tcp)
    conditions = _clean_conditions(rng) if tcp else _lossy_conditions(rng)
    client = _client(rng, settings=cs, server_settings=ss, packet=packet,
                     total=(rng.randint(20, 300), rng.randint(20, 300)),
                     up=conditions, down=conditions, fragments=not tcp)
    return Scenario(seed, "abort", "tcp" if tcp else "udp", ss, (client,), packet, "abort",
                    abort_at=rng.choice((0.01, 0.05, 0.2, 0.5)), aborter=rng.randint(0, 1),
                    abort_kind=rng.choice(("abort", "close")))


def basic(seed: int = 0, *, transport: str = "udp", client: dict | None = None,
          server: dict | None = None, client_total: int = 50, server_total: int = 50,
          conditions: Conditions | None = None) -> Scenario:
    """A plain scenario with chosen settings (for tests of the harness itself): the client
    closes once both sides sent everything, the server half-closes."""
    tcp = transport == "tcp"
    packet = TCP_PACKET if tcp else UDP_NETWORK
    cs = SessionSettings(**(client or {}))
    ss = SessionSettings(**(server or {}))
    cond = conditions or Conditions(delay=0.001)
    plan = AppPlan(total=client_total, batch_max=8, gap=0.001, close_role="closer")
    server_plan = AppPlan(total=server_total, batch_max=8, gap=0.001, close_role="half")
    spec = ClientSpec(session_id=0x5E55, token=bytes(16), settings=cs, plan=plan,
                      server_plan=server_plan, up=cond, down=cond)
    return Scenario(seed, "basic", transport, ss, (spec,), packet, "graceful")


_BUILDERS = {
    "clean": _clean,
    "lossy": _lossy,
    "tcp_cuts": _tcp_cuts,
    "multi": _multi,
    "attacked": _attacked,
    "spoofed": _spoofed,
    "partition": _partition,
    "hostile": _hostile,
    "restart": _restart,
    "abort": _abort,
}
