"""Helpers for the UDP tests: plain non-blocking sockets on loopback."""
from __future__ import annotations

import socket


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on a non-blocking socket, in order."""
    out = []
    while True:
        try:
            out.append(sock.recv(65536))
        except BlockingIOError:
            return out
