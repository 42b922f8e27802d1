//! Run Command on the control channel (PROTOCOL.md §10.6, OFFICIAL-AGENT.md §9): the `agent_job`
//! envelope and the send-command / cancel-command payloads it carries, the agent's
//! `agent_job_ack`, its `agent_job_reply` with the reply payload, and the service's
//! `agent_job_reply_ack`.
//!
//! Field names and order follow the official agent, so our replies parse wherever its replies
//! do: the job envelope and the payloads use `PascalCase`, the ack, reply and reply-ack envelopes
//! `lowerCamelCase`. Absent fields read as empty, as the official agent reads them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::message::{AgentMessage, MessageType, PayloadType};
use crate::payload::{from_json, to_json, PayloadError};

/// Topic prefixes of `agent_job` frames (matched by prefix).
pub mod topic {
    /// Run a document.
    pub const SEND_COMMAND: &str = "aws.ssm.sendCommand";
    /// Cancel a running document.
    pub const CANCEL_COMMAND: &str = "aws.ssm.cancelCommand";
}

/// `agent_job_ack` status codes (OFFICIAL-AGENT.md §9.4), as decimal strings on the wire.
pub mod ack_code {
    /// Accepted.
    pub const SUCCESSFUL: &str = "200";
    /// The document processor is closed.
    pub const CLOSED_PROCESSOR: &str = "51401";
    /// The processor's buffer is full.
    pub const PROCESSOR_BUFFER_FULL: &str = "51402";
    /// A job id seen before: not run again (not a failure of the command).
    pub const DUPLICATE_COMMAND: &str = "51405";
    /// The document cannot be run.
    pub const INVALID_DOCUMENT: &str = "51406";
    /// The job's payload does not parse.
    pub const PARSE_ERROR: &str = "51408";
    /// Anything else.
    pub const UNEXPECTED: &str = "51499";

    /// The `errorMessage` the official agent sends with `code`.
    pub fn message(code: &str) -> &'static str {
        match code {
            SUCCESSFUL => "Successful",
            CLOSED_PROCESSOR => "ClosedProcessor",
            PROCESSOR_BUFFER_FULL => "ProcessorBufferFull",
            DUPLICATE_COMMAND => "DuplicateCommand",
            INVALID_DOCUMENT => "InvalidDocument",
            PARSE_ERROR => "AgentJobMessageParseError",
            _ => "UnexpectedError",
        }
    }
}

/// Document and plugin statuses in replies.
pub mod document_status {
    /// Accepted or running.
    pub const IN_PROGRESS: &str = "InProgress";
    /// Every step succeeded.
    pub const SUCCESS: &str = "Success";
    /// A step failed.
    pub const FAILED: &str = "Failed";
    /// Cancelled on request.
    pub const CANCELLED: &str = "Cancelled";
    /// A step ran out of time.
    pub const TIMED_OUT: &str = "TimedOut";
    /// Succeeded and asked for a reboot.
    pub const SUCCESS_AND_REBOOT: &str = "SuccessAndReboot";
    /// A step's precondition did not hold.
    pub const SKIPPED: &str = "Skipped";

    /// True for statuses after which nothing changes.
    pub fn is_terminal(status: &str) -> bool {
        !matches!(status, IN_PROGRESS | "Pending" | "Delayed" | "")
    }
}

/// Truncation of the reply's text fields, in characters (OFFICIAL-AGENT.md §9.6).
pub mod limits {
    /// `output` (stdout, separator, stderr).
    pub const OUTPUT: usize = 2_500;
    /// `standardOutput`.
    pub const STANDARD_OUTPUT: usize = 24_000;
    /// `standardError`.
    pub const STANDARD_ERROR: usize = 8_000;
    /// Largest `content` of an `agent_job_reply`, in bytes; larger replies are dropped.
    pub const REPLY_CONTENT: usize = 120_000;
}

/// Between stdout and stderr in a plugin's `output`.
pub const ERROR_SEPARATOR: &str = "\n----------ERROR-------\n";

/// The job id of `command_id` on `instance_id`: `aws.ssm.<command>.<instance>`.
pub fn job_id(command_id: &str, instance_id: &str) -> String {
    format!("aws.ssm.{command_id}.{instance_id}")
}

/// The command id inside a job id made by [`job_id`].
pub fn command_id_of(job_id: &str) -> Option<&str> {
    let rest = job_id.strip_prefix("aws.ssm.")?;
    let (command, instance) = rest.rsplit_once('.')?;
    (!command.is_empty() && !instance.is_empty()).then_some(command)
}

/// True when `job_id` names a job of `instance_id` (it ends in `.<instance_id>`).
pub fn is_job_of(job_id: &str, instance_id: &str) -> bool {
    job_id
        .strip_suffix(instance_id)
        .is_some_and(|rest| rest.ends_with('.'))
}

/// `agent_job`: service → agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentJob {
    /// The send-command or cancel-command payload, as a JSON string.
    #[serde(rename = "Content", default)]
    pub content: String,
    /// `aws.ssm.<command>.<instance>`.
    #[serde(rename = "JobId", default)]
    pub job_id: String,
    /// Starts with a [`topic`] prefix.
    #[serde(rename = "Topic", default)]
    pub topic: String,
    /// 1.
    #[serde(rename = "SchemaVersion", default)]
    pub schema_version: i64,
}

impl AgentJob {
    /// A job carrying `payload` (serialised to its string form).
    pub fn new(job_id: String, topic: &str, payload: &impl Serialize) -> Self {
        Self {
            content: json_string(payload),
            job_id,
            topic: topic.to_owned(),
            schema_version: 1,
        }
    }

    /// The control-channel frame.
    pub fn to_message(&self) -> AgentMessage {
        AgentMessage::new(MessageType::AgentJob, PayloadType::Undefined, to_json(self))
    }

    /// Reads a job from an `agent_job` frame's payload.
    pub fn from_payload(payload: &[u8]) -> Result<Self, PayloadError> {
        from_json("agent_job", payload)
    }

    /// True for a cancel job.
    pub fn is_cancel(&self) -> bool {
        self.topic.starts_with(topic::CANCEL_COMMAND)
    }
}

/// The payload of a send-command job (also the MDS message payload).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SendCommandPayload {
    /// The command.
    #[serde(rename = "CommandId", default)]
    pub command_id: String,
    /// The document's name.
    #[serde(rename = "DocumentName", default)]
    pub document_name: String,
    /// The document itself (schema 1.2 or 2.x).
    #[serde(rename = "DocumentContent", default)]
    pub document_content: Value,
    /// Parameter values: strings, or arrays of strings for StringList.
    #[serde(rename = "Parameters", default)]
    pub parameters: BTreeMap<String, Value>,
    /// Unused by ssmx (output is kept by the gateway).
    #[serde(rename = "OutputS3BucketName", default)]
    pub output_s3_bucket_name: String,
    /// Unused by ssmx.
    #[serde(rename = "OutputS3KeyPrefix", default)]
    pub output_s3_key_prefix: String,
    /// Unused by ssmx.
    #[serde(rename = "CloudWatchLogGroupName", default)]
    pub cloud_watch_log_group_name: String,
    /// `"true"` or `"false"` (a string on the wire).
    #[serde(rename = "CloudWatchOutputEnabled", default)]
    pub cloud_watch_output_enabled: String,
}

/// The payload of a cancel job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelCommandPayload {
    /// The job id of the command to cancel.
    #[serde(rename = "CancelMessageId", default)]
    pub cancel_message_id: String,
}

/// `agent_job_ack`: agent → service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AgentJobAck {
    /// The job.
    pub job_id: String,
    /// The `agent_job` frame's MessageId.
    pub acknowledged_message_id: String,
    /// The job frame's CreatedDate, ISO-8601 with milliseconds, UTC.
    pub created_date: String,
    /// One of [`ack_code`].
    pub status_code: String,
    /// [`ack_code::message`] of the code.
    pub error_message: String,
}

impl AgentJobAck {
    /// The control-channel frame.
    pub fn to_message(&self) -> AgentMessage {
        AgentMessage::new(
            MessageType::AgentJobAck,
            PayloadType::Undefined,
            to_json(self),
        )
    }
}

/// `agent_job_reply`: agent → service, one per state change of a document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AgentJobReply {
    /// 1.
    pub schema_version: i64,
    /// The job.
    pub job_id: String,
    /// A [`CommandReply`] as a JSON string (at most [`limits::REPLY_CONTENT`] bytes).
    pub content: String,
    /// [`topic::SEND_COMMAND`] or [`topic::CANCEL_COMMAND`].
    pub topic: String,
}

impl AgentJobReply {
    /// A reply to `job_id` carrying `reply`.
    pub fn new(job_id: String, topic: &str, reply: &CommandReply) -> Self {
        Self {
            schema_version: 1,
            job_id,
            content: json_string(reply),
            topic: topic.to_owned(),
        }
    }

    /// The control-channel frame.
    pub fn to_message(&self) -> AgentMessage {
        AgentMessage::new(
            MessageType::AgentJobReply,
            PayloadType::Undefined,
            to_json(self),
        )
    }

    /// The reply inside.
    pub fn reply(&self) -> Result<CommandReply, PayloadError> {
        from_json("agent_job_reply content", self.content.as_bytes())
    }
}

/// `agent_job_reply_ack`: service → agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AgentJobReplyAck {
    /// The job.
    pub job_id: String,
    /// The `agent_job_reply` frame's MessageId.
    pub acknowledged_message_id: String,
}

impl AgentJobReplyAck {
    /// The control-channel frame.
    pub fn to_message(&self) -> AgentMessage {
        AgentMessage::new(
            MessageType::AgentJobReplyAck,
            PayloadType::Undefined,
            to_json(self),
        )
    }
}

/// The reply payload: the document's status and each plugin's result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CommandReply {
    /// Who answers, and when.
    pub additional_info: AdditionalInfo,
    /// One of [`document_status`].
    pub document_status: String,
    /// Free text (empty).
    pub document_trace_output: String,
    /// Plugin id → result; `null` in the first `InProgress` reply.
    pub runtime_status: Option<BTreeMap<String, PluginResult>>,
}

/// `additionalInfo` of a reply.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AdditionalInfo {
    /// The agent.
    pub agent: AgentInfo,
    /// When the reply was made, ISO-8601 with milliseconds, UTC.
    pub date_time: String,
    /// Empty.
    pub run_id: String,
    /// Plugin status → how many plugins have it (`null` in the official agent's first reply).
    #[serde(deserialize_with = "crate::payload::null_as_default")]
    pub runtime_status_counts: BTreeMap<String, i64>,
    /// Sent on the MDS path only.
    #[serde(
        rename = "ableToOpenMGSConnection",
        skip_serializing_if = "Option::is_none"
    )]
    pub able_to_open_mgs_connection: Option<bool>,
}

/// `additionalInfo.agent`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentInfo {
    /// `en-US`.
    pub lang: String,
    /// The agent's name.
    pub name: String,
    /// `linux`.
    pub os: String,
    /// The OS version.
    pub osver: String,
    /// The agent's version.
    pub ver: String,
}

/// One plugin's result in a reply.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PluginResult {
    /// One of [`document_status`].
    pub status: String,
    /// The exit code.
    pub code: i64,
    /// The plugin (`aws:runShellScript`).
    pub name: String,
    /// stdout, [`ERROR_SEPARATOR`], stderr, at most [`limits::OUTPUT`] characters.
    pub output: String,
    /// ISO-8601 with milliseconds, UTC.
    pub start_date_time: String,
    /// ISO-8601 with milliseconds, UTC.
    pub end_date_time: String,
    /// Empty.
    #[serde(rename = "outputS3BucketName")]
    pub output_s3_bucket_name: String,
    /// Empty.
    #[serde(rename = "outputS3KeyPrefix")]
    pub output_s3_key_prefix: String,
    /// The step's name (schema 2.x), else empty.
    pub step_name: String,
    /// stdout, at most [`limits::STANDARD_OUTPUT`] characters.
    pub standard_output: String,
    /// stderr, at most [`limits::STANDARD_ERROR`] characters.
    pub standard_error: String,
}

/// The first `limit` characters of `text`.
pub fn truncate_chars(text: &str, limit: usize) -> &str {
    match text.char_indices().nth(limit) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

fn json_string(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("payloads serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_id_names_its_instance() {
        let id = job_id("c-1", "mi-0123456789abcdef0");
        assert!(is_job_of(&id, "mi-0123456789abcdef0"));
        assert!(!is_job_of(&id, "0123456789abcdef0"));
        assert!(!is_job_of(&id, "mi-0"));
    }

    #[test]
    fn the_official_agents_first_reply_with_nulls_parses() {
        // As the official agent 3.3 sends it before any plugin ran (recorded).
        let content = r#"{"additionalInfo":{"agent":{"lang":"en-US","name":"amazon-ssm-agent","os":"linux","osver":"1","ver":"3.3.0.0"},"dateTime":"2026-12-04T20:53:45.454Z","runId":"","runtimeStatusCounts":null},"documentStatus":"InProgress","documentTraceOutput":"","runtimeStatus":null}"#;
        let reply: CommandReply = serde_json::from_str(content).unwrap();
        assert_eq!(reply.document_status, "InProgress");
        assert!(reply.additional_info.runtime_status_counts.is_empty());
        assert_eq!(reply.runtime_status, None);
    }

    /// The final reply the official agent sent in OFFICIAL-AGENT.md §9.6 (E6).
    const OFFICIAL_REPLY: &str = r#"{"additionalInfo":{"agent":{"lang":"en-US","name":"amazon-ssm-agent","os":"linux","osver":"1","ver":"3.3.0.0"},"dateTime":"2026-11-22T00:43:00.518Z","runId":"","runtimeStatusCounts":{"Failed":1},"ableToOpenMGSConnection":false},"documentStatus":"Failed","documentTraceOutput":"","runtimeStatus":{"aws:runShellScript":{"status":"Failed","code":3,"name":"aws:runShellScript","output":"hello-from-mds\n\n----------ERROR-------\nto-stderr\nfailed to run commands: exit status 3","startDateTime":"2026-11-22T00:43:00.489Z","endDateTime":"2026-11-22T00:43:00.515Z","outputS3BucketName":"","outputS3KeyPrefix":"","stepName":"","standardOutput":"hello-from-mds\n","standardError":"to-stderr\nfailed to run commands: exit status 3"}}}"#;

    #[test]
    fn the_official_reply_round_trips_byte_for_byte() {
        let reply: CommandReply = serde_json::from_str(OFFICIAL_REPLY).unwrap();
        assert_eq!(reply.document_status, document_status::FAILED);
        let plugin = &reply.runtime_status.as_ref().unwrap()["aws:runShellScript"];
        assert_eq!(plugin.code, 3);
        assert_eq!(serde_json::to_string(&reply).unwrap(), OFFICIAL_REPLY);
    }

    #[test]
    fn absent_fields_read_as_empty() {
        let reply: CommandReply =
            serde_json::from_str(r#"{"documentStatus":"InProgress","runtimeStatus":null}"#)
                .unwrap();
        assert_eq!(reply.runtime_status, None);
        assert_eq!(reply.additional_info, AdditionalInfo::default());
        let payload: SendCommandPayload =
            serde_json::from_str(r#"{"CommandId":"c","DocumentContent":{"schemaVersion":"1.2"}}"#)
                .unwrap();
        assert_eq!(payload.command_id, "c");
        assert!(payload.parameters.is_empty());
    }

    #[test]
    fn job_ids_name_command_and_instance() {
        let id = job_id(
            "a9313ffd-85b7-4757-a3ee-955ba199c85f",
            "mi-0123456789abcdef0",
        );
        assert_eq!(
            id,
            "aws.ssm.a9313ffd-85b7-4757-a3ee-955ba199c85f.mi-0123456789abcdef0"
        );
        assert_eq!(
            command_id_of(&id),
            Some("a9313ffd-85b7-4757-a3ee-955ba199c85f")
        );
        assert_eq!(command_id_of("aws.ssm.x"), None);
        assert_eq!(command_id_of("other"), None);
    }

    #[test]
    fn envelopes_use_the_official_key_case() {
        let job = AgentJob::new(
            job_id("c1", "mi-1"),
            "aws.ssm.sendCommand.us-east-1.2.0",
            &SendCommandPayload {
                command_id: "c1".into(),
                ..Default::default()
            },
        );
        let text = String::from_utf8(to_json(&job).to_vec()).unwrap();
        assert!(
            text.starts_with(r#"{"Content":"{\"CommandId\":\"c1\""#),
            "{text}"
        );
        assert!(!job.is_cancel());
        let ack = AgentJobAck {
            job_id: "j".into(),
            status_code: ack_code::DUPLICATE_COMMAND.into(),
            error_message: ack_code::message(ack_code::DUPLICATE_COMMAND).into(),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&ack).unwrap(),
            r#"{"jobId":"j","acknowledgedMessageId":"","createdDate":"","statusCode":"51405","errorMessage":"DuplicateCommand"}"#
        );
        assert_eq!(truncate_chars("héllo", 2), "hé");
        assert!(document_status::is_terminal("Cancelled"));
        assert!(!document_status::is_terminal("InProgress"));
    }
}
