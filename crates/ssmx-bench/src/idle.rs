//! Concurrency: many idle port sessions held open on one gateway, its memory before and after.
//!
//! No plugin process per session: each session is one data-channel WebSocket of ours (dialled
//! from StreamUrl, OpenDataChannel as the official client sends it) that answers the agent's
//! handshake through `ssmx-channel` and then stays quiet. Port sessions in multiplexed mode dial
//! nothing until a stream opens, so the agent's side of each session stays cheap too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use ssmx_channel::{ChannelConfig, ChannelEvent, Receiver, Role, Sender, Transport};
use ssmx_protocol::payload::{
    action_type, to_json, ActionStatus, HandshakeRequest, HandshakeResponse, OpenDataChannelInput,
    ProcessedClientAction, MESSAGE_SCHEMA_VERSION,
};
use ssmx_protocol::version::CLIENT_VERSION;
use ssmx_protocol::PayloadType;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use super::stack::{memory, Api, SessionRequest};

/// Sessions being opened at once: enough to keep both processes busy on two cores without
/// queueing hundreds of handshakes behind each other (the agent's handshake timer is 15 s).
const OPEN_CONCURRENCY: usize = 16;
/// Hang guard for opening one session (StartSession, dial, handshake).
const OPEN_DEADLINE: Duration = Duration::from_secs(30);
/// Pause between the last handshake and the memory reading, so bookkeeping that follows a
/// session's start (database writes, buffers returned) is counted.
const SETTLE: Duration = Duration::from_secs(1);
/// The document of the idle sessions.
const PORT_DOCUMENT: &str = "AWS-StartPortForwardingSession";

/// Figures of the idle-session run.
#[derive(Clone, Debug, Serialize)]
pub struct IdleReport {
    /// Sessions opened and held at the time of the reading.
    pub sessions: usize,
    /// Gateway VmRSS before the first session, KiB.
    pub gateway_rss_before_kib: u64,
    /// Gateway VmRSS with every session open, KiB.
    pub gateway_rss_after_kib: u64,
    /// Gateway growth per session, KiB.
    pub gateway_kib_per_session: f64,
    /// Agent VmRSS before, KiB.
    pub agent_rss_before_kib: u64,
    /// Agent VmRSS with every session open, KiB.
    pub agent_rss_after_kib: u64,
    /// Agent growth per session, KiB.
    pub agent_kib_per_session: f64,
    /// Seconds to open all of them.
    pub open_seconds: f64,
}

/// Opens `count` idle port sessions to `target`, reads the gateway's and agent's memory, then
/// terminates them all.
pub async fn measure(
    api: &Api,
    target: &str,
    count: usize,
    gateway_pid: u32,
    agent_pid: u32,
) -> anyhow::Result<IdleReport> {
    let destination = Destination::start().await?;
    let request = SessionRequest {
        target: target.to_owned(),
        document_name: Some(PORT_DOCUMENT.to_owned()),
        parameters: BTreeMap::from([("portNumber".to_owned(), vec![destination.port.to_string()])]),
        reason: String::new(),
    };
    let client_id = uuid::Uuid::new_v4().to_string();
    let gateway_before = memory(gateway_pid)?;
    let agent_before = memory(agent_pid)?;

    let started = std::time::Instant::now();
    let gate = Arc::new(Semaphore::new(OPEN_CONCURRENCY));
    let (ready_tx, mut ready_rx) = mpsc::channel(count.max(1));
    let mut holders = JoinSet::new();
    for n in 1..=count {
        let (api, client_id) = (api.clone(), client_id.clone());
        let request = SessionRequest {
            reason: format!("ssmx bench idle session {n}"),
            ..request.clone()
        };
        let (gate, ready) = (gate.clone(), ready_tx.clone());
        holders.spawn(async move {
            let Ok(permit) = gate.acquire_owned().await else {
                return;
            };
            let opened = tokio::time::timeout(OPEN_DEADLINE, open(&api, &request, &client_id))
                .await
                .unwrap_or_else(|_| bail!("opening a session took over {OPEN_DEADLINE:?}"));
            drop(permit);
            match opened {
                Ok((session_id, _sender, mut receiver)) => {
                    if ready.send(Ok(session_id)).await.is_ok() {
                        // Hold the session: keep its channel driven until the task is aborted.
                        while receiver.recv().await.is_some() {}
                    }
                }
                Err(e) => {
                    let _ = ready.send(Err(e)).await;
                }
            }
        });
    }
    drop(ready_tx);
    let mut session_ids = Vec::with_capacity(count);
    while session_ids.len() < count {
        match ready_rx.recv().await {
            Some(Ok(id)) => session_ids.push(id),
            Some(Err(e)) => {
                return Err(e.context(format!(
                    "idle session {} of {count} failed to open",
                    session_ids.len() + 1
                )))
            }
            None => bail!("idle-session tasks ended early"),
        }
    }
    let open_seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let gateway_after = memory(gateway_pid)?;
    let agent_after = memory(agent_pid)?;

    let terminated = futures::stream::iter(&session_ids)
        .map(|id| api.terminate_session(id))
        .buffer_unordered(OPEN_CONCURRENCY)
        .filter_map(|r| async move { r.err() })
        .collect::<Vec<_>>()
        .await;
    if let Some(e) = terminated.first() {
        tracing::warn!(
            failures = terminated.len(),
            "terminating the idle sessions: {e:#}"
        );
    }
    holders.shutdown().await;
    drop(destination);

    let per_session =
        |before: u64, after: u64| (after as f64 - before as f64) / count.max(1) as f64;
    Ok(IdleReport {
        sessions: count,
        gateway_rss_before_kib: gateway_before.rss_kib,
        gateway_rss_after_kib: gateway_after.rss_kib,
        gateway_kib_per_session: per_session(gateway_before.rss_kib, gateway_after.rss_kib),
        agent_rss_before_kib: agent_before.rss_kib,
        agent_rss_after_kib: agent_after.rss_kib,
        agent_kib_per_session: per_session(agent_before.rss_kib, agent_after.rss_kib),
        open_seconds,
    })
}

/// Starts one session and completes its handshake; returns the live channel.
async fn open(
    api: &Api,
    request: &SessionRequest,
    client_id: &str,
) -> anyhow::Result<(String, Sender, Receiver)> {
    let response = api.start_session(request).await?;
    let (mut ws, _) = tokio_tungstenite::connect_async(response.stream_url.as_str())
        .await
        .with_context(|| format!("cannot open the data channel {}", response.stream_url))?;
    let open = OpenDataChannelInput {
        message_schema_version: MESSAGE_SCHEMA_VERSION.to_owned(),
        request_id: uuid::Uuid::new_v4().to_string(),
        token_value: response.token_value.clone(),
        client_instance_id: None,
        client_id: client_id.to_owned(),
        client_version: Some(CLIENT_VERSION.to_owned()),
    };
    ws.send(Message::Text(serde_json::to_string(&open)?.into()))
        .await
        .context("cannot send OpenDataChannel")?;
    let (sender, mut receiver) = ssmx_channel::spawn(
        ChannelConfig::new(Role::Client),
        Transport::from_websocket(ws),
    );
    loop {
        match receiver.recv().await {
            Some(ChannelEvent::Payload {
                payload_type: PayloadType::HandshakeRequest,
                payload,
            }) => {
                let request: HandshakeRequest =
                    ssmx_protocol::payload::from_json("handshake request", &payload)?;
                sender
                    .send(
                        PayloadType::HandshakeResponse,
                        to_json(&handshake_response(&request)),
                    )
                    .await?;
            }
            Some(ChannelEvent::Payload {
                payload_type: PayloadType::HandshakeComplete,
                ..
            }) => return Ok((response.session_id, sender, receiver)),
            Some(ChannelEvent::Payload { .. }) | Some(ChannelEvent::Message(_)) => {}
            Some(ChannelEvent::TransportLost(e)) => bail!("data channel lost: {e}"),
            Some(ChannelEvent::Closed(closed)) => {
                bail!("the gateway closed the session: {:?}", closed.output)
            }
            Some(ChannelEvent::Failed(e)) => bail!("data channel failed: {e}"),
            None => bail!("data channel ended during the handshake"),
        }
    }
}

/// Accepts the session type; declines anything else (no KMS in the benchmark's documents).
fn handshake_response(request: &HandshakeRequest) -> HandshakeResponse {
    HandshakeResponse {
        client_version: CLIENT_VERSION.to_owned(),
        processed_client_actions: request
            .requested_client_actions
            .iter()
            .map(|action| {
                let supported = action.action_type == action_type::SESSION_TYPE;
                ProcessedClientAction {
                    action_type: action.action_type.clone(),
                    action_status: if supported {
                        ActionStatus::Success
                    } else {
                        ActionStatus::Unsupported
                    },
                    action_result: serde_json::Value::Null,
                    error: if supported {
                        String::new()
                    } else {
                        format!(
                            "{} is not supported by the benchmark client",
                            action.action_type
                        )
                    },
                }
            })
            .collect(),
        errors: None,
        ssmx_capabilities: None,
    }
}

/// The port the idle sessions point at. It accepts and holds whatever the agent dials (nothing
/// in multiplexed mode; one connection per session in basic mode).
struct Destination {
    port: u16,
    tasks: JoinSet<()>,
}

impl Destination {
    async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind the idle sessions' destination port")?;
        let port = listener.local_addr()?.port();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        Ok(Self { port, tasks })
    }
}

impl Drop for Destination {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use ssmx_protocol::payload::{
        KmsEncryptionParameters, RequestedClientAction, SessionTypeParameters,
    };

    use super::*;

    #[test]
    fn handshake_accepts_the_session_type_and_declines_kms() {
        let request = HandshakeRequest {
            agent_version: "3.3.2000.0".into(),
            requested_client_actions: vec![
                RequestedClientAction::session_type(&SessionTypeParameters {
                    session_type: "Port".into(),
                    properties: serde_json::json!({"portNumber": "80"}),
                }),
                RequestedClientAction::kms_encryption(&KmsEncryptionParameters {
                    kms_key_id: "k".into(),
                    challenge: None,
                }),
            ],
            ssmx_capabilities: None,
        };
        let response = handshake_response(&request);
        assert_eq!(response.client_version, CLIENT_VERSION);
        let statuses: Vec<_> = response
            .processed_client_actions
            .iter()
            .map(|a| (a.action_type.as_str(), a.action_status, a.error.is_empty()))
            .collect();
        assert_eq!(
            statuses,
            [
                ("SessionType", ActionStatus::Success, true),
                ("KMSEncryption", ActionStatus::Unsupported, false),
            ]
        );
    }
}
