//! The Message Gateway Service side (PROTOCOL.md §2, §10): CreateControlChannel and
//! CreateDataChannel (SigV4, 201 + XML), the agent's control-channel WebSocket, and the
//! data-channel WebSocket shared by agent and client (told apart by their token).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt as _, StreamExt as _};
use ssmx_protocol::payload::{
    create_channel_output_xml, from_json, to_json, AgentTaskAcknowledge, AgentTaskComplete,
    CreateChannelInput, OpenControlChannelInput, OpenDataChannelInput,
};
use ssmx_protocol::{AgentMessage, DecodeOptions, MessageType, PayloadType};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument as _};

use crate::api::authorize;
use crate::hub::{AgentLink, Caller, Hub};
use crate::malformed::{MalformedFrames, Verdict};
use crate::session::{Role, WRITE_TIMEOUT};
use crate::sigv4::RequestParts;
use crate::tokens::Purpose;

/// The SigV4 service name of the MGS endpoints.
const SERVICE_MGS: &str = "ssmmessages";

/// Largest WebSocket message accepted: the protocol crate's payload limit plus the header.
pub const MAX_MESSAGE: usize = ssmx_protocol::message::DEFAULT_MAX_PAYLOAD + 120;
/// Read buffer per WebSocket. The library allocates it up front (128 KiB by default); two
/// sockets per session at 16 KiB keep an idle session near the 64 KiB budget, and larger
/// messages still arrive whole (the buffer grows for them).
const READ_BUFFER: usize = 16 * 1024;
/// Time allowed between the upgrade and the Open…Channel text frame.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Frames queued for one control channel; control traffic is a few frames per session.
const CONTROL_QUEUE: usize = 64;
/// How often the gateway pings an agent's control channel.
const CONTROL_PING_INTERVAL: Duration = Duration::from_secs(30);
/// A control channel on which nothing (not even a pong) arrived this long is closed.
const CONTROL_SILENCE_LIMIT: Duration = Duration::from_secs(90);
/// The text `CreateDataChannel` fails with for an ended session; the official agent stops
/// retrying when it sees it (§12.3).
const SESSION_TERMINATED: &str = "Session is already terminated";

/// An MGS error answer: XML, as the agent parses it (`<AccessDeniedException>` is recognised).
struct MgsError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for MgsError {
    fn into_response(self) -> Response {
        let body = format!(
            "<{code}><Message>{}</Message></{code}>",
            self.message
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;"),
            code = self.code,
        );
        (
            self.status,
            [(http::header::CONTENT_TYPE, "application/xml")],
            body,
        )
            .into_response()
    }
}

fn mgs_error(status: StatusCode, code: &'static str, message: &str) -> MgsError {
    MgsError {
        status,
        code,
        message: message.to_owned(),
    }
}

fn access_denied(message: &str) -> MgsError {
    mgs_error(StatusCode::FORBIDDEN, "AccessDeniedException", message)
}

/// Verifies an MGS signature (service `ssmmessages`) and says whose it is.
fn authenticate(
    hub: &Hub,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    single_use: bool,
) -> Result<Caller, MgsError> {
    let parts = RequestParts {
        method,
        uri,
        headers,
        body,
    };
    hub.authenticate(parts, SERVICE_MGS, single_use)
        .map_err(|e| {
            info!(error = %e, path = uri.path(), "MGS request refused");
            access_denied(&e.to_string())
        })
}

/// Like [`authenticate`], for the calls only agents make; returns the agent's instance id.
fn authenticate_agent(
    hub: &Hub,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    single_use: bool,
) -> Result<String, MgsError> {
    match authenticate(hub, method, uri, headers, body, single_use)? {
        Caller::Agent { instance_id } => Ok(instance_id),
        Caller::User(_) => {
            info!(
                path = uri.path(),
                "MGS agent call signed by an API user refused"
            );
            Err(access_denied("only a registered agent may call this"))
        }
    }
}

fn parse_create_input(body: &[u8]) -> Result<CreateChannelInput, MgsError> {
    let input: CreateChannelInput = from_json("CreateChannel", body).map_err(|e| {
        mgs_error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            &e.to_string(),
        )
    })?;
    if input.message_schema_version != ssmx_protocol::payload::MESSAGE_SCHEMA_VERSION {
        return Err(mgs_error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "MessageSchemaVersion must be 1.0",
        ));
    }
    Ok(input)
}

fn created(token: &str) -> Response {
    (
        StatusCode::CREATED,
        [(http::header::CONTENT_TYPE, "application/xml")],
        create_channel_output_xml(token),
    )
        .into_response()
}

/// `POST /v1/control-channel/<instance-id>`.
pub(crate) async fn create_control_channel(
    State(hub): State<Arc<Hub>>,
    Path(instance_id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = match authenticate_agent(&hub, &method, &uri, &headers, &body, true) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    if caller != instance_id {
        return access_denied("the credential does not belong to this instance").into_response();
    }
    if let Err(r) = parse_create_input(&body) {
        return r.into_response();
    }
    let token = hub
        .tokens()
        .issue(Purpose::Control { instance_id }, Instant::now());
    created(&token)
}

/// `POST /v1/data-channel/<session-id>`.
pub(crate) async fn create_data_channel(
    State(hub): State<Arc<Hub>>,
    Path(session_id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = match authenticate_agent(&hub, &method, &uri, &headers, &body, true) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = parse_create_input(&body) {
        return r.into_response();
    }
    let Some(session) = hub.session(&session_id).filter(|s| !s.is_ended()) else {
        let refusal = match hub.store.session(&session_id) {
            Ok(Some(_)) => mgs_error(
                StatusCode::BAD_REQUEST,
                "ValidationException",
                SESSION_TERMINATED,
            ),
            Ok(None) => mgs_error(
                StatusCode::NOT_FOUND,
                "ResourceNotFoundException",
                "no such session",
            ),
            Err(e) => {
                warn!(error = %e, "session lookup failed");
                mgs_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalServerError",
                    "internal error",
                )
            }
        };
        return refusal.into_response();
    };
    if session.target != caller {
        return access_denied("the session belongs to another target").into_response();
    }
    let token = hub.tokens().issue(
        Purpose::AgentData {
            session_id,
            instance_id: caller,
        },
        Instant::now(),
    );
    created(&token)
}

fn configure(ws: WebSocketUpgrade) -> WebSocketUpgrade {
    ws.max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .read_buffer_size(READ_BUFFER)
}

/// `GET /v1/control-channel/<instance-id>?role=subscribe&stream=input` (WebSocket).
pub(crate) async fn control_channel_socket(
    State(hub): State<Arc<Hub>>,
    Path(instance_id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    // An upgrade grants nothing by itself (the token in the first frame does), and an agent
    // may reconnect within the same second, so upgrades are not single-use.
    let caller = match authenticate_agent(&hub, &method, &uri, &headers, &[], false) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    if caller != instance_id {
        return access_denied("the credential does not belong to this instance").into_response();
    }
    let guard = hub.tracker.token();
    let span = tracing::info_span!("control", instance = %instance_id);
    configure(ws)
        .on_upgrade(move |socket| {
            async move {
                run_control_channel(hub, instance_id, socket).await;
                drop(guard);
            }
            .instrument(span)
        })
        .into_response()
}

async fn first_text(socket: &mut WebSocket) -> Result<String, &'static str> {
    loop {
        match tokio::time::timeout(OPEN_TIMEOUT, socket.recv()).await {
            Err(_) => return Err("no Open frame within the time limit"),
            Ok(None) | Ok(Some(Err(_))) => return Err("socket closed before the Open frame"),
            Ok(Some(Ok(Message::Text(t)))) => return Ok(t.as_str().to_owned()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(_))) => return Err("the first frame must be the Open text frame"),
        }
    }
}

/// The close frame for a connection that keeps sending malformed frames.
fn garbage_close() -> CloseFrame {
    CloseFrame {
        code: crate::malformed::CLOSE_CODE,
        reason: crate::malformed::CLOSE_REASON.into(),
    }
}

/// What a failed read of a `channel` WebSocket answers the peer: a message over the size limit
/// is closed with 1009 and the limit, so the peer learns why; other failures (the connection is
/// gone or broken) leave nothing to say.
fn read_failed(channel: &'static str, error: &axum::Error) -> Option<CloseFrame> {
    let mut cause: Option<&dyn std::error::Error> = Some(error);
    let mut too_big = false;
    while let Some(e) = cause {
        let text = e.to_string();
        too_big |= text.contains("too long") || text.contains("Space limit exceeded");
        cause = e.source();
    }
    if too_big {
        info!(channel, error = %error, "closing a WebSocket that sent an oversized message");
        Some(CloseFrame {
            code: 1009,
            reason: format!("message larger than {MAX_MESSAGE} bytes").into(),
        })
    } else {
        debug!(channel, error = %error, "WebSocket read failed");
        None
    }
}

async fn refuse(mut socket: WebSocket, reason: &str) {
    info!(reason, "refusing WebSocket");
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: 1008,
            reason: reason.into(),
        })))
        .await;
}

async fn run_control_channel(hub: Arc<Hub>, instance_id: String, mut socket: WebSocket) {
    let open = match first_text(&mut socket).await {
        Ok(text) => text,
        Err(reason) => return refuse(socket, reason).await,
    };
    let open: OpenControlChannelInput = match from_json("OpenControlChannel", open.as_bytes()) {
        Ok(o) => o,
        Err(_) => return refuse(socket, "malformed OpenControlChannel").await,
    };
    let expected = Purpose::Control {
        instance_id: instance_id.clone(),
    };
    let claimed = hub
        .tokens()
        .claim(&open.token_value, Instant::now(), |p| p == &expected);
    if let Err(refusal) = claimed {
        return refuse(socket, &refusal.to_string()).await;
    }
    let conn_id = hub.next_conn_id();
    let (tx, mut rx) = mpsc::channel::<bytes::Bytes>(CONTROL_QUEUE);
    let close = CancellationToken::new();
    let heard = Arc::new(AtomicU64::new(
        crate::store::millis(SystemTime::now()) as u64
    ));
    hub.add_agent(
        &instance_id,
        AgentLink {
            conn_id,
            tx,
            close: close.clone(),
            heard: heard.clone(),
        },
    );
    if let Err(e) = hub.store.touch_instance(&instance_id) {
        warn!(error = %e, "cannot record the agent's last contact");
    }
    let _ = hub.store.audit(
        &instance_id,
        "ControlChannelOpened",
        &instance_id,
        "",
        &format!("agent {} on {}", open.agent_version, open.platform_type),
    );
    info!(conn_id, agent_version = %open.agent_version, "control channel open");
    let (mut sink, mut stream) = socket.split();
    let decode = DecodeOptions::default();
    let mut malformed = MalformedFrames::new("control");
    // The gateway pings too, so that a peer that is gone without closing (frozen, or cut off
    // by the network) is noticed: nothing heard for CONTROL_SILENCE_LIMIT closes the channel.
    let mut ping = tokio::time::interval(CONTROL_PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut last_heard = Instant::now();
    let close_frame = loop {
        tokio::select! {
            incoming = stream.next() => {
                if matches!(incoming, Some(Ok(_))) {
                    last_heard = Instant::now();
                    heard.store(crate::store::millis(SystemTime::now()) as u64, Ordering::Relaxed);
                }
                let data = match incoming {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Text(t))) => bytes::Bytes::copy_from_slice(t.as_str().as_bytes()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Err(e)) => break read_failed("control", &e),
                };
                let frame = match AgentMessage::decode_with(data, &decode) {
                    Ok(f) => f,
                    Err(e) => match malformed.record(Instant::now(), &e) {
                        Verdict::KeepOpen => continue,
                        Verdict::Close => break Some(garbage_close()),
                    },
                };
                if let Some(reply) = handle_control_frame(&hub, &instance_id, frame).await {
                    if !write_control(&mut sink, reply).await {
                        break None;
                    }
                }
            }
            outgoing = rx.recv() => {
                let Some(frame) = outgoing else { break None };
                if !write_control(&mut sink, frame).await {
                    break None;
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= CONTROL_SILENCE_LIMIT {
                    warn!(conn_id, "control channel silent too long; closing it");
                    break None;
                }
                let sent = tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::Ping(Default::default()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    break None;
                }
            }
            _ = close.cancelled() => break None,
            _ = hub.shutdown.cancelled() => break None,
        }
    };
    hub.remove_agent(&instance_id, conn_id);
    if let Some(frame) = close_frame {
        let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
    }
    let _ = sink.close().await;
    let _ = hub.store.touch_instance(&instance_id);
    let _ = hub
        .store
        .audit(&instance_id, "ControlChannelClosed", &instance_id, "", "");
    info!(conn_id, "control channel closed");
}

/// Writes one control frame; false when the socket is gone or stopped reading.
async fn write_control(
    sink: &mut futures::stream::SplitSink<WebSocket, Message>,
    frame: bytes::Bytes,
) -> bool {
    match tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::Binary(frame))).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            debug!(error = %e, "control channel write failed");
            false
        }
        Err(_) => {
            warn!("control channel write timed out; closing it");
            false
        }
    }
}

/// Reacts to one frame from an agent's control channel; returns the reply to send, if any.
async fn handle_control_frame(
    hub: &Hub,
    instance_id: &str,
    frame: AgentMessage,
) -> Option<bytes::Bytes> {
    match frame.message_type {
        MessageType::AgentTaskComplete => {
            let report: AgentTaskComplete = match from_json("agent_task_complete", &frame.payload) {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "ignoring malformed agent_task_complete");
                    return None;
                }
            };
            info!(session = %report.task_id, status = %report.final_task_status, retry = report.retry_number, "agent_task_complete");
            if let Some(session) = hub.session(&report.task_id) {
                if session.target == instance_id {
                    session.send_event(crate::session::Event::TaskComplete {
                        status: report.final_task_status.clone(),
                        output: report.output.clone(),
                    });
                }
            }
            let ack = AgentTaskAcknowledge {
                message_id: frame.message_id.hyphenated().to_string(),
                schema_version: 1,
                task_id: report.task_id,
                topic: MessageType::AgentTaskComplete.as_str().to_owned(),
            };
            Some(
                AgentMessage::new(
                    MessageType::AgentTaskAcknowledge,
                    PayloadType::Undefined,
                    to_json(&ack),
                )
                .to_bytes(),
            )
        }
        MessageType::AgentJobReply => {
            let reply = match from_json("agent_job_reply", &frame.payload) {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "ignoring malformed agent_job_reply");
                    return None;
                }
            };
            let message_id = frame.message_id.hyphenated().to_string();
            crate::commands::on_job_reply(hub, instance_id, message_id, reply).await
        }
        MessageType::AgentJobAck => {
            match from_json("agent_job_ack", &frame.payload) {
                Ok(ack) => crate::commands::on_job_ack(hub, instance_id, ack).await,
                Err(e) => warn!(error = %e, "ignoring malformed agent_job_ack"),
            }
            None
        }
        other => {
            debug!(message_type = %other, "control frame ignored");
            None
        }
    }
}

/// `GET /v1/data-channel/<session-id>?role=publish_subscribe` (WebSocket), agent or client.
pub(crate) async fn data_channel_socket(
    State(hub): State<Arc<Hub>>,
    Path(session_id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    // Agents sign the upgrade. Clients are authenticated by the token in their first frame;
    // some also sign the upgrade with their user's credentials, which must then verify, and
    // whose policies must allow them this session.
    let agent = if headers.contains_key(http::header::AUTHORIZATION) {
        match authenticate(&hub, &method, &uri, &headers, &[], false) {
            Ok(Caller::Agent { instance_id }) => Some(instance_id),
            Ok(Caller::User(user)) => {
                if let Err(e) = authorize::data_channel_upgrade(&hub, &user, &session_id) {
                    return access_denied(&e.message).into_response();
                }
                None
            }
            Err(r) => return r.into_response(),
        }
    } else {
        None
    };
    let guard = hub.tracker.token();
    let span = tracing::info_span!("data", session = %session_id, side = if agent.is_some() { "agent" } else { "client" });
    configure(ws)
        .on_upgrade(move |socket| {
            async move {
                run_data_channel(hub, session_id, agent, socket).await;
                drop(guard);
            }
            .instrument(span)
        })
        .into_response()
}

async fn run_data_channel(
    hub: Arc<Hub>,
    session_id: String,
    agent: Option<String>,
    mut socket: WebSocket,
) {
    let open = match first_text(&mut socket).await {
        Ok(text) => text,
        Err(reason) => return refuse(socket, reason).await,
    };
    let open: OpenDataChannelInput = match from_json("OpenDataChannel", open.as_bytes()) {
        Ok(o) => o,
        Err(_) => return refuse(socket, "malformed OpenDataChannel").await,
    };
    let fits = |purpose: &Purpose| match (purpose, &agent) {
        (Purpose::ClientData { session_id: s }, None) => s == &session_id,
        (
            Purpose::AgentData {
                session_id: s,
                instance_id,
            },
            Some(signer),
        ) => s == &session_id && instance_id == signer,
        _ => false,
    };
    let claimed = hub.tokens().claim(&open.token_value, Instant::now(), fits);
    let role = match claimed {
        Ok(Purpose::AgentData { .. }) => Role::Agent,
        Ok(_) => Role::Client,
        Err(refusal) => return refuse(socket, &refusal.to_string()).await,
    };
    let Some(session) = hub.session(&session_id).filter(|s| !s.is_ended()) else {
        return refuse(socket, SESSION_TERMINATED).await;
    };
    let conn_id = hub.next_conn_id();
    let (sink, mut stream) = socket.split();
    if !session.attach(role, conn_id, sink).await {
        return;
    }
    debug!(conn_id, ?role, client_id = %open.client_id, "data channel attached");
    let mut malformed = MalformedFrames::new("data");
    let relayed = hub.metrics.relayed_from(role);
    let close = loop {
        tokio::select! {
            incoming = stream.next() => match incoming {
                Some(Ok(msg @ (Message::Binary(_) | Message::Text(_)))) => {
                    let len = match &msg {
                        Message::Binary(b) => b.len(),
                        Message::Text(t) => t.len(),
                        _ => 0,
                    };
                    relayed.inc_by(len as u64);
                    if session.relay(role, msg, &mut malformed).await == Verdict::Close {
                        break Some(garbage_close());
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => break None,
                Some(Err(e)) => break read_failed("data", &e),
            },
            _ = session.cancel.cancelled() => break None,
        }
    };
    session.send_event(crate::session::Event::Detached(role, conn_id, close));
}
