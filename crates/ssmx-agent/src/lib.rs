//! The Session Manager agent: registers a host with a gateway, keeps its control channel open and
//! runs the sessions the service asks for (interactive shell, interactive and non-interactive
//! commands, port forwarding), speaking the official wire protocol (PROTOCOL.md §10).
//!
//! The library is embeddable: register once, then run the agent until a shutdown future resolves.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ssmx_agent::AgentError> {
//! use ssmx_agent::{register, Agent, AgentConfig};
//!
//! let registration = register("http://127.0.0.1:8080", "activation-id", "activation-code").await?;
//! let config = AgentConfig::new(registration);
//! Agent::new(config).run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod agent;
mod backoff;
mod commands;
mod config;
mod control;
mod error;
mod gateway_api;
mod host_info;
mod mgs;
mod plugins;
mod process;
mod registration;
mod session;
mod sigv4;
#[allow(unsafe_code)]
mod sys;
mod transcript;

pub use agent::Agent;
pub use backoff::Backoff;
pub use config::{AgentConfig, Timing};
pub use error::AgentError;
pub use registration::{default_state_dir, register, Registration, REGISTRATION_FILE};
