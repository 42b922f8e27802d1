//! What must hold for any input to the frame decoder, whatever its bytes. Shared by the `decode`
//! fuzz target, the stable corpus replay (`tests/fuzz_corpus.rs`) and the property tests
//! (`tests/proptest.rs`); a violation panics, which each of them reports as a failure.

use bytes::Bytes;
use ssmx_protocol::message::PAYLOAD_OFFSET;
use ssmx_protocol::{peek_message_type, AgentMessage, DecodeError, DecodeOptions};

/// Feeds `data` to `AgentMessage::decode_with` (with and without the digest check) and to
/// `peek_message_type`, and checks that their answers agree with each other and that anything
/// accepted re-encodes into an equivalent frame.
pub fn check(data: &[u8]) {
    let frame = Bytes::copy_from_slice(data);
    let unchecked_options = DecodeOptions {
        verify_digest: false,
        ..DecodeOptions::default()
    };
    let checked = AgentMessage::decode_with(frame.clone(), &DecodeOptions::default());
    let unchecked = AgentMessage::decode_with(frame, &unchecked_options);
    let peeked = peek_message_type(data);

    match &unchecked {
        Ok(msg) => {
            // The digest check only ever removes frames.
            if let Err(e) = &checked {
                assert_eq!(
                    e,
                    &DecodeError::DigestMismatch,
                    "checked decode failed otherwise"
                );
            } else {
                assert_eq!(
                    checked.as_ref(),
                    Ok(msg),
                    "the digest check changed the message"
                );
            }
            assert_eq!(
                msg.encoded_len(),
                data.len(),
                "encoded length of an accepted frame"
            );
            assert_eq!(
                peeked.as_ref(),
                Ok(&msg.message_type),
                "peek disagrees with decode"
            );
            // Re-encoding may change only the type's padding and the digest.
            let reencoded = msg.to_bytes();
            assert_eq!(
                reencoded[..4],
                data[..4],
                "header length re-encoded differently"
            );
            assert_eq!(
                reencoded[36..80],
                data[36..80],
                "fixed fields re-encoded differently"
            );
            assert_eq!(
                reencoded[112..],
                data[112..],
                "payload re-encoded differently"
            );
            let again = AgentMessage::decode(reencoded);
            assert_eq!(
                again.as_ref(),
                Ok(msg),
                "re-encoded frame does not decode the same"
            );
        }
        Err(e) => {
            // Structural errors do not depend on the digest option.
            assert_eq!(
                checked.as_ref(),
                Err(e),
                "checked and unchecked decode disagree"
            );
            assert!(!e.to_string().is_empty(), "error without a message");
            if data.len() < PAYLOAD_OFFSET {
                assert_eq!(e, &DecodeError::Truncated { len: data.len() });
                assert_eq!(peeked, Err(DecodeError::Truncated { len: data.len() }));
            }
        }
    }
}
