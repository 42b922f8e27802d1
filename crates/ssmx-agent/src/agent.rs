//! The agent: its control channel, the periodic UpdateInstanceInformation, and the registry of
//! running sessions.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ssmx_protocol::payload::{AgentTaskComplete, AgentTaskPayload};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::commands;
use crate::config::AgentConfig;
use crate::control::Control;
use crate::error::AgentError;
use crate::gateway_api::GatewayApi;
use crate::mgs::{http_client, Mgs};
use crate::session::{self, Report, SessionEnv};

/// Session results waiting for the control channel. Bounded: when the control channel is down
/// for long, finished sessions wait to report instead of growing memory.
const REPORT_QUEUE: usize = 1024;

/// A registered agent, ready to run.
pub struct Agent {
    config: AgentConfig,
}

impl Agent {
    /// An agent with `config`.
    pub fn new(config: AgentConfig) -> Self {
        Self { config }
    }

    /// Runs until `shutdown` resolves: keeps the control channel open (reconnecting forever),
    /// reports the host to the gateway, and runs every session the gateway asks for. On shutdown
    /// the running sessions are ended (their processes killed) and reported before it returns.
    ///
    /// Fails only when the configuration cannot work (e.g. a malformed gateway URL); network
    /// trouble is retried.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), AgentError> {
        let timing = self.config.timing.clone();
        let registration = &self.config.registration;
        let span = tracing::info_span!("agent", instance = %registration.instance_id);
        let http = http_client(timing.http_timeout)?;
        let mgs = Arc::new(Mgs::new(registration, http.clone())?);
        let api = Arc::new(GatewayApi::new(registration, http)?);
        let (report_tx, report_rx) = mpsc::channel(REPORT_QUEUE);
        let command_settings = commands::Settings::new(&self.config, api.clone());
        let sessions = Arc::new(Sessions::new(
            Arc::new(SessionEnv {
                mgs: mgs.clone(),
                api: api.clone(),
                config: Arc::new(self.config),
            }),
            report_tx,
        ));
        // Dropping this future (instead of resolving `shutdown`) still ends every session.
        let _end_sessions = sessions.all.clone().drop_guard();
        let stop = CancellationToken::new();
        let _stop_on_drop = stop.clone().drop_guard();

        let mut background = JoinSet::new();
        let control = Control::new(
            mgs,
            sessions.clone(),
            report_rx,
            timing.clone(),
            command_settings,
        );
        background.spawn(control.run(stop.clone()).instrument(span.clone()));
        let update_stop = stop.clone();
        background.spawn(
            async move {
                // Failures are retried with the control channel's back-off, so a gateway that
                // starts late still learns the host's details soon.
                let mut retries = timing.control_backoff.start();
                let mut first_period = true;
                loop {
                    let pause = match api.update_instance_information().await {
                        Ok(()) => {
                            tracing::debug!("instance information updated");
                            retries.reset();
                            health_pause(timing.update_interval, &mut first_period)
                        }
                        Err(e) => {
                            let delay = retries.next_delay().min(timing.update_interval);
                            tracing::warn!(?delay, "UpdateInstanceInformation failed: {e}");
                            delay
                        }
                    };
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = update_stop.cancelled() => return,
                    }
                }
            }
            .instrument(span.clone()),
        );

        shutdown.await;
        span.in_scope(|| tracing::info!("agent stopping"));
        sessions.end_all(timing.shutdown_grace).await;
        stop.cancel();
        while background.join_next().await.is_some() {}
        span.in_scope(|| tracing::info!("agent stopped"));
        Ok(())
    }
}

/// The pause after a successful UpdateInstanceInformation: a random part of the first period
/// after the call at start (so a fleet started at once does not report in step), then whole
/// periods.
fn health_pause(period: Duration, first_period: &mut bool) -> Duration {
    if !std::mem::take(first_period) {
        return period;
    }
    period.mul_f64(rand::random_range(0.0..1.0))
}

/// The running sessions, by id.
pub(crate) struct Sessions {
    env: Arc<SessionEnv>,
    running: Mutex<HashMap<String, CancellationToken>>,
    tracker: TaskTracker,
    reports: mpsc::Sender<AgentTaskComplete>,
    /// Parent of every session's token.
    all: CancellationToken,
}

impl Sessions {
    fn new(env: Arc<SessionEnv>, reports: mpsc::Sender<AgentTaskComplete>) -> Self {
        Self {
            env,
            running: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            reports,
            all: CancellationToken::new(),
        }
    }

    /// Starts the session in `request` (a repeated request for a running session is ignored).
    pub(crate) fn start(self: &Arc<Self>, request: AgentTaskPayload) {
        let session_id = request.session_id.clone();
        if self.all.is_cancelled() {
            tracing::warn!(session = %session_id, "agent stopping; session not started");
            self.spawn_report(session_id, Report::failed("the agent is shutting down"));
            return;
        }
        let cancel = self.all.child_token();
        {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if running.contains_key(&session_id) {
                tracing::warn!(session = %session_id, "session already running; request ignored");
                return;
            }
            running.insert(session_id.clone(), cancel.clone());
        }
        let this = self.clone();
        self.tracker.spawn(async move {
            let report = session::run(this.env.clone(), request, cancel).await;
            this.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&session_id);
            this.send_report(session_id, report).await;
        });
    }

    /// Ends the session `session_id` (`channel_closed` on the control channel).
    pub(crate) fn cancel(&self, session_id: &str) {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        match running.get(session_id) {
            Some(token) => {
                tracing::info!(session = %session_id, "session terminated by the service");
                token.cancel();
            }
            None => {
                tracing::debug!(session = %session_id, "channel_closed for a session that is not running")
            }
        }
    }

    /// Reports a session that could not even be parsed or started.
    pub(crate) fn spawn_report(self: &Arc<Self>, session_id: String, report: Report) {
        let this = self.clone();
        self.tracker
            .spawn(async move { this.send_report(session_id, report).await });
    }

    async fn send_report(&self, session_id: String, report: Report) {
        let complete = AgentTaskComplete::new(
            &session_id,
            self.env.mgs.instance_id(),
            report.status,
            &report.output,
        );
        if self.reports.send(complete).await.is_err() {
            tracing::warn!(session = %session_id, "control channel stopped; session result not reported");
        }
    }

    /// Cancels every session and waits (up to `grace`) for them to end and queue their reports.
    async fn end_all(&self, grace: Duration) {
        self.all.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.tracker.len(),
                "sessions still ending after the shutdown grace period"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_health_call_comes_inside_the_first_period() {
        let period = Duration::from_secs(300);
        let mut first_period = true;
        for _ in 0..100 {
            let mut first = true;
            assert!(health_pause(period, &mut first) < period);
            assert!(!first);
        }
        assert!(health_pause(period, &mut first_period) < period);
        assert_eq!(health_pause(period, &mut first_period), period);
        assert_eq!(health_pause(period, &mut first_period), period);
    }
}
