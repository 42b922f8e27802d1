//! The reliable Session Manager data channel, written once for the client and the agent.
//!
//! [`core::Channel`] is a sans-IO state machine in the style of quinn-proto: frames and the clock
//! go in, frames to transmit, timer deadlines and application events come out. [`driver`] runs it
//! over a WebSocket with tokio.
//!
//! # Behaviour towards the official ends
//!
//! Everything on the wire is what the official client and agent send (PROTOCOL.md §5): stream
//! messages numbered from 0 across reconnects, acks built as theirs byte for byte, duplicates
//! acknowledged again. Where the official ends are fragile this crate does better without
//! changing the wire: it applies back-pressure instead of evicting or dropping unacknowledged
//! messages, resends the oldest unacknowledged message at the RTO with RFC 6298 back-off (not
//! every 100 ms), resends everything unacknowledged after a reconnect, and gives up after about
//! five minutes of silence, as the official client does.
//!
//! # Payload size
//!
//! Stream payloads default to [`core::DEFAULT_MAX_PAYLOAD`] (32 KiB), which the official ends
//! and the real service accept. Two ssmx ends may agree on [`core::SSMX_MAX_PAYLOAD`] in the
//! handshake: the agent adds `SsmxCapabilities` to its HandshakeRequest, an ssmx client answers
//! with its own in the HandshakeResponse, and each then calls [`Sender::set_max_payload`] with
//! the smaller of the two offers. Official clients skip the unknown JSON field (Go's decoder
//! ignores it) and never answer with one, and an official agent never offers it, so an
//! official end only ever receives payloads of the default size. Sessions without a handshake
//! keep the default.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod core;
pub mod driver;
pub mod tls;

pub use crate::core::{Channel, ChannelConfig, ChannelError, Event, Role, SendError};
pub use crate::driver::{spawn, ChannelEvent, Receiver, Sender, Transport, TransportError};
