//! Run Command on the agent, end to end: a scripted control-channel peer (a minimal MGS in this
//! test) sends `agent_job` frames and checks the agent's acks and replies — their shape with the
//! official field names, output separator and truncation, step statuses, cancel and timeout
//! killing whole process groups, duplicate jobs across restarts, an agent killed with SIGKILL
//! mid-command (a real child process) running the interrupted step again without re-running
//! finished steps, and giving a document up once restarts interrupted it too often, replies
//! re-sent until acknowledged, the health reports' timing, and the official agent's recorded
//! frames replayed (OFFICIAL-AGENT.md §9.3, §9.6).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use ssmx_agent::{Agent, AgentConfig, Backoff, Registration};
use ssmx_protocol::command::{
    job_id, topic, AgentJob, AgentJobAck, AgentJobReply, AgentJobReplyAck, CancelCommandPayload,
    CommandReply, SendCommandPayload, ERROR_SEPARATOR,
};
use ssmx_protocol::payload::create_channel_output_xml;
use ssmx_protocol::{AgentMessage, MessageType, PayloadType};
use tokio::sync::{mpsc, oneshot};

const INSTANCE_ID: &str = "mi-0123456789abcdef0";
const STEP: Duration = Duration::from_secs(30);
const SEND_TOPIC: &str = "aws.ssm.sendCommand.us-east-1.2.0";
/// Set in the environment of the child-process agent: its MGS URL.
const CHILD_URL: &str = "SSMX_E2E_COMMANDS_CHILD_URL";
/// Set in the environment of the child-process agent: its Run Command state directory.
const CHILD_DIR: &str = "SSMX_E2E_COMMANDS_CHILD_DIR";
/// Set in the environment of the child-process agent: its `max_document_runs`.
const CHILD_MAX_RUNS: &str = "SSMX_E2E_COMMANDS_CHILD_MAX_RUNS";

// ---------------------------------------------------------------------------------------------
// A minimal MGS: REST calls answered, control channels handed to the test.

/// One control channel the agent opened.
struct Peer {
    to_agent: mpsc::UnboundedSender<Message>,
    from_agent: mpsc::UnboundedReceiver<Message>,
}

impl Peer {
    fn send(&self, msg: &AgentMessage) {
        self.to_agent.send(Message::Binary(msg.to_bytes())).unwrap();
    }

    /// Drops the connection (the agent reconnects).
    fn close(&self) {
        let _ = self.to_agent.send(Message::Close(None));
    }

    /// The next frame from the agent within `wait`; `None` on silence or a closed socket.
    async fn recv_within(&mut self, wait: Duration) -> Option<AgentMessage> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let message = tokio::time::timeout_at(deadline, self.from_agent.recv())
                .await
                .ok()??;
            match message {
                Message::Binary(b) => return Some(AgentMessage::decode(b).expect("valid frame")),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// The next Run Command frame (`agent_job_ack` or `agent_job_reply`).
    async fn recv_job_frame(&mut self) -> AgentMessage {
        loop {
            let msg = self
                .recv_within(STEP)
                .await
                .expect("a Run Command frame in time");
            if matches!(
                msg.message_type,
                MessageType::AgentJobAck | MessageType::AgentJobReply
            ) {
                return msg;
            }
        }
    }

    /// The next `agent_job_ack`, raw and parsed.
    async fn ack(&mut self) -> (AgentMessage, AgentJobAck) {
        let msg = self.recv_job_frame().await;
        assert_eq!(msg.message_type, MessageType::AgentJobAck, "{msg:?}");
        let ack = serde_json::from_slice(&msg.payload).unwrap();
        (msg, ack)
    }

    /// The next `agent_job_reply`, raw, its envelope and its content.
    async fn reply(&mut self) -> Reply {
        let msg = self.recv_job_frame().await;
        assert_eq!(msg.message_type, MessageType::AgentJobReply, "{msg:?}");
        let envelope: AgentJobReply = serde_json::from_slice(&msg.payload).unwrap();
        let content = envelope.reply().unwrap();
        Reply {
            msg,
            envelope,
            content,
        }
    }

    /// Acknowledges a reply as the service does.
    fn ack_reply(&self, reply: &Reply) {
        let ack = AgentJobReplyAck {
            job_id: reply.envelope.job_id.clone(),
            acknowledged_message_id: reply.msg.message_id.to_string(),
        };
        self.send(&ack.to_message());
    }

    /// Replies of `job` (acknowledged) up to and including its final one.
    async fn until_final(&mut self, job: &str) -> Vec<Reply> {
        let mut replies = Vec::new();
        loop {
            let reply = self.reply().await;
            if reply.envelope.job_id != job {
                continue;
            }
            self.ack_reply(&reply);
            let done = reply.content.document_status != "InProgress";
            replies.push(reply);
            if done {
                return replies;
            }
        }
    }
}

struct Reply {
    msg: AgentMessage,
    envelope: AgentJobReply,
    content: CommandReply,
}

impl Reply {
    /// The single plugin of an intermediate reply.
    fn plugin(&self) -> (&String, &ssmx_protocol::command::PluginResult) {
        let plugins = self.content.runtime_status.as_ref().expect("runtimeStatus");
        assert_eq!(plugins.len(), 1, "{plugins:?}");
        plugins.iter().next().unwrap()
    }
}

struct FakeMgs {
    url: String,
    peers: mpsc::UnboundedReceiver<Peer>,
    /// When each UpdateInstanceInformation call arrived.
    health_reports: mpsc::UnboundedReceiver<tokio::time::Instant>,
    _server: tokio::task::JoinHandle<()>,
}

impl FakeMgs {
    async fn start() -> Self {
        let (peers_tx, peers) = mpsc::unbounded_channel();
        let (reports_tx, health_reports) = mpsc::unbounded_channel();
        let api = move |headers: axum::http::HeaderMap| {
            let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok());
            if target == Some("AmazonSSM.UpdateInstanceInformation") {
                let _ = reports_tx.send(tokio::time::Instant::now());
            }
            async { "{}" }
        };
        let app = Router::new()
            .route("/", post(api))
            .route(
                "/v1/control-channel/{id}",
                post(create_control).get(upgrade),
            )
            .with_state(peers_tx);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            peers,
            health_reports,
            _server: server,
        }
    }

    /// When the next UpdateInstanceInformation call arrives.
    async fn next_health_report(&mut self, wait: Duration) -> tokio::time::Instant {
        tokio::time::timeout(wait, self.health_reports.recv())
            .await
            .expect("UpdateInstanceInformation in time")
            .unwrap()
    }

    async fn next_peer(&mut self) -> Peer {
        tokio::time::timeout(STEP, self.peers.recv())
            .await
            .expect("the agent opens its control channel in time")
            .unwrap()
    }
}

async fn create_control() -> Response {
    (
        StatusCode::CREATED,
        create_channel_output_xml("control-token"),
    )
        .into_response()
}

async fn upgrade(
    State(peers): State<mpsc::UnboundedSender<Peer>>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.on_upgrade(move |socket| bridge(socket, peers))
}

async fn bridge(mut socket: WebSocket, peers: mpsc::UnboundedSender<Peer>) {
    match socket.recv().await {
        Some(Ok(Message::Text(_))) => {}
        other => panic!("expected OpenControlChannel first, got {other:?}"),
    }
    let (to_agent, mut outgoing) = mpsc::unbounded_channel();
    let (incoming, from_agent) = mpsc::unbounded_channel();
    let _ = peers.send(Peer {
        to_agent,
        from_agent,
    });
    loop {
        tokio::select! {
            out = outgoing.recv() => match out {
                Some(Message::Close(_)) | None => return,
                Some(message) => {
                    if socket.send(message).await.is_err() {
                        return;
                    }
                }
            },
            inc = socket.recv() => match inc {
                Some(Ok(message)) => {
                    let _ = incoming.send(message);
                }
                _ => {
                    let _ = incoming.send(Message::Close(None));
                    return;
                }
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The agent under test.

fn agent_config(url: &str, commands_dir: &Path) -> AgentConfig {
    if let Ok(filter) = std::env::var("SSMX_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let mut config = AgentConfig::new(Registration {
        gateway_url: url.to_owned(),
        instance_id: INSTANCE_ID.into(),
        region: "us-east-1".into(),
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: "secret".into(),
    });
    config.commands_dir = Some(commands_dir.to_owned());
    config.timing.control_backoff = Backoff {
        initial_min: Duration::from_millis(20),
        initial_max: Duration::from_millis(40),
        multiplier: 2.0,
        jitter: 0.0,
        cap: Duration::from_millis(200),
    };
    config.timing.control_reopen_pause = Duration::from_millis(50);
    config
}

/// An agent running in this process until [`InProcess::stop`].
struct InProcess {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl InProcess {
    fn start(config: AgentConfig) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            Agent::new(config)
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(STEP, self.task)
            .await
            .expect("agent stops")
            .unwrap();
    }
}

/// Not a test of its own: the agent of the tests that kill it, run as a separate process of
/// this test binary.
#[test]
fn child_agent() {
    let (Ok(url), Ok(dir)) = (std::env::var(CHILD_URL), std::env::var(CHILD_DIR)) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut config = agent_config(&url, Path::new(&dir));
        if let Some(runs) = std::env::var(CHILD_MAX_RUNS)
            .ok()
            .and_then(|r| r.parse().ok())
        {
            config.max_document_runs = runs;
        }
        Agent::new(config)
            .run(std::future::pending::<()>())
            .await
            .unwrap();
    });
}

/// The agent as a child process; `max_runs` sets its `max_document_runs`.
fn spawn_child_agent(url: &str, dir: &Path, max_runs: Option<u32>) -> std::process::Child {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    if let Some(runs) = max_runs {
        command.env(CHILD_MAX_RUNS, runs.to_string());
    }
    // The test's name within the binary: its module path without the crate's name.
    let test = match module_path!().split_once("::") {
        Some((_, module)) => format!("{module}::child_agent"),
        None => "child_agent".to_string(),
    };
    command
        .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_URL, url)
        .env(CHILD_DIR, dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("child agent starts")
}

// ---------------------------------------------------------------------------------------------
// Jobs.

/// AWS-RunShellScript as the service sends it (OFFICIAL-AGENT.md §9.3).
fn run_shell_script() -> Value {
    json!({"schemaVersion":"1.2","description":"Run a shell script.",
        "parameters":{"commands":{"type":"StringList","description":"…"},
            "workingDirectory":{"type":"String","default":"","description":"…"},
            "executionTimeout":{"type":"String","default":"3600","description":"…"}},
        "runtimeConfig":{"aws:runShellScript":{"properties":[{"id":"0.aws:runShellScript",
            "runCommand":"{{ commands }}","workingDirectory":"{{ workingDirectory }}",
            "timeoutSeconds":"{{ executionTimeout }}"}]}}})
}

fn send_job(command_id: &str, document: Value, parameters: Value) -> AgentMessage {
    let payload = SendCommandPayload {
        command_id: command_id.into(),
        document_name: "Test-Document".into(),
        document_content: document,
        parameters: serde_json::from_value(parameters).unwrap(),
        cloud_watch_output_enabled: "false".into(),
        ..Default::default()
    };
    AgentJob::new(job_id(command_id, INSTANCE_ID), SEND_TOPIC, &payload).to_message()
}

fn shell_job(command_id: &str, commands: &[&str], timeout: &str) -> AgentMessage {
    send_job(
        command_id,
        run_shell_script(),
        json!({"commands": commands, "workingDirectory": "", "executionTimeout": timeout}),
    )
}

fn cancel_job(cancel_id: &str, target: &str) -> AgentMessage {
    AgentJob::new(
        job_id(cancel_id, INSTANCE_ID),
        "aws.ssm.cancelCommand.us-east-1.2.0",
        &CancelCommandPayload {
            cancel_message_id: job_id(target, INSTANCE_ID),
        },
    )
    .to_message()
}

fn iso(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// Accepts `job` (ack 200 naming its frame, then the untracked InProgress reply).
async fn expect_accepted(peer: &mut Peer, job: &AgentMessage) {
    let (_, ack) = peer.ack().await;
    let sent = AgentJob::from_payload(&job.payload).unwrap();
    assert_eq!(ack.job_id, sent.job_id);
    assert_eq!(ack.acknowledged_message_id, job.message_id.to_string());
    assert_eq!(ack.status_code, "200");
    let first = peer.reply().await;
    assert_eq!(first.envelope.job_id, sent.job_id);
    assert_eq!(first.content.document_status, "InProgress");
    assert_eq!(first.content.runtime_status, None);
}

/// Waits until `path` exists and returns its trimmed text.
async fn wait_for_file(path: &Path) -> String {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.ends_with('\n') {
                return text.trim().to_owned();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never written",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// True while a process of group `pgid` still runs. Zombies do not count: once killed, the
/// processes of a dead agent's script wait for init to reap them, which takes its own time.
fn group_runs(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        // pid (comm) state ppid pgrp …; comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string()
    })
}

/// Waits until no process of group `pgid` runs.
async fn assert_group_gone(pgid: i32) {
    let deadline = tokio::time::Instant::now() + STEP;
    while group_runs(pgid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "process group {pgid} survived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_have_the_official_shape() {
    let dir = tempfile::tempdir().unwrap();
    let mut mgs = FakeMgs::start().await;
    let agent = InProcess::start(agent_config(&mgs.url, dir.path()));
    let mut peer = mgs.next_peer().await;

    let job = shell_job(
        "c-shape",
        &[
            "echo \"$AWS_SSM_INSTANCE_ID $AWS_SSM_REGION_NAME $SSM_COMMAND_ID\"",
            "echo to-stderr >&2",
            "exit 3",
        ],
        "3600",
    );
    peer.send(&job);
    let (raw_ack, ack) = peer.ack().await;
    let text = String::from_utf8(raw_ack.payload.to_vec()).unwrap();
    assert_eq!(
        text,
        format!(
            r#"{{"jobId":"{}","acknowledgedMessageId":"{}","createdDate":"{}","statusCode":"200","errorMessage":"Successful"}}"#,
            job_id("c-shape", INSTANCE_ID),
            job.message_id.hyphenated(),
            iso(job.created_date)
        )
    );
    assert_eq!(ack.status_code, "200");
    let first = peer.reply().await;
    let raw = String::from_utf8(first.msg.payload.to_vec()).unwrap();
    assert!(
        raw.starts_with(r#"{"schemaVersion":1,"jobId":"aws.ssm.c-shape."#),
        "{raw}"
    );
    assert!(raw.ends_with(r#","topic":"aws.ssm.sendCommand"}"#), "{raw}");
    assert!(first.envelope.content.starts_with(
        r#"{"additionalInfo":{"agent":{"lang":"en-US","name":"amazon-ssm-agent","os":"linux""#
    ));
    assert!(first.envelope.content.contains(r#""runtimeStatus":null"#));
    assert_eq!(first.content.document_status, "InProgress");

    let replies = peer.until_final(&job_id("c-shape", INSTANCE_ID)).await;
    assert_eq!(replies.len(), 2, "one per plugin and a final one");
    let (id, plugin) = replies[0].plugin();
    assert_eq!(id, "aws:runShellScript");
    assert_eq!(replies[0].content.document_status, "InProgress");
    assert_eq!(plugin.status, "Failed");
    assert_eq!(plugin.code, 3);
    assert_eq!(plugin.name, "aws:runShellScript");
    let stdout = format!("{INSTANCE_ID} us-east-1 c-shape\n");
    let stderr = "to-stderr\nfailed to run commands: exit status 3";
    assert_eq!(plugin.standard_output, stdout);
    assert_eq!(plugin.standard_error, stderr);
    assert_eq!(plugin.output, format!("{stdout}{ERROR_SEPARATOR}{stderr}"));
    assert_eq!(plugin.start_date_time.len(), 24);
    let last = &replies[1];
    assert_eq!(last.content.document_status, "Failed");
    assert_eq!(
        last.content.additional_info.runtime_status_counts,
        BTreeMap::from([("Failed".to_owned(), 1)])
    );
    assert_eq!(last.msg.message_type, MessageType::AgentJobReply);
    assert_eq!(last.msg.payload_type, PayloadType::Undefined);

    // Success, no separator without stderr; long output cut as the official agent cuts it.
    let job = shell_job("c-long", &["head -c 30000 /dev/zero | tr '\\0' a"], "3600");
    peer.send(&job);
    expect_accepted(&mut peer, &job).await;
    let replies = peer.until_final(&job_id("c-long", INSTANCE_ID)).await;
    let (_, plugin) = replies[0].plugin();
    assert_eq!(plugin.status, "Success");
    assert_eq!(plugin.code, 0);
    assert_eq!(plugin.standard_output.chars().count(), 24_000);
    assert!(plugin.standard_output.ends_with("--output truncated--"));
    assert_eq!(plugin.output.chars().count(), 2_500);
    assert!(plugin.output.ends_with("\n---Output truncated---"));
    assert!(!plugin.output.contains("ERROR"));
    assert_eq!(replies[1].content.document_status, "Success");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_step_document_with_parameters_and_preconditions() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut mgs = FakeMgs::start().await;
    let agent = InProcess::start(agent_config(&mgs.url, dir.path()));
    let mut peer = mgs.next_peer().await;

    let marker = work.path().join("never");
    let document = json!({"schemaVersion":"2.2","description":"steps",
        "parameters":{
            "greeting":{"type":"String","default":"hi"},
            "lines":{"type":"StringList","default":["echo first", "pwd"]},
            "dir":{"type":"String"}},
        "mainSteps":[
            {"action":"aws:runShellScript","name":"linuxStep",
             "precondition":{"StringEquals":["platformType","Linux"]},
             "inputs":{"runCommand":"{{ lines }}","workingDirectory":"{{ dir }}","timeoutSeconds":60}},
            {"action":"aws:runShellScript","name":"windowsStep",
             "precondition":{"StringEquals":["platformType","Windows"]},
             "inputs":{"runCommand":["echo never"]}},
            {"action":"aws:runPowerShellScript","name":"powershellStep",
             "inputs":{"runCommand":["Get-Date"]}},
            {"action":"aws:runShellScript","name":"badStep","onFailure":"exit",
             "inputs":{"runCommand":"echo {{ greeting }}"}},
            {"action":"aws:runShellScript","name":"afterExit",
             "inputs":{"runCommand":[format!("touch {}", marker.display())]}}]});
    let job = send_job(
        "c-steps",
        document,
        json!({"greeting":"hello","dir":work.path().to_str().unwrap()}),
    );
    peer.send(&job);
    expect_accepted(&mut peer, &job).await;
    let replies = peer.until_final(&job_id("c-steps", INSTANCE_ID)).await;
    assert_eq!(
        replies.len(),
        6,
        "five steps reported, then the final reply"
    );
    let steps: Vec<_> = replies[..5].iter().map(Reply::plugin).collect();
    assert_eq!(steps[0].0, "linuxStep");
    assert_eq!(steps[0].1.status, "Success");
    assert_eq!(steps[0].1.step_name, "linuxStep");
    assert_eq!(
        steps[0].1.standard_output,
        format!("first\n{}\n", work.path().canonicalize().unwrap().display())
    );
    assert_eq!(steps[1].0, "windowsStep");
    assert_eq!(steps[1].1.status, "Skipped");
    assert_eq!(
        steps[1].1.output,
        "Step execution skipped due to unsatisfied preconditions: '\"StringEquals\": [platformType, Windows]'. Step name: windowsStep"
    );
    assert_eq!(steps[2].0, "powershellStep");
    assert_eq!(steps[2].1.status, "Skipped");
    assert_eq!(steps[2].1.name, "aws:runPowerShellScript");
    assert_eq!(steps[3].0, "badStep");
    assert_eq!(steps[3].1.status, "Failed");
    assert!(
        steps[3]
            .1
            .standard_error
            .starts_with("Invalid format in plugin properties"),
        "{:?}",
        steps[3].1
    );
    assert_eq!(steps[4].0, "afterExit");
    assert_eq!(steps[4].1.status, "Skipped", "{:?}", steps[4].1);
    let last = &replies[5];
    assert_eq!(last.content.document_status, "Failed");
    assert!(!marker.exists(), "onFailure: exit stops later steps");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_timeout_kill_the_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut mgs = FakeMgs::start().await;
    let agent = InProcess::start(agent_config(&mgs.url, dir.path()));
    let mut peer = mgs.next_peer().await;

    // Timeout: 137, TimedOut, and the background child goes too.
    let pid_file = work.path().join("timeout.pid");
    let job = shell_job(
        "c-timeout",
        &[
            &format!("echo $$ > {}", pid_file.display()),
            "sleep 300 &",
            "sleep 300",
        ],
        "1",
    );
    peer.send(&job);
    expect_accepted(&mut peer, &job).await;
    let pgid: i32 = wait_for_file(&pid_file).await.parse().unwrap();
    let replies = peer.until_final(&job_id("c-timeout", INSTANCE_ID)).await;
    let (_, plugin) = replies[0].plugin();
    assert_eq!((plugin.status.as_str(), plugin.code), ("TimedOut", 137));
    assert_eq!(replies[1].content.document_status, "TimedOut");
    assert_group_gone(pgid).await;

    // Cancel: the cancel job is acked and answered once; the command ends Cancelled with 137.
    let pid_file = work.path().join("cancel.pid");
    let job = shell_job(
        "c-cancel",
        &[
            &format!("echo $$ > {}", pid_file.display()),
            "sleep 300 &",
            "wait",
        ],
        "3600",
    );
    peer.send(&job);
    expect_accepted(&mut peer, &job).await;
    let pgid: i32 = wait_for_file(&pid_file).await.parse().unwrap();
    let cancel = cancel_job("c-cancel-req", "c-cancel");
    peer.send(&cancel);
    let (_, ack) = peer.ack().await;
    assert_eq!(ack.job_id, job_id("c-cancel-req", INSTANCE_ID));
    assert_eq!(ack.acknowledged_message_id, cancel.message_id.to_string());
    assert_eq!(ack.status_code, "200");
    let mut cancel_replies = 0;
    let mut replies = Vec::new();
    while replies
        .last()
        .is_none_or(|r: &Reply| r.content.document_status == "InProgress")
    {
        let reply = peer.reply().await;
        peer.ack_reply(&reply);
        if reply.envelope.topic == topic::CANCEL_COMMAND {
            assert_eq!(reply.envelope.job_id, job_id("c-cancel-req", INSTANCE_ID));
            assert_eq!(reply.content.document_status, "InProgress");
            cancel_replies += 1;
        } else {
            replies.push(reply);
        }
    }
    assert_eq!(cancel_replies, 1);
    let (_, plugin) = replies[0].plugin();
    assert_eq!((plugin.status.as_str(), plugin.code), ("Cancelled", 137));
    assert_eq!(replies[1].content.document_status, "Cancelled");
    assert_group_gone(pgid).await;

    // Exit code 1 is a plain failure.
    let job = shell_job("c-exit1", &["exit 1"], "3600");
    peer.send(&job);
    expect_accepted(&mut peer, &job).await;
    let replies = peer.until_final(&job_id("c-exit1", INSTANCE_ID)).await;
    let (_, plugin) = replies[0].plugin();
    assert_eq!((plugin.status.as_str(), plugin.code), ("Failed", 1));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_duplicate_jobs_are_refused_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut mgs = FakeMgs::start().await;
    let agent = InProcess::start(agent_config(&mgs.url, dir.path()));
    let mut peer = mgs.next_peer().await;

    let job = shell_job("c-once", &["echo once"], "3600");
    peer.send(&job);
    expect_accepted(&mut peer, &job).await;
    let replies = peer.until_final(&job_id("c-once", INSTANCE_ID)).await;
    assert_eq!(replies.last().unwrap().content.document_status, "Success");

    // A payload that does not parse: 51408 and a Failed reply.
    let mut broken = AgentJob::new(job_id("c-broken", INSTANCE_ID), SEND_TOPIC, &json!({}));
    broken.content = "{not json".into();
    let broken = broken.to_message();
    peer.send(&broken);
    let (_, ack) = peer.ack().await;
    assert_eq!(
        (ack.status_code.as_str(), ack.error_message.as_str()),
        ("51408", "AgentJobMessageParseError")
    );
    assert_eq!(ack.job_id, job_id("c-broken", INSTANCE_ID));
    let reply = peer.reply().await;
    assert_eq!(reply.content.document_status, "Failed");

    // A document that cannot run: 51406.
    peer.send(&send_job(
        "c-invalid",
        json!({"schemaVersion":"2.2"}),
        json!({}),
    ));
    let (_, ack) = peer.ack().await;
    assert_eq!(
        (ack.status_code.as_str(), ack.error_message.as_str()),
        ("51406", "InvalidDocument")
    );
    agent.stop().await;

    // After a restart, the same job id (in a new frame) is a duplicate and does not run.
    let agent = InProcess::start(agent_config(&mgs.url, dir.path()));
    let mut peer = mgs.next_peer().await;
    let again = shell_job("c-once", &["echo once"], "3600");
    peer.send(&again);
    let (_, ack) = peer.ack().await;
    assert_eq!(
        (ack.status_code.as_str(), ack.error_message.as_str()),
        ("51405", "DuplicateCommand")
    );
    assert_eq!(ack.acknowledged_message_id, again.message_id.to_string());
    let extra = peer.recv_within(Duration::from_millis(500)).await;
    assert!(
        extra.is_none_or(|m| m.message_type != MessageType::AgentJobReply),
        "a duplicate is not run"
    );
    agent.stop().await;
}

/// Waits until `dir` holds no file.
async fn wait_until_empty(dir: &Path) {
    let deadline = tokio::time::Instant::now() + STEP;
    while std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never emptied",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_runs_the_interrupted_step_again_and_not_the_finished_ones() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut mgs = FakeMgs::start().await;
    let mut child = spawn_child_agent(&mgs.url, dir.path(), None);
    let mut peer = mgs.next_peer().await;

    let counts = ["first", "second", "third"].map(|s| work.path().join(format!("{s}.count")));
    let pid_file = work.path().join("second.pid");
    let count_run = |count: &Path| format!("echo ran >> {}", count.display());
    let document = json!({"schemaVersion":"2.2","mainSteps":[
        {"action":"aws:runShellScript","name":"first","inputs":{"runCommand":[count_run(&counts[0])]}},
        {"action":"aws:runShellScript","name":"second","inputs":{"runCommand":[
            count_run(&counts[1]),
            // The first run waits to be interrupted; the run after the restart goes through.
            format!("if [ \"$(grep -c ran {})\" = 1 ]; then echo $$ > {}; sleep 300; fi",
                counts[1].display(), pid_file.display()),
            "echo second done"]}},
        {"action":"aws:runShellScript","name":"third","inputs":{"runCommand":[count_run(&counts[2])]}}]});
    let job = send_job("c-crash", document, json!({}));
    peer.send(&job);
    expect_accepted(&mut peer, &job).await;
    let first = peer.reply().await;
    peer.ack_reply(&first);
    assert_eq!(first.plugin().0, "first");
    let pgid: i32 = wait_for_file(&pid_file).await.parse().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(group_runs(pgid), "the script outlives a killed agent");

    let mut child = spawn_child_agent(&mgs.url, dir.path(), None);
    let mut peer = mgs.next_peer().await;
    let replies = peer.until_final(&job_id("c-crash", INSTANCE_ID)).await;
    assert_eq!(replies.len(), 3, "second, third, final");
    let (id, second) = replies[0].plugin();
    assert_eq!(id, "second");
    assert_eq!(second.status, "Success", "{second:?}");
    assert_eq!(second.standard_output, "second done\n");
    assert_eq!(replies[1].plugin().0, "third");
    assert_eq!(replies[1].plugin().1.status, "Success");
    assert_eq!(replies[2].content.document_status, "Success");
    let runs: Vec<String> = counts
        .iter()
        .map(|c| std::fs::read_to_string(c).unwrap())
        .collect();
    assert_eq!(
        runs,
        ["ran\n", "ran\nran\n", "ran\n"],
        "finished steps run once, the interrupted one again"
    );
    // The interrupted run's processes were ended, not left beside the new run.
    assert_group_gone(pgid).await;
    // Acknowledged, the document's state is gone.
    wait_until_empty(&dir.path().join("current")).await;
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Runs a one-step document on a child agent with `max_runs`, kills the agent mid-step, lets
/// `before_restart` change the state directory, restarts the agent and checks that the document
/// is given up: reported Failed with an output containing `reason`, its processes ended, not
/// run again, its state in `corrupt/`.
async fn expect_given_up_after_restart(
    max_runs: Option<u32>,
    before_restart: impl FnOnce(&Path),
    reason: &str,
) {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut mgs = FakeMgs::start().await;
    let mut child = spawn_child_agent(&mgs.url, dir.path(), max_runs);
    let mut peer = mgs.next_peer().await;

    let count = work.path().join("only.count");
    let pid_file = work.path().join("only.pid");
    let document = json!({"schemaVersion":"2.2","mainSteps":[
        {"action":"aws:runShellScript","name":"only","inputs":{"runCommand":[
            format!("echo ran >> {}", count.display()),
            format!("echo $$ > {}", pid_file.display()),
            "sleep 300"]}}]});
    let job = send_job("c-give-up", document, json!({}));
    peer.send(&job);
    expect_accepted(&mut peer, &job).await;
    let pgid: i32 = wait_for_file(&pid_file).await.parse().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    before_restart(dir.path());

    let mut child = spawn_child_agent(&mgs.url, dir.path(), max_runs);
    let mut peer = mgs.next_peer().await;
    let replies = peer.until_final(&job_id("c-give-up", INSTANCE_ID)).await;
    let (id, only) = replies[0].plugin();
    assert_eq!(id, "only");
    assert_eq!((only.status.as_str(), only.code), ("Failed", 1));
    assert!(
        only.output.contains(reason) && only.output.contains("not run again"),
        "{only:?}"
    );
    let last = replies.last().unwrap();
    assert_eq!(last.content.document_status, "Failed");
    assert_eq!(
        last.content.runtime_status.as_ref().unwrap()["only"].status,
        "Failed"
    );
    assert_group_gone(pgid).await;
    assert_eq!(
        std::fs::read_to_string(&count).unwrap(),
        "ran\n",
        "not run again"
    );
    // The state is moved aside, not left to be resumed.
    let corrupt: Vec<_> = std::fs::read_dir(dir.path().join("corrupt"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        corrupt,
        [format!("{}.json", job_id("c-give-up", INSTANCE_ID))]
    );
    wait_until_empty(&dir.path().join("current")).await;
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_interrupted_too_often_is_given_up_and_reported_failed() {
    // One run allowed: the first restart gives the document up.
    expect_given_up_after_restart(
        Some(1),
        |_| {},
        "interrupted by an agent restart after 1 runs",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_received_over_48_hours_ago_is_given_up_after_a_restart() {
    // The state file written by the killed agent, dated three days back.
    let three_days_ago = |dir: &Path| {
        let path = dir
            .join("current")
            .join(format!("{}.json", job_id("c-give-up", INSTANCE_ID)));
        let mut state: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let created = state["created_ms"].as_u64().unwrap();
        assert!(created > 0, "{state}");
        state["created_ms"] = json!(created - 3 * 24 * 60 * 60 * 1000);
        std::fs::write(&path, state.to_string()).unwrap();
    };
    expect_given_up_after_restart(None, three_days_ago, "more than 48 hours ago").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_replies_are_resent_after_a_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let mut mgs = FakeMgs::start().await;
    let mut config = agent_config(&mgs.url, dir.path());
    // Long enough that only the reconnect can explain a re-send.
    config.timing.reply_ack_timeout = Duration::from_secs(20);
    let agent = InProcess::start(config);
    let mut peer = mgs.next_peer().await;

    let job = shell_job("c-resend", &["echo hi"], "3600");
    peer.send(&job);
    expect_accepted(&mut peer, &job).await;
    let plugin = peer.reply().await;
    let last = peer.reply().await;
    assert_eq!(last.content.document_status, "Success");
    peer.close();

    let mut peer = mgs.next_peer().await;
    let mut resent = BTreeMap::new();
    while resent.len() < 2 {
        let reply = peer.reply().await;
        resent.insert(reply.msg.message_id, reply);
    }
    for original in [&plugin, &last] {
        let again = &resent[&original.msg.message_id];
        assert_eq!(again.msg.payload, original.msg.payload, "the same reply");
    }
    // Re-sent once unacknowledged, they are on disk until acknowledged.
    let replies_dir = dir.path().join("replies");
    assert_eq!(std::fs::read_dir(&replies_dir).unwrap().count(), 2);
    for reply in resent.values() {
        peer.ack_reply(reply);
    }
    let deadline = tokio::time::Instant::now() + STEP;
    while std::fs::read_dir(&replies_dir).unwrap().next().is_some()
        || std::fs::read_dir(dir.path().join("current"))
            .unwrap()
            .next()
            .is_some()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "acknowledged replies and state never removed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_health_report_comes_inside_the_first_period() {
    let dir = tempfile::tempdir().unwrap();
    let mut mgs = FakeMgs::start().await;
    let mut config = agent_config(&mgs.url, dir.path());
    let period = Duration::from_secs(6);
    config.timing.update_interval = period;
    let agent = InProcess::start(config);
    let first = mgs.next_health_report(STEP).await;
    // Reported at start, then once at a random moment of the first period (not a whole
    // period later), then every period.
    let second = mgs.next_health_report(STEP).await;
    assert!(
        second - first < period,
        "second report {:?} after the first",
        second - first
    );
    let third = mgs.next_health_report(STEP).await;
    assert!(third - second >= period, "{:?}", third - second);
    agent.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The official agent's frames (OFFICIAL-AGENT.md §9.3, §9.4, §9.6), replayed.

/// The send-command payload of an official `agent_job` (OFFICIAL-AGENT.md §9.3), as recorded.
const OFFICIAL_SEND_COMMAND: &str = r#"{"CommandId":"a9313ffd-85b7-4757-a3ee-955ba199c85f",
 "DocumentName":"AWS-RunShellScript",
 "DocumentContent":{"schemaVersion":"1.2","description":"Run a shell script.",
   "parameters":{"commands":{"type":"StringList","description":"…"},
                 "workingDirectory":{"type":"String","default":"","description":"…"},
                 "executionTimeout":{"type":"String","default":"3600","description":"…"}},
   "runtimeConfig":{"aws:runShellScript":{"properties":[{"id":"0.aws:runShellScript",
       "runCommand":"{{ commands }}","workingDirectory":"{{ workingDirectory }}",
       "timeoutSeconds":"{{ executionTimeout }}"}]}}},
 "Parameters":{"commands":["echo hello","uname -s"],"workingDirectory":"","executionTimeout":"3600"},
 "OutputS3BucketName":"","OutputS3KeyPrefix":"",
 "CloudWatchLogGroupName":"","CloudWatchOutputEnabled":"false"}"#;

/// The official agent's final reply to a script printing `hello-from-mds`, then `to-stderr` on
/// stderr, then exiting 3 (OFFICIAL-AGENT.md §9.6).
const OFFICIAL_FINAL_REPLY: &str = r#"{"additionalInfo":{"agent":{"lang":"en-US","name":"amazon-ssm-agent","os":"linux","osver":"1","ver":"3.3.0.0"},
                   "dateTime":"2026-11-22T00:43:00.518Z","runId":"","runtimeStatusCounts":{"Failed":1},
                   "ableToOpenMGSConnection":false},
 "documentStatus":"Failed","documentTraceOutput":"",
 "runtimeStatus":{"aws:runShellScript":{"status":"Failed","code":3,"name":"aws:runShellScript",
     "output":"hello-from-mds\n\n----------ERROR-------\nto-stderr\nfailed to run commands: exit status 3",
     "startDateTime":"2026-11-22T00:43:00.489Z","endDateTime":"2026-11-22T00:43:00.515Z",
     "outputS3BucketName":"","outputS3KeyPrefix":"","stepName":"",
     "standardOutput":"hello-from-mds\n","standardError":"to-stderr\nfailed to run commands: exit status 3"}}}"#;

/// An `agent_job` frame as the service builds it (OFFICIAL-AGENT.md §9.4), carrying `content`.
fn official_job_frame(content: &str, command_id: &str) -> AgentMessage {
    let payload = format!(
        r#"{{"Content":{},"JobId":"{}","Topic":"{SEND_TOPIC}","SchemaVersion":1}}"#,
        serde_json::to_string(content).unwrap(),
        job_id(command_id, INSTANCE_ID)
    );
    AgentMessage::new(
        MessageType::AgentJob,
        PayloadType::Undefined,
        payload.into_bytes().into(),
    )
}

/// The JSON type of `value`, by name.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every field of `official` is in `ours`, with the same JSON type, recursively.
fn assert_same_fields(ours: &Value, official: &Value, path: &str) {
    assert_eq!(json_type(ours), json_type(official), "type of {path}");
    if let (Value::Object(ours), Value::Object(official)) = (ours, official) {
        for (name, theirs) in official {
            let field = format!("{path}.{name}");
            let mine = ours
                .get(name)
                .unwrap_or_else(|| panic!("{field} missing in {ours:?}"));
            assert_same_fields(mine, theirs, &field);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_job_frame_is_run_and_answered_as_the_official_agent_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mut mgs = FakeMgs::start().await;
    let agent = InProcess::start(agent_config(&mgs.url, dir.path()));
    let mut peer = mgs.next_peer().await;

    // The recorded frame, as it is.
    let command_id = "a9313ffd-85b7-4757-a3ee-955ba199c85f";
    let job = official_job_frame(OFFICIAL_SEND_COMMAND, command_id);
    peer.send(&job);
    expect_accepted(&mut peer, &job).await;
    let replies = peer.until_final(&job_id(command_id, INSTANCE_ID)).await;
    let (id, plugin) = replies[0].plugin();
    assert_eq!(id, "aws:runShellScript");
    assert_eq!(plugin.status, "Success");
    assert_eq!(plugin.standard_output, "hello\nLinux\n");
    assert_eq!(replies.last().unwrap().content.document_status, "Success");

    // The same frame with the script of the official reply: the same fields, types and values
    // but for times, versions and this host.
    let mut payload: Value = serde_json::from_str(OFFICIAL_SEND_COMMAND).unwrap();
    let failing_id = "b9313ffd-85b7-4757-a3ee-955ba199c85f";
    payload["CommandId"] = json!(failing_id);
    payload["Parameters"]["commands"] =
        json!(["echo hello-from-mds", "echo to-stderr >&2", "exit 3"]);
    let job = official_job_frame(&payload.to_string(), failing_id);
    peer.send(&job);
    expect_accepted(&mut peer, &job).await;
    let replies = peer.until_final(&job_id(failing_id, INSTANCE_ID)).await;
    let last = replies.last().unwrap();
    let ours: Value = serde_json::from_str(&last.envelope.content).unwrap();
    let mut official: Value = serde_json::from_str(OFFICIAL_FINAL_REPLY).unwrap();
    // Recorded over MDS; replies over the control channel do not carry it (§9.5 item 6).
    official["additionalInfo"]
        .as_object_mut()
        .unwrap()
        .remove("ableToOpenMGSConnection");
    assert_same_fields(&ours, &official, "reply");
    let volatile = [
        "/additionalInfo/dateTime",
        "/additionalInfo/agent/osver",
        "/additionalInfo/agent/ver",
        "/runtimeStatus/aws:runShellScript/startDateTime",
        "/runtimeStatus/aws:runShellScript/endDateTime",
    ];
    let (mut ours, mut official) = (ours, official);
    for pointer in volatile {
        for reply in [&mut ours, &mut official] {
            let field = reply.pointer_mut(pointer).unwrap();
            let text = field.as_str().unwrap();
            if pointer.ends_with("DateTime") || pointer.ends_with("dateTime") {
                assert_eq!(text.len(), 24, "{pointer}: {text}");
                assert!(text.ends_with('Z'), "{pointer}: {text}");
            }
            *field = json!("");
        }
    }
    assert_eq!(ours, official);
    assert_eq!(last.envelope.topic, "aws.ssm.sendCommand");
    agent.stop().await;
}
