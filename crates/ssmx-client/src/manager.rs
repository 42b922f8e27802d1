//! [`SessionManager`]: the SSM API calls around a session (start, resume, terminate, list) and
//! connecting the data channel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ssm::config::retry::RetryConfig;

use crate::calls::{CallLog, NoRetryWhenRefused};
use aws_sdk_ssm::config::timeout::TimeoutConfig;
use aws_sdk_ssm::types::SessionState;
use aws_types::SdkConfig;
use serde::Deserialize;
use ssmx_channel::{ChannelConfig, Role};

use crate::connect::{redact, Dialer};
use crate::error::{Error, Result};
use crate::session::{Backoff, Session};

/// Largest payload per message we send unless an ssmx agent agrees to more: what the real
/// service is reported to accept, 32 times the official ends' 1 KiB (DESIGN.md).
pub const DEFAULT_PAYLOAD_SIZE: usize = 32 * 1024;
/// Largest payload we offer an ssmx agent: big enough that SHA-256 rather than per-message
/// overhead bounds throughput, small enough to keep a full send window's memory modest.
pub const DEFAULT_NEGOTIATED_PAYLOAD: u32 = 256 * 1024;
/// Ceiling for payload sizes: the protocol decoder's default limit.
pub const MAX_PAYLOAD_SIZE: usize = ssmx_protocol::message::DEFAULT_MAX_PAYLOAD;
/// Retries after the first attempt when a data channel connection fails or drops (the official
/// client's count, §13.1).
pub const DEFAULT_RECONNECT_ATTEMPTS: u32 = 5;
/// Time allowed for TCP connect, TLS and the WebSocket upgrade of one data channel attempt.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts per SSM API call (the official client's SDK allows 3 retries).
pub const DEFAULT_API_ATTEMPTS: u32 = 4;
/// The document `exec` runs commands with, and its parameter.
pub const DEFAULT_EXEC_DOCUMENT: &str = "AWS-StartNonInteractiveCommand";

/// Options of a [`SessionManager`]; see [`SessionManagerBuilder`].
#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub payload_size: usize,
    pub max_negotiated_payload: u32,
    pub reconnect_attempts: u32,
    pub connect_timeout: Duration,
    pub api_attempts: u32,
    pub api_timeout: Option<Duration>,
    pub exec_document: String,
    /// When set, KMS encryption requests are refused with this text.
    pub encryption_refusal: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            payload_size: DEFAULT_PAYLOAD_SIZE,
            max_negotiated_payload: DEFAULT_NEGOTIATED_PAYLOAD,
            reconnect_attempts: DEFAULT_RECONNECT_ATTEMPTS,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            api_attempts: DEFAULT_API_ATTEMPTS,
            api_timeout: None,
            exec_document: DEFAULT_EXEC_DOCUMENT.to_owned(),
            encryption_refusal: None,
        }
    }
}

/// Options for a [`SessionManager`].
///
/// ```
/// # async fn demo() {
/// use std::time::Duration;
/// let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
/// let manager = ssmx_client::SessionManager::builder()
///     .payload_size(8 * 1024)
///     .reconnect_attempts(10)
///     .connect_timeout(Duration::from_secs(10))
///     .build(&config);
/// # }
/// ```
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct SessionManagerBuilder {
    options: Options,
}

impl SessionManagerBuilder {
    /// Largest payload per message sent to an official agent or through AWS (default 32 KiB;
    /// the official client uses 1 KiB). Clamped to 1 byte ..= [`MAX_PAYLOAD_SIZE`].
    pub fn payload_size(mut self, bytes: usize) -> Self {
        self.options.payload_size = bytes.clamp(1, MAX_PAYLOAD_SIZE);
        self
    }

    /// Largest payload offered to an ssmx agent in the handshake (default 256 KiB).
    pub fn max_negotiated_payload(mut self, bytes: u32) -> Self {
        self.options.max_negotiated_payload = bytes.clamp(1, MAX_PAYLOAD_SIZE as u32);
        self
    }

    /// Retries after the first attempt when the data channel cannot be opened or resumed
    /// (default 5, as the official client).
    pub fn reconnect_attempts(mut self, retries: u32) -> Self {
        self.options.reconnect_attempts = retries;
        self
    }

    /// Time allowed for one data channel connection attempt (default 30 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.options.connect_timeout = timeout;
        self
    }

    /// Attempts per SSM API call, including the first (default 4).
    pub fn api_max_attempts(mut self, attempts: u32) -> Self {
        self.options.api_attempts = attempts.max(1);
        self
    }

    /// Time limit for each SSM API call (default: the SDK's).
    pub fn api_timeout(mut self, timeout: Duration) -> Self {
        self.options.api_timeout = Some(timeout);
        self
    }

    /// The NonInteractiveCommands document [`SessionManager::exec`] uses; it must take a
    /// `command` parameter (default `AWS-StartNonInteractiveCommand`).
    pub fn exec_document(mut self, name: impl Into<String>) -> Self {
        self.options.exec_document = name.into();
        self
    }

    /// Refuses KMS-encrypted sessions, answering the agent's encryption request with `reason`
    /// (the agent then ends the session). By default encryption is accepted: the data key
    /// comes from KMS at the configuration's endpoint.
    pub fn refuse_encryption(mut self, reason: impl Into<String>) -> Self {
        self.options.encryption_refusal = Some(reason.into());
        self
    }

    /// Builds the manager on an AWS SDK configuration (region, credentials and endpoint, which
    /// may be set with `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_SSM` or a profile).
    pub fn build(self, config: &SdkConfig) -> SessionManager {
        let gateway = config
            .endpoint_url()
            .is_some_and(|url| !is_aws_endpoint(url));
        let mut ssm = aws_sdk_ssm::config::Builder::from(config)
            .retry_config(RetryConfig::standard().with_max_attempts(self.options.api_attempts))
            .interceptor(crate::UniqueSignatures)
            .interceptor(CallLog);
        if let Some(t) = self.options.api_timeout {
            ssm = ssm.timeout_config(TimeoutConfig::builder().operation_timeout(t).build());
        }
        let mut kms = aws_sdk_kms::config::Builder::from(config)
            .retry_config(RetryConfig::standard().with_max_attempts(self.options.api_attempts))
            .interceptor(CallLog);
        if gateway {
            ssm = ssm.retry_classifier(NoRetryWhenRefused);
            kms = kms.retry_classifier(NoRetryWhenRefused);
        }
        if config.endpoint_url().is_some_and(is_aws_endpoint) {
            // An AWS SSM endpoint (aws-cli always hands one to the plugin) is no KMS endpoint:
            // KMS resolves its own from the region. Any other endpoint is a gateway serving both.
            kms.set_endpoint_url(None);
        }
        let kms = kms.build();
        SessionManager {
            inner: Arc::new(Inner {
                ssm: aws_sdk_ssm::Client::from_conf(ssm.build()),
                kms: aws_sdk_kms::Client::from_conf(kms),
                dialer: Dialer {
                    connect_timeout: self.options.connect_timeout,
                },
                options: self.options,
            }),
        }
    }
}

/// True when `url` names an AWS service endpoint (`*.amazonaws.com`, `*.amazonaws.com.cn`,
/// `*.api.aws`) rather than a self-hosted gateway.
fn is_aws_endpoint(url: &str) -> bool {
    let host = url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
        .unwrap_or_default();
    [".amazonaws.com", ".amazonaws.com.cn", ".api.aws"]
        .iter()
        .any(|suffix| host.ends_with(suffix))
}

/// What StartSession (or ResumeSession) returns: everything needed to open the data channel.
/// It deserialises from the JSON aws-cli hands to `session-manager-plugin`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct SessionTicket {
    /// The session id.
    #[serde(rename = "SessionId")]
    pub session_id: String,
    /// The one-time token the data channel authenticates with.
    #[serde(rename = "TokenValue")]
    pub token_value: String,
    /// The data channel WebSocket URL, dialled verbatim.
    #[serde(rename = "StreamUrl")]
    pub stream_url: String,
}

impl std::fmt::Debug for SessionTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTicket")
            .field("session_id", &self.session_id)
            .field("token_value", &"<redacted>")
            .field("stream_url", &redact(&self.stream_url))
            .finish()
    }
}

/// One session as DescribeSessions reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSummary {
    /// The session id.
    pub session_id: String,
    /// The target.
    pub target: String,
    /// `Connected`, `Terminated`, …
    pub status: String,
    /// Start time, seconds since the Unix epoch.
    pub start_date: Option<i64>,
    /// End time, seconds since the Unix epoch.
    pub end_date: Option<i64>,
    /// The document.
    pub document_name: String,
    /// Who started it.
    pub owner: String,
    /// The reason given at start.
    pub reason: String,
}

/// Which sessions [`SessionManager::sessions`] lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionListState {
    /// Sessions still running.
    Active,
    /// Sessions that ended.
    History,
}

/// Shared by the manager and its sessions.
#[derive(Debug)]
pub(crate) struct Inner {
    pub ssm: aws_sdk_ssm::Client,
    pub kms: aws_sdk_kms::Client,
    pub dialer: Dialer,
    pub options: Options,
}

/// Starts, resumes and ends Session Manager sessions through the SSM API (AWS or an ssmx
/// gateway) and connects their data channels.
///
/// ```no_run
/// # async fn demo() -> ssmx_client::Result<()> {
/// let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
/// let manager = ssmx_client::SessionManager::new(&config);
/// let out = manager.exec("mi-0123456789abcdef0", "uname -a").await?;
/// println!("{} (exit {:?})", String::from_utf8_lossy(&out.stdout), out.exit_code);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct SessionManager {
    pub(crate) inner: Arc<Inner>,
}

impl SessionManager {
    /// A manager with default options.
    pub fn new(config: &SdkConfig) -> Self {
        Self::builder().build(config)
    }

    /// Options beyond the defaults.
    pub fn builder() -> SessionManagerBuilder {
        SessionManagerBuilder::default()
    }

    /// The underlying SSM client, for calls this crate does not wrap.
    pub fn ssm(&self) -> &aws_sdk_ssm::Client {
        &self.inner.ssm
    }

    /// Calls StartSession and connects the session's data channel. `document` `None` uses the
    /// service's default shell document. If the data channel cannot be opened the session is
    /// terminated again.
    ///
    /// ```no_run
    /// # async fn demo(manager: ssmx_client::SessionManager) -> ssmx_client::Result<()> {
    /// let params = [("portNumber".to_owned(), vec!["22".to_owned()])].into();
    /// let session = manager.start_session("mi-0123456789abcdef0", Some("AWS-StartSSHSession"), params).await?;
    /// # Ok(()) }
    /// ```
    pub async fn start_session(
        &self,
        target: &str,
        document: Option<&str>,
        parameters: HashMap<String, Vec<String>>,
    ) -> Result<Session> {
        let ticket = self.request_session(target, document, parameters).await?;
        let session_id = ticket.session_id.clone();
        match self.attach(ticket, target).await {
            Ok(session) => Ok(session),
            Err(e) => {
                if let Err(t) = self.terminate_session(&session_id).await {
                    tracing::warn!(
                        session_id,
                        "could not terminate the unconnected session: {t}"
                    );
                }
                Err(e)
            }
        }
    }

    /// Calls StartSession only; connect later with [`SessionManager::attach`].
    pub async fn request_session(
        &self,
        target: &str,
        document: Option<&str>,
        parameters: HashMap<String, Vec<String>>,
    ) -> Result<SessionTicket> {
        let out = self
            .inner
            .ssm
            .start_session()
            .target(target)
            .set_document_name(document.map(str::to_owned))
            .set_parameters((!parameters.is_empty()).then_some(parameters))
            .send()
            .await
            .map_err(|e| Error::from_api("StartSession", target, e))?;
        let missing = |field| Error::IncompleteResponse {
            operation: "StartSession",
            field,
        };
        Ok(SessionTicket {
            session_id: out.session_id.ok_or_else(|| missing("SessionId"))?,
            token_value: out.token_value.ok_or_else(|| missing("TokenValue"))?,
            stream_url: out.stream_url.ok_or_else(|| missing("StreamUrl"))?,
        })
    }

    /// Opens the data channel of a session started elsewhere (e.g. by aws-cli, which hands the
    /// StartSession response to `session-manager-plugin`). The first connection is retried
    /// with the same token, as the official client does.
    pub async fn attach(&self, ticket: SessionTicket, target: &str) -> Result<Session> {
        let mut backoff = Backoff::new();
        let mut attempt = 0;
        let transport = loop {
            match self
                .inner
                .dialer
                .open(&ticket.stream_url, &ticket.token_value)
                .await
            {
                Ok(t) => break t,
                Err(e) if attempt < self.inner.options.reconnect_attempts => {
                    tracing::info!(attempt, "opening the data channel failed: {e}");
                    attempt += 1;
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => return Err(e),
            }
        };
        let mut config = ChannelConfig::new(Role::Client);
        config.max_payload = self.inner.options.payload_size;
        let channel = ssmx_channel::spawn(config, transport);
        Ok(Session::spawn(
            self.inner.clone(),
            ticket.session_id,
            target.to_owned(),
            ticket.stream_url,
            channel,
        ))
    }

    /// Calls ResumeSession; `None` when the service returned no token (the session is over).
    pub async fn resume_session(&self, session_id: &str) -> Result<Option<String>> {
        self.inner.resume_session(session_id).await
    }

    /// Calls TerminateSession.
    pub async fn terminate_session(&self, session_id: &str) -> Result<()> {
        self.inner.terminate_session(session_id).await
    }

    /// Lists sessions with DescribeSessions, following every page.
    pub async fn sessions(&self, state: SessionListState) -> Result<Vec<SessionSummary>> {
        let state = match state {
            SessionListState::Active => SessionState::Active,
            SessionListState::History => SessionState::History,
        };
        let mut out = Vec::new();
        let mut next_token = None;
        loop {
            let page = self
                .inner
                .ssm
                .describe_sessions()
                .state(state.clone())
                .set_next_token(next_token.take())
                .send()
                .await
                .map_err(|e| Error::from_api("DescribeSessions", "", e))?;
            for s in page.sessions() {
                out.push(SessionSummary {
                    session_id: s.session_id().unwrap_or_default().to_owned(),
                    target: s.target().unwrap_or_default().to_owned(),
                    status: s
                        .status()
                        .map(|s| s.as_str().to_owned())
                        .unwrap_or_default(),
                    start_date: s.start_date().map(|d| d.secs()),
                    end_date: s.end_date().map(|d| d.secs()),
                    document_name: s.document_name().unwrap_or_default().to_owned(),
                    owner: s.owner().unwrap_or_default().to_owned(),
                    reason: s.reason().unwrap_or_default().to_owned(),
                });
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => next_token = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
    }
}

impl Inner {
    pub(crate) async fn resume_session(&self, session_id: &str) -> Result<Option<String>> {
        let out = self
            .ssm
            .resume_session()
            .session_id(session_id)
            .send()
            .await
            .map_err(|e| Error::from_api("ResumeSession", session_id, e))?;
        Ok(out.token_value.filter(|t| !t.is_empty()))
    }

    pub(crate) async fn terminate_session(&self, session_id: &str) -> Result<()> {
        self.ssm
            .terminate_session()
            .session_id(session_id)
            .send()
            .await
            .map_err(|e| Error::from_api("TerminateSession", session_id, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::is_aws_endpoint;

    #[test]
    fn aws_endpoints_are_told_from_gateways() {
        assert!(is_aws_endpoint("https://ssm.us-east-1.amazonaws.com"));
        assert!(is_aws_endpoint("https://ssm.cn-north-1.amazonaws.com.cn/"));
        assert!(is_aws_endpoint("https://ssm.us-east-1.api.aws"));
        assert!(!is_aws_endpoint("http://127.0.0.1:8080"));
        assert!(!is_aws_endpoint("https://gateway.example.com"));
        assert!(!is_aws_endpoint("not a url"));
    }
}
