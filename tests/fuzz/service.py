"""Fuzz target 4: the live queue service, fed hostile sessions.

One real in-memory `QueueManager` serves at a loopback URL (`listen()`), the whole run on
one uvloop event loop. Each input is one hostile client session, handed to that manager's
real `QueueService` exactly as a new session is (`service._handle`), through a stand-in
for the reliable session (`HostileSession`) that delivers the input's frames and takes
the service's replies. An input is one config byte and frames separated by `SEPARATOR`;
the config byte may prepend a valid HELLO (so mutations reach the requests), picks the
client id (one of a few, so sessions resume each other's client state, or its own), and
whether the frames come at once or one per read, and how the session ends.

The property, per input: the session's handler returns (nothing but the session's own end
comes out of it) within a bound; every reply frame is a valid protocol frame
(`parse_response` accepts every item); no request fails inside the service
(`internal-error` replies, or errors logged by tether or asyncio); a protocol error is
answered with `protocol-error` and ends that session. At every checkpoint a real
`QueueClient` connects over loopback, sends and receives on a queue of its own: the
service stays up for other clients. The manager is replaced every `RESET_EVERY` inputs so
that memory measures leaks, not the queues and messages the inputs legitimately created.
"""
from __future__ import annotations

import asyncio
import logging
import types
import zlib

import uvloop

import tether
from tether.errors import SequenceClosed, SequenceTerminated, TetherError
from tether.queue import protocol as P

from fuzz import Finding
from fuzz.mutators import SEPARATOR_DEFAULT, Layout
from fuzz.protocol import CLIENT_ID, hello, valid_requests

SEPARATOR = SEPARATOR_DEFAULT
RESET_EVERY = 5000
SESSION_BOUND = 10.0         # seconds a hostile session may take before it counts as a hang
SETTLE_ROUNDS = 40           # loop turns the requests of a session get before it ends
CLIENT_IDS = [CLIENT_ID, b"fuzz-client-0002", b"forwarder-000001"]


class HostileSession:
    """What a Connection uses of a reliable session: the input's frames in, replies out."""

    def __init__(self, frames: list[bytes], one_by_one: bool, ending: TetherError,
                 settle_rounds: int = SETTLE_ROUNDS) -> None:
        self.settings = types.SimpleNamespace(max_message_size=P.SESSION_SETTINGS["max_message_size"])
        self.peer_address = ("127.0.0.1", 40000)     # loopback: where anonymous clients may be
        self.unacknowledged_bytes = 0
        self.link = object()
        self.replies: list[bytes] = []
        self.aborted: str | None = None
        self.connection = None
        self.ending = ending
        self._frames = list(frames)
        self._one_by_one = one_by_one
        self._settle_rounds = settle_rounds

    @property
    def closed(self) -> bool:
        return self.aborted is not None

    def set_link_listener(self, listener) -> None:
        if listener is not None:
            self.connection = listener.__self__      # the Connection, to wait for its requests

    def send_nowait(self, messages: list[bytes]) -> None:
        if self.closed:
            raise SequenceClosed("the session is closed")
        self.replies.extend(messages)

    def abort(self, reason: str) -> None:
        if self.aborted is None:
            self.aborted = reason

    async def close(self, timeout: float | None = None) -> None:
        self.abort("closed by the service")

    async def recv_many(self) -> list[bytes]:
        if self._frames and not self.closed:
            if self._one_by_one:
                return [self._frames.pop(0)]
            frames, self._frames = self._frames, []
            return frames
        await self.settle()
        if self.closed:
            raise SequenceTerminated(f"aborted: {self.aborted}")
        raise self.ending

    async def settle(self) -> None:
        """Give the session's requests some loop turns to run (those that wait on a queue
        or a transaction stay waiting, and are cancelled when the session ends)."""
        tasks = self.connection._tasks if self.connection is not None else ()
        for _ in range(self._settle_rounds):
            if all(task.done() for task in tasks):
                return
            await asyncio.sleep(0)


class ErrorLog(logging.Handler):
    """Counts what tether and asyncio log at ERROR: a request that failed inside the service,
    a task or callback that raised."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[tuple[str, str]] = []     # (kind, details)

    def emit(self, record: logging.LogRecord) -> None:
        # (asyncio logs a failed task or callback with its exception as exc_info too)
        exc = record.exc_info[1] if record.exc_info else None
        kind = f"{record.name} logged {type(exc).__name__ if exc is not None else record.getMessage()[:60]}"
        self.records.append((kind, f"{record.getMessage()[:300]} ({exc!r:.200})"))


class Target:
    layout = Layout(header=1, separator=SEPARATOR)

    def __init__(self, seed: int = 1) -> None:
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.errors = ErrorLog()
        for name in ("tether", "asyncio"):
            logging.getLogger(name).addHandler(self.errors)
        logging.getLogger("tether").setLevel(logging.ERROR)   # hostile sessions warn a lot
        self.qm = None
        self.inputs = 0
        self.counts = {"sessions": 0, "protocol_errors": 0, "replies": 0, "resets": 0, "canary_checks": 0}
        self.loop.run_until_complete(self.reset())

    async def reset(self) -> None:
        if self.qm is not None:
            await self.qm.close()
            self.counts["resets"] += 1
        self.qm = await tether.QueueManager.open(None, listen="tcp://127.0.0.1:0")
        self.service = self.qm.services[0]
        for name in ("q", "canary"):
            await self.qm.create_queue(name)

    def seeds(self) -> list[bytes]:
        return seed_inputs()

    def one(self, data: bytes) -> None:
        if not data:
            return
        self.inputs += 1
        if self.inputs % RESET_EVERY == 0:
            self.loop.run_until_complete(self.reset())
        self.loop.run_until_complete(self.session(data[0], self.layout.split(data)[1][:32]))

    async def session(self, config: int, frames: list[bytes]) -> None:
        if config & 0x01:
            client_id = CLIENT_IDS[(config >> 1) & 3] if (config >> 1) & 3 < len(CLIENT_IDS) \
                else b"fuzz-%011d" % zlib.crc32(b"".join(frames))
            frames = [P.encode([hello(client_id=client_id, epoch=0 if config & 0x08 else 1)])] + frames
        ending = SequenceClosed("the client closed") if config & 0x20 else SequenceTerminated("the client aborted")
        session = HostileSession(frames, one_by_one=bool(config & 0x10), ending=ending)
        logged = len(self.errors.records)
        try:
            await asyncio.wait_for(self.service._handle(session), SESSION_BOUND)
        except TimeoutError:
            raise AssertionError(f"a hostile session did not end within {SESSION_BOUND} s") from None
        except TetherError as exc:
            # the session's own end, which the session server logs and drops
            if not (exc is session.ending or isinstance(exc, SequenceTerminated)):
                raise
        self.counts["sessions"] += 1
        await asyncio.sleep(0)            # a reply flush scheduled with call_soon
        self.check_replies(session)
        if len(self.errors.records) > logged:
            raise Finding(*self.errors.records[logged])

    def check_replies(self, session: HostileSession) -> None:
        protocol_error = False
        for frame in session.replies:
            for item in P.decode(frame):
                P.parse_response(item)
                self.counts["replies"] += 1
                if item[0] == P.ERROR:
                    assert item[2] != "internal-error", f"a request failed in the service: {item[3]}"
                    protocol_error |= item[2] == "protocol-error"
        if protocol_error:
            self.counts["protocol_errors"] += 1
            assert session.closed, "a protocol error did not end the session"

    def checkpoint(self) -> None:
        self.loop.run_until_complete(asyncio.wait_for(self.canary(), 20))

    async def canary(self) -> None:
        """Another client, over a real loopback session, is served as if nothing happened."""
        async with tether.QueueClient.connect(self.service.url, request_timeout=10) as client:
            body = b"canary %d" % self.inputs
            await client.send("canary", body)
            message = await client.receive("canary", timeout=5)
            assert message is not None and message.body == body, "the canary's message did not come back"
            await message.complete()
        self.counts["canary_checks"] += 1

    def figures(self) -> dict:
        return dict(self.counts, clients_now=len(self.service.clients))


def seed_inputs() -> list[bytes]:
    """Sessions a real client could have, each request alone and all of them together."""
    requests = [item for item in valid_requests() if item[0] != P.HELLO]
    for item in requests:
        if item[0] in (P.CREATE, P.DELETE, P.SEND, P.SUBSCRIBE, P.RECEIVE, P.INFO, P.TX_SEND, P.FORWARD):
            item[2 if item[0] != P.TX_SEND else 3] = "q" if item[0] != P.CREATE else "made"
    seeds = []
    for item in requests:
        seeds.append(bytes([0x01]) + P.encode([item]))
        seeds.append(bytes([0x00]) + P.encode([hello(), item]))
    flow = [
        [[P.TX_BEGIN, 20]],
        [[P.SEND, 21, "q", b"one", None, None, 0], [P.SEND, 22, "q", b"two", {"h": 1}, 60.0, 1]],
        [[P.RECEIVE, 23, "q", 0, 0], [P.SUBSCRIBE, 24, 5, "q", 4], [P.CREDIT, 0, 5, 2]],
        [[P.TX_SEND, 25, 1, "q", b"tx", None, None], [P.TX_COMMIT, 26, 1]],
        [[P.COMPLETE, 27, 1], [P.ABANDON, 28, 2], [P.RELEASE, 0, [3]], [P.SETTLED, 0, 2]],
        [[P.FORWARD, 29, "q", 9, "fwd-9", b"f", None, 1.0, None], [P.INFO, 30, None]],
    ]
    for config in (0x01, 0x13, 0x25, 0x39):
        seeds.append(bytes([config]) + SEPARATOR.join(P.encode(items) for items in flow))
    return seeds
