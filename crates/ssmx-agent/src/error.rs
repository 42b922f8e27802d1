//! The agent's error type.

use std::path::PathBuf;

/// Why an agent operation failed. Each variant says what to check.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The gateway URL is not an absolute http(s) URL.
    #[error("invalid gateway URL {url:?}: {reason}")]
    GatewayUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The gateway refused the activation.
    #[error("registration refused by the gateway ({code}): {message}")]
    Registration {
        /// The AWS-style error code (e.g. `InvalidActivation`).
        code: String,
        /// The gateway's explanation.
        message: String,
    },
    /// An HTTP exchange with the gateway failed.
    #[error("HTTP request to {url} failed: {detail}")]
    Http {
        /// The request URL.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The gateway answered with an unexpected status.
    #[error("{url} answered HTTP {status}: {body}")]
    Status {
        /// The request URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The response body (truncated).
        body: String,
    },
    /// The gateway refused an API call with an AWS-shaped error.
    #[error("{operation} refused ({code}): {message}")]
    Refused {
        /// The `X-Amz-Target` of the call.
        operation: &'static str,
        /// The error code (`AccessDeniedException`, …).
        code: String,
        /// The gateway's explanation.
        message: String,
    },
    /// A response body could not be understood.
    #[error("unexpected response from {url}: {detail}")]
    Response {
        /// The request URL.
        url: String,
        /// What was wrong with it.
        detail: String,
    },
    /// A WebSocket could not be opened or used.
    #[error("WebSocket {url}: {detail}")]
    WebSocket {
        /// The WebSocket URL.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// Signing a request failed (bad credential or region).
    #[error("cannot sign the request: {0}")]
    Signing(String),
    /// The registration file is missing or unreadable.
    #[error("registration file {path}: {detail} (run `ssmx agent register` first)")]
    RegistrationFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// A local file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl AgentError {
    /// True when the error is a refused TCP connection (nothing listening).
    pub(crate) fn is_connection_refused(&self) -> bool {
        match self {
            AgentError::Http { detail, .. } | AgentError::WebSocket { detail, .. } => {
                detail.contains("Connection refused") || detail.contains("ConnectionRefused")
            }
            _ => false,
        }
    }
}
