//! The agent against the official client's recorded frames (crates/ssmx-protocol/tests/data/
//! transcripts): a small MGS stand-in in this test replays what the official client sent and
//! records what our agent sends, which is compared with what the official agent sent in the
//! same conversation — message types, sequence numbers, flags, payload types, JSON field order,
//! acknowledgements byte for byte. Also the control channel's own duties: unknown session types,
//! `channel_closed`, `agent_task_complete` retries, reconnects.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use serde_json::Value;
use ssmx_agent::{Agent, AgentConfig, Backoff, Registration};
use ssmx_protocol::payload::{
    create_channel_output_xml, to_json, Acknowledge, AgentTaskAcknowledge, AgentTaskPayload,
    ChannelClosed,
};
use ssmx_protocol::{AgentMessage, MessageType, PayloadType};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};

const INSTANCE_ID: &str = "mi-0123456789abcdef0";
const STEP: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Transcripts

struct Transcript {
    events: Vec<Value>,
}

impl Transcript {
    fn load(name: &str) -> Self {
        let path = format!(
            "{}/../ssmx-protocol/tests/data/transcripts/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        Self {
            events: json["events"].as_array().unwrap().clone(),
        }
    }

    /// Binary frames on `channel` going `direction`, as raw bytes.
    fn frames(&self, channel: &str, direction: &str) -> Vec<Bytes> {
        self.events
            .iter()
            .filter(|e| {
                e["channel"] == channel && e["direction"] == direction && e["ws_opcode"] == "binary"
            })
            .map(|e| Bytes::from(hex::decode(e["hex"].as_str().unwrap()).unwrap()))
            .collect()
    }

    /// The first text frame on `channel` going `direction`, verbatim.
    fn text(&self, channel: &str, direction: &str) -> String {
        let event = self
            .events
            .iter()
            .find(|e| {
                e["channel"] == channel && e["direction"] == direction && e["ws_opcode"] == "text"
            })
            .expect("text frame recorded");
        event["text"].as_str().unwrap().to_owned()
    }

    /// The official agent's data-channel messages.
    fn agent_data(&self) -> Vec<AgentMessage> {
        decode_all(self.frames("agent-data", "agent->gw"))
    }

    /// The official client's stream messages, as the agent received them.
    fn client_inputs(&self) -> Vec<Bytes> {
        self.frames("agent-data", "gw->agent")
            .into_iter()
            .filter(|f| decode(f.clone()).message_type == MessageType::InputStreamData)
            .collect()
    }

    /// The official agent's control-channel message of `message_type`.
    fn agent_control(&self, message_type: &MessageType) -> AgentMessage {
        decode_all(self.frames("agent-control", "agent->gw"))
            .into_iter()
            .find(|m| &m.message_type == message_type)
            .expect("control message recorded")
    }

    fn interactive_shell(&self) -> Bytes {
        self.frames("agent-control", "gw->agent")
            .into_iter()
            .find(|f| decode(f.clone()).message_type == MessageType::InteractiveShell)
            .expect("interactive_shell recorded")
    }
}

fn decode(frame: Bytes) -> AgentMessage {
    AgentMessage::decode(frame).expect("valid frame")
}

fn decode_all(frames: Vec<Bytes>) -> Vec<AgentMessage> {
    frames.into_iter().map(decode).collect()
}

/// Top-level JSON keys in the order they appear in the text.
fn key_order(json: &[u8]) -> Vec<String> {
    let value: serde_json::Map<String, Value> = serde_json::from_slice(json).unwrap();
    let text = std::str::from_utf8(json).unwrap();
    let mut keys: Vec<(usize, String)> = value
        .keys()
        .map(|k| (text.find(&format!("\"{k}\":")).unwrap(), k.clone()))
        .collect();
    keys.sort();
    keys.into_iter().map(|(_, k)| k).collect()
}

// ---------------------------------------------------------------------------------------------
// A minimal MGS: REST calls answered, WebSockets handed to the test.

/// One WebSocket the agent opened.
struct Peer {
    path: String,
    first_text: String,
    to_agent: mpsc::UnboundedSender<Message>,
    from_agent: mpsc::UnboundedReceiver<Message>,
}

impl Peer {
    fn send(&self, frame: Bytes) {
        self.to_agent.send(Message::Binary(frame)).unwrap();
    }

    /// The next binary frame from the agent; `None` when its socket ended.
    async fn recv(&mut self) -> Option<AgentMessage> {
        loop {
            let message = tokio::time::timeout(STEP, self.from_agent.recv())
                .await
                .expect("agent frame in time")?;
            match message {
                Message::Binary(b) => return Some(decode(b)),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// The next message of `message_type`, skipping others.
    async fn recv_type(&mut self, message_type: MessageType) -> AgentMessage {
        loop {
            let msg = self.recv().await.expect("socket open");
            if msg.message_type == message_type {
                return msg;
            }
        }
    }
}

#[derive(Clone)]
struct MgsState {
    peers: mpsc::UnboundedSender<Peer>,
    control_creates: Arc<AtomicUsize>,
    /// CreateDataChannel answers that the session is over.
    refuse_data: Arc<AtomicBool>,
}

struct FakeMgs {
    url: String,
    peers: mpsc::UnboundedReceiver<Peer>,
    control_creates: Arc<AtomicUsize>,
    refuse_data: Arc<AtomicBool>,
    _server: tokio::task::JoinHandle<()>,
}

impl FakeMgs {
    async fn start() -> Self {
        let (peers_tx, peers) = mpsc::unbounded_channel();
        let control_creates = Arc::new(AtomicUsize::new(0));
        let refuse_data = Arc::new(AtomicBool::new(false));
        let state = MgsState {
            peers: peers_tx,
            control_creates: control_creates.clone(),
            refuse_data: refuse_data.clone(),
        };
        let app = Router::new()
            .route("/", post(|| async { "{}" }))
            .route(
                "/v1/control-channel/{id}",
                post(create_control).get(upgrade),
            )
            .route("/v1/data-channel/{id}", post(create_data).get(upgrade))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            peers,
            control_creates,
            refuse_data,
            _server: server,
        }
    }

    /// From now on, data channels cannot be (re)opened: the service says the session is over.
    fn refuse_data_channels(&self) {
        self.refuse_data.store(true, Ordering::SeqCst);
    }

    async fn next_peer(&mut self) -> Peer {
        tokio::time::timeout(STEP, self.peers.recv())
            .await
            .expect("the agent opens a WebSocket in time")
            .unwrap()
    }

    /// Runs an agent against this MGS until the returned sender is used or dropped.
    fn start_agent(&self) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        if let Ok(filter) = std::env::var("SSMX_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let registration = Registration {
            gateway_url: self.url.clone(),
            instance_id: INSTANCE_ID.into(),
            region: "us-east-1".into(),
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "secret".into(),
        };
        let mut config = AgentConfig::new(registration);
        config.shell = Some("/bin/sh".into());
        config.timing.control_backoff = Backoff {
            initial_min: Duration::from_millis(20),
            initial_max: Duration::from_millis(40),
            multiplier: 2.0,
            jitter: 0.0,
            cap: Duration::from_millis(200),
        };
        config.timing.control_reopen_pause = Duration::from_millis(50);
        config.timing.task_complete_ack_timeout = Duration::from_millis(300);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            Agent::new(config)
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        (stop, task)
    }
}

async fn create_control(State(state): State<MgsState>) -> Response {
    state.control_creates.fetch_add(1, Ordering::SeqCst);
    (
        StatusCode::CREATED,
        create_channel_output_xml("control-token"),
    )
        .into_response()
}

async fn create_data(State(state): State<MgsState>) -> Response {
    if state.refuse_data.load(Ordering::SeqCst) {
        return (StatusCode::BAD_REQUEST, "Session is already terminated").into_response();
    }
    (StatusCode::CREATED, create_channel_output_xml("data-token")).into_response()
}

async fn upgrade(
    State(state): State<MgsState>,
    uri: axum::http::Uri,
    ws: WebSocketUpgrade,
) -> Response {
    let path = uri.to_string();
    ws.on_upgrade(move |socket| bridge(socket, path, state))
}

async fn bridge(mut socket: WebSocket, path: String, state: MgsState) {
    let first_text = match socket.recv().await {
        Some(Ok(Message::Text(t))) => t.to_string(),
        other => panic!("expected the Open…Channel text frame first, got {other:?}"),
    };
    let (to_agent, mut outgoing) = mpsc::unbounded_channel();
    let (incoming, from_agent) = mpsc::unbounded_channel();
    let _ = state.peers.send(Peer {
        path,
        first_text,
        to_agent,
        from_agent,
    });
    loop {
        tokio::select! {
            out = outgoing.recv() => match out {
                Some(Message::Close(_)) | None => return,
                Some(message) => {
                    if socket.send(message).await.is_err() {
                        return;
                    }
                }
            },
            inc = socket.recv() => match inc {
                Some(Ok(message)) => {
                    let _ = incoming.send(message);
                }
                _ => {
                    let _ = incoming.send(Message::Close(None));
                    return;
                }
            },
        }
    }
}

/// Plays the official client on `data`: acknowledges every agent stream message as the official
/// client does and sends `inputs` (recorded client frames) in order, holding back those for which
/// `hold` says so until `release` returns true for the output seen so far. Returns every message
/// the agent sent until it closed the socket.
async fn play_client(
    data: &mut Peer,
    inputs: Vec<Bytes>,
    hold: impl Fn(&AgentMessage) -> bool,
    release: impl Fn(&[AgentMessage]) -> bool,
) -> Vec<AgentMessage> {
    let mut held = Vec::new();
    for frame in inputs {
        if hold(&decode(frame.clone())) || !held.is_empty() {
            held.push(frame);
        } else {
            data.send(frame);
        }
    }
    let mut seen = Vec::new();
    while let Some(msg) = data.recv().await {
        if msg.message_type == MessageType::OutputStreamData {
            data.send(Acknowledge::of(&msg).to_message().to_bytes());
        }
        seen.push(msg);
        if !held.is_empty() && release(&seen) {
            for frame in held.drain(..) {
                data.send(frame);
            }
        }
    }
    seen
}

/// Non-stream messages (other than acknowledgements) in order, as (type, flags, payload type).
fn session_states(messages: &[AgentMessage]) -> Vec<(String, u64, String)> {
    messages
        .iter()
        .filter(|m| m.message_type == MessageType::AgentSessionState)
        .map(|m| {
            let json: Value = serde_json::from_slice(&m.payload).unwrap();
            (
                json["SessionState"].as_str().unwrap().to_owned(),
                m.flags,
                String::from_utf8(m.payload.to_vec()).unwrap(),
            )
        })
        .collect()
}

/// The acknowledgements' payloads, sorted (they name the client's frames, so they must match).
fn acks(messages: &[AgentMessage]) -> Vec<(u64, Bytes)> {
    let mut acks: Vec<(u64, Bytes)> = messages
        .iter()
        .filter(|m| m.message_type == MessageType::Acknowledge)
        .map(|m| (m.flags, m.payload.clone()))
        .collect();
    acks.sort();
    acks.dedup();
    acks
}

fn stream(messages: &[AgentMessage]) -> Vec<&AgentMessage> {
    messages
        .iter()
        .filter(|m| m.message_type == MessageType::OutputStreamData)
        .collect()
}

/// Answers `agent_task_complete` and checks it is byte-identical to the official agent's.
async fn expect_task_complete(control: &mut Peer, transcript: &Transcript) {
    let ours = control.recv_type(MessageType::AgentTaskComplete).await;
    let official = transcript.agent_control(&MessageType::AgentTaskComplete);
    assert_eq!(ours.flags, official.flags);
    assert_eq!(ours.sequence_number, 0);
    assert_eq!(
        ours.payload, official.payload,
        "agent_task_complete differs from the official agent's"
    );
    acknowledge_task(control, &ours);
}

fn acknowledge_task(control: &Peer, complete: &AgentMessage) {
    let payload: Value = serde_json::from_slice(&complete.payload).unwrap();
    let ack = AgentTaskAcknowledge {
        message_id: complete.message_id.to_string(),
        schema_version: 1,
        task_id: payload["TaskId"].as_str().unwrap().to_owned(),
        topic: "agent_task_complete".into(),
    };
    let msg = AgentMessage::new(
        MessageType::AgentTaskAcknowledge,
        PayloadType::Undefined,
        to_json(&ack),
    );
    control.send(msg.to_bytes());
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_frames_match_the_official_agent() {
    let mut mgs = FakeMgs::start().await;
    let (stop, agent) = mgs.start_agent();
    let control = mgs.next_peer().await;
    assert_eq!(
        control.path,
        format!("/v1/control-channel/{INSTANCE_ID}?role=subscribe&stream=input")
    );
    let startup = Transcript::load("agent-startup-control-channel.json");
    let official_text = startup.text("agent-control", "agent->gw");
    let official: Value = serde_json::from_str(&official_text).unwrap();
    let ours: Value = serde_json::from_str(&control.first_text).unwrap();
    assert_eq!(
        key_order(control.first_text.as_bytes()),
        key_order(official_text.as_bytes())
    );
    assert_eq!(ours["Cookie"], Value::Null);
    assert_eq!(ours["MessageSchemaVersion"], "1.0");
    assert_eq!(ours["TokenValue"], "control-token");
    assert_eq!(ours["PlatformType"], official["PlatformType"]);
    assert_eq!(ours["AgentVersion"].as_str().unwrap().split('.').count(), 4);
    stop.send(()).unwrap();
    agent.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_interactive_command_matches_the_official_agent() {
    let transcript = Transcript::load("noninteractive-command-separate-output.json");
    let mut mgs = FakeMgs::start().await;
    let (stop, agent) = mgs.start_agent();
    let mut control = mgs.next_peer().await;
    control.send(transcript.interactive_shell());
    let mut data = mgs.next_peer().await;
    assert_eq!(data.path, "/v1/data-channel/nic-01?role=publish_subscribe");
    let official_open = transcript.text("agent-data", "agent->gw");
    assert_eq!(
        key_order(data.first_text.as_bytes()),
        key_order(official_open.as_bytes())
    );
    let open: Value = serde_json::from_str(&data.first_text).unwrap();
    assert_eq!(open["ClientInstanceId"], INSTANCE_ID);
    assert_eq!(open["ClientId"], "");

    let ours = play_client(&mut data, transcript.client_inputs(), |_| false, |_| true).await;
    let official = transcript.agent_data();
    assert_eq!(session_states(&ours), session_states(&official));
    assert_eq!(
        acks(&ours),
        acks(&official),
        "acknowledgements of the client's frames"
    );
    let (ours, official) = (stream(&ours), stream(&official));
    let headers = |s: &[&AgentMessage]| -> Vec<(i64, u64, PayloadType)> {
        s.iter()
            .map(|m| (m.sequence_number, m.flags, m.payload_type))
            .filter(|(_, _, t)| *t != PayloadType::Output && *t != PayloadType::StdErr)
            .collect()
    };
    assert_eq!(headers(&ours), headers(&official));
    // HandshakeRequest: the official JSON plus our capabilities offer.
    let mut request: Value = serde_json::from_slice(&ours[0].payload).unwrap();
    assert!(request
        .as_object_mut()
        .unwrap()
        .remove("SsmxCapabilities")
        .is_some());
    let official_request: Value = serde_json::from_slice(&official[0].payload).unwrap();
    assert_eq!(
        request["RequestedClientActions"],
        official_request["RequestedClientActions"]
    );
    let ours_keys = key_order(&ours[0].payload);
    assert_eq!(&ours_keys[..2], &key_order(&official[0].payload)[..]);
    assert_eq!(key_order(&ours[1].payload), key_order(&official[1].payload));
    // Output and StdErr (their relative order is not defined) and the final exit code.
    let bodies = |s: &[&AgentMessage]| -> BTreeMap<String, Vec<u8>> {
        let mut by_type: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for m in s.iter().filter(|m| !m.payload_type.is_handshake()) {
            by_type
                .entry(format!("{:?}", m.payload_type))
                .or_default()
                .extend_from_slice(&m.payload);
        }
        by_type
    };
    assert_eq!(bodies(&ours), bodies(&official));
    assert_eq!(ours.last().unwrap().payload_type, PayloadType::ExitCode);
    expect_task_complete(&mut control, &transcript).await;
    stop.send(()).unwrap();
    agent.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_session_matches_the_official_agent() {
    let transcript = Transcript::load("shell-standard-stream.json");
    let mut mgs = FakeMgs::start().await;
    let (stop, agent) = mgs.start_agent();
    let mut control = mgs.next_peer().await;
    control.send(transcript.interactive_shell());
    let mut data = mgs.next_peer().await;
    // As the official client: nothing until the first output, then size and keystrokes.
    let ours = play_client(
        &mut data,
        transcript.client_inputs(),
        |_| true,
        |seen| !stream(seen).is_empty(),
    )
    .await;
    let official = transcript.agent_data();
    assert_eq!(session_states(&ours), session_states(&official));
    assert_eq!(
        acks(&ours),
        acks(&official),
        "acknowledgements of the client's frames"
    );
    let ours_stream = stream(&ours);
    let first = ours_stream[0];
    assert_eq!(
        (first.sequence_number, first.flags, first.payload_type),
        (0, 1, PayloadType::Output),
        "the shell's first output is stream message 0 with SYN"
    );
    assert!(ours_stream[1..].iter().all(|m| m.flags == 0));
    let text: Vec<u8> = ours_stream
        .iter()
        .flat_map(|m| m.payload.to_vec())
        .collect();
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("hello\r\n"), "{text:?}");
    expect_task_complete(&mut control, &transcript).await;
    stop.send(()).unwrap();
    agent.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smux_port_forwarding_matches_the_official_agent() {
    let transcript = Transcript::load("port-forwarding-smux.json");
    // An echo server stands in for the recorded one on port 7777.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let recorded = decode(transcript.interactive_shell());
    let mut request = AgentTaskPayload::from_message_payload(&recorded.payload).unwrap();
    request
        .parameters
        .insert("portNumber".into(), Value::String(echo_port.to_string()));
    let mut mgs = FakeMgs::start().await;
    let (stop, agent) = mgs.start_agent();
    let mut control = mgs.next_peer().await;
    control.send(request.to_message().to_bytes());
    let mut data = mgs.next_peer().await;
    let fins = |seen: &[AgentMessage]| {
        let bytes: Vec<u8> = stream(seen)
            .iter()
            .filter(|m| m.payload_type == PayloadType::Output)
            .flat_map(|m| m.payload.to_vec())
            .collect();
        smux_streams(&bytes).values().filter(|s| s.1).count()
    };
    // The client's TerminateSession flag waits until both streams were echoed and closed.
    let ours = play_client(
        &mut data,
        transcript.client_inputs(),
        |m| m.payload_type == PayloadType::Flag,
        |seen| fins(seen) == 2,
    )
    .await;
    let official = transcript.agent_data();
    assert_eq!(
        session_states(&ours),
        session_states(&official),
        "no Terminating for Port"
    );
    let agent_bytes = |s: &[AgentMessage]| -> Vec<u8> {
        stream(s)
            .iter()
            .filter(|m| m.payload_type == PayloadType::Output)
            .flat_map(|m| m.payload.to_vec())
            .collect()
    };
    // The same smux streams, with the same data, each closed by the agent with a FIN.
    assert_eq!(
        smux_streams(&agent_bytes(&ours)),
        smux_streams(&agent_bytes(&official))
    );
    let handshake = stream(&ours)[0];
    let mut request: Value = serde_json::from_slice(&handshake.payload).unwrap();
    request.as_object_mut().unwrap().remove("SsmxCapabilities");
    let mut official_request: Value =
        serde_json::from_slice(&stream(&official)[0].payload).unwrap();
    official_request["AgentVersion"] = request["AgentVersion"].clone();
    official_request["RequestedClientActions"][0]["ActionParameters"]["Properties"]["portNumber"] =
        Value::String(echo_port.to_string());
    assert_eq!(request, official_request);
    expect_task_complete(&mut control, &transcript).await;
    stop.send(()).unwrap();
    agent.await.unwrap();
}

/// smux v1 frames of one direction: stream id → (data, closed with FIN). Asserts v1 framing.
fn smux_streams(bytes: &[u8]) -> BTreeMap<u32, (Vec<u8>, bool)> {
    let mut streams: BTreeMap<u32, (Vec<u8>, bool)> = BTreeMap::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        assert_eq!(bytes[at], 1, "smux version");
        let cmd = bytes[at + 1];
        let len = u16::from_le_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
        let sid = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
        let data = &bytes[at + 8..(at + 8 + len).min(bytes.len())];
        match cmd {
            1 => streams.entry(sid).or_default().1 = true,
            2 => streams.entry(sid).or_default().0.extend_from_slice(data),
            0 | 3 => {}
            other => panic!("unknown smux command {other}"),
        }
        at += 8 + len;
    }
    streams
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_channel_duties() {
    let shell_transcript = Transcript::load("shell-standard-stream.json");
    let mut mgs = FakeMgs::start().await;
    let (stop, agent) = mgs.start_agent();
    let mut control = mgs.next_peer().await;

    // An unknown session type fails at once, with a reason, and no data channel is opened.
    let mut request = AgentTaskPayload::from_message_payload(
        &decode(shell_transcript.interactive_shell()).payload,
    )
    .unwrap();
    request.session_id = "unknown-01".into();
    request.document_content.session_type = "Teleport".into();
    control.send(request.to_message().to_bytes());
    let failed = control.recv_type(MessageType::AgentTaskComplete).await;
    let report: Value = serde_json::from_slice(&failed.payload).unwrap();
    assert_eq!(report["TaskId"], "unknown-01");
    assert_eq!(report["FinalTaskStatus"], "Failed");
    assert!(report["Output"]
        .as_str()
        .unwrap()
        .contains("unsupported session type \"Teleport\""));
    // Unacknowledged, it is sent again with the same MessageId and the next RetryNumber.
    let retry = control.recv_type(MessageType::AgentTaskComplete).await;
    assert_eq!(retry.message_id, failed.message_id);
    let retry_report: Value = serde_json::from_slice(&retry.payload).unwrap();
    assert_eq!(retry_report["RetryNumber"], 2);
    acknowledge_task(&control, &retry);

    // channel_closed on the control channel ends a running session.
    let mut shell = AgentTaskPayload::from_message_payload(
        &decode(shell_transcript.interactive_shell()).payload,
    )
    .unwrap();
    shell.session_id = "shell-02".into();
    control.send(shell.to_message().to_bytes());
    let mut data = mgs.next_peer().await;
    assert!(data.recv().await.is_some(), "session state Connected");
    let closed = ChannelClosed::message("shell-02", INSTANCE_ID, "", "2026-11-22T00:00:00Z".into());
    control.send(closed.to_bytes());
    while data.recv().await.is_some() {}
    let complete = control.recv_type(MessageType::AgentTaskComplete).await;
    let report: Value = serde_json::from_slice(&complete.payload).unwrap();
    assert_eq!(report["TaskId"], "shell-02");
    assert_eq!(report["FinalTaskStatus"], "Success");
    acknowledge_task(&control, &complete);

    // A dropped control channel is re-created and reopened.
    let creates = mgs.control_creates.load(Ordering::SeqCst);
    control.to_agent.send(Message::Close(None)).unwrap();
    let reopened = mgs.next_peer().await;
    assert!(reopened.path.starts_with("/v1/control-channel/"));
    assert!(mgs.control_creates.load(Ordering::SeqCst) > creates);
    stop.send(()).unwrap();
    agent.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_data_channel_is_reopened_and_the_stream_goes_on() {
    let transcript = Transcript::load("shell-standard-stream.json");
    let mut mgs = FakeMgs::start().await;
    let (stop, agent) = mgs.start_agent();
    let mut control = mgs.next_peer().await;
    control.send(transcript.interactive_shell());
    let mut first = mgs.next_peer().await;
    assert_eq!(
        first.recv().await.unwrap().message_type,
        MessageType::AgentSessionState
    );
    let prompt = first.recv().await.unwrap();
    assert_eq!(prompt.sequence_number, 0);
    // The WebSocket drops before the prompt was acknowledged.
    first.to_agent.send(Message::Close(None)).unwrap();
    let mut second = mgs.next_peer().await;
    assert_eq!(
        second.path,
        "/v1/data-channel/shell-01?role=publish_subscribe"
    );
    // The unacknowledged prompt is sent again, byte for byte the same message.
    let resent = loop {
        let msg = second.recv().await.unwrap();
        if msg.message_type == MessageType::OutputStreamData {
            break msg;
        }
    };
    assert_eq!(resent, prompt);
    second.send(Acknowledge::of(&resent).to_message().to_bytes());
    // The client's stream starts at 0 on the new socket as well.
    let mut input = AgentMessage::new(
        MessageType::InputStreamData,
        PayloadType::Output,
        Bytes::from_static(b"echo again-$((1+1))\nexit\n"),
    );
    input.sequence_number = 0;
    second.send(input.to_bytes());
    let mut text = String::new();
    let mut terminating = false;
    while let Some(msg) = second.recv().await {
        if msg.message_type == MessageType::OutputStreamData {
            second.send(Acknowledge::of(&msg).to_message().to_bytes());
            text.push_str(&String::from_utf8_lossy(&msg.payload));
        }
        terminating |= msg.message_type == MessageType::AgentSessionState;
    }
    assert!(text.contains("again-2"), "{text:?}");
    assert!(terminating, "the shell's end is announced");
    expect_task_complete(&mut control, &transcript).await;
    stop.send(()).unwrap();
    agent.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_data_channel_resets_the_port_sessions_destination_connection() {
    let transcript = Transcript::load("port-standard-stream.json");
    // The destination reports how reading from the agent's connection ends.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (accepted_tx, accepted) = oneshot::channel();
    let destination = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let _ = accepted_tx.send(());
        let mut buf = [0u8; 64];
        socket.read(&mut buf).await
    });
    let recorded = decode(transcript.interactive_shell());
    let mut request = AgentTaskPayload::from_message_payload(&recorded.payload).unwrap();
    request
        .parameters
        .insert("portNumber".into(), Value::String(port.to_string()));
    let mut mgs = FakeMgs::start().await;
    let (stop, agent) = mgs.start_agent();
    let mut control = mgs.next_peer().await;
    control.send(request.to_message().to_bytes());
    let data = mgs.next_peer().await;
    // The official client's HandshakeResponse; then the agent connects to the destination.
    data.send(transcript.client_inputs()[0].clone());
    tokio::time::timeout(STEP, accepted).await.unwrap().unwrap();
    // The data channel drops and cannot be reopened: the session has failed.
    mgs.refuse_data_channels();
    data.to_agent.send(Message::Close(None)).unwrap();
    let read = tokio::time::timeout(STEP, destination)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        read.as_ref().map_err(std::io::Error::kind),
        Err(ErrorKind::ConnectionReset),
        "{read:?}"
    );
    let complete = control.recv_type(MessageType::AgentTaskComplete).await;
    let report: Value = serde_json::from_slice(&complete.payload).unwrap();
    assert_eq!(report["FinalTaskStatus"], "Failed");
    acknowledge_task(&control, &complete);
    stop.send(()).unwrap();
    agent.await.unwrap();
}
