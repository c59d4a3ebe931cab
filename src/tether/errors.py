"""Every error tether raises. Each fault has a stable string `.code` (the one sent in a
Fault frame) so a peer's fault is raised locally as the same class."""
from __future__ import annotations


class TetherError(Exception):
    """Base of every tether error."""

    code = "tether-error"

    def __init__(self, message: str = "", *args: object) -> None:
        super().__init__(message or (self.__class__.__doc__ or self.__class__.__name__).strip().splitlines()[0], *args)

    @property
    def reason(self) -> str:
        return str(self.args[0]) if self.args else ""


# ---- session faults (the table in docs/sessions.md, "Faults") ----

class SessionFault(TetherError):
    """A reliable session failed."""

    code = "session-fault"


class SequenceTerminated(SessionFault):
    """The peer terminated the sequence."""

    code = "sequence-terminated"


class UnknownSequence(SessionFault):
    """A frame named a sequence this endpoint does not know."""

    code = "unknown-sequence"


class InvalidAcknowledgement(SessionFault):
    """An acknowledgement covered a message number that was never sent."""

    code = "invalid-acknowledgement"


class MessageNumberRollover(SessionFault):
    """The 64-bit message number space is exhausted."""

    code = "message-number-rollover"


class CreateSequenceRefused(SessionFault):
    """The peer refused to create the sequence."""

    code = "create-sequence-refused"


class SequenceClosed(SessionFault):
    """The sequence is closed: nothing more can be sent on it."""

    code = "sequence-closed"


class RetryLimitExceeded(SessionFault):
    """A message was retransmitted max_retry_count times without acknowledgement."""

    code = "retry-limit-exceeded"


class InactivityTimeout(SessionFault):
    """Nothing was heard from the peer for inactivity_timeout seconds."""

    code = "inactivity-timeout"


class MessageTooLarge(SessionFault):
    """A message is larger than max_message_size."""

    code = "message-too-large"


class SendQueueFull(SessionFault):
    """send_nowait() would queue more than a session holds unacknowledged."""

    code = "send-queue-full"


class ProtocolError(SessionFault):
    """A malformed, oversized or wrong-typed frame."""

    code = "protocol-error"


SESSION_FAULTS: dict[str, type[SessionFault]] = {
    cls.code: cls
    for cls in (
        SessionFault, SequenceTerminated, UnknownSequence, InvalidAcknowledgement,
        MessageNumberRollover, CreateSequenceRefused, SequenceClosed, RetryLimitExceeded,
        InactivityTimeout, MessageTooLarge, SendQueueFull, ProtocolError,
    )
}


def fault_from_code(code: str, reason: str) -> SessionFault:
    """The local exception for a Fault frame received from the peer."""
    return SESSION_FAULTS.get(code, SessionFault)(reason)


# ---- queue errors (raised by QueueManager, QueueClient and the journal) ----

class QueueError(TetherError):
    """A queue operation failed."""

    code = "queue-error"


class QueueNotFound(QueueError):
    """No queue by that name."""

    code = "queue-not-found"


class QueueExists(QueueError):
    """A queue by that name exists with different settings."""

    code = "queue-exists"


class QueueFull(QueueError):
    """The queue holds max_length messages; the send was refused."""

    code = "queue-full"


class PoisonMessage(QueueError):
    """The queue stopped delivering: a message failed every retry (receive_error_handling='fault')."""

    code = "poison-message"

    def __init__(self, message: str = "", message_id: str | None = None, queue: str | None = None) -> None:
        super().__init__(message)
        self.message_id = message_id
        self.queue = queue


class TransactionError(QueueError):
    """A transaction could not be committed, or was used after it ended."""

    code = "transaction-error"


class LockLost(QueueError):
    """The peek-lock on a received message expired before complete()/abandon()."""

    code = "lock-lost"


class JournalCorrupt(QueueError):
    """The journal is damaged beyond a torn tail; nothing was changed (see `tether qm check`)."""

    code = "journal-corrupt"

    def __init__(self, message: str = "", *, path: str | None = None, offset: int | None = None) -> None:
        super().__init__(message)
        #: the damaged file and the byte offset of the damage in it, when known
        self.path = path
        self.offset = offset


class StorageError(QueueError):
    """The queue store could not write (a full disk, an I/O error): the operation did not take effect."""

    code = "storage-error"


class QueueUnavailable(QueueError):
    """The queue manager could not be reached within the request timeout."""

    code = "queue-unavailable"


class LimitExceeded(QueueError):
    """A limit of the queue manager or its service was reached (the message names it): this
    request is refused; other clients are not affected."""

    code = "limit-exceeded"


class ProducerFenced(QueueError):
    """A newer instance of this producer (the same client id) connected: this one is fenced off."""

    code = "producer-fenced"


class AuthenticationFailed(QueueError):
    """The queue manager did not accept this client's user and password (or needs them)."""

    code = "authentication-failed"


class PermissionDenied(QueueError):
    """The authenticated user may not make this request (docs/security.md)."""

    code = "permission-denied"


class QueueMessageTooLarge(MessageTooLarge, QueueError):
    """A message (or its headers) is larger than the queue's max_message_size."""

    code = "message-too-large"


__all__ = [n for n, v in list(globals().items()) if isinstance(v, type) and issubclass(v, TetherError)]
