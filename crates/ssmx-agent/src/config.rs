//! Agent settings.

use std::path::PathBuf;
use std::time::Duration;

use crate::backoff::Backoff;
use crate::registration::Registration;

/// Everything [`crate::Agent`] needs to run.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Identity and gateway, from [`crate::register`] or [`Registration::load`].
    pub registration: Registration,
    /// Directory for per-session transcripts (`<session-id>.log`); `None` writes none.
    pub log_dir: Option<PathBuf>,
    /// Shell for `Standard_Stream` sessions; default: the session user's login shell, else `/bin/sh`.
    pub shell: Option<PathBuf>,
    /// OS user for sessions when the agent runs as root and the document does not enable run-as
    /// (the official agent uses `ssm-user`); `None` runs them as the agent's own user.
    pub session_user: Option<String>,
    /// Run Command state (idempotency records, document states, unacknowledged replies, scripts);
    /// `None`: `commands` under [`crate::default_state_dir`].
    pub commands_dir: Option<PathBuf>,
    /// Run Command documents run at once; later ones wait (the official agent runs 5).
    pub max_concurrent_documents: usize,
    /// Runs a Run Command document may start: one more each time a restart interrupts it; at
    /// this many it is given up and reported Failed (the official agent allows 15).
    pub max_document_runs: u32,
    /// Timers and retry policies.
    pub timing: Timing,
}

impl AgentConfig {
    /// Defaults for `registration`: no transcripts, default shell, official timers.
    pub fn new(registration: Registration) -> Self {
        Self {
            registration,
            log_dir: None,
            shell: None,
            session_user: None,
            commands_dir: None,
            max_concurrent_documents: 5,
            max_document_runs: 15,
            timing: Timing::default(),
        }
    }
}

/// Timers and retry policies (PROTOCOL.md §14). The defaults are the official agent's; tests
/// shorten them.
#[derive(Clone, Debug)]
pub struct Timing {
    /// Delays between control-channel setup attempts (retried forever).
    pub control_backoff: Backoff,
    /// First delay when the gateway is on this host and refuses connections (it is restarting or
    /// not started yet); later refusals still grow up to the policy's cap.
    pub local_refused_initial: Duration,
    /// Random pause (up to this) before re-creating a control channel that failed after opening.
    pub control_reopen_pause: Duration,
    /// WebSocket ping interval on the control channel.
    pub ping_interval: Duration,
    /// Reconnect when no pong arrived this long after the last one (first deadline:
    /// `ping_interval + pong_timeout` after opening).
    pub pong_timeout: Duration,
    /// The health period: UpdateInstanceInformation is called at start, once more at a random
    /// moment inside the first period, then once every period (the official agent's
    /// HealthFrequencyMinutes, 5 minutes by default).
    pub update_interval: Duration,
    /// HTTP timeout for REST calls to the gateway.
    pub http_timeout: Duration,
    /// Wait for the client's HandshakeResponse.
    pub handshake_timeout: Duration,
    /// Delays between data-channel reconnect attempts.
    pub data_channel_backoff: Backoff,
    /// Data-channel reconnect attempts after the first failure.
    pub data_channel_retries: u32,
    /// Wait for the client to acknowledge the last output before closing.
    pub drain_timeout: Duration,
    /// Wait for `agent_task_acknowledge` after each `agent_task_complete`.
    pub task_complete_ack_timeout: Duration,
    /// `agent_task_complete` sends per session before giving up.
    pub task_complete_attempts: u32,
    /// Between SIGHUP and SIGKILL when a session's processes are ended.
    pub kill_grace: Duration,
    /// Length of one "minute" of the document's `idleSessionTimeout` / `maxSessionDuration`.
    pub session_minute: Duration,
    /// How long shutdown waits for running sessions to end and report.
    pub shutdown_grace: Duration,
    /// Wait for `agent_job_reply_ack` before a Run Command reply is persisted and re-sent.
    pub reply_ack_timeout: Duration,
    /// Delays between re-sends of an unacknowledged Run Command reply (also re-sent on every
    /// control-channel reconnect).
    pub reply_resend_backoff: Backoff,
    /// Unacknowledged Run Command replies older than this are dropped; so are whole outputs
    /// not uploaded by then.
    pub reply_max_age: Duration,
    /// Delays between uploads of a whole Run Command output the gateway did not take.
    pub upload_retry_backoff: Backoff,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            control_backoff: Backoff::control_channel(),
            local_refused_initial: Duration::from_secs(1),
            control_reopen_pause: Duration::from_millis(2500),
            ping_interval: Duration::from_secs(54),
            pong_timeout: Duration::from_secs(60),
            update_interval: Duration::from_secs(5 * 60),
            http_timeout: Duration::from_secs(15),
            handshake_timeout: Duration::from_secs(15),
            data_channel_backoff: Backoff::data_channel(),
            data_channel_retries: 5,
            drain_timeout: Duration::from_secs(2),
            task_complete_ack_timeout: Duration::from_secs(1),
            task_complete_attempts: 3,
            kill_grace: Duration::from_secs(1),
            session_minute: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(5),
            reply_ack_timeout: Duration::from_secs(1),
            reply_resend_backoff: Backoff {
                initial_min: Duration::from_secs(5),
                initial_max: Duration::from_secs(10),
                multiplier: 2.0,
                jitter: 0.5,
                cap: Duration::from_secs(5 * 60),
            },
            reply_max_age: Duration::from_secs(2 * 60 * 60),
            upload_retry_backoff: Backoff {
                initial_min: Duration::from_secs(5),
                initial_max: Duration::from_secs(10),
                multiplier: 2.0,
                jitter: 0.5,
                cap: Duration::from_secs(5 * 60),
            },
        }
    }
}
