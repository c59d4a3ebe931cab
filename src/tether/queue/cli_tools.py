"""`tether send`, `tether recv`, `tether peek`, `tether queues`: a queue manager service
from the shell.

    tether send tether://127.0.0.1:7600/orders 'hello'        # prints the message id
    echo hello | tether send tether://127.0.0.1:7600/orders -
    tether recv tether://127.0.0.1:7600/orders --count 10 --timeout 5
    tether peek tether://127.0.0.1:7600/orders --count 10      # no lock, nothing counted
    tether queues tether://127.0.0.1:7600 [--json]
    TETHER_PASSWORD=... tether recv tls://qm.example:7600/orders --user alice [--cafile ca.pem]

tls://HOST:PORT/QUEUE connects over TLS, and so does tether://HOST:PORT/QUEUE with
--cafile (the CA that issued the service's certificate; default: the system's CAs).
`--user` authenticates; the password comes from TETHER_PASSWORD, or is asked for on the
terminal without echo.

Every failure is one line on stderr ("tether: error: ...", naming the service's address
when the connection is what failed) and an exit status from tether.exit_codes: 1 an
error, 2 a usage error, 3 a timeout (recv's --timeout ran out, or the service did not
answer in time), 128 + the signal when SIGINT or SIGTERM interrupted it.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import getpass
import json
import os
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from .. import exit_codes
from ..errors import (
    InactivityTimeout,
    MessageTooLarge,
    QueueUnavailable,
    RetryLimitExceeded,
    SessionFault,
    TetherError,
)
from ..runner import new_loop_runner
from ..table_output import print_table
from .core.address import split_subqueue, validate_queue_name

_COLUMNS = (("name", "name"), ("durable", "durable"), ("depth", "depth"), ("in flight", "in_flight"),
            ("retrying", "retrying"), ("dead", "dead"), ("poison", "poison"), ("faulted", "faulted"))


PASSWORD_VARIABLE = "TETHER_PASSWORD"


def queue_url(url: str) -> tuple[str, str]:
    """(service URL, queue) of tether://HOST:PORT/QUEUE or tls://HOST:PORT/QUEUE;
    ValueError naming what is wrong."""
    from .client import service_url

    parts = urlsplit(url)
    if parts.scheme not in ("tether", "tls"):
        raise ValueError(f"bad queue URL {url!r}: expected tether://HOST:PORT/QUEUE or tls://HOST:PORT/QUEUE")
    queue = parts.path.lstrip("/")
    if not queue:
        raise ValueError(f"bad queue URL {url!r}: no queue name after the port")
    base, _ = split_subqueue(queue)
    if base != "$dead" and not base.startswith(("$xmit:", "$return:")):
        validate_queue_name(base)
    service = service_url(parts._replace(scheme="tether").geturl())
    if parts.scheme == "tls":
        service = "tls" + service[len("tcp"):]
    return service, queue


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """--connect-timeout, --user and --cafile: how every remote command connects."""
    parser.add_argument("--connect-timeout", type=float, default=5.0, metavar="S",
                        help="give up connecting after S seconds (default 5; exit status 3)")
    parser.add_argument("--user", default=None, metavar="NAME",
                        help=f"authenticate as NAME; the password comes from ${PASSWORD_VARIABLE}, "
                             "or is asked for on the terminal")
    parser.add_argument("--cafile", default=None, metavar="PEM",
                        help="connect over TLS, trusting the CA certificates in PEM (default for tls:// URLs: "
                             "the system's CAs)")


def configure_send(parser: argparse.ArgumentParser) -> None:
    """Options of `tether send`."""
    parser.add_argument("url", help="tether://HOST:PORT/QUEUE")
    parser.add_argument("data", nargs="?", default="-", help="the message body, or - for stdin (default)")
    parser.add_argument("--header", action="append", default=[], metavar="NAME=VALUE",
                        help="a message header (repeatable)")
    parser.add_argument("--ttl", type=float, default=None, metavar="S", help="time to live in seconds")
    parser.add_argument("--empty", action="store_true",
                        help="send an empty body (refused otherwise: an empty stdin is usually a mistake)")
    add_connection_options(parser)


def configure_recv(parser: argparse.ArgumentParser) -> None:
    """Options of `tether recv`."""
    parser.add_argument("url", help="tether://HOST:PORT/QUEUE (sub-queues: QUEUE;poison, QUEUE;retry)")
    parser.add_argument("--count", type=int, default=1, metavar="N", help="messages to receive (default 1)")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="wait at most S seconds in all (default: until --count arrived); exit status 3 "
                             "when fewer came")
    parser.add_argument("--json", action="store_true", help="one JSON object per message")
    add_connection_options(parser)


def configure_peek(parser: argparse.ArgumentParser) -> None:
    """Options of `tether peek`."""
    parser.add_argument("url", help="tether://HOST:PORT/QUEUE (sub-queues: QUEUE;poison, QUEUE;retry)")
    parser.add_argument("--count", type=int, default=1, metavar="N",
                        help="show up to N messages, in the order receivers would get them (default 1)")
    parser.add_argument("--json", action="store_true", help="one JSON object per message")
    add_connection_options(parser)


def configure_queues(parser: argparse.ArgumentParser) -> None:
    """Options of `tether queues`."""
    parser.add_argument("url", help="tcp://HOST:PORT, tls://HOST:PORT or tether://HOST:PORT of a queue manager")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_connection_options(parser)


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived while a command ran."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


async def _interruptible(work: Callable[[], Awaitable[int]]) -> int:
    """`work()`, cancelled (its finally blocks run: a client closes cleanly) by SIGINT or
    SIGTERM, which then raise Interrupted."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []

    def stop(signum: int) -> None:
        if not received:
            received.append(signum)
            task.cancel()

    signums = (signal.SIGINT, signal.SIGTERM)
    for signum in signums:
        loop.add_signal_handler(signum, stop, signum)
    try:
        return await work()
    except asyncio.CancelledError:
        if received:
            raise Interrupted(received[0]) from None
        raise
    finally:
        for signum in signums:
            loop.remove_signal_handler(signum)


def _connection_failed(exc: BaseException) -> bool:
    """Whether `exc` says the connection to the service failed (rather than a request)."""
    return isinstance(exc, (OSError, QueueUnavailable)) or \
        (isinstance(exc, SessionFault) and not isinstance(exc, MessageTooLarge))


def run_command(work: Callable[[], Awaitable[int]], address: str | None = None) -> int:
    """Run `work` and turn every failure into one line and its exit status; a connection
    failure names `address` (the service's URL)."""
    try:
        return new_loop_runner()(_interruptible(work))
    except Interrupted as exc:
        print(f"tether: interrupted ({exc})", file=sys.stderr)
        return exit_codes.INTERRUPTED_BASE + exc.signum
    except KeyboardInterrupt:
        print("tether: interrupted", file=sys.stderr)
        return exit_codes.INTERRUPTED_BASE + signal.SIGINT
    except (TetherError, OSError, ValueError, TypeError) as exc:
        text = str(exc) or exc.__class__.__name__
        if isinstance(exc, ConnectionRefusedError):
            text = f"connection refused ({text})"
        if address is not None and _connection_failed(exc) and address not in text:
            text = f"queue manager at {address}: {text}"
        print(f"tether: error: {text}", file=sys.stderr)
        return exit_codes.TIMEOUT if isinstance(exc, _NO_ANSWER) else exit_codes.ERROR


#: failures that mean nothing answered in time: exit status 3 (exit_codes.TIMEOUT)
_NO_ANSWER = (TimeoutError, RetryLimitExceeded, InactivityTimeout, QueueUnavailable)


def _password(user: str) -> str:
    """The password of `user`: $TETHER_PASSWORD, else asked on the terminal without echo
    (never read from stdin, which may carry a message body)."""
    password = os.environ.get(PASSWORD_VARIABLE)
    if password:
        return password
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        raise ValueError(f"--user {user}: no password: set {PASSWORD_VARIABLE} (there is no terminal "
                         "to ask on)") from None
    try:
        return getpass.getpass(f"Password for {user}: ")
    except EOFError:
        raise ValueError(f"--user {user}: no password given") from None


async def connect_client(url: str, args: argparse.Namespace) -> Any:
    """A QueueClient for the service at `url` (tcp:// or tls://), as the common options say.
    TimeoutError naming the address when it does not answer within --connect-timeout."""
    from .client import QueueClient

    timeout = args.connect_timeout
    if not timeout > 0:
        raise ValueError(f"--connect-timeout must be > 0, not {timeout}")
    context = None
    if args.cafile is not None:
        if url.startswith("tcp://") and args.url.startswith("tcp://"):
            raise ValueError(f"--cafile is for TLS: use tls:// instead of {args.url}")
        url = "tls://" + url.split("://", 1)[1]
        try:
            context = ssl.create_default_context(cafile=args.cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"--cafile {args.cafile}: cannot load it: {exc}") from None
    password = None if args.user is None else _password(args.user)
    try:
        return await asyncio.wait_for(QueueClient.connect(url, ssl=context, user=args.user, password=password,
                                                          connect_timeout=timeout, prefetch=1), timeout + 1)
    except TimeoutError:
        raise TimeoutError(f"no queue manager answered at {url} within {timeout} s") from None


def main_send(args: argparse.Namespace) -> int:
    """`tether send URL [DATA|-]`: prints the new message's id."""
    async def work() -> int:
        service, queue = queue_url(args.url)
        headers = {}
        for header in args.header:
            name, sep, value = header.partition("=")
            if not sep or not name:
                raise ValueError(f"--header {header!r}: expected NAME=VALUE")
            headers[name] = value
        body = sys.stdin.buffer.read() if args.data == "-" else args.data.encode()
        if not body and not args.empty:
            source = "stdin gave nothing" if args.data == "-" else "DATA is empty"
            raise ValueError(f"refusing to send an empty message ({source}); pass --empty to send one")
        client = await connect_client(service, args)
        try:
            message_id = await client.send(queue, body, headers=headers or None, time_to_live=args.ttl)
        finally:
            await client.close()
        print(message_id)
        return 0

    return run_command(work, _address(args.url))


def _address(url: str) -> str | None:
    """The service URL of a command's URL argument, for error messages (None if it is bad:
    the command itself says why)."""
    try:
        return queue_url(url)[0]
    except ValueError:
        try:
            from .client import service_url

            return service_url(url)
        except ValueError:
            return None


def _check_count(count: int) -> None:
    if count < 1:
        raise ValueError(f"--count must be >= 1, not {count}")


def main_recv(args: argparse.Namespace) -> int:
    """`tether recv URL`: writes each body (or JSON) to stdout and completes it."""
    async def work() -> int:
        service, queue = queue_url(args.url)
        _check_count(args.count)
        if args.timeout is not None and args.timeout < 0:
            raise ValueError(f"--timeout must be >= 0, not {args.timeout}")
        client = await connect_client(service, args)
        loop = asyncio.get_running_loop()
        deadline = None if args.timeout is None else loop.time() + args.timeout
        received = 0
        out = sys.stdout.buffer
        progress = _Progress(args.count) if args.count > 1 and sys.stderr.isatty() and not sys.stdout.isatty() \
            else None
        try:
            while received < args.count:
                remaining = None if deadline is None else max(0.0, deadline - loop.time())
                message = await client.receive(queue, timeout=remaining)
                if message is None:
                    break
                if args.json:
                    out.write(json.dumps(_as_json(message)).encode() + b"\n")
                else:
                    out.write(message.body + b"\n")
                out.flush()
                await message.complete()
                received += 1
                if progress is not None:
                    progress.advance()
        finally:
            if progress is not None:
                progress.stop()
            await client.close()
        if received < args.count:
            print(f"tether: error: received {received} of {args.count} messages within {args.timeout} s",
                  file=sys.stderr)
            return exit_codes.TIMEOUT
        return 0

    return run_command(work, _address(args.url))


class _Progress:
    """A rich progress bar on stderr (a terminal) while `recv --count N` writes elsewhere."""

    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TimeElapsedColumn,
        )

        self._progress = Progress("received", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                  console=Console(file=sys.stderr), transient=True)
        self._task = self._progress.add_task("recv", total=total)
        self._progress.start()

    def advance(self) -> None:
        self._progress.advance(self._task)

    def stop(self) -> None:
        self._progress.stop()


def main_peek(args: argparse.Namespace) -> int:
    """`tether peek URL`: writes up to --count waiting messages (bodies, or JSON) without
    locking them or counting a delivery."""
    async def work() -> int:
        service, queue = queue_url(args.url)
        _check_count(args.count)
        client = await connect_client(service, args)
        try:
            messages = await client.peek(queue, args.count)
        finally:
            await client.close()
        out = sys.stdout.buffer
        for message in messages:
            out.write(json.dumps(_as_json(message)).encode() + b"\n" if args.json else message.body + b"\n")
        out.flush()
        return 0

    return run_command(work, _address(args.url))


def _as_json(message: Any) -> dict:
    try:
        body: Any = message.body.decode("utf-8")
        encoding = "utf-8"
    except UnicodeDecodeError:
        body, encoding = base64.b64encode(message.body).decode(), "base64"
    return {"id": message.id, "body": body, "body_encoding": encoding, "headers": _jsonable(message.headers),
            "delivery_count": message.delivery_count, "enqueued_at": message.enqueued_at,
            "expires_at": message.expires_at, "dead_letter_reason": message.dead_letter_reason,
            "dead_letter_source": message.dead_letter_source}


def _jsonable(value: Any) -> Any:
    """Read-only header maps and tuples as JSON objects and arrays (bytes as base64)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def main_queues(args: argparse.Namespace) -> int:
    """`tether queues URL`: a table (or --json) of every queue's counts."""
    async def work() -> int:
        from .client import service_url

        client = await connect_client(service_url(args.url), args)
        try:
            infos = await client.queue_infos()
        finally:
            await client.close()
        if args.json:
            print(json.dumps([dict(info) for info in infos], indent=2))
            return 0
        rows = [[str(info[key]).lower() if isinstance(info[key], bool) else str(info[key]) for _, key in _COLUMNS]
                for info in infos]
        print_table([title for title, _ in _COLUMNS], rows, sys.stdout)
        return 0

    return run_command(work, _address(args.url))
