//! One session, from `interactive_shell` to the result reported in `agent_task_complete`
//! (PROTOCOL.md §10.4): plan, data channel, `agent_session_state` Connected, handshake when the
//! session type needs it, the plugin, then the ending — drain, `Terminating` when the session
//! ended by itself, close.

pub(crate) mod data_channel;
pub(crate) mod handshake;
pub(crate) mod io;
mod plan;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ssmx_channel::{ChannelConfig, Role};
use ssmx_protocol::crypto::OVERHEAD;
use ssmx_protocol::payload::{session_state, task_status, AgentSessionState, AgentTaskPayload};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::AgentConfig;
use crate::gateway_api::GatewayApi;
use crate::mgs::Mgs;
use crate::plugins::{command, port, shell};
use crate::transcript::Transcript;
use data_channel::{DataChannel, DataEvent};
use handshake::{Encryption, HandshakeError};
use io::{Activity, EncryptedSink, Input, Output, OutputSink, PluginContext, PluginOutcome};
use plan::{Plan, Plugin};

/// Client payloads queued for a plugin that is busy (e.g. a PTY that is not reading). Bounded so
/// a stalled plugin holds back the channel instead of growing memory; 64 messages are far more
/// than keystrokes ever queue.
const INPUT_QUEUE: usize = 64;

/// What every session of this agent shares.
pub(crate) struct SessionEnv {
    /// The gateway's MGS endpoints.
    pub(crate) mgs: Arc<Mgs>,
    /// The gateway's JSON APIs (KMS for encrypted sessions).
    pub(crate) api: Arc<GatewayApi>,
    /// The agent's settings.
    pub(crate) config: Arc<AgentConfig>,
}

/// The result reported in `agent_task_complete`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Report {
    /// `FinalTaskStatus`.
    pub(crate) status: &'static str,
    /// `Output` (failure text).
    pub(crate) output: String,
}

impl Report {
    fn from_outcome(outcome: &PluginOutcome) -> Self {
        Self {
            status: outcome.status,
            output: outcome.output.clone(),
        }
    }

    /// A session that could not run.
    pub(crate) fn failed(output: impl Into<String>) -> Self {
        Self {
            status: task_status::FAILED,
            output: output.into(),
        }
    }

    fn cancelled() -> Self {
        Self::from_outcome(&PluginOutcome::cancelled())
    }
}

/// Why a session was ended from outside its plugin.
enum Interrupt {
    /// The data channel was closed by the service, or failed.
    Channel(DataEvent),
    /// Idle timeout or maximum duration (the reason text).
    TimedOut(String),
}

/// Runs the session in `request` until it ends or `cancel` fires; returns what to report.
pub(crate) async fn run(
    env: Arc<SessionEnv>,
    request: AgentTaskPayload,
    cancel: CancellationToken,
) -> Report {
    let span = tracing::info_span!("session", id = %request.session_id);
    let report = run_inner(env, request, cancel)
        .instrument(span.clone())
        .await;
    span.in_scope(
        || tracing::info!(status = report.status, output = %report.output, "session ended"),
    );
    report
}

async fn run_inner(
    env: Arc<SessionEnv>,
    request: AgentTaskPayload,
    cancel: CancellationToken,
) -> Report {
    let session_id = request.session_id.clone();
    let timing = &env.config.timing;
    let plan = match plan::plan(&request, &env.config) {
        Ok(plan) => plan,
        Err(reason) => {
            tracing::warn!("session refused: {reason}");
            return Report::failed(reason);
        }
    };
    tracing::info!(
        session_type = %plan.session_type,
        document = %request.document_name,
        owner = %request.session_owner,
        "session starting"
    );
    let transcript = env.config.log_dir.as_ref().and_then(|dir| {
        Transcript::create(dir, &session_id, &plan.session_type)
            .map_err(|e| tracing::warn!(dir = %dir.display(), "cannot write the session transcript: {e}"))
            .ok()
    });

    let opening = DataChannel::open(
        env.mgs.clone(),
        &session_id,
        timing.data_channel_backoff.clone(),
        timing.data_channel_retries,
    );
    let mut channel = tokio::select! {
        opened = opening => match opened {
            Ok(channel) => channel,
            Err(e) => return Report::failed(format!("cannot open the data channel: {e}")),
        },
        () = cancel.cancelled() => return Report::cancelled(),
    };
    let connected = AgentSessionState::message(&session_id, session_state::CONNECTED);
    if let Err(e) = channel.sender.send_message(connected).await {
        return Report::failed(format!("the data channel failed: {e}"));
    }

    let report = run_plugin(
        &env,
        &mut channel,
        plan,
        &session_id,
        transcript.clone(),
        &cancel,
    )
    .await;
    channel.close().await;
    if let Some(t) = &transcript {
        t.marker(&format!(
            "session ended: {} {}",
            report.status, report.output
        ));
        t.flush();
    }
    report
}

/// Handshake (if needed), the plugin, and the ending on an open data channel.
async fn run_plugin(
    env: &SessionEnv,
    channel: &mut DataChannel,
    plan: Plan,
    session_id: &str,
    transcript: Option<Transcript>,
    cancel: &CancellationToken,
) -> Report {
    let timing = &env.config.timing;
    let mut client_version = String::new();
    let mut max_payload = ChannelConfig::new(Role::Agent).max_payload;
    let mut ssmx_client = false;
    let mut cipher = None;
    if let Some(properties) = plan.handshake.clone() {
        let encryption = plan.kms_key_id.as_deref().map(|key_id| Encryption {
            key_id,
            session_id,
            instance_id: &env.config.registration.instance_id,
            api: &env.api,
        });
        let handshake = handshake::perform(
            channel,
            &plan.session_type,
            properties,
            encryption,
            |version| plan.customer_message(version),
            timing.handshake_timeout,
        );
        let result = tokio::select! {
            result = handshake => result,
            () = cancel.cancelled() => return Report::cancelled(),
        };
        match result {
            Ok(negotiated) => {
                tracing::info!(client_version = %negotiated.client_version, max_payload = ?negotiated.max_payload, encrypted = negotiated.cipher.is_some(), "handshake complete");
                client_version = negotiated.client_version;
                if let Some(agreed) = negotiated.max_payload {
                    max_payload = agreed;
                    ssmx_client = true;
                }
                cipher = negotiated.cipher;
            }
            Err(HandshakeError::Closed) => return Report::cancelled(),
            Err(HandshakeError::Failed(reason)) => return Report::failed(reason),
        }
    }

    let activity = Activity::new();
    let record_output = !matches!(plan.plugin, Plugin::Port(_));
    let sink: Arc<dyn OutputSink> = match cipher {
        Some(cipher) => {
            channel.decrypt_with(cipher.clone());
            let sink = EncryptedSink::new(channel.sender.clone(), cipher, max_payload);
            // Plugins cut their output so that each sealed piece fits one message.
            max_payload -= OVERHEAD;
            Arc::new(sink)
        }
        None => Arc::new(channel.sender.clone()),
    };
    let output = Output::new(sink, transcript, record_output, activity.clone());
    let (input_tx, input_rx) = mpsc::channel(INPUT_QUEUE);
    let plugin_cancel = cancel.child_token();
    let plugin_abort = CancellationToken::new();
    let ctx = PluginContext {
        output,
        input: input_rx,
        cancel: plugin_cancel.clone(),
        abort: plugin_abort.clone(),
        max_payload,
        client_version,
        ssmx_client,
        kill_grace: timing.kill_grace,
    };
    let (idle_timeout, max_duration) = (plan.idle_timeout, plan.max_duration);
    let plugin = async move {
        match plan.plugin {
            Plugin::Shell(spec) => shell::run(spec, ctx).await,
            Plugin::Command(spec) => command::run(spec, ctx).await,
            Plugin::Port(spec) => port::run(spec, ctx).await,
        }
    };

    let mut interrupt = None;
    let outcome = {
        let receive = receive(channel, input_tx, &activity);
        let watchdog = watchdog(idle_timeout, max_duration, &activity);
        tokio::pin!(plugin, receive, watchdog);
        let (mut receiving, mut watching) = (true, true);
        loop {
            tokio::select! {
                outcome = &mut plugin => break outcome,
                event = &mut receive, if receiving => {
                    receiving = false;
                    tracing::info!(?event, "data channel ended");
                    if matches!(event, DataEvent::Failed(_)) {
                        plugin_abort.cancel();
                    }
                    interrupt.get_or_insert(Interrupt::Channel(event));
                    plugin_cancel.cancel();
                }
                reason = &mut watchdog, if watching => {
                    watching = false;
                    tracing::info!("{reason}");
                    interrupt.get_or_insert(Interrupt::TimedOut(reason));
                    plugin_cancel.cancel();
                }
            }
        }
    };

    match interrupt {
        Some(Interrupt::Channel(DataEvent::Failed(reason))) => Report::failed(reason),
        Some(Interrupt::Channel(_)) => Report::cancelled(),
        Some(Interrupt::TimedOut(reason)) => Report {
            status: task_status::TIMED_OUT,
            output: reason,
        },
        None if cancel.is_cancelled() => Report::cancelled(),
        None => {
            // The session ended by itself: let the client acknowledge everything, then say so.
            drain(channel, timing.drain_timeout).await;
            if outcome.terminating {
                let terminating =
                    AgentSessionState::message(session_id, session_state::TERMINATING);
                if let Err(e) = channel.sender.send_message(terminating).await {
                    tracing::debug!("cannot send Terminating: {e}");
                }
            }
            Report::from_outcome(&outcome)
        }
    }
}

/// Feeds client payloads to the plugin until the channel closes or fails.
async fn receive(
    channel: &mut DataChannel,
    input: mpsc::Sender<Input>,
    activity: &Activity,
) -> DataEvent {
    loop {
        match channel.next().await {
            DataEvent::Payload(item) => {
                activity.touch();
                // A plugin that has finished no longer reads; its input is moot.
                let _ = input.send(item).await;
            }
            other => return other,
        }
    }
}

/// Waits up to `timeout` for the client to acknowledge all output, still reading (and dropping)
/// what it sends meanwhile so its acknowledgements keep flowing.
async fn drain(channel: &mut DataChannel, timeout: Duration) {
    let sender = channel.sender.clone();
    let discard = async { while let DataEvent::Payload(_) = channel.next().await {} };
    let flushed = tokio::time::timeout(timeout, async {
        tokio::select! {
            result = sender.flush() => result.is_ok(),
            () = discard => false,
        }
    })
    .await;
    if !matches!(flushed, Ok(true)) {
        tracing::debug!("output not fully acknowledged before closing");
    }
}

/// Resolves with a reason when the session has been idle for `idle` or running for `max`.
async fn watchdog(idle: Option<Duration>, max: Option<Duration>, activity: &Activity) -> String {
    let started = Instant::now();
    loop {
        let mut wait: Option<Duration> = None;
        if let Some(max) = max {
            let left = max.saturating_sub(started.elapsed());
            if left.is_zero() {
                return format!("Session reached its maximum duration of {}", describe(max));
            }
            wait = Some(left);
        }
        if let Some(idle) = idle {
            let left = idle.saturating_sub(activity.idle_for());
            if left.is_zero() {
                return format!("Session idle timeout of {} reached", describe(idle));
            }
            wait = Some(wait.map_or(left, |w| w.min(left)));
        }
        match wait {
            Some(wait) => tokio::time::sleep(wait).await,
            None => std::future::pending().await,
        }
    }
}

/// `20 minutes`, `1.5 seconds`.
fn describe(d: Duration) -> String {
    if d.as_secs() >= 60 && d.as_secs() % 60 == 0 {
        format!("{} minutes", d.as_secs() / 60)
    } else {
        format!("{} seconds", d.as_secs_f64())
    }
}
