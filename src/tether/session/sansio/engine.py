"""The sans-IO reliable session engine: one session, one sequence each way.

It never reads a clock or touches a socket (after aioquic's QuicConnection): every entry
point takes `now`; the adapter feeds it packets (`receive_packet`), application sends
(`send`) and timer expiries (`handle_timer`), and takes back packet bodies
(`packets_to_send`), events (`events`) and the next deadline (`next_timer`).

Work is per batch: a whole packet, a whole ack, a whole run of new messages goes through
one call of the layer-1 structures (tether._native), which do the per-message work.
"""
from __future__ import annotations

import dataclasses
import hmac
from typing import Any

from ...errors import (
    CreateSequenceRefused,
    InactivityTimeout,
    MessageTooLarge,
    ProtocolError,
    RetryLimitExceeded,
    SequenceClosed,
    SequenceTerminated,
    TetherError,
    UnknownSequence,
    fault_from_code,
)
from .congestion import PathModel
from .core import Core, default
from .events import Connected, MessagesDelivered, PeerClosed, SessionEnded
from .fragments import Fragment, Reassembler, cut
from .frames import FrameType as F
from .settings import SessionSettings
from .state import (
    FINAL_STATES,
    OPEN_STATES,
    Event,
    Receiving,
    ReceivingEvent,
    Sending,
    SendingEvent,
    State,
    next_receiving,
    next_sending,
    next_state,
)

MAX_NUMBER = 2**64 - 1
# Ranges carried per ack: the cumulative one plus the highest gaps (QUIC sends a bounded set too).
MAX_ACK_RANGES = 32
# RFC 9002 6.2.2: the RTT assumed before the first sample.
K_INITIAL_RTT = 0.333
# RFC 6298 2.4 recommends a 1 s floor for the open Internet; sessions here mostly run on
# LANs and loopback, and the peer's ack delay is added on top (RFC 9002 6.2.1 does the same).
MIN_RTO = 0.025
# RFC 6298 2.5: a maximum RTO of at least 60 s may be placed.
MAX_RTO = 60.0
# Acknowledge at once every second full packet carrying data (RFC 1122 4.2.3.2, RFC 9000
# 13.2.2); a packet is full from half the packet size up (messages are not cut to fill one).
ACK_ELICITING_THRESHOLD = 2
# The longest a peer delays an ack (its ack_interval, in microseconds on the wire) when its
# handshake frame leaves it out; and the most it may say.
K_DEFAULT_ACK_DELAY = 0.2
MAX_ACK_DELAY_US = 60_000_000
MAX_FRAMES_PER_PACKET = 8192
# An ack's size: a header and two uint64 per range; it holds as many ranges as fit a
# packet, at most MAX_ACK_RANGES.
ACK_RANGE_BYTES = 18
ACK_HEADER_BYTES = 32
# Room for a DATA frame's own fields around a fragment (fragment_size).
FRAGMENT_OVERHEAD = 64
FIRST_NUMBER = 1
# Pacing (UDP, with congestion control): a burst is at most this many packets or this much
# of the pacing rate, whichever is more (a timer per packet would cost more than it saves),
# and the pacer waits at least this long (timers are not finer on an event loop).
PACING_BURST_PACKETS = 4
PACING_BURST_TIME = 0.002
PACING_MIN_WAIT = 0.0005
# UDP: the first probe timeout (PTO) after acks arrived resends at most this many
# messages (the lowest due); each timeout that follows without a fresh RTT sample doubles
# it. A receiver that merely stalled longer than an RTO then costs a few duplicates, not a
# window of them; a path that lost a whole window is resent in doubling bursts.
RTO_BURST = 16
# RFC 9002 6.1.2: a message is lost once a later transmission arrived and it was sent 9/8
# of an RTT (the larger of the smoothed and the latest) ago, and at least this long ago.
K_TIME_THRESHOLD = 9 / 8
K_GRANULARITY = 0.001
# RFC 9002 7.6: probe timeouts in a row with nothing acknowledged, spanning about three
# PTOs (1 + 2 + 4 with the backoff), mean persistent congestion: the window collapses to
# its minimum. A single timeout changes nothing (it sends probes, declares no loss).
K_PERSISTENT_CONGESTION_PTOS = 3
# RFC 8985 7 (tail loss probe): with data in flight and no ack for max(2 srtt, srtt + 4
# rttvar) plus this margin (plus the peer's ack delay unless the last data asked for an
# ack), one probe goes: a packet of new data beyond the congestion window, or an
# AckRequested alone. The receiver acks each flight about once, so a lost ack (or a lost
# tail) would otherwise stall the sender for a whole RTO, at least MIN_RTO; the probe's
# ack lets loss detection find what is missing, and it resends nothing that may have arrived.
K_TAIL_PROBE_MARGIN = 0.001
# TerminateSequence is resent this many times at most (like TCP's LAST_ACK, short): by then
# both sequences are closed and acknowledged, so only the peer's bookkeeping is at stake.
K_TERMINATE_RETRIES = 3


# Plain ints for the per-frame dispatch (comparing with an IntEnum member is slower).
_DATA, _ACK, _ACK_REQUESTED = int(F.DATA), int(F.ACK), int(F.ACK_REQUESTED)


def full_packet_size(max_packet_size: int) -> int:
    """The length from which a packet counts as full, towards the ack every second full
    packet: messages are not cut to fill a packet, so half of one."""
    return max_packet_size // 2


class _Control:
    """A control frame that waits for its response; resent with doubling backoff."""

    __slots__ = ("kind", "frame", "sent_at", "deadline", "retries")

    def __init__(self, kind: str, frame: bytes, now: float, rto: float) -> None:
        self.kind = kind
        self.frame = frame
        self.sent_at = now
        self.deadline = now + rto
        self.retries = 0


class SessionEngine:
    """One reliable session. Create a client with `SessionEngine.client(...)` and call
    `start(now)`; a server creates one per CreateSequence with `SessionEngine.accept(...)`."""

    def __init__(self, settings: SessionSettings, *, session_id: int, token: bytes,
                 is_client: bool, now: float, reliable_transport: bool,
                 max_packet_size: int, core: Core | None = None) -> None:
        core = core or default()
        self.settings = settings
        self.session_id = session_id
        self.token = token
        self.is_client = is_client
        self.reliable_transport = reliable_transport
        self.max_packet_size = max_packet_size
        self._codec = core.codec
        window = settings.max_transfer_window
        self._sw = core.SendWindow(window, settings.max_retry_count, FIRST_NUMBER)
        self._rw = core.ReceiveWindow(window, settings.ordered, FIRST_NUMBER)
        self._rtt = core.RttEstimator(K_INITIAL_RTT, MIN_RTO, MAX_RTO)
        self._cc = (PathModel(max_packet_size, window) if (not reliable_transport and settings.flow_control)
                    else None)
        self._max_ack_ranges = max(1, min(MAX_ACK_RANGES, (max_packet_size - ACK_HEADER_BYTES) // ACK_RANGE_BYTES))
        # DATA fills whole packets: acks and other control frames travel after the data, in
        # a packet of their own (packets_to_send), so a burst is a run of equal-sized
        # packets (one GSO send) ended by a shorter one.
        self._max_body = max_packet_size
        self._ack_request = self._codec.encode_frame((F.ACK_REQUESTED, session_id))
        # UDP: a message larger than a datagram goes as fragments.
        self._fragment_size = None if reliable_transport else self._max_body - FRAGMENT_OVERHEAD
        self.state = State.CONNECTING if is_client else State.ESTABLISHED
        self.error: TetherError | None = None
        self.peer_window = window
        self.peer_max_message_size = settings.max_message_size
        # Exclusive bound on the numbers the peer's receive window accepts (flow control).
        self._send_limit = FIRST_NUMBER + window

        # Pacing (UDP with congestion control): bytes of new data that may go out now, and
        # when they were counted; _pace_next is when enough for a burst will have accrued
        # while the pacer holds data back (None otherwise).
        self._pace_tokens = 0.0
        self._pace_at = now
        self._pace_next: float | None = None
        self._pending: list = []          # accepted from the app, not yet in the send window
        self._pending_head = 0
        self._pending_bytes = 0
        self._fragments_queued = 0        # nonzero while a Fragment may be in _pending or the send window
        self._resend: list = []           # (number, payload) to retransmit
        self._control_out: list[bytes] = []
        self._ctl: _Control | None = None

        self._ack_now = False
        self._ack_deadline: float | None = None
        self._packets_unacked = 0             # full packets with data since our last ack
        self._full_packet = full_packet_size(max_packet_size)
        self._ask = False                    # send AckRequested with the next packets
        # The longest the peer delays an ack (its ack_interval, from the handshake): our
        # retransmission timeout for data waits that much longer (RFC 9002 6.2.1).
        self.peer_ack_delay = K_DEFAULT_ACK_DELAY
        self._acked_first = False
        self._delivered: list = []
        self._reassembler: Reassembler | None = None
        self._incoming_last: int | None = None
        # the close handshake, one state per direction (state.py)
        self.sending = Sending.OPEN
        self.receiving = Receiving.OPEN
        self._peer_closed_reported = False   # PeerClosed emitted (once)
        # Server: the client sent something only an established client sends, so it has our
        # CreateSequenceResponse (until then a move repeats the response: peer_moved).
        self._peer_confirmed = is_client
        self._address_token: bytes | None = None   # UDP client: from the server's Retry

        self._last_heard = now
        # when the peer's session last sent anything: every packet but a lone PathChallenge,
        # which the server's Demux sends while our address is not yet validated (it answers
        # no keepalive: _keepalive_interval)
        self._last_answered = now
        self._last_sent = now
        # UDP: when an ack last acknowledged new messages; no message is resent by timeout
        # within an RTO of that (RFC 6298 5.3: the timer restarts when new data is acked).
        self._last_progress = now
        self._rto_burst = RTO_BURST
        self._latest_rtt = 0.0               # the latest RTT sample (loss detection's time threshold)
        self._ptos = 0                       # probe timeouts since an ack last acknowledged news
        self._tail_asked = False             # the last data sent went with an AckRequested
        self._last_data_sent = now           # UDP: when DATA last went out (the tail probe's clock)
        self._tail_probed = False            # a tail probe went since an ack last acknowledged news
        self._probe_due = False              # the next packets_to_send sends the tail probe
        self._keepalive = settings.keepalive_interval
        self._probe_at = -1.0                # UDP: when the last keepalive went out
        self._probes_unanswered = 0          # ... and how many in a row nothing answered
        self._stream_reader = None  # receive_data() only
        # Batches of plain DATA take codec.data_runs (tests turn it off to compare).
        self._fast_receive = True
        self._events: list = []
        self.messages_sent = 0
        self.messages_resent = 0
        self.messages_acked = 0
        self.messages_delivered = 0
        self.packets_sent = 0
        self.packets_received = 0
        self.fast_retransmits = 0           # loss events detected by later acks
        self.retransmission_timeouts = 0    # loss events detected by the RTO
        self.tail_probes = 0                # RFC 8985 tail loss probes sent
        self.packets_ignored = 0            # UDP client: datagrams that named no session of ours

    # ---- creation ----

    @classmethod
    def client(cls, settings: SessionSettings, *, session_id: int, token: bytes, now: float,
               reliable_transport: bool, max_packet_size: int, core: Core | None = None) -> SessionEngine:
        """A client session; call start(now) to send CreateSequence."""
        return cls(settings, session_id=session_id, token=token, is_client=True, now=now,
                   reliable_transport=reliable_transport, max_packet_size=max_packet_size, core=core)

    @staticmethod
    def check_offer(frame: tuple) -> None:
        """Raise ProtocolError when a decoded CreateSequence offers what no session can take:
        the server checks this before anything else, so a hopeless offer costs nothing."""
        token, window, max_message_size = frame[2], frame[3], frame[4]
        if len(token) != 16:
            raise ProtocolError("CreateSequence token must be 16 bytes")
        if not 1 <= window <= 65536:
            raise ProtocolError(f"CreateSequence window {window} out of range")
        if max_message_size < 1:
            raise ProtocolError(f"CreateSequence max_message_size {max_message_size} out of range")
        if len(frame) > 6 and frame[6] > MAX_ACK_DELAY_US:
            raise ProtocolError(f"CreateSequence ack_delay {frame[6]} us out of range")

    @classmethod
    def accept(cls, frame: tuple, settings: SessionSettings, *, now: float,
               reliable_transport: bool, max_packet_size: int, core: Core | None = None) -> SessionEngine:
        """The server side of a CreateSequence frame (already decoded; its address token, if
        any, already checked by the Demux). The session takes the client's `ordered` choice;
        windows and message sizes are each side's own."""
        cls.check_offer(frame)
        _, session_id, token, window, max_message_size, ordered = frame[:6]
        if ordered != settings.ordered:
            settings = dataclasses.replace(settings, ordered=ordered)
        engine = cls(settings, session_id=session_id, token=token, is_client=False, now=now,
                     reliable_transport=reliable_transport, max_packet_size=max_packet_size, core=core)
        engine._peer_handshake(window, max_message_size, frame[6] if len(frame) > 6 else None)
        engine._control_out.append(engine._response_frame())
        engine._events.append(Connected())
        return engine

    def start(self, now: float) -> None:
        """Client: send CreateSequence (with the Offer of the reverse sequence)."""
        self._start_control("create", self._create_frame(), now)

    def _create_frame(self) -> bytes:
        s = self.settings
        fields: tuple = (F.CREATE_SEQUENCE, self.session_id, self.token, s.max_transfer_window,
                         s.max_message_size, s.ordered, self._ack_delay_us())
        if self._address_token is not None:
            fields += (self._address_token,)
        return self._codec.encode_frame(fields)

    def _response_frame(self) -> bytes:
        s = self.settings
        return self._codec.encode_frame((F.CREATE_SEQUENCE_RESPONSE, self.session_id,
                                         s.max_transfer_window, s.max_message_size,
                                         self._ack_delay_us()))

    def _cwnd_packets(self) -> int:
        # At most this many messages are in flight (both windows), each in one datagram at
        # most (larger ones are fragmented): the congestion window needs no more.
        return min(self.settings.max_transfer_window, self.peer_window)

    def _ack_delay_us(self) -> int:
        return round(self.settings.ack_interval * 1_000_000)

    def _peer_handshake(self, window: int, max_message_size: int, ack_delay_us: int | None) -> None:
        self.peer_window = window
        self.peer_max_message_size = max_message_size
        self._send_limit = FIRST_NUMBER + window
        if self._cc is not None:
            self._cc.limit(self._cwnd_packets())
        if ack_delay_us is not None:
            self.peer_ack_delay = ack_delay_us / 1_000_000

    # ---- application side ----

    @property
    def pending_count(self) -> int:
        """Messages accepted by send() and not yet sent for the first time."""
        return len(self._pending) - self._pending_head

    @property
    def unacknowledged_count(self) -> int:
        """Messages accepted by send() that the peer has not acknowledged (queued or in
        flight; a fragmented message counts once per fragment)."""
        return self.pending_count + self._sw.in_flight

    @property
    def send_capacity(self) -> int:
        """How many more messages send() should take before the caller waits: one window
        unacknowledged in all, queued or in flight."""
        return self.settings.max_transfer_window - self.pending_count - self._sw.in_flight

    @property
    def unacknowledged_bytes(self) -> int:
        """Bytes accepted by send() that the peer has not acknowledged (queued or in flight)."""
        return self._pending_bytes + self._sw.bytes_in_flight

    @property
    def fragment_size(self) -> int | None:
        """UDP: messages larger than this travel as fragments; None over TCP."""
        return self._fragment_size

    @property
    def all_acknowledged(self) -> bool:
        """Everything sent so far has been acknowledged (what flush() waits for)."""
        return self.pending_count == 0 and self._sw.in_flight == 0 and not self._resend

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES

    @property
    def is_finished(self) -> bool:
        return self.state in FINAL_STATES

    def send(self, payloads: list, now: float) -> None:
        """Queue messages for sending. Raises MessageTooLarge (nothing queued) when one is
        larger than the smaller of the two sides' max_message_size, SequenceClosed after
        close, or the session's fault once it has ended."""
        if self.state in FINAL_STATES:
            raise self.error or SequenceClosed("the session is closed")
        if self.sending is not Sending.OPEN or self.state is State.CLOSING:
            raise SequenceClosed("the session is closing: nothing more can be sent")
        if not payloads:
            return
        total, biggest, exact = self._codec.payload_sizes(payloads)
        if not exact:  # a bytearray/memoryview may change after send() returns: copy it
            payloads = [bytes(p) for p in payloads]
        limit = min(self.settings.max_message_size, self.peer_max_message_size)
        if biggest > limit:
            raise MessageTooLarge(f"a message of {biggest} bytes exceeds max_message_size {limit}")
        if self._fragment_size is not None and biggest > self._fragment_size:
            payloads = self._cut_large(payloads)
        self._pending.extend(payloads)
        self._pending_bytes += total

    def _cut_large(self, payloads: list) -> list:
        out: list = []
        for p in payloads:
            if len(p) > self._fragment_size:
                pieces = cut(p, self._fragment_size)
                self._fragments_queued += len(pieces)
                out.extend(pieces)
            else:
                out.append(p)
        return out

    def release(self, count: int, now: float) -> bool:
        """The application consumed `count` delivered messages: their buffer space frees up,
        and the peer hears of it at once when the buffer had filled (flow control). True
        when an ack is due now (packets_to_send has something to send); otherwise the
        space freed rides with the next ack."""
        if count <= 0 or self.state in FINAL_STATES:
            return False
        before = self._rw.buffer_remaining
        self._rw.release(count)
        capacity = self.settings.max_transfer_window
        if before == 0 or before * 2 < capacity <= self._rw.buffer_remaining * 2:
            self._ack_now = True
        return self._ack_now

    def flush(self, now: float) -> None:
        """Ask the peer to acknowledge everything sent so far at once (an AckRequested goes
        with the next packets), rather than after its ack_interval: what a caller waiting
        for the acknowledgements (Session.flush, a paused writer) wants."""
        if self.state in OPEN_STATES and not self.all_acknowledged:
            self._ask = True

    def close(self, now: float) -> None:
        """Graceful close: send what is pending, wait for it to be acknowledged, then
        CloseSequence and TerminateSequence. SessionEnded(None) follows."""
        if self.state is State.CONNECTING:
            self._transition(Event.CLOSE)
            self._end(None)
            return
        if self.state is State.ESTABLISHED:
            self._transition(Event.CLOSE)
        self._close_sequence_asked()
        self.flush(now)
        self._advance_close(now)

    def close_sending(self, now: float) -> None:
        """Half-close (write_eof): end our sequence after what is pending; the peer sees EOF
        after the last message and may go on sending."""
        if self.state in OPEN_STATES:
            self._close_sequence_asked()
            self.flush(now)
            self._advance_close(now)

    def fail(self, error: TetherError, now: float) -> None:
        """Fault the session with a local error (e.g. the TCP stream could not be de-framed);
        the peer is told with a Fault frame."""
        self._fault(error, now)

    def abort(self, now: float, reason: str = "aborted by the peer") -> None:
        """End the session at once: the peer gets a Fault, pending messages are dropped."""
        self._fault(SequenceTerminated(reason), now)

    # ---- network side ----

    def receive_packet(self, body: bytes, now: float) -> None:
        """One packet from the peer. A malformed one faults this session, except on a UDP
        client, where a datagram that does not decode or whose first frame names another
        session is dropped: anyone can send one with the server's address as its source
        (or make the server reflect one there), so it proves nothing about the session."""
        if self.state in FINAL_STATES:
            return
        try:
            frames = self._codec.decode_packet(body, self.settings.max_message_size,
                                               MAX_FRAMES_PER_PACKET)
        except ProtocolError as exc:
            if self.is_client and not self.reliable_transport:
                self.packets_ignored += 1
                return
            self._fault(exc, now)
            return
        if (self.is_client and not self.reliable_transport and frames
                and frames[0][1] != self.session_id):
            self.packets_ignored += 1
            return
        self.receive_frames(frames, now, len(body))

    def receive_packets(self, bodies: list, now: float) -> None:
        """Several packets from the peer, in arrival order (a batch of datagrams, or the
        packets cut from a TCP read): the same as receive_packet for each, with the bodies
        decoded in one call and the frames of consecutive packets given to the engine in
        one call (a UDP client's batch split natively by the session its packets name,
        codec.session_groups, to drop the strangers')."""
        if self.state in FINAL_STATES:
            return
        codec = self._codec
        decoded = codec.decode_packets(bodies, self.settings.max_message_size,
                                       MAX_FRAMES_PER_PACKET)
        if not self.is_client or self.reliable_transport:
            # a malformed packet faults the session, after what arrived before it
            for index, frames in enumerate(decoded):
                if type(frames) is not list:
                    self.receive_frames_many(decoded[:index], now, [len(b) for b in bodies[:index]])
                    self._fault(frames, now)
                    return
            self.receive_frames_many(decoded, now, [len(b) for b in bodies])
            return
        # a UDP client drops datagrams that do not decode or name another session
        for session_id, packets, sizes, full in codec.session_groups(decoded, bodies,
                                                                     self._full_packet):
            if session_id != self.session_id:
                self.packets_ignored += len(packets)
                continue
            self.receive_frames_many(packets, now, sizes, full_packets=full)
            if self.state in FINAL_STATES:
                return

    def receive_frames(self, frames: list, now: float, size: int | None = None) -> None:
        """Decoded frames of one packet, all for this session; `size` is the packet's length
        in bytes (None: taken as a full packet)."""
        self.receive_frames_many([frames], now, None if size is None else [size])

    def receive_frames_many(self, packets: list, now: float, sizes: list | None = None, *,
                            full_packets: int | None = None) -> None:
        """Decoded frames of several packets (a list of frame lists), all for this session,
        in arrival order, and their lengths in bytes (None: each taken as a full packet):
        the same as receive_frames for each. `full_packets`: how many of the sizes are
        full (full_packet_size), when the caller counted them already. DATA frames that continue one another are
        joined into one run for the receive window; the run is accepted before any other
        frame but AckRequested is acted on, so every check sees the same state as packet by
        packet."""
        if self.state in FINAL_STATES or not packets:
            return
        if self._fast_receive and self.state is not State.CONNECTING and self._incoming_last is None:
            fast = self._codec.data_runs(packets, self.session_id)
            if fast is not None:
                self._peer_confirmed = True       # DATA: only an established peer sends it
                if full_packets is not None:
                    full = full_packets
                elif sizes is None:
                    full = len(packets)
                else:
                    full = sum(1 for size in sizes if size >= self._full_packet)
                self._receive_data_runs(len(packets), *fast, now, full)
                return
        self._last_heard = now
        challenge_only = True
        sid = self.session_id
        run: list | None = None    # payloads of consecutive DATA frames not yet accepted
        run_first = 0
        error: TetherError | None = None
        full_packet = self._full_packet
        try:
            for index, frames in enumerate(packets):
                self.packets_received += 1
                if challenge_only and (len(frames) != 1 or frames[0][0] != _PATH_CHALLENGE):
                    challenge_only = False
                    self._last_answered = now
                if not self._peer_confirmed:
                    self._peer_confirmed = any(f[0] not in _HANDSHAKE_FRAMES for f in frames)
                had_data = False
                for frame in frames:
                    kind = frame[0]
                    if frame[1] != sid:
                        raise ProtocolError(
                            f"frame for session {frame[1]:#x} arrived on session {sid:#x}")
                    if kind == _DATA:
                        had_data = True
                        checked = self._check_data(frame)
                        if checked is None:
                            continue
                        first, payloads = checked
                        if run is not None and first == run_first + len(run):
                            run.extend(payloads)
                            continue
                        if run is not None:
                            pending, run = run, None
                            self._accept_run(run_first, pending)
                        run_first, run = first, list(payloads)
                    elif kind == _ACK_REQUESTED:
                        self._ack_now = True
                    else:
                        if run is not None:
                            pending, run = run, None
                            self._accept_run(run_first, pending)
                        handler = _HANDLERS.get(kind)
                        if handler is None:
                            raise ProtocolError(f"unexpected frame type {kind}")
                        handler(self, frame, now)
                        if self.state in FINAL_STATES:
                            return
                if had_data:
                    # only full packets count towards the ack every second packet; any data
                    # starts the ack_interval clock
                    if sizes is None or sizes[index] >= full_packet:
                        self._packets_unacked += 1
                    if self._packets_unacked >= ACK_ELICITING_THRESHOLD or self.settings.ack_interval == 0:
                        self._ack_now = True
                    elif self._ack_deadline is None:
                        self._ack_deadline = now + self.settings.ack_interval
                if self._incoming_last is not None:
                    if run is not None:
                        pending, run = run, None
                        self._accept_run(run_first, pending)
                    self._check_incoming_closed()
            if run is not None:
                pending, run = run, None
                self._accept_run(run_first, pending)
        except TetherError as exc:
            error = exc
        except (ValueError, OverflowError, TypeError) as exc:
            # hostile field values the codec let through (it checks types, not meaning)
            error = ProtocolError(f"invalid frame: {exc}")
        if error is not None:
            if run is not None:
                # the frames before the bad one were taken, as packet by packet
                try:
                    self._accept_run(run_first, run)
                except (TetherError, ValueError, OverflowError, TypeError):
                    pass
            self._fault(error, now)
            return
        if self._delivered:
            self.messages_delivered += len(self._delivered)
            self._events.append(MessagesDelivered(self._delivered))
            self._delivered = []
        self._check_incoming_closed()

    def _receive_data_runs(self, count: int, steps: list, data_packets: int, ack_requested: bool,
                           now: float, full_packets: int) -> None:
        """receive_frames_many for `count` packets of nothing but DATA (no fragments),
        AckRequested and ACK riding with data, already joined into runs by codec.data_runs
        (steps: runs and ACK frames in arrival order): the same end state, with no Python
        work per DATA frame."""
        self._last_heard = now
        self._last_answered = now
        self.packets_received += count
        try:
            for step in steps:
                if len(step) != 2:
                    self._on_ack(step, now)     # an ACK frame, after the runs before it
                    continue
                first, payloads = step
                # (the decoder checked first + count - 1 <= 2**64-1 for every frame)
                if first < FIRST_NUMBER:
                    raise ProtocolError(f"message numbers {first}..{first + len(payloads) - 1} out of range")
                self._accept_run(first, payloads)
        except TetherError as exc:
            self._fault(exc, now)
            return
        except (ValueError, OverflowError, TypeError) as exc:
            self._fault(ProtocolError(f"invalid frame: {exc}"), now)
            return
        if ack_requested:
            self._ack_now = True
        if data_packets:
            # as packet by packet: the first packet carrying data starts the ack delay, the
            # second (or any, with ack_interval 0) asks for an ack at once
            # (only full packets count towards it: an AckRequested-only packet is tiny, so
            # the full ones among `count` are data)
            interval = self.settings.ack_interval
            first_counts = 1 if full_packets else 0
            if interval != 0 and self._packets_unacked + first_counts < ACK_ELICITING_THRESHOLD \
                    and self._ack_deadline is None:
                self._ack_deadline = now + interval
            self._packets_unacked += min(full_packets, data_packets)
            if self._packets_unacked >= ACK_ELICITING_THRESHOLD or interval == 0:
                self._ack_now = True
        if self._delivered:
            self.messages_delivered += len(self._delivered)
            self._events.append(MessagesDelivered(self._delivered))
            self._delivered = []

    def _on_data(self, frame: tuple, now: float) -> None:
        checked = self._check_data(frame)
        if checked is not None:
            self._accept_run(*checked)

    def _check_data(self, frame: tuple) -> tuple | None:
        """(first number, payloads) of a DATA frame once its numbers are checked (fragments
        wrapped), or None when it is to be ignored."""
        _, _, first, payloads, fragments = frame
        count = len(payloads)
        if count == 0:
            return None
        if self.state is State.CONNECTING:
            # Data overtook the CreateSequenceResponse (UDP) or came from a server incarnation
            # that may yet forget the session (a restart: our CreateSequence then opens a new
            # one with the same id). Take data only from the sequence we connected to; the
            # server resends it, as nothing is acknowledged.
            return None
        last = first + count - 1
        if first < FIRST_NUMBER or last > MAX_NUMBER:
            raise ProtocolError(f"message numbers {first}..{last} out of range")
        if self._incoming_last is not None and last > self._incoming_last:
            raise ProtocolError(f"message {last} after CloseSequence at {self._incoming_last}")
        if fragments:
            payloads = self._wrap_fragments(first, payloads, fragments)
        return first, payloads

    def _accept_run(self, first: int, payloads: list) -> None:
        """Consecutive messages from `first` into the receive window (one call)."""
        rw = self._rw
        duplicates, refused, had_gap = rw.duplicates, rw.refused, rw.has_gap
        delivered = rw.accept(first, payloads)
        if delivered:
            if self._reassembler is not None:
                delivered, absorbed = self._reassembler.join(delivered)
                if absorbed:
                    rw.release(absorbed)
            self._delivered.extend(delivered)
        # Ack at once on a gap (so the sender can fast-retransmit), a duplicate (our ack was
        # lost), a refusal (the sender overran us) and the very first message.
        if rw.has_gap or had_gap or rw.duplicates != duplicates or rw.refused != refused \
                or not self._acked_first:
            self._ack_now = True
            self._acked_first = True

    def _wrap_fragments(self, first: int, payloads: list, fragments: list) -> list:
        if self._reassembler is None:
            self._reassembler = Reassembler(self.settings.max_message_size,
                                            self.settings.max_transfer_window)
        payloads = list(payloads)
        for offset, index, total in fragments:
            if not 0 <= offset < len(payloads) or not 0 <= index < total:
                raise ProtocolError(f"bad fragment descriptor ({offset}, {index}, {total})")
            number = first + offset
            if number - index < FIRST_NUMBER:
                raise ProtocolError(f"fragment {index} at message {number} starts before 1")
            payloads[offset] = Fragment(payloads[offset], index, total, number - index)
        return payloads

    def _on_ack(self, frame: tuple, now: float) -> None:
        _, _, ranges, buffer_remaining, _final = frame
        sw = self._sw
        if ranges:
            # Loss detection compares with messages sent once (Karn's rule) only: counting an
            # acked resend (apply_ack's resend_delay) cannot tell which copy arrived, and on the
            # veth bench it ended 1 KiB rows under 5% loss in RetryLimitExceeded twice (a
            # packet number echoed in acks would settle it).
            count, nbytes, samples = sw.apply_ack(ranges, now)
            if samples:
                self._rtt.update_many(samples)
                self._latest_rtt = samples[-1]
                self._rto_burst = RTO_BURST    # first transmissions arrive again
                if self._cc is not None:
                    self._cc.on_rtt(samples[-1])
            if count:
                self.messages_acked += count
                self._last_progress = now
                self._ptos = 0
                self._tail_probed = False
                if self._cc is not None:
                    self._cc.on_acked(nbytes, now, self._rtt.srtt, sw.bytes_in_flight)
                # Acked messages need not be fragments: the gate opens again only once no
                # Fragment can be left anywhere (nothing in flight, nothing pending).
                if self._fragments_queued and not sw.in_flight and not self.pending_count:
                    self._fragments_queued = 0
            if not self.reliable_transport and sw.in_flight:
                lost = sw.detect_lost(now, self._loss_delay())
                if lost:
                    self.fast_retransmits += 1
                    self._lost(lost)
        # Flow control: the peer accepts numbers below floor + buffer_remaining (+ what it
        # holds out of order, when ordered); take the largest bound seen (acks may reorder).
        if ranges and ranges[0][0] == FIRST_NUMBER:
            floor, above = ranges[0][1] + 1, ranges[1:]
        else:
            floor, above = FIRST_NUMBER, ranges
        limit = floor + buffer_remaining
        if self.settings.ordered:
            for lo, hi in above:
                limit += hi - lo + 1
        if limit - floor > self.peer_window and self.state is not State.CONNECTING:
            # Its buffer and what it holds out of order fit its window (known once the
            # handshake is done: an ack may overtake the response): a larger bound is no
            # ack the peer made (a corrupted one would have us overrun
            # its window, each refused message backing off its retransmissions for ever).
            raise ProtocolError(f"ack opens {limit - floor} messages above {floor}, more than "
                                f"the peer's window {self.peer_window}")
        if limit > self._send_limit:
            self._send_limit = limit
        self._advance_close(now)

    def _lost(self, lost: list) -> None:
        self._resend.extend(lost)
        self.messages_resent += len(lost)
        if self._cc is not None:
            self._cc.on_lost(max(n for n, _ in lost), self._sw.next_number)

    def _timed_out(self, now: float) -> None:
        """UDP, messages in flight: what the time threshold declares lost by now is resent
        (RFC 9002 6.1.2), and after a probe timeout with no ack making progress the lowest
        messages due go again as probes, with an AckRequested (6.2.4). A probe declares no
        loss and leaves the congestion window alone; only K_PERSISTENT_CONGESTION_PTOS of
        them in a row collapse it (7.6)."""
        sw = self._sw
        loss_delay = self._loss_delay()
        lost_at = sw.loss_deadline(loss_delay)
        if lost_at is not None and now >= lost_at:
            lost = sw.detect_lost(now, loss_delay)
            if lost:
                self.fast_retransmits += 1
                self._lost(lost)
        if not sw.in_flight or now < self._last_progress + self._data_rto():
            return
        due = sw.retransmit_due(now, self._data_rto(), MAX_RTO, self._rto_burst)
        if not due:
            return
        self.retransmission_timeouts += 1
        self._resend.extend(due)
        self.messages_resent += len(due)
        self._ptos += 1
        if self._cc is not None and self._ptos >= K_PERSISTENT_CONGESTION_PTOS:
            self._cc.on_persistent_congestion()
        # restart the timer (RFC 6298 5.6): what else is due waits an RTO more, or for acks
        # showing it arrived (or lost: loss detection)
        self._last_progress = now
        self._rto_burst = min(self._rto_burst * 2, 1 << 20)
        self._ask = True    # acks stopped coming: ask for the news at once

    # ---- one handler per frame type (_HANDLERS, at the end of this module) ----

    def _on_ack_requested(self, frame: tuple, now: float) -> None:
        self._ack_now = True

    def _on_create_sequence_response(self, frame: tuple, now: float) -> None:
        if self.state is State.CONNECTING and self._ctl is not None and self._ctl.kind == "create":
            if self._ctl.retries == 0:  # Karn's rule: no sample from a resent request
                self._rtt.update(now - self._ctl.sent_at)
            self._ctl = None
            window, max_message_size = frame[2], frame[3]
            ack_delay = frame[4] if len(frame) > 4 else None
            if not 1 <= window <= 65536 or max_message_size < 1 or (
                    ack_delay is not None and ack_delay > MAX_ACK_DELAY_US):
                raise ProtocolError("CreateSequenceResponse with out-of-range window, size or ack delay")
            self._peer_handshake(window, max_message_size, ack_delay)
            self._transition(Event.HANDSHAKE_DONE)
            self._events.append(Connected())

    def _on_create_sequence(self, frame: tuple, now: float) -> None:
        if not self.is_client:  # our response was lost: send it again
            self._control_out.append(self._response_frame())
            if self.reliable_transport:
                # TCP loses nothing on a live connection: the client reconnected before
                # the handshake completed, so what we sent since was lost with the old one.
                self._resend_everything(now)

    def _on_create_sequence_refused(self, frame: tuple, now: float) -> None:
        if self.state is State.CONNECTING:
            self._fault(CreateSequenceRefused(frame[2] or "refused by the peer"), now, notify=False)
        elif self.is_client and self._only_formalities_left():
            self._end_gracefully()  # as UnknownSequence then: the server ended the session
        elif self.is_client:
            # Our Resume was refused: the server no longer holds the session (it
            # restarted, or ended it); reconnecting again would only be refused again.
            self._fault(UnknownSequence(f"the server refused to resume the session: {frame[2]}"),
                        now, notify=False)

    def _on_close_sequence(self, frame: tuple, now: float) -> None:
        last = frame[2]
        if last < self._rw.highest:
            raise ProtocolError(f"CloseSequence at {last} below message {self._rw.highest} already received")
        if self._incoming_last is not None and last != self._incoming_last:
            raise ProtocolError("CloseSequence moved the last message number")
        self._incoming_last = last
        self._receiving(ReceivingEvent.CLOSE_SEQUENCE)   # (re)send the response once complete

    def _on_close_sequence_response(self, frame: tuple, now: float) -> None:
        if self._ctl is not None and self._ctl.kind == "close":
            self._ctl = None
            self._sending(SendingEvent.CLOSE_CONFIRMED)
            self._advance_close(now)

    def _on_terminate_sequence(self, frame: tuple, now: float) -> None:
        self._control_out.append(self._codec.encode_frame(
            (F.TERMINATE_SEQUENCE_RESPONSE, self.session_id)))
        unacked = self.pending_count + self._sw.in_flight
        if unacked:
            # a fault (the state becomes FAULTED, timers stop); the peer ended already
            self._fault(SequenceTerminated(
                f"the peer terminated the session with {unacked} messages unacknowledged"),
                now, notify=False)
        elif self.state is State.CONNECTING:
            # The server created, closed and terminated the session before its response
            # reached us (reordered or lost): it is over, as a close while connecting is.
            self._ctl = None
            self._transition(Event.CLOSE)
            self._end(None)
        else:
            self._transition(Event.TERMINATED)
            self._end(None)

    def _on_terminate_sequence_response(self, frame: tuple, now: float) -> None:
        if self._ctl is not None and self._ctl.kind == "terminate":
            self._end_gracefully()

    def _on_fault(self, frame: tuple, now: float) -> None:
        if frame[2] == UnknownSequence.code and self._only_formalities_left():
            # The peer ended the session (on our Terminate, or it terminated and its
            # Terminate was lost) and a packet of ours found it gone: nothing was lost.
            self._end_gracefully()
            return
        self._fault(fault_from_code(frame[2], f"peer fault: {frame[3]}"), now, notify=False)

    def _on_resume(self, frame: tuple, now: float) -> None:
        # a wrong token is refused by the server's demultiplexer; it never harms the session
        if not self.is_client and hmac.compare_digest(frame[2], self.token):
            self.peer_resumed(now)

    def _on_resume_response(self, frame: tuple, now: float) -> None:
        pass  # the client resent everything with its Resume already

    def _on_path_challenge(self, frame: tuple, now: float) -> None:
        # The server checks that we receive at the address our packets now come from (a
        # NAT rebinding, a new network): echo it. Only a client moves, so only it answers.
        if self.is_client and not self.reliable_transport:
            self._control_out.append(self._codec.encode_frame(
                (F.PATH_RESPONSE, self.session_id, frame[2])))

    def _on_path_response(self, frame: tuple, now: float) -> None:
        pass  # the server's Demux checks it (path_validation.py); a client never challenges

    def _on_retry(self, frame: tuple, now: float) -> None:
        ctl = self._ctl
        if (self.is_client and not self.reliable_transport and self.state is State.CONNECTING
                and ctl is not None and ctl.kind == "create" and frame[2] != self._address_token):
            self._retried(ctl, frame[2], now)

    def _retried(self, ctl: _Control, address_token: bytes, now: float) -> None:
        """Client: the server wants proof that we receive at our address before it keeps any
        state: repeat CreateSequence at once, carrying its token. The first Retry is the
        normal handshake, a new request (its round trip is an RTT sample unless CreateSequence
        was resent); another (the token expired before a resent CreateSequence arrived, or our
        address changed) counts as a resend against max_retry_count, so a client and a server
        that disagree about a token cannot bounce Retries for ever."""
        if self._address_token is None:
            if ctl.retries == 0:
                self._rtt.update(now - ctl.sent_at)
            ctl.retries = 0
            ctl.sent_at = now
        else:
            if ctl.retries >= self.settings.max_retry_count:
                raise RetryLimitExceeded(
                    f"CreateSequence still answered by Retry after {ctl.retries} retransmissions")
            ctl.retries += 1
        ctl.deadline = now + min(self._rto() * 2 ** ctl.retries, MAX_RTO)
        self._address_token = address_token
        ctl.frame = self._create_frame()
        self._control_out.append(ctl.frame)

    def _check_incoming_closed(self) -> None:
        last = self._incoming_last
        if last is None or self._rw.floor <= last:
            return
        if self.receiving is Receiving.CLOSE_RECEIVED:
            self._receiving(ReceivingEvent.ALL_RECEIVED)
            self._control_out.append(self._codec.encode_frame(
                (F.CLOSE_SEQUENCE_RESPONSE, self.session_id, last)))
            self._ack_now = True
        if not self._peer_closed_reported and (self._reassembler is None or not self._reassembler.has_partial):
            self._peer_closed_reported = True
            self._events.append(PeerClosed())

    # ---- a byte stream (TCP): the packets with their length prefixes ----
    # (UDP needs nothing of its own: one datagram is one packet, receive_packet and
    # packets_to_send.)

    def receive_data(self, data: bytes, now: float) -> None:
        """TCP: bytes from the stream, de-framed into packets here."""
        if self._stream_reader is None:
            self._stream_reader = self._codec.PacketReader(
                max(self.max_packet_size, self.settings.max_message_size + 4096))
        try:
            packets = self._stream_reader.feed(data)
        except ProtocolError as exc:
            self._fault(exc, now)
            return
        if packets:
            self.receive_packets(packets, now)

    def data_to_send(self, now: float) -> bytes:
        """TCP: the length-prefixed bytes to write now."""
        frame = self._codec.frame_packet
        return b"".join([frame(p) for p in self.packets_to_send(now)])

    # ---- transport loss and resume (TCP) ----

    def resume(self, now: float) -> None:
        """Client: a new connection is up; send Resume and everything unacknowledged."""
        if self.state in FINAL_STATES:
            return
        self._control_out = []
        if self._ctl is not None:
            self._control_out.append(self._ctl.frame)
            self._ctl.deadline = now + self._rto()
        if self.state is not State.CONNECTING:
            # Resume leads the stream: the server's demux checks the token (and binds the
            # new TCP connection) on the first frame.
            self._control_out.insert(0, self._codec.encode_frame((F.RESUME, self.session_id, self.token)))
            self._resend_everything(now)
        self._last_heard = now
        self._last_answered = now

    def peer_resumed(self, now: float) -> None:
        """Server: the client re-attached on a new connection (token already checked)."""
        self._control_out = [self._codec.encode_frame((F.RESUME_RESPONSE, self.session_id))]
        if self._ctl is not None:
            self._control_out.append(self._ctl.frame)
        if self.receiving is Receiving.COMPLETE:
            self._control_out.append(self._codec.encode_frame(
                (F.CLOSE_SEQUENCE_RESPONSE, self.session_id, self._incoming_last)))
        self._resend_everything(now)

    def peer_moved(self, now: float) -> None:
        """Server, UDP: the peer answered a path challenge from a new address and the Demux
        moved the session there. What went to the old address since the peer left it proves
        nothing about the peer (it was alive, elsewhere, perhaps idle and unaware that its
        address changed): everything unacknowledged is resent now with its retry count and
        backoff started over, and so is a control frame awaiting its response. The new
        path's capacity is unknown: congestion control starts over (RFC 9000 9.4). A client
        not yet known to have our CreateSequenceResponse gets it again."""
        if self.state not in OPEN_STATES or self.reliable_transport:
            return
        if self._sw.in_flight:
            self._resend = self._sw.unacked()
            self._sw.mark_all_sent(now, reset_retries=True)
            self.messages_resent += len(self._resend)
        ctl = self._ctl
        if ctl is not None:
            ctl.retries = 0
            ctl.deadline = now + self._rto()
            if ctl.frame not in self._control_out:
                self._control_out.append(ctl.frame)
        if self._cc is not None:
            self._cc = PathModel(self.max_packet_size, self._cwnd_packets())
        if not self._peer_confirmed:
            # The client may still be connecting: its CreateSequence from the new address
            # (which earned the challenge) never reached us, so answer it now; a client that
            # has the response already ignores this one.
            self._control_out.append(self._response_frame())
        self._probes_unanswered = 0
        self._ack_now = True
        self._ask = bool(self._resend)

    def _resend_everything(self, now: float) -> None:
        self._resend = self._sw.unacked()
        self._sw.mark_all_sent(now)
        self._ack_now = True
        self._ask = bool(self._resend)

    # ---- timers ----

    def _only_formalities_left(self, peer_silent: bool = False) -> bool:
        """Our TerminateSequence is out, or the peer closed its sequence, we hold all of it
        and everything we sent is acknowledged, so nothing can be lost any more: the
        session can only end gracefully. After long silence that holds as it is; when the
        peer says it no longer knows the session, only if we too declared that we send no
        more (else it forgot us, e.g. restarted, while we might still send: a fault)."""
        if self._ctl is not None and self._ctl.kind == "terminate":
            return True
        last = self._incoming_last
        if not (self.state in OPEN_STATES and last is not None and self._rw.floor > last
                and self.all_acknowledged):
            return False
        return peer_silent or self.sending is not Sending.OPEN or self.state is State.CLOSING

    @property
    def rto(self) -> float:
        """The current base retransmission timeout in seconds (the Demux paces its path
        challenges by it)."""
        return self._rtt.rto

    def _rto(self) -> float:
        # Control frames and keepalives: the peer answers them at once.
        return self._rtt.rto

    def _data_rto(self) -> float:
        # Data: the probe timeout (RFC 9002 6.2.1). The peer may delay its ack by its
        # ack_interval (max_ack_delay), unless the last data went with an AckRequested,
        # which it answers at once.
        if self._tail_asked:
            return self._rtt.rto
        return self._rtt.rto + self.peer_ack_delay

    def _tail_probe_at(self) -> float | None:
        """When the tail probe is due (UDP, data in flight, none sent for this flight yet)."""
        rtt = self._rtt
        srtt = rtt.srtt
        if self._tail_probed or srtt is None or self.reliable_transport or not self._sw.in_flight:
            return None
        wait = max(2 * srtt, srtt + 4 * rtt.rttvar) + K_TAIL_PROBE_MARGIN
        if not self._tail_asked:
            wait += self.peer_ack_delay
        return max(self._last_data_sent, self._last_progress) + wait

    def _loss_delay(self) -> float:
        srtt = self._rtt.srtt
        return max(K_TIME_THRESHOLD * max(srtt if srtt is not None else K_INITIAL_RTT, self._latest_rtt),
                   K_GRANULARITY)

    def next_timer(self) -> float | None:
        """The earliest time handle_timer must be called; None when the session is over."""
        if self.state in FINAL_STATES:
            return None
        t = self._last_heard + self.settings.inactivity_timeout
        if self._ctl is not None:
            t = min(t, self._ctl.deadline)
        # Keepalives and acks go out only once open (handle_timer and packets_to_send skip
        # them while connecting): their deadlines would fire without effect, over and over.
        if self.state in OPEN_STATES:
            t = min(t, self._last_sent + self._keepalive_interval())
            if self._ack_deadline is not None:
                t = min(t, self._ack_deadline)
        if self._pace_next is not None and self.pending_count and self.state in OPEN_STATES:
            t = min(t, self._pace_next)
        if not self.reliable_transport and self._sw.in_flight:
            lost_at = self._sw.loss_deadline(self._loss_delay())
            if lost_at is not None and lost_at < t and self.state in OPEN_STATES:
                t = lost_at
            probe_at = self._tail_probe_at()
            if probe_at is not None and probe_at < t and self.state in OPEN_STATES:
                t = probe_at
            rto = self._data_rto()
            deadline = self._sw.next_deadline(rto, MAX_RTO)
            if deadline is not None:
                # Acks that acknowledge new messages push every timeout back (RFC 6298 5.3):
                # a receiver draining a deep queue is slow, not losing, and messages lost
                # among acknowledged ones are found by loss detection.
                deadline = max(deadline, self._last_progress + rto)
                if deadline < t:
                    t = deadline
        return t

    def _keepalive_interval(self) -> float:
        # Blocked by the peer's buffer: probe every RTO, in case the ack that reopens it was lost.
        if (self.settings.flow_control and not self.reliable_transport and self.pending_count
                and self._sw.next_number >= self._send_limit):
            return self._rto()
        # A keepalive is answered at once (it is an AckRequested). Over UDP an unanswered one
        # is repeated after an RTO, doubling up to the keepalive interval: a lost datagram,
        # or a client whose address changed and whose packets the server must first see to
        # challenge the new address (path_validation.py), then costs round trips, not a
        # whole keepalive interval. A PathChallenge is no answer: the server's Demux sends
        # it without giving the session our packet, and until our PathResponse arrives (it
        # may be lost) only another packet of ours earns another challenge.
        if (self._probes_unanswered and not self.reliable_transport
                and self._last_answered < self._probe_at):
            return min(self._rto() * 2 ** min(self._probes_unanswered - 1, 30), self._keepalive)
        return self._keepalive

    def handle_timer(self, now: float) -> None:
        """Do what is due at `now`: retransmissions, delayed acks, keepalives, timeouts."""
        if self.state in FINAL_STATES:
            return
        # Compare as next_timer() computes the deadline: (a + b) - a can round below b, and a
        # timer that fires without acting would be re-armed at the same instant (a spin).
        if now >= self._last_heard + self.settings.inactivity_timeout:
            if self._only_formalities_left(peer_silent=True):
                # As when the terminate retries run out: everything was flushed both ways and
                # the peer went away (it ended, and its Terminate or response was lost).
                self._end_gracefully()
                return
            self._fault(InactivityTimeout(
                f"nothing heard from the peer for {self.settings.inactivity_timeout} s"), now)
            return
        ctl = self._ctl
        if ctl is not None and now >= ctl.deadline:
            # Over TCP a control frame is lost only with its connection and the client's
            # resume resends it: an outage must cost delay, not the session (the inactivity
            # timeout bounds it, as it does for data, which has no retransmission timer there).
            if ctl.kind == "terminate" and ctl.retries >= min(K_TERMINATE_RETRIES, self.settings.max_retry_count):
                # Everything was flushed both ways; the peer most likely ended and its
                # response was lost (a client's socket closes with it): don't hold close().
                self._end_gracefully()
                return
            if ctl.retries >= self.settings.max_retry_count and not self.reliable_transport:
                if self._only_formalities_left(peer_silent=True):
                    # e.g. our CloseSequence unanswered after the peer ended: nothing is lost
                    self._end_gracefully()
                    return
                self._fault(RetryLimitExceeded(
                    f"no response to {ctl.kind} after {ctl.retries} retransmissions"), now)
                return
            ctl.retries += 1
            ctl.deadline = now + min(self._rto() * 2 ** ctl.retries, MAX_RTO)
            self._control_out.append(ctl.frame)
        if self._ack_deadline is not None and now >= self._ack_deadline:
            self._ack_now = True
        if self._pace_next is not None and now >= self._pace_next:
            self._pace_next = None     # packets_to_send takes what the pacer allows now
        if not self.reliable_transport and self._sw.in_flight and self.state in OPEN_STATES:
            probe_at = self._tail_probe_at()
            if probe_at is not None and now >= probe_at:
                self._tail_probed = True
                self._probe_due = True
                self._ask = True
                self.tail_probes += 1
            try:
                self._timed_out(now)
            except RetryLimitExceeded as exc:
                self._fault(exc, now)
                return
        if self.state in OPEN_STATES and now >= self._last_sent + self._keepalive_interval():
            self._control_out.append(self._ack_request)
            if self._last_answered >= self._probe_at:
                self._probes_unanswered = 0      # the last one was answered: start over
            self._probes_unanswered += 1
            self._probe_at = now

    # ---- output ----

    def packets_to_send(self, now: float) -> list[bytes]:
        """Packet bodies to send now (each at most max_packet_size unless one message alone
        is larger, TCP only). DATA fills whole packets; over UDP an ack, AckRequested and the
        close handshake's frames follow in a packet of their own (or alone when there is no
        data), so a burst is equal-sized packets ended by a shorter one: one GSO run; over
        TCP they fill the last DATA packet first."""
        frames: list[bytes] = []
        if self._control_out:
            frames.extend(self._control_out)
            self._control_out = []
        data: list[bytes] = []
        tail: list[bytes] = []
        if self.state in OPEN_STATES:
            try:
                if self._resend:
                    resend, self._resend = self._resend, []
                    resend.sort(key=_number)
                    data.extend(self._encode_runs(resend))
                data.extend(self._take_new(now))
            except TetherError as exc:
                self._fault(exc, now)
                frames.extend(data)
                frames.extend(self._control_out)
                self._control_out = []
                return self._pack(frames, now)
            data_sent = bool(data)
            self._probe_due = False
            if data_sent:
                self._last_data_sent = now
                if self._cc is not None:
                    self._cc.on_sent(sum(map(len, data)))
            if self._ask and not data_sent and self.all_acknowledged:
                self._ask = False   # (the acks came meanwhile)
            if self._ask or (data_sent and self._window_nearly_full()):
                # Otherwise the peer acknowledges after its ack_interval or every second full
                # packet: ask at once only when an ack is what we wait for (a window nearly
                # full, flush, close, a retransmission timeout).
                self._ask = False
                tail.append(self._ack_request)
                self._tail_asked = True
            elif data_sent:
                self._tail_asked = False
            self._advance_close(now)
            if self._control_out:
                tail.extend(self._control_out)
                self._control_out = []
            if self._ack_now or (self._ack_deadline is not None and (data_sent or now >= self._ack_deadline)):
                tail.append(self._ack_frame())
        if not data:
            return self._pack(frames + tail, now)
        frames.extend(data)
        if self.reliable_transport:
            # over TCP there is no GSO run to keep equal-sized: the tail rides in the last
            # data packet where it fits (one packet less for the peer to take apart)
            frames.extend(tail)
            return self._pack(frames, now)
        packets = self._pack(frames, now)
        if tail:
            packets.extend(self._pack(tail, now))
        return packets

    def _window_nearly_full(self) -> bool:
        """After a burst: nothing (or at most a quarter of a window) more may go before an
        ack arrives, or we are closing and wait for the acks to finish."""
        if self.pending_count or self.sending is not Sending.OPEN or self.state is State.CLOSING:
            return True
        sw = self._sw
        room = sw.free
        if self.settings.flow_control or self.reliable_transport:
            room = min(room, self._send_limit - sw.next_number)
        if room * 4 <= min(self.settings.max_transfer_window, self.peer_window):
            return True
        cc = self._cc
        return cc is not None and cc.available(sw.bytes_in_flight) * 4 <= cc.cwnd

    def _pack(self, frames: list[bytes], now: float) -> list[bytes]:
        if not frames:
            return []
        self._last_sent = now
        packets = self._codec.pack_frames(frames, self.max_packet_size)
        self.packets_sent += len(packets)
        return packets

    def _ack_frame(self) -> bytes:
        self._ack_now = False
        self._ack_deadline = None
        self._packets_unacked = 0
        rw = self._rw
        last = self._incoming_last
        final = last is not None and rw.floor > last
        return self._codec.encode_ack(self.session_id, rw.ack_ranges(self._max_ack_ranges),
                                      rw.buffer_remaining, final)

    def _take_new(self, now: float) -> list[bytes]:
        """Move what the windows allow from pending into the send window; its DATA frames."""
        self._pace_next = None     # set again below only if the pacer is what holds data back
        waiting = len(self._pending) - self._pending_head
        if waiting == 0 or self.state is State.CONNECTING:
            cc = self._cc
            if cc is not None and waiting == 0 and cc.available(self._sw.bytes_in_flight):
                cc.on_app_limited()
            return []
        sw = self._sw
        allowed = min(sw.free, waiting)
        # Over TCP nothing would resend what the peer's window refused (no RTO): honour it
        # even without flow_control.
        if self.settings.flow_control or self.reliable_transport:
            allowed = min(allowed, self._send_limit - sw.next_number)
            if self._cc is not None and allowed > 0:
                room = self._cc.available(sw.bytes_in_flight)
                room = self._paced(room, now)
                if self._probe_due and room < self.max_packet_size:
                    # the tail probe goes beyond both, by one packet of new data at most
                    # (RFC 8985 7.3): the messages that fit one, at least one (a pending
                    # item is never larger than a fragment)
                    allowed = min(allowed, self._fitting(self._pending_head, self.max_packet_size))
                else:
                    average = self._pending_bytes / waiting
                    allowed = min(allowed, int(room // average) if average >= 1 else allowed)
                    if allowed == 0 and room > 0:
                        allowed = 1
        if allowed <= 0:
            return []
        head = self._pending_head
        batch = self._pending[head:head + allowed]
        bytes_before = sw.bytes_in_flight
        taken = sw.push(batch, now)
        if taken < len(batch):
            batch = batch[:taken]
        first = sw.next_number - taken
        self._pending_head = head + taken
        if self._pending_head == len(self._pending):
            self._pending.clear()
            self._pending_head = 0
        elif self._pending_head > 4096 and self._pending_head * 2 > len(self._pending):
            del self._pending[:self._pending_head]
            self._pending_head = 0
        self._pending_bytes -= sw.bytes_in_flight - bytes_before
        if self._cc is not None:
            self._pace_tokens -= sw.bytes_in_flight - bytes_before
        self.messages_sent += taken
        return self._encode_batch(first, batch)

    def _fitting(self, head: int, size: int) -> int:
        """How many pending messages from `head` on fit `size` bytes (at least one)."""
        pending, count, total = self._pending, 0, 0
        for i in range(head, len(pending)):
            total += len(pending[i])
            if total > size and count:
                break
            count += 1
            if total >= size:
                break
        return count

    def _paced(self, room: int, now: float) -> int:
        """`room` (bytes the congestion window allows) cut to what the pacer allows now:
        new data goes out at 1.25 cwnd per smoothed RTT, in bursts of at most
        max(PACING_BURST_PACKETS packets, PACING_BURST_TIME of the rate), so a whole window
        is not dumped into the receiver's socket buffer at once."""
        rate = self._cc.pacing_rate(self._rtt.srtt)
        if rate is None:
            return room
        burst = max(PACING_BURST_PACKETS * self.max_packet_size, rate * PACING_BURST_TIME)
        tokens = min(burst, self._pace_tokens + (now - self._pace_at) * rate)
        self._pace_at = now
        self._pace_tokens = tokens
        if tokens >= room:
            return room
        # Send what has accrued (if a packet's worth), then wait for the next burst: not a
        # timer per packet.
        send = int(tokens) if tokens >= self.max_packet_size else 0
        self._pace_next = now + max((min(burst, room) - (tokens - send)) / rate, PACING_MIN_WAIT)
        return send

    def _encode_batch(self, first: int, payloads: list) -> list[bytes]:
        if self._fragments_queued and Fragment in set(map(type, payloads)):
            return self._encode_fragmented(first, payloads)
        return self._codec.split_data(self.session_id, first, payloads, self._max_body)

    def _encode_fragmented(self, first: int, payloads: list) -> list[bytes]:
        frames: list[bytes] = []
        run_first, run = first, []
        for i, p in enumerate(payloads):
            if type(p) is Fragment:
                if run:
                    frames.extend(self._codec.split_data(self.session_id, run_first, run, self._max_body))
                    run = []
                frames.append(self._codec.encode_data(
                    self.session_id, first + i, [p.data], 0, -1, [(0, p.index, p.total)]))
                run_first = first + i + 1
            else:
                run.append(p)
        if run:
            frames.extend(self._codec.split_data(self.session_id, run_first, run, self._max_body))
        return frames

    def _encode_runs(self, items: list) -> list[bytes]:
        """Retransmissions, (number, payload) ascending, as DATA frames of consecutive runs."""
        frames: list[bytes] = []
        run_first = -1
        run: list = []
        for number, payload in items:
            if run and number == run_first + len(run):
                run.append(payload)
                continue
            if run:
                frames.extend(self._encode_batch(run_first, run))
            run_first, run = number, [payload]
        if run:
            frames.extend(self._encode_batch(run_first, run))
        return frames

    # ---- closing, faults ----

    def _advance_close(self, now: float) -> None:
        """Take the close handshake of our sequence as far as it can go now."""
        if self.state in FINAL_STATES:
            return
        if self.sending is Sending.FLUSHING:
            if self.pending_count or self._sw.in_flight or self._resend or self._ctl is not None:
                return  # flush first
            self._sending(SendingEvent.FLUSHED)
            frame = self._codec.encode_frame(
                (F.CLOSE_SEQUENCE, self.session_id, self._sw.next_number - 1))
            self._start_control("close", frame, now)
            return
        if self.sending is Sending.CLOSED and self.state is State.CLOSING and self._ctl is None:
            self._sending(SendingEvent.TERMINATE)
            frame = self._codec.encode_frame(
                (F.TERMINATE_SEQUENCE, self.session_id, self._sw.next_number - 1))
            self._start_control("terminate", frame, now)

    def _close_sequence_asked(self) -> None:
        if self.sending is Sending.OPEN and self.state in OPEN_STATES:
            self._sending(SendingEvent.CLOSE_ASKED)

    def _sending(self, event: SendingEvent) -> None:
        self.sending = next_sending(self.sending, event)

    def _receiving(self, event: ReceivingEvent) -> None:
        self.receiving = next_receiving(self.receiving, event)

    def _start_control(self, kind: str, frame: bytes, now: float) -> None:
        self._ctl = _Control(kind, frame, now, self._rto())
        self._control_out.append(frame)

    def _fault(self, error: TetherError, now: float, notify: bool = True) -> None:
        if self.state in FINAL_STATES:
            return
        if notify:
            self._control_out.append(self._codec.encode_frame(
                (F.FAULT, self.session_id, error.code, str(error)[:512])))
        self._pending.clear()
        self._pending_head = 0
        self._resend = []
        self._ctl = None
        self._transition(Event.FAULT)
        self._end(error)

    def _end_gracefully(self) -> None:
        # nothing can be lost any more: no control frame awaits an answer, the session ends
        self._ctl = None
        self._transition(Event.TERMINATED)
        self._end(None)

    def _end(self, error: TetherError | None) -> None:
        self.error = error
        if self._delivered:
            self.messages_delivered += len(self._delivered)
            self._events.append(MessagesDelivered(self._delivered))
            self._delivered = []
        self._events.append(SessionEnded(error))

    def _transition(self, event: Event) -> None:
        self.state = next_state(self.state, event)

    def events(self) -> list:
        """Events since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    # ---- introspection ----

    @property
    def stats(self) -> dict[str, Any]:
        """Counters and estimates (Session.stats shows these)."""
        rtt = self._rtt
        return {
            "state": self.state.value,
            "sent": self.messages_sent,
            "resent": self.messages_resent,
            "acked": self.messages_acked,
            "delivered": self.messages_delivered,
            "duplicates": self._rw.duplicates,
            "refused": self._rw.refused,
            "fast_retransmits": self.fast_retransmits,
            "retransmission_timeouts": self.retransmission_timeouts,
            "tail_probes": self.tail_probes,
            "packets_sent": self.packets_sent,
            "packets_received": self.packets_received,
            "in_flight": self._sw.in_flight,
            "pending": self.pending_count,
            "window": self.settings.max_transfer_window,
            "peer_window": self.peer_window,
            "buffer_remaining": self._rw.buffer_remaining,
            "held": self._rw.held,
            "rtt": rtt.srtt,
            "rttvar": rtt.rttvar,
            "rto": self._rto(),
            "cwnd": None if self._cc is None else int(self._cc.cwnd),
        }


def _number(item: tuple) -> int:
    return item[0]


_DATA = int(F.DATA)
_PATH_CHALLENGE = int(F.PATH_CHALLENGE)
# What a client sends before it has the server's CreateSequenceResponse.
_HANDSHAKE_FRAMES = frozenset({int(F.CREATE_SEQUENCE), int(F.PATH_RESPONSE)})
# Every frame type a session acts on, and its handler (one per type; receive_frames
# dispatches through this table).
_HANDLERS = {int(kind): handler for kind, handler in {
    F.CREATE_SEQUENCE: SessionEngine._on_create_sequence,
    F.CREATE_SEQUENCE_RESPONSE: SessionEngine._on_create_sequence_response,
    F.CREATE_SEQUENCE_REFUSED: SessionEngine._on_create_sequence_refused,
    F.DATA: SessionEngine._on_data,
    F.ACK: SessionEngine._on_ack,
    F.ACK_REQUESTED: SessionEngine._on_ack_requested,
    F.CLOSE_SEQUENCE: SessionEngine._on_close_sequence,
    F.CLOSE_SEQUENCE_RESPONSE: SessionEngine._on_close_sequence_response,
    F.TERMINATE_SEQUENCE: SessionEngine._on_terminate_sequence,
    F.TERMINATE_SEQUENCE_RESPONSE: SessionEngine._on_terminate_sequence_response,
    F.FAULT: SessionEngine._on_fault,
    F.RESUME: SessionEngine._on_resume,
    F.RESUME_RESPONSE: SessionEngine._on_resume_response,
    F.RETRY: SessionEngine._on_retry,
    F.PATH_CHALLENGE: SessionEngine._on_path_challenge,
    F.PATH_RESPONSE: SessionEngine._on_path_response,
}.items()}
