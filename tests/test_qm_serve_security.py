"""`tether qm serve` with TLS, users and remotes from its TOML configuration
(src/tether/queue/config.py): a service that serves TLS and mutual TLS to its users, the
refusal to start with anonymous access beyond loopback, and every new key validated with
an error that names it."""
from __future__ import annotations

import asyncio
import gc
import ssl
import sys

import pytest

import tether
from tether import AuthenticationFailed
from tether.queue import config as cfg
from tether.queue.auth import hash_password
from tether.queue.serve_command import serve_forever

from tls_pki import client_context

FAST = {"n": 1024, "r": 1, "p": 1}


def _toml(pki, tmp_path, *, client_ca: bool = False) -> str:
    cert, key = pki.cert("server")
    return "\n".join([
        f'data_dir = "{tmp_path / "data"}"',
        'listen = ["tls://127.0.0.1:0"]',
        "[tls]",
        f'cert = "{cert}"',
        f'key = "{key}"',
        *([f'client_ca = "{pki.ca}"'] if client_ca else []),
        "[users.alice]",
        f'password_hash = "{hash_password("alice-pw", **FAST)}"',
        'send = ["orders"]',
        'receive = ["orders"]',
        "[queues.orders]",
    ]) + "\n"


async def _serving(config: cfg.ServiceConfig, capsys, **options) -> tuple[asyncio.Task, asyncio.Event, str]:
    stop = asyncio.Event()
    task = asyncio.create_task(serve_forever(config, stop, **options))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    out = ""
    while "tether qm: ready " not in out:
        assert not task.done(), task.exception()
        assert loop.time() < deadline, "the service did not start"
        await asyncio.sleep(0.02)
        out += capsys.readouterr().out
    return task, stop, out.split("tether qm: ready ", 1)[1].split()[0]


async def test_serve_tls_and_users_from_the_configuration(pki, tmp_path, capsys):
    path = tmp_path / "qm.toml"
    path.write_text(_toml(pki, tmp_path))
    task, stop, url = await _serving(cfg.load(path), capsys)
    try:
        assert url.startswith("tls://127.0.0.1:")
        async with tether.QueueClient.connect(url, ssl=client_context(pki), user="alice", password="alice-pw") as c:
            await c.send("orders", b"configured")
            assert (await c.receive("orders", timeout=5)).body == b"configured"
            with pytest.raises(tether.PermissionDenied):
                await c.create_queue("other")
        with pytest.raises(AuthenticationFailed):
            await tether.QueueClient.connect(url, ssl=client_context(pki))
        with pytest.raises(ssl.SSLCertVerificationError):
            await tether.QueueClient.connect(url, user="alice", password="alice-pw", connect_timeout=5)
    finally:
        stop.set()
        await task


async def test_serve_mutual_tls_from_the_configuration(pki, tmp_path, capsys):
    path = tmp_path / "qm.toml"
    path.write_text(_toml(pki, tmp_path, client_ca=True))
    task, stop, url = await _serving(cfg.load(path), capsys)
    try:
        async with tether.QueueClient.connect(url, ssl=client_context(pki, cert="client"), user="alice",
                                              password="alice-pw") as c:
            await c.send("orders", b"with a client certificate")
        with pytest.raises(ssl.SSLError):
            await tether.QueueClient.connect(url, ssl=client_context(pki), user="alice", password="alice-pw",
                                             connect_timeout=5)
    finally:
        stop.set()
        await task


async def test_serve_refuses_to_start_with_anonymous_access_beyond_loopback(tmp_path):
    data = tmp_path / "d"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tether", "qm", "serve", "--listen", "tcp://0.0.0.0:0", "--data-dir", str(data),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, err
    assert lines[0].startswith("tether: error: config: refusing to listen on tcp://0.0.0.0:0")
    assert "allow_anonymous" in lines[0]
    assert not data.exists()            # refused before opening anything


async def test_allow_anonymous_serves_beyond_loopback(tmp_path, capsys):
    config = cfg.from_dict({"data_dir": str(tmp_path / "d"), "listen": "tcp://0.0.0.0:0", "allow_anonymous": True,
                            "queues": {"q": {}}})
    task, stop, url = await _serving(config, capsys)
    try:
        port = url.rsplit(":", 1)[1]
        async with tether.QueueClient.connect(f"tcp://127.0.0.1:{port}") as client:
            await client.send("q", b"anonymous")
    finally:
        stop.set()
        await task


def _base(pki) -> dict:
    cert, key = pki.cert("server")
    return {"listen": ["tls://127.0.0.1:7600"], "tls": {"cert": cert, "key": key}}


@pytest.mark.parametrize("change, match", [
    ({"tls": {}}, r"listen URL 'tls://127\.0\.0\.1:7600' needs \[tls\] cert and key"),
    ({"listen": ["tcp://127.0.0.1:7600"]}, r"\[tls\] is set but no listen URL is tls://"),
    ({"tls": {"cert": "CERT", "key": "KEY", "ca": "x"}}, r"unknown keys in \[tls\]: ca"),
    ({"tls": {"cert": "/nonexistent.pem", "key": "KEY"}}, r"tls\.cert/tls\.key: cannot load '/nonexistent\.pem'"),
    ({"tls": {"cert": "CERT", "key": "KEY", "client_ca": "/nonexistent-ca.pem"}},
     r"tls\.client_ca: cannot load '/nonexistent-ca\.pem'"),
    ({"tls": {"cert": 7, "key": "KEY"}}, r"tls\.cert must be a file name"),
    ({"listen": ["udp://127.0.0.1:7600"], "tls": None}, "tcp:// or tls:// only"),
    ({"listen": ["tcp://0.0.0.0:7600"], "tls": None}, r"refusing to listen on tcp://0\.0\.0\.0:7600"),
    ({"listen": ["tls://0.0.0.0:7600"]}, r"refusing to listen on tls://0\.0\.0\.0:7600.*allow_anonymous"),
    ({"listen": ["tcp://0.0.0.0:7600"], "tls": None, "users": "ALICE"},
     r"passwords travel only over TLS or loopback; listen on tls://0\.0\.0\.0:7600"),
    ({"allow_anonymous": "yes"}, "allow_anonymous must be true or false"),
    ({"allow_anonymous": True, "users": "ALICE"}, "allow_anonymous has no meaning with users"),
    ({"users": {"alice": {"password_hash": "nope"}}}, r"users\.alice\.password_hash"),
    ({"users": {"alice": {"password_hash": "HASH", "recieve": []}}}, r"users\.alice: unknown keys recieve"),
    ({"remotes": {"qm.example:7600": {"user": "qm-east", "password": "pw"}}},
     r"remotes\['qm\.example:7600'\]: refusing to send the password .* over plain TCP"),
    ({"remotes": {"qm.example:7600": {"cafile": "CA", "tls": False}}}, r'remotes\."qm\.example:7600": tls = false'),
    ({"remotes": {"qm.example:7600": {"cafile": "/nonexistent-ca.pem"}}},
     r'remotes\."qm\.example:7600"\.cafile: cannot load'),
    ({"remotes": {"qm.example:7600": {"user": "qm-east"}}}, "user and password go together"),
    ({"remotes": {"qm.example:7600": {"passwd": "x"}}}, r'remotes\."qm\.example:7600": unknown keys passwd'),
    ({"remotes": {"qm.example:7600": {"cert": "CERT"}}}, "cert and key go together"),
    ({"remotes": {"qm.example": {}}}, r"remote 'qm\.example' must be HOST:PORT"),
    ({"remotes": {"qm.example:7600": {"tls": "yes"}}}, r"\.tls must be true or false"),
])
def test_every_new_key_is_checked_naming_it(pki, change, match):
    cert, key = pki.cert("server")
    alice = {"alice": {"password_hash": hash_password("pw", **FAST)}}
    data = _base(pki)
    for name, value in change.items():
        if value is None:
            data.pop(name)
        else:
            data[name] = alice if value == "ALICE" else value
    replace = {"CERT": cert, "KEY": key, "CA": pki.ca, "HASH": alice["alice"]["password_hash"]}

    def fill(value):
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return replace.get(value, value) if isinstance(value, str) else value

    data = fill(data)
    with pytest.raises(ValueError, match=match):
        cfg.from_dict(data, source="qm.toml")


def test_remotes_from_the_configuration(pki):
    cert, key = pki.cert("client")
    config = cfg.from_dict({"remotes": {
        "QM-West.example:7600": {"user": "qm-east", "password": "pw", "cafile": pki.ca, "cert": cert, "key": key},
        "qm-north.example:7600": {"user": "qm-east", "password": "pw", "tls": True},
        "127.0.0.1:7601": {"user": "qm-east", "password": "pw"},          # loopback: plain TCP is allowed
        "qm-south.example:7600": {},
    }})
    west = config.remotes["qm-west.example:7600"]
    assert west.url("qm-west.example:7600") == "tls://qm-west.example:7600" and west.ssl is not None
    assert west.ssl.verify_mode == ssl.CERT_REQUIRED and west.ssl.check_hostname
    north = config.remotes["qm-north.example:7600"]
    assert north.uses_tls and north.ssl is None       # the system's CAs
    assert not config.remotes["127.0.0.1:7601"].uses_tls
    assert not config.remotes["qm-south.example:7600"].uses_tls
    assert "pw" not in repr(west)


def test_a_configuration_with_mutual_tls_loads(pki, tmp_path):
    path = tmp_path / "qm.toml"
    path.write_text(_toml(pki, tmp_path, client_ca=True))
    config = cfg.load(path)
    assert config.users is not None and "alice" in config.users
    assert config.server_context().verify_mode == ssl.CERT_REQUIRED


async def test_serve_freezes_what_replay_made_when_asked(tmp_path, capsys):
    # the command's own process freezes its heap once the journal is replayed, so full
    # collections no longer rescan a backlog; the service works as before
    data = tmp_path / "data"
    async with tether.QueueManager.open(str(data)) as qm:
        await qm.create_queue("backlog")
        await qm.send_many("backlog", [b"old-%d" % i for i in range(2000)])
    config = cfg.ServiceConfig(data_dir=str(data), listen=["tcp://127.0.0.1:0"])
    before = gc.get_freeze_count()
    task, stop, url = await _serving(config, capsys, freeze_heap=True)
    try:
        assert gc.get_freeze_count() > before + 2000
        async with tether.QueueClient.connect(url) as c:
            message = await c.receive("backlog", timeout=5)
            assert message.body == b"old-0"
            await message.complete()
            await c.send("backlog", b"new")
            info = await c.queue_info("backlog")
            assert info.depth + info.in_flight == 2000
    finally:
        gc.unfreeze()
        stop.set()
        await task
