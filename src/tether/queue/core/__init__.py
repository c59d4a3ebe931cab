"""The queue core: every decision about every message, sans-IO (no asyncio, no clock, no
files). `QueueCore` (engine.py) takes requests with `now` and gives back journal records,
hand-offs to waiting receivers and the next deadline; the stores and the asyncio adapters
(manager, service, client, forwarder) sit outside this package."""
from .engine import QueueCore
from .entry import Entry
from .info import QueueInfo
from .settings import QueueSettings

__all__ = ["Entry", "QueueCore", "QueueInfo", "QueueSettings"]
