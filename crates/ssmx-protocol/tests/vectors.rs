//! Golden vectors produced by the official session-manager-plugin (tests/data/
//! client_message_vectors.json), the worked example of PROTOCOL.md §3.9, and the typed payloads
//! of those vectors.

mod common;

use bytes::{Bytes, BytesMut};
use common::{unhex, vector, vectors, Vector};
use serde::Serialize;
use ssmx_protocol::digest::sha256;
use ssmx_protocol::message::{InvalidMessageType, HEADER_LENGTH, PAYLOAD_OFFSET};
use ssmx_protocol::payload::{
    action_type, session_type, to_json, Acknowledge, ActionStatus, ChannelClosed, ExitCode,
    HandshakeComplete, HandshakeRequest, HandshakeResponse, PortFlag, SessionTypeParameters,
    TerminalSize,
};
use ssmx_protocol::{
    flags, peek_message_type, AgentMessage, DecodeError, DecodeOptions, MessageType, PayloadType,
};
use uuid::Uuid;

/// Offset and end of the PayloadDigest field.
const DIGEST_RANGE: std::ops::Range<usize> = 80..112;

fn no_digest_check() -> DecodeOptions {
    DecodeOptions {
        verify_digest: false,
        ..DecodeOptions::default()
    }
}

fn encode(msg: &AgentMessage) -> Bytes {
    let mut buf = BytesMut::new();
    msg.encode(&mut buf);
    buf.freeze()
}

/// The message a vector's listed fields describe.
fn expected_message(v: &Vector) -> AgentMessage {
    AgentMessage {
        message_type: MessageType::parse(v.message_type.as_deref().expect("message_type"))
            .expect("vector message type parses"),
        schema_version: v.schema_version.expect("schema_version"),
        created_date: v.created_date.expect("created_date"),
        sequence_number: v.sequence_number.expect("sequence_number"),
        flags: v.flags.expect("flags"),
        message_id: Uuid::parse_str(v.message_id.as_deref().expect("message_id"))
            .expect("vector message id parses"),
        payload_type: PayloadType::from_u32(v.payload_type.expect("payload_type")),
        payload: Bytes::from(v.payload_bytes()),
    }
}

#[test]
fn vector_file_has_every_kind() {
    let all = vectors();
    let count = |kind: &str| all.iter().filter(|v| v.kind == kind).count();
    assert_eq!(count("valid"), 44);
    assert_eq!(count("reject"), 16);
    assert_eq!(count("lenient_accept"), 5);
    assert_eq!(
        all.len(),
        65,
        "a vector of an unknown kind would go untested"
    );
}

#[test]
fn valid_vectors_decode_to_their_fields_and_reencode_exactly() {
    let all = vectors();
    for v in all.iter().filter(|v| v.kind == "valid") {
        let wire = v.wire();
        let expected = expected_message(v);
        let decoded = AgentMessage::decode(wire.clone())
            .unwrap_or_else(|e| panic!("{}: rejected: {e}", v.name));
        assert_eq!(decoded, expected, "{}: decoded fields", v.name);
        assert_eq!(
            decoded.message_type.as_str(),
            v.message_type.as_deref().unwrap(),
            "{}: message type text",
            v.name
        );
        assert_eq!(
            decoded.payload_type.to_u32(),
            v.payload_type.unwrap(),
            "{}: payload type value",
            v.name
        );

        let digest = unhex(v.payload_digest_hex.as_deref().expect("digest"));
        assert_eq!(&wire[DIGEST_RANGE], &digest[..], "{}: digest field", v.name);
        assert_eq!(
            sha256(&decoded.payload)[..],
            digest[..],
            "{}: digest",
            v.name
        );
        assert_eq!(v.header_length, Some(HEADER_LENGTH), "{}", v.name);
        assert_eq!(
            v.payload_length,
            Some(decoded.payload.len() as u32),
            "{}: payload length",
            v.name
        );

        assert_eq!(
            AgentMessage::decode_with(wire.clone(), &no_digest_check()).as_ref(),
            Ok(&decoded),
            "{}: without digest check",
            v.name
        );
        assert_eq!(
            peek_message_type(&wire).as_ref(),
            Ok(&decoded.message_type),
            "{}: peek",
            v.name
        );
        assert_eq!(decoded.encoded_len(), wire.len(), "{}: encoded_len", v.name);
        assert_eq!(
            hex::encode(encode(&expected)),
            v.wire_hex,
            "{}: re-encoding",
            v.name
        );
        assert_eq!(expected.to_bytes(), wire, "{}: to_bytes", v.name);
    }
}

#[test]
fn decoded_payload_is_a_slice_of_the_frame() {
    let all = vectors();
    let wire = vector(&all, "payload_1024_bytes").wire();
    let decoded = AgentMessage::decode(wire.clone()).unwrap();
    assert_eq!(
        decoded.payload.as_ptr(),
        wire[PAYLOAD_OFFSET..].as_ptr(),
        "the payload must not be copied"
    );
}

#[test]
fn uuid_halves_are_swapped_on_the_wire() {
    let all = vectors();
    let wire = vector(&all, "uuid_order_probe").wire();
    assert_eq!(
        hex::encode(&wire[64..80]),
        "8899aabbccddeeff0011223344556677"
    );
    assert_eq!(
        AgentMessage::decode(wire).unwrap().message_id,
        Uuid::parse_str("00112233-4455-6677-8899-aabbccddeeff").unwrap()
    );
}

/// The typed error each "reject" vector must produce with the default options.
fn expected_rejection(name: &str) -> DecodeError {
    use DecodeError::*;
    match name {
        "reject_empty_input" => Truncated { len: 0 },
        "reject_truncated_header_3_bytes" => Truncated { len: 3 },
        "reject_truncated_header_50_bytes" => Truncated { len: 50 },
        "reject_truncated_header_100_bytes" => Truncated { len: 100 },
        "reject_truncated_header_114_bytes" => Truncated { len: 114 },
        // The official plugin panics on these two (PROTOCOL.md §3.7, T30).
        "panic_truncated_header_116_bytes" => Truncated { len: 116 },
        "panic_truncated_header_118_bytes" => Truncated { len: 118 },
        "reject_bad_digest" | "reject_payload_corrupted" => DigestMismatch,
        // The plugin slices the payload to the end of the frame and then fails the digest; the
        // length check comes first here and names the real problem.
        "reject_trailing_bytes_after_payload" => PayloadLength {
            declared: 11,
            actual: 14,
        },
        "reject_short_payload" => PayloadLength {
            declared: 11,
            actual: 6,
        },
        "reject_header_length_zero" => HeaderLength { found: 0 },
        "reject_header_length_120" => HeaderLength { found: 120 },
        "panic_header_length_beyond_frame" => HeaderLength { found: 1000 },
        "reject_message_type_blank" => MessageType(InvalidMessageType::Empty),
        "reject_created_date_zero" => MissingCreatedDate,
        other => panic!("reject vector {other} has no expected error in this test"),
    }
}

#[test]
fn reject_vectors_are_rejected_with_the_matching_error() {
    let all = vectors();
    for v in all.iter().filter(|v| v.kind == "reject") {
        let expected = expected_rejection(&v.name);
        let result = AgentMessage::decode(v.wire());
        assert_eq!(result, Err(expected.clone()), "{}", v.name);

        // Only the digest check depends on the option; everything else is structural.
        let relaxed = AgentMessage::decode_with(v.wire(), &no_digest_check());
        if expected == DecodeError::DigestMismatch {
            let decoded = relaxed.unwrap_or_else(|e| panic!("{}: {e}", v.name));
            let plugin = v.decoded_by_plugin.as_ref().expect("plugin's reading");
            assert_eq!(decoded.payload, common::unbase64(&plugin.payload_b64));
        } else {
            assert_eq!(relaxed, Err(expected), "{}: without digest check", v.name);
        }
    }
}

#[test]
fn peek_rejects_what_is_too_short_and_reads_the_rest() {
    let all = vectors();
    for v in all.iter().filter(|v| v.kind == "reject") {
        let wire = v.wire();
        match peek_message_type(&wire) {
            Err(DecodeError::Truncated { len }) => assert!(len < PAYLOAD_OFFSET, "{}", v.name),
            Err(DecodeError::MessageType(InvalidMessageType::Empty)) => {
                assert_eq!(v.name, "reject_message_type_blank")
            }
            Ok(t) => assert_eq!(t, MessageType::OutputStreamData, "{}", v.name),
            Err(e) => panic!("{}: unexpected {e}", v.name),
        }
    }
}

/// Checks that `decoded` (from `wire`) holds what the official plugin read from the same frame.
fn assert_matches_plugin(v: &Vector, wire: &[u8], decoded: &AgentMessage) {
    let p = v.decoded_by_plugin.as_ref().expect("plugin's reading");
    assert_eq!(p.header_length, HEADER_LENGTH, "{}", v.name);
    assert_eq!(
        p.payload_length as usize,
        decoded.payload.len(),
        "{}",
        v.name
    );
    assert_eq!(
        hex::encode(&wire[DIGEST_RANGE]),
        p.payload_digest_hex,
        "{}",
        v.name
    );
    assert_eq!(decoded.message_type.as_str(), p.message_type, "{}", v.name);
    assert_eq!(decoded.schema_version, p.schema_version, "{}", v.name);
    assert_eq!(decoded.created_date, p.created_date, "{}", v.name);
    assert_eq!(decoded.sequence_number, p.sequence_number, "{}", v.name);
    assert_eq!(decoded.flags, p.flags, "{}", v.name);
    assert_eq!(decoded.message_id.to_string(), p.message_id, "{}", v.name);
    assert_eq!(decoded.payload_type.to_u32(), p.payload_type, "{}", v.name);
    assert_eq!(
        decoded.payload,
        common::unbase64(&p.payload_b64),
        "{}",
        v.name
    );
}

#[test]
fn lenient_vectors_follow_our_documented_choices() {
    let all = vectors();
    for v in all.iter().filter(|v| v.kind == "lenient_accept") {
        let wire = v.wire();
        match v.name.as_str() {
            // We compare PayloadLength with the frame; the plugin never does.
            "lenient_wrong_payload_length_field_12" => {
                let expected = DecodeError::PayloadLength {
                    declared: 12,
                    actual: 11,
                };
                assert_eq!(AgentMessage::decode(wire.clone()), Err(expected.clone()));
                assert_eq!(
                    AgentMessage::decode_with(wire, &no_digest_check()),
                    Err(expected)
                );
            }
            // The plugin skips the digest when PayloadLength is 0 and delivers the bytes
            // anyway; the length check refuses the frame before the digest matters.
            "lenient_payload_length_zero_skips_digest" => {
                let expected = DecodeError::PayloadLength {
                    declared: 0,
                    actual: 11,
                };
                assert_eq!(AgentMessage::decode(wire.clone()), Err(expected.clone()));
                assert_eq!(
                    AgentMessage::decode_with(wire, &no_digest_check()),
                    Err(expected)
                );
            }
            // NUL padding is accepted (PROTOCOL.md §3.2); we re-encode with spaces.
            "lenient_message_type_nul_padded" => {
                let decoded = AgentMessage::decode(wire.clone()).expect("NUL padding accepted");
                assert_matches_plugin(v, &wire, &decoded);
                let base = vector(&all, "base_for_negative_cases");
                assert_eq!(decoded, expected_message(base));
                assert_eq!(hex::encode(encode(&decoded)), base.wire_hex);
            }
            // Publication control is exempt from the digest and created-date checks, like the
            // official client; re-encoding writes the true digest.
            "lenient_start_publication_skips_validation"
            | "lenient_start_publication_zero_digest" => {
                let decoded = AgentMessage::decode(wire.clone()).expect("publication exempt");
                assert_matches_plugin(v, &wire, &decoded);
                assert_eq!(decoded.message_type, MessageType::StartPublication);
                let mut expected_wire = wire.to_vec();
                expected_wire[DIGEST_RANGE].copy_from_slice(&sha256(&decoded.payload));
                assert_eq!(encode(&decoded), expected_wire);
            }
            other => panic!("lenient vector {other} has no documented choice in this test"),
        }
    }
}

#[test]
fn publication_exemption_does_not_extend_to_other_types() {
    // The same zero-date, wrong-digest frame as lenient_start_publication_skips_validation, with
    // the type changed to pause_publication (exempt) and to acknowledge (not exempt).
    let all = vectors();
    let wire = vector(&all, "lenient_start_publication_skips_validation").wire();
    let with_type = |name: &str| {
        let mut frame = wire.to_vec();
        frame[4..36].fill(b' ');
        frame[4..4 + name.len()].copy_from_slice(name.as_bytes());
        Bytes::from(frame)
    };
    let paused = AgentMessage::decode(with_type("pause_publication")).expect("exempt");
    assert_eq!(paused.message_type, MessageType::PausePublication);
    assert_eq!(
        AgentMessage::decode(with_type("acknowledge")),
        Err(DecodeError::MissingCreatedDate)
    );
}

#[test]
fn payload_limit_is_enforced() {
    let all = vectors();
    let wire = vector(&all, "payload_1024_bytes").wire();
    let options = |max_payload| DecodeOptions {
        max_payload,
        ..DecodeOptions::default()
    };
    assert!(AgentMessage::decode_with(wire.clone(), &options(1024)).is_ok());
    assert_eq!(
        AgentMessage::decode_with(wire, &options(1023)),
        Err(DecodeError::PayloadTooLarge {
            len: 1024,
            max: 1023
        })
    );
}

#[test]
fn malformed_message_types_are_rejected_with_their_reason() {
    let all = vectors();
    let wire = vector(&all, "base_for_negative_cases").wire();
    let with_field = |field: &[u8; 32]| {
        let mut frame = wire.to_vec();
        frame[4..36].copy_from_slice(field);
        Bytes::from(frame)
    };
    let mut inner_space = *b"output stream_data              ";
    assert_eq!(
        AgentMessage::decode(with_field(&inner_space)),
        Err(DecodeError::MessageType(
            InvalidMessageType::NotPrintableAscii
        ))
    );
    inner_space[0] = 0xff;
    assert_eq!(
        AgentMessage::decode(with_field(&inner_space)),
        Err(DecodeError::MessageType(
            InvalidMessageType::NotPrintableAscii
        ))
    );
    assert_eq!(
        AgentMessage::decode(with_field(&[0; 32])),
        Err(DecodeError::MessageType(InvalidMessageType::Empty))
    );
    let unknown =
        AgentMessage::decode(with_field(b"   some_future_type\0\0\0\0\0\0\0\0\0\0\0\0\0"))
            .expect("unknown types are kept");
    assert_eq!(unknown.message_type.as_str(), "some_future_type");
    assert!(matches!(unknown.message_type, MessageType::Unknown(_)));
}

#[test]
fn cross_implementation_results_name_the_same_vectors() {
    let results: serde_json::Value = common::read_json("cross_implementation_results.json");
    let results = results["results"].as_object().expect("results object");
    let all = vectors();
    assert_eq!(results.len(), all.len());
    for v in &all {
        let r = &results[&v.name];
        assert_eq!(r["kind"].as_str(), Some(v.kind.as_str()), "{}", v.name);
    }
}

/// PROTOCOL.md §3.9, byte for byte.
#[test]
fn worked_example_of_protocol_section_3_9() {
    let dump = "\
        00 00 00 74 69 6e 70 75 74 5f 73 74 72 65 61 6d
        5f 64 61 74 61 20 20 20 20 20 20 20 20 20 20 20
        20 20 20 20 00 00 00 01 00 00 01 8b cf e5 68 00
        00 00 00 00 00 00 00 05 00 00 00 00 00 00 00 00
        88 99 aa bb cc dd ee ff 00 11 22 33 44 55 66 77
        1d 88 7c e0 f8 67 2e 49 14 d9 00 0e 80 1c d7 4e
        cd 80 5d d9 36 6c 0b c4 2d c1 6a dc 01 97 dc 2f
        00 00 00 01 00 00 00 03 6c 73 0d";
    let expected: String = dump.split_whitespace().collect();
    let msg = AgentMessage {
        message_type: MessageType::InputStreamData,
        schema_version: 1,
        created_date: 1_700_000_000_000,
        sequence_number: 5,
        flags: 0,
        message_id: Uuid::parse_str("00112233-4455-6677-8899-aabbccddeeff").unwrap(),
        payload_type: PayloadType::Output,
        payload: Bytes::from_static(b"ls\r"),
    };
    let wire = encode(&msg);
    assert_eq!(wire.len(), 123);
    assert_eq!(hex::encode(&wire), expected);
    assert_eq!(AgentMessage::decode(wire), Ok(msg));
}

/// Parses the vector's payload as `T` and checks it against `expected`; the parsed value must
/// serialise back to the same JSON value.
fn parsed<T>(v: &Vector, expected: &T) -> T
where
    T: for<'de> serde::Deserialize<'de> + Serialize + PartialEq + std::fmt::Debug,
{
    let payload = v.payload_bytes();
    let parsed: T = serde_json::from_slice(&payload)
        .unwrap_or_else(|e| panic!("{}: payload does not parse: {e}", v.name));
    assert_eq!(&parsed, expected, "{}", v.name);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&to_json(&parsed)).unwrap(),
        serde_json::from_slice::<serde_json::Value>(&payload).unwrap(),
        "{}: re-serialised payload",
        v.name
    );
    parsed
}

/// [`parsed`], and the re-serialised payload is byte-identical to the official serializer's.
fn typed<T>(v: &Vector, expected: &T) -> T
where
    T: for<'de> serde::Deserialize<'de> + Serialize + PartialEq + std::fmt::Debug,
{
    let parsed = parsed(v, expected);
    assert_eq!(
        String::from_utf8(to_json(&parsed).to_vec()).unwrap(),
        String::from_utf8(v.payload_bytes()).unwrap(),
        "{}: re-serialised payload bytes",
        v.name
    );
    parsed
}

#[test]
fn acknowledge_payloads() {
    let all = vectors();
    let from_client = vector(&all, "acknowledge_message");
    let ack = typed(
        from_client,
        &Acknowledge {
            message_type: "output_stream_data".into(),
            message_id: "dd01e56b-ff48-483e-a508-b5f073f31b16".into(),
            sequence_number: 7,
            is_sequential_message: true,
        },
    );
    // The frame our ack builder makes is the plugin's, once id and date are pinned.
    let mut msg = ack.to_message();
    assert_eq!(msg.flags, flags::SYN_FIN);
    msg.message_id = Uuid::parse_str(from_client.message_id.as_deref().unwrap()).unwrap();
    msg.created_date = from_client.created_date.unwrap();
    assert_eq!(hex::encode(encode(&msg)), from_client.wire_hex);

    // Acknowledge::of the acknowledged message gives the same payload.
    let mut acked = AgentMessage::new(
        MessageType::OutputStreamData,
        PayloadType::Output,
        Bytes::from_static(b"x"),
    );
    acked.message_id = Uuid::parse_str(&ack.message_id).unwrap();
    acked.sequence_number = 7;
    assert_eq!(Acknowledge::of(&acked), ack);

    typed(
        vector(&all, "acknowledge_message_from_agent"),
        &Acknowledge {
            message_type: "input_stream_data".into(),
            message_id: "f47ac10b-58cc-4372-a567-0e02b2c3d479".into(),
            sequence_number: 3,
            is_sequential_message: true,
        },
    );
}

#[test]
fn handshake_payloads() {
    let all = vectors();
    let shell = vector(&all, "handshake_request");
    let shell_request: HandshakeRequest = serde_json::from_slice(&shell.payload_bytes()).unwrap();
    let expected_shell = HandshakeRequest {
        agent_version: "3.3.1142.0".into(),
        requested_client_actions: shell_request.requested_client_actions.clone(),
        ssmx_capabilities: None,
    };
    parsed(shell, &expected_shell);
    let [action] = &shell_request.requested_client_actions[..] else {
        panic!("one action expected");
    };
    assert_eq!(action.action_type, action_type::SESSION_TYPE);
    assert_eq!(
        action.parameters::<SessionTypeParameters>().unwrap(),
        SessionTypeParameters {
            session_type: session_type::STANDARD_STREAM.into(),
            properties: serde_json::Value::Null,
        }
    );

    let port = vector(&all, "handshake_request_port");
    let port_request: HandshakeRequest = serde_json::from_slice(&port.payload_bytes()).unwrap();
    let params: SessionTypeParameters = port_request.requested_client_actions[0]
        .parameters()
        .unwrap();
    assert_eq!(params.session_type, session_type::PORT);
    assert_eq!(params.properties["portNumber"], "22");
    assert_eq!(params.properties["type"], "LocalPortForwarding");
    // Built from typed parts, the request serialises as the official agent's does.
    let rebuilt = HandshakeRequest {
        agent_version: "3.3.1142.0".into(),
        requested_client_actions: vec![
            ssmx_protocol::payload::RequestedClientAction::session_type(&params),
        ],
        ssmx_capabilities: None,
    };
    parsed(port, &rebuilt);

    let response = typed(
        vector(&all, "handshake_response"),
        &HandshakeResponse {
            client_version: "1.2.677.0".into(),
            processed_client_actions: vec![ssmx_protocol::payload::ProcessedClientAction {
                action_type: action_type::SESSION_TYPE.into(),
                action_status: ActionStatus::Success,
                action_result: serde_json::Value::Null,
                error: String::new(),
            }],
            errors: None,
            ssmx_capabilities: None,
        },
    );
    assert_eq!(response.processed_client_actions.len(), 1);

    typed(
        vector(&all, "handshake_complete"),
        &HandshakeComplete {
            handshake_time_to_complete: 1_000_000,
            customer_message: String::new(),
        },
    );
}

/// Known actions keep the Go struct's field order (`SessionType`, then `Properties`), while the
/// properties map itself is sorted as Go sorts map keys.
#[test]
fn handshake_requests_reserialise_byte_identically() {
    let all = vectors();
    for name in ["handshake_request", "handshake_request_port"] {
        let v = vector(&all, name);
        let request: HandshakeRequest = serde_json::from_slice(&v.payload_bytes()).unwrap();
        typed(v, &request);
    }
}

#[test]
fn terminal_size_payload() {
    let all = vectors();
    typed(
        vector(&all, "size_message"),
        &TerminalSize { cols: 80, rows: 24 },
    );
}

#[test]
fn port_flag_payloads() {
    let all = vectors();
    for (name, flag) in [
        ("flag_disconnect_to_port", PortFlag::DisconnectToPort),
        ("flag_terminate_session", PortFlag::TerminateSession),
        ("flag_connect_to_port_error", PortFlag::ConnectToPortError),
    ] {
        let v = vector(&all, name);
        assert_eq!(v.payload_type, Some(PayloadType::Flag.to_u32()));
        let payload = v.payload_bytes();
        assert_eq!(PortFlag::from_payload(&payload).unwrap(), flag, "{name}");
        assert_eq!(flag.to_payload(), payload, "{name}");
    }
    assert_eq!(
        PortFlag::from_payload(&[0, 0, 0, 9]).unwrap(),
        PortFlag::Unknown(9)
    );
    assert!(PortFlag::from_payload(&[0, 0, 1]).is_err());
}

#[test]
fn exit_code_payload() {
    let all = vectors();
    // This vector carries a bare "0" (built for the codec, not by the agent's exit-code path);
    // the agent's own text is "EXIT_CODE: <n>" (see the transcripts test).
    let v = vector(&all, "exit_code");
    assert_eq!(v.payload_type, Some(PayloadType::ExitCode.to_u32()));
    assert_eq!(
        ExitCode::from_payload(&v.payload_bytes()).unwrap(),
        ExitCode(0)
    );
    assert_eq!(ExitCode(-1).to_payload(), "EXIT_CODE: -1");
    assert_eq!(
        ExitCode::from_payload(b"EXIT_CODE: -1").unwrap(),
        ExitCode(-1)
    );
    assert!(ExitCode::from_payload(b"EXIT_CODE: x").is_err());
}

#[test]
fn channel_closed_payload() {
    let all = vectors();
    let v = vector(&all, "channel_closed");
    let closed = typed(
        v,
        &ChannelClosed {
            message_id: "dd01e56b-ff48-483e-a508-b5f073f31b16".into(),
            created_date: "2023-11-14T22:13:20.000Z".into(),
            destination_id: "i-0123456789abcdef0".into(),
            session_id: "user-0123456789abcdef0".into(),
            message_type: "channel_closed".into(),
            schema_version: 1,
            output: String::new(),
        },
    );
    // ChannelClosed::message builds the same payload, with the frame's own id inside.
    let msg = ChannelClosed::message(
        &closed.session_id,
        &closed.destination_id,
        &closed.output,
        closed.created_date.clone(),
    );
    assert_eq!(msg.message_type, MessageType::ChannelClosed);
    assert_eq!(msg.payload_type, PayloadType::Undefined);
    let built: ChannelClosed = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(built.message_id, msg.message_id.to_string());
    assert_eq!(
        ChannelClosed {
            message_id: closed.message_id.clone(),
            ..built
        },
        closed
    );
}
