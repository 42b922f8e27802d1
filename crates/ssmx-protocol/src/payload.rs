//! Typed payloads of data-channel and control-channel messages (PROTOCOL.md §2.3, §4–§10).
//!
//! Field names and order follow what the official Go programs emit, so our JSON is byte-identical
//! to theirs. Go conventions apply: `[]byte` is base64, durations are nanoseconds, empty slices are
//! `null`.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::message::{flags, AgentMessage, MessageType, PayloadType};

/// Why a payload could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// The payload is not the JSON this type expects.
    #[error("malformed {what} payload: {source}")]
    Json {
        /// The payload kind.
        what: &'static str,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A binary payload of the wrong length or content.
    #[error("malformed {what} payload: {detail}")]
    Invalid {
        /// The payload kind.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
}

/// Parses a JSON payload, naming the payload kind in the error.
pub fn from_json<T: for<'de> Deserialize<'de>>(
    what: &'static str,
    payload: &[u8],
) -> Result<T, PayloadError> {
    serde_json::from_slice(payload).map_err(|source| PayloadError::Json { what, source })
}

/// Serialises a payload to JSON bytes exactly as Go's `encoding/json` would: compact, and with
/// `<`, `>`, `&`, U+2028 and U+2029 escaped as `\u003c`-style sequences.
pub fn to_json<T: Serialize>(value: &T) -> Bytes {
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GoJsonFormatter);
    value.serialize(&mut ser).expect("payload types serialise");
    Bytes::from(out)
}

/// serde_json's compact output plus Go's HTML-safe escaping of string contents.
struct GoJsonFormatter;

impl serde_json::ser::Formatter for GoJsonFormatter {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let escape = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..i])?;
            writer.write_all(escape.as_bytes())?;
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

/// `acknowledge` payload (§5.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acknowledge {
    /// Type of the acknowledged message.
    #[serde(rename = "AcknowledgedMessageType")]
    pub message_type: String,
    /// Id of the acknowledged message, canonical text form.
    #[serde(rename = "AcknowledgedMessageId")]
    pub message_id: String,
    /// Sequence number of the acknowledged message (what receivers match on).
    #[serde(rename = "AcknowledgedMessageSequenceNumber")]
    pub sequence_number: i64,
    /// Always true.
    #[serde(rename = "IsSequentialMessage")]
    pub is_sequential_message: bool,
}

impl Acknowledge {
    /// The acknowledgement of `msg`.
    pub fn of(msg: &AgentMessage) -> Self {
        Self {
            message_type: msg.message_type.as_str().to_owned(),
            message_id: msg.message_id.hyphenated().to_string(),
            sequence_number: msg.sequence_number,
            is_sequential_message: true,
        }
    }

    /// The `acknowledge` frame carrying this payload, as both official ends build it.
    pub fn to_message(&self) -> AgentMessage {
        let mut msg = AgentMessage::new(
            MessageType::Acknowledge,
            PayloadType::Undefined,
            to_json(self),
        );
        msg.flags = flags::SYN_FIN;
        msg
    }
}

/// `ActionType` of a handshake action.
pub mod action_type {
    /// Tells the client the session type and its properties.
    pub const SESSION_TYPE: &str = "SessionType";
    /// Asks the client for a KMS data key.
    pub const KMS_ENCRYPTION: &str = "KMSEncryption";
}

/// Session types (the document's `sessionType`).
pub mod session_type {
    /// Interactive shell on a PTY.
    pub const STANDARD_STREAM: &str = "Standard_Stream";
    /// A document command on a PTY.
    pub const INTERACTIVE_COMMANDS: &str = "InteractiveCommands";
    /// A document command without PTY, stdout/stderr/exit code.
    pub const NON_INTERACTIVE_COMMANDS: &str = "NonInteractiveCommands";
    /// Port forwarding.
    pub const PORT: &str = "Port";
}

/// HandshakeRequest payload, agent → client (§6.1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HandshakeRequest {
    /// Four-part agent version.
    #[serde(rename = "AgentVersion")]
    pub agent_version: String,
    /// Actions for the client, SessionType first.
    #[serde(rename = "RequestedClientActions")]
    pub requested_client_actions: Vec<RequestedClientAction>,
    /// What an ssmx agent offers beyond the official protocol; absent from official agents, and
    /// ignored by official clients (Go's decoder skips unknown fields).
    #[serde(
        rename = "SsmxCapabilities",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ssmx_capabilities: Option<SsmxCapabilities>,
}

/// Extensions two ssmx ends agree on in the handshake, invisible to official ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SsmxCapabilities {
    /// Largest stream payload this end accepts and may send once both ends have said so.
    #[serde(rename = "MaxPayloadSize")]
    pub max_payload_size: u32,
}

/// One requested action. Parameters stay JSON so unknown actions pass through; known actions
/// serialise their parameters in the official field order (a JSON object alone would sort them).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct RequestedClientAction {
    /// See [`action_type`].
    #[serde(rename = "ActionType")]
    pub action_type: String,
    /// Action-specific parameters.
    #[serde(rename = "ActionParameters")]
    pub action_parameters: serde_json::Value,
}

impl Serialize for RequestedClientAction {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a, P: Serialize> {
            #[serde(rename = "ActionType")]
            action_type: &'a str,
            #[serde(rename = "ActionParameters")]
            action_parameters: P,
        }
        let action_type = self.action_type.as_str();
        match action_type {
            action_type::SESSION_TYPE => {
                if let Ok(p) = self.parameters::<SessionTypeParameters>() {
                    return Wire {
                        action_type,
                        action_parameters: p,
                    }
                    .serialize(serializer);
                }
            }
            action_type::KMS_ENCRYPTION => {
                if let Ok(p) = self.parameters::<KmsEncryptionParameters>() {
                    return Wire {
                        action_type,
                        action_parameters: p,
                    }
                    .serialize(serializer);
                }
            }
            _ => {}
        }
        Wire {
            action_type,
            action_parameters: &self.action_parameters,
        }
        .serialize(serializer)
    }
}

/// Parameters of the `SessionType` action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionTypeParameters {
    /// See [`session_type`].
    #[serde(rename = "SessionType")]
    pub session_type: String,
    /// The document's properties after substitution (Port), else `null`.
    #[serde(rename = "Properties")]
    pub properties: serde_json::Value,
}

/// Parameters of the `KMSEncryption` action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KmsEncryptionParameters {
    /// The KMS key to generate the data key under.
    #[serde(rename = "KMSKeyId")]
    pub kms_key_id: String,
    /// Random challenge for the encryption context; absent from older agents.
    #[serde(rename = "Challenge", default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<String>,
}

impl RequestedClientAction {
    /// A `SessionType` action.
    pub fn session_type(params: &SessionTypeParameters) -> Self {
        Self {
            action_type: action_type::SESSION_TYPE.to_owned(),
            action_parameters: serde_json::to_value(params).expect("serialisable"),
        }
    }

    /// A `KMSEncryption` action.
    pub fn kms_encryption(params: &KmsEncryptionParameters) -> Self {
        Self {
            action_type: action_type::KMS_ENCRYPTION.to_owned(),
            action_parameters: serde_json::to_value(params).expect("serialisable"),
        }
    }

    /// The parameters read as `T`.
    pub fn parameters<T: for<'de> Deserialize<'de>>(&self) -> Result<T, PayloadError> {
        T::deserialize(&self.action_parameters).map_err(|source| PayloadError::Json {
            what: "handshake action parameters",
            source,
        })
    }
}

/// Reads `null` as the type's default, as Go's JSON decoder leaves a zero value for `null`.
pub(crate) fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Option::unwrap_or_default)
}

/// `ActionStatus` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "i64", into = "i64")]
pub enum ActionStatus {
    /// 1
    Success,
    /// 2
    Failed,
    /// 3
    Unsupported,
    /// Anything else (the official client sends 0 for unknown actions).
    Other(i64),
}

impl Default for ActionStatus {
    /// Go's zero value: an absent status reads as 0, a failure.
    fn default() -> Self {
        ActionStatus::Other(0)
    }
}

impl From<i64> for ActionStatus {
    fn from(v: i64) -> Self {
        match v {
            1 => ActionStatus::Success,
            2 => ActionStatus::Failed,
            3 => ActionStatus::Unsupported,
            o => ActionStatus::Other(o),
        }
    }
}

impl From<ActionStatus> for i64 {
    fn from(s: ActionStatus) -> i64 {
        match s {
            ActionStatus::Success => 1,
            ActionStatus::Failed => 2,
            ActionStatus::Unsupported => 3,
            ActionStatus::Other(o) => o,
        }
    }
}

/// HandshakeResponse payload, client → agent (§6.2).
///
/// Read as leniently as the official agent reads it: absent or `null` fields take their zero
/// values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HandshakeResponse {
    /// Four-part client version.
    #[serde(
        rename = "ClientVersion",
        default,
        deserialize_with = "null_as_default"
    )]
    pub client_version: String,
    /// One entry per requested action, in order.
    #[serde(
        rename = "ProcessedClientActions",
        default,
        deserialize_with = "null_as_default"
    )]
    pub processed_client_actions: Vec<ProcessedClientAction>,
    /// `null` when empty.
    #[serde(rename = "Errors", default)]
    pub errors: Option<Vec<String>>,
    /// Present only when an ssmx client answers an ssmx agent that offered capabilities.
    #[serde(
        rename = "SsmxCapabilities",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ssmx_capabilities: Option<SsmxCapabilities>,
}

/// The client's answer to one action.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ProcessedClientAction {
    /// The action's type.
    #[serde(rename = "ActionType", default, deserialize_with = "null_as_default")]
    pub action_type: String,
    /// Outcome.
    #[serde(rename = "ActionStatus", default, deserialize_with = "null_as_default")]
    pub action_status: ActionStatus,
    /// Action-specific result (`null` for SessionType).
    #[serde(rename = "ActionResult", default)]
    pub action_result: serde_json::Value,
    /// Error text, `""` on success.
    #[serde(rename = "Error", default, deserialize_with = "null_as_default")]
    pub error: String,
}

impl Serialize for ProcessedClientAction {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a, R: Serialize> {
            #[serde(rename = "ActionType")]
            action_type: &'a str,
            #[serde(rename = "ActionStatus")]
            action_status: ActionStatus,
            #[serde(rename = "ActionResult")]
            action_result: R,
            #[serde(rename = "Error")]
            error: &'a str,
        }
        let (action_type, action_status, error) = (
            self.action_type.as_str(),
            self.action_status,
            self.error.as_str(),
        );
        if action_type == action_type::KMS_ENCRYPTION && self.action_result.is_object() {
            if let Ok(result) = KmsEncryptionResult::deserialize(&self.action_result) {
                return Wire {
                    action_type,
                    action_status,
                    action_result: result,
                    error,
                }
                .serialize(serializer);
            }
        }
        Wire {
            action_type,
            action_status,
            action_result: &self.action_result,
            error,
        }
        .serialize(serializer)
    }
}

/// Result of a successful `KMSEncryption` action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KmsEncryptionResult {
    /// Base64 KMS ciphertext blob of the data key.
    #[serde(
        rename = "KMSCipherTextKey",
        default,
        deserialize_with = "null_as_default"
    )]
    pub kms_cipher_text_key: String,
    /// Always null.
    #[serde(rename = "KMSCipherTextHash", default)]
    pub kms_cipher_text_hash: Option<String>,
    /// True when the random challenge went into the encryption context.
    #[serde(
        rename = "ChallengeAcknowledgement",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub challenge_acknowledgement: Option<bool>,
}

/// HandshakeComplete payload, agent → client (§6.4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeComplete {
    /// Nanoseconds from request to completion.
    #[serde(rename = "HandshakeTimeToComplete")]
    pub handshake_time_to_complete: i64,
    /// Text the client prints, may be empty.
    #[serde(rename = "CustomerMessage")]
    pub customer_message: String,
}

/// EncChallengeRequest / EncChallengeResponse payload (§6.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionChallenge {
    /// Base64 of nonce ‖ ciphertext ‖ tag.
    #[serde(rename = "Challenge")]
    pub challenge: String,
}

/// Size payload: the client's terminal size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalSize {
    /// Columns.
    pub cols: u32,
    /// Rows.
    pub rows: u32,
}

/// `channel_closed` payload (§4.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelClosed {
    /// Id of the carrying message.
    #[serde(rename = "MessageId", default)]
    pub message_id: String,
    /// ISO-8601 UTC.
    #[serde(rename = "CreatedDate", default)]
    pub created_date: String,
    /// The instance id.
    #[serde(rename = "DestinationId", default)]
    pub destination_id: String,
    /// The session being closed.
    #[serde(rename = "SessionId", default)]
    pub session_id: String,
    /// `channel_closed`.
    #[serde(rename = "MessageType", default)]
    pub message_type: String,
    /// 1.
    #[serde(rename = "SchemaVersion", default)]
    pub schema_version: i64,
    /// Reason text; empty for a normal end.
    #[serde(rename = "Output", default)]
    pub output: String,
}

impl ChannelClosed {
    /// The `channel_closed` frame for `session_id`, as the service sends it.
    pub fn message(
        session_id: &str,
        destination_id: &str,
        output: &str,
        created_date_iso: String,
    ) -> AgentMessage {
        let message_id = Uuid::new_v4();
        let payload = ChannelClosed {
            message_id: message_id.hyphenated().to_string(),
            created_date: created_date_iso,
            destination_id: destination_id.to_owned(),
            session_id: session_id.to_owned(),
            message_type: MessageType::ChannelClosed.as_str().to_owned(),
            schema_version: 1,
            output: output.to_owned(),
        };
        let mut msg = AgentMessage::new(
            MessageType::ChannelClosed,
            PayloadType::Undefined,
            to_json(&payload),
        );
        msg.message_id = message_id;
        msg
    }
}

/// `SessionState` values of `agent_session_state`.
pub mod session_state {
    /// The agent's data channel is up.
    pub const CONNECTED: &str = "Connected";
    /// The session ended by itself on the agent.
    pub const TERMINATING: &str = "Terminating";
}

/// `agent_session_state` payload, agent → service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSessionState {
    /// 1.
    #[serde(rename = "SchemaVersion")]
    pub schema_version: i64,
    /// See [`session_state`].
    #[serde(rename = "SessionState")]
    pub session_state: String,
    /// The session.
    #[serde(rename = "SessionId")]
    pub session_id: String,
}

impl AgentSessionState {
    /// The frame (seq 0, flags 3) as the official agent sends it.
    pub fn message(session_id: &str, state: &str) -> AgentMessage {
        let payload = AgentSessionState {
            schema_version: 1,
            session_state: state.to_owned(),
            session_id: session_id.to_owned(),
        };
        let mut msg = AgentMessage::new(
            MessageType::AgentSessionState,
            PayloadType::Undefined,
            to_json(&payload),
        );
        msg.flags = flags::SYN_FIN;
        msg
    }
}

/// Flag payload values (§8.5): a 4-byte big-endian u32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortFlag {
    /// Client → agent: close the destination connection (basic mode).
    DisconnectToPort,
    /// Client → agent: end the port session.
    TerminateSession,
    /// Agent → client: dialling the destination failed (mux mode).
    ConnectToPortError,
    /// A value this crate does not know.
    Unknown(u32),
}

impl PortFlag {
    /// The 4-byte payload.
    pub fn to_payload(self) -> Bytes {
        let v = match self {
            PortFlag::DisconnectToPort => 1,
            PortFlag::TerminateSession => 2,
            PortFlag::ConnectToPortError => 3,
            PortFlag::Unknown(v) => v,
        };
        Bytes::copy_from_slice(&u32::to_be_bytes(v))
    }

    /// Reads a 4-byte payload.
    pub fn from_payload(payload: &[u8]) -> Result<Self, PayloadError> {
        let raw: [u8; 4] = payload.try_into().map_err(|_| PayloadError::Invalid {
            what: "flag",
            detail: format!("{} bytes, expected 4", payload.len()),
        })?;
        Ok(match u32::from_be_bytes(raw) {
            1 => PortFlag::DisconnectToPort,
            2 => PortFlag::TerminateSession,
            3 => PortFlag::ConnectToPortError,
            v => PortFlag::Unknown(v),
        })
    }
}

/// ExitCode payload: ASCII `EXIT_CODE: <n>` (§8.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitCode(pub i32);

impl ExitCode {
    const PREFIX: &'static str = "EXIT_CODE: ";

    /// The payload as the official agent writes it.
    pub fn to_payload(self) -> Bytes {
        Bytes::from(format!("{}{}", Self::PREFIX, self.0))
    }

    /// Reads `EXIT_CODE: <n>` (or a bare decimal).
    pub fn from_payload(payload: &[u8]) -> Result<Self, PayloadError> {
        let invalid = || PayloadError::Invalid {
            what: "exit code",
            detail: format!("{:?}", String::from_utf8_lossy(payload)),
        };
        let text = std::str::from_utf8(payload).map_err(|_| invalid())?.trim();
        let digits = text
            .strip_prefix(Self::PREFIX.trim_end())
            .unwrap_or(text)
            .trim();
        digits.parse().map(ExitCode).map_err(|_| invalid())
    }
}

impl fmt::Display for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// `MessageSchemaVersion` of the Open…Channel and Create…Channel JSON.
pub const MESSAGE_SCHEMA_VERSION: &str = "1.0";

/// First text frame on a data channel (§2.3), from the client or the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenDataChannelInput {
    /// "1.0".
    #[serde(rename = "MessageSchemaVersion")]
    pub message_schema_version: String,
    /// Fresh UUID v4 per open.
    #[serde(rename = "RequestId")]
    pub request_id: String,
    /// The channel token.
    #[serde(rename = "TokenValue")]
    pub token_value: String,
    /// The agent's instance id (agent only).
    #[serde(
        rename = "ClientInstanceId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_instance_id: Option<String>,
    /// Client: a UUID fixed per process; agent: `""`.
    #[serde(rename = "ClientId", default)]
    pub client_id: String,
    /// Client version (recent clients only).
    #[serde(
        rename = "ClientVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_version: Option<String>,
}

/// First text frame on the control channel (§2.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenControlChannelInput {
    /// Always null.
    #[serde(rename = "Cookie", default)]
    pub cookie: Option<String>,
    /// "1.0".
    #[serde(rename = "MessageSchemaVersion")]
    pub message_schema_version: String,
    /// Fresh UUID v4 per open.
    #[serde(rename = "RequestId")]
    pub request_id: String,
    /// Token from CreateControlChannel.
    #[serde(rename = "TokenValue")]
    pub token_value: String,
    /// Four-part agent version.
    #[serde(rename = "AgentVersion")]
    pub agent_version: String,
    /// `linux`, `windows` or `macos`.
    #[serde(rename = "PlatformType")]
    pub platform_type: String,
}

/// Body of CreateControlChannel / CreateDataChannel (§10.1, §10.4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateChannelInput {
    /// "1.0".
    #[serde(rename = "MessageSchemaVersion")]
    pub message_schema_version: String,
    /// Fresh UUID v4.
    #[serde(rename = "RequestId")]
    pub request_id: String,
    /// `""` for data channels; absent for the control channel.
    #[serde(rename = "ClientId", default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// The XML body of a 201 answer to CreateControlChannel / CreateDataChannel.
pub fn create_channel_output_xml(token: &str) -> String {
    format!(
        "<CreateChannelResponse><MessageSchemaVersion>{MESSAGE_SCHEMA_VERSION}</MessageSchemaVersion><TokenValue>{}</TokenValue></CreateChannelResponse>",
        xml_escape(token)
    )
}

/// Reads `TokenValue` from a CreateControlChannel / CreateDataChannel XML body.
pub fn parse_create_channel_output_xml(body: &str) -> Option<String> {
    let start = body.find("<TokenValue>")? + "<TokenValue>".len();
    let end = start + body[start..].find("</TokenValue>")?;
    Some(xml_unescape(&body[start..end]))
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// `interactive_shell` / `agent_job` envelope on the control channel (§10.3). `Content` is a JSON
/// document encoded as a string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MgsPayload {
    /// Double-encoded JSON.
    #[serde(rename = "Content")]
    pub content: String,
    /// Session id (for sessions).
    #[serde(rename = "TaskId", default)]
    pub task_id: String,
    /// Opaque.
    #[serde(rename = "Topic", default)]
    pub topic: String,
    /// 1.
    #[serde(rename = "SchemaVersion", default)]
    pub schema_version: i64,
}

/// The start-session request inside [`MgsPayload::content`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentTaskPayload {
    /// Session id.
    #[serde(rename = "SessionId")]
    pub session_id: String,
    /// Document name (informational).
    #[serde(rename = "DocumentName", default)]
    pub document_name: String,
    /// The session document.
    #[serde(rename = "DocumentContent")]
    pub document_content: crate::document::SessionDocument,
    /// Parameter values: strings for String parameters, arrays for StringList.
    #[serde(rename = "Parameters", default)]
    pub parameters: BTreeMap<String, serde_json::Value>,
    /// RunAs user from the caller's identity.
    #[serde(rename = "RunAsUser", default)]
    pub run_as_user: String,
    /// Caller ARN.
    #[serde(rename = "SessionOwner", default)]
    pub session_owner: String,
}

impl AgentTaskPayload {
    /// The `interactive_shell` control-channel frame carrying this request.
    pub fn to_message(&self) -> AgentMessage {
        let envelope = MgsPayload {
            content: String::from_utf8(to_json(self).to_vec()).expect("JSON is UTF-8"),
            task_id: self.session_id.clone(),
            topic: "aws.ssm.startSession".to_owned(),
            schema_version: 1,
        };
        AgentMessage::new(
            MessageType::InteractiveShell,
            PayloadType::Undefined,
            to_json(&envelope),
        )
    }

    /// Reads the request from an `interactive_shell` frame's payload.
    pub fn from_message_payload(payload: &[u8]) -> Result<Self, PayloadError> {
        let envelope: MgsPayload = from_json("interactive_shell", payload)?;
        from_json("interactive_shell content", envelope.content.as_bytes())
    }
}

/// Final statuses reported in `agent_task_complete`.
pub mod task_status {
    /// The session ended normally (also for cancelled sessions).
    pub const SUCCESS: &str = "Success";
    /// The session failed.
    pub const FAILED: &str = "Failed";
    /// The session was cancelled.
    pub const CANCELLED: &str = "Cancelled";
    /// The session timed out.
    pub const TIMED_OUT: &str = "TimedOut";
}

/// `agent_task_complete` payload, agent → service (§10.5).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentTaskComplete {
    /// 1.
    #[serde(rename = "SchemaVersion")]
    pub schema_version: i64,
    /// Session id.
    #[serde(rename = "TaskId")]
    pub task_id: String,
    /// `agent_task_complete`.
    #[serde(rename = "Topic")]
    pub topic: String,
    /// See [`task_status`].
    #[serde(rename = "FinalTaskStatus")]
    pub final_task_status: String,
    /// false.
    #[serde(rename = "IsRoutingFailure", default)]
    pub is_routing_failure: bool,
    /// "".
    #[serde(rename = "AwsAccountId", default)]
    pub aws_account_id: String,
    /// The agent's instance id.
    #[serde(rename = "InstanceId")]
    pub instance_id: String,
    /// Failure text.
    #[serde(rename = "Output", default)]
    pub output: String,
    /// "".
    #[serde(rename = "S3Bucket", default)]
    pub s3_bucket: String,
    /// "".
    #[serde(rename = "S3UrlSuffix", default)]
    pub s3_url_suffix: String,
    /// "".
    #[serde(rename = "CwlGroup", default)]
    pub cwl_group: String,
    /// "".
    #[serde(rename = "CwlStream", default)]
    pub cwl_stream: String,
    /// 1, 2, 3.
    #[serde(rename = "RetryNumber", default)]
    pub retry_number: i64,
}

impl AgentTaskComplete {
    /// A report for `session_id` with the given status and output text.
    pub fn new(session_id: &str, instance_id: &str, status: &str, output: &str) -> Self {
        Self {
            schema_version: 1,
            task_id: session_id.to_owned(),
            topic: MessageType::AgentTaskComplete.as_str().to_owned(),
            final_task_status: status.to_owned(),
            is_routing_failure: false,
            aws_account_id: String::new(),
            instance_id: instance_id.to_owned(),
            output: output.to_owned(),
            s3_bucket: String::new(),
            s3_url_suffix: String::new(),
            cwl_group: String::new(),
            cwl_stream: String::new(),
            retry_number: 1,
        }
    }
}

/// `agent_task_acknowledge` payload, service → agent (§10.5).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentTaskAcknowledge {
    /// MessageId of the acknowledged `agent_task_complete` frame.
    #[serde(rename = "MessageId")]
    pub message_id: String,
    /// 1.
    #[serde(rename = "SchemaVersion")]
    pub schema_version: i64,
    /// Session id.
    #[serde(rename = "TaskId")]
    pub task_id: String,
    /// `agent_task_complete`.
    #[serde(rename = "Topic")]
    pub topic: String,
}
