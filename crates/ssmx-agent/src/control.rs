//! The control channel (PROTOCOL.md §10.1–§10.5): CreateControlChannel, the WebSocket with
//! OpenControlChannel, pings and the pong deadline, reconnects with back-off forever; incoming
//! `interactive_shell` / `channel_closed` / `agent_task_acknowledge`; outgoing
//! `agent_task_complete`, sent up to three times until acknowledged; Run Command's `agent_job` /
//! `agent_job_reply_ack` in, its acks and replies out (see [`crate::commands`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use rand::Rng;
use ssmx_protocol::command::AgentJobReplyAck;
use ssmx_protocol::payload::{
    from_json, to_json, AgentTaskAcknowledge, AgentTaskComplete, AgentTaskPayload, ChannelClosed,
    MgsPayload,
};
use ssmx_protocol::{AgentMessage, DecodeOptions, MessageType, PayloadType};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::agent::Sessions;
use crate::backoff::Backoff;
use crate::commands::{self, Engine, Outbox, Outgoing};
use crate::config::Timing;
use crate::error::AgentError;
use crate::mgs::{GatewaySocket, Mgs};
use crate::session::Report;

/// Payload of the agent's WebSocket pings (as the official agent).
const PING_PAYLOAD: &[u8] = b"keepalive";

/// One `agent_task_complete` until the service acknowledges it.
struct PendingReport {
    /// Kept across retries: the acknowledgement names it.
    message_id: Uuid,
    payload: AgentTaskComplete,
    sends: u32,
    /// When to send again (or give up); `None`: not sent on the current connection yet.
    due: Option<Instant>,
}

impl PendingReport {
    fn message(&self) -> AgentMessage {
        let mut payload = self.payload.clone();
        payload.retry_number = i64::from(self.sends);
        let mut msg = AgentMessage::new(
            MessageType::AgentTaskComplete,
            PayloadType::Undefined,
            to_json(&payload),
        );
        msg.message_id = self.message_id;
        msg
    }
}

/// Why a connected control channel ended.
enum Ended {
    /// The agent is stopping.
    Stopped,
    /// The connection failed; reopen it.
    Lost(String),
}

/// The control channel and its pending reports.
pub(crate) struct Control {
    mgs: Arc<Mgs>,
    sessions: Arc<Sessions>,
    reports: mpsc::Receiver<AgentTaskComplete>,
    pending: Vec<PendingReport>,
    timing: Timing,
    commands: Engine,
    outbox: Outbox,
    command_frames: mpsc::UnboundedReceiver<Outgoing>,
}

impl Control {
    /// A control channel for `mgs`, starting sessions in `sessions`, reporting what arrives on
    /// `reports`, running Run Command jobs with `commands`.
    pub(crate) fn new(
        mgs: Arc<Mgs>,
        sessions: Arc<Sessions>,
        reports: mpsc::Receiver<AgentTaskComplete>,
        timing: Timing,
        commands: commands::Settings,
    ) -> Self {
        let (commands, outbox, command_frames) = Engine::start(commands, timing.clone());
        Self {
            mgs,
            sessions,
            reports,
            pending: Vec::new(),
            timing,
            commands,
            outbox,
            command_frames,
        }
    }

    /// Keeps the control channel open until `stop`; then delivers what reports it still can.
    pub(crate) async fn run(mut self, stop: CancellationToken) {
        let mut delays = self.timing.control_backoff.start();
        let local_refused = Backoff {
            initial_min: self.timing.local_refused_initial,
            initial_max: self.timing.local_refused_initial * 2,
            ..self.timing.control_backoff.clone()
        };
        let mut local_delays = local_refused.start();
        while !stop.is_cancelled() {
            let attempt = tokio::select! {
                attempt = self.connect() => attempt,
                () = stop.cancelled() => break,
            };
            let pause = match attempt {
                Ok(socket) => {
                    delays.reset();
                    local_delays.reset();
                    tracing::info!("control channel open");
                    match self.serve(socket, &stop).await {
                        Ended::Stopped => break,
                        Ended::Lost(reason) => {
                            tracing::warn!("control channel lost: {reason}; reopening");
                            let max = self.timing.control_reopen_pause;
                            if max.is_zero() {
                                Duration::ZERO
                            } else {
                                rand::rng().random_range(Duration::ZERO..max)
                            }
                        }
                    }
                }
                Err(e) => {
                    let delay = if e.is_connection_refused() && self.mgs.gateway_is_local() {
                        local_delays.next_delay()
                    } else {
                        delays.next_delay()
                    };
                    tracing::warn!(?delay, "cannot open the control channel: {e}");
                    delay
                }
            };
            if !self.wait(pause, &stop).await {
                break;
            }
        }
        self.commands.shutdown().await;
        while let Ok(frame) = self.command_frames.try_recv() {
            self.outbox.push(frame);
        }
        self.outbox.persist_all();
        if self.outbox.unacknowledged() > 0 {
            tracing::info!(
                replies = self.outbox.unacknowledged(),
                "Run Command replies not acknowledged; kept for the next start"
            );
        }
        let undelivered = self.pending.len() + self.reports.len();
        if undelivered > 0 {
            tracing::warn!(
                undelivered,
                "agent stopped with session results not delivered"
            );
        }
    }

    /// Waits `pause` while collecting reports; false when `stop` fired.
    async fn wait(&mut self, pause: Duration, stop: &CancellationToken) -> bool {
        let deadline = Instant::now() + pause;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return true,
                () = stop.cancelled() => return false,
                Some(report) = self.reports.recv() => self.queue(report),
                Some(frame) = self.command_frames.recv() => self.outbox.push(frame),
            }
        }
    }

    fn queue(&mut self, payload: AgentTaskComplete) {
        self.pending.push(PendingReport {
            message_id: Uuid::new_v4(),
            payload,
            sends: 0,
            due: None,
        });
    }

    async fn connect(&self) -> Result<GatewaySocket, AgentError> {
        let token = self.mgs.create_control_channel().await?;
        self.mgs.connect_control_channel(&token).await
    }

    /// Serves one open control channel until it fails or the agent stops.
    async fn serve(&mut self, socket: GatewaySocket, stop: &CancellationToken) -> Ended {
        let (mut sink, mut stream) = socket.split();
        let opened = Instant::now();
        let mut read_deadline = opened + self.timing.ping_interval + self.timing.pong_timeout;
        let mut ping = tokio::time::interval_at(
            opened + self.timing.ping_interval,
            self.timing.ping_interval,
        );
        let mut stopping: Option<Instant> = None;
        for report in &mut self.pending {
            report.due = None;
        }
        self.outbox.reconnected();
        loop {
            if let Err(e) = self.send_due_reports(&mut sink).await {
                return Ended::Lost(e);
            }
            if let Err(e) = self.outbox.send_due(&mut sink).await {
                return Ended::Lost(e);
            }
            if stopping.is_some() && self.pending.is_empty() && self.reports.is_empty() {
                return Ended::Stopped;
            }
            let next_due = self.pending.iter().filter_map(|r| r.due).min();
            let wake = [next_due, stopping, self.outbox.next_due()]
                .into_iter()
                .flatten()
                .min();
            tokio::select! {
                () = stop.cancelled(), if stopping.is_none() => {
                    // Give queued and unacknowledged reports their full retry time.
                    let attempts = self.timing.task_complete_attempts.max(1);
                    stopping = Some(Instant::now() + self.timing.task_complete_ack_timeout * attempts);
                }
                () = sleep_until_opt(wake) => {
                    if stopping.is_some_and(|s| Instant::now() >= s) {
                        return Ended::Stopped;
                    }
                }
                () = tokio::time::sleep_until(read_deadline) => {
                    return Ended::Lost("no pong from the gateway in time".into());
                }
                _ = ping.tick() => {
                    if let Err(e) = sink.send(Message::Ping(Bytes::from_static(PING_PAYLOAD))).await {
                        return Ended::Lost(format!("ping failed: {e}"));
                    }
                }
                Some(report) = self.reports.recv() => self.queue(report),
                Some(frame) = self.command_frames.recv() => self.outbox.push(frame),
                frame = stream.next() => match frame {
                    Some(Ok(Message::Binary(data))) => self.handle_frame(data),
                    Some(Ok(Message::Text(text))) => self.handle_frame(Bytes::from(text)),
                    Some(Ok(Message::Pong(_))) => read_deadline = Instant::now() + self.timing.pong_timeout,
                    Some(Ok(Message::Close(frame))) => {
                        return Ended::Lost(format!("closed by the gateway ({frame:?})"));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Ended::Lost(e.to_string()),
                    None => return Ended::Lost("connection closed".into()),
                },
            }
        }
    }

    /// Sends every report that is due; drops those out of attempts.
    async fn send_due_reports(
        &mut self,
        sink: &mut (impl SinkExt<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin),
    ) -> Result<(), String> {
        let now = Instant::now();
        let attempts = self.timing.task_complete_attempts;
        self.pending.retain(|r| {
            let expired = r.sends >= attempts && r.due.is_some_and(|d| d <= now);
            if expired {
                tracing::warn!(session = %r.payload.task_id, "agent_task_complete never acknowledged; giving up");
            }
            !expired
        });
        for report in &mut self.pending {
            if report.due.is_some_and(|d| d > now) || report.sends >= attempts {
                continue;
            }
            report.sends += 1;
            report.due = Some(now + self.timing.task_complete_ack_timeout);
            let frame = report.message().to_bytes();
            tracing::debug!(session = %report.payload.task_id, attempt = report.sends, "sending agent_task_complete");
            sink.send(Message::Binary(frame))
                .await
                .map_err(|e| format!("cannot send agent_task_complete: {e}"))?;
        }
        Ok(())
    }

    fn handle_frame(&mut self, frame: Bytes) {
        let options = DecodeOptions::default();
        let msg = match AgentMessage::decode_with(frame, &options) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!("dropping a malformed control-channel frame: {e}");
                return;
            }
        };
        match msg.message_type {
            MessageType::InteractiveShell => self.start_session(&msg.payload),
            MessageType::ChannelClosed => {
                match from_json::<ChannelClosed>("channel_closed", &msg.payload) {
                    Ok(closed) if !closed.session_id.is_empty() => {
                        self.sessions.cancel(&closed.session_id)
                    }
                    Ok(_) => tracing::warn!("channel_closed without a SessionId; ignored"),
                    Err(e) => tracing::warn!("{e}"),
                }
            }
            MessageType::AgentTaskAcknowledge => {
                match from_json::<AgentTaskAcknowledge>("agent_task_acknowledge", &msg.payload) {
                    Ok(ack) => {
                        let before = self.pending.len();
                        self.pending.retain(|r| {
                            r.message_id.to_string() != ack.message_id.to_ascii_lowercase()
                        });
                        if self.pending.len() == before {
                            tracing::debug!(message_id = %ack.message_id, "acknowledgement for nothing pending");
                        }
                    }
                    Err(e) => tracing::warn!("{e}"),
                }
            }
            MessageType::AgentJob => self.commands.submit(&msg),
            MessageType::AgentJobReplyAck => {
                match from_json::<AgentJobReplyAck>("agent_job_reply_ack", &msg.payload) {
                    Ok(ack) => self.outbox.acknowledge(&ack),
                    Err(e) => tracing::warn!("{e}"),
                }
            }
            other => tracing::debug!(message_type = %other, "ignoring control-channel message"),
        }
    }

    fn start_session(&mut self, payload: &[u8]) {
        match AgentTaskPayload::from_message_payload(payload) {
            Ok(request) if !request.session_id.is_empty() => self.sessions.start(request),
            Ok(_) => tracing::warn!("interactive_shell without a SessionId; ignored"),
            Err(e) => {
                // Report the failure when the envelope at least names the session.
                let task_id = from_json::<MgsPayload>("interactive_shell", payload)
                    .map(|p| p.task_id)
                    .unwrap_or_default();
                tracing::warn!(session = %task_id, "cannot start a session: {e}");
                if !task_id.is_empty() {
                    self.sessions.spawn_report(
                        task_id,
                        Report::failed(format!("invalid session request: {e}")),
                    );
                }
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
