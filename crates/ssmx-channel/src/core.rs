//! The sans-IO channel core. CONTRACT SKETCH: signatures are fixed, bodies to be written.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ssmx_protocol::payload::ChannelClosed;
use ssmx_protocol::{AgentMessage, DecodeError, PayloadType};

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
    /// Defaults for `role`.
    pub fn new(role: Role) -> Self {
        let _ = role;
        todo!()
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

/// The channel state machine.
pub struct Channel {
    _config: ChannelConfig,
}

impl Channel {
    /// A fresh channel at sequence 0.
    pub fn new(config: ChannelConfig, now: Instant) -> Self {
        let _ = now;
        Self { _config: config }
    }
    /// Current retransmission timeout.
    pub fn rto(&self) -> Duration {
        todo!()
    }
    /// Stream messages sent and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        todo!()
    }
    /// True when `send` would accept a payload.
    pub fn can_send(&self) -> bool {
        todo!()
    }
    /// Handles one received frame (binary or text WebSocket message).
    pub fn handle_frame(&mut self, now: Instant, frame: Bytes) {
        let _ = (now, frame);
        todo!()
    }
    /// Handles the clock reaching a deadline from `poll_timeout`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = now;
        todo!()
    }
    /// The transport was replaced (reconnect): everything unacknowledged is sent again.
    pub fn handle_reconnect(&mut self, now: Instant) {
        let _ = now;
        todo!()
    }
    /// Queues a stream message (split if longer than `max_payload`); returns its first sequence number.
    pub fn send(
        &mut self,
        now: Instant,
        payload_type: PayloadType,
        payload: Bytes,
    ) -> Result<i64, SendError> {
        let _ = (now, payload_type, payload);
        todo!()
    }
    /// Queues a non-stream message (e.g. `agent_session_state`), sent once, never retransmitted.
    pub fn send_message(&mut self, msg: AgentMessage) {
        let _ = msg;
        todo!()
    }
    /// The next frame to write to the transport.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        todo!()
    }
    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        todo!()
    }
    /// The next application event.
    pub fn poll_event(&mut self) -> Option<Event> {
        todo!()
    }
}
