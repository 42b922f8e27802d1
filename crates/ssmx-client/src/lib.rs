//! Session Manager client: start, resume and end sessions through the SSM API (AWS or an ssmx
//! gateway) and run them over the real data channel protocol — interactive shells, commands
//! with separate stdout/stderr and exit codes, and port forwarding (standard-stream, basic and
//! smux-multiplexed).
//!
//! The same code path serves AWS and a self-hosted gateway: the endpoint comes from the
//! [`aws_types::SdkConfig`] (`--endpoint-url`, `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_SSM`,
//! profiles).
//!
//! ```no_run
//! # async fn demo() -> ssmx_client::Result<()> {
//! let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
//! let manager = ssmx_client::SessionManager::new(&config);
//! let out = manager.exec("mi-0123456789abcdef0", "hostname").await?;
//! print!("{}", String::from_utf8_lossy(&out.stdout));
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod calls;
mod connect;
mod error;
mod exec;
mod handshake;
mod manager;
mod port;
mod proxy;
mod session;
mod signing;
pub mod socks;

pub use bytes::Bytes;
pub use connect::client_id;
pub use error::{Error, Result};
pub use exec::{copy_command_output, shell_join, CommandEnd, ExecOutput, COMMAND_PARAMETER};
pub use handshake::{SessionStart, SessionType};
pub use manager::{
    SessionListState, SessionManager, SessionManagerBuilder, SessionSummary, SessionTicket,
    DEFAULT_API_ATTEMPTS, DEFAULT_CONNECT_TIMEOUT, DEFAULT_EXEC_DOCUMENT,
    DEFAULT_NEGOTIATED_PAYLOAD, DEFAULT_PAYLOAD_SIZE, DEFAULT_RECONNECT_ATTEMPTS, MAX_PAYLOAD_SIZE,
};
pub use port::{
    LocalConnection, PortForwarder, PortMode, PortNotice, PortParameters, LOCAL_PORT_FORWARDING,
};
pub use session::{Session, SessionEnd, SessionEvent, SessionReader, SessionWriter};
pub use signing::{UniqueSignatures, NONCE_HEADER};
pub use ssmx_protocol::payload::PortFlag;
