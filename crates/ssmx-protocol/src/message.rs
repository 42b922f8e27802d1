//! The `AgentMessage` frame (called `ClientMessage` in the official client): a fixed 120-byte
//! header followed by the payload (PROTOCOL.md §3).

use std::fmt;

use bytes::{Bytes, BytesMut};
use uuid::Uuid;

use crate::digest::{sha256, Digest};

/// Value written into the HeaderLength field: the offset of PayloadLength, not of the payload.
pub const HEADER_LENGTH: u32 = 116;
/// Offset of the first payload byte: HeaderLength + the 4-byte PayloadLength field.
pub const PAYLOAD_OFFSET: usize = 120;
/// Width of the space-padded MessageType field.
pub const MESSAGE_TYPE_LEN: usize = 32;
/// SchemaVersion written by both official ends.
pub const SCHEMA_VERSION: u32 = 1;
/// Largest payload [`DecodeOptions::default`] accepts. The official ends read at most 1 KiB per
/// message and the service's limit is undocumented; 16 MiB leaves ample room for negotiated large
/// payloads while bounding what a hostile peer can make us hold.
pub const DEFAULT_MAX_PAYLOAD: usize = 16 * 1024 * 1024;

const OFF_MESSAGE_TYPE: usize = 4;
const OFF_SCHEMA_VERSION: usize = 36;
const OFF_CREATED_DATE: usize = 40;
const OFF_SEQUENCE_NUMBER: usize = 48;
const OFF_FLAGS: usize = 56;
const OFF_MESSAGE_ID: usize = 64;
const OFF_DIGEST: usize = 80;
const OFF_PAYLOAD_TYPE: usize = 112;
const OFF_PAYLOAD_LENGTH: usize = 116;

/// Header flag bits (informational: no official receiver reads them).
pub mod flags {
    /// "Consider this sequence number the first of the stream"; the agent sets it at seq 0.
    pub const SYN: u64 = 1;
    /// "Final message of the stream".
    pub const FIN: u64 = 2;
    /// Written on `acknowledge` and `agent_session_state` by both official ends.
    pub const SYN_FIN: u64 = SYN | FIN;
}

macro_rules! message_types {
    ($($(#[$doc:meta])* $variant:ident = $text:literal,)*) => {
        /// The MessageType header field. Unknown types are kept, so a frame can be relayed or
        /// logged without loss.
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum MessageType {
            $($(#[$doc])* $variant,)*
            /// A type this crate does not know.
            Unknown(UnknownMessageType),
        }

        impl MessageType {
            /// Every known type, for tests and diagnostics.
            pub const KNOWN: &'static [MessageType] = &[$(MessageType::$variant,)*];

            /// The wire text of this type.
            pub fn as_str(&self) -> &str {
                match self {
                    $(MessageType::$variant => $text,)*
                    MessageType::Unknown(u) => &u.0,
                }
            }

            fn from_known(text: &[u8]) -> Option<Self> {
                match text {
                    $(t if t == $text.as_bytes() => Some(MessageType::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

message_types! {
    /// Client → agent stream data.
    InputStreamData = "input_stream_data",
    /// Agent → client stream data.
    OutputStreamData = "output_stream_data",
    /// End-to-end acknowledgement of a stream message.
    Acknowledge = "acknowledge",
    /// Agent → service: `Connected` / `Terminating`.
    AgentSessionState = "agent_session_state",
    /// Service → either end: the session is over.
    ChannelClosed = "channel_closed",
    /// Service → agent: the peer is active again.
    StartPublication = "start_publication",
    /// Service → agent: the peer is gone for now.
    PausePublication = "pause_publication",
    /// Service → agent (control channel): start a session.
    InteractiveShell = "interactive_shell",
    /// Service → agent (control channel): Run Command job.
    AgentJob = "agent_job",
    /// Agent → service: job received.
    AgentJobAck = "agent_job_ack",
    /// Agent → service: job result.
    AgentJobReply = "agent_job_reply",
    /// Service → agent: ack of `agent_job_reply`.
    AgentJobReplyAck = "agent_job_reply_ack",
    /// Agent → service: session finished.
    AgentTaskComplete = "agent_task_complete",
    /// Service → agent: ack of `agent_task_complete`.
    AgentTaskAcknowledge = "agent_task_acknowledge",
    /// Defined by the agent, never sent.
    AgentTaskReply = "agent_task_reply",
    /// Agent → service telemetry.
    AgentTelemetry = "agent_telemetry",
    /// Agent → service update result.
    AgentUpdateResult = "agent_update_result",
}

impl MessageType {
    /// Parses a type name (as given, no trimming). Fails when it is empty, longer than 32 bytes or
    /// not printable ASCII.
    pub fn parse(text: &str) -> Result<Self, InvalidMessageType> {
        if let Some(known) = Self::from_known(text.as_bytes()) {
            return Ok(known);
        }
        UnknownMessageType::new(text).map(MessageType::Unknown)
    }

    /// True for the two stream-message types, which carry sequence numbers and are acknowledged.
    pub fn is_stream_data(&self) -> bool {
        matches!(
            self,
            MessageType::InputStreamData | MessageType::OutputStreamData
        )
    }

    /// True for `start_publication` / `pause_publication`, which the official client accepts
    /// without validation (the service may send them with a zero digest or date).
    pub fn is_publication_control(&self) -> bool {
        matches!(
            self,
            MessageType::StartPublication | MessageType::PausePublication
        )
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message type outside [`MessageType::KNOWN`]: 1–32 bytes of printable ASCII.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UnknownMessageType(String);

impl UnknownMessageType {
    fn new(text: &str) -> Result<Self, InvalidMessageType> {
        if text.is_empty() {
            return Err(InvalidMessageType::Empty);
        }
        if text.len() > MESSAGE_TYPE_LEN {
            return Err(InvalidMessageType::TooLong(text.len()));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidMessageType::NotPrintableAscii);
        }
        Ok(Self(text.to_owned()))
    }
}

/// Why a message type name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMessageType {
    /// All spaces or NULs.
    #[error("message type is missing")]
    Empty,
    /// Longer than the 32-byte field.
    #[error("message type is {0} bytes long; the field holds 32")]
    TooLong(usize),
    /// Contains bytes outside printable ASCII.
    #[error("message type is not printable ASCII")]
    NotPrintableAscii,
}

macro_rules! payload_types {
    ($($(#[$doc:meta])* $variant:ident = $value:literal,)*) => {
        /// The PayloadType header field (§3.6). Unknown values are kept.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum PayloadType {
            $($(#[$doc])* $variant,)*
            /// A value this crate does not know.
            Unknown(u32),
        }

        impl PayloadType {
            /// The wire value.
            pub fn to_u32(self) -> u32 {
                match self {
                    $(PayloadType::$variant => $value,)*
                    PayloadType::Unknown(v) => v,
                }
            }

            /// Maps a wire value, keeping unknown ones.
            pub fn from_u32(value: u32) -> Self {
                match value {
                    $($value => PayloadType::$variant,)*
                    other => PayloadType::Unknown(other),
                }
            }
        }
    };
}

payload_types! {
    /// Not applicable (acks, control and service messages).
    Undefined = 0,
    /// Raw stream bytes; encrypted under KMS.
    Output = 1,
    /// Defined, never sent.
    Error = 2,
    /// Terminal size JSON.
    Size = 3,
    /// Defined, never sent.
    Parameter = 4,
    /// Agent → client handshake request.
    HandshakeRequest = 5,
    /// Client → agent handshake response.
    HandshakeResponse = 6,
    /// Agent → client handshake completion.
    HandshakeComplete = 7,
    /// Agent → client encryption challenge.
    EncChallengeRequest = 8,
    /// Client → agent encryption challenge answer.
    EncChallengeResponse = 9,
    /// 4-byte big-endian port flag.
    Flag = 10,
    /// Standard error of a non-interactive command; encrypted under KMS.
    StdErr = 11,
    /// `EXIT_CODE: <n>` of a non-interactive command; encrypted under KMS.
    ExitCode = 12,
}

impl PayloadType {
    /// True for the handshake payload types, which are dispatched to the handshake logic.
    pub fn is_handshake(self) -> bool {
        matches!(
            self,
            PayloadType::HandshakeRequest
                | PayloadType::HandshakeResponse
                | PayloadType::HandshakeComplete
                | PayloadType::EncChallengeRequest
                | PayloadType::EncChallengeResponse
        )
    }
}

/// One protocol message. `decode(encode(m)) == m` for every message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentMessage {
    /// The MessageType field.
    pub message_type: MessageType,
    /// The header SchemaVersion (1 on every message the official ends send).
    pub schema_version: u32,
    /// Creation time, Unix epoch milliseconds; must be non-zero.
    pub created_date: u64,
    /// Stream sequence number; 0 for non-stream messages.
    pub sequence_number: i64,
    /// Header flags, see [`flags`].
    pub flags: u64,
    /// MessageId, in canonical UUID order (the wire swaps its halves).
    pub message_id: Uuid,
    /// The PayloadType field.
    pub payload_type: PayloadType,
    /// The payload bytes (ciphertext when the session is encrypted).
    pub payload: Bytes,
}

impl AgentMessage {
    /// A message with schema version 1, a fresh random id and the current time.
    pub fn new(message_type: MessageType, payload_type: PayloadType, payload: Bytes) -> Self {
        Self {
            message_type,
            schema_version: SCHEMA_VERSION,
            created_date: now_millis(),
            sequence_number: 0,
            flags: 0,
            message_id: new_message_id(),
            payload_type,
            payload,
        }
    }

    /// The size of the encoded frame.
    pub fn encoded_len(&self) -> usize {
        PAYLOAD_OFFSET + self.payload.len()
    }

    /// Appends the frame to `buf`, computing the payload digest.
    ///
    /// # Panics
    /// If the payload is 4 GiB or larger (its length does not fit the 32-bit field).
    pub fn encode(&self, buf: &mut BytesMut) {
        self.encode_with_digest(buf, &sha256(&self.payload));
    }

    /// Appends the frame to `buf` with a digest the caller already computed over the payload.
    pub fn encode_with_digest(&self, buf: &mut BytesMut, digest: &Digest) {
        let payload_len = u32::try_from(self.payload.len()).expect("payload length fits in u32");
        // The header is assembled on the stack and appended with the payload in two copies, rather
        // than field by field through `BufMut`'s bounds-checked puts.
        let mut header = [b' '; PAYLOAD_OFFSET];
        header[..OFF_MESSAGE_TYPE].copy_from_slice(&HEADER_LENGTH.to_be_bytes());
        let name = self.message_type.as_str().as_bytes();
        header[OFF_MESSAGE_TYPE..OFF_MESSAGE_TYPE + name.len()].copy_from_slice(name);
        header[OFF_SCHEMA_VERSION..OFF_CREATED_DATE]
            .copy_from_slice(&self.schema_version.to_be_bytes());
        header[OFF_CREATED_DATE..OFF_SEQUENCE_NUMBER]
            .copy_from_slice(&self.created_date.to_be_bytes());
        header[OFF_SEQUENCE_NUMBER..OFF_FLAGS].copy_from_slice(&self.sequence_number.to_be_bytes());
        header[OFF_FLAGS..OFF_MESSAGE_ID].copy_from_slice(&self.flags.to_be_bytes());
        let id = self.message_id.as_bytes();
        header[OFF_MESSAGE_ID..OFF_MESSAGE_ID + 8].copy_from_slice(&id[8..16]);
        header[OFF_MESSAGE_ID + 8..OFF_DIGEST].copy_from_slice(&id[0..8]);
        header[OFF_DIGEST..OFF_PAYLOAD_TYPE].copy_from_slice(digest);
        header[OFF_PAYLOAD_TYPE..OFF_PAYLOAD_LENGTH]
            .copy_from_slice(&self.payload_type.to_u32().to_be_bytes());
        header[OFF_PAYLOAD_LENGTH..].copy_from_slice(&payload_len.to_be_bytes());
        buf.reserve(self.encoded_len());
        buf.extend_from_slice(&header);
        buf.extend_from_slice(&self.payload);
    }

    /// The encoded frame as one buffer, in an allocation of its own.
    ///
    /// A sender encoding many frames can instead [`encode`](Self::encode) them into one reused
    /// `BytesMut` and `split().freeze()` each: the frames then share its allocations.
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut buf);
        buf.freeze()
    }

    /// Decodes and validates a frame with [`DecodeOptions::default`] (digest checked).
    pub fn decode(frame: Bytes) -> Result<Self, DecodeError> {
        Self::decode_with(frame, &DecodeOptions::default())
    }

    /// Decodes and validates a frame. The payload is a slice of `frame`, not a copy.
    pub fn decode_with(frame: Bytes, options: &DecodeOptions) -> Result<Self, DecodeError> {
        if frame.len() < PAYLOAD_OFFSET {
            return Err(DecodeError::Truncated { len: frame.len() });
        }
        let header_length = read_u32(&frame, 0);
        if header_length != HEADER_LENGTH {
            return Err(DecodeError::HeaderLength {
                found: header_length,
            });
        }
        let message_type = parse_message_type(&frame[OFF_MESSAGE_TYPE..OFF_SCHEMA_VERSION])?;
        let declared = read_u32(&frame, OFF_PAYLOAD_LENGTH) as usize;
        let actual = frame.len() - PAYLOAD_OFFSET;
        if declared != actual {
            return Err(DecodeError::PayloadLength { declared, actual });
        }
        if actual > options.max_payload {
            return Err(DecodeError::PayloadTooLarge {
                len: actual,
                max: options.max_payload,
            });
        }
        let created_date = read_u64(&frame, OFF_CREATED_DATE);
        // The official client exempts publication control from validation; the service may send
        // it with a zero digest and date (vectors lenient_start_publication_*).
        let exempt = message_type.is_publication_control();
        if created_date == 0 && !exempt {
            return Err(DecodeError::MissingCreatedDate);
        }
        let payload = frame.slice(PAYLOAD_OFFSET..);
        if options.verify_digest
            && !exempt
            && sha256(&payload)[..] != frame[OFF_DIGEST..OFF_PAYLOAD_TYPE]
        {
            return Err(DecodeError::DigestMismatch);
        }
        let mut id = [0u8; 16];
        id[8..16].copy_from_slice(&frame[OFF_MESSAGE_ID..OFF_MESSAGE_ID + 8]);
        id[0..8].copy_from_slice(&frame[OFF_MESSAGE_ID + 8..OFF_DIGEST]);
        Ok(Self {
            message_type,
            schema_version: read_u32(&frame, OFF_SCHEMA_VERSION),
            created_date,
            sequence_number: read_u64(&frame, OFF_SEQUENCE_NUMBER) as i64,
            flags: read_u64(&frame, OFF_FLAGS),
            message_id: Uuid::from_bytes(id),
            payload_type: PayloadType::from_u32(read_u32(&frame, OFF_PAYLOAD_TYPE)),
            payload,
        })
    }
}

/// Reads only the message type of a frame, without validating the rest. Used by relays that
/// forward frames untouched but must recognise the few they consume.
pub fn peek_message_type(frame: &[u8]) -> Result<MessageType, DecodeError> {
    if frame.len() < PAYLOAD_OFFSET {
        return Err(DecodeError::Truncated { len: frame.len() });
    }
    parse_message_type(&frame[OFF_MESSAGE_TYPE..OFF_SCHEMA_VERSION])
}

/// Options for [`AgentMessage::decode_with`].
#[derive(Clone, Debug)]
pub struct DecodeOptions {
    /// Check the SHA-256 payload digest (on by default; the official agent never checks it).
    pub verify_digest: bool,
    /// Refuse payloads longer than this.
    pub max_payload: usize,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            verify_digest: true,
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// Why a frame was rejected. Each variant says what was wrong; none loses the caller's state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than the 120-byte header.
    #[error("frame of {len} bytes is shorter than the 120-byte header")]
    Truncated {
        /// The frame's length.
        len: usize,
    },
    /// HeaderLength is not 116.
    #[error("header length field is {found}, expected 116")]
    HeaderLength {
        /// The value found.
        found: u32,
    },
    /// The PayloadLength field disagrees with the bytes present.
    #[error("payload length field says {declared} bytes but {actual} follow the header")]
    PayloadLength {
        /// The PayloadLength field.
        declared: usize,
        /// Bytes after the header.
        actual: usize,
    },
    /// The payload is over the configured limit.
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge {
        /// The payload's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The MessageType field is blank, or not printable ASCII.
    #[error("malformed message type: {0}")]
    MessageType(#[from] InvalidMessageType),
    /// CreatedDate is zero.
    #[error("created date is missing (zero)")]
    MissingCreatedDate,
    /// SHA-256 of the payload differs from PayloadDigest.
    #[error("payload digest does not match the payload")]
    DigestMismatch,
}

fn parse_message_type(field: &[u8]) -> Result<MessageType, DecodeError> {
    let trimmed = trim(field, |b| b == 0);
    let trimmed = trim(trimmed, |b| b.is_ascii_whitespace());
    if let Some(known) = MessageType::from_known(trimmed) {
        return Ok(known);
    }
    let text = std::str::from_utf8(trimmed).map_err(|_| InvalidMessageType::NotPrintableAscii)?;
    Ok(MessageType::Unknown(UnknownMessageType::new(text)?))
}

fn trim(mut s: &[u8], strip: impl Fn(u8) -> bool) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !strip(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !strip(*last) {
            break;
        }
        s = rest;
    }
    s
}

fn read_u32(frame: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(frame[at..at + 4].try_into().expect("4 bytes"))
}

fn read_u64(frame: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(frame[at..at + 8].try_into().expect("8 bytes"))
}

/// A fresh random (version 4, RFC 4122 variant) message id.
///
/// The 122 random bits come from `rand`'s `ThreadRng`: a ChaCha12 CSPRNG per thread, seeded from
/// the operating system and reseeded from it every 64 KiB of output, so ids are as unpredictable as
/// `Uuid::new_v4`'s without its getrandom system call per id (≈ 270 ns, a quarter of a 1 KiB
/// message's cost). `ThreadRng` is not reseeded on `fork`; ssmx only forks to `exec`.
fn new_message_id() -> Uuid {
    // One `u128` (two 64-bit draws), not `[u8; 16]`, which `rand` samples byte by byte.
    uuid::Builder::from_random_bytes(rand::random::<u128>().to_ne_bytes()).into_uuid()
}

/// Milliseconds since the Unix epoch, as the CreatedDate field wants them.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
        .max(1)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use uuid::{Variant, Version};

    use super::*;

    fn fresh() -> AgentMessage {
        AgentMessage::new(
            MessageType::OutputStreamData,
            PayloadType::Output,
            Bytes::from_static(b"data"),
        )
    }

    #[test]
    fn consecutive_messages_have_distinct_random_v4_ids() {
        let ids: Vec<Uuid> = (0..1000).map(|_| fresh().message_id).collect();
        for id in &ids {
            assert_eq!(id.get_version(), Some(Version::Random), "{id}");
            assert_eq!(id.get_version_num(), 4, "{id}");
            assert_eq!(id.get_variant(), Variant::RFC4122, "{id}");
        }
        assert!(ids.windows(2).all(|w| w[0] != w[1]));
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
    }

    #[test]
    fn ids_differ_across_threads() {
        let other: Vec<Uuid> =
            std::thread::spawn(|| (0..100).map(|_| fresh().message_id).collect())
                .join()
                .unwrap();
        let here: HashSet<Uuid> = (0..100).map(|_| fresh().message_id).collect();
        assert!(other.iter().all(|id| !here.contains(id)));
    }

    #[test]
    fn new_message_has_current_time_and_encodes_round_trip() {
        let before = now_millis();
        let msg = fresh();
        assert!(msg.created_date >= before && msg.created_date <= now_millis());
        assert_eq!(msg.schema_version, SCHEMA_VERSION);
        assert_eq!(AgentMessage::decode(msg.to_bytes()).unwrap(), msg);
    }
}
