//! The Session Manager wire protocol, byte for byte as the official client and agent speak it:
//! the `AgentMessage` frame codec, message and payload types, the JSON payloads of both channels
//! and session documents. No I/O.
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use ssmx_protocol::{AgentMessage, MessageType, PayloadType};
//!
//! let msg = AgentMessage::new(MessageType::InputStreamData, PayloadType::Output, Bytes::from_static(b"ls\r"));
//! let mut buf = BytesMut::new();
//! msg.encode(&mut buf);
//! assert_eq!(AgentMessage::decode(buf.freeze()).unwrap(), msg);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod command;
pub mod crypto;
pub mod digest;
pub mod document;
pub mod message;
pub mod payload;
pub mod version;

pub use message::{
    flags, peek_message_type, AgentMessage, DecodeError, DecodeOptions, InvalidMessageType,
    MessageType, PayloadType,
};
