//! End-to-end harness: an in-process ssmx gateway on 127.0.0.1, the agent under test registered
//! with it and running in-process, and a minimal protocol client (the SSM API through
//! aws-sdk-ssm, the data channel through ssmx-channel) to drive sessions.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_ssm::config::{BehaviorVersion, Credentials, Region};
use bytes::Bytes;
use futures::SinkExt;
use ssmx_agent::{register, Agent, AgentConfig, AgentError, Backoff};
use ssmx_channel::{ChannelConfig, ChannelEvent, Receiver, Role, Sender, Transport};
use ssmx_gateway::config::{ApiCredential, Config, Database};
use ssmx_gateway::store::NewActivation;
use ssmx_gateway::Gateway;
use ssmx_protocol::payload::{
    from_json, to_json, ActionStatus, HandshakeComplete, HandshakeRequest, HandshakeResponse,
    OpenDataChannelInput, ProcessedClientAction, SsmxCapabilities,
};
use ssmx_protocol::PayloadType;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// Hang guard for any single step of a test (not a timing goal).
pub const STEP: Duration = Duration::from_secs(30);

/// The client version our test client reports unless a test picks another.
pub const CLIENT_VERSION: &str = "1.2.677.0";

/// A gateway with one registered, running agent.
pub struct Stack {
    /// Scratch space: agent transcripts in `logs/`, custom documents in `docs/`.
    pub dir: tempfile::TempDir,
    /// The agent's instance id.
    pub instance_id: String,
    /// SSM API client signed with the gateway's test credential.
    pub ssm: aws_sdk_ssm::Client,
    gateway: Option<Gateway>,
    /// What [`Stack::restart_gateway`] starts the gateway with again.
    gateway_setup: (Config, Database, ApiCredential),
    agent_stop: Option<oneshot::Sender<()>>,
    agent: Option<JoinHandle<Result<(), AgentError>>>,
}

impl Stack {
    /// A stack with the built-in documents and default agent settings (fast retries).
    pub async fn start() -> Self {
        Self::start_with(&[], |_| {}).await
    }

    /// A stack with extra documents (`name`, JSON) and agent settings adjusted by `tweak`.
    pub async fn start_with(
        documents: &[(&str, serde_json::Value)],
        tweak: impl FnOnce(&mut AgentConfig),
    ) -> Self {
        Self::start_on(Database::Memory, documents, tweak).await
    }

    /// [`Stack::start_with`], the gateway's state in `database`.
    pub async fn start_on(
        database: Database,
        documents: &[(&str, serde_json::Value)],
        tweak: impl FnOnce(&mut AgentConfig),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let docs = dir.path().join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        for (name, doc) in documents {
            std::fs::write(docs.join(format!("{name}.json")), doc.to_string()).unwrap();
        }
        let credential = ApiCredential::generate("tester");
        let config = Config {
            documents_dir: Some(docs),
            ..Config::default()
        };
        let gateway_setup = (config, database, credential.clone());
        let gateway = start_gateway(&gateway_setup, "127.0.0.1:0".parse().unwrap()).await;
        let activation = gateway
            .create_activation(&NewActivation::default())
            .unwrap();
        let registration = register(
            gateway.url(),
            &activation.activation_id,
            &activation.activation_code,
        )
        .await
        .expect("agent registers");
        let instance_id = registration.instance_id.clone();
        let mut agent_config = AgentConfig::new(registration);
        agent_config.log_dir = Some(dir.path().join("logs"));
        agent_config.timing.control_backoff = Backoff {
            initial_min: Duration::from_millis(50),
            initial_max: Duration::from_millis(100),
            multiplier: 2.0,
            jitter: 0.5,
            cap: Duration::from_secs(1),
        };
        agent_config.timing.kill_grace = Duration::from_millis(500);
        tweak(&mut agent_config);
        let (agent_stop, stopped) = oneshot::channel::<()>();
        let agent = tokio::spawn(Agent::new(agent_config).run(async {
            let _ = stopped.await;
        }));
        assert!(
            gateway.wait_for_agent(&instance_id, STEP).await,
            "the agent never came online"
        );
        let ssm = aws_sdk_ssm::Client::from_conf(
            aws_sdk_ssm::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .interceptor(ssmx_client::UniqueSignatures)
                .region(Region::new("us-east-1"))
                .endpoint_url(gateway.url())
                .credentials_provider(Credentials::new(
                    credential.access_key_id,
                    credential.secret_access_key,
                    None,
                    None,
                    "test",
                ))
                .build(),
        );
        Self {
            dir,
            instance_id,
            ssm,
            gateway: Some(gateway),
            gateway_setup,
            agent_stop: Some(agent_stop),
            agent: Some(agent),
        }
    }

    /// The gateway.
    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("running")
    }

    /// SendCommand of `document` to this stack's agent with `parameters`; the command id.
    pub async fn send_command(&self, document: &str, parameters: &[(&str, &str)]) -> String {
        let mut send = self
            .ssm
            .send_command()
            .document_name(document)
            .instance_ids(&self.instance_id);
        for (name, value) in parameters {
            send = send.parameters(*name, vec![value.to_string()]);
        }
        let sent = send.send().await.expect("SendCommand");
        sent.command.unwrap().command_id.unwrap()
    }

    /// The user credential the gateway accepts (for signing requests by hand).
    pub fn credential(&self) -> &ApiCredential {
        &self.gateway_setup.2
    }

    /// Stops the gateway (the agent keeps running and retrying).
    pub async fn stop_gateway(&mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown().await;
        }
    }

    /// Starts the gateway again on `addr` (where it listened before), with the same database.
    pub async fn restart_gateway(&mut self, addr: std::net::SocketAddr) {
        self.stop_gateway().await;
        self.gateway = Some(start_gateway(&self.gateway_setup, addr).await);
    }

    /// Stops the agent (ending its sessions) and then the gateway.
    pub async fn stop(mut self) {
        self.stop_agent().await;
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown().await;
        }
    }

    /// Stops only the agent and waits for it.
    pub async fn stop_agent(&mut self) {
        if let Some(stop) = self.agent_stop.take() {
            let _ = stop.send(());
        }
        if let Some(agent) = self.agent.take() {
            tokio::time::timeout(STEP, agent)
                .await
                .expect("agent stops")
                .unwrap()
                .expect("agent ran");
        }
    }

    /// StartSession with `document` (default shell document when `None`) and parameters, then
    /// the client's data channel.
    pub async fn start_session(
        &self,
        document: Option<&str>,
        parameters: &[(&str, &str)],
    ) -> TestSession {
        let mut request = self.ssm.start_session().target(&self.instance_id);
        if let Some(document) = document {
            request = request.document_name(document);
        }
        for (name, value) in parameters {
            request = request.parameters(*name, vec![value.to_string()]);
        }
        let response = tokio::time::timeout(STEP, request.send())
            .await
            .expect("StartSession in time")
            .expect("StartSession succeeds");
        let id = response.session_id().unwrap().to_owned();
        let token = response.token_value().unwrap().to_owned();
        let url = response.stream_url().unwrap().to_owned();
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), None, true)
            .await
            .expect("client data channel connects");
        let open = OpenDataChannelInput {
            message_schema_version: "1.0".into(),
            request_id: uuid::Uuid::new_v4().to_string(),
            token_value: token,
            client_instance_id: None,
            client_id: uuid::Uuid::new_v4().to_string(),
            client_version: Some(CLIENT_VERSION.into()),
        };
        ws.send(Message::text(serde_json::to_string(&open).unwrap()))
            .await
            .unwrap();
        let (tx, rx) = ssmx_channel::spawn(
            ChannelConfig::new(Role::Client),
            Transport::from_websocket(ws),
        );
        TestSession { id, tx, rx }
    }

    /// TerminateSession through the API.
    pub async fn terminate(&self, session_id: &str) {
        tokio::time::timeout(
            STEP,
            self.ssm.terminate_session().session_id(session_id).send(),
        )
        .await
        .expect("TerminateSession in time")
        .expect("TerminateSession succeeds");
    }

    /// The agent's transcript of `session_id`.
    pub fn transcript(&self, session_id: &str) -> String {
        std::fs::read_to_string(self.transcript_path(session_id)).unwrap_or_default()
    }

    /// Where the agent writes the transcript of `session_id`.
    pub fn transcript_path(&self, session_id: &str) -> PathBuf {
        self.dir
            .path()
            .join("logs")
            .join(format!("{session_id}.log"))
    }
}

/// A gateway listening on `addr`.
async fn start_gateway(
    (config, database, credential): &(Config, Database, ApiCredential),
    addr: std::net::SocketAddr,
) -> Gateway {
    Gateway::builder()
        .config(config.clone())
        .listen(addr)
        .database(database.clone())
        .credential(credential.clone())
        .without_recording()
        .start()
        .await
        .expect("gateway starts")
}

/// What a test session saw.
#[derive(Debug, PartialEq)]
pub enum Seen {
    /// A stream payload.
    Payload(PayloadType, Bytes),
    /// `channel_closed` with its Output text.
    Closed(String),
    /// The channel ended without `channel_closed`.
    Ended(String),
}

/// The client's end of one session.
pub struct TestSession {
    /// Session id.
    pub id: String,
    /// Sends client payloads.
    pub tx: Sender,
    /// Receives agent payloads.
    pub rx: Receiver,
}

impl TestSession {
    /// The next thing the client sees (panics after [`STEP`]).
    pub async fn next(&mut self) -> Seen {
        loop {
            let event = tokio::time::timeout(STEP, self.rx.recv())
                .await
                .expect("session event in time");
            return match event {
                Some(ChannelEvent::Payload {
                    payload_type,
                    payload,
                }) => Seen::Payload(payload_type, payload),
                Some(ChannelEvent::Closed(closed)) => Seen::Closed(closed.output),
                Some(ChannelEvent::Message(_)) => continue,
                Some(ChannelEvent::TransportLost(e)) => Seen::Ended(e.to_string()),
                Some(ChannelEvent::Failed(e)) => Seen::Ended(e.to_string()),
                None => Seen::Ended("receiver ended".into()),
            };
        }
    }

    /// Answers the agent's handshake (as a client of `version`, offering `max_payload` as an
    /// ssmx client when given) and returns the request and the completion.
    pub async fn handshake(
        &mut self,
        version: &str,
        max_payload: Option<u32>,
    ) -> (HandshakeRequest, HandshakeComplete) {
        let request = self.handshake_request().await;
        let response = HandshakeResponse {
            client_version: version.into(),
            processed_client_actions: request
                .requested_client_actions
                .iter()
                .map(|a| ProcessedClientAction {
                    action_type: a.action_type.clone(),
                    action_status: ActionStatus::Success,
                    action_result: serde_json::Value::Null,
                    error: String::new(),
                })
                .collect(),
            errors: None,
            ssmx_capabilities: max_payload.map(|m| SsmxCapabilities {
                max_payload_size: m,
            }),
        };
        self.tx
            .send(PayloadType::HandshakeResponse, to_json(&response))
            .await
            .unwrap();
        if let Some(m) = max_payload {
            self.tx.set_max_payload(m as usize);
        }
        (request, self.handshake_complete().await)
    }

    /// The agent's HandshakeRequest, which must come next.
    pub async fn handshake_request(&mut self) -> HandshakeRequest {
        match self.next().await {
            Seen::Payload(PayloadType::HandshakeRequest, payload) => {
                from_json("HandshakeRequest", &payload).unwrap()
            }
            other => panic!("expected a HandshakeRequest, got {other:?}"),
        }
    }

    /// The agent's HandshakeComplete, which must come next.
    pub async fn handshake_complete(&mut self) -> HandshakeComplete {
        match self.next().await {
            Seen::Payload(PayloadType::HandshakeComplete, payload) => {
                from_json("HandshakeComplete", &payload).unwrap()
            }
            other => panic!("expected HandshakeComplete, got {other:?}"),
        }
    }

    /// Sends keystrokes / port bytes.
    pub async fn send(&self, bytes: &[u8]) {
        self.tx
            .send(PayloadType::Output, Bytes::copy_from_slice(bytes))
            .await
            .unwrap();
    }

    /// Sends a terminal size.
    pub async fn resize(&self, cols: u32, rows: u32) {
        let size = format!("{{\"cols\":{cols},\"rows\":{rows}}}");
        self.tx
            .send(PayloadType::Size, Bytes::from(size))
            .await
            .unwrap();
    }

    /// Reads Output until `needle` appeared; returns everything read.
    pub async fn read_until(&mut self, needle: &str) -> String {
        let mut text = String::new();
        while !text.contains(needle) {
            match self.next().await {
                Seen::Payload(PayloadType::Output, bytes) => {
                    text.push_str(&String::from_utf8_lossy(&bytes))
                }
                Seen::Payload(..) => {}
                other => {
                    panic!("session ended before {needle:?} appeared: {other:?}; saw {text:?}")
                }
            }
        }
        text
    }

    /// Everything until the session closes: the payloads and how it closed.
    pub async fn until_closed(&mut self) -> (Vec<(PayloadType, Bytes)>, Seen) {
        let mut payloads = Vec::new();
        loop {
            match self.next().await {
                Seen::Payload(t, b) => payloads.push((t, b)),
                end => return (payloads, end),
            }
        }
    }
}

/// The concatenated payloads of one type.
pub fn joined(payloads: &[(PayloadType, Bytes)], payload_type: PayloadType) -> String {
    let bytes: Vec<u8> = payloads
        .iter()
        .filter(|(t, _)| *t == payload_type)
        .flat_map(|(_, b)| b.to_vec())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Number of live (non-zombie) processes with `arg` as one of their arguments.
pub fn processes_with_arg(arg: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let zombie = stat
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.split_whitespace().next() == Some("Z"));
            (!zombie && cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes())).then_some(())
        })
        .count()
}

/// Waits (up to [`STEP`]) until `condition` holds.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + STEP;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
