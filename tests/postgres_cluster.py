"""A private PostgreSQL cluster for the tests of the PostgreSQL store, started once per run.

`postgres_url` (session scope) runs `initdb` into a temporary directory (as the `postgres`
user when the tests run as root: the server refuses to run as root), starts the server on a
free loopback port with its unix socket in that directory, creates the database `tether`,
and yields its URL; at the end of the run it stops the server and removes the directory.
Without the server binaries (PostgreSQL 15's, or any `initdb` on PATH), or as a user who can
neither run them nor become `postgres`, the tests that need it skip, saying why.
`postgres_database` gives each test a fresh database of its own in that cluster.
A run that was killed (or ended by pytest-timeout) cannot stop its server: the directory
names the run's process, and the next run stops and removes a cluster whose run is gone.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid

import pytest

START_TIMEOUT = 60.0
OWNER_FILE = "owner.pid"        # the pid of the test run that made the cluster


def _bin_dir() -> str | None:
    """The directory of initdb/pg_ctl: the newest /usr/lib/postgresql/N/bin, else PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
                   if p.split("/")[4].isdigit() else 0)
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """One running PostgreSQL server in a temporary directory."""

    def __init__(self, bin_dir: str) -> None:
        self.bin_dir = bin_dir
        self.root = tempfile.mkdtemp(prefix="tether-pg-")
        self.data = os.path.join(self.root, "data")
        self.port = _free_port()
        self.user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self.user = pwd.getpwnam("postgres")
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self.superuser = self.user.pw_name if self.user else pwd.getpwuid(os.geteuid()).pw_name
        with open(os.path.join(self.root, OWNER_FILE), "w") as f:
            f.write(str(os.getpid()))

    def _run(self, *args: str, timeout: float = START_TIMEOUT) -> None:
        def demote() -> None:
            if self.user is not None:
                os.setgid(self.user.pw_gid)
                os.setuid(self.user.pw_uid)

        env = dict(os.environ, LC_ALL="C", LANG="C")
        done = subprocess.run([os.path.join(self.bin_dir, args[0]), *args[1:]], preexec_fn=demote, env=env,
                              cwd=self.root, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")

    def start(self) -> None:
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", self.superuser, "-E", "UTF8", "--no-sync")
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
                   f"-c fsync=on -c max_connections=200 -c shared_buffers=64MB")
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.root, "server.log"), "-o", options,
                  "-w", "-t", str(int(START_TIMEOUT)), "start")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.superuser, "tether")

    def url(self, database: str = "tether") -> str:
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.superuser, name)
        return self.url(name)

    def stop(self) -> None:
        try:
            if os.path.exists(os.path.join(self.data, "postmaster.pid")):
                self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_abandoned(bin_dir: str) -> None:
    """Stop and remove the clusters of earlier runs whose process is gone (a killed run
    leaves its server running); the clusters of runs still going are left alone."""
    for root in glob.glob(os.path.join(tempfile.gettempdir(), "tether-pg-*")):
        try:
            with open(os.path.join(root, OWNER_FILE)) as f:
                owner = int(f.read().strip())
        except (OSError, ValueError):
            continue            # not made by this module, or still being made
        if _alive(owner):
            continue
        data = os.path.join(root, "data")
        if os.path.exists(os.path.join(data, "postmaster.pid")):
            subprocess.run([os.path.join(bin_dir, "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=START_TIMEOUT,
                           user="postgres" if os.geteuid() == 0 else None)
        shutil.rmtree(root, ignore_errors=True)


def _why_not() -> str | None:
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return "asyncpg is not installed (pip install 'tether[postgres]')"
    if _bin_dir() is None:
        return "no PostgreSQL server binaries (initdb) on this machine"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
    return None


@pytest.fixture(scope="session")
def postgres_cluster():
    """The run's private PostgreSQL cluster (skips, saying why, where none can be started)."""
    reason = _why_not()
    if reason is not None:
        pytest.skip(f"PostgreSQL store tests: {reason}")
    bin_dir = _bin_dir()
    remove_abandoned(bin_dir)
    cluster = Cluster(bin_dir)
    try:
        cluster.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        cluster.stop()
        pytest.skip(f"PostgreSQL store tests: the private cluster did not start: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster) -> str:
    """The URL of a fresh, empty database in the private cluster (one per test)."""
    return postgres_cluster.create_database()
