"""Messages larger than a datagram: cut into consecutive numbered fragments on send, joined
again on delivery. Only UDP needs this; TCP packets hold a whole message."""
from __future__ import annotations

from ...errors import ProtocolError


class Fragment:
    """Fragment `index` of a message cut into `total` pieces; `first` is the message number
    of fragment 0 (set on receive)."""

    __slots__ = ("data", "index", "total", "first")

    def __init__(self, data: bytes, index: int, total: int, first: int = 0) -> None:
        self.data = data
        self.index = index
        self.total = total
        self.first = first

    def __len__(self) -> int:
        return len(self.data)


def cut(payload: bytes, piece_size: int) -> list[Fragment]:
    """`payload` as Fragments of at most piece_size bytes."""
    total = (len(payload) + piece_size - 1) // piece_size
    return [Fragment(payload[i * piece_size:(i + 1) * piece_size], i, total) for i in range(total)]


class Reassembler:
    """Joins delivered fragments back into messages. Ordered delivery hands fragments over
    consecutively; unordered in any order, so partial messages are keyed by their first number.
    Memory is bounded by the receive window (each piece was inside it) times the message size."""

    __slots__ = ("max_message_size", "max_partial", "_partial")

    def __init__(self, max_message_size: int, max_partial: int) -> None:
        self.max_message_size = max_message_size
        # A hostile peer could start many messages and finish none: bound how many are open.
        self.max_partial = max_partial
        self._partial: dict[int, list] = {}

    @property
    def has_partial(self) -> bool:
        """Some message is still missing fragments."""
        return bool(self._partial)

    def join(self, delivered: list) -> tuple[list, int]:
        """(whole messages, how many fragments were absorbed beyond one per message)."""
        out = []
        absorbed = 0
        limit = self.max_message_size
        for item in delivered:
            if type(item) is not Fragment:
                out.append(item)
                continue
            # [total, bytes so far, {index: data}]: storage grows with the pieces that
            # arrive, never with the total the peer announces
            partial = self._partial.get(item.first)
            if partial is None:
                if not 1 < item.total <= limit:
                    raise ProtocolError(f"fragment count {item.total} out of range")
                if len(self._partial) >= self.max_partial:
                    raise ProtocolError(f"more than {self.max_partial} fragmented messages open at once")
                partial = self._partial[item.first] = [item.total, 0, {}]
            elif partial[0] != item.total:
                raise ProtocolError(f"fragment total changed for message {item.first}")
            pieces = partial[2]
            if not 0 <= item.index < item.total or item.index in pieces:
                raise ProtocolError(f"bad fragment index {item.index} of {item.total}")
            # absorbed pieces leave the receive window, so the window does not bound a
            # partial message: check its size as it grows
            partial[1] += len(item.data)
            if partial[1] > limit:
                raise ProtocolError(
                    f"fragmented message {item.first} exceeds max_message_size {limit} "
                    f"({partial[1]} bytes and not complete)" if len(pieces) + 1 < item.total else
                    f"reassembled message of {partial[1]} bytes exceeds max_message_size {limit}")
            pieces[item.index] = item.data
            if len(pieces) < item.total:
                absorbed += 1
                continue
            del self._partial[item.first]
            out.append(b"".join([pieces[i] for i in range(item.total)]))
        return out, absorbed
