"""The queue manager service's configuration: a TOML file (read with the stdlib `tomllib`)
whose values the command line may override.

    data_dir = "/var/lib/tether"
    listen = ["tcp://127.0.0.1:7600"]        # a string or a list
    fsync = "always"                          # always | interval | never
    fsync_interval = 0.05
    log_level = "INFO"
    metrics = "127.0.0.1:9600"                # Prometheus text at http://127.0.0.1:9600/metrics
                                              # (docs/operations.md; default: not served)
    source_journal = false                    # keep a copy of every forwarded message, once
    journal_max_length = 10000                # acknowledged, in $journal: at most this many,
    journal_time_to_live = 86400.0            # for this long (core/source_journal.py)

    [limits]
    max_frame_bytes = 8388608                 # largest protocol frame (session message)
    client_grace = 15.0                       # seconds a disconnected client's locks and
                                              # transactions wait for it to reconnect
    max_queues = 10000                        # queues of the manager, transmission queues too
    max_disk_bytes = 0                        # journal size over which durable sends are
                                              # refused (0: no limit)
    max_connections = 1024                    # and every other field of ServiceLimits
                                              # (src/tether/queue/limits.py)

    [queues.orders]                           # created (or checked) at start
    receive_error_handling = "move"
    time_to_live = 3600

    listen = ["tls://0.0.0.0:7600"]
    [tls]                                     # required by a tls:// listen URL
    cert = "server.pem"
    key = "server.key"
    client_ca = "ca.pem"                      # optional: require client certificates (mutual TLS)

    [users.alice]                             # with users, every client authenticates
    password_hash = "scrypt$..."              # printed by `tether qm passwd`
    send = ["orders", "jobs.*"]               # fnmatch patterns of queue names
    receive = ["orders"]
    admin = false
    forward = false

    allow_anonymous = false                   # without users: serve beyond loopback anyway

    [remotes."qm-west.example:7600"]          # how the forwarders reach that queue manager
    user = "qm-east"
    password = "..."
    cafile = "ca.pem"                         # tls:// (so does tls = true)

Unknown keys and wrong types are errors naming the key; queue settings are validated by
`QueueSettings` like any `create_queue`, users by auth.py, remotes by remotes.py. Relative
paths are relative to the working directory, as data_dir is.
"""
from __future__ import annotations

import math
import os
import ssl
import tomllib
from dataclasses import dataclass, field
from typing import Any

from ..metrics_http import parse_address
from ..session.adapters.url import parse as parse_url
from .auth import Access, Users
from .core.engine import DEFAULT_MAX_QUEUES
from .core.settings import QueueSettings
from .core.source_journal import DEFAULT_JOURNAL_MAX_LENGTH, DEFAULT_JOURNAL_TIME_TO_LIVE, JournalSettings
from .limits import ServiceLimits
from .remotes import Remote, validate_remotes

DEFAULT_LISTEN = "tcp://127.0.0.1:7600"
FSYNC_POLICIES = ("always", "interval", "never")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_TOP = {"data_dir", "listen", "fsync", "fsync_interval", "log_level", "metrics", "limits", "queues", "tls", "users",
        "allow_anonymous", "remotes", "source_journal", "journal_max_length", "journal_time_to_live"}
_JOURNAL = ("source_journal", "journal_max_length", "journal_time_to_live")
_SERVICE_LIMITS = set(ServiceLimits().as_dict())
_LIMITS = {"max_frame_bytes", "client_grace", "max_queues", "max_disk_bytes"} | _SERVICE_LIMITS
_TLS = {"cert", "key", "client_ca"}


@dataclass
class ServiceConfig:
    """Everything `tether qm serve` needs, validated."""

    data_dir: str | None = None
    listen: list[str] = field(default_factory=lambda: [DEFAULT_LISTEN])
    fsync: str = "always"
    fsync_interval: float = 0.05
    log_level: str = "INFO"
    #: "HOST:PORT" where GET /metrics answers (tether.metrics); None: not served
    metrics: str | None = None
    max_frame_bytes: int = 8 * 1024 * 1024
    client_grace: float = 15.0
    max_queues: int = DEFAULT_MAX_QUEUES
    max_disk_bytes: int = 0
    #: the ServiceLimits fields set in [limits] (the others keep their defaults)
    service_limits: dict[str, Any] = field(default_factory=dict)
    queues: dict[str, dict[str, Any]] = field(default_factory=dict)
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    users: Users | None = None
    allow_anonymous: bool = False
    remotes: dict[str, Remote] = field(default_factory=dict)
    source_journal: bool = False
    journal_max_length: int | None = DEFAULT_JOURNAL_MAX_LENGTH
    journal_time_to_live: float | None = DEFAULT_JOURNAL_TIME_TO_LIVE

    @property
    def limits(self) -> ServiceLimits:
        """The service's limits (validated by validate())."""
        return ServiceLimits.from_kwargs(**self.service_limits)

    def validate(self) -> "ServiceConfig":
        """Check every value; ValueError naming the one that is wrong. Returns self."""
        if not self.listen:
            raise ValueError("config: listen needs at least one URL")
        for url in self.listen:
            if not isinstance(url, str):
                raise ValueError(f"config: listen URLs must be strings, not {url!r}")
            if parse_url(url).scheme not in ("tcp", "tls"):
                raise ValueError(f"config: listen URL {url!r}: the queue service listens on tcp:// or tls:// only")
        self._validate_tls()
        if not isinstance(self.allow_anonymous, bool):
            raise ValueError(f"config: allow_anonymous must be true or false, not {self.allow_anonymous!r}")
        try:
            access = Access(self.users, allow_anonymous=self.allow_anonymous)
            for url in self.listen:
                access.check_listen(url)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"config: {exc}") from None
        try:
            self.remotes = validate_remotes(self.remotes)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"config: {exc}") from None
        try:
            JournalSettings.create(self.source_journal, self.journal_max_length, self.journal_time_to_live)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"config: {exc}") from None
        if self.fsync not in FSYNC_POLICIES:
            raise ValueError(f"config: fsync must be one of {', '.join(FSYNC_POLICIES)}, not {self.fsync!r}")
        _positive("fsync_interval", self.fsync_interval)
        if isinstance(self.log_level, str) and self.log_level.upper() in LOG_LEVELS:
            self.log_level = self.log_level.upper()
        else:
            raise ValueError(f"config: log_level must be one of {', '.join(LOG_LEVELS)} (any case), "
                             f"not {self.log_level!r}")
        if self.metrics is not None:
            try:
                parse_address(self.metrics, "metrics")
            except ValueError as exc:
                raise ValueError(f"config: {exc}") from None
        if isinstance(self.max_frame_bytes, bool) or not isinstance(self.max_frame_bytes, int) \
                or not 64 * 1024 <= self.max_frame_bytes <= 16 * 1024 * 1024:
            raise ValueError(f"config: limits.max_frame_bytes must be an integer 65536..16777216, "
                             f"not {self.max_frame_bytes!r}")
        _positive("limits.client_grace", self.client_grace)
        for name in ("max_queues", "max_disk_bytes"):
            value = getattr(self, name)
            low = 1 if name == "max_queues" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"config: limits.{name} must be an integer >= {low}, not {value!r}")
        try:
            self.limits
        except ValueError as exc:
            raise ValueError(f"config: limits: {exc}") from None
        for name, settings in self.queues.items():
            if not isinstance(settings, dict):
                raise ValueError(f"config: queues.{name} must be a table of settings")
            try:
                QueueSettings.from_kwargs(**settings)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"config: queues.{name}: {exc}") from None
        return self

    def _validate_tls(self) -> None:
        for key in ("cert", "key", "client_ca"):
            value = getattr(self, f"tls_{key}")
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"config: tls.{key} must be a file name, not {value!r}")
        served = [url for url in self.listen if parse_url(url).scheme == "tls"]
        if served and (self.tls_cert is None or self.tls_key is None):
            raise ValueError(f"config: listen URL {served[0]!r} needs [tls] cert and key "
                             "(the server's certificate and its private key)")
        if not served and (self.tls_cert or self.tls_key or self.tls_client_ca):
            raise ValueError("config: [tls] is set but no listen URL is tls://")
        if served:
            self.server_context()       # the files load, or the error names them now

    def server_context(self) -> ssl.SSLContext | None:
        """The server's SSL context for tls:// listen URLs ([tls]), None without [tls];
        ValueError naming the key whose file does not load."""
        if self.tls_cert is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"config: tls.cert/tls.key: cannot load {self.tls_cert!r} with key "
                             f"{self.tls_key!r}: {exc}") from None
        if self.tls_client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED     # mutual TLS: only clients this CA issued
            try:
                context.load_verify_locations(self.tls_client_ca)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"config: tls.client_ca: cannot load {self.tls_client_ca!r}: {exc}") from None
        return context


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ValueError(f"config: {name} must be a number of seconds > 0, not {value!r}")


def load(path: str | os.PathLike) -> ServiceConfig:
    """The configuration in a TOML file; ValueError (naming the file and key) if it is
    unreadable or wrong, FileNotFoundError if it is missing."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {os.fspath(path)!r} is not valid TOML: {exc}") from None
    return from_dict(data, source=os.fspath(path))


def from_dict(data: dict[str, Any], source: str = "config") -> ServiceConfig:
    """A validated ServiceConfig from parsed TOML."""
    unknown = set(data) - _TOP
    if unknown:
        raise ValueError(f"{source}: unknown keys {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted(_TOP))})")
    config = ServiceConfig()
    if "data_dir" in data:
        if not isinstance(data["data_dir"], str):
            raise ValueError(f"{source}: data_dir must be a string")
        config.data_dir = data["data_dir"]
    if "listen" in data:
        listen = data["listen"]
        config.listen = [listen] if isinstance(listen, str) else listen
        if not isinstance(config.listen, list):
            raise ValueError(f"{source}: listen must be a URL or a list of URLs")
    for key in ("fsync", "fsync_interval", "log_level", "metrics", *_JOURNAL):
        if key in data:
            setattr(config, key, data[key])
    limits = data.get("limits", {})
    if not isinstance(limits, dict):
        raise ValueError(f"{source}: [limits] must be a table")
    unknown = set(limits) - _LIMITS
    if unknown:
        raise ValueError(f"{source}: unknown limits {', '.join(sorted(unknown))} (known: {', '.join(sorted(_LIMITS))})")
    for key, value in limits.items():
        if key in _SERVICE_LIMITS:
            config.service_limits[key] = value
        else:
            setattr(config, key, value)
    queues = data.get("queues", {})
    if not isinstance(queues, dict):
        raise ValueError(f"{source}: [queues] must be a table of queue tables")
    config.queues = dict(queues)
    tls = data.get("tls", {})
    if not isinstance(tls, dict):
        raise ValueError(f"{source}: [tls] must be a table")
    unknown = set(tls) - _TLS
    if unknown:
        raise ValueError(f"{source}: unknown keys in [tls]: {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted(_TLS))})")
    for key, value in tls.items():
        setattr(config, f"tls_{key}", value)
    if "allow_anonymous" in data:
        config.allow_anonymous = data["allow_anonymous"]
    try:
        if "users" in data:
            config.users = Users.from_config(data["users"])
        remotes = data.get("remotes", {})
        if not isinstance(remotes, dict):
            raise ValueError('[remotes] must be a table of [remotes."HOST:PORT"] tables')
        config.remotes = {name: Remote.from_config(table, f'remotes."{name}"') for name, table in remotes.items()}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: {exc}") from None
    try:
        return config.validate()
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
