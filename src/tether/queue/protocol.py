"""The queue protocol: what a `QueueClient` (or another queue manager's forwarder) and a
queue manager service say to each other over one reliable session. docs/queues.md walks
through it; this module is its one definition.

Every session message is a *frame*: a msgpack array of items, so many requests (and many
replies, many deliveries) share one session message and one round trip. An item is an
array whose first element is its op code:

    requests (client -> service), `rid` > 0 asks for a reply, 0 for none
    [HELLO, rid, version, client_id, epoch, held, user, password]   first item of a session
    [CREATE, rid, name, settings]                       create_queue
    [DELETE, rid, name]                                 delete_queue
    [SEND, rid, address, body, headers, ttl, sequence, options]  send, numbered by the producer
    [SUBSCRIBE, rid, consumer, queue, credit]           start delivering `queue` to `consumer`
    [CREDIT, 0, consumer, credit]                       the consumer may take `credit` more
    [UNSUBSCRIBE, rid, consumer]                        stop delivering
    [RELEASE, 0, tags]                                  delivered, never handed out: unlock, uncounted
    [RECEIVE, rid, queue, timeout, txid]                one message (or nil); txid 0: none
    [COMPLETE, rid, tag] / [ABANDON, rid, tag]          settle a peek-locked message
    [INFO, rid, name]                                   queue_info; name nil: every queue
    [TX_BEGIN, rid] / [TX_COMMIT, rid, txid] / [TX_ROLLBACK, rid, txid]
    [TX_SEND, rid, txid, address, body, headers, ttl, options]
    [FORWARD, rid, queue, sequence, id, body, headers, enqueued_at, expires_at, options]
    [SETTLED, 0, floor]                                 the producer settled every sequence < floor
    [PEEK, rid, queue, count]                           up to `count` messages, unlocked (tag 0)
    [PURGE, rid, name]                                  purge_queue: the count removed
    [RENEW, rid, tag]                                   extend a peek-lock: its new validity
    [SETTINGS, rid, name]                               a queue's settings
    [ACCEPT_GROUP, rid, queue, timeout]                 hold the next free group: [group_id, handle] or nil
    [GROUP_RECEIVE, rid, handle, timeout]               the held group's next message (or nil)
    [GROUP_RELEASE, rid, handle]                        let the group go (its locked messages abandoned)
    [SEND_BATCH, rid, address, bodies, first_sequence]  plain sends (no headers, ttl or options) of
                                                        many bodies, numbered first_sequence, +1, ...
    [COMPLETE_BATCH, rid, tags]                         complete many peek-locked messages
    [FORWARD_BATCH, rid, messages]                      many FORWARDs, each message its fields
                                                        [queue, sequence, id, body, headers,
                                                        enqueued_at, expires_at, options]

    replies and pushes (service -> client)
    [REPLY, rid, value]
    [ERROR, rid, code, text]                            code: a tether error's `.code`, or
                                                        "value-error" / "type-error" / "expired"
    [DELIVER, consumer, message, validity]              a message for a subscription
    [CONSUMER_ERROR, consumer, code, text]              the subscription ended (e.g. poison)

SEND_BATCH and COMPLETE_BATCH are what a client sends for the sends (and completes) its
callers made in one loop turn: one item, one reply, however many messages; FORWARD_BATCH is
what a forwarder sends for the messages it took from its transmission queue in one pass.
Their reply's value is an array with one outcome per message, in order (`batch_outcomes`):
a SEND_BATCH's the message id or [code, text], a COMPLETE_BATCH's and a FORWARD_BATCH's
nil or [code, text]. The batches of one
frame hold at most MAX_ITEMS messages in all (a frame costs no more than that many single
requests would); the service ends a session that sends more.

HELLO names the client (its stable `client_id`, which is also its producer id) and its
producer `epoch` (0: a new instance, which fences every older one; the reply carries the
epoch to present on reconnects and the first sequence it may use). `held` lists the lock
tags the client still holds from an earlier session; the service releases the others.
`user` and `password` (both nil: anonymous) authenticate the session (auth.py): a service
with users refuses a HELLO without them, or with wrong ones, with an ERROR
`authentication-failed` and ends the session; the reply's `user` is who the session is
(nil: anonymous, with every permission). Every later request is checked against that
user's permissions (permissions.py): a refused one is answered `permission-denied`.

`options` is nil (the defaults) or a map of a send's options (OPTIONS): `priority` (0..7),
`delay` (seconds >= 0), `deliver_at` (epoch seconds), `group_id`, `journal` (keep a copy in
the service's $journal once a forwarded message is acknowledged); FORWARD carries
`priority`, `deliver_at` and `group_id` from the sending queue manager.

A message on the wire is [tag, id, body, headers, delivery_count, enqueued_at, expires_at,
dead_letter_reason, dead_letter_source, sequence, priority, group_id]: `tag` names its peek-lock
(COMPLETE and ABANDON quote it), `headers` are the encoded header bytes (or nil), `sequence`
is its producer's number (a forwarder matches returned rejects with it). `validity` is the seconds
its peek-lock lasts.

The service refuses a HELLO of another VERSION with an ERROR naming both. Every field of
every item is checked (`parse_request`, `parse_response`): a malformed item raises
ProtocolError naming it.
"""
from __future__ import annotations

import math
import reprlib
from collections.abc import Callable
from typing import Any

import msgpack

from .. import errors
from ..errors import ProtocolError, TetherError

VERSION = 6

# requests
HELLO = 1
CREATE = 2
DELETE = 3
SEND = 4
SUBSCRIBE = 5
CREDIT = 6
UNSUBSCRIBE = 7
RELEASE = 8
RECEIVE = 9
COMPLETE = 10
ABANDON = 11
INFO = 12
TX_BEGIN = 13
TX_SEND = 14
TX_COMMIT = 15
TX_ROLLBACK = 16
FORWARD = 17
SETTLED = 18
PEEK = 19
PURGE = 20
RENEW = 21
SETTINGS = 22
ACCEPT_GROUP = 23
GROUP_RECEIVE = 24
GROUP_RELEASE = 25
SEND_BATCH = 26
COMPLETE_BATCH = 27
FORWARD_BATCH = 28
# replies and pushes
REPLY = 100
ERROR = 101
DELIVER = 102
CONSUMER_ERROR = 103

#: Session settings both ends use: frames carry many items, so a frame may be large and a
#: window of frames keeps several batches in flight.
SESSION_SETTINGS = {"max_message_size": 8 * 1024 * 1024, "max_transfer_window": 64,
                    "max_pending_channels": 256}
#: A sender cuts frames at about this many bytes (one item alone may be larger).
FRAME_BYTES = 512 * 1024
#: Most items in one frame.
MAX_ITEMS = 65536
MAX_NAME = 1024           # queue names and addresses (the queue manager checks them exactly)
MAX_USER = 64             # user names (auth.py checks them exactly)
MAX_PASSWORD = 1024
MAX_ID = 255              # message ids
MAX_CREDIT = 1 << 20
MAX_SEQUENCE = (1 << 63) - 1
MAX_PEEK = 4096           # messages one PEEK returns at most
MAX_BATCH = 4096          # messages in one SEND_BATCH, COMPLETE_BATCH or FORWARD_BATCH
EXPIRED_CODE = "expired"
#: The length of a message on the wire (see the module docstring).
MESSAGE_FIELDS = 12


def encode(items: list) -> bytes:
    """One frame."""
    return msgpack.packb(items, use_bin_type=True)


def decode(frame: bytes) -> list:
    """The items of one frame; ProtocolError if it is not a msgpack array of arrays."""
    try:
        items = msgpack.unpackb(frame, raw=False, use_list=True, strict_map_key=True,
                                max_array_len=MAX_ITEMS * 8, max_map_len=4096)
    except Exception as exc:
        raise ProtocolError(f"queue protocol frame is not msgpack: {exc}") from None
    if not isinstance(items, list) or not items:
        raise ProtocolError(f"queue protocol frame must be a non-empty array, not {type(items).__name__}")
    if len(items) > MAX_ITEMS:
        raise ProtocolError(f"queue protocol frame has {len(items)} items (at most {MAX_ITEMS})")
    return items


# ---- field checks: each returns the value or raises ProtocolError naming the field ----

# Hostile values are shown in errors by a bounded repr: repr() of an item nested ~1000
# arrays deep (msgpack decodes up to 1024) raises RecursionError, and of a huge one costs
# its whole size before it is cut.
_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = _REPR.maxother = 80


def brief(value: Any, width: int = 80) -> str:
    """A short repr of a peer's value, for error messages: bounded in depth and length."""
    return _REPR.repr(value)[:width]


def _fail(op: str, field: str, value: Any, want: str) -> ProtocolError:
    return ProtocolError(f"queue protocol {op}: field {field} must be {want}, not {brief(value)}")


def _int(low: int, high: int) -> Callable[[str, str, Any], int]:
    def check(op: str, field: str, value: Any) -> int:
        if value.__class__ is not int or not low <= value <= high:
            raise _fail(op, field, value, f"an integer {low}..{high}")
        return value
    return check


def _str(limit: int) -> Callable[[str, str, Any], str]:
    def check(op: str, field: str, value: Any) -> str:
        if value.__class__ is not str or not 0 < len(value) <= limit:
            raise _fail(op, field, value, f"a string of 1..{limit} characters")
        return value
    return check


def _bool(op: str, field: str, value: Any) -> bool:
    if value.__class__ is not bool:
        raise _fail(op, field, value, "true or false")
    return value


def _optional(inner: Callable[[str, str, Any], Any]) -> Callable[[str, str, Any], Any]:
    def check(op: str, field: str, value: Any) -> Any:
        return None if value is None else inner(op, field, value)
    return check


def _bytes(op: str, field: str, value: Any) -> bytes:
    if value.__class__ is not bytes:
        raise _fail(op, field, value, "bytes")
    return value


def _headers(op: str, field: str, value: Any) -> dict | None:
    if value is None:
        return None
    if value.__class__ is not dict:
        raise _fail(op, field, value, "a map or nil")
    return value


def _settings(op: str, field: str, value: Any) -> dict:
    if value.__class__ is not dict or not all(isinstance(k, str) for k in value):
        raise _fail(op, field, value, "a map of setting names")
    return value


def _number(op: str, field: str, value: Any) -> float:
    if value.__class__ not in (int, float) or not math.isfinite(value):
        raise _fail(op, field, value, "a finite number")
    return value


def _seconds(op: str, field: str, value: Any) -> float:
    value = _number(op, field, value)
    if value < 0:
        raise _fail(op, field, value, "a number of seconds >= 0")
    return value


def _tags(op: str, field: str, value: Any) -> list[int]:
    if value.__class__ is not list or not all(t.__class__ is int and 0 < t < _RID_END for t in value):
        raise _fail(op, field, value, "an array of lock tags (positive integers)")
    return value


def _bodies(op: str, field: str, value: Any) -> list[bytes]:
    if value.__class__ is not list or not 0 < len(value) <= MAX_BATCH \
            or not all(b.__class__ is bytes for b in value):
        raise _fail(op, field, value, f"an array of 1..{MAX_BATCH} message bodies (bytes)")
    return value


def _batch_tags(op: str, field: str, value: Any) -> list[int]:
    if value.__class__ is not list or not 0 < len(value) <= MAX_BATCH:
        raise _fail(op, field, value, f"an array of 1..{MAX_BATCH} lock tags")
    return _tags(op, field, value)


def _password(op: str, field: str, value: Any) -> str | None:
    # never quoted in the error: it may be a password
    if value is not None and (value.__class__ is not str or not 0 < len(value) <= MAX_PASSWORD):
        raise ProtocolError(f"queue protocol {op}: field {field} must be a string of 1..{MAX_PASSWORD} "
                            f"characters or nil")
    return value


def _client_id(op: str, field: str, value: Any) -> bytes:
    if value.__class__ is not bytes or not 8 <= len(value) <= 64:
        raise _fail(op, field, value, "8..64 bytes")
    return value


_RID_END = 1 << 63
_rid = _int(0, _RID_END - 1)
_tag = _int(1, _RID_END - 1)
_id = _str(MAX_ID)
_name = _str(MAX_NAME)
_txid = _int(0, (1 << 63) - 1)
_consumer = _int(1, (1 << 63) - 1)
_credit = _int(0, MAX_CREDIT)
_sequence = _int(0, MAX_SEQUENCE)
_ttl = _optional(_number)


def _priority(op: str, field: str, value: Any) -> int:
    if value.__class__ is not int or not 0 <= value <= 7:
        raise _fail(op, field, value, "an integer 0..7")
    return value


#: A send's options (the `options` map), each with its check.
OPTIONS: dict[str, Callable[[str, str, Any], Any]] = {
    "priority": _priority,
    "delay": _seconds,
    "deliver_at": _number,
    "group_id": _str(255),
    "journal": _bool,
}


def _options(op: str, field: str, value: Any) -> dict | None:
    if value is None:
        return None
    if value.__class__ is not dict:
        raise _fail(op, field, value, "a map of send options or nil")
    for key, option in value.items():
        check = OPTIONS.get(key) if key.__class__ is str else None
        if check is None:
            raise _fail(op, field, key, f"a map with keys among {', '.join(OPTIONS)}")
        check(op, f"{field}.{key}", option)
    return value

# op -> (name, field names and checks after the op and rid)
REQUESTS: dict[int, tuple[str, tuple[tuple[str, Callable], ...]]] = {
    HELLO: ("hello", (("version", _int(0, 1 << 16)), ("client_id", _client_id), ("epoch", _int(0, 1 << 62)),
                      ("held", _tags), ("user", _optional(_str(MAX_USER))),
                      ("password", _password))),
    CREATE: ("create", (("name", _name), ("settings", _settings))),
    DELETE: ("delete", (("name", _name),)),
    SEND: ("send", (("address", _name), ("body", _bytes), ("headers", _headers), ("ttl", _ttl),
                    ("sequence", _sequence), ("options", _options))),
    SUBSCRIBE: ("subscribe", (("consumer", _consumer), ("queue", _name), ("credit", _credit))),
    CREDIT: ("credit", (("consumer", _consumer), ("credit", _credit))),
    UNSUBSCRIBE: ("unsubscribe", (("consumer", _consumer),)),
    RELEASE: ("release", (("tags", _tags),)),
    RECEIVE: ("receive", (("queue", _name), ("timeout", _optional(_seconds)), ("txid", _txid))),
    COMPLETE: ("complete", (("tag", _tag),)),
    ABANDON: ("abandon", (("tag", _tag),)),
    INFO: ("info", (("name", _optional(_name)),)),
    TX_BEGIN: ("tx-begin", ()),
    TX_SEND: ("tx-send", (("txid", _txid), ("address", _name), ("body", _bytes), ("headers", _headers),
                          ("ttl", _ttl), ("options", _options))),
    TX_COMMIT: ("tx-commit", (("txid", _txid),)),
    TX_ROLLBACK: ("tx-rollback", (("txid", _txid),)),
    FORWARD: ("forward", (("queue", _name), ("sequence", _sequence), ("id", _id), ("body", _bytes),
                          ("headers", _headers), ("enqueued_at", _number), ("expires_at", _optional(_number)),
                          ("options", _options))),
    SETTLED: ("settled", (("floor", _sequence),)),
    PEEK: ("peek", (("queue", _name), ("count", _int(1, MAX_PEEK)))),
    PURGE: ("purge", (("name", _name),)),
    RENEW: ("renew", (("tag", _tag),)),
    SETTINGS: ("settings", (("name", _name),)),
    ACCEPT_GROUP: ("accept-group", (("queue", _name), ("timeout", _optional(_seconds)))),
    GROUP_RECEIVE: ("group-receive", (("handle", _int(1, (1 << 63) - 1)), ("timeout", _optional(_seconds)))),
    GROUP_RELEASE: ("group-release", (("handle", _int(1, (1 << 63) - 1)),)),
    SEND_BATCH: ("send-batch", (("address", _name), ("bodies", _bodies), ("first_sequence", _sequence))),
    COMPLETE_BATCH: ("complete-batch", (("tags", _batch_tags),)),
}
#: A FORWARD_BATCH message's fields: a FORWARD's, after its op and rid.
FORWARD_FIELDS = REQUESTS[FORWARD][1]


def _forwards(op: str, field: str, value: Any) -> list[list]:
    if value.__class__ is not list or not 0 < len(value) <= MAX_BATCH:
        raise _fail(op, field, value, f"an array of 1..{MAX_BATCH} forwarded messages")
    count = len(FORWARD_FIELDS)
    isfinite = math.isfinite
    for n, message in enumerate(value):
        # the common message (no headers or options), checked inline: the same checks
        if message.__class__ is list and len(message) == count:
            queue, sequence, message_id, body, headers, enqueued_at, expires_at, options = message
            if queue.__class__ is str and 0 < len(queue) <= MAX_NAME and sequence.__class__ is int \
                    and 0 <= sequence <= MAX_SEQUENCE and message_id.__class__ is str \
                    and 0 < len(message_id) <= MAX_ID and body.__class__ is bytes and headers is None \
                    and enqueued_at.__class__ is float and isfinite(enqueued_at) and options is None \
                    and (expires_at is None or (expires_at.__class__ is float and isfinite(expires_at))):
                continue
        if message.__class__ is not list or len(message) != count:
            raise _fail(op, f"{field}[{n}]", message, f"an array of the {count} fields of a forwarded message")
        for (name, check), item in zip(FORWARD_FIELDS, message):
            check(op, f"{field}[{n}].{name}", item)
    return value


REQUESTS[FORWARD_BATCH] = ("forward-batch", (("messages", _forwards),))

#: The batch requests, and where in the item each holds its messages.
BATCH_MESSAGES = {SEND_BATCH: 3, COMPLETE_BATCH: 2, FORWARD_BATCH: 2}


def parse_request(item: Any) -> list:
    """A checked request item ([op, rid, *fields]); ProtocolError naming what is wrong."""
    if item.__class__ is not list or len(item) < 2:
        raise ProtocolError(f"queue protocol request must be an array [op, rid, ...], not {brief(item)}")
    op = item[0]
    # the per-message requests, checked inline (the same checks as the table's)
    if op == COMPLETE and len(item) == 3:
        rid, tag = item[1], item[2]
        if rid.__class__ is int and 0 <= rid < _RID_END and tag.__class__ is int and 0 < tag < _RID_END:
            return item
    elif op == SEND and len(item) == 8:
        rid, address, body, headers, ttl, sequence, options = item[1:]
        if rid.__class__ is int and 0 <= rid < _RID_END and address.__class__ is str \
                and 0 < len(address) <= MAX_NAME and body.__class__ is bytes \
                and (headers is None or headers.__class__ is dict) and ttl is None and options is None \
                and sequence.__class__ is int and 0 <= sequence <= MAX_SEQUENCE:
            return item
    spec = REQUESTS.get(op) if op.__class__ is int else None
    if spec is None:
        raise ProtocolError(f"queue protocol: unknown request op {brief(op, 40)}")
    name, fields = spec
    if len(item) != 2 + len(fields):
        raise ProtocolError(f"queue protocol {name}: {len(item) - 2} fields, expected {len(fields)}")
    _rid(name, "rid", item[1])
    for i, (field, check) in enumerate(fields, 2):
        check(name, field, item[i])
    if op == SEND_BATCH and item[4] + len(item[3]) - 1 > MAX_SEQUENCE:
        raise _fail(name, "first_sequence", item[4], f"at most {MAX_SEQUENCE} - the count of bodies + 1")
    return item


def _message_fields(op: str, field: str, value: Any) -> list:
    if value.__class__ is not list or len(value) != MESSAGE_FIELDS:
        raise _fail(op, field, value, f"an array of {MESSAGE_FIELDS} message fields")
    _int(0, _RID_END - 1)(op, "message.tag", value[0])
    _id(op, "message.id", value[1])
    _bytes(op, "message.body", value[2])
    _optional(_bytes)(op, "message.headers", value[3])
    _int(0, 1 << 62)(op, "message.delivery_count", value[4])
    _number(op, "message.enqueued_at", value[5])
    _optional(_number)(op, "message.expires_at", value[6])
    _optional(_str(MAX_NAME))(op, "message.dead_letter_reason", value[7])
    _optional(_str(MAX_NAME))(op, "message.dead_letter_source", value[8])
    _sequence(op, "message.sequence", value[9])
    _priority(op, "message.priority", value[10])
    _optional(_str(255))(op, "message.group_id", value[11])
    return value


def check_message(op: str, value: Any) -> list:
    """A message's wire fields, checked; ProtocolError naming what is wrong."""
    return _message_fields(op, "message", value)


def _any(op: str, field: str, value: Any) -> Any:
    return value


RESPONSES: dict[int, tuple[str, tuple[tuple[str, Callable], ...]]] = {
    REPLY: ("reply", (("rid", _rid), ("value", _any))),
    ERROR: ("error", (("rid", _rid), ("code", _str(MAX_NAME)), ("text", _str(1 << 16)))),
    DELIVER: ("deliver", (("consumer", _consumer), ("message", _message_fields), ("validity", _seconds))),
    CONSUMER_ERROR: ("consumer-error", (("consumer", _consumer), ("code", _str(MAX_NAME)),
                                        ("text", _str(1 << 16)))),
}


def parse_response(item: Any) -> list:
    """A checked reply or push item; ProtocolError naming what is wrong."""
    if item.__class__ is not list or not item:
        raise ProtocolError(f"queue protocol response must be an array, not {brief(item)}")
    op = item[0]
    # the per-message items, checked inline (the same checks as the table's)
    if op == REPLY and len(item) == 3:
        rid = item[1]
        if rid.__class__ is int and 0 <= rid < _RID_END:
            return item
    elif op == DELIVER and len(item) == 4:
        consumer, fields, validity = item[1], item[2], item[3]
        if consumer.__class__ is int and 0 < consumer < _RID_END and validity.__class__ in (int, float) \
                and 0 <= validity < math.inf and fields.__class__ is list and len(fields) == MESSAGE_FIELDS:
            tag, message_id, body, headers, count, enqueued_at, expires_at, reason, source, sequence, priority, \
                group_id = fields
            if tag.__class__ is int and 0 < tag < _RID_END and message_id.__class__ is str \
                    and 0 < len(message_id) <= MAX_ID and body.__class__ is bytes \
                    and (headers is None or headers.__class__ is bytes) \
                    and count.__class__ is int and 0 <= count <= 1 << 62 \
                    and enqueued_at.__class__ in (int, float) and math.isfinite(enqueued_at) \
                    and (expires_at is None or (expires_at.__class__ in (int, float) and math.isfinite(expires_at))) \
                    and reason is None and source is None \
                    and sequence.__class__ is int and 0 <= sequence <= MAX_SEQUENCE \
                    and priority.__class__ is int and 0 <= priority <= 7 \
                    and (group_id is None or (group_id.__class__ is str and 0 < len(group_id) <= 255)):
                return item
    spec = RESPONSES.get(op) if op.__class__ is int else None
    if spec is None:
        raise ProtocolError(f"queue protocol: unknown response op {brief(op, 40)}")
    name, fields = spec
    if len(item) != 1 + len(fields):
        raise ProtocolError(f"queue protocol {name}: {len(item) - 1} fields, expected {len(fields)}")
    for i, (field, check) in enumerate(fields, 1):
        check(name, field, item[i])
    return item


# ---- the outcomes of a batch ----

def batch_outcome(result: Any) -> Any:
    """One message's outcome in a batch's reply: the value (an id, or nil), or an
    exception as [code, text]."""
    if isinstance(result, BaseException):
        return [error_code(result), str(result) or result.__class__.__name__]
    return result


def batch_outcomes(value: Any, count: int, ok: type) -> list[Any]:
    """A batch reply's value, checked: per message its value (of class `ok`: str for a
    SEND_BATCH's ids, NoneType for a COMPLETE_BATCH) or the exception its [code, text]
    stands for. ProtocolError when it is not `count` such outcomes."""
    if value.__class__ is not list or len(value) != count:
        raise ProtocolError(f"queue protocol: a batch of {count} answered with {brief(value)}")
    out: list[Any] = []
    for outcome in value:
        if outcome.__class__ is ok:
            out.append(outcome)
        elif outcome.__class__ is list and len(outcome) == 2 and outcome[0].__class__ is str \
                and outcome[1].__class__ is str:
            out.append(error_from_code(outcome[0], outcome[1]))
        else:
            raise ProtocolError(f"queue protocol: a batch's outcome must be {ok.__name__} or [code, text], "
                                f"not {brief(outcome)}")
    return out


# ---- messages and errors on the wire ----

def message_fields(entry: Any) -> list:
    """A locked core entry as the wire's message fields (its lock tag first)."""
    return [entry.tag, entry.id, entry.body, entry.headers, entry.delivery_count, entry.enqueued_at,
            entry.expires_at, entry.dead_letter_reason, entry.dead_letter_source, entry.sequence, entry.priority,
            entry.group_id]


def peeked_fields(message: Any) -> list:
    """A peeked Message as the wire's message fields (tag 0: no lock)."""
    return [0, message.id, message.body, message._encoded_headers, message.delivery_count, message.enqueued_at,
            message.expires_at, message.dead_letter_reason, message.dead_letter_source, message.sequence,
            message.priority, message.group_id]


_ERRORS: dict[str, type[TetherError]] = {
    cls.code: cls for cls in (getattr(errors, name) for name in errors.__all__)
}
# a queue refuses a message with the queue's MessageTooLarge (a QueueError too)
_ERRORS["message-too-large"] = errors.QueueMessageTooLarge


def error_code(exc: BaseException) -> str:
    """The wire code of an exception raised while serving a request."""
    if isinstance(exc, TetherError):
        return exc.code
    if isinstance(exc, TypeError):
        return "type-error"
    if isinstance(exc, ValueError):
        return "value-error"
    return "internal-error"


def error_from_code(code: str, text: str) -> BaseException:
    """The local exception for an ERROR item: the same tether error class, or
    ValueError/TypeError, or a QueueError carrying the code for one without a class."""
    if code == "value-error":
        return ValueError(text)
    if code == "type-error":
        return TypeError(text)
    if code == "poison-message":
        return errors.PoisonMessage(text)
    cls = _ERRORS.get(code)
    if cls is None:
        error = errors.QueueError(text)
        error.code = code       # e.g. "expired": the forwarder's dead-letter reason
        return error
    return cls(text)
