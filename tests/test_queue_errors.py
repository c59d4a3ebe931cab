"""Every queue error is a tether.QueueError, a queue's MessageTooLarge included (it is a
tether.MessageTooLarge too, so either except clause catches it), locally and remotely."""
from __future__ import annotations

import pytest

import tether


def test_every_queue_error_class_is_a_queue_error():
    queue_errors = [tether.QueueNotFound, tether.QueueExists, tether.QueueFull, tether.QueueMessageTooLarge,
                    tether.LockLost, tether.PoisonMessage, tether.TransactionError, tether.StorageError,
                    tether.JournalCorrupt, tether.QueueUnavailable, tether.ProducerFenced]
    for cls in queue_errors:
        assert issubclass(cls, tether.QueueError), cls
    assert issubclass(tether.QueueMessageTooLarge, tether.MessageTooLarge)


async def test_a_queues_message_too_large_is_a_queue_error_locally_and_remotely(tmp_path):
    async with tether.QueueManager.open(tmp_path, listen="tcp://127.0.0.1:0") as qm:
        await qm.create_queue("small", max_message_size=10)
        with pytest.raises(tether.QueueError) as local:
            await qm.send("small", b"x" * 11)
        assert isinstance(local.value, tether.MessageTooLarge)
        async with tether.QueueClient.connect(qm.services[0].url) as client:
            with pytest.raises(tether.QueueError) as remote:
                await client.send("small", b"x" * 11)
            assert isinstance(remote.value, tether.MessageTooLarge)
            with pytest.raises(tether.QueueError) as protocol_limit:
                await client.send("small", b"x" * (9 * 1024 * 1024))
            assert isinstance(protocol_limit.value, tether.MessageTooLarge)
