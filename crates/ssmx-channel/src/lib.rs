//! The reliable Session Manager data channel, written once for the client and the agent.
//!
//! [`core::Channel`] is a sans-IO state machine in the style of quinn-proto: frames and the clock
//! go in, frames to transmit, timer deadlines and application events come out. [`driver`] runs it
//! over a WebSocket with tokio.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod core;
pub mod driver;

pub use crate::core::{Channel, ChannelConfig, ChannelError, Event, Role, SendError};
pub use crate::driver::{spawn, ChannelEvent, Receiver, Sender, Transport, TransportError};
