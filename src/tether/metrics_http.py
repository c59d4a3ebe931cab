"""`MetricsServer`: GET /metrics over HTTP/1.x on the event loop, for Prometheus to scrape.

The metrics are rendered on the loop that runs the queue managers, so a scrape reads their
state between two of their steps, never in the middle of one (a server thread would). One
request per connection; a request line and headers over 8 KiB, or slower than 10 s, are
answered 400/408 and the connection closed.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable

log = logging.getLogger("tether.metrics")

PATH = "/metrics"
MAX_REQUEST_BYTES = 8 * 1024
REQUEST_TIMEOUT = 10.0


def parse_address(address: str, what: str = "metrics address") -> tuple[str, int]:
    """(host, port) of "HOST:PORT" or "[IPv6]:PORT" (port 0..65535; 0: any free port);
    ValueError naming `what` when it is not one."""
    if not isinstance(address, str) or not address:
        raise ValueError(f"{what} must be a string HOST:PORT, not {address!r}")
    host, sep, port_text = address.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{what} {address!r}: expected HOST:PORT (e.g. 127.0.0.1:9600)")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"{what} {address!r}: an IPv6 host goes in brackets, [::1]:9600")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{what} {address!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"{what} {address!r}: an IPv6 host goes in brackets, [::1]:9600")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{what} {address!r}: the port must be a number 0..65535")
    return host, int(port_text)


class MetricsServer:
    """Answers GET /metrics with `render()`; `url` is where, `close()` stops it."""

    def __init__(self, render: Callable[[], bytes], content_type: str) -> None:
        self._render = render
        self._content_type = content_type
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually bound."""
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    @property
    def url(self) -> str:
        """http://HOST:PORT/metrics, with the port actually bound."""
        host, port = self.address
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}{PATH}"

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port, limit=MAX_REQUEST_BYTES)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            except TimeoutError:
                self._answer(writer, 408, b"request timeout\n")
                return
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                self._answer(writer, 400, b"bad request\n")
                return
            method, _, rest = head.split(b"\r\n", 1)[0].partition(b" ")
            target = rest.partition(b" ")[0].partition(b"?")[0]
            if method not in (b"GET", b"HEAD"):
                self._answer(writer, 405, b"only GET and HEAD\n", extra=b"Allow: GET, HEAD\r\n")
            elif target != PATH.encode():
                self._answer(writer, 404, b"not found: the metrics are at /metrics\n")
            else:
                body = self._render()
                self._answer(writer, 200, body, self._content_type, head_only=method == b"HEAD")
            await writer.drain()
        except (ConnectionError, OSError):
            pass        # the scraper went away
        except Exception:       # a metric that failed to render: say so, stay up
            log.exception("rendering the metrics failed")
            self._answer(writer, 500, b"rendering the metrics failed\n")
        finally:
            writer.close()

    @staticmethod
    def _answer(writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str = "text/plain",
                head_only: bool = False, extra: bytes = b"") -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  408: "Request Timeout", 500: "Internal Server Error"}[status]
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n".encode() + extra + b"\r\n"
                     + (b"" if head_only else body))

    def close(self) -> None:
        """Stop listening (a scrape being answered finishes)."""
        if self._server is not None:
            self._server.close()

    async def wait_closed(self) -> None:
        """Wait until the listening socket is closed."""
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> MetricsServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()


async def serve_registry(address: str, render: Callable[[], bytes], content_type: str) -> MetricsServer:
    """A started MetricsServer at "HOST:PORT" answering with `render()`."""
    host, port = parse_address(address)
    server = MetricsServer(render, content_type)
    await server.start(host, port)
    log.info("metrics at %s", server.url)
    return server
