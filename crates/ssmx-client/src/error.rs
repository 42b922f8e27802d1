//! The client's error type: what went wrong, phrased so a person can act on it.

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_ssm::error::{ProvideErrorMetadata, SdkError};
use ssmx_channel::ChannelError;

/// Everything that can go wrong while starting, running or ending a session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The target has no agent connected to the service (`TargetNotConnected`).
    #[error("target {target} is not connected{}", extra_detail(target, message))]
    TargetNotConnected {
        /// The target as given to StartSession.
        target: String,
        /// The service's explanation.
        message: String,
    },
    /// The credentials were refused or lack permission.
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// The document does not exist or its parameters were rejected.
    #[error("invalid document or parameters: {0}")]
    InvalidDocument(String),
    /// The session id is unknown to the service.
    #[error("session {0} does not exist")]
    SessionNotFound(String),
    /// Any other failure of an SSM API call.
    #[error("{operation} failed{}: {message}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Api {
        /// The SSM operation, e.g. `StartSession`.
        operation: &'static str,
        /// The service error code, when the service answered.
        code: Option<String>,
        /// What went wrong, with its causes.
        message: String,
    },
    /// No AWS credentials were found anywhere the SDK looks.
    #[error("no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or use a profile): {0}")]
    NoCredentials(String),
    /// The API endpoint could not be reached (refused, unresolvable, timed out).
    #[error("cannot reach the SSM API for {operation}: {reason}")]
    Unreachable {
        /// The SSM operation.
        operation: &'static str,
        /// What failed, outermost first.
        reason: String,
        /// Nothing accepted the connection (the endpoint is up, but no server listens there).
        refused: bool,
    },
    /// The service answered without a field the protocol requires.
    #[error("{operation} response lacks {field}")]
    IncompleteResponse {
        /// The SSM operation.
        operation: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// The data channel WebSocket could not be opened.
    #[error("cannot open the data channel at {url}: {reason}")]
    Connect {
        /// The StreamUrl (without its query string).
        url: String,
        /// Why.
        reason: String,
    },
    /// The session could not be resumed after its connection dropped.
    #[error("lost the connection to session {session_id} and could not resume it: {reason}")]
    Reconnect {
        /// The session.
        session_id: String,
        /// The last failure.
        reason: String,
    },
    /// The agent's handshake could not be completed.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// A payload could not be decrypted or the encryption challenge failed.
    #[error("session encryption: {0}")]
    Encryption(String),
    /// The data channel failed for good (e.g. the peer stopped acknowledging).
    #[error("data channel failed: {0}")]
    Channel(#[from] ChannelError),
    /// The session has ended; nothing more can be sent.
    #[error("the session has ended")]
    SessionEnded,
    /// The session ended before its handshake completed or its first output arrived.
    #[error("the session ended before it started: {0}")]
    EndedBeforeStart(crate::session::SessionEnd),
    /// The session ended other than normally while it was in use (e.g. its target went away).
    #[error("the session ended while in use: {0}")]
    Interrupted(crate::session::SessionEnd),
    /// The session is not of the kind the operation needs.
    #[error("{0}")]
    WrongSessionType(String),
    /// A port-forwarding multiplexer failure.
    #[error("port multiplexer: {0}")]
    Multiplexer(String),
    /// Local I/O failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A failure reported to several waiters (e.g. every connection of a port session).
    #[error(transparent)]
    Shared(std::sync::Arc<Error>),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Error codes that mean "your credentials are wrong or not allowed".
const ACCESS_DENIED_CODES: &[&str] = &[
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "InvalidClientTokenId",
    "ExpiredTokenException",
    "ExpiredToken",
];

/// Error codes for a document that does not exist or parameters it rejects.
const INVALID_DOCUMENT_CODES: &[&str] = &[
    "InvalidDocument",
    "InvalidParameters",
    "ValidationException",
    "InvalidDocumentContent",
];

impl Error {
    /// Maps an SSM (or KMS) API failure of `operation` (about `subject`, e.g. the target) to the
    /// variant a caller can act on.
    pub fn from_api<E, R>(operation: &'static str, subject: &str, err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + 'static,
    {
        if let SdkError::DispatchFailure(failure) = &err {
            let reason = causes(&err);
            let no_credentials = failure
                .as_connector_error()
                .and_then(|c| std::error::Error::source(c))
                .is_some_and(|s| s.is::<CredentialsError>());
            return if no_credentials {
                Error::NoCredentials(reason)
            } else {
                Error::Unreachable {
                    operation,
                    reason,
                    refused: crate::calls::connection_refused(&err),
                }
            };
        }
        if let SdkError::TimeoutError(_) = &err {
            return Error::Unreachable {
                operation,
                reason: causes(&err),
                refused: false,
            };
        }
        let code = err.code().map(str::to_owned);
        let message = err
            .message()
            .map(str::to_owned)
            .unwrap_or_else(|| causes(&err));
        match code.as_deref() {
            Some("TargetNotConnected") => Error::TargetNotConnected {
                target: subject.to_owned(),
                message,
            },
            Some("DoesNotExistException") => Error::SessionNotFound(subject.to_owned()),
            Some(c) if ACCESS_DENIED_CODES.contains(&c) => Error::AccessDenied(message),
            Some(c) if INVALID_DOCUMENT_CODES.contains(&c) => Error::InvalidDocument(message),
            _ => Error::Api {
                operation,
                code,
                message,
            },
        }
    }
}

/// `: <message>` when the service's message says more than that `target` is not connected.
fn extra_detail(target: &str, message: &str) -> String {
    let plain = message.trim().trim_end_matches('.');
    if plain.is_empty() || plain == format!("{target} is not connected") {
        String::new()
    } else {
        format!(": {message}")
    }
}

/// The error's message and its causes, outermost first, each once.
pub(crate) fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}
