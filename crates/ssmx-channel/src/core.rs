//! The sans-IO channel core (PROTOCOL.md §5): sequence numbers, acknowledgements, the reorder
//! buffer, retransmission with an RFC 6298 timer, publication control and the resend limit.
//!
//! No sockets, no sleeps, no tasks: the caller passes the clock in, feeds received frames to
//! [`Channel::handle_frame`], calls [`Channel::handle_timeout`] at [`Channel::poll_timeout`], and
//! after every call drains [`Channel::poll_transmit`] and [`Channel::poll_event`].
//!
//! ```
//! use std::time::Instant;
//! use bytes::Bytes;
//! use ssmx_channel::{Channel, ChannelConfig, Event, Role};
//! use ssmx_protocol::PayloadType;
//!
//! let now = Instant::now();
//! let mut client = Channel::new(ChannelConfig::new(Role::Client), now);
//! let mut agent = Channel::new(ChannelConfig::new(Role::Agent), now);
//! agent.send(now, PayloadType::Output, Bytes::from_static(b"$ ")).unwrap();
//! while let Some(frame) = agent.poll_transmit() {
//!     client.handle_frame(now, frame);
//! }
//! while let Some(ack) = client.poll_transmit() {
//!     agent.handle_frame(now, ack);
//! }
//! assert_eq!(agent.unacked(), 0);
//! assert!(matches!(client.poll_event(), Some(Event::Payload { sequence_number: 0, .. })));
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ssmx_protocol::payload::{from_json, Acknowledge, ChannelClosed};
use ssmx_protocol::{flags, AgentMessage, DecodeError, DecodeOptions, MessageType, PayloadType};

/// Smoothed round-trip time before the first sample (§5.5, both official ends).
pub const INITIAL_RTT: Duration = Duration::from_millis(100);
/// Retransmission timeout before the first sample (§5.5).
pub const INITIAL_RTO: Duration = Duration::from_millis(200);
/// Clock granularity G of RFC 6298 as the official ends set it (§5.5): the RTO is at least
/// RTT + 10 ms.
pub const CLOCK_GRANULARITY: Duration = Duration::from_millis(10);
/// Upper bound of the RTO (§5.5), and of the backed-off interval between resends.
pub const MAX_RTO: Duration = Duration::from_secs(1);

/// Default largest payload per stream message. The official ends read 1 KiB per message but
/// accept any size, and the real service is reported to accept 32 KiB (DESIGN.md); larger
/// messages are the main throughput lever because every message costs a header, an ack and a
/// digest. Larger sizes are used only after two ssmx ends agreed on them in the handshake.
pub const DEFAULT_MAX_PAYLOAD: usize = 32 * 1024;
/// Payload size two ssmx ends switch to once both offered it in the handshake
/// (`SsmxCapabilities.MaxPayloadSize`); official ends never see it, see the crate docs. Halves
/// the per-message cost against [`DEFAULT_MAX_PAYLOAD`] while [`SEND_WINDOW_MAX_BYTES`] keeps
/// 128 such messages in flight.
pub const SSMX_MAX_PAYLOAD: usize = 64 * 1024;
/// Default send window in messages. The official ends buffer 10 000 (client) and 100 000
/// (agent) messages, which at 32 KiB payloads would be 320 MiB and 3 GiB per session. 256
/// messages keep 8 MiB in flight at the default payload size: 80 MB/s over a 100 ms round
/// trip, far more on loopback.
pub const DEFAULT_SEND_WINDOW: usize = 256;
/// Unacknowledged payload bytes after which `send` waits, whatever the window in messages
/// says: bounds a session's send buffer to 8 MiB (plus one payload) at any payload size.
pub const SEND_WINDOW_MAX_BYTES: usize = 8 * 1024 * 1024;
/// Default reorder capacity in messages: four times an ssmx peer's window, and 1 MiB of the
/// official ends' 1 KiB messages. Messages beyond it are dropped unacknowledged and the peer
/// sends them again later, so a smaller buffer costs time, never data.
pub const DEFAULT_REORDER_CAPACITY: usize = 1024;
/// Default resend limit. Resends of one message back off exponentially up to [`MAX_RTO`], so
/// after the first few they are one second apart: 300 resends take 5 minutes, the time after
/// which the official client gives up on a silent peer (3000 resends every 100 ms, §5.5).
pub const DEFAULT_MAX_RESENDS: u32 = 300;
/// Bytes of out-of-order payloads held at most, whatever `reorder_capacity` says: a hostile or
/// broken peer could otherwise make us hold capacity × the 16 MiB decode limit.
pub const REORDER_BUFFER_MAX_BYTES: usize = 32 * 1024 * 1024;
/// Doublings of the resend interval after which it is certainly capped by [`MAX_RTO`]
/// (the RTO is at least 10 ms, and 10 ms × 2^7 > 1 s); bounds the shift.
const MAX_BACKOFF_DOUBLINGS: u32 = 7;
/// Longest byte sequence of one UTF-8 character; Output is never cut inside one (T26).
const UTF8_MAX_SEQUENCE: usize = 4;

/// Which end of the data channel this is. Decides the stream message type we send
/// (`input_stream_data` for the client, `output_stream_data` for the agent), the SYN flag at
/// sequence 0 (agent only, as the official agent), and default buffer sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The user's end.
    Client,
    /// The target host's end.
    Agent,
}

impl Role {
    /// The stream message type this end sends.
    pub fn outgoing_stream_type(self) -> MessageType {
        match self {
            Role::Client => MessageType::InputStreamData,
            Role::Agent => MessageType::OutputStreamData,
        }
    }

    /// The stream message type this end receives.
    pub fn incoming_stream_type(self) -> MessageType {
        match self {
            Role::Client => MessageType::OutputStreamData,
            Role::Agent => MessageType::InputStreamData,
        }
    }
}

/// Channel settings; `ChannelConfig::new(role)` gives defaults the official ends accept.
#[derive(Clone, Debug)]
pub struct ChannelConfig {
    /// This end's role.
    pub role: Role,
    /// Unacknowledged stream messages allowed in flight; `send` fails with `WindowFull` beyond.
    pub send_window: usize,
    /// Out-of-order messages held for reordering; more are dropped unacknowledged.
    pub reorder_capacity: usize,
    /// Largest payload per stream message; longer Output/StdErr payloads are split.
    pub max_payload: usize,
    /// Retransmissions of one message before the channel fails.
    pub max_resends: u32,
    /// Check incoming payload digests.
    pub verify_digest: bool,
}

impl ChannelConfig {
    /// Defaults for `role`: [`DEFAULT_SEND_WINDOW`], [`DEFAULT_REORDER_CAPACITY`],
    /// [`DEFAULT_MAX_PAYLOAD`], [`DEFAULT_MAX_RESENDS`], digests verified.
    pub fn new(role: Role) -> Self {
        Self {
            role,
            send_window: DEFAULT_SEND_WINDOW,
            reorder_capacity: DEFAULT_REORDER_CAPACITY,
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_resends: DEFAULT_MAX_RESENDS,
            verify_digest: true,
        }
    }
}

/// Something the application must act on.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The next in-order stream message of the peer, delivered exactly once.
    Payload {
        /// Its sequence number.
        sequence_number: i64,
        /// Its payload type.
        payload_type: PayloadType,
        /// Its payload (a slice of the received frame).
        payload: Bytes,
    },
    /// The service closed the channel.
    Closed(ChannelClosed),
    /// `pause_publication` received: the peer is away; sending is held back.
    Paused,
    /// `start_publication` received.
    Resumed,
    /// A non-stream message other than acks and publication control (e.g. `agent_session_state`).
    Message(AgentMessage),
    /// A frame that failed to decode; it was dropped and nothing else changed.
    Rejected(DecodeError),
    /// The channel cannot go on.
    Failed(ChannelError),
}

/// Why the channel failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// A message was retransmitted `max_resends` times without an ack.
    #[error("peer stopped acknowledging: sequence {sequence_number} resent {resends} times")]
    ResendLimit {
        /// The stuck message.
        sequence_number: i64,
        /// How often it was resent.
        resends: u32,
    },
    /// The channel was closed locally.
    #[error("channel closed")]
    Closed,
}

/// Why `send` refused a payload. Nothing was queued.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The send window is full; retry after acks arrive.
    #[error("send window full")]
    WindowFull,
    /// The channel is closed or failed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
}

/// Life cycle of a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Open,
    /// Closed by the service (`channel_closed`) or locally.
    Closed,
    Failed(ChannelError),
}

/// One stream message we sent (or hold while paused) and the peer has not acknowledged.
struct Outgoing {
    /// The encoded frame, resent verbatim (§5.1).
    frame: Bytes,
    /// Length of its payload.
    payload_len: usize,
    /// When it was last queued for transmission; `None` while held back by a pause.
    last_sent: Option<Instant>,
    /// Retransmissions so far (timer expiries and reconnects).
    resends: u32,
    /// A copy waits in the transmit queue; no second copy is queued.
    queued: bool,
}

/// A frame waiting for [`Channel::poll_transmit`].
struct Transmit {
    frame: Bytes,
    /// The stream sequence number, for stream messages (dropped if acknowledged meanwhile).
    stream_seq: Option<i64>,
}

/// An out-of-order stream message waiting for its predecessors.
struct Buffered {
    payload_type: PayloadType,
    payload: Bytes,
}

/// RTT estimator and retransmission timeout of §5.5 (RFC 6298 with the official constants).
#[derive(Clone, Copy, Debug)]
struct RttEstimator {
    rtt: Duration,
    rttvar: Duration,
    rto: Duration,
}

impl RttEstimator {
    fn new() -> Self {
        Self {
            rtt: INITIAL_RTT,
            rttvar: Duration::ZERO,
            rto: INITIAL_RTO,
        }
    }

    /// Folds in one round-trip sample `r`.
    fn sample(&mut self, r: Duration) {
        let deviation = self.rtt.abs_diff(r);
        self.rttvar = self.rttvar * 3 / 4 + deviation / 4;
        self.rtt = self.rtt * 7 / 8 + r / 8;
        self.rto = (self.rtt + CLOCK_GRANULARITY.max(self.rttvar * 4)).min(MAX_RTO);
    }
}

/// The channel state machine.
pub struct Channel {
    config: ChannelConfig,
    decode_options: DecodeOptions,
    state: State,
    /// `pause_publication` received and not yet lifted (§5.7).
    paused: bool,
    /// Sequence number of the next stream message we send.
    next_seq: i64,
    /// Unacknowledged stream messages by sequence number; the first is the head (§5.5).
    unacked: BTreeMap<i64, Outgoing>,
    /// Sum of their payload lengths.
    unacked_bytes: usize,
    rtt: RttEstimator,
    /// Resends of the head since the last RTT sample; doubles the resend interval.
    backoff: u32,
    transmit: VecDeque<Transmit>,
    /// Sequence number of the next stream message we deliver.
    expected_seq: i64,
    reorder: BTreeMap<i64, Buffered>,
    reorder_bytes: usize,
    events: VecDeque<Event>,
    /// New stream data is taken (see [`Channel::set_receive_window`]).
    receive_window_open: bool,
}

impl Channel {
    /// A fresh channel at sequence 0. Zero window, capacity or payload sizes are raised to 1.
    pub fn new(mut config: ChannelConfig, _now: Instant) -> Self {
        config.send_window = config.send_window.max(1);
        config.max_payload = config.max_payload.max(1);
        let decode_options = DecodeOptions {
            verify_digest: config.verify_digest,
            ..DecodeOptions::default()
        };
        Self {
            config,
            decode_options,
            state: State::Open,
            paused: false,
            next_seq: 0,
            unacked: BTreeMap::new(),
            unacked_bytes: 0,
            rtt: RttEstimator::new(),
            backoff: 0,
            transmit: VecDeque::new(),
            expected_seq: 0,
            reorder: BTreeMap::new(),
            reorder_bytes: 0,
            events: VecDeque::new(),
            receive_window_open: true,
        }
    }

    /// Current retransmission timeout: the §5.5 estimate, without the back-off applied while
    /// the head is being resent.
    pub fn rto(&self) -> Duration {
        self.rtt.rto
    }
    /// Stream messages sent and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }
    /// True when `send` would accept a payload: the channel is open, fewer than `send_window`
    /// messages and [`SEND_WINDOW_MAX_BYTES`] are unacknowledged.
    pub fn can_send(&self) -> bool {
        self.state == State::Open
            && self.unacked.len() < self.config.send_window
            && self.unacked_bytes < SEND_WINDOW_MAX_BYTES
    }
    /// The settings in force.
    pub fn config(&self) -> &ChannelConfig {
        &self.config
    }
    /// True until the channel is closed (by the service or locally) or has failed.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }
    /// True while `pause_publication` holds our stream messages back.
    pub fn is_paused(&self) -> bool {
        self.paused
    }
    /// True while frames wait for `poll_transmit`.
    pub fn has_pending_transmit(&self) -> bool {
        !self.transmit.is_empty()
    }
    /// Sequence number the next stream message we send will carry.
    pub fn next_sequence_number(&self) -> i64 {
        self.next_seq
    }
    /// Sequence number of the next stream message we will deliver.
    pub fn expected_sequence_number(&self) -> i64 {
        self.expected_seq
    }

    /// Handles one received frame (binary or text WebSocket message).
    pub fn handle_frame(&mut self, now: Instant, frame: Bytes) {
        if !self.is_open() {
            tracing::debug!(len = frame.len(), "frame after the channel ended ignored");
            return;
        }
        let msg = match AgentMessage::decode_with(frame, &self.decode_options) {
            Ok(msg) => msg,
            Err(err) => {
                tracing::warn!(%err, "undecodable frame dropped");
                self.events.push_back(Event::Rejected(err));
                return;
            }
        };
        match &msg.message_type {
            t if *t == self.config.role.incoming_stream_type() => self.receive_stream(now, msg),
            MessageType::Acknowledge => self.receive_ack(now, &msg),
            MessageType::ChannelClosed => self.receive_channel_closed(&msg),
            MessageType::PausePublication => self.pause(),
            MessageType::StartPublication => self.resume(now),
            _ => self.events.push_back(Event::Message(msg)),
        }
    }

    /// Opens or closes the receive window. While it is closed, new stream messages are dropped
    /// unacknowledged (the peer sends them again at its RTO); acknowledgements, duplicates and
    /// control messages are still handled. The driver closes it while the application is behind,
    /// so it can keep reading acks without buffering without bound.
    pub fn set_receive_window(&mut self, open: bool) {
        self.receive_window_open = open;
    }

    /// Handles the clock reaching a deadline from `poll_timeout`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.is_open() || self.paused {
            return;
        }
        let interval = self.resend_interval();
        let Some(mut head) = self.unacked.first_entry() else {
            return;
        };
        let Some(last_sent) = head.get().last_sent else {
            return;
        };
        if now < last_sent + interval {
            return;
        }
        let seq = *head.key();
        let entry = head.get_mut();
        if entry.resends >= self.config.max_resends {
            let err = ChannelError::ResendLimit {
                sequence_number: seq,
                resends: entry.resends,
            };
            tracing::warn!(%err, "giving up on the peer");
            self.fail(err);
            return;
        }
        entry.resends += 1;
        tracing::debug!(
            seq,
            resends = entry.resends,
            ?interval,
            "resending the head"
        );
        self.backoff = (self.backoff + 1).min(MAX_BACKOFF_DOUBLINGS);
        self.queue_stream(seq, now);
    }

    /// The transport was replaced (reconnect): everything unacknowledged is sent again.
    pub fn handle_reconnect(&mut self, now: Instant) {
        if !self.is_open() {
            return;
        }
        // Stream frames still queued for the old transport are superseded by the resends.
        self.transmit.retain(|t| t.stream_seq.is_none());
        if self.paused {
            // The official agent unpauses on a successful reconnect (§5.7).
            self.paused = false;
            self.events.push_back(Event::Resumed);
        }
        for (&seq, entry) in self.unacked.iter_mut() {
            if entry.last_sent.is_some() {
                entry.resends += 1;
            }
            entry.last_sent = Some(now);
            entry.queued = true;
            self.transmit.push_back(Transmit {
                frame: entry.frame.clone(),
                stream_seq: Some(seq),
            });
        }
        self.backoff = 0;
    }

    /// Queues a stream message (split if longer than `max_payload`); returns its first sequence
    /// number.
    ///
    /// Only Output and StdErr payloads are split, never inside a UTF-8 sequence when a cut at a
    /// character boundary is possible (as the official agent, T26); callers that encrypt must
    /// therefore encrypt chunks of at most `max_payload` bytes themselves. An empty payload is
    /// not sent (the official agent cannot take one, §3.8) and returns the number the next
    /// message will carry. A payload is accepted whenever [`Channel::can_send`] is true, so the
    /// chunks of one payload may take the window up to one payload beyond its bounds.
    pub fn send(
        &mut self,
        now: Instant,
        payload_type: PayloadType,
        payload: Bytes,
    ) -> Result<i64, SendError> {
        self.check_open()?;
        let first = self.next_seq;
        if payload.is_empty() {
            return Ok(first);
        }
        if !self.can_send() {
            return Err(SendError::WindowFull);
        }
        let splittable = matches!(payload_type, PayloadType::Output | PayloadType::StdErr);
        let mut rest = payload;
        while !rest.is_empty() {
            let cut = if splittable {
                split_point(&rest, self.config.max_payload)
            } else {
                rest.len()
            };
            let chunk = rest.split_to(cut);
            self.push_stream(now, payload_type, chunk);
        }
        Ok(first)
    }

    /// Queues a non-stream message (e.g. `agent_session_state`), sent once, never retransmitted.
    pub fn send_message(&mut self, msg: AgentMessage) {
        if !self.is_open() {
            tracing::debug!(message_type = %msg.message_type, "message after the channel ended not sent");
            return;
        }
        self.transmit.push_back(Transmit {
            frame: msg.to_bytes(),
            stream_seq: None,
        });
    }

    /// Changes the largest payload per stream message (after two ssmx ends agreed on it); at
    /// least 1. Messages already queued keep their size.
    pub fn set_max_payload(&mut self, max_payload: usize) {
        self.config.max_payload = max_payload.max(1);
    }

    /// Closes the channel locally: no more sends, receives or resends. Frames already queued
    /// (acks, first transmissions) can still be drained with `poll_transmit`.
    pub fn close(&mut self) {
        if self.is_open() {
            self.state = State::Closed;
        }
    }

    /// The next frame to write to the transport.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        while let Some(t) = self.transmit.pop_front() {
            if let Some(seq) = t.stream_seq {
                match self.unacked.get_mut(&seq) {
                    Some(entry) => entry.queued = false,
                    // Acknowledged while waiting: the copy is no longer needed.
                    None => continue,
                }
            }
            return Some(t.frame);
        }
        None
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.is_open() || self.paused {
            return None;
        }
        let (_, head) = self.unacked.first_key_value()?;
        Some(head.last_sent? + self.resend_interval())
    }

    /// The next application event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn check_open(&self) -> Result<(), ChannelError> {
        match &self.state {
            State::Open => Ok(()),
            State::Closed => Err(ChannelError::Closed),
            State::Failed(err) => Err(err.clone()),
        }
    }

    /// The RTO doubled once per resend of the head since the last RTT sample, capped at [`MAX_RTO`]
    /// (RFC 6298 §5.5; the official ends resend at a constant RTO instead).
    fn resend_interval(&self) -> Duration {
        (self.rtt.rto * (1 << self.backoff)).min(MAX_RTO)
    }

    fn push_stream(&mut self, now: Instant, payload_type: PayloadType, payload: Bytes) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut msg = AgentMessage::new(
            self.config.role.outgoing_stream_type(),
            payload_type,
            payload,
        );
        msg.sequence_number = seq;
        if self.config.role == Role::Agent && seq == 0 {
            msg.flags = flags::SYN;
        }
        self.unacked_bytes += msg.payload.len();
        self.unacked.insert(
            seq,
            Outgoing {
                frame: msg.to_bytes(),
                payload_len: msg.payload.len(),
                last_sent: None,
                resends: 0,
                queued: false,
            },
        );
        if !self.paused {
            self.queue_stream(seq, now);
        }
    }

    /// Marks the stream message `seq` as sent at `now` and queues its frame unless a copy is
    /// already waiting.
    fn queue_stream(&mut self, seq: i64, now: Instant) {
        let Some(entry) = self.unacked.get_mut(&seq) else {
            return;
        };
        entry.last_sent = Some(now);
        if !entry.queued {
            entry.queued = true;
            self.transmit.push_back(Transmit {
                frame: entry.frame.clone(),
                stream_seq: Some(seq),
            });
        }
    }

    fn receive_stream(&mut self, now: Instant, msg: AgentMessage) {
        self.resume(now);
        let seq = msg.sequence_number;
        if seq < self.expected_seq {
            // Our ack was lost: acknowledge again, or the peer resends it forever (T10).
            tracing::trace!(seq, "duplicate stream message acknowledged again");
            self.queue_ack(&msg);
        } else if !self.receive_window_open {
            tracing::trace!(seq, "receive window closed: dropped unacknowledged");
        } else if seq == self.expected_seq {
            self.queue_ack(&msg);
            self.deliver(seq, msg.payload_type, msg.payload);
            self.drain_reorder_buffer();
        } else if self.reorder.contains_key(&seq) {
            self.queue_ack(&msg);
        } else if self.reorder.len() >= self.config.reorder_capacity
            || self.reorder_bytes + msg.payload.len() > REORDER_BUFFER_MAX_BYTES
        {
            tracing::debug!(
                seq,
                expected = self.expected_seq,
                "reorder buffer full: dropped unacknowledged"
            );
        } else {
            self.queue_ack(&msg);
            self.reorder_bytes += msg.payload.len();
            self.reorder.insert(
                seq,
                Buffered {
                    payload_type: msg.payload_type,
                    payload: msg.payload,
                },
            );
        }
    }

    fn deliver(&mut self, seq: i64, payload_type: PayloadType, payload: Bytes) {
        self.expected_seq = seq + 1;
        self.events.push_back(Event::Payload {
            sequence_number: seq,
            payload_type,
            payload,
        });
    }

    fn drain_reorder_buffer(&mut self) {
        while let Some(buffered) = self.reorder.remove(&self.expected_seq) {
            self.reorder_bytes -= buffered.payload.len();
            self.deliver(self.expected_seq, buffered.payload_type, buffered.payload);
        }
    }

    fn queue_ack(&mut self, msg: &AgentMessage) {
        self.transmit.push_back(Transmit {
            frame: Acknowledge::of(msg).to_message().to_bytes(),
            stream_seq: None,
        });
    }

    fn receive_ack(&mut self, now: Instant, msg: &AgentMessage) {
        let ack: Acknowledge = match from_json("acknowledge", &msg.payload) {
            Ok(ack) => ack,
            Err(err) => {
                tracing::warn!(%err, "malformed acknowledge dropped");
                return;
            }
        };
        self.resume(now);
        let Some(entry) = self.unacked.remove(&ack.sequence_number) else {
            tracing::trace!(
                seq = ack.sequence_number,
                "ack matches nothing unacknowledged"
            );
            return;
        };
        self.unacked_bytes -= entry.payload_len;
        // Karn's algorithm: an ack of a resent message cannot tell which copy it answers, so
        // it gives no sample, and the backed-off interval stays until one that does (RFC 6298
        // §5.7); otherwise a path slower than the RTO would never be learnt.
        if entry.resends == 0 {
            if let Some(sent) = entry.last_sent {
                self.rtt.sample(now.saturating_duration_since(sent));
                self.backoff = 0;
            }
        }
    }

    fn receive_channel_closed(&mut self, msg: &AgentMessage) {
        let closed =
            from_json::<ChannelClosed>("channel_closed", &msg.payload).unwrap_or_else(|err| {
                tracing::warn!(%err, "channel_closed with a malformed payload; closing anyway");
                ChannelClosed {
                    message_id: msg.message_id.hyphenated().to_string(),
                    created_date: String::new(),
                    destination_id: String::new(),
                    session_id: String::new(),
                    message_type: MessageType::ChannelClosed.as_str().to_owned(),
                    schema_version: 1,
                    output: String::new(),
                }
            });
        self.state = State::Closed;
        self.transmit.clear();
        self.events.push_back(Event::Closed(closed));
    }

    fn pause(&mut self) {
        if !self.paused {
            tracing::debug!("publication paused");
            self.paused = true;
            self.events.push_back(Event::Paused);
        }
    }

    /// Lifts a pause: held messages go out in order, resends resume.
    fn resume(&mut self, now: Instant) {
        if !self.paused {
            return;
        }
        tracing::debug!("publication resumed");
        self.paused = false;
        self.events.push_back(Event::Resumed);
        let held: Vec<i64> = self
            .unacked
            .iter()
            .filter(|(_, entry)| entry.last_sent.is_none())
            .map(|(&seq, _)| seq)
            .collect();
        for seq in held {
            self.queue_stream(seq, now);
        }
    }

    fn fail(&mut self, err: ChannelError) {
        self.state = State::Failed(err.clone());
        self.transmit.clear();
        self.events.push_back(Event::Failed(err));
    }
}

/// Where to cut `payload` so the first part is at most `max` bytes: at `max`, moved back to the
/// start of a UTF-8 sequence that would otherwise be cut, if that leaves a non-empty first part.
fn split_point(payload: &[u8], max: usize) -> usize {
    if payload.len() <= max {
        return payload.len();
    }
    let is_continuation = |b: u8| b & 0xC0 == 0x80;
    if !is_continuation(payload[max]) {
        return max;
    }
    let earliest = max.saturating_sub(UTF8_MAX_SEQUENCE - 1);
    let lead = (earliest..max)
        .rev()
        .find(|&i| !is_continuation(payload[i]));
    match lead {
        Some(start) if start > 0 && start + utf8_sequence_len(payload[start]) > max => start,
        _ => max,
    }
}

/// Length of the UTF-8 sequence a lead byte announces (1 for ASCII and invalid leads).
fn utf8_sequence_len(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn drain_transmit(ch: &mut Channel) -> Vec<AgentMessage> {
        std::iter::from_fn(|| ch.poll_transmit())
            .map(|f| AgentMessage::decode(f).unwrap())
            .collect()
    }

    fn drain_events(ch: &mut Channel) -> Vec<Event> {
        std::iter::from_fn(|| ch.poll_event()).collect()
    }

    fn stream_frame(role: Role, seq: i64, payload: &'static [u8]) -> AgentMessage {
        let mut msg = AgentMessage::new(
            role.outgoing_stream_type(),
            PayloadType::Output,
            Bytes::from_static(payload),
        );
        msg.sequence_number = seq;
        msg
    }

    fn ack_frame(seq: i64) -> Bytes {
        let mut acked = stream_frame(Role::Client, seq, b"x");
        acked.sequence_number = seq;
        Acknowledge::of(&acked).to_message().to_bytes()
    }

    fn acked_seqs(frames: &[AgentMessage]) -> Vec<i64> {
        frames
            .iter()
            .map(|m| {
                assert_eq!(m.message_type, MessageType::Acknowledge);
                let ack: Acknowledge = from_json("ack", &m.payload).unwrap();
                ack.sequence_number
            })
            .collect()
    }

    #[test]
    fn client_numbers_from_zero_without_flags() {
        let now = t0();
        let mut ch = Channel::new(ChannelConfig::new(Role::Client), now);
        assert_eq!(
            ch.send(now, PayloadType::Size, Bytes::from_static(b"{}")),
            Ok(0)
        );
        assert_eq!(
            ch.send(now, PayloadType::Output, Bytes::from_static(b"ls")),
            Ok(1)
        );
        let sent = drain_transmit(&mut ch);
        assert_eq!(sent.len(), 2);
        for (i, m) in sent.iter().enumerate() {
            assert_eq!(m.message_type, MessageType::InputStreamData);
            assert_eq!(m.sequence_number, i as i64);
            assert_eq!(m.flags, 0);
            assert_eq!(m.schema_version, 1);
        }
    }

    #[test]
    fn agent_sets_syn_on_sequence_zero_only() {
        let now = t0();
        let mut ch = Channel::new(ChannelConfig::new(Role::Agent), now);
        ch.send(now, PayloadType::Output, Bytes::from_static(b"a"))
            .unwrap();
        ch.send(now, PayloadType::Output, Bytes::from_static(b"b"))
            .unwrap();
        let sent = drain_transmit(&mut ch);
        assert_eq!(sent[0].message_type, MessageType::OutputStreamData);
        assert_eq!((sent[0].flags, sent[1].flags), (flags::SYN, 0));
    }

    #[test]
    fn empty_send_is_a_no_op() {
        let now = t0();
        let mut ch = Channel::new(ChannelConfig::new(Role::Client), now);
        assert_eq!(ch.send(now, PayloadType::Output, Bytes::new()), Ok(0));
        assert_eq!(ch.unacked(), 0);
        assert!(ch.poll_transmit().is_none());
    }

    #[test]
    fn output_is_split_other_types_are_not() {
        let now = t0();
        let mut config = ChannelConfig::new(Role::Agent);
        config.max_payload = 4;
        let mut ch = Channel::new(config, now);
        assert_eq!(
            ch.send(now, PayloadType::StdErr, Bytes::from_static(b"0123456789")),
            Ok(0)
        );
        assert_eq!(
            ch.send(
                now,
                PayloadType::ExitCode,
                Bytes::from_static(b"EXIT_CODE: 3")
            ),
            Ok(3)
        );
        let payloads: Vec<_> = drain_transmit(&mut ch)
            .into_iter()
            .map(|m| (m.payload_type, m.payload))
            .collect();
        assert_eq!(
            payloads,
            vec![
                (PayloadType::StdErr, Bytes::from_static(b"0123")),
                (PayloadType::StdErr, Bytes::from_static(b"4567")),
                (PayloadType::StdErr, Bytes::from_static(b"89")),
                (PayloadType::ExitCode, Bytes::from_static(b"EXIT_CODE: 3")),
            ]
        );
    }

    #[test]
    fn split_keeps_utf8_sequences_whole() {
        // "aé€" = 61 | c3 a9 | e2 82 ac
        let text = "aé€".as_bytes();
        assert_eq!(split_point(text, 2), 1);
        assert_eq!(split_point(text, 3), 3);
        assert_eq!(split_point(text, 4), 3);
        assert_eq!(split_point(text, 5), 3);
        // A cut that would leave nothing, or stray continuation bytes, stays at max.
        assert_eq!(split_point("€".as_bytes(), 1), 1);
        assert_eq!(split_point(&[0x80, 0x80, 0x80, 0x80, 0x80], 2), 2);
    }

    #[test]
    fn window_full_refuses_without_queueing() {
        let now = t0();
        let mut config = ChannelConfig::new(Role::Client);
        config.send_window = 2;
        let mut ch = Channel::new(config, now);
        ch.send(now, PayloadType::Output, Bytes::from_static(b"a"))
            .unwrap();
        ch.send(now, PayloadType::Output, Bytes::from_static(b"b"))
            .unwrap();
        assert!(!ch.can_send());
        assert_eq!(
            ch.send(now, PayloadType::Output, Bytes::from_static(b"c")),
            Err(SendError::WindowFull)
        );
        assert_eq!(ch.next_sequence_number(), 2);
        ch.handle_frame(now, ack_frame(0));
        assert!(ch.can_send());
        assert_eq!(
            ch.send(now, PayloadType::Output, Bytes::from_static(b"c")),
            Ok(2)
        );
    }

    #[test]
    fn window_is_bounded_in_bytes_too() {
        let now = t0();
        let mut ch = Channel::new(ChannelConfig::new(Role::Agent), now);
        ch.set_max_payload(SEND_WINDOW_MAX_BYTES);
        let half = Bytes::from(vec![0u8; SEND_WINDOW_MAX_BYTES / 2]);
        assert_eq!(ch.send(now, PayloadType::Output, half.clone()), Ok(0));
        assert_eq!(ch.send(now, PayloadType::Output, half.clone()), Ok(1));
        assert!(!ch.can_send());
        assert_eq!(
            ch.send(now, PayloadType::Output, half.clone()),
            Err(SendError::WindowFull)
        );
        ch.handle_frame(now, ack_frame(0));
        assert_eq!(ch.send(now, PayloadType::Output, half), Ok(2));
    }

    #[test]
    fn ack_samples_rtt_and_removes_the_entry() {
        let now = t0();
        let mut ch = Channel::new(ChannelConfig::new(Role::Client), now);
        ch.send(now, PayloadType::Output, Bytes::from_static(b"a"))
            .unwrap();
        ch.handle_frame(now + ms(20), ack_frame(0));
        assert_eq!(ch.unacked(), 0);
        // RTTVAR = 0.75·0 + 0.25·|100 − 20| = 20; RTT = 0.875·100 + 0.125·20 = 90;
        // RTO = 90 + max(10, 80) = 170 ms.
        assert_eq!(ch.rto(), ms(170));
        // An ack for nothing changes nothing.
        ch.handle_frame(now + ms(30), ack_frame(7));
        assert_eq!(ch.rto(), ms(170));
    }

    #[test]
    fn rto_is_capped_at_one_second() {
        let mut est = RttEstimator::new();
        est.sample(Duration::from_secs(5));
        assert_eq!(est.rto, MAX_RTO);
        let mut est = RttEstimator::new();
        for _ in 0..200 {
            est.sample(ms(1));
        }
        assert!(est.rto >= ms(1) + CLOCK_GRANULARITY);
        assert!(est.rto < ms(12));
    }

    #[test]
    fn only_the_head_is_resent_with_backoff_and_karn() {
        let now = t0();
        let mut ch = Channel::new(ChannelConfig::new(Role::Client), now);
        ch.send(now, PayloadType::Output, Bytes::from_static(b"a"))
            .unwrap();
        ch.send(now, PayloadType::Output, Bytes::from_static(b"b"))
            .unwrap();
        let first = drain_transmit(&mut ch);
        assert_eq!(ch.poll_timeout(), Some(now + INITIAL_RTO));
        ch.handle_timeout(now + ms(199));
        assert!(ch.poll_transmit().is_none());
        ch.handle_timeout(now + ms(200));
        let resent = drain_transmit(&mut ch);
        assert_eq!(
            resent,
            vec![first[0].clone()],
            "head resent verbatim, alone"
        );
        // Backed off: next resend after 2 × RTO.
        assert_eq!(ch.poll_timeout(), Some(now + ms(200) + ms(400)));
        // The ack of the resent head gives no RTT sample (Karn) and keeps the back-off.
        ch.handle_frame(now + ms(250), ack_frame(0));
        assert_eq!(ch.rto(), INITIAL_RTO);
        assert_eq!(ch.poll_timeout(), Some(now + 2 * INITIAL_RTO));
        ch.handle_timeout(now + 2 * INITIAL_RTO);
        assert_eq!(drain_transmit(&mut ch), vec![first[1].clone()]);
        // A sample from a message sent once resets it.
        ch.send(now + ms(500), PayloadType::Output, Bytes::from_static(b"c"))
            .unwrap();
        ch.handle_frame(now + ms(520), ack_frame(2));
        assert_ne!(ch.rto(), INITIAL_RTO);
        assert_eq!(ch.poll_timeout(), Some(now + 2 * INITIAL_RTO + ch.rto()));
    }

    #[test]
    fn resend_limit_fails_the_channel() {
        let now = t0();
        let mut config = ChannelConfig::new(Role::Agent);
        config.max_resends = 3;
        let mut ch = Channel::new(config, now);
        ch.send(now, PayloadType::Output, Bytes::from_static(b"a"))
            .unwrap();
        drain_transmit(&mut ch);
        let mut resends = 0;
        while let Some(deadline) = ch.poll_timeout() {
            ch.handle_timeout(deadline);
            resends += drain_transmit(&mut ch).len();
        }
        assert_eq!(resends, 3);
        assert_eq!(
            drain_events(&mut ch),
            vec![Event::Failed(ChannelError::ResendLimit {
                sequence_number: 0,
                resends: 3
            })]
        );
        assert_eq!(
            ch.send(now, PayloadType::Output, Bytes::from_static(b"b")),
            Err(SendError::Channel(ChannelError::ResendLimit {
                sequence_number: 0,
                resends: 3
            }))
        );
    }

    #[test]
    fn in_order_delivery_with_reordering_and_duplicates() {
        let now = t0();
        let mut ch = Channel::new(ChannelConfig::new(Role::Client), now);
        let m0 = stream_frame(Role::Agent, 0, b"zero");
        let m1 = stream_frame(Role::Agent, 1, b"one");
        let m2 = stream_frame(Role::Agent, 2, b"two");
        for m in [&m2, &m1, &m2, &m0, &m1] {
            ch.handle_frame(now, m.to_bytes());
        }
        // Every arrival is acknowledged: out-of-order on arrival, duplicates again.
        assert_eq!(acked_seqs(&drain_transmit(&mut ch)), vec![2, 1, 2, 0, 1]);
        let delivered: Vec<_> = drain_events(&mut ch)
            .into_iter()
            .map(|e| match e {
                Event::Payload {
                    sequence_number,
                    payload,
                    ..
                } => (sequence_number, payload),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            delivered,
            vec![
                (0, Bytes::from_static(b"zero")),
                (1, Bytes::from_static(b"one")),
                (2, Bytes::from_static(b"two")),
            ]
        );
    }

    #[test]
    fn ack_copies_type_id_and_sequence() {
        let now = t0();
        let mut ch = Channel::new(ChannelConfig::new(Role::Agent), now);
        let m = stream_frame(Role::Client, 0, b"ls\r");
        ch.handle_frame(now, m.to_bytes());
        let ack = drain_transmit(&mut ch).remove(0);
        assert_eq!((ack.sequence_number, ack.flags), (0, flags::SYN_FIN));
        assert_eq!(ack.payload_type, PayloadType::Undefined);
        assert_eq!(ack.payload, Acknowledge::of(&m).to_message().payload);
    }

    #[test]
    fn reorder_buffer_beyond_capacity_drops_without_ack() {
        let now = t0();
        let mut config = ChannelConfig::new(Role::Client);
        config.reorder_capacity = 1;
        let mut ch = Channel::new(config, now);
        ch.handle_frame(now, stream_frame(Role::Agent, 1, b"b").to_bytes());
        ch.handle_frame(now, stream_frame(Role::Agent, 2, b"c").to_bytes());
        assert_eq!(acked_seqs(&drain_transmit(&mut ch)), vec![1]);
        ch.handle_frame(now, stream_frame(Role::Agent, 0, b"a").to_bytes());
        ch.handle_frame(now, stream_frame(Role::Agent, 2, b"c").to_bytes());
        assert_eq!(acked_seqs(&drain_transmit(&mut ch)), vec![0, 2]);
        assert_eq!(drain_events(&mut ch).len(), 3);
        assert_eq!(ch.expected_sequence_number(), 3);
    }

    #[test]
    fn rejected_frames_change_nothing() {
        let now = t0();
        let mut ch = Channel::new(ChannelConfig::new(Role::Client), now);
        let mut bad = stream_frame(Role::Agent, 0, b"data").to_bytes().to_vec();
        bad[120] ^= 1;
        ch.handle_frame(now, Bytes::from(bad));
        ch.handle_frame(now, Bytes::from_static(b"short"));
        let events = drain_events(&mut ch);
        assert_eq!(
            events,
            vec![
                Event::Rejected(DecodeError::DigestMismatch),
                Event::Rejected(DecodeError::Truncated { len: 5 }),
            ]
        );
        assert!(ch.poll_transmit().is_none());
        assert_eq!(ch.expected_sequence_number(), 0);
    }

    #[test]
    fn digest_check_can_be_disabled() {
        let now = t0();
        let mut config = ChannelConfig::new(Role::Agent);
        config.verify_digest = false;
        let mut ch = Channel::new(config, now);
        let mut frame = stream_frame(Role::Client, 0, b"data").to_bytes().to_vec();
        frame[120] ^= 1;
        ch.handle_frame(now, Bytes::from(frame));
        assert!(matches!(ch.poll_event(), Some(Event::Payload { .. })));
    }

    #[test]
    fn pause_holds_sends_and_resends_until_resumed() {
        let now = t0();
        let mut ch = Channel::new(ChannelConfig::new(Role::Agent), now);
        ch.send(now, PayloadType::Output, Bytes::from_static(b"a"))
            .unwrap();
        drain_transmit(&mut ch);
        let pause = AgentMessage::new(
            MessageType::PausePublication,
            PayloadType::Undefined,
            Bytes::new(),
        );
        ch.handle_frame(now, pause.to_bytes());
        assert!(ch.is_paused());
        ch.send(now, PayloadType::Output, Bytes::from_static(b"b"))
            .unwrap();
        assert_eq!(ch.poll_timeout(), None);
        ch.handle_timeout(now + Duration::from_secs(10));
        assert!(ch.poll_transmit().is_none(), "nothing leaves while paused");
        let start = AgentMessage::new(
            MessageType::StartPublication,
            PayloadType::Undefined,
            Bytes::new(),
        );
        ch.handle_frame(now + Duration::from_secs(10), start.to_bytes());
        assert_eq!(drain_events(&mut ch), vec![Event::Paused, Event::Resumed]);
        let sent = drain_transmit(&mut ch);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].payload, Bytes::from_static(b"b"));
        // The head, overdue since before the pause, is resent at the next timeout.
        ch.handle_timeout(now + Duration::from_secs(10));
        assert_eq!(drain_transmit(&mut ch)[0].payload, Bytes::from_static(b"a"));
    }

    #[test]
    fn an_ack_lifts_a_pause() {
        let now = t0();
        let mut ch = Channel::new(ChannelConfig::new(Role::Agent), now);
        ch.send(now, PayloadType::Output, Bytes::from_static(b"a"))
            .unwrap();
        drain_transmit(&mut ch);
        let pause = AgentMessage::new(
            MessageType::PausePublication,
            PayloadType::Undefined,
            Bytes::new(),
        );
        ch.handle_frame(now, pause.to_bytes());
        ch.handle_frame(now, ack_frame(0));
        assert!(!ch.is_paused());
        assert_eq!(drain_events(&mut ch), vec![Event::Paused, Event::Resumed]);
    }

    #[test]
    fn reconnect_resends_everything_unacked_once() {
        let now = t0();
        let mut ch = Channel::new(ChannelConfig::new(Role::Client), now);
        for p in [&b"a"[..], b"b", b"c"] {
            ch.send(now, PayloadType::Output, Bytes::copy_from_slice(p))
                .unwrap();
        }
        let first = drain_transmit(&mut ch);
        ch.handle_frame(now, ack_frame(1));
        ch.handle_timeout(now + INITIAL_RTO);
        // The timer's copy is still queued when the transport is replaced: it is not doubled.
        ch.handle_reconnect(now + ms(300));
        let resent = drain_transmit(&mut ch);
        assert_eq!(resent, vec![first[0].clone(), first[2].clone()]);
        assert_eq!(ch.poll_timeout(), Some(now + ms(300) + ch.rto()));
    }

    #[test]
    fn channel_closed_ends_the_channel() {
        let now = t0();
        let mut ch = Channel::new(ChannelConfig::new(Role::Client), now);
        ch.send(now, PayloadType::Output, Bytes::from_static(b"a"))
            .unwrap();
        let closed = ChannelClosed::message("s-1", "i-1", "bye", "2024-01-01T00:00:00Z".into());
        ch.handle_frame(now, closed.to_bytes());
        match ch.poll_event() {
            Some(Event::Closed(c)) => {
                assert_eq!((c.session_id.as_str(), c.output.as_str()), ("s-1", "bye"))
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(ch.poll_transmit().is_none());
        assert_eq!(ch.poll_timeout(), None);
        assert_eq!(
            ch.send(now, PayloadType::Output, Bytes::from_static(b"b")),
            Err(SendError::Channel(ChannelError::Closed))
        );
    }

    #[test]
    fn other_messages_are_passed_up() {
        let now = t0();
        let mut ch = Channel::new(ChannelConfig::new(Role::Agent), now);
        let state = ssmx_protocol::payload::AgentSessionState::message("s", "Connected");
        ch.handle_frame(now, state.to_bytes());
        assert_eq!(ch.poll_event(), Some(Event::Message(state)));
        ch.send_message(AgentMessage::new(
            MessageType::AgentSessionState,
            PayloadType::Undefined,
            Bytes::from_static(b"{}"),
        ));
        assert_eq!(drain_transmit(&mut ch).len(), 1);
        assert_eq!(ch.unacked(), 0);
    }
}
