"""The queue manager service's configuration: a TOML file (read with the stdlib `tomllib`)
whose values the command line may override.

    data_dir = "/var/lib/tether"
    listen = ["tcp://127.0.0.1:7600"]        # a string or a list
    fsync = "always"                          # always | interval | never
    fsync_interval = 0.05
    log_level = "INFO"

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

Unknown keys and wrong types are errors naming the key; queue settings are validated by
`QueueSettings` like any `create_queue`.
"""
from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from ..session.url import parse as parse_url
from .core.engine import DEFAULT_MAX_QUEUES
from .core.settings import QueueSettings
from .limits import ServiceLimits

DEFAULT_LISTEN = "tcp://127.0.0.1:7600"
FSYNC_POLICIES = ("always", "interval", "never")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_TOP = {"data_dir", "listen", "fsync", "fsync_interval", "log_level", "limits", "queues"}
_SERVICE_LIMITS = set(ServiceLimits().as_dict())
_LIMITS = {"max_frame_bytes", "client_grace", "max_queues", "max_disk_bytes"} | _SERVICE_LIMITS


@dataclass
class ServiceConfig:
    """Everything `tether qm serve` needs, validated."""

    data_dir: str | None = None
    listen: list[str] = field(default_factory=lambda: [DEFAULT_LISTEN])
    fsync: str = "always"
    fsync_interval: float = 0.05
    log_level: str = "INFO"
    max_frame_bytes: int = 8 * 1024 * 1024
    client_grace: float = 15.0
    max_queues: int = DEFAULT_MAX_QUEUES
    max_disk_bytes: int = 0
    #: the ServiceLimits fields set in [limits] (the others keep their defaults)
    service_limits: dict[str, Any] = field(default_factory=dict)
    queues: dict[str, dict[str, Any]] = field(default_factory=dict)

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
            if parse_url(url).scheme != "tcp":
                raise ValueError(f"config: listen URL {url!r}: the queue service listens on tcp:// only")
        if self.fsync not in FSYNC_POLICIES:
            raise ValueError(f"config: fsync must be one of {', '.join(FSYNC_POLICIES)}, not {self.fsync!r}")
        _positive("fsync_interval", self.fsync_interval)
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"config: log_level must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}")
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
    for key in ("fsync", "fsync_interval", "log_level"):
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
    try:
        return config.validate()
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
