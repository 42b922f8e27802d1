//! ec2messages, the Message Delivery Service (`EC2WindowsMessageDeliveryService.*`,
//! OFFICIAL-AGENT.md §7.2 and §9.5): the long-poll path on which the official agent takes Run
//! Command jobs when it has no control channel, and answers them.
//!
//! Each instance has a mailbox of jobs. `GetMessages` hands out the visible ones and hides each
//! for the visibility timeout the agent asks for; a message not acknowledged by then is handed
//! out again. `AcknowledgeMessage`, `SendReply` and `FailMessage` feed the same command engine as
//! the control channel's `agent_job_ack` and `agent_job_reply`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use ssmx_protocol::command::{ack_code, AgentJob, AgentJobAck, AgentJobReply};
use tokio::sync::Notify;

use crate::error::{ApiError, ErrorCode};
use crate::hub::Hub;

/// `X-Amz-Target` prefix of the service.
pub(crate) const TARGET_PREFIX: &str = "EC2WindowsMessageDeliveryService.";
/// SigV4 service name the agent signs with.
pub(crate) const SERVICE: &str = "ec2messages";
/// How long an empty `GetMessages` is held: below the agent's 20 s client timeout (§7.2).
pub const LONG_POLL_HOLD: Duration = Duration::from_secs(15);
/// An instance that polled within this time counts as reachable over ec2messages.
pub const POLLING_WITHIN: Duration = Duration::from_secs(30);
/// Visibility timeout when the request names none; the agent asks for 10 s.
const DEFAULT_VISIBILITY: Duration = Duration::from_secs(10);

/// A job waiting in a mailbox.
#[derive(Clone, Debug)]
struct Message {
    job: AgentJob,
    created: SystemTime,
    /// Not handed out again before this.
    hidden_until: Option<Instant>,
}

#[derive(Default)]
struct Mailbox {
    messages: Vec<Message>,
    /// A poll is waiting, or the last one ended at this time.
    polling: bool,
    last_poll: Option<Instant>,
    arrived: Arc<Notify>,
}

/// The mailboxes of every instance that polls.
#[derive(Default)]
pub struct Mailboxes {
    boxes: Mutex<HashMap<String, Mailbox>>,
}

impl Mailboxes {
    fn with<R>(&self, instance_id: &str, f: impl FnOnce(&mut Mailbox) -> R) -> R {
        let mut boxes = self.boxes.lock().unwrap_or_else(|p| p.into_inner());
        f(boxes.entry(instance_id.to_owned()).or_default())
    }

    /// True when `instance_id` is polling now or polled within [`POLLING_WITHIN`].
    pub fn polling(&self, instance_id: &str) -> bool {
        let boxes = self.boxes.lock().unwrap_or_else(|p| p.into_inner());
        boxes
            .get(instance_id)
            .is_some_and(|b| b.polling || b.last_poll.is_some_and(|t| t.elapsed() < POLLING_WITHIN))
    }

    /// Puts `job` in the instance's mailbox; a job with the same id already there is kept (and
    /// its visibility left as it is), so resending is harmless.
    pub fn post(&self, instance_id: &str, job: AgentJob) {
        self.with(instance_id, |b| {
            if !b.messages.iter().any(|m| m.job.job_id == job.job_id) {
                b.messages.push(Message {
                    job,
                    created: SystemTime::now(),
                    hidden_until: None,
                });
            }
            b.arrived.notify_waiters();
        });
    }

    /// Drops the mailbox of a deregistered instance, with the jobs still in it.
    pub fn forget(&self, instance_id: &str) {
        let mut boxes = self.boxes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mailbox) = boxes.remove(instance_id) {
            mailbox.arrived.notify_waiters();
        }
    }

    /// Removes a message; true if it was there.
    pub(crate) fn remove(&self, instance_id: &str, message_id: &str) -> bool {
        self.with(instance_id, |b| {
            let before = b.messages.len();
            b.messages.retain(|m| m.job.job_id != message_id);
            b.messages.len() != before
        })
    }

    /// Hands out the visible messages, hiding each for `visibility`.
    fn take_visible(&self, instance_id: &str, visibility: Duration) -> Vec<Message> {
        self.with(instance_id, |b| {
            let now = Instant::now();
            b.messages
                .iter_mut()
                .filter(|m| m.hidden_until.is_none_or(|t| t <= now))
                .map(|m| {
                    m.hidden_until = Some(now + visibility);
                    m.clone()
                })
                .collect()
        })
    }

    /// The time the next hidden message becomes visible again, if any is hidden.
    fn next_visible(&self, instance_id: &str) -> Option<Instant> {
        self.with(instance_id, |b| {
            b.messages.iter().filter_map(|m| m.hidden_until).min()
        })
    }

    fn set_polling(&self, instance_id: &str, polling: bool) -> Arc<Notify> {
        self.with(instance_id, |b| {
            b.polling = polling;
            b.last_poll = Some(Instant::now());
            b.arrived.clone()
        })
    }
}

#[derive(Deserialize)]
struct GetMessagesInput {
    #[serde(rename = "Destination", default)]
    destination: String,
    #[serde(rename = "MessagesRequestId", default)]
    messages_request_id: String,
    #[serde(rename = "VisibilityTimeoutInSeconds", default)]
    visibility_timeout_in_seconds: Option<u64>,
}

#[derive(Serialize)]
struct WireMessage {
    #[serde(rename = "CreatedDate")]
    created_date: String,
    #[serde(rename = "Destination")]
    destination: String,
    #[serde(rename = "MessageId")]
    message_id: String,
    #[serde(rename = "Payload")]
    payload: String,
    #[serde(rename = "Topic")]
    topic: String,
}

#[derive(Deserialize)]
struct MessageIdInput {
    #[serde(rename = "MessageId", default)]
    message_id: String,
}

#[derive(Deserialize)]
struct SendReplyInput {
    #[serde(rename = "MessageId", default)]
    message_id: String,
    #[serde(rename = "Payload", default)]
    payload: String,
}

#[derive(Deserialize)]
struct FailMessageInput {
    #[serde(rename = "MessageId", default)]
    message_id: String,
    #[serde(rename = "FailureType", default)]
    failure_type: String,
}

/// Serves one ec2messages operation for the agent of `instance_id`.
pub(crate) async fn handle(
    hub: &Arc<Hub>,
    instance_id: &str,
    op: &str,
    body: &[u8],
) -> Result<Value, ApiError> {
    match op {
        "GetMessages" => get_messages(hub, instance_id, crate::api::parse(body)?).await,
        "AcknowledgeMessage" => {
            let input: MessageIdInput = crate::api::parse(body)?;
            let job_id = own_message(instance_id, &input.message_id)?;
            // The engine takes the message out of the mailbox with the acknowledgement.
            let ack = AgentJobAck {
                job_id: job_id.to_owned(),
                status_code: ack_code::SUCCESSFUL.into(),
                ..Default::default()
            };
            crate::commands::on_job_ack(hub, instance_id, ack).await;
            Ok(json!({}))
        }
        "SendReply" => {
            let input: SendReplyInput = crate::api::parse(body)?;
            let job_id = own_message(instance_id, &input.message_id)?;
            let reply = AgentJobReply {
                schema_version: 1,
                job_id: job_id.to_owned(),
                content: input.payload,
                topic: String::new(),
            };
            crate::commands::on_job_reply(hub, instance_id, String::new(), reply).await;
            Ok(json!({}))
        }
        "FailMessage" => {
            let input: FailMessageInput = crate::api::parse(body)?;
            let job_id = own_message(instance_id, &input.message_id)?;
            let ack = AgentJobAck {
                job_id: job_id.to_owned(),
                status_code: ack_code::UNEXPECTED.into(),
                error_message: input.failure_type,
                ..Default::default()
            };
            crate::commands::on_job_ack(hub, instance_id, ack).await;
            Ok(json!({}))
        }
        "DeleteMessage" => {
            let input: MessageIdInput = crate::api::parse(body)?;
            let job_id = own_message(instance_id, &input.message_id)?;
            hub.mailboxes.remove(instance_id, job_id);
            Ok(json!({}))
        }
        _ => Err(ApiError::new(
            ErrorCode::UnknownOperation,
            format!("ec2messages operation {op:?} is not served by this gateway"),
        )),
    }
}

/// The message id, if it is a job of `instance_id` (`aws.ssm.<command>.<instance>`).
fn own_message<'a>(instance_id: &str, message_id: &'a str) -> Result<&'a str, ApiError> {
    if ssmx_protocol::command::is_job_of(message_id, instance_id) {
        Ok(message_id)
    } else {
        Err(ApiError::new(
            ErrorCode::AccessDenied,
            format!("message {message_id:?} is not addressed to {instance_id}"),
        ))
    }
}

async fn get_messages(
    hub: &Arc<Hub>,
    instance_id: &str,
    input: GetMessagesInput,
) -> Result<Value, ApiError> {
    if input.destination != instance_id {
        return Err(ApiError::new(
            ErrorCode::AccessDenied,
            format!(
                "{instance_id} may not read the messages of {:?}",
                input.destination
            ),
        ));
    }
    let visibility = input
        .visibility_timeout_in_seconds
        .filter(|s| *s > 0)
        .map_or(DEFAULT_VISIBILITY, Duration::from_secs);
    if let Err(e) = hub.store.touch_instance(instance_id) {
        tracing::warn!(error = %e, "cannot record the poll");
    }
    // Commands waiting for this instance are posted by the engine's next tick.
    let arrived = hub.mailboxes.set_polling(instance_id, true);
    let deadline = Instant::now() + LONG_POLL_HOLD;
    let messages = loop {
        let notified = arrived.notified();
        let messages = hub.mailboxes.take_visible(instance_id, visibility);
        if !messages.is_empty() {
            break messages;
        }
        let wake = hub
            .mailboxes
            .next_visible(instance_id)
            .map_or(deadline, |t| t.min(deadline));
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = hub.shutdown.cancelled() => break Vec::new(),
        }
        if Instant::now() >= deadline {
            break hub.mailboxes.take_visible(instance_id, visibility);
        }
    };
    hub.mailboxes.set_polling(instance_id, false);
    let messages: Vec<WireMessage> = messages
        .into_iter()
        .map(|m| WireMessage {
            created_date: chrono::DateTime::<chrono::Utc>::from(m.created)
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string(),
            destination: instance_id.to_owned(),
            message_id: m.job.job_id,
            payload: m.job.content,
            topic: m.job.topic,
        })
        .collect();
    Ok(json!({
        "Destination": instance_id,
        "MessagesRequestId": input.messages_request_id,
        "Messages": messages,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> AgentJob {
        AgentJob {
            content: "{}".into(),
            job_id: id.into(),
            topic: "aws.ssm.sendCommand.us-east-1.2.0".into(),
            schema_version: 1,
        }
    }

    #[test]
    fn a_message_is_hidden_while_being_handled_and_posted_once() {
        let boxes = Mailboxes::default();
        boxes.post("mi-1", job("aws.ssm.c.mi-1"));
        boxes.post("mi-1", job("aws.ssm.c.mi-1"));
        assert_eq!(boxes.take_visible("mi-1", Duration::from_secs(60)).len(), 1);
        assert!(boxes
            .take_visible("mi-1", Duration::from_secs(60))
            .is_empty());
        assert!(boxes.next_visible("mi-1").is_some());
        assert!(boxes.remove("mi-1", "aws.ssm.c.mi-1"));
        assert_eq!(boxes.next_visible("mi-1"), None);
    }

    #[test]
    fn an_unacknowledged_message_comes_back_after_its_visibility_timeout() {
        let boxes = Mailboxes::default();
        boxes.post("mi-1", job("aws.ssm.c.mi-1"));
        assert_eq!(boxes.take_visible("mi-1", Duration::ZERO).len(), 1);
        assert_eq!(boxes.take_visible("mi-1", Duration::ZERO).len(), 1);
    }

    #[test]
    fn a_forgotten_mailbox_is_gone() {
        let boxes = Mailboxes::default();
        boxes.set_polling("mi-1", true);
        boxes.post("mi-1", job("aws.ssm.c.mi-1"));
        boxes.forget("mi-1");
        assert!(!boxes.polling("mi-1"));
        assert!(boxes.take_visible("mi-1", Duration::ZERO).is_empty());
    }

    #[test]
    fn polling_is_remembered_for_a_while() {
        let boxes = Mailboxes::default();
        assert!(!boxes.polling("mi-1"));
        boxes.set_polling("mi-1", true);
        assert!(boxes.polling("mi-1"));
        boxes.set_polling("mi-1", false);
        assert!(boxes.polling("mi-1"));
        assert!(!boxes.polling("mi-2"));
    }
}
