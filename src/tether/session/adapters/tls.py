"""TLS for tls:// sessions (TCP with TLS on every connection, stdlib `ssl`): which
`ssl.SSLContext` a client or a server uses, validated, and the client's handshake.

A failed handshake is raised as the `ssl` module's own exception class, as asyncio,
asyncpg and aiohttp users catch it (`ssl.SSLCertVerificationError` for a certificate,
`ssl.SSLError` otherwise, both `OSError`s), rebuilt with a message that says what failed
and where; the original is its `__cause__`. No answer within the deadline is a
`TimeoutError` saying the same.
"""
from __future__ import annotations

import asyncio
import ssl
from typing import Any

from .url import SessionURL

# Hints for handshake failures whose OpenSSL text does not say what to look at.
_HINTS = {
    "WRONG_VERSION_NUMBER": "the server answered with something that is not TLS: is it a plain TCP server?",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server requires a client certificate",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the server refused the handshake: it may require a client certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the server refused this client's certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the server does not trust the issuer of this client certificate",
}
# A peer that just closes says nothing; these are the usual reasons.
_CLOSED_IN_HANDSHAKE = ("is it a TLS server? One that requires a client certificate also does "
                        "this when it gets none, or one it does not trust")
_CLOSED_AFTER_HANDSHAKE = ("it may require a client certificate and have got none, or one it "
                           "does not trust")


def _check_type(context: Any) -> None:
    if context is not None and not isinstance(context, ssl.SSLContext):
        raise TypeError(f"ssl must be an ssl.SSLContext or None, not {type(context).__name__}")


def _check_scheme(url: SessionURL, context: Any) -> None:
    if context is not None and url.scheme != "tls":
        raise ValueError(f"ssl= was given for {url.text}, but only tls:// URLs use TLS; "
                         f"use tls://{url.authority}, or leave ssl= out")


def client_context(url: SessionURL, context: Any) -> ssl.SSLContext | None:
    """The context a client uses for `url`: None for udp:// and tcp://; for tls:// the
    given context, or `ssl.create_default_context()` (the system's CAs; the certificate and
    the URL's host are verified). TypeError for anything but an SSLContext or None;
    ValueError for ssl= with a URL that is not tls://, or a server-side context."""
    _check_type(context)
    _check_scheme(url, context)
    if url.scheme != "tls":
        return None
    if context is None:
        return ssl.create_default_context()
    if context.protocol == ssl.PROTOCOL_TLS_SERVER:
        raise ValueError("ssl= for a client must be a client context such as "
                         "ssl.create_default_context(), not one made for servers (PROTOCOL_TLS_SERVER)")
    return context


def server_context(url: SessionURL, context: Any) -> ssl.SSLContext | None:
    """The context a server uses for `url`: None for udp:// and tcp://; for tls:// the given
    context, which is required (a server needs a certificate). TypeError for anything but
    an SSLContext or None; ValueError for none with tls://, ssl= with a URL that is not
    tls://, or a client-side context."""
    _check_type(context)
    _check_scheme(url, context)
    if url.scheme != "tls":
        return None
    if context is None:
        raise ValueError(f"serving {url.text} needs ssl=, an ssl.SSLContext with the server's "
                         "certificate: ssl.create_default_context(ssl.Purpose.CLIENT_AUTH), "
                         "then load_cert_chain(certfile, keyfile)")
    if context.protocol == ssl.PROTOCOL_TLS_CLIENT:
        raise ValueError("ssl= for a server must be a server context such as "
                         "ssl.create_default_context(ssl.Purpose.CLIENT_AUTH), not a client one "
                         "(PROTOCOL_TLS_CLIENT, what ssl.create_default_context() makes)")
    return context


async def handshake(loop: asyncio.AbstractEventLoop, transport: asyncio.BaseTransport,
                    protocol: asyncio.BaseProtocol, context: ssl.SSLContext, url: SessionURL,
                    deadline: float, timeout: float) -> asyncio.Transport:
    """Upgrade a client's TCP connection to TLS, verifying the server against the URL's host
    (as the context says); returns the TLS transport. `deadline` is in `loop.time()`:
    the TCP connection and the handshake share the client's `connect_timeout`.

    Failures: `ssl.SSLCertVerificationError`/`ssl.SSLError` (a connection closed mid-way
    is `ssl.SSLEOFError`), or `TimeoutError`, each naming the URL; the connection is closed.
    """
    try:
        async with asyncio.timeout_at(deadline):
            return await loop.start_tls(transport, protocol, context, server_side=False,
                                        server_hostname=url.host, ssl_handshake_timeout=timeout)
    except TimeoutError:
        transport.close()
        raise TimeoutError(
            f"TLS handshake with {url.text} not completed within connect_timeout ({timeout:g} s): "
            "the server accepted the TCP connection but did not answer as a TLS server") from None
    except ssl.SSLError as exc:
        transport.close()
        raise handshake_error(exc, url) from exc
    except OSError as exc:  # the connection ended mid-way (asyncio says ConnectionResetError)
        transport.close()
        raise closed_error(url, during_handshake=True) from exc


def handshake_error(exc: ssl.SSLError, url: SessionURL, *, after_handshake: bool = False) -> ssl.SSLError:
    """`exc` as the same class, with a message saying what failed and where. After the
    handshake: the server's alert that ended a connection before it answered (under TLS
    1.3 a refused client certificate comes so)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = f"certificate verify failed: {exc.verify_message}"
    else:
        detail = _openssl_text(exc)
        hint = _HINTS.get(getattr(exc, "reason", None) or "")
        if hint:
            detail = f"{detail} ({hint})"
    if after_handshake:
        message = f"TLS connection to {url.text} failed right after the handshake: {detail}"
    else:
        message = f"TLS handshake with {url.text} failed: {detail}"
    try:
        error = type(exc)(exc.errno, message)
    except TypeError:  # a subclass made elsewhere with another signature
        error = ssl.SSLError(exc.errno, message)
    for name in ("reason", "library", "verify_code", "verify_message"):
        if hasattr(exc, name):
            setattr(error, name, getattr(exc, name))
    return error


def ended_error(exc: BaseException, url: SessionURL) -> ssl.SSLError:
    """Why the server ended a TLS connection right after the handshake, before it answered:
    its alert if it sent one (`ssl.SSLError`), else `closed_error`."""
    if isinstance(exc, ssl.SSLError):
        return handshake_error(exc, url, after_handshake=True)
    return closed_error(url, during_handshake=False)


def closed_error(url: SessionURL, *, during_handshake: bool) -> ssl.SSLEOFError:
    """The server closed a TLS connection during the handshake, or right after it before
    it answered: what the `ssl` module raises for an abrupt end of a TLS connection,
    naming the URL."""
    if during_handshake:
        message = (f"TLS handshake with {url.text} failed: the server closed the connection "
                   f"({_CLOSED_IN_HANDSHAKE})")
    else:
        message = (f"TLS connection to {url.text} failed: the server closed it right after the "
                   f"handshake, before answering ({_CLOSED_AFTER_HANDSHAKE})")
    error = ssl.SSLEOFError(ssl.SSL_ERROR_EOF, message)
    error.reason = "UNEXPECTED_EOF_WHILE_READING"
    error.library = "SSL"
    return error


def _openssl_text(exc: ssl.SSLError) -> str:
    """OpenSSL's words without the '[SSL: CODE] ' prefix and ' (_ssl.c:N)' suffix."""
    text = exc.strerror if isinstance(exc.strerror, str) else str(exc)
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    if text.endswith(")") and " (_ssl.c:" in text:
        text = text.rsplit(" (_ssl.c:", 1)[0]
    return text
