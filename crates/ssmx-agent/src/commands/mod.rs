//! Run Command (RUNCOMMAND.md §3, OFFICIAL-AGENT.md §9): `agent_job` frames from the control
//! channel are acknowledged, their documents run (at most N at once, the rest queued) and their
//! progress replied; cancel jobs stop a running document. Job ids, document progress and
//! unacknowledged replies are kept on disk (see [`state`]) so that a restarted agent neither runs
//! a job twice nor loses its result: a document a restart interrupted runs again from the step
//! that was running, until it has been interrupted too often (RUNCOMMAND.md §3 item 5).

mod document;
mod nested;
mod outbox;
mod shell;
mod state;
mod upload;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ssmx_protocol::command::{
    ack_code, document_status, limits, topic, truncate_chars, AdditionalInfo, AgentInfo, AgentJob,
    AgentJobAck, AgentJobReply, CancelCommandPayload, CommandReply, PluginResult,
    SendCommandPayload, ERROR_SEPARATOR,
};
use ssmx_protocol::message::now_millis;
use ssmx_protocol::version::AGENT_VERSION;
use ssmx_protocol::AgentMessage;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::AgentConfig;
use crate::gateway_api::GatewayApi;
use document::{Plan, Step, DOWNLOAD_CONTENT, RUN_DOCUMENT, RUN_SHELL_SCRIPT};
pub(crate) use outbox::{Outbox, Outgoing};
use shell::{ShellContext, ShellInputs, Stopped, KILLED_EXIT_CODE};
use state::{DocumentState, Stage, Store, StoredReply};
use upload::PendingUpload;

/// Exit code asking for a reboot: reported SuccessAndReboot (the host is not rebooted).
pub(crate) const REBOOT_EXIT_CODE: i64 = 194;
/// Exit code: the step succeeded, skip the remaining steps.
const EXIT_WITH_SUCCESS: i64 = 168;
/// Exit code: the step failed, skip the remaining steps.
const EXIT_WITH_FAILURE: i64 = 169;
/// How long a job id is remembered.
const SEEN_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// `name` in replies (as the official agent).
const AGENT_NAME: &str = "amazon-ssm-agent";
/// `standardOutput` truncation marker.
const STDOUT_TRUNCATED: &str = "--output truncated--";
/// Markers inside a truncated `output`.
const OUTPUT_TRUNCATED: &str = "\n---Output truncated---";
const ERROR_TRUNCATED: &str = "\n---Error truncated----";
/// Documents received longer ago than this are not resumed after a restart (the official
/// agent's limit).
const MAX_DOCUMENT_AGE: Duration = Duration::from_secs(48 * 60 * 60);
/// How long shutdown waits for running scripts to be killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Run Command settings taken from the agent's configuration.
#[derive(Clone)]
pub(crate) struct Settings {
    /// Where whole outputs go when a reply has to truncate them.
    api: Arc<GatewayApi>,
    dir: Option<PathBuf>,
    max_concurrent: usize,
    max_runs: u32,
    instance_id: String,
    region: String,
}

impl Settings {
    /// The Run Command part of `config`, uploading whole outputs through `api`.
    pub(crate) fn new(config: &AgentConfig, api: Arc<GatewayApi>) -> Self {
        Self {
            api,
            dir: config
                .commands_dir
                .clone()
                .or_else(|| crate::registration::default_state_dir().map(|d| d.join("commands"))),
            max_concurrent: config.max_concurrent_documents.max(1),
            max_runs: config.max_document_runs.max(1),
            instance_id: config.registration.instance_id.clone(),
            region: config.registration.region.clone(),
        }
    }
}

/// The command engine: takes jobs, runs documents, hands frames to the control channel.
#[derive(Clone)]
pub(crate) struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` without a state directory: jobs are refused.
    store: Option<Store>,
    api: Arc<GatewayApi>,
    instance_id: String,
    region: String,
    agent: AgentInfo,
    out: mpsc::UnboundedSender<Outgoing>,
    permits: Arc<Semaphore>,
    /// Runs a document may start before a restart gives it up.
    max_runs: u32,
    /// Whole outputs the gateway did not take yet, for the uploader to retry.
    uploads: mpsc::UnboundedSender<PendingUpload>,
    /// Cancel tokens of documents queued or running, by job id.
    jobs: Mutex<HashMap<String, CancellationToken>>,
    /// Fires on agent shutdown.
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Engine {
    /// Reads the state directory, resumes the documents an earlier run left, and returns the
    /// engine, the outbox (with the replies left unacknowledged) and the engine's frames.
    pub(crate) fn start(
        settings: Settings,
        timing: crate::config::Timing,
    ) -> (Self, Outbox, mpsc::UnboundedReceiver<Outgoing>) {
        let store = settings.dir.clone().map(Store::new);
        if store.is_none() {
            tracing::warn!("Run Command disabled: no state directory");
        }
        let (out, frames) = mpsc::unbounded_channel();
        let (uploads, retried_uploads) = mpsc::unbounded_channel();
        let (_, osver) = crate::host_info::platform();
        let engine = Self {
            inner: Arc::new(Inner {
                store: store.clone(),
                api: settings.api,
                instance_id: settings.instance_id,
                region: settings.region,
                agent: AgentInfo {
                    lang: "en-US".into(),
                    name: AGENT_NAME.into(),
                    os: crate::host_info::PLATFORM_TYPE.into(),
                    osver,
                    ver: AGENT_VERSION.into(),
                },
                out,
                permits: Arc::new(Semaphore::new(settings.max_concurrent)),
                max_runs: settings.max_runs,
                uploads,
                jobs: Mutex::new(HashMap::new()),
                shutdown: CancellationToken::new(),
                tracker: TaskTracker::new(),
            }),
        };
        let outbox = Outbox::new(store.clone(), timing.clone());
        if let Some(store) = store {
            let inner = &engine.inner;
            inner.tracker.spawn(upload::retry(
                inner.api.clone(),
                store.clone(),
                retried_uploads,
                timing,
                inner.shutdown.clone(),
            ));
            store.prune_seen(SEEN_RETENTION);
            for state in store.documents(Stage::Current) {
                tracing::info!(job = %state.job_id, "resuming a document started before a restart");
                engine.spawn(state, false);
            }
            for state in store.documents(Stage::Pending) {
                tracing::info!(job = %state.job_id, "resubmitting a document received before a restart");
                engine.spawn(state, true);
            }
        }
        (engine, outbox, frames)
    }

    /// Handles an `agent_job` frame.
    pub(crate) fn submit(&self, frame: &AgentMessage) {
        let inner = &self.inner;
        let ack = |job_id: &str, code: &str| {
            let ack = AgentJobAck {
                job_id: job_id.to_owned(),
                acknowledged_message_id: frame.message_id.hyphenated().to_string(),
                created_date: iso_millis(frame.created_date),
                status_code: code.to_owned(),
                error_message: ack_code::message(code).to_owned(),
            };
            inner.send(Outgoing::Once(ack.to_message()));
        };
        let job = match AgentJob::from_payload(&frame.payload) {
            Ok(job) => job,
            Err(e) => {
                let job_id = serde_json::from_slice::<serde_json::Value>(&frame.payload)
                    .ok()
                    .and_then(|v| v.get("JobId")?.as_str().map(str::to_owned))
                    .unwrap_or_default();
                tracing::warn!(job = %job_id, "agent_job does not parse: {e}");
                ack(&job_id, ack_code::PARSE_ERROR);
                if !job_id.is_empty() {
                    inner.first_reply(&job_id, topic::SEND_COMMAND, document_status::FAILED);
                }
                return;
            }
        };
        let reply_topic = if job.is_cancel() {
            topic::CANCEL_COMMAND
        } else if job.topic.starts_with(topic::SEND_COMMAND) {
            topic::SEND_COMMAND
        } else {
            tracing::warn!(job = %job.job_id, topic = %job.topic, "agent_job with an unknown topic");
            ack(&job.job_id, ack_code::UNEXPECTED);
            return;
        };
        let Some(store) = &inner.store else {
            ack(&job.job_id, ack_code::CLOSED_PROCESSOR);
            return;
        };
        if inner.shutdown.is_cancelled() {
            ack(&job.job_id, ack_code::CLOSED_PROCESSOR);
            return;
        }
        let parse_failed = |what: &str, e: &dyn std::fmt::Display| {
            tracing::warn!(job = %job.job_id, "{what} does not parse: {e}");
            ack(&job.job_id, ack_code::PARSE_ERROR);
            inner.first_reply(&job.job_id, reply_topic, document_status::FAILED);
        };
        if job.is_cancel() {
            let cancel: CancelCommandPayload = match serde_json::from_str(&job.content) {
                Ok(cancel) => cancel,
                Err(e) => return parse_failed("cancel payload", &e),
            };
            if !self.record(store, &job.job_id, &ack) {
                return;
            }
            ack(&job.job_id, ack_code::SUCCESSFUL);
            inner.first_reply(&job.job_id, reply_topic, document_status::IN_PROGRESS);
            let token = inner
                .jobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&cancel.cancel_message_id)
                .cloned();
            match token {
                Some(token) => {
                    tracing::info!(job = %cancel.cancel_message_id, "cancelling on request");
                    token.cancel();
                }
                None => {
                    tracing::info!(job = %cancel.cancel_message_id, "cancel for a command not running")
                }
            }
            return;
        }
        let payload: SendCommandPayload = match serde_json::from_str(&job.content) {
            Ok(payload) => payload,
            Err(e) => return parse_failed("send-command payload", &e),
        };
        if !self.record(store, &job.job_id, &ack) {
            return;
        }
        let steps = match document::steps(&payload.document_content, &payload.parameters) {
            Ok(steps) => steps,
            Err(e) => {
                tracing::warn!(job = %job.job_id, "document cannot run: {e}");
                ack(&job.job_id, ack_code::INVALID_DOCUMENT);
                return;
            }
        };
        let state = DocumentState {
            job_id: job.job_id.clone(),
            command_id: payload.command_id,
            steps,
            results: BTreeMap::new(),
            running: None,
            run_count: 0,
            created_ms: now_millis(),
        };
        if let Err(e) = store.save(Stage::Pending, &state) {
            tracing::warn!(job = %job.job_id, "cannot save the document state: {e}");
            ack(&job.job_id, ack_code::UNEXPECTED);
            return;
        }
        ack(&job.job_id, ack_code::SUCCESSFUL);
        inner.first_reply(&job.job_id, reply_topic, document_status::IN_PROGRESS);
        self.spawn(state, true);
    }

    /// Records `job_id` as seen; false (after acking DuplicateCommand or an error) when it cannot
    /// run.
    fn record(&self, store: &Store, job_id: &str, ack: &impl Fn(&str, &str)) -> bool {
        match store.mark_seen(job_id) {
            Ok(true) => true,
            Ok(false) => {
                tracing::info!(job = %job_id, "job received before; not run again");
                ack(job_id, ack_code::DUPLICATE_COMMAND);
                false
            }
            Err(e) => {
                tracing::warn!(job = %job_id, "cannot record the job: {e}");
                ack(job_id, ack_code::UNEXPECTED);
                false
            }
        }
    }

    fn spawn(&self, state: DocumentState, pending: bool) {
        let token = CancellationToken::new();
        self.inner
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(state.job_id.clone(), token.clone());
        let inner = self.inner.clone();
        self.inner.tracker.spawn(async move {
            let job_id = state.job_id.clone();
            inner.run(state, pending, token).await;
            inner
                .jobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&job_id);
        });
    }

    /// Stops every running script (their documents resume at the next start) and waits for it.
    pub(crate) async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.inner.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("Run Command documents still stopping after the grace period");
        }
    }
}

impl Inner {
    fn send(&self, outgoing: Outgoing) {
        // The receiver lives as long as the control channel; after it, nothing can be sent.
        let _ = self.out.send(outgoing);
    }

    fn reply(&self, status: &str, plugins: Option<BTreeMap<String, PluginResult>>) -> CommandReply {
        let mut counts = BTreeMap::new();
        for result in plugins.iter().flat_map(|p| p.values()) {
            *counts.entry(result.status.clone()).or_insert(0) += 1;
        }
        CommandReply {
            additional_info: AdditionalInfo {
                agent: self.agent.clone(),
                date_time: iso_millis(now_millis()),
                run_id: String::new(),
                runtime_status_counts: counts,
                able_to_open_mgs_connection: None,
            },
            document_status: status.to_owned(),
            document_trace_output: String::new(),
            runtime_status: plugins,
        }
    }

    /// The reply sent once on acceptance (or with a parse failure).
    fn first_reply(&self, job_id: &str, topic: &str, status: &str) {
        let reply = AgentJobReply::new(job_id.to_owned(), topic, &self.reply(status, None));
        self.send(Outgoing::Once(reply.to_message()));
    }

    /// A tracked reply for the document `state`.
    fn tracked_reply(&self, state: &DocumentState, reply: &CommandReply, is_final: bool) {
        let frame = AgentJobReply::new(state.job_id.clone(), topic::SEND_COMMAND, reply);
        let payload = serde_json::to_string(&frame).expect("replies serialise");
        self.send(Outgoing::Tracked(StoredReply {
            job_id: state.job_id.clone(),
            message_id: Uuid::new_v4(),
            created_ms: now_millis(),
            payload,
            is_final,
        }));
    }

    fn save(&self, stage: Stage, state: &DocumentState) {
        if let Some(store) = &self.store {
            if let Err(e) = store.save(stage, state) {
                tracing::warn!(job = %state.job_id, "cannot save the document state: {e}");
            }
        }
    }

    /// Runs (or resumes) one document to its final reply. A resumed document first loses what
    /// the agent before the restart left running; then it runs again from the step that was
    /// running, or is given up when it has run too often or is too old.
    async fn run(&self, mut state: DocumentState, pending: bool, cancel: CancellationToken) {
        if let Some((step_id, pgid)) = &state.running {
            if *pgid > 0 && group_runs_script(*pgid, &state) {
                tracing::info!(job = %state.job_id, step = %step_id, pgid, "ending the processes of a step interrupted by a restart");
                shell::kill_group(*pgid);
            }
        }
        let _permit = tokio::select! {
            permit = self.permits.clone().acquire_owned() => permit.ok(),
            () = cancel.cancelled() => None,
            () = self.shutdown.cancelled() => return,
        };
        if !pending {
            if let Some(reason) = self.give_up_reason(&state) {
                return self.abandon(state, &reason);
            }
        }
        state.run_count += 1;
        state.running = None;
        if let Some(store) = &self.store {
            let saved = if pending {
                store.start(&state)
            } else {
                store.save(Stage::Current, &state)
            };
            if let Err(e) = saved {
                tracing::warn!(job = %state.job_id, "cannot save the document state: {e}");
            }
        }
        let steps = state.steps.clone();
        for (index, step) in steps.iter().enumerate() {
            if cancel.is_cancelled() {
                break;
            }
            if let Some(result) = state.results.get(&step.id) {
                if stops_document(step, result) {
                    break;
                }
                continue;
            }
            let scope = Scope::top(step);
            let Some(outcome) = self.run_step(&mut state, step, &scope, &cancel).await else {
                // The agent is stopping: the document resumes at the next start.
                return;
            };
            self.upload_whole_output(&state, step, &outcome).await;
            let stop = stops_document(step, &outcome.result);
            self.finish_step(&mut state, step, outcome.result);
            if stop {
                if !cancel.is_cancelled() {
                    self.skip_remaining(&mut state, step, &steps[index + 1..]);
                }
                break;
            }
        }
        let status = if cancel.is_cancelled() {
            document_status::CANCELLED.to_owned()
        } else {
            document_result(state.results.values())
        };
        self.final_reply(&state, &status);
    }

    /// Why a document interrupted by a restart is not run again, if it is not.
    fn give_up_reason(&self, state: &DocumentState) -> Option<String> {
        let age_ms = now_millis().saturating_sub(state.created_ms);
        if state.created_ms > 0 && u128::from(age_ms) > MAX_DOCUMENT_AGE.as_millis() {
            return Some(format!(
                "The document was received more than {} hours ago and was interrupted by an agent restart; it is not run again.",
                MAX_DOCUMENT_AGE.as_secs() / 3600
            ));
        }
        (state.run_count >= self.max_runs).then(|| {
            format!(
                "The document was interrupted by an agent restart after {} runs, the most allowed ({}); it is not run again.",
                state.run_count, self.max_runs
            )
        })
    }

    /// Gives up a document: its state goes to `corrupt/`, the step it stopped at is reported
    /// Failed with `reason`, and the document ends Failed.
    fn abandon(&self, mut state: DocumentState, reason: &str) {
        tracing::warn!(job = %state.job_id, "{reason}");
        if let Some(store) = &self.store {
            if let Err(e) = store.abandon(&state) {
                tracing::warn!(job = %state.job_id, "cannot move the document state aside: {e}");
            }
        }
        let stopped_at = state.running.take().map(|(id, _)| id).or_else(|| {
            let unfinished = state
                .steps
                .iter()
                .find(|s| !state.results.contains_key(&s.id));
            unfinished.map(|s| s.id.clone())
        });
        let step = stopped_at.and_then(|id| state.steps.iter().find(|s| s.id == id).cloned());
        if let Some(step) = step {
            let now = iso_millis(now_millis());
            let result = failed_result(&step, reason, &now, &now);
            state.results.insert(step.id.clone(), result.clone());
            self.step_reply(&state, &step.id, result);
        }
        self.final_reply(&state, document_status::FAILED);
    }

    /// The document's final reply, its plugins' results included when they fit.
    fn final_reply(&self, state: &DocumentState, status: &str) {
        let reply = self.reply(status, Some(state.results.clone()));
        let fits = serde_json::to_string(&reply).map_or(0, |s| s.len()) <= limits::REPLY_CONTENT;
        let reply = if fits {
            reply
        } else {
            self.reply(status, None)
        };
        tracing::info!(job = %state.job_id, status = %status, "document finished");
        self.tracked_reply(state, &reply, true);
    }

    /// Records a finished step and replies with it.
    fn finish_step(&self, state: &mut DocumentState, step: &Step, result: PluginResult) {
        state.results.insert(step.id.clone(), result.clone());
        state.running = None;
        self.save(Stage::Current, state);
        self.step_reply(state, &step.id, result);
    }

    /// Reports the steps after `ended_by` Skipped, as the document ended early (exit code 168 or
    /// 169, or `onFailure: exit`), so every step of the document has a result.
    fn skip_remaining(&self, state: &mut DocumentState, ended_by: &Step, rest: &[Step]) {
        let now = iso_millis(now_millis());
        for step in rest {
            let message = format!(
                "Step execution skipped: step {} ended the document. Step name: {}",
                ended_by.step_name, step.step_name
            );
            let result = PluginResult {
                status: document_status::SKIPPED.into(),
                output: message.clone(),
                standard_output: message,
                ..base_result(step, &now, &now)
            };
            self.finish_step(state, step, result);
        }
    }

    /// The intermediate reply of one finished step.
    fn step_reply(&self, state: &DocumentState, step_id: &str, result: PluginResult) {
        let plugin = BTreeMap::from([(step_id.to_owned(), result)]);
        let reply = self.reply(document_status::IN_PROGRESS, Some(plugin));
        self.tracked_reply(state, &reply, false);
    }

    /// Runs one step (of the document, or of a document `aws:runDocument` runs); `None` when
    /// the agent is stopping.
    async fn run_step(
        &self,
        state: &mut DocumentState,
        step: &Step,
        scope: &Scope,
        cancel: &CancellationToken,
    ) -> Option<StepOutcome> {
        let start = iso_millis(now_millis());
        let message = match &step.plan {
            Plan::Skip(message) => {
                let result = PluginResult {
                    status: document_status::SKIPPED.into(),
                    output: message.clone(),
                    standard_output: message.clone(),
                    ..base_result(step, &start, &start)
                };
                return Some(StepOutcome {
                    result,
                    stdout: message.clone(),
                    stderr: String::new(),
                });
            }
            Plan::Fail(message) => message.clone(),
            Plan::Run => match step.action.as_str() {
                RUN_SHELL_SCRIPT => match ShellInputs::parse(&step.inputs) {
                    Ok(inputs) => {
                        return self
                            .run_shell(state, step, scope, &inputs, cancel, start)
                            .await
                    }
                    Err(message) => message,
                },
                RUN_DOCUMENT => return self.run_document(state, step, scope, cancel, start).await,
                DOWNLOAD_CONTENT => match self.download_content(state, step).await {
                    Ok(done) => {
                        let end = iso_millis(now_millis());
                        return Some(StepOutcome::finished(
                            step,
                            document_status::SUCCESS,
                            0,
                            done,
                            String::new(),
                            (&start, &end),
                        ));
                    }
                    Err(message) => message,
                },
                other => format!("Plugin with name {other} not found. Step name: {}", step.id),
            },
        };
        let end = iso_millis(now_millis());
        Some(StepOutcome::failed(step, &message, &start, &end))
    }

    async fn run_shell(
        &self,
        state: &mut DocumentState,
        step: &Step,
        scope: &Scope,
        inputs: &ShellInputs,
        cancel: &CancellationToken,
        start: String,
    ) -> Option<StepOutcome> {
        let store = self.store.as_ref()?;
        let command_id = state.command_id.clone();
        let ctx = ShellContext {
            dir: store.script_dir(&command_id, &scope.path(step)),
            instance_id: &self.instance_id,
            region: &self.region,
            command_id: &command_id,
        };
        state.running = Some((scope.top.clone(), 0));
        self.save(Stage::Current, state);
        let stop = cancel.child_token();
        let on_shutdown = {
            let stop = stop.clone();
            let shutdown = self.shutdown.clone();
            async move {
                shutdown.cancelled().await;
                stop.cancel();
            }
        };
        let watcher = tokio::spawn(on_shutdown);
        let outcome = shell::run(inputs, &ctx, &stop, |pgid| {
            state.running = Some((scope.top.clone(), pgid));
            self.save(Stage::Current, state);
        })
        .await;
        watcher.abort();
        if let (Some((_, pgid)), Some(_)) = (state.running.as_ref(), outcome.stopped) {
            // What the stopped script started in the background goes with it.
            shell::kill_group(*pgid);
        }
        if self.shutdown.is_cancelled() && outcome.stopped == Some(Stopped::Cancelled) {
            return None;
        }
        let end = iso_millis(now_millis());
        let cancelled = outcome.stopped == Some(Stopped::Cancelled);
        let timed_out = outcome.stopped == Some(Stopped::TimedOut);
        let status = match outcome.code {
            0 | EXIT_WITH_SUCCESS => document_status::SUCCESS,
            REBOOT_EXIT_CODE => {
                tracing::warn!(job = %state.job_id, step = %step.id, "the script asked for a reboot; the host is not rebooted");
                document_status::SUCCESS_AND_REBOOT
            }
            KILLED_EXIT_CODE if cancelled => document_status::CANCELLED,
            KILLED_EXIT_CODE if timed_out => document_status::TIMED_OUT,
            _ => document_status::FAILED,
        };
        Some(StepOutcome::finished(
            step,
            status,
            outcome.code,
            outcome.stdout,
            outcome.stderr,
            (&start, &end),
        ))
    }
}

/// Where a step runs: under which step of the document (recorded as the one running), how
/// deep in `aws:runDocument` nesting, and by which path of step names.
pub(crate) struct Scope {
    /// The document's own step this one belongs to.
    top: String,
    /// Step names from the document's step down to this step's parent, `/`-separated; empty
    /// for the document's own steps.
    parents: String,
    /// Nesting depth: 0 for the document's own steps.
    depth: u32,
}

impl Scope {
    /// The scope of one of the document's own steps.
    fn top(step: &Step) -> Self {
        Self {
            top: step.id.clone(),
            parents: String::new(),
            depth: 0,
        }
    }

    /// The scope of the steps of the document `step` (of this scope) runs.
    fn nested(&self, step: &Step) -> Self {
        Self {
            top: self.top.clone(),
            parents: self.path(step),
            depth: self.depth + 1,
        }
    }

    /// The path naming `step` in this scope (its script directory).
    fn path(&self, step: &Step) -> String {
        if self.parents.is_empty() {
            step.id.clone()
        } else {
            format!("{}/{}", self.parents, step.id)
        }
    }
}

/// A finished step: its entry in replies, and its whole streams (the entry cuts them).
pub(crate) struct StepOutcome {
    result: PluginResult,
    stdout: String,
    stderr: String,
}

impl StepOutcome {
    /// A step that ran, with its streams.
    fn finished(
        step: &Step,
        status: &str,
        code: i64,
        stdout: String,
        stderr: String,
        (start, end): (&str, &str),
    ) -> Self {
        let result = PluginResult {
            status: status.into(),
            code,
            output: output_summary(&stdout, &stderr),
            standard_output: standard_output(&stdout),
            standard_error: truncate_chars(&stderr, limits::STANDARD_ERROR).to_owned(),
            ..base_result(step, start, end)
        };
        Self {
            result,
            stdout,
            stderr,
        }
    }

    /// A step that failed with `message` before running anything.
    fn failed(step: &Step, message: &str, start: &str, end: &str) -> Self {
        Self {
            result: failed_result(step, message, start, end),
            stdout: String::new(),
            stderr: message.to_owned(),
        }
    }
}

impl Inner {
    /// Uploads the streams of `outcome` that the reply truncates (stdout over
    /// [`limits::STANDARD_OUTPUT`] characters, stderr over [`limits::STANDARD_ERROR`]), so the
    /// gateway serves them whole. A stream the gateway does not take now is kept on disk and
    /// retried by the uploader; the reply goes out regardless.
    async fn upload_whole_output(&self, state: &DocumentState, step: &Step, outcome: &StepOutcome) {
        let streams = [
            ("stdout", &outcome.stdout, limits::STANDARD_OUTPUT),
            ("stderr", &outcome.stderr, limits::STANDARD_ERROR),
        ];
        for (stream, text, limit) in streams {
            if text.chars().nth(limit).is_none() {
                continue;
            }
            let upload = self.api.upload_command_output(
                &state.command_id,
                &step.id,
                stream,
                text.as_bytes().to_vec(),
            );
            let Err(e) = upload.await else {
                continue;
            };
            tracing::warn!(job = %state.job_id, step = %step.id, stream, "the whole output could not be uploaded; retrying later: {e}");
            let Some(store) = &self.store else {
                continue;
            };
            let pending = PendingUpload::new(&state.command_id, &step.id, stream);
            match store.save_upload(&pending, text.as_bytes()) {
                Ok(()) => {
                    let _ = self.uploads.send(pending);
                }
                Err(e) => {
                    tracing::warn!(job = %state.job_id, step = %step.id, stream, "cannot keep the whole output for a retry: {e}")
                }
            }
        }
    }
}

/// True when `pgid` still leads a process running one of the document's scripts (not a reused
/// process id).
fn group_runs_script(pgid: i32, state: &DocumentState) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pgid}/cmdline")) else {
        return false;
    };
    let cmdline = String::from_utf8_lossy(&cmdline);
    cmdline.contains(shell::SCRIPT_NAME) && cmdline.contains(&state.command_id)
}

/// Whether the steps after `step` are skipped.
fn stops_document(step: &Step, result: &PluginResult) -> bool {
    matches!(result.code, EXIT_WITH_SUCCESS | EXIT_WITH_FAILURE)
        || (step.exit_on_failure
            && matches!(
                result.status.as_str(),
                document_status::FAILED | document_status::TIMED_OUT | document_status::CANCELLED
            ))
        || result.status == document_status::CANCELLED
}

/// The document's status from its plugins: SuccessAndReboot > Failed > TimedOut > Cancelled >
/// Success.
fn document_result<'a>(results: impl Iterator<Item = &'a PluginResult>) -> String {
    let order = [
        document_status::SUCCESS_AND_REBOOT,
        document_status::FAILED,
        document_status::TIMED_OUT,
        document_status::CANCELLED,
    ];
    let statuses: Vec<&str> = results.map(|r| r.status.as_str()).collect();
    order
        .iter()
        .find(|s| statuses.contains(s))
        .unwrap_or(&document_status::SUCCESS)
        .to_string()
}

fn base_result(step: &Step, start: &str, end: &str) -> PluginResult {
    PluginResult {
        name: step.action.clone(),
        step_name: step.step_name.clone(),
        start_date_time: start.to_owned(),
        end_date_time: end.to_owned(),
        ..PluginResult::default()
    }
}

fn failed_result(step: &Step, message: &str, start: &str, end: &str) -> PluginResult {
    PluginResult {
        status: document_status::FAILED.into(),
        code: 1,
        output: output_summary("", message),
        standard_error: truncate_chars(message, limits::STANDARD_ERROR).to_owned(),
        ..base_result(step, start, end)
    }
}

/// `standardOutput`: at most [`limits::STANDARD_OUTPUT`] characters, the end replaced by a marker
/// when cut.
fn standard_output(stdout: &str) -> String {
    if stdout.chars().count() <= limits::STANDARD_OUTPUT {
        return stdout.to_owned();
    }
    let keep = limits::STANDARD_OUTPUT - STDOUT_TRUNCATED.len();
    format!("{}{STDOUT_TRUNCATED}", truncate_chars(stdout, keep))
}

/// `output`: stdout, the separator and stderr (the separator only with stderr), cut to
/// [`limits::OUTPUT`] characters as the official agent cuts it.
fn output_summary(stdout: &str, stderr: &str) -> String {
    let (out_len, err_len) = (stdout.chars().count(), stderr.chars().count());
    let separator = if err_len > 0 { ERROR_SEPARATOR } else { "" };
    let space = limits::OUTPUT - separator.len();
    if out_len + err_len < space {
        return format!("{stdout}{separator}{stderr}");
    }
    if out_len > space / 2 && err_len > space / 2 {
        let half = (space - OUTPUT_TRUNCATED.len() - ERROR_TRUNCATED.len()) / 2;
        return format!(
            "{}{OUTPUT_TRUNCATED}{separator}{}{ERROR_TRUNCATED}",
            truncate_chars(stdout, half),
            truncate_chars(stderr, half)
        );
    }
    if out_len < space / 2 {
        let keep = space - ERROR_TRUNCATED.len() - out_len;
        return format!(
            "{stdout}{separator}{}{ERROR_TRUNCATED}",
            truncate_chars(stderr, keep)
        );
    }
    let keep = space - OUTPUT_TRUNCATED.len() - err_len;
    format!(
        "{}{OUTPUT_TRUNCATED}{separator}{stderr}",
        truncate_chars(stdout, keep)
    )
}

/// Unix milliseconds as ISO-8601 UTC with milliseconds.
fn iso_millis(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_cut_as_the_official_agent_cuts_it() {
        assert_eq!(output_summary("out\n", ""), "out\n");
        assert_eq!(
            output_summary("hello\n", "err"),
            format!("hello\n{ERROR_SEPARATOR}err")
        );
        let long = "x".repeat(5000);
        let both = output_summary(&long, &long);
        assert_eq!(both.chars().count(), limits::OUTPUT);
        assert!(both.contains(OUTPUT_TRUNCATED) && both.ends_with(ERROR_TRUNCATED));
        let out_only = output_summary(&long, "");
        assert!(out_only.ends_with(OUTPUT_TRUNCATED));
        assert_eq!(out_only.chars().count(), limits::OUTPUT);
        let err_long = output_summary("a", &long);
        assert!(err_long.starts_with(&format!("a{ERROR_SEPARATOR}")));
        assert_eq!(err_long.chars().count(), limits::OUTPUT);
        let stdout = standard_output(&"é".repeat(30_000));
        assert_eq!(stdout.chars().count(), limits::STANDARD_OUTPUT);
        assert!(stdout.ends_with(STDOUT_TRUNCATED));
    }

    #[test]
    fn document_status_precedence() {
        let r = |s: &str| PluginResult {
            status: s.into(),
            ..PluginResult::default()
        };
        let all = [r("Success"), r("Cancelled"), r("Failed"), r("Skipped")];
        assert_eq!(document_result(all.iter()), "Failed");
        assert_eq!(document_result([r("Skipped")].iter()), "Success");
        assert_eq!(
            document_result([r("TimedOut"), r("Cancelled")].iter()),
            "TimedOut"
        );
        assert_eq!(iso_millis(1_729_534_091_000), "2024-10-21T18:08:11.000Z");
    }
}
