"""Pure-Python twin of ext/udp_io.pyx: reading and writing a UDP socket in batches, one
recvmsg per datagram where the compiled module takes several per recvmmsg, and one
sendmsg per run where it sends several per sendmmsg. The reads are grouped as
the compiled module's system calls are (`min(reads left, datagrams left)` per group), so
both hand over the same batches from the same traffic."""
from __future__ import annotations

import errno
import socket
import struct
from typing import Any

__all__ = ["BUFFER_SIZE", "DatagramReader", "send_runs"]

BUFFER_SIZE = 65536

_SOL_UDP = getattr(socket, "SOL_UDP", 17)
_UDP_GRO = getattr(socket, "UDP_GRO", 104)
_UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
_GRO_CMSG_SPACE = socket.CMSG_SPACE(4)
_SEND_BATCH = 1024        # runs per sendmmsg in the compiled module


class DatagramReader:
    """Batches of datagrams from a non-blocking UDP socket (see ext/udp_io.pyx)."""

    def __init__(self, sock: Any, *, gro: bool = False, max_reads: int = 32,
                 max_datagrams: int = 256) -> None:
        if not hasattr(sock, "fileno"):
            raise TypeError(f"sock must be a socket (an object with fileno()), not {type(sock).__name__}")
        if type(max_reads) is not int or not 1 <= max_reads <= 1024:
            raise ValueError(f"max_reads must be an int from 1 to 1024, not {max_reads!r}")
        if type(max_datagrams) is not int or max_datagrams < 1:
            raise ValueError(f"max_datagrams must be a positive int, not {max_datagrams!r}")
        self._sock = sock
        self.gro = bool(gro)
        self.max_reads = max_reads
        self.max_datagrams = max_datagrams
        self.errors = 0
        self.coalesced = 0
        self.reads = 0
        self.calls = 0

    def read(self) -> list[tuple[list[bytes], Any]]:
        """Every datagram waiting, up to the bounds: [(bodies, address), ...]."""
        sock = self._sock
        batch: list[tuple[list[bytes], Any]] = []
        if sock.fileno() < 0:
            return batch
        ancsize = _GRO_CMSG_SPACE if self.gro else 0
        taken = datagrams = 0
        while taken < self.max_reads and datagrams < self.max_datagrams:
            vlen = min(self.max_reads - taken, self.max_datagrams - datagrams)
            got = 0
            failed = False
            while got < vlen:
                try:
                    data, ancillary, _flags, address = sock.recvmsg(BUFFER_SIZE, ancsize)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    failed = True
                    break
                got += 1
                segment = 0
                for level, kind, value in ancillary:
                    if level == _SOL_UDP and kind == _UDP_GRO and len(value) >= 4:
                        segment = struct.unpack_from("=i", value)[0]
                if batch and batch[-1][1] == address:
                    bodies = batch[-1][0]
                else:
                    bodies = []
                    batch.append((bodies, address))
                if 0 < segment < len(data):
                    self.coalesced += 1
                    pieces = [data[i:i + segment] for i in range(0, len(data), segment)]
                    bodies.extend(pieces)
                    datagrams += len(pieces)
                else:
                    bodies.append(data)
                    datagrams += 1
            if got == 0:
                if failed:
                    # as recvmmsg: an error with nothing read fails the call, and costs a read
                    self.errors += 1
                    taken += 1
                    continue
                break
            # (an error after some datagrams: recvmmsg returns those, and the error with
            # the next call; recvmsg raised it already, so count it here)
            if failed:
                self.errors += 1
            self.calls += 1
            taken += got
            self.reads += got
            if got < vlen:
                break
        return batch


def _check_address(address: Any, index: int) -> None:
    """As the compiled module: a numeric (host, port) or (host, port, flowinfo, scope_id)."""
    if not isinstance(address, tuple) or len(address) not in (2, 4) \
            or not isinstance(address[0], str) or type(address[1]) is not int:
        raise TypeError(f"runs[{index}]: the address must be (host, port) or "
                        f"(host, port, flowinfo, scope_id), not {address!r}")
    if not 0 <= address[1] <= 65535:
        raise ValueError(f"runs[{index}]: port {address[1]} out of range")
    families = (socket.AF_INET, socket.AF_INET6) if len(address) == 2 else (socket.AF_INET6,)
    for family in families:
        try:
            socket.inet_pton(family, address[0])
            return
        except (OSError, UnicodeError):
            pass
    raise ValueError(f"runs[{index}]: {address[0]!r} is not a numeric IP address")


def send_runs(sock: Any, runs: list, connected: bool) -> tuple[int, int]:
    """Send runs of datagrams in order (see ext/udp_io.pyx): (sent, error)."""
    if not isinstance(runs, list):
        raise TypeError(f"runs must be a list, not {type(runs).__name__}")
    for i, run in enumerate(runs):
        if not isinstance(run, tuple) or len(run) != 4 or type(run[0]) is not bytes \
                or type(run[1]) is not int or type(run[2]) is not int:
            raise TypeError(f"runs[{i}] must be (bytes, segment, count, address)")
        if run[2] < 1 or not 1 <= run[1] <= 65535:
            raise ValueError(f"runs[{i}]: segment {run[1]} or count {run[2]} out of range")
    if not runs:
        return 0, 0
    if sock.fileno() < 0:
        return 0, errno.EBADF
    for i, (buffer, segment, count, address) in enumerate(runs):
        if not connected and i % _SEND_BATCH == 0:
            # as the compiled module: each sendmmsg's addresses are checked before it
            for j in range(i, min(i + _SEND_BATCH, len(runs))):
                _check_address(runs[j][3], j)
        cmsg = [(_SOL_UDP, _UDP_SEGMENT, struct.pack("=H", segment))] if count > 1 else []
        while True:
            try:
                if connected:
                    sock.sendmsg((buffer,), cmsg)
                else:
                    sock.sendmsg((buffer,), cmsg, 0, address)
                break
            except InterruptedError:
                continue
            except OSError as exc:
                return i, exc.errno or errno.EIO
    return len(runs), 0
