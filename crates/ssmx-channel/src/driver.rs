//! The tokio driver. CONTRACT SKETCH: signatures are fixed, bodies to be written.

use std::pin::Pin;

use bytes::Bytes;
use futures::{Sink, Stream};
use ssmx_protocol::payload::ChannelClosed;
use ssmx_protocol::{AgentMessage, PayloadType};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;

use crate::core::{ChannelConfig, ChannelError};

/// A failure of the underlying connection (not of the channel: reattach and go on).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("transport: {0}")]
pub struct TransportError(pub String);

/// Whole WebSocket messages in both directions. Text messages are passed up like binary ones;
/// ping/pong/close are handled below this layer.
pub struct Transport {
    /// Frames to send (as binary messages).
    pub sink: Pin<Box<dyn Sink<Bytes, Error = TransportError> + Send>>,
    /// Frames received.
    pub stream: Pin<Box<dyn Stream<Item = Result<Bytes, TransportError>> + Send>>,
}

impl Transport {
    /// Wraps a connected WebSocket whose Open…Channel text frame has already been sent.
    pub fn from_websocket<S>(ws: WebSocketStream<S>) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let _ = ws;
        todo!()
    }
}

/// What the application receives.
#[derive(Clone, Debug, PartialEq)]
pub enum ChannelEvent {
    /// The peer's next in-order stream payload.
    Payload {
        /// Its payload type.
        payload_type: PayloadType,
        /// Its bytes.
        payload: Bytes,
    },
    /// A non-stream message other than acks and publication control.
    Message(AgentMessage),
    /// The service closed the channel; no more events follow.
    Closed(ChannelClosed),
    /// The transport dropped; call [`Sender::reattach`] with a new one. Sending keeps buffering.
    TransportLost(TransportError),
    /// The channel failed for good; no more events follow.
    Failed(ChannelError),
}

/// Starts the driver task. It ends when the channel closes or fails, or when the `Receiver` and
/// every `Sender` are dropped.
pub fn spawn(config: ChannelConfig, transport: Transport) -> (Sender, Receiver) {
    let _ = (config, transport);
    todo!()
}

/// The writing half; cheap to clone.
#[derive(Clone)]
pub struct Sender {}

impl Sender {
    /// Sends a stream payload, waiting while the send window is full. Output longer than the
    /// negotiated maximum is split.
    pub async fn send(
        &self,
        payload_type: PayloadType,
        payload: Bytes,
    ) -> Result<(), ChannelError> {
        let _ = (payload_type, payload);
        todo!()
    }
    /// Sends a non-stream message once (e.g. `agent_session_state`).
    pub async fn send_message(&self, msg: AgentMessage) -> Result<(), ChannelError> {
        let _ = msg;
        todo!()
    }
    /// Replaces the transport after a reconnect; unacknowledged messages are sent again.
    pub async fn reattach(&self, transport: Transport) -> Result<(), ChannelError> {
        let _ = transport;
        todo!()
    }
    /// Resolves when every stream message sent so far has been acknowledged.
    pub async fn flush(&self) -> Result<(), ChannelError> {
        todo!()
    }
    /// Changes the largest payload per message (after ssmx ends agreed on a larger one).
    pub fn set_max_payload(&self, max_payload: usize) {
        let _ = max_payload;
        todo!()
    }
    /// Stops the driver and drops the transport.
    pub fn close(&self) {
        todo!()
    }
}

/// The reading half.
pub struct Receiver {}

impl Receiver {
    /// The next event; `None` once the driver has ended.
    pub async fn recv(&mut self) -> Option<ChannelEvent> {
        todo!()
    }
}
