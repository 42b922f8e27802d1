//! Property tests of the frame codec: round trips of arbitrary messages with payloads up to
//! 1 MiB, arbitrary bytes through the fuzz target's checks (no panic, consistent answers), and
//! single-byte corruptions that are either rejected or change only the field they hit.

#[path = "../fuzz/fuzz_targets/decode_check.rs"]
mod decode_check;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::Index;
use ssmx_protocol::{peek_message_type, AgentMessage, DecodeOptions, MessageType, PayloadType};
use uuid::Uuid;

/// Largest payload the round-trip property generates.
const MAX_GENERATED_PAYLOAD: usize = 1 << 20;
/// Payload bound for the corruption property, which walks many small frames.
const SMALL_PAYLOAD: usize = 64;

fn unchecked() -> DecodeOptions {
    DecodeOptions {
        verify_digest: false,
        ..DecodeOptions::default()
    }
}

/// `len` bytes from a SplitMix64 stream seeded with `seed`: arbitrary content without asking
/// the generator for a million values one by one.
fn filled(len: usize, seed: u64) -> Bytes {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

fn message_type() -> impl Strategy<Value = MessageType> {
    prop_oneof![
        proptest::sample::select(MessageType::KNOWN.to_vec()),
        // Printable ASCII without spaces, 1 to 32 bytes: every valid unknown type.
        "[!-~]{1,32}".prop_map(|text| MessageType::parse(&text).expect("valid type text")),
    ]
}

/// Payload lengths biased towards small ones, with the full range up to `max` represented.
fn payload(max: usize) -> impl Strategy<Value = Bytes> {
    let small = max.min(256);
    let len = prop_oneof![3 => 0..=small, 1 => 0..=max];
    (len, any::<u64>()).prop_map(|(len, seed)| filled(len, seed))
}

fn message(max_payload: usize) -> impl Strategy<Value = AgentMessage> {
    (
        message_type(),
        any::<u32>(),
        1..=u64::MAX,
        any::<i64>(),
        any::<u64>(),
        any::<u128>(),
        any::<u32>(),
        payload(max_payload),
    )
        .prop_map(
            |(
                message_type,
                schema_version,
                created_date,
                seq,
                flags,
                id,
                payload_type,
                payload,
            )| {
                AgentMessage {
                    message_type,
                    schema_version,
                    created_date,
                    sequence_number: seq,
                    flags,
                    message_id: Uuid::from_u128(id),
                    payload_type: PayloadType::from_u32(payload_type),
                    payload,
                }
            },
        )
}

/// The header field a byte offset belongs to (PROTOCOL.md §3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    HeaderLength,
    MessageType,
    SchemaVersion,
    CreatedDate,
    SequenceNumber,
    Flags,
    MessageId,
    Digest,
    PayloadType,
    PayloadLength,
    Payload,
}

fn field_at(offset: usize) -> Field {
    match offset {
        0..4 => Field::HeaderLength,
        4..36 => Field::MessageType,
        36..40 => Field::SchemaVersion,
        40..48 => Field::CreatedDate,
        48..56 => Field::SequenceNumber,
        56..64 => Field::Flags,
        64..80 => Field::MessageId,
        80..112 => Field::Digest,
        112..116 => Field::PayloadType,
        116..120 => Field::PayloadLength,
        _ => Field::Payload,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn decode_inverts_encode(msg in message(MAX_GENERATED_PAYLOAD)) {
        let frame = msg.to_bytes();
        prop_assert_eq!(frame.len(), msg.encoded_len());
        prop_assert_eq!(AgentMessage::decode(frame.clone()), Ok(msg.clone()));
        prop_assert_eq!(AgentMessage::decode_with(frame.clone(), &unchecked()), Ok(msg.clone()));
        prop_assert_eq!(peek_message_type(&frame), Ok(msg.message_type.clone()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        decode_check::check(&bytes);
    }

    /// Valid frames with random bytes overwritten, cut short or extended: garbage that gets
    /// past the first checks.
    #[test]
    fn mangled_frames_never_panic(
        msg in message(SMALL_PAYLOAD),
        writes in proptest::collection::vec((any::<Index>(), any::<u8>()), 0..8),
        new_len in any::<Index>(),
        resize in any::<bool>(),
    ) {
        let mut frame = msg.to_bytes().to_vec();
        for (at, byte) in writes {
            let at = at.index(frame.len());
            frame[at] = byte;
        }
        if resize {
            frame.resize(new_len.index(frame.len() * 2 + 1), 0xa5);
        }
        decode_check::check(&frame);
    }

    #[test]
    fn single_byte_corruption_is_rejected_or_confined_to_its_field(
        msg in message(SMALL_PAYLOAD),
        at in any::<Index>(),
        mask in 1..=u8::MAX,
    ) {
        let mut frame = msg.to_bytes().to_vec();
        let at = at.index(frame.len());
        frame[at] ^= mask;
        let field = field_at(at);
        let exempt = msg.message_type.is_publication_control();
        let decoded = match AgentMessage::decode(Bytes::from(frame)) {
            Err(_) => return Ok(()),
            Ok(decoded) => decoded,
        };
        let mut restored = decoded.clone();
        match field {
            Field::HeaderLength | Field::PayloadLength => {
                return Err(TestCaseError::fail(format!("{field:?} corruption accepted")));
            }
            Field::Digest => prop_assert!(exempt, "digest corruption accepted"),
            Field::Payload => {
                prop_assert!(exempt, "payload corruption accepted");
                prop_assert_ne!(&decoded.payload, &msg.payload);
                restored.payload = msg.payload.clone();
            }
            // Padding may turn into other padding (NUL, tab…), which reads as the same type.
            Field::MessageType => restored.message_type = msg.message_type.clone(),
            Field::SchemaVersion => {
                prop_assert_ne!(decoded.schema_version, msg.schema_version);
                restored.schema_version = msg.schema_version;
            }
            Field::CreatedDate => {
                prop_assert_ne!(decoded.created_date, msg.created_date);
                restored.created_date = msg.created_date;
            }
            Field::SequenceNumber => {
                prop_assert_ne!(decoded.sequence_number, msg.sequence_number);
                restored.sequence_number = msg.sequence_number;
            }
            Field::Flags => {
                prop_assert_ne!(decoded.flags, msg.flags);
                restored.flags = msg.flags;
            }
            Field::MessageId => {
                prop_assert_ne!(decoded.message_id, msg.message_id);
                restored.message_id = msg.message_id;
            }
            Field::PayloadType => {
                prop_assert_ne!(decoded.payload_type, msg.payload_type);
                restored.payload_type = msg.payload_type;
            }
        }
        prop_assert_eq!(restored, msg);
    }
}
