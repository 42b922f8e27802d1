//! The timers the gateway enforces on a session, each through real sockets: idle timeout and
//! maximum session duration (custom Session documents at their smallest value, one minute), the
//! agent's time to open its data channel (with and without a control channel to send
//! `interactive_shell` on), the agent's time to reconnect a dropped data channel, and the
//! client's time to open its data channel after StartSession (shortened by configuration). They
//! run side by side on one gateway so the whole file takes about a minute. (The client's
//! disconnect timeout and the agent's grace after `Terminating` are tested in relay.rs.)

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use ssmx_gateway::config::{ApiCredential, Config, Database};
use ssmx_gateway::Gateway;
use ssmx_protocol::payload::ChannelClosed;
use ssmx_protocol::{AgentMessage, MessageType};
use tokio_tungstenite::tungstenite::Message;

const MINUTE: Duration = Duration::from_secs(60);
/// The agent's time to open its data channel after `interactive_shell`, or for a control
/// channel to appear (session.rs AGENT_CONNECT_TIMEOUT).
const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// The agent's time to reconnect a dropped data channel (session.rs AGENT_RECONNECT_GRACE).
const AGENT_RECONNECT_GRACE: Duration = Duration::from_secs(30);
/// How long a started session waits for its client here (`client_connect_timeout_seconds`;
/// five minutes by default).
const CLIENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How late after its deadline a timer may fire on a loaded machine.
const SLACK: Duration = Duration::from_secs(10);

const IDLE_DOCUMENT: &str = "Test-IdleOneMinute";
const MAX_DURATION_DOCUMENT: &str = "Test-MaxOneMinute";

fn write_documents(dir: &Path) {
    let shell = |inputs: serde_json::Value| {
        serde_json::json!({
            "schemaVersion": "1.0",
            "description": "shell with a short timer",
            "sessionType": "Standard_Stream",
            "inputs": inputs,
        })
        .to_string()
    };
    std::fs::write(
        dir.join(format!("{IDLE_DOCUMENT}.json")),
        shell(serde_json::json!({"idleSessionTimeout": "1"})),
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("{MAX_DURATION_DOCUMENT}.json")),
        shell(serde_json::json!({"maxSessionDuration": "1"})),
    )
    .unwrap();
}

fn output(seq: i64, text: &[u8]) -> Message {
    Message::binary(stream_frame(MessageType::OutputStreamData, seq, text))
}

/// Frames seen on `ws` until the gateway closes it, which must happen within `limit`.
async fn closed_within(ws: &mut Ws, limit: Duration) -> Vec<AgentMessage> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("the gateway did not close the socket in time")
        {
            Some(Ok(Message::Binary(b))) => seen.push(AgentMessage::decode(b).unwrap()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return seen,
            Some(Ok(_)) => {}
        }
    }
}

/// The `Output` of the `channel_closed` that ends `seen`.
fn close_reason(seen: &[AgentMessage]) -> String {
    let last = seen.last().expect("channel_closed before the close");
    assert_eq!(last.message_type, MessageType::ChannelClosed, "{seen:?}");
    let closed: ChannelClosed = serde_json::from_slice(&last.payload).unwrap();
    closed.output
}

/// Status and details the gateway recorded for `session_id`.
fn recorded_end(gateway: &Gateway, session_id: &str) -> (String, String) {
    let record = gateway.store().session(session_id).unwrap().unwrap();
    assert!(record.end_date.is_some(), "{record:?}");
    (record.status, record.details)
}

/// The client was told `reason` in its `channel_closed` (the last of `seen`), and the gateway
/// recorded the session as ended with `status` and the same reason.
fn assert_ended(
    gateway: &Gateway,
    session_id: &str,
    seen: &[AgentMessage],
    status: &str,
    reason: &str,
) {
    assert_eq!(close_reason(seen), reason);
    assert_eq!(
        recorded_end(gateway, session_id),
        (status.to_owned(), reason.to_owned())
    );
}

fn assert_fired(what: &str, since: Instant, timer: Duration) {
    let elapsed = since.elapsed();
    assert!(
        elapsed >= timer && elapsed <= timer + SLACK,
        "{what}: ended after {elapsed:?}, the timer is {timer:?}"
    );
}

/// No stream data for the document's `idleSessionTimeout` (one minute, counted from the last
/// message in either direction) ends the session with a reason for the client.
async fn idle_timeout(gateway: &Gateway, ssm: &aws_sdk_ssm::Client) {
    let agent = register_agent(gateway).await;
    let mut ctl = open_control_channel(gateway, &agent).await;
    let mut w = start_wired_session(gateway, ssm, &agent, &mut ctl, Some(IDLE_DOCUMENT)).await;
    // Activity a few seconds in moves the deadline.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let last_activity = Instant::now();
    w.agent.send(output(0, b"$ ")).await.unwrap();
    let seen = closed_within(&mut w.client, MINUTE + SLACK).await;
    assert_fired("idle timeout", last_activity, MINUTE);
    assert_eq!(seen[0].payload, Bytes::from_static(b"$ "));
    assert_ended(
        gateway,
        &w.session_id,
        &seen,
        "Terminated",
        "the session was idle for 1 minute and has been terminated",
    );
    let agent_seen = closed_within(&mut w.agent, SLACK).await;
    assert_eq!(close_reason(&agent_seen), "");
}

/// The document's `maxSessionDuration` (one minute) ends a session that is busy all along.
async fn max_session_duration(gateway: &Gateway, ssm: &aws_sdk_ssm::Client) {
    let agent = register_agent(gateway).await;
    let mut ctl = open_control_channel(gateway, &agent).await;
    let started = Instant::now();
    let w = start_wired_session(gateway, ssm, &agent, &mut ctl, Some(MAX_DURATION_DOCUMENT)).await;
    let (mut agent_tx, _agent_rx) = w.agent.split();
    let mut client = w.client;
    let busy = tokio::spawn(async move {
        for seq in 0.. {
            if agent_tx.send(output(seq, b"tick\r\n")).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    let seen = closed_within(&mut client, MINUTE + SLACK).await;
    assert_fired("maximum session duration", started, MINUTE);
    assert!(
        seen.len() > 20,
        "output kept flowing: {} frames",
        seen.len()
    );
    assert_ended(
        gateway,
        &w.session_id,
        &seen,
        "Terminated",
        "the session reached its maximum duration of 1 minute",
    );
    busy.abort();
}

/// The client is there but the target's control channel is gone: `interactive_shell` cannot be
/// sent, and after the agent's connect time the session fails.
async fn no_control_channel(gateway: &Gateway, ssm: &aws_sdk_ssm::Client) {
    let agent = register_agent(gateway).await;
    let ctl = open_control_channel(gateway, &agent).await;
    let started = start_session(ssm, &agent, None).await;
    let session_id = started.session_id().unwrap();
    drop(ctl);
    while gateway.is_agent_online(&agent.instance_id) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let attached = Instant::now();
    let mut client = open_client_data_channel(
        started.stream_url().unwrap(),
        started.token_value().unwrap(),
    )
    .await;
    let seen = closed_within(&mut client, AGENT_CONNECT_TIMEOUT + SLACK).await;
    assert_fired(
        "waiting for a control channel",
        attached,
        AGENT_CONNECT_TIMEOUT,
    );
    assert_ended(
        gateway,
        session_id,
        &seen,
        "Failed",
        &format!("target {} is not connected", agent.instance_id),
    );
}

/// `interactive_shell` went out but the agent never opens the session's data channel.
async fn agent_never_opens_its_data_channel(gateway: &Gateway, ssm: &aws_sdk_ssm::Client) {
    let agent = register_agent(gateway).await;
    let mut ctl = open_control_channel(gateway, &agent).await;
    let started = start_session(ssm, &agent, None).await;
    let session_id = started.session_id().unwrap();
    let mut client = open_client_data_channel(
        started.stream_url().unwrap(),
        started.token_value().unwrap(),
    )
    .await;
    let shell_sent = Instant::now();
    expect_interactive_shell(&mut ctl).await;
    let seen = closed_within(&mut client, AGENT_CONNECT_TIMEOUT + SLACK).await;
    assert_fired(
        "waiting for the agent's data channel",
        shell_sent,
        AGENT_CONNECT_TIMEOUT,
    );
    assert_ended(
        gateway,
        session_id,
        &seen,
        "Failed",
        "the agent did not open the session's data channel",
    );
    // The agent is told on its control channel, so it does not start the session late.
    // (next_binary skips the gateway's keep-alive pings, which this long test lives to see.)
    let notice = AgentMessage::decode(next_binary(&mut ctl.ws).await).unwrap();
    assert_eq!(notice.message_type, MessageType::ChannelClosed);
    let notice: ChannelClosed = serde_json::from_slice(&notice.payload).unwrap();
    assert_eq!(notice.session_id, session_id);
}

/// StartSession, and no client ever dials the StreamUrl: the session fails, and its token no
/// longer opens anything.
async fn client_never_connects(gateway: &Gateway, ssm: &aws_sdk_ssm::Client) {
    let agent = register_agent(gateway).await;
    let _ctl = open_control_channel(gateway, &agent).await;
    let started_at = Instant::now();
    let started = start_session(ssm, &agent, None).await;
    let session_id = started.session_id().unwrap();
    let deadline = started_at + CLIENT_CONNECT_TIMEOUT + SLACK;
    while gateway
        .store()
        .session(session_id)
        .unwrap()
        .unwrap()
        .end_date
        .is_none()
    {
        assert!(Instant::now() < deadline, "the session is still waiting");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_fired("waiting for the client", started_at, CLIENT_CONNECT_TIMEOUT);
    assert_eq!(
        recorded_end(gateway, session_id),
        (
            "Failed".to_owned(),
            "the client never opened the data channel".to_owned()
        )
    );
    let mut late = open_client_data_channel(
        started.stream_url().unwrap(),
        started.token_value().unwrap(),
    )
    .await;
    expect_policy_close(&mut late).await;
}

/// The agent's data channel drops and it does not come back within its reconnect grace.
async fn agent_does_not_reconnect(gateway: &Gateway, ssm: &aws_sdk_ssm::Client) {
    let agent = register_agent(gateway).await;
    let mut ctl = open_control_channel(gateway, &agent).await;
    let mut w = start_wired_session(gateway, ssm, &agent, &mut ctl, None).await;
    w.agent.send(output(0, b"$ ")).await.unwrap();
    assert_eq!(next_message(&mut w.client).await.payload, &b"$ "[..]);
    let dropped = Instant::now();
    drop(w.agent);
    let seen = closed_within(&mut w.client, AGENT_RECONNECT_GRACE + SLACK).await;
    assert_fired("agent reconnect grace", dropped, AGENT_RECONNECT_GRACE);
    assert_ended(
        gateway,
        &w.session_id,
        &seen,
        "Failed",
        "the agent's data channel closed unexpectedly",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_timers_end_sessions() {
    let documents = tempfile::tempdir().unwrap();
    write_documents(documents.path());
    let cred = ApiCredential::generate("timer");
    let gateway = Gateway::builder()
        .config(Config {
            documents_dir: Some(documents.path().to_owned()),
            client_connect_timeout_seconds: Some(CLIENT_CONNECT_TIMEOUT.as_secs()),
            ..Default::default()
        })
        .listen("127.0.0.1:0".parse().unwrap())
        .database(Database::Memory)
        .credential(cred.clone())
        .without_recording()
        .start()
        .await
        .unwrap();
    let ssm = ssm_client(gateway.url(), &cred);
    tokio::join!(
        idle_timeout(&gateway, &ssm),
        max_session_duration(&gateway, &ssm),
        no_control_channel(&gateway, &ssm),
        agent_never_opens_its_data_channel(&gateway, &ssm),
        agent_does_not_reconnect(&gateway, &ssm),
        client_never_connects(&gateway, &ssm),
    );
    gateway.shutdown().await;
}
