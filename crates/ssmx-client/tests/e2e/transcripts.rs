//! The client against the official agent's recorded frames (PROTOCOL.md §17): a stand-in MGS
//! replays what the official agent sent, in order, each frame only once our client has sent as
//! much as the official client had at that point; then what our client sent is compared with
//! what the official client sent — sequence numbers, payload types, payload bytes (the smux byte
//! stream included), handshake response JSON and acknowledgements.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use ssmx_client::{
    copy_command_output, PortForwarder, PortMode, SessionEnd, SessionEvent, SessionManager,
    SessionTicket,
};
use ssmx_protocol::payload::{from_json, ChannelClosed, OpenDataChannelInput};
use ssmx_protocol::version::CLIENT_VERSION;
use ssmx_protocol::{flags, AgentMessage, MessageType, PayloadType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use crate::common::STEP;

/// Version string of the official client in the recordings.
const RECORDED_CLIENT_VERSION: &str = "1.2.677.0";

/// One recorded data-channel frame on the client's socket.
struct Frame {
    from_client: bool,
    msg: AgentMessage,
    raw: Bytes,
}

/// The client's data channel of one recording, each distinct frame once.
fn load(name: &str) -> Vec<Frame> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../ssmx-protocol/tests/data/transcripts")
        .join(format!("{name}.json"));
    let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut seen = HashSet::new();
    let mut frames = Vec::new();
    for event in doc["events"].as_array().unwrap() {
        if event["channel"] != "client-data" || event["ws_opcode"] != "binary" {
            continue;
        }
        let raw = Bytes::from(hex::decode(event["hex"].as_str().unwrap()).unwrap());
        let msg = AgentMessage::decode(raw.clone()).unwrap();
        let from_client = event["direction"] == "client->gw";
        if seen.insert((from_client, msg.message_id)) {
            frames.push(Frame {
                from_client,
                msg,
                raw,
            });
        }
    }
    frames
}

/// How far a client has got: handshake/flag messages, Output bytes and acknowledgements sent.
/// Size messages do not count (our `exec` does not send the one the official client sends).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd)]
struct Progress {
    controls: usize,
    output_bytes: usize,
    acks: usize,
}

impl Progress {
    fn add(&mut self, msg: &AgentMessage) {
        match msg.payload_type {
            PayloadType::Output => self.output_bytes += msg.payload.len(),
            PayloadType::Size => {}
            _ => self.controls += 1,
        }
    }

    fn reached(&self, gate: &Progress) -> bool {
        self.controls >= gate.controls
            && self.output_bytes >= gate.output_bytes
            && self.acks >= gate.acks
    }
}

/// A client stream with consecutive Output payloads joined (message boundaries carry no
/// meaning for them) and Size messages left out.
#[derive(Debug, PartialEq, Eq)]
enum Item {
    Output(Vec<u8>),
    Other(PayloadType, String),
}

fn normalize<'a>(msgs: impl Iterator<Item = &'a AgentMessage>) -> Vec<Item> {
    let mut items = Vec::new();
    for m in msgs {
        match m.payload_type {
            PayloadType::Size => {}
            PayloadType::Output => match items.last_mut() {
                Some(Item::Output(bytes)) => bytes.extend_from_slice(&m.payload),
                _ => items.push(Item::Output(m.payload.to_vec())),
            },
            other => {
                let text = String::from_utf8_lossy(&m.payload)
                    .replace(RECORDED_CLIENT_VERSION, CLIENT_VERSION);
                items.push(Item::Other(other, text));
            }
        }
    }
    items
}

/// What the official recording says the client side should look like.
struct Expected {
    /// Agent frames to replay, each with the client progress that must precede it.
    agent: Vec<(Progress, Bytes)>,
    /// The official client's stream messages, one per sequence number, in order.
    stream: Vec<AgentMessage>,
    /// The official client's acknowledgement payloads by acknowledged message id.
    acks: HashMap<String, String>,
}

fn expected(frames: &[Frame]) -> Expected {
    let mut progress = Progress::default();
    let mut seqs = HashSet::new();
    let mut out = Expected {
        agent: Vec::new(),
        stream: Vec::new(),
        acks: HashMap::new(),
    };
    for f in frames {
        match (&f.msg.message_type, f.from_client) {
            (MessageType::InputStreamData, true) if seqs.insert(f.msg.sequence_number) => {
                progress.add(&f.msg);
                out.stream.push(f.msg.clone());
            }
            (MessageType::Acknowledge, true) => {
                let v: Value = serde_json::from_slice(&f.msg.payload).unwrap();
                let id = v["AcknowledgedMessageId"].as_str().unwrap().to_owned();
                let payload = String::from_utf8(f.msg.payload.to_vec()).unwrap();
                if out.acks.insert(id, payload).is_none() {
                    progress.acks += 1;
                }
            }
            (MessageType::OutputStreamData | MessageType::ChannelClosed, false) => {
                out.agent.push((progress, f.raw.clone()));
            }
            _ => {}
        }
    }
    out
}

/// What the stand-in saw from our client.
#[derive(Default)]
struct Recorded {
    open: Option<OpenDataChannelInput>,
    stream: Vec<AgentMessage>,
    acks: Vec<AgentMessage>,
    /// Stream messages that arrived before the first agent frame was sent.
    early: usize,
}

/// A stand-in MGS for one client connection: acks the client's stream messages like an agent,
/// replays `agent` frames behind their gates.
async fn stand_in(agent: Vec<(Progress, Bytes)>) -> (String, Arc<Mutex<Recorded>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "ws://{}/v1/data-channel/replay-01?role=publish_subscribe",
        listener.local_addr().unwrap()
    );
    let recorded = Arc::new(Mutex::new(Recorded::default()));
    let rec = recorded.clone();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let (mut sink, mut stream) = ws.split();
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Bytes>();
        tokio::spawn(async move {
            while let Some(frame) = out_rx.recv().await {
                if sink.send(Message::binary(frame)).await.is_err() {
                    return;
                }
            }
        });
        let (progress_tx, mut progress) = watch::channel(Progress::default());
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let replay_started = started.clone();
        let acks = out_tx.clone();
        let reader_rec = rec.clone();
        tokio::spawn(async move {
            let mut seqs = HashSet::new();
            let mut acked = HashSet::new();
            while let Some(Ok(message)) = stream.next().await {
                match message {
                    Message::Text(text) => {
                        reader_rec.lock().unwrap().open =
                            Some(from_json("open", text.as_bytes()).unwrap());
                    }
                    Message::Binary(frame) => {
                        let msg = AgentMessage::decode(frame).expect("client frames are valid");
                        match msg.message_type {
                            MessageType::InputStreamData => {
                                let ack =
                                    ssmx_protocol::payload::Acknowledge::of(&msg).to_message();
                                let _ = acks.send(ack.to_bytes());
                                if seqs.insert(msg.sequence_number) {
                                    let mut r = reader_rec.lock().unwrap();
                                    if !started.load(std::sync::atomic::Ordering::SeqCst) {
                                        r.early += 1;
                                    }
                                    progress_tx.send_modify(|p| p.add(&msg));
                                    r.stream.push(msg);
                                }
                            }
                            MessageType::Acknowledge => {
                                if acked.insert(msg.payload.clone()) {
                                    progress_tx.send_modify(|p| p.acks += 1);
                                }
                                reader_rec.lock().unwrap().acks.push(msg);
                            }
                            other => panic!("unexpected {other} from the client"),
                        }
                    }
                    _ => {}
                }
            }
        });
        for (gate, frame) in agent {
            timeout(STEP, progress.wait_for(|p| p.reached(&gate)))
                .await
                .expect("the client fell behind the recording")
                .unwrap();
            replay_started.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = out_tx.send(frame);
        }
        // Keep acking until the client goes away.
        std::future::pending::<()>().await;
    });
    (url, recorded)
}

/// A client attached to the stand-in (no SSM API involved).
async fn attach(url: String) -> ssmx_client::Session {
    let config = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .build();
    let ticket: SessionTicket = serde_json::from_value(serde_json::json!({
        "SessionId": "replay-01", "TokenValue": "token-01", "StreamUrl": url,
    }))
    .unwrap();
    SessionManager::new(&config)
        .attach(ticket, "mi-0123456789abcdef0")
        .await
        .unwrap()
}

/// Checks the open frame, the acknowledgements and the normalised stream.
fn compare(expected: &Expected, recorded: &Recorded) {
    let open = recorded.open.as_ref().expect("OpenDataChannel sent");
    assert_eq!(open.token_value, "token-01");
    assert_eq!(open.message_schema_version, "1.0");
    assert_eq!(open.client_version.as_deref(), Some(CLIENT_VERSION));
    assert_eq!(open.client_instance_id, None);
    assert_eq!(
        open.client_id,
        ssmx_client::client_id().hyphenated().to_string()
    );

    let replayed: HashSet<String> = expected
        .agent
        .iter()
        .map(|(_, raw)| AgentMessage::decode(raw.clone()).unwrap())
        .filter(|m| m.message_type == MessageType::OutputStreamData)
        .map(|m| m.message_id.hyphenated().to_string())
        .collect();
    let mut ours = HashMap::new();
    for ack in &recorded.acks {
        assert_eq!(ack.flags, flags::SYN_FIN);
        assert_eq!(ack.sequence_number, 0);
        assert_eq!(ack.payload_type, PayloadType::Undefined);
        let v: Value = serde_json::from_slice(&ack.payload).unwrap();
        ours.insert(
            v["AcknowledgedMessageId"].as_str().unwrap().to_owned(),
            String::from_utf8(ack.payload.to_vec()).unwrap(),
        );
    }
    for id in &replayed {
        let official = expected.acks.get(id).expect("the official client acked it");
        assert_eq!(ours.get(id), Some(official), "ack of {id}");
    }

    for m in &recorded.stream {
        assert_eq!(m.flags, 0, "the client never sets SYN");
        assert_eq!(m.schema_version, 1);
    }
    let seqs: Vec<i64> = recorded.stream.iter().map(|m| m.sequence_number).collect();
    assert_eq!(seqs, (0..seqs.len() as i64).collect::<Vec<_>>());
    assert_eq!(
        normalize(recorded.stream.iter()),
        normalize(expected.stream.iter())
    );
}

/// Shell recordings: the test types what the official client's terminal sent; everything must
/// match message for message, Size included, and nothing may be sent before the first output.
async fn shell_case(name: &str) {
    let expected = expected(&load(name));
    let (url, recorded) = stand_in(expected.agent.clone()).await;
    let mut session = attach(url).await;
    let mut output = Vec::new();
    let mut typed = expected.stream.iter();
    let end = timeout(STEP, async {
        loop {
            match session.next_event().await.unwrap().unwrap() {
                SessionEvent::Started(start) => {
                    assert_eq!(start.session_type, ssmx_client::SessionType::StandardStream);
                    for m in typed.by_ref() {
                        match m.payload_type {
                            PayloadType::Size => {
                                let size: ssmx_protocol::payload::TerminalSize =
                                    from_json("size", &m.payload).unwrap();
                                session
                                    .resize(size.cols as u16, size.rows as u16)
                                    .await
                                    .unwrap();
                            }
                            PayloadType::Output => session.write(m.payload.clone()).await.unwrap(),
                            other => panic!("unexpected {other:?} in a shell recording"),
                        }
                    }
                }
                SessionEvent::Output(b) => output.extend_from_slice(&b),
                SessionEvent::Ended(end) => return end,
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(end, SessionEnd::Closed { message: None });
    let agent_output: Vec<u8> = expected
        .agent
        .iter()
        .map(|(_, raw)| AgentMessage::decode(raw.clone()).unwrap())
        .filter(|m| m.payload_type == PayloadType::Output)
        .flat_map(|m| m.payload.to_vec())
        .collect();
    assert_eq!(output, agent_output);
    let recorded = recorded.lock().unwrap();
    assert_eq!(
        recorded.early, 0,
        "sent input before the shell's first output"
    );
    let ours: Vec<_> = recorded
        .stream
        .iter()
        .map(|m| (m.sequence_number, m.payload_type, m.payload.clone()))
        .collect();
    let official: Vec<_> = expected
        .stream
        .iter()
        .map(|m| (m.sequence_number, m.payload_type, m.payload.clone()))
        .collect();
    assert_eq!(ours, official);
    compare(&expected, &recorded);
}

#[tokio::test]
async fn shell_standard_stream() {
    shell_case("shell-standard-stream").await;
}

#[tokio::test]
async fn shell_bulk_output() {
    shell_case("shell-bulk-output").await;
}

async fn command_case(name: &str, stdout: &[u8], stderr: &[u8], exit_code: Option<i32>) {
    let expected = expected(&load(name));
    let (url, recorded) = stand_in(expected.agent.clone()).await;
    let session = attach(url).await;
    let (_writer, mut reader) = session.split();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let end = timeout(STEP, copy_command_output(&mut reader, &mut out, &mut err))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end.end, SessionEnd::Closed { message: None });
    assert_eq!(end.exit_code, exit_code);
    assert_eq!(out, stdout);
    assert_eq!(err, stderr);
    compare(&expected, &recorded.lock().unwrap());
}

#[tokio::test]
async fn noninteractive_command_separate_output() {
    command_case(
        "noninteractive-command-separate-output",
        b"out\n",
        b"err\n",
        Some(3),
    )
    .await;
}

#[tokio::test]
async fn noninteractive_command_joined_output() {
    let frames = load("noninteractive-command-joined-output");
    let joined: Vec<u8> = frames
        .iter()
        .filter(|f| !f.from_client && f.msg.payload_type == PayloadType::Output)
        .flat_map(|f| f.msg.payload.to_vec())
        .collect();
    assert!(!joined.is_empty());
    command_case("noninteractive-command-joined-output", &joined, b"", None).await;
}

/// The data the official client's local connections sent, per connection, from its Output
/// stream: raw bytes (basic/standard-stream mode) or the PSH payloads of each smux stream.
fn smux_streams(stream: &[u8]) -> Vec<(u32, Vec<u8>)> {
    let mut out: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let header = &stream[at..at + 8];
        assert_eq!(header[0], 1, "smux version 1");
        let len = u16::from_le_bytes([header[2], header[3]]) as usize;
        let id = u32::from_le_bytes(header[4..8].try_into().unwrap());
        match header[1] {
            0 => out.push((id, Vec::new())),
            2 => out
                .iter_mut()
                .find(|(i, _)| *i == id)
                .expect("PSH after SYN")
                .1
                .extend_from_slice(&stream[at + 8..at + 8 + len]),
            1 => {}
            cmd => panic!("unexpected smux command {cmd}"),
        }
        at += 8 + len;
    }
    out
}

/// Sends `data` through `forwarder` on a fresh local connection, checks the echo, closes.
async fn echo_through(forwarder: &Arc<PortForwarder>, data: &[u8]) {
    let (mut local, theirs) = tokio::io::duplex(64 * 1024);
    let f = forwarder.clone();
    let carrier = tokio::spawn(async move { f.forward(theirs).await });
    local.write_all(data).await.unwrap();
    let mut echo = vec![0u8; data.len()];
    timeout(STEP, local.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echo, data);
    local.shutdown().await.unwrap();
    if matches!(forwarder.mode(), PortMode::Multiplexed { .. }) {
        // The agent answers our FIN with its own.
        let mut rest = Vec::new();
        timeout(STEP, local.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert!(rest.is_empty());
    } else {
        drop(local);
    }
    timeout(STEP, carrier).await.unwrap().unwrap().unwrap();
}

async fn port_case(name: &str, mode: PortMode, connections: Vec<Vec<u8>>, terminate: bool) {
    let expected = expected(&load(name));
    let (url, recorded) = stand_in(expected.agent.clone()).await;
    let session = attach(url).await;
    let forwarder = Arc::new(
        timeout(STEP, PortForwarder::new(session))
            .await
            .unwrap()
            .unwrap(),
    );
    assert_eq!(forwarder.mode(), mode);
    for data in &connections {
        echo_through(&forwarder, data).await;
    }
    if terminate {
        timeout(STEP, forwarder.terminate()).await.unwrap().unwrap();
    }
    let official = normalize(expected.stream.iter());
    timeout(STEP, async {
        while normalize(recorded.lock().unwrap().stream.iter()).len() < official.len() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    compare(&expected, &recorded.lock().unwrap());
}

fn official_output(name: &str) -> Vec<u8> {
    load(name)
        .iter()
        .filter(|f| f.from_client && f.msg.payload_type == PayloadType::Output)
        .fold((HashSet::new(), Vec::new()), |(mut seen, mut out), f| {
            if seen.insert(f.msg.sequence_number) {
                out.extend_from_slice(&f.msg.payload);
            }
            (seen, out)
        })
        .1
}

#[tokio::test]
async fn port_forwarding_smux_speaks_xtaci_v1() {
    let name = "port-forwarding-smux";
    let streams = smux_streams(&official_output(name));
    assert_eq!(
        streams.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        [3, 5],
        "client stream ids start at 3"
    );
    let data = streams.into_iter().map(|(_, d)| d).collect::<Vec<_>>();
    assert_eq!((data[0].len(), data[1].len()), (3000, 2500));
    port_case(
        name,
        PortMode::Multiplexed { keep_alive: false },
        data,
        true,
    )
    .await;
}

#[tokio::test]
async fn port_forwarding_basic_mode() {
    let name = "port-forwarding-basic-versions-rewritten";
    let all = official_output(name);
    assert_eq!(all.len(), 5500);
    let data = vec![all[..3000].to_vec(), all[3000..].to_vec()];
    port_case(name, PortMode::Basic, data, true).await;
}

#[tokio::test]
async fn port_standard_stream() {
    let name = "port-standard-stream";
    let data = official_output(name);
    assert_eq!(data.len(), 2048);
    port_case(name, PortMode::StandardStream, vec![data], false).await;
}

#[tokio::test]
async fn channel_closed_reason_reaches_the_caller() {
    let mut prompt = AgentMessage::new(
        MessageType::OutputStreamData,
        PayloadType::Output,
        Bytes::from_static(b"$ "),
    );
    prompt.flags = flags::SYN;
    let closed = ChannelClosed::message(
        "replay-01",
        "mi-0123456789abcdef0",
        "Session idle timeout",
        "2026-11-22T01:00:00.000Z".to_owned(),
    );
    let (url, _recorded) = stand_in(vec![
        (Progress::default(), prompt.to_bytes()),
        (Progress::default(), closed.to_bytes()),
    ])
    .await;
    let session = attach(url).await;
    let (end, exit_code) = timeout(STEP, session.wait()).await.unwrap().unwrap();
    assert_eq!(
        end,
        SessionEnd::Closed {
            message: Some("Session idle timeout".to_owned())
        }
    );
    assert_eq!(exit_code, None);
}
