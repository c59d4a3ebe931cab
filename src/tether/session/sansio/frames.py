"""Frame type numbers of the session protocol (ext/README.md "codec"), named after
WS-ReliableMessaging 1.1."""
import enum


class FrameType(enum.IntEnum):
    CREATE_SEQUENCE = 1
    CREATE_SEQUENCE_RESPONSE = 2
    CREATE_SEQUENCE_REFUSED = 3
    DATA = 4
    ACK = 5
    # 6 was NACK (a list of numbers to resend), retired: an ACK's ranges show gaps, and loss
    # detection (packet and time thresholds) decides what to resend.
    ACK_REQUESTED = 7
    CLOSE_SEQUENCE = 8
    CLOSE_SEQUENCE_RESPONSE = 9
    TERMINATE_SEQUENCE = 10
    TERMINATE_SEQUENCE_RESPONSE = 11
    FAULT = 12
    RESUME = 13
    RESUME_RESPONSE = 14
    # Address and path validation over UDP (after QUIC, RFC 9000 8.1 and 8.2).
    RETRY = 15
    PATH_CHALLENGE = 16
    PATH_RESPONSE = 17
