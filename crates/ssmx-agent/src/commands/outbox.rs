//! Run Command frames waiting for the control channel: acks and first replies are sent once;
//! later replies until `agent_job_reply_ack` (persisted when not acknowledged in time, re-sent
//! with back-off and on every reconnect, dropped when too old).

use std::collections::VecDeque;

use futures::SinkExt;
use ssmx_protocol::command::AgentJobReplyAck;
use ssmx_protocol::message::now_millis;
use ssmx_protocol::{AgentMessage, MessageType, PayloadType};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::state::{Store, StoredReply};
use crate::backoff::BackoffState;
use crate::config::Timing;

/// What the command engine hands to the control channel.
pub(crate) enum Outgoing {
    /// Sent once (an ack, a first reply).
    Once(AgentMessage),
    /// Sent until acknowledged.
    Tracked(StoredReply),
}

struct Tracked {
    reply: StoredReply,
    /// `None`: to be sent on the current connection.
    due: Option<Instant>,
    sends: u32,
    persisted: bool,
    delays: BackoffState,
}

impl Tracked {
    fn message(&self) -> AgentMessage {
        let mut msg = AgentMessage::new(
            MessageType::AgentJobReply,
            PayloadType::Undefined,
            self.reply.payload.clone().into(),
        );
        msg.message_id = self.reply.message_id;
        msg.created_date = self.reply.created_ms;
        msg
    }
}

/// The frames of the command engine not delivered yet.
pub(crate) struct Outbox {
    store: Option<Store>,
    once: VecDeque<AgentMessage>,
    tracked: Vec<Tracked>,
    timing: Timing,
}

impl Outbox {
    /// An outbox holding the replies persisted in `store` by an earlier run.
    pub(crate) fn new(store: Option<Store>, timing: Timing) -> Self {
        let mut outbox = Self {
            store,
            once: VecDeque::new(),
            tracked: Vec::new(),
            timing,
        };
        let stored = outbox
            .store
            .as_ref()
            .map(Store::replies)
            .unwrap_or_default();
        for reply in stored {
            outbox.push_tracked(reply, true);
        }
        outbox
    }

    /// Queues a frame.
    pub(crate) fn push(&mut self, outgoing: Outgoing) {
        match outgoing {
            Outgoing::Once(msg) => self.once.push_back(msg),
            Outgoing::Tracked(reply) => self.push_tracked(reply, false),
        }
    }

    fn push_tracked(&mut self, reply: StoredReply, persisted: bool) {
        self.tracked.push(Tracked {
            reply,
            due: None,
            sends: 0,
            persisted,
            delays: self.timing.reply_resend_backoff.start(),
        });
    }

    /// A new connection: everything unacknowledged goes out again.
    pub(crate) fn reconnected(&mut self) {
        for t in &mut self.tracked {
            t.due = None;
        }
    }

    /// When [`Outbox::send_due`] has something to do next.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        if !self.once.is_empty() {
            return Some(Instant::now());
        }
        self.tracked.iter().filter_map(|t| t.due).min()
    }

    /// Sends what is due on `sink`.
    pub(crate) async fn send_due(
        &mut self,
        sink: &mut (impl SinkExt<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin),
    ) -> Result<(), String> {
        while let Some(msg) = self.once.pop_front() {
            sink.send(Message::Binary(msg.to_bytes()))
                .await
                .map_err(|e| format!("cannot send {}: {e}", msg.message_type))?;
        }
        let max_age = u64::try_from(self.timing.reply_max_age.as_millis()).unwrap_or(u64::MAX);
        let now_ms = now_millis();
        let store = self.store.clone();
        self.tracked.retain(|t| {
            let expired = now_ms.saturating_sub(t.reply.created_ms) > max_age;
            if expired {
                tracing::warn!(job = %t.reply.job_id, "Run Command reply never acknowledged; dropped");
                if let (Some(store), true) = (&store, t.persisted) {
                    store.remove_reply(t.reply.message_id);
                }
            }
            !expired
        });
        let now = Instant::now();
        for t in &mut self.tracked {
            if t.due.is_some_and(|d| d > now) {
                continue;
            }
            if t.sends > 0 && !t.persisted {
                persist(&store, t);
            }
            let wait = if t.sends == 0 {
                self.timing.reply_ack_timeout
            } else {
                t.delays.next_delay()
            };
            t.sends += 1;
            t.due = Some(now + wait);
            tracing::debug!(job = %t.reply.job_id, attempt = t.sends, "sending agent_job_reply");
            sink.send(Message::Binary(t.message().to_bytes()))
                .await
                .map_err(|e| format!("cannot send agent_job_reply: {e}"))?;
        }
        Ok(())
    }

    /// `agent_job_reply_ack`: the reply is delivered; a final reply's document is forgotten.
    pub(crate) fn acknowledge(&mut self, ack: &AgentJobReplyAck) {
        let id = ack.acknowledged_message_id.to_ascii_lowercase();
        let Some(at) = self
            .tracked
            .iter()
            .position(|t| t.reply.message_id.to_string() == id)
        else {
            tracing::debug!(message_id = %ack.acknowledged_message_id, "agent_job_reply_ack for nothing pending");
            return;
        };
        let t = self.tracked.swap_remove(at);
        if let Some(store) = &self.store {
            if t.persisted {
                store.remove_reply(t.reply.message_id);
            }
            if t.reply.is_final {
                store.remove_document(&t.reply.job_id);
            }
        }
    }

    /// Persists every unacknowledged reply (the agent is stopping).
    pub(crate) fn persist_all(&mut self) {
        let store = self.store.clone();
        for t in self.tracked.iter_mut().filter(|t| !t.persisted) {
            persist(&store, t);
        }
    }

    /// Replies not acknowledged yet.
    pub(crate) fn unacknowledged(&self) -> usize {
        self.tracked.len()
    }
}

fn persist(store: &Option<Store>, t: &mut Tracked) {
    if let Some(store) = store {
        match store.save_reply(&t.reply) {
            Ok(()) => t.persisted = true,
            Err(e) => {
                tracing::warn!(job = %t.reply.job_id, "cannot persist a Run Command reply: {e}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::time::Duration;

    #[tokio::test]
    async fn unacknowledged_replies_are_persisted_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().to_owned());
        let timing = Timing {
            reply_ack_timeout: Duration::ZERO,
            ..Timing::default()
        };
        let mut outbox = Outbox::new(Some(store.clone()), timing.clone());
        let reply = StoredReply {
            job_id: "aws.ssm.c.mi-1".into(),
            message_id: uuid::Uuid::new_v4(),
            created_ms: now_millis(),
            payload: "{}".into(),
            is_final: true,
        };
        outbox.push(Outgoing::Tracked(reply.clone()));
        let (mut sink, mut stream) = futures::channel::mpsc::unbounded::<Message>();
        let mut sink =
            (&mut sink).sink_map_err(|_| tokio_tungstenite::tungstenite::Error::ConnectionClosed);
        outbox.send_due(&mut sink).await.unwrap();
        outbox.send_due(&mut sink).await.unwrap();
        drop(sink);
        assert_eq!(stream.by_ref().take(2).count().await, 2);
        assert_eq!(store.replies(), vec![reply.clone()]);
        let mut again = Outbox::new(Some(store.clone()), timing);
        assert_eq!(again.unacknowledged(), 1);
        again.acknowledge(&AgentJobReplyAck {
            job_id: reply.job_id.clone(),
            acknowledged_message_id: reply.message_id.to_string().to_uppercase(),
        });
        assert_eq!(again.unacknowledged(), 0);
        assert!(store.replies().is_empty());
    }
}
