//! Run Command: commands sent to many instances, delivered as `agent_job` over their control
//! channels, and the invocations' results from the agents' `agent_job_reply` (RUNCOMMAND.md §1,
//! OFFICIAL-AGENT.md §9).
//!
//! State lives in the database ([`store`]); this module decides what happens next from it, so a
//! gateway that restarts continues where it was. [`advance`] is the one place that moves a
//! command on: it dispatches jobs within the rate limits (one instance first, then one more for
//! each finished one, up to MaxConcurrency), resends jobs the agent has not acknowledged, stops
//! dispatch once MaxErrors is exceeded (the rest are Terminated), and times out invocations at
//! the delivery deadline. It runs after every change and on a periodic tick. A terminal status
//! is never changed by a late or reordered reply.

pub(crate) mod documents;
pub mod output;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ssmx_protocol::command::{
    self as wire, ack_code, document_status, AgentJob, AgentJobAck, AgentJobReply,
    AgentJobReplyAck, CancelCommandPayload, PluginResult, SendCommandPayload,
};
use tracing::{debug, info, warn};

use crate::hub::Hub;
pub use store::{CommandRecord, InvocationRecord};

/// How long an agent has to acknowledge a job before it is sent again.
pub const RESEND_AFTER: Duration = Duration::from_secs(5);
/// How often unfinished commands are looked at (resends, deadlines, instances that came online).
pub const TICK: Duration = Duration::from_secs(1);
/// Topic of send-command jobs (the official service's form: prefix, region, version).
const SEND_TOPIC_SUFFIX: &str = ".2.0";

/// Public invocation statuses and details (RUNCOMMAND.md §1.5).
pub mod status {
    /// Not delivered yet.
    pub const PENDING: &str = "Pending";
    /// Running.
    pub const IN_PROGRESS: &str = "InProgress";
    /// Delivery failed; retrying.
    pub const DELAYED: &str = "Delayed";
    /// Finished successfully.
    pub const SUCCESS: &str = "Success";
    /// Finished with an error.
    pub const FAILED: &str = "Failed";
    /// Ran out of time.
    pub const TIMED_OUT: &str = "TimedOut";
    /// Cancelled.
    pub const CANCELLED: &str = "Cancelled";
    /// Cancel requested, not confirmed yet.
    pub const CANCELLING: &str = "Cancelling";
    /// Details: the delivery deadline passed.
    pub const DELIVERY_TIMED_OUT: &str = "DeliveryTimedOut";
    /// Details: the document's execution timeout fired.
    pub const EXECUTION_TIMED_OUT: &str = "ExecutionTimedOut";
    /// Details: MaxErrors was reached before this instance got the command.
    pub const TERMINATED: &str = "Terminated";
    /// Details: the agent refused the job.
    pub const UNDELIVERABLE: &str = "Undeliverable";
    /// Command details: its tag targets matched no instance.
    pub const NO_INSTANCES_IN_TAG: &str = "NoInstancesInTag";

    /// True once nothing changes any more.
    pub fn is_terminal(status: &str) -> bool {
        matches!(status, SUCCESS | FAILED | TIMED_OUT | CANCELLED)
    }
}

/// A count or a percentage of the targets (`MaxConcurrency`, `MaxErrors`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// That many.
    Count(u64),
    /// That percentage of the targets, rounded down but at least 1 for a non-zero percentage.
    Percent(u64),
}

impl Limit {
    /// Parses `50`, `10%`; `allow_zero` for MaxErrors.
    pub fn parse(text: &str, allow_zero: bool) -> Option<Limit> {
        let (digits, percent) = match text.strip_suffix('%') {
            Some(d) => (d, true),
            None => (text, false),
        };
        if digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || (digits.len() > 1 && digits.starts_with('0'))
        {
            return None;
        }
        let n: u64 = digits.parse().ok()?;
        match (percent, n) {
            (_, 0) if !allow_zero || percent => None,
            (true, 1..=100) => Some(Limit::Percent(n)),
            (true, _) => None,
            (false, n) => Some(Limit::Count(n)),
        }
    }

    /// The number it allows among `targets`.
    pub fn of(self, targets: u64) -> u64 {
        match self {
            Limit::Count(n) => n,
            Limit::Percent(p) => (targets * p / 100).max(1),
        }
    }
}

/// The command-level view derived from its invocations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandSummary {
    /// Status.
    pub status: &'static str,
    /// StatusDetails.
    pub status_details: &'static str,
    /// TargetCount.
    pub target_count: u64,
    /// CompletedCount (terminal invocations).
    pub completed_count: u64,
    /// ErrorCount (Failed and ExecutionTimedOut).
    pub error_count: u64,
    /// DeliveryTimedOutCount.
    pub delivery_timed_out_count: u64,
}

fn is_error(inv: &InvocationRecord) -> bool {
    inv.status == status::FAILED || inv.status_details == status::EXECUTION_TIMED_OUT
}

/// Summarises a command.
pub fn summarise(command: &CommandRecord, invocations: &[InvocationRecord]) -> CommandSummary {
    let count =
        |f: &dyn Fn(&InvocationRecord) -> bool| invocations.iter().filter(|i| f(i)).count() as u64;
    let target_count = invocations.len() as u64;
    let completed_count = count(&|i| status::is_terminal(&i.status));
    let error_count = count(&is_error);
    let delivery_timed_out_count = count(&|i| i.status_details == status::DELIVERY_TIMED_OUT);
    let (status, status_details) = if target_count == 0 {
        (status::FAILED, status::NO_INSTANCES_IN_TAG)
    } else if completed_count < target_count {
        if command.cancel_requested {
            (status::CANCELLING, status::CANCELLING)
        } else if invocations.iter().any(|i| i.dispatched_at.is_some()) {
            (status::IN_PROGRESS, status::IN_PROGRESS)
        } else {
            (status::PENDING, status::PENDING)
        }
    } else if command.cancel_requested {
        (status::CANCELLED, status::CANCELLED)
    } else if error_count > 0 || count(&|i| i.status == status::FAILED) > 0 {
        (status::FAILED, status::FAILED)
    } else if delivery_timed_out_count > 0 {
        (status::TIMED_OUT, status::DELIVERY_TIMED_OUT)
    } else if count(&|i| i.status == status::CANCELLED) > 0 {
        (status::CANCELLED, status::CANCELLED)
    } else {
        (status::SUCCESS, status::SUCCESS)
    };
    CommandSummary {
        status,
        status_details,
        target_count,
        completed_count,
        error_count,
        delivery_timed_out_count,
    }
}

/// The job of one invocation.
fn job(hub: &Hub, command: &CommandRecord, instance_id: &str) -> AgentJob {
    let payload = SendCommandPayload {
        command_id: command.command_id.clone(),
        document_name: command.document_name.clone(),
        document_content: serde_json::from_str(&command.document_content).unwrap_or_default(),
        parameters: serde_json::from_str(&command.parameters).unwrap_or_default(),
        cloud_watch_output_enabled: "false".into(),
        ..Default::default()
    };
    let topic = format!(
        "{}.{}{SEND_TOPIC_SUFFIX}",
        wire::topic::SEND_COMMAND,
        hub.settings.region
    );
    AgentJob::new(
        wire::job_id(&command.command_id, instance_id),
        &topic,
        &payload,
    )
}

/// True when a job can reach the instance: over its control channel, or, for an official
/// agent without one, in its ec2messages mailbox (OFFICIAL-AGENT.md §9.1).
fn reachable(hub: &Hub, instance_id: &str) -> bool {
    hub.agent_online(instance_id) || hub.mailboxes.polling(instance_id)
}

/// Sends `job` over the instance's control channel, or else posts it in its ec2messages
/// mailbox if it polls; false when neither reaches it.
async fn deliver(hub: &Hub, instance_id: &str, job: AgentJob) -> bool {
    if hub
        .send_control(instance_id, job.to_message().to_bytes())
        .await
    {
        return true;
    }
    if hub.mailboxes.polling(instance_id) {
        hub.mailboxes.post(instance_id, job);
        return true;
    }
    false
}

/// Moves `command_id` on (see the module docs). Serialised with every other change of command
/// state.
pub(crate) async fn advance(hub: &Hub, command_id: &str) {
    let _serial = hub.commands_lock.lock().await;
    if let Err(e) = advance_locked(hub, command_id).await {
        warn!(command = command_id, error = %e, "cannot advance the command");
    }
}

/// [`advance`] after an invocation finished, when it can matter: while some invocation still
/// waits to be sent (a finished one frees its place, an error may stop dispatch). Deadlines and
/// resends are the ticker's. Calls that arrive while one runs are folded into one more run, so a
/// burst of N replies does not read all N invocations N times.
async fn advance_after_finish(hub: &Hub, command_id: &str) {
    match hub.store.undispatched(command_id) {
        Ok(0) => return,
        Ok(_) => {}
        Err(e) => {
            warn!(command = command_id, error = %e, "cannot read the command's invocations");
            return;
        }
    }
    if !hub.start_advancing(command_id) {
        return;
    }
    loop {
        advance(hub, command_id).await;
        if !hub.advance_again(command_id) {
            return;
        }
    }
}

async fn advance_locked(hub: &Hub, command_id: &str) -> Result<(), crate::store::StoreError> {
    let Some(command) = hub.store.command(command_id)? else {
        return Ok(());
    };
    let mut invocations = hub.store.invocations(command_id)?;
    let now = SystemTime::now();
    let targets = invocations.len() as u64;
    let max_concurrency = Limit::parse(&command.max_concurrency, false)
        .unwrap_or(Limit::Count(50))
        .of(targets);
    let max_errors = Limit::parse(&command.max_errors, true)
        .unwrap_or(Limit::Count(0))
        .of(targets);
    for inv in invocations.iter_mut() {
        if status::is_terminal(&inv.status) {
            continue;
        }
        if now >= command.expires_at {
            inv.status = status::TIMED_OUT.into();
            inv.status_details = status::DELIVERY_TIMED_OUT.into();
            hub.store.update_invocation(inv)?;
            continue;
        }
        if command.cancel_requested && inv.dispatched_at.is_none() {
            inv.status = status::CANCELLED.into();
            inv.status_details = status::CANCELLED.into();
            hub.store.update_invocation(inv)?;
        }
    }
    let errors = invocations.iter().filter(|i| is_error(i)).count() as u64;
    let stop_dispatch = errors > max_errors;
    let finished = invocations
        .iter()
        .filter(|i| status::is_terminal(&i.status))
        .count() as u64;
    let allowed = max_concurrency.min(finished + 1);
    let mut running = invocations
        .iter()
        .filter(|i| i.dispatched_at.is_some() && !status::is_terminal(&i.status))
        .count() as u64;
    for inv in invocations.iter_mut() {
        if status::is_terminal(&inv.status) {
            continue;
        }
        match inv.dispatched_at {
            None if stop_dispatch => {
                inv.status = status::CANCELLED.into();
                inv.status_details = status::TERMINATED.into();
                hub.store.update_invocation(inv)?;
            }
            None if running < allowed
                && !command.cancel_requested
                && reachable(hub, &inv.instance_id) =>
            {
                let job = job(hub, &command, &inv.instance_id);
                let sent = deliver(hub, &inv.instance_id, job).await;
                if sent {
                    debug!(command = command_id, instance = %inv.instance_id, "job sent");
                    inv.dispatched_at = Some(now);
                    inv.last_sent_at = Some(now);
                    hub.store.update_invocation(inv)?;
                    running += 1;
                }
            }
            Some(_) if !inv.acked => {
                let due = inv
                    .last_sent_at
                    .is_none_or(|t| now.duration_since(t).unwrap_or_default() >= RESEND_AFTER);
                if due && deliver(hub, &inv.instance_id, job(hub, &command, &inv.instance_id)).await
                {
                    debug!(command = command_id, instance = %inv.instance_id, "job resent");
                    inv.last_sent_at = Some(now);
                    if inv.status == status::PENDING {
                        inv.status = status::DELAYED.into();
                        inv.status_details = status::DELAYED.into();
                    }
                    hub.store.update_invocation(inv)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Applies an `agent_job_ack` from `instance_id`.
pub(crate) async fn on_job_ack(hub: &Hub, instance_id: &str, ack: AgentJobAck) {
    let Some(command_id) = wire::command_id_of(&ack.job_id).map(str::to_owned) else {
        return;
    };
    if !wire::is_job_of(&ack.job_id, instance_id) {
        warn!(job = %ack.job_id, "ignoring an agent_job_ack for another instance");
        return;
    }
    // Delivered: a copy posted for ec2messages before the control channel came up is moot.
    hub.mailboxes.remove(instance_id, &ack.job_id);
    {
        let _serial = hub.commands_lock.lock().await;
        let Ok(Some(mut inv)) = hub.store.invocation(&command_id, instance_id) else {
            return;
        };
        if status::is_terminal(&inv.status) {
            return;
        }
        inv.acked = true;
        match ack.status_code.as_str() {
            ack_code::SUCCESSFUL | ack_code::DUPLICATE_COMMAND => {
                if matches!(inv.status.as_str(), status::PENDING | status::DELAYED) {
                    inv.status = status::IN_PROGRESS.into();
                    inv.status_details = status::IN_PROGRESS.into();
                }
            }
            code => {
                info!(command = %command_id, instance = instance_id, code, message = %ack.error_message, "the agent refused the job");
                inv.status = status::FAILED.into();
                inv.status_details = status::UNDELIVERABLE.into();
            }
        }
        if let Err(e) = hub.store.update_invocation(&inv) {
            warn!(error = %e, "cannot record the job's acknowledgement");
        }
        if !status::is_terminal(&inv.status) {
            return;
        }
    }
    advance_after_finish(hub, &command_id).await;
}

/// Applies an `agent_job_reply` from `instance_id`; returns the `agent_job_reply_ack` to send.
pub(crate) async fn on_job_reply(
    hub: &Hub,
    instance_id: &str,
    reply_message_id: String,
    reply: AgentJobReply,
) -> Option<bytes::Bytes> {
    if !wire::is_job_of(&reply.job_id, instance_id) {
        warn!(job = %reply.job_id, "ignoring an agent_job_reply for another instance");
        return None;
    }
    let ack = AgentJobReplyAck {
        job_id: reply.job_id.clone(),
        acknowledged_message_id: reply_message_id,
    }
    .to_message()
    .to_bytes();
    if reply.topic.starts_with(wire::topic::CANCEL_COMMAND) {
        return Some(ack);
    }
    let command_id = wire::command_id_of(&reply.job_id)?.to_owned();
    let content = match reply.reply() {
        Ok(c) => c,
        Err(e) => {
            warn!(job = %reply.job_id, error = %e, "malformed agent_job_reply content");
            return Some(ack);
        }
    };
    {
        let _serial = hub.commands_lock.lock().await;
        let Ok(Some(mut inv)) = hub.store.invocation(&command_id, instance_id) else {
            return Some(ack);
        };
        if status::is_terminal(&inv.status) && !ran_on_the_agent(&inv) {
            debug!(command = %command_id, "late reply after a final status ignored");
            return Some(ack);
        }
        let was_terminal = status::is_terminal(&inv.status);
        apply_reply(&mut inv, &content);
        if let Err(e) = hub.store.update_invocation(&inv) {
            warn!(error = %e, "cannot record the reply");
            return None;
        }
        if was_terminal || !status::is_terminal(&inv.status) {
            return Some(ack);
        }
    }
    advance_after_finish(hub, &command_id).await;
    Some(ack)
}

/// True when the invocation's status comes from the agent's run, not from the gateway giving up
/// on it (DeliveryTimedOut, Terminated, Undeliverable, cancelled before delivery): the agent's
/// late per-plugin results still belong to it.
fn ran_on_the_agent(inv: &InvocationRecord) -> bool {
    inv.dispatched_at.is_some()
        && !matches!(
            inv.status_details.as_str(),
            status::DELIVERY_TIMED_OUT | status::TERMINATED | status::UNDELIVERABLE
        )
}

/// True once a plugin's result no longer changes (NotStarted and InProgress still do).
fn plugin_finished(plugin: &PluginResult) -> bool {
    plugin.status != "NotStarted" && document_status::is_terminal(&plugin.status)
}

/// Folds a reply into an invocation. Replies may come reordered: a finished plugin's result is
/// not replaced by an unfinished one, and a final status is not changed; a final status still
/// takes the plugin results that arrive after it (the final reply of a document of several
/// plugins carries none of them).
fn apply_reply(inv: &mut InvocationRecord, reply: &wire::CommandReply) {
    inv.acked = true;
    let mut plugins: BTreeMap<String, PluginResult> =
        serde_json::from_str(&inv.plugins).unwrap_or_default();
    for (id, update) in reply.runtime_status.iter().flatten() {
        let stale = plugins
            .get(id)
            .is_some_and(|known| plugin_finished(known) && !plugin_finished(update));
        if !stale {
            plugins.insert(id.clone(), update.clone());
        }
    }
    if !status::is_terminal(&inv.status) {
        let (new_status, details) = match reply.document_status.as_str() {
            document_status::SUCCESS | document_status::SUCCESS_AND_REBOOT => {
                (status::SUCCESS, status::SUCCESS)
            }
            document_status::FAILED => (status::FAILED, status::FAILED),
            document_status::CANCELLED => (status::CANCELLED, status::CANCELLED),
            document_status::TIMED_OUT => (status::TIMED_OUT, status::EXECUTION_TIMED_OUT),
            _ => (status::IN_PROGRESS, status::IN_PROGRESS),
        };
        inv.status = new_status.into();
        inv.status_details = details.into();
    }
    if status::is_terminal(&inv.status) {
        inv.response_code = plugins
            .values()
            .find(|p| p.status != document_status::SUCCESS && p.status != document_status::SKIPPED)
            .or_else(|| plugins.values().last())
            .map_or(-1, |p| p.code);
    }
    inv.plugins = serde_json::to_string(&plugins).unwrap_or_else(|_| "{}".into());
}

/// Cancels `instances` of a command (all when empty): the undelivered ones at once, the running
/// ones with a cancel job.
pub(crate) async fn cancel(hub: &Hub, command: &CommandRecord, instances: &[String]) {
    {
        let _serial = hub.commands_lock.lock().await;
        if instances.is_empty() {
            if let Err(e) = hub.store.set_cancel_requested(&command.command_id) {
                warn!(error = %e, "cannot record the cancel");
            }
        }
        let Ok(invocations) = hub.store.invocations(&command.command_id) else {
            return;
        };
        for mut inv in invocations {
            if status::is_terminal(&inv.status)
                || (!instances.is_empty() && !instances.contains(&inv.instance_id))
            {
                continue;
            }
            if inv.dispatched_at.is_none() {
                inv.status = status::CANCELLED.into();
                inv.status_details = status::CANCELLED.into();
            } else {
                let cancel_id = uuid::Uuid::new_v4().to_string();
                let job = AgentJob::new(
                    wire::job_id(&cancel_id, &inv.instance_id),
                    &format!(
                        "{}.{}{SEND_TOPIC_SUFFIX}",
                        wire::topic::CANCEL_COMMAND,
                        hub.settings.region
                    ),
                    &CancelCommandPayload {
                        cancel_message_id: wire::job_id(&command.command_id, &inv.instance_id),
                    },
                );
                if !deliver(hub, &inv.instance_id, job).await {
                    debug!(instance = %inv.instance_id, "cancel not delivered: the agent is offline");
                }
            }
            if let Err(e) = hub.store.update_invocation(&inv) {
                warn!(error = %e, "cannot record the cancel");
            }
        }
    }
    advance(hub, &command.command_id).await;
}

/// Advances every unfinished command every [`TICK`] until the gateway stops: resends, instances
/// that came online, deadlines, and commands left running by a previous gateway process.
pub(crate) fn spawn_ticker(hub: Arc<Hub>) {
    let stop = hub.shutdown.clone();
    let tracker = hub.tracker.clone();
    tracker.spawn(async move {
        let mut ticks = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.cancelled() => return,
            }
            match hub.store.unfinished_command_ids() {
                Ok(ids) => {
                    for id in ids {
                        advance(&hub, &id).await;
                    }
                }
                Err(e) => warn!(error = %e, "cannot list unfinished commands"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_as_the_api_pattern_says() {
        assert_eq!(Limit::parse("50", false), Some(Limit::Count(50)));
        assert_eq!(Limit::parse("10%", false), Some(Limit::Percent(10)));
        assert_eq!(Limit::parse("100%", false), Some(Limit::Percent(100)));
        assert_eq!(Limit::parse("0", true), Some(Limit::Count(0)));
        for bad in ["0", "0%", "101%", "05", "", "x", "-1", "1.5"] {
            assert_eq!(Limit::parse(bad, false), None, "{bad}");
        }
        assert_eq!(Limit::Percent(10).of(50), 5);
        assert_eq!(Limit::Percent(1).of(10), 1);
    }

    fn invocation(status: &str, details: &str, dispatched: bool) -> InvocationRecord {
        InvocationRecord {
            command_id: "c".into(),
            instance_id: "mi-1".into(),
            position: 0,
            status: status.into(),
            status_details: details.into(),
            response_code: -1,
            plugins: "{}".into(),
            dispatched_at: dispatched.then(SystemTime::now),
            acked: dispatched,
            last_sent_at: None,
        }
    }

    #[test]
    fn a_final_status_is_not_overwritten_and_results_are_kept() {
        let mut inv = invocation(status::IN_PROGRESS, status::IN_PROGRESS, true);
        let final_reply: wire::CommandReply = serde_json::from_str(
            r#"{"documentStatus":"Cancelled","runtimeStatus":{"aws:runShellScript":{"status":"Cancelled","code":137,"name":"aws:runShellScript"}}}"#,
        )
        .unwrap();
        apply_reply(&mut inv, &final_reply);
        assert_eq!((inv.status.as_str(), inv.response_code), ("Cancelled", 137));
        let late: wire::CommandReply = serde_json::from_str(
            r#"{"documentStatus":"InProgress","runtimeStatus":{"aws:runShellScript":{"status":"InProgress","code":0,"name":"aws:runShellScript"}}}"#,
        )
        .unwrap();
        apply_reply(&mut inv, &late);
        assert_eq!((inv.status.as_str(), inv.response_code), ("Cancelled", 137));
        assert!(
            inv.plugins.contains(r#""status":"Cancelled""#),
            "{}",
            inv.plugins
        );
    }

    #[test]
    fn a_command_summary_follows_its_invocations() {
        let command = CommandRecord {
            command_id: "c".into(),
            owner: String::new(),
            document_name: "AWS-RunShellScript".into(),
            document_content: "{}".into(),
            comment: String::new(),
            parameters: "{}".into(),
            requested_parameters: "{}".into(),
            instance_ids: "[]".into(),
            targets: "[]".into(),
            requested_at: SystemTime::now(),
            expires_at: SystemTime::now(),
            timeout_seconds: 3600,
            max_concurrency: "50".into(),
            max_errors: "0".into(),
            cancel_requested: false,
        };
        let pending = [invocation("Pending", "Pending", false)];
        assert_eq!(summarise(&command, &pending).status, "Pending");
        let mixed = [
            invocation("Success", "Success", true),
            invocation("InProgress", "InProgress", true),
        ];
        let s = summarise(&command, &mixed);
        assert_eq!(
            (s.status, s.completed_count, s.target_count),
            ("InProgress", 1, 2)
        );
        let failed = [
            invocation("Success", "Success", true),
            invocation("TimedOut", "ExecutionTimedOut", true),
        ];
        let s = summarise(&command, &failed);
        assert_eq!((s.status, s.error_count), ("Failed", 1));
        let undelivered = [invocation("TimedOut", "DeliveryTimedOut", false)];
        let s = summarise(&command, &undelivered);
        assert_eq!((s.status, s.delivery_timed_out_count), ("TimedOut", 1));
    }
}
