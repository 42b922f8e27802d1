//! Every binary frame recorded between the official client and agent (tests/data/transcripts/)
//! decodes to what the recorder read, re-encodes byte for byte, and its payload parses into our
//! typed payloads.

mod common;

use common::{transcripts, unhex, Event, RecordedFrame};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use ssmx_protocol::payload::{
    to_json, Acknowledge, AgentSessionState, AgentTaskAcknowledge, AgentTaskComplete,
    AgentTaskPayload, ChannelClosed, ExitCode, HandshakeComplete, HandshakeRequest,
    HandshakeResponse, MgsPayload, OpenControlChannelInput, OpenDataChannelInput, PortFlag,
    TerminalSize,
};
use ssmx_protocol::{AgentMessage, MessageType, PayloadType};

/// How a payload's JSON compares with ours after a parse and re-serialisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    /// Byte-identical: our field order is the official sender's.
    Exact,
    /// The sender wrote Go maps: equal to our output once keys are sorted and `<`, `>`, `&` are
    /// escaped as Go's encoder does.
    GoMap,
}

/// Parses `payload` as `T` and checks how its re-serialisation compares with the original.
fn reserialise<T: DeserializeOwned + Serialize>(what: &str, payload: &[u8], order: Order) -> T {
    let parsed: T = serde_json::from_slice(payload)
        .unwrap_or_else(|e| panic!("{what}: payload does not parse: {e}"));
    let ours = to_json(&parsed);
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).expect("JSON is UTF-8");
    let value = |b: &[u8]| serde_json::from_slice::<Value>(b).expect("JSON");
    match order {
        Order::Exact => assert_eq!(text(&ours), text(payload), "{what}: bytes"),
        // serde_json's Value keeps objects in a sorted map, so re-serialising through it sorts
        // every level of keys, as Go does for maps.
        // `to_json` escapes `<`, `>`, `&` as Go's encoder does.
        Order::GoMap => assert_eq!(
            text(&to_json(&value(&ours))),
            text(payload),
            "{what}: sorted bytes"
        ),
    }
    parsed
}

/// Checks the header fields against the recorder's reading.
fn assert_fields(what: &str, msg: &AgentMessage, recorded: &RecordedFrame, frame: &[u8]) {
    assert_eq!(recorded.header_length, 116, "{what}");
    assert!(
        recorded.payload_digest_ok,
        "{what}: recorder saw a bad digest"
    );
    assert_eq!(msg.message_type.as_str(), recorded.message_type, "{what}");
    assert!(
        !matches!(msg.message_type, MessageType::Unknown(_)),
        "{what}: unknown type"
    );
    assert_eq!(msg.schema_version, recorded.schema_version, "{what}");
    assert_eq!(msg.created_date, recorded.created_date, "{what}");
    assert_eq!(msg.sequence_number, recorded.sequence_number, "{what}");
    assert_eq!(msg.flags, recorded.flags, "{what}");
    assert_eq!(msg.message_id.to_string(), recorded.message_id, "{what}");
    assert_eq!(
        hex::encode(&frame[80..112]),
        recorded.payload_digest,
        "{what}"
    );
    assert_eq!(msg.payload_type.to_u32(), recorded.payload_type, "{what}");
    assert_eq!(msg.payload.len() as u32, recorded.payload_length, "{what}");
    assert_eq!(msg.payload, recorded.payload_bytes(), "{what}: payload");
}

/// Parses the payload of a recorded frame into its typed form. Returns the name of the payload
/// kind, for the coverage check.
fn check_payload(what: &str, msg: &AgentMessage) -> &'static str {
    let p = &msg.payload[..];
    match (&msg.message_type, msg.payload_type) {
        (MessageType::Acknowledge, _) => {
            let ack: Acknowledge = reserialise(what, p, Order::Exact);
            assert!(ack.is_sequential_message, "{what}");
            "acknowledge"
        }
        (MessageType::AgentSessionState, _) => {
            reserialise::<AgentSessionState>(what, p, Order::Exact);
            "agent_session_state"
        }
        (MessageType::ChannelClosed, _) => {
            // Written by the stand-in relay from a Go map, hence sorted keys; the official
            // field order (vectors.rs) is what we write.
            reserialise::<ChannelClosed>(what, p, Order::GoMap);
            "channel_closed"
        }
        (MessageType::InteractiveShell, _) => {
            // Also the stand-in's, from Go maps at both levels of the double encoding.
            reserialise::<MgsPayload>(what, p, Order::GoMap);
            let task =
                AgentTaskPayload::from_message_payload(p).unwrap_or_else(|e| panic!("{what}: {e}"));
            let envelope: MgsPayload = serde_json::from_slice(p).unwrap();
            reserialise::<AgentTaskPayload>(what, envelope.content.as_bytes(), Order::GoMap);
            assert_eq!(task.session_id, envelope.task_id, "{what}");
            "interactive_shell"
        }
        (MessageType::AgentTaskComplete, _) => {
            reserialise::<AgentTaskComplete>(what, p, Order::Exact);
            "agent_task_complete"
        }
        (MessageType::AgentTaskAcknowledge, _) => {
            reserialise::<AgentTaskAcknowledge>(what, p, Order::Exact);
            "agent_task_acknowledge"
        }
        (MessageType::InputStreamData | MessageType::OutputStreamData, payload_type) => {
            match payload_type {
                PayloadType::HandshakeRequest => {
                    reserialise::<HandshakeRequest>(what, p, Order::Exact);
                    "handshake_request"
                }
                PayloadType::HandshakeResponse => {
                    reserialise::<HandshakeResponse>(what, p, Order::Exact);
                    "handshake_response"
                }
                PayloadType::HandshakeComplete => {
                    reserialise::<HandshakeComplete>(what, p, Order::Exact);
                    "handshake_complete"
                }
                PayloadType::Size => {
                    reserialise::<TerminalSize>(what, p, Order::Exact);
                    "size"
                }
                PayloadType::Flag => {
                    let flag = PortFlag::from_payload(p).unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert!(!matches!(flag, PortFlag::Unknown(_)), "{what}");
                    assert_eq!(flag.to_payload(), p, "{what}");
                    "flag"
                }
                PayloadType::ExitCode => {
                    let code = ExitCode::from_payload(p).unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!(code.to_payload(), p, "{what}");
                    "exit_code"
                }
                PayloadType::Output | PayloadType::StdErr => "stream bytes",
                other => panic!("{what}: unexpected payload type {other:?}"),
            }
        }
        (other, _) => panic!("{what}: no payload check for {other}"),
    }
}

/// Checks the first text frame of a WebSocket (Open…Channel). Returns its kind, if it is one.
fn check_text_frame(what: &str, event: &Event) -> Option<&'static str> {
    // The recorder replaced tokens with `<redacted>` (not Go's escaping of `<`): put a plain
    // token back so the bytes compare.
    let text = event
        .text
        .as_deref()?
        .replace("<redacted>", "redacted-token");
    let text = text.as_bytes();
    match (event.ws_opcode.as_str(), event.channel.as_str()) {
        ("text", "agent-control") => {
            let open: OpenControlChannelInput = reserialise(what, text, Order::Exact);
            assert_eq!(open.message_schema_version, "1.0", "{what}");
            Some("open_control_channel")
        }
        ("text", _) => {
            let open: OpenDataChannelInput = reserialise(what, text, Order::Exact);
            assert_eq!(open.message_schema_version, "1.0", "{what}");
            Some("open_data_channel")
        }
        _ => None,
    }
}

#[test]
fn every_recorded_frame_decodes_reencodes_and_parses() {
    let mut frames = 0;
    let mut kinds = std::collections::BTreeSet::new();
    for transcript in transcripts() {
        for (i, event) in transcript.events.iter().enumerate() {
            let what = format!("{} event {i} ({})", transcript.name, event.direction);
            if let Some(kind) = check_text_frame(&what, event) {
                kinds.insert(kind);
            }
            let (Some(hex), Some(recorded)) = (&event.hex, &event.decoded) else {
                assert_ne!(
                    event.ws_opcode, "binary",
                    "{what}: binary frame without hex"
                );
                continue;
            };
            let frame = unhex(hex);
            let msg = AgentMessage::decode(frame.clone())
                .unwrap_or_else(|e| panic!("{what}: rejected: {e}"));
            assert_fields(&what, &msg, recorded, &frame);
            assert_eq!(msg.to_bytes(), frame, "{what}: re-encoding");
            kinds.insert(check_payload(&what, &msg));
            frames += 1;
        }
    }
    assert_eq!(frames, 470, "binary frames in the transcripts");
    let expected = [
        "acknowledge",
        "agent_session_state",
        "agent_task_acknowledge",
        "agent_task_complete",
        "channel_closed",
        "exit_code",
        "flag",
        "handshake_complete",
        "handshake_request",
        "handshake_response",
        "interactive_shell",
        "open_control_channel",
        "open_data_channel",
        "size",
        "stream bytes",
    ];
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), expected);
}
