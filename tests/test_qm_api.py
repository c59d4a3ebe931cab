"""One API: QueueManager (embedded) and QueueClient (remote) have the same methods, with the
same parameters and the same sync/async-ness, and so do their transactions. What only one of
them has is listed here, with why, so a new public method is added to both or named below."""
from __future__ import annotations

import inspect

from tether.queue.client import QueueClient, RemoteTransaction
from tether.queue.manager import QueueManager
from tether.queue.transaction import Transaction

#: Only the embedded manager: opening a store, serving, forwarding, the journal, the
#: statistics tether.metrics reports for this process.
MANAGER_ONLY = {"open", "listen", "services", "forwarders", "route", "transmission_queue", "return_queue",
                "compact", "journal_bytes", "recovery_log", "manager_id", "statistics"}
#: Only the client: connecting, the error that ended it, the forwarder's side of FORWARD.
CLIENT_ONLY = {"connect", "failure", "forward", "forward_batch", "settled"}


def _public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def _shape(cls: type, name: str) -> tuple:
    """(kind, parameters without annotations, coroutine function?) of a member."""
    member = inspect.getattr_static(cls, name)
    if isinstance(member, property):
        return ("property",)
    if isinstance(member, (classmethod, staticmethod)):
        return (type(member).__name__,)
    if not callable(member):
        return ("attribute",)
    signature = inspect.signature(member)
    params = tuple((p.name, p.kind, p.default) for p in signature.parameters.values())
    is_async = inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member)
    return ("method", params, is_async)


def _compare(a: type, b: type, only_a: set[str], only_b: set[str]) -> None:
    assert _public(a) - _public(b) == only_a, f"{a.__name__} has methods {b.__name__} lacks"
    assert _public(b) - _public(a) == only_b, f"{b.__name__} has methods {a.__name__} lacks"
    for name in sorted(_public(a) & _public(b)):
        assert _shape(a, name) == _shape(b, name), (
            f"{name}: {a.__name__} {_shape(a, name)} != {b.__name__} {_shape(b, name)}")


def test_manager_and_client_have_the_same_methods_and_signatures():
    _compare(QueueManager, QueueClient, MANAGER_ONLY, CLIENT_ONLY)


def test_the_shared_api_is_all_there():
    shared = {"create_queue", "delete_queue", "queues", "settings", "queue_info", "queue_infos", "send",
              "send_many", "receive", "peek", "purge_queue", "transaction", "close"}
    assert shared <= _public(QueueManager) & _public(QueueClient)
    for name in ("queues", "settings", "queue_info", "peek", "purge_queue", "send", "send_many", "receive"):
        assert inspect.iscoroutinefunction(getattr(QueueManager, name)), name


def test_local_and_remote_transactions_have_the_same_methods():
    _compare(Transaction, RemoteTransaction, {"give_back", "received"}, set())
