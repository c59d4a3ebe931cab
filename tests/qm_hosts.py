"""Queue managers on hosts of their own, for the multi-host tests (`-m netns`).

The `qm_hosts` fixture makes three hosts, `a`, `b` and `c`: network namespaces joined by a
bridge in a fourth (`tether.netns.BridgedHosts`, addresses 10.201.0.1..3 only inside
them), and starts a `tether qm serve` in each. Every queue manager listens on
tls://ADDRESS:7600 for the others (a certificate of the test CA for that address; its
peers log in as user `qm`, which may only forward) and on tcp://127.0.0.1:7600, the
host's own loopback, for the test's applications (user `app`). Each forwards to the
others with `[remotes]` credentials over TLS, as docs/security.md describes.

The test process itself stays in its own namespace: `QmHost.call(fn)` runs `fn(client)`
on a thread that entered the host's namespace (its own event loop, a QueueClient of the
host's loopback service), so the applications' connections never cross the links the
tests cut. The fixture's finalizer kills every queue manager, stops the threads and
removes the namespaces, also when the test failed; a test run killed outright takes its
queue managers with it (PR_SET_PDEATHSIG), and the next run removes its namespaces.
"""
from __future__ import annotations

import asyncio
import ctypes
import pathlib
import signal
import sys
import threading
from typing import Any, Awaitable, Callable

import pytest
import uvloop

import tether
from tether import netns
from tether.queue.auth import hash_password

from tls_pki import Pki, issue_server_certificate

HOSTS = ("a", "b", "c")
PORT = 7600
APP_PASSWORD = "app password for the multi-host tests"
QM_PASSWORD = "queue manager password for the multi-host tests"
START_TIMEOUT = 20.0
CALL_TIMEOUT = 60.0
PREFIX = "tether-test-"
SUBNET = "10.201.0"
PR_SET_PDEATHSIG = 1


def _die_with_the_test() -> None:
    """In the child before exec: SIGKILL it when the test process dies, so a test run that
    is killed (pytest-timeout ends it with os._exit) leaves no queue manager running."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class HostThread:
    """A thread inside a namespace, running an event loop of its own."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        ready = threading.Event()

        def main() -> None:
            try:
                netns.enter(namespace)
                self.loop = uvloop.new_event_loop()
            except BaseException as exc:        # reported by the constructor
                self._error = exc
                return
            finally:
                ready.set()
            try:
                self.loop.run_forever()
            finally:
                self.loop.close()

        self._thread = threading.Thread(target=main, name=f"netns-{namespace}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if self._error is not None:
            raise self._error

    async def run(self, coro: Awaitable[Any], timeout: float) -> Any:
        """Run `coro` on the thread's loop; its result (bounded by `timeout`)."""
        async def bounded():
            return await asyncio.wait_for(coro, timeout)
        future = asyncio.run_coroutine_threadsafe(bounded(), self.loop)
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class QmHost:
    """One host: its namespace, address, `tether qm serve` process and data directory."""

    def __init__(self, hosts: netns.BridgedHosts, name: str, directory: pathlib.Path) -> None:
        self.name = name
        self.hosts = hosts
        self.namespace = hosts.namespace(name)
        self.address = hosts.address(name)
        self.directory = directory
        self.config = directory / "qm.toml"
        self.log = directory / "qm.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.thread = HostThread(self.namespace)
        self._client: tether.QueueClient | None = None

    @property
    def authority(self) -> str:
        return f"{self.address}:{PORT}"

    def queue(self, name: str) -> str:
        """The tether:// address of queue `name` on this host."""
        return f"tether://{self.authority}/{name}"

    def transmission_queue(self, to: "QmHost") -> str:
        return f"$xmit:{to.authority}"

    async def start(self) -> None:
        """Start (or restart, same data directory) this host's queue manager; returns once it
        is ready."""
        assert self.proc is None or self.proc.returncode is not None
        with open(self.log, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.hosts.command(self.name, [sys.executable, "-m", "tether", "qm", "serve",
                                                "--config", str(self.config), "--log-level", "INFO"]),
                stdout=asyncio.subprocess.PIPE, stderr=log, preexec_fn=_die_with_the_test)
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), START_TIMEOUT)
        except asyncio.TimeoutError:
            line = b""
        assert line.startswith(b"tether qm: ready"), f"{self.name} did not start: {line!r}\n{self.log_tail()}"
        if self._client is None:
            await self._connect()

    async def kill(self) -> None:
        """SIGKILL the queue manager and wait for it."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(self.proc.wait(), 10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def call(self, fn: Callable[[tether.QueueClient], Awaitable[Any]], timeout: float = CALL_TIMEOUT) -> Any:
        """`await fn(client)` with this host's QueueClient (over its loopback, as user `app`,
        one for the whole test: it reconnects by itself across a restart), in the host's
        namespace."""
        async def with_client():
            return await fn(self._client)
        return await self.thread.run(with_client(), timeout)

    async def _connect(self) -> None:
        async def connect():
            return await tether.QueueClient.connect(f"tcp://127.0.0.1:{PORT}", user="app", password=APP_PASSWORD,
                                                    prefetch=256, connect_timeout=10)
        self._client = await self.thread.run(connect(), CALL_TIMEOUT)

    async def close(self) -> None:
        """Close the client, SIGKILL the queue manager, end the thread."""
        try:
            if self._client is not None:
                await self.thread.run(self._client.close(), 10)
        finally:
            try:
                await self.kill()
            finally:
                self.thread.close()

    async def depth(self, queue: str) -> int:
        """Messages ready in `queue`."""
        async def info(client):
            return (await client.queue_info(queue)).depth
        return await self.call(info, 10)

    async def pending(self, queue: str) -> int:
        """Messages in `queue` not yet settled: ready, or locked (a forwarder's in flight)."""
        async def info(client):
            counts = await client.queue_info(queue)
            return counts.depth + counts.in_flight
        return await self.call(info, 10)

    async def drain(self, queue: str, quiet: float = 0.3) -> list[tether.Message]:
        """Receive and complete every message of `queue` until none comes for `quiet` s."""
        async def take(client):
            got = []
            while (message := await client.receive(queue, timeout=quiet)) is not None:
                got.append(message)
                await message.complete()
            return got
        return await self.call(take)


def write_config(host: QmHost, peers: list[QmHost], pki: Pki, cert: tuple[str, str],
                 app_hash: str, qm_hash: str, queues: dict[str, dict[str, Any]]) -> None:
    lines = [
        f'data_dir = "{host.directory / "data"}"',
        f'listen = ["tls://{host.authority}", "tcp://127.0.0.1:{PORT}"]',
        "[limits]",
        "client_grace = 3.0",
        "[tls]",
        f'cert = "{cert[0]}"',
        f'key = "{cert[1]}"',
        "[users.app]",
        f'password_hash = "{app_hash}"',
        'send = ["*", "tether://*"]',
        'receive = ["*"]',
        "admin = true",
        "[users.qm]",
        f'password_hash = "{qm_hash}"',
        "forward = true",
    ]
    for peer in peers:
        lines += [f'[remotes."{peer.authority}"]', 'user = "qm"', f'password = "{QM_PASSWORD}"',
                  f'cafile = "{pki.ca}"']
    for name, settings in queues.items():
        lines.append(f"[queues.{name}]")
        lines += [f"{key} = {value!r}" for key, value in settings.items()]
    host.config.write_text("\n".join(lines) + "\n")


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None."""
    try:
        netns.check_environment("the multi-host tests (-m netns)")
    except OSError as exc:
        return str(exc)
    return None


@pytest.fixture(scope="session")
def qm_hosts_secrets(pki):
    """(certificate files for the hosts' addresses, app's and qm's password hashes): made
    once per test session (scrypt is slow on purpose)."""
    addresses = tuple(f"{SUBNET}.{i + 1}" for i in range(len(HOSTS)))
    cert = issue_server_certificate(pki, "qm-hosts", addresses)
    return cert, hash_password(APP_PASSWORD), hash_password(QM_PASSWORD)


@pytest.fixture
async def qm_hosts(tmp_path, pki, qm_hosts_secrets):
    """{name: QmHost} for hosts a, b and c, each queue manager running, with queue `orders`."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    for stale in netns.leftovers(PREFIX):     # of a test run that was killed
        netns.run("ip", "netns", "delete", stale)
    bridged = netns.BridgedHosts(list(HOSTS), prefix=PREFIX, subnet=SUBNET)
    try:
        bridged.open()
    except OSError as exc:
        bridged.close()
        pytest.skip(f"cannot make network namespaces here: {exc}")
    made: list[QmHost] = []
    try:
        cert, app_hash, qm_hash = qm_hosts_secrets
        for name in HOSTS:
            directory = tmp_path / name
            directory.mkdir()
            made.append(QmHost(bridged, name, directory))
        for host in made:
            write_config(host, [p for p in made if p is not host], pki, cert, app_hash, qm_hash,
                         {"orders": {}})
        await asyncio.gather(*(host.start() for host in made))
        yield {host.name: host for host in made}
    finally:
        try:
            for host in made:
                try:
                    await host.close()
                except Exception as exc:        # the others are closed all the same
                    print(f"closing host {host.name}: {exc!r}", file=sys.stderr)
        finally:
            bridged.close()
