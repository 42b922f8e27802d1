//! Golden behaviour against conversations recorded between the official client and agent
//! (crates/ssmx-protocol/tests/data/transcripts): fed the frames an official end received, our
//! channel delivers the same payloads and answers with the same acknowledgements, byte for byte
//! apart from CreatedDate and MessageId; fed the payloads an official end sent, it builds the
//! same stream frames.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use ssmx_channel::{Channel, ChannelConfig, Event, Role};
use ssmx_protocol::{AgentMessage, MessageType};

/// Byte ranges of a frame that differ between two correct senders: CreatedDate and MessageId.
const CREATED_DATE: std::ops::Range<usize> = 40..48;
const MESSAGE_ID: std::ops::Range<usize> = 64..80;

/// Transcripts with a data-channel session (the control-channel start-up has none).
const SESSIONS: &[&str] = &[
    "noninteractive-command-joined-output",
    "noninteractive-command-separate-output",
    "port-forwarding-basic-versions-rewritten",
    "port-forwarding-smux",
    "port-standard-stream",
    "shell-bulk-output",
    "shell-client-killed-output-unacked",
    "shell-client-killed",
    "shell-standard-stream",
];

/// One binary data-channel frame of a transcript.
struct Recorded {
    /// "client-data" or "agent-data".
    channel: String,
    /// "client->gw", "gw->client", "agent->gw" or "gw->agent".
    direction: String,
    t_ms: f64,
    frame: Bytes,
}

fn load(name: &str) -> Vec<Recorded> {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "../ssmx-protocol/tests/data/transcripts",
        &format!("{name}.json"),
    ]
    .iter()
    .collect();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let doc: Value = serde_json::from_str(&text).expect("transcript JSON");
    doc["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["ws_opcode"] == "binary" && e["channel"].as_str().unwrap().ends_with("-data"))
        .map(|e| Recorded {
            channel: e["channel"].as_str().unwrap().to_owned(),
            direction: e["direction"].as_str().unwrap().to_owned(),
            t_ms: e["t_ms"].as_f64().unwrap(),
            frame: Bytes::from(hex::decode(e["hex"].as_str().unwrap()).expect("hex")),
        })
        .collect()
}

fn side_names(role: Role) -> (&'static str, &'static str, &'static str) {
    match role {
        Role::Client => ("client-data", "gw->client", "client->gw"),
        Role::Agent => ("agent-data", "gw->agent", "agent->gw"),
    }
}

/// The frame without the fields every sender fills differently.
fn comparable(frame: &[u8]) -> Vec<u8> {
    let mut bytes = frame.to_vec();
    bytes[CREATED_DATE].fill(0);
    bytes[MESSAGE_ID].fill(0);
    bytes
}

fn decode(frame: &Bytes) -> AgentMessage {
    AgentMessage::decode(frame.clone()).expect("recorded frames decode")
}

/// Replays what the official `role` end received into our channel and compares what comes out.
fn replay_received(name: &str, role: Role) {
    let (channel, inbound, outbound) = side_names(role);
    let recorded: Vec<Recorded> = load(name)
        .into_iter()
        .filter(|r| r.channel == channel)
        .collect();
    let base = Instant::now();
    let mut ours = Channel::new(ChannelConfig::new(role), base);
    let mut our_acks = Vec::new();
    let mut delivered = Vec::new();
    let mut closed = false;
    for r in recorded.iter().filter(|r| r.direction == inbound) {
        ours.handle_frame(
            base + Duration::from_secs_f64(r.t_ms / 1000.0),
            r.frame.clone(),
        );
        our_acks.extend(std::iter::from_fn(|| ours.poll_transmit()));
        while let Some(event) = ours.poll_event() {
            match event {
                Event::Payload {
                    sequence_number,
                    payload,
                    ..
                } => delivered.push((sequence_number, payload)),
                Event::Closed(_) => closed = true,
                other => panic!("{name}: unexpected {other:?}"),
            }
        }
    }

    // Delivered: every stream message once, in sequence order.
    let mut expected = BTreeMap::new();
    for r in recorded.iter().filter(|r| r.direction == inbound) {
        let msg = decode(&r.frame);
        if msg.message_type == role.incoming_stream_type() {
            expected.entry(msg.sequence_number).or_insert(msg.payload);
        }
    }
    assert_eq!(
        delivered,
        expected.into_iter().collect::<Vec<_>>(),
        "{name} {channel}"
    );
    let service_closed = recorded.iter().any(|r| {
        r.direction == inbound && decode(&r.frame).message_type == MessageType::ChannelClosed
    });
    assert_eq!(closed, service_closed, "{name} {channel}");

    // Acknowledged: the official end's acks, in the same order and the same bytes. The official
    // end may have stopped acking as it shut down; we acknowledge those last messages too.
    let official_acks: Vec<Vec<u8>> = recorded
        .iter()
        .filter(|r| {
            r.direction == outbound && decode(&r.frame).message_type == MessageType::Acknowledge
        })
        .map(|r| comparable(&r.frame))
        .collect();
    let our_acks: Vec<Vec<u8>> = our_acks.iter().map(|f| comparable(f)).collect();
    assert!(
        !official_acks.is_empty(),
        "{name} {channel}: nothing to compare"
    );
    assert!(
        our_acks.len() >= official_acks.len(),
        "{name} {channel}: {} acks, official {}",
        our_acks.len(),
        official_acks.len()
    );
    for (i, (ours, official)) in our_acks.iter().zip(&official_acks).enumerate() {
        assert!(
            ours == official,
            "{name} {channel}: ack {i} differs:\n ours     {}\n official {}",
            String::from_utf8_lossy(&ours[120..]),
            String::from_utf8_lossy(&official[120..])
        );
    }
}

/// Sends what the official `role` end sent through our channel and compares the frames.
fn replay_sent(name: &str, role: Role) {
    let (channel, _, outbound) = side_names(role);
    let mut official = BTreeMap::new();
    for r in load(name)
        .into_iter()
        .filter(|r| r.channel == channel && r.direction == outbound)
    {
        let msg = decode(&r.frame);
        if msg.message_type == role.outgoing_stream_type() {
            official.entry(msg.sequence_number).or_insert(r.frame);
        }
    }
    assert!(!official.is_empty(), "{name} {channel}: nothing sent");
    let now = Instant::now();
    let mut ours = Channel::new(ChannelConfig::new(role), now);
    for (seq, frame) in &official {
        let msg = decode(frame);
        assert_eq!(ours.send(now, msg.payload_type, msg.payload), Ok(*seq));
        let sent = ours.poll_transmit().expect("a frame");
        assert!(
            ours.poll_transmit().is_none(),
            "one frame per official frame"
        );
        assert!(
            comparable(&sent) == comparable(frame),
            "{name} {channel}: stream frame {seq} differs"
        );
    }
}

#[test]
fn client_receives_and_acknowledges_as_the_official_client() {
    for name in SESSIONS {
        replay_received(name, Role::Client);
    }
}

#[test]
fn agent_receives_and_acknowledges_as_the_official_agent() {
    for name in SESSIONS {
        replay_received(name, Role::Agent);
    }
}

#[test]
fn client_stream_frames_match_the_official_client() {
    for name in SESSIONS {
        replay_sent(name, Role::Client);
    }
}

#[test]
fn agent_stream_frames_match_the_official_agent() {
    for name in SESSIONS {
        replay_sent(name, Role::Agent);
    }
}

/// The official agent retransmitted output the killed client never acknowledged; the official
/// client re-acks nothing (T10) while our client acknowledges every copy it receives.
#[test]
fn duplicates_are_acknowledged_again() {
    let recorded: Vec<Recorded> = load("shell-client-killed-output-unacked")
        .into_iter()
        .filter(|r| r.channel == "agent-data" && r.direction == "agent->gw")
        .collect();
    let base = Instant::now();
    let mut ours = Channel::new(ChannelConfig::new(Role::Client), base);
    let mut stream_frames = 0;
    let mut acks = 0;
    for r in &recorded {
        if decode(&r.frame).message_type != MessageType::OutputStreamData {
            continue;
        }
        stream_frames += 1;
        ours.handle_frame(
            base + Duration::from_secs_f64(r.t_ms / 1000.0),
            r.frame.clone(),
        );
        acks += std::iter::from_fn(|| ours.poll_transmit()).count();
    }
    assert!(stream_frames > 30, "the transcript holds the resends");
    assert_eq!(acks, stream_frames);
    let unique = std::iter::from_fn(|| ours.poll_event()).count();
    assert_eq!(unique as i64, ours.expected_sequence_number());
    assert!(unique < stream_frames);
}
