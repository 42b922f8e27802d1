//! WebSocket routing through a real gateway on 127.0.0.1 with a fake agent and a raw client:
//! pairing, byte-for-byte relay, consumed and dropped frames, publication control, resume,
//! termination (queued output first), timers after the agent reports the end, pongs.

use crate::common::*;
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use ssmx_protocol::payload::{
    to_json, AgentSessionState, AgentTaskComplete, ChannelClosed, TerminalSize,
};
use ssmx_protocol::{AgentMessage, MessageType, PayloadType};
use std::time::SystemTime;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn frames_relay_byte_for_byte_and_terminate_closes_both_ends() {
    let rec = tempfile::tempdir().unwrap();
    let (gateway, cred) = start_gateway("alice", Some(rec.path())).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let agent = register_agent(&gateway).await;
    let mut ctl = open_control_channel(&gateway, &agent).await;
    let mut w = start_wired_session(&gateway, &ssm, &agent, &mut ctl, None).await;

    assert!(w.session_id.starts_with("alice-"));
    assert_eq!(w.task.document_name, "SSM-SessionManagerRunShell");
    assert_eq!(w.task.document_content.session_type, "Standard_Stream");
    assert_eq!(w.task.session_owner, "arn:aws:iam::000000000000:user/alice");
    assert!(w.stream_url.starts_with("ws://127.0.0.1:"));
    assert!(w.stream_url.ends_with(&format!(
        "/v1/data-channel/{}?role=publish_subscribe",
        w.session_id
    )));

    // agent_session_state is consumed; the next frame the client sees is the agent's output.
    let state = AgentSessionState::message(&w.session_id, "Connected").to_bytes();
    w.agent.send(Message::binary(state)).await.unwrap();
    let out = stream_frame(MessageType::OutputStreamData, 0, b"$ ");
    w.agent.send(Message::binary(out.clone())).await.unwrap();
    assert_eq!(next_binary(&mut w.client).await, out);

    // A truncated frame and one whose length field lies are dropped, not relayed (T30).
    let size = AgentMessage::new(
        MessageType::InputStreamData,
        PayloadType::Size,
        to_json(&TerminalSize {
            cols: 132,
            rows: 40,
        }),
    )
    .to_bytes();
    w.client
        .send(Message::binary(size.slice(..100)))
        .await
        .unwrap();
    let mut lying = BytesMut::from(&size[..]);
    lying[119] ^= 1;
    w.client
        .send(Message::binary(lying.freeze()))
        .await
        .unwrap();
    w.client.send(Message::binary(size.clone())).await.unwrap();
    assert_eq!(next_binary(&mut w.agent).await, size);
    let keys = stream_frame(MessageType::InputStreamData, 1, b"echo hi\r");
    w.client.send(Message::binary(keys.clone())).await.unwrap();
    assert_eq!(next_binary(&mut w.agent).await, keys);

    // Pings are answered (the official agent's read deadline depends on it, T20).
    w.client
        .send(Message::Ping(Bytes::from_static(b"keepalive")))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(WAIT, w.client.next()).await.unwrap() {
            Some(Ok(Message::Pong(p))) => {
                assert_eq!(&p[..], b"keepalive");
                break;
            }
            Some(Ok(Message::Binary(b))) => panic!("unexpected frame {b:?}"),
            other => assert!(matches!(other, Some(Ok(_))), "{other:?}"),
        }
    }

    let described = ssm
        .describe_sessions()
        .state(aws_sdk_ssm::types::SessionState::Active)
        .send()
        .await
        .unwrap();
    let listed = described.sessions();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].session_id(), Some(w.session_id.as_str()));
    assert_eq!(
        listed[0].status(),
        Some(&aws_sdk_ssm::types::SessionStatus::Connected)
    );

    ssm.terminate_session()
        .session_id(&w.session_id)
        .send()
        .await
        .unwrap();
    let client_seen = drain_until_closed(&mut w.client).await;
    let closed = client_seen.last().expect("channel_closed to the client");
    assert_eq!(closed.message_type, MessageType::ChannelClosed);
    let payload: ChannelClosed = serde_json::from_slice(&closed.payload).unwrap();
    assert_eq!(payload.session_id, w.session_id);
    assert_eq!(payload.output, "");
    let agent_seen = drain_until_closed(&mut w.agent).await;
    assert_eq!(
        agent_seen.last().map(|m| &m.message_type),
        Some(&MessageType::ChannelClosed)
    );
    let on_control = next_message(&mut ctl.ws).await;
    assert_eq!(on_control.message_type, MessageType::ChannelClosed);
    let payload: ChannelClosed = serde_json::from_slice(&on_control.payload).unwrap();
    assert_eq!(payload.session_id, w.session_id);

    let history = ssm
        .describe_sessions()
        .state(aws_sdk_ssm::types::SessionState::History)
        .send()
        .await
        .unwrap();
    let ended = &history.sessions()[0];
    assert_eq!(
        ended.status(),
        Some(&aws_sdk_ssm::types::SessionStatus::Terminated)
    );
    assert!(ended.end_date().is_some());

    // The session's tokens are dead: a new data channel cannot be created.
    let (status, body) = agent
        .mgs_post(
            gateway.url(),
            &format!("/v1/data-channel/{}", w.session_id),
            r#"{"MessageSchemaVersion":"1.0","RequestId":"r","ClientId":""}"#,
        )
        .await;
    assert_eq!(status, 400);
    assert!(body.contains("Session is already terminated"), "{body}");

    // The shell recording holds the agent's output.
    let cast = std::fs::read_to_string(rec.path().join(format!("{}.cast", w.session_id))).unwrap();
    assert!(
        cast.lines().nth(1).unwrap().ends_with(",\"o\",\"$ \"]"),
        "{cast}"
    );
    let audit = gateway.store().audit_trail(Some(&w.session_id)).unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(
        actions,
        ["StartSession", "TerminateSession", "SessionEnded"]
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn agent_end_of_session_flushes_then_closes_the_client() {
    let (gateway, cred) = start_gateway("bob", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let agent = register_agent(&gateway).await;
    let mut ctl = open_control_channel(&gateway, &agent).await;
    let mut w = start_wired_session(&gateway, &ssm, &agent, &mut ctl, None).await;

    let last = stream_frame(MessageType::OutputStreamData, 0, b"logout\r\n");
    w.agent.send(Message::binary(last.clone())).await.unwrap();
    let terminating = AgentSessionState::message(&w.session_id, "Terminating").to_bytes();
    w.agent.send(Message::binary(terminating)).await.unwrap();
    w.agent.close(None).await.unwrap();
    let complete = AgentTaskComplete::new(&w.session_id, &agent.instance_id, "Success", "");
    let complete_msg = AgentMessage::new(
        MessageType::AgentTaskComplete,
        PayloadType::Undefined,
        to_json(&complete),
    );
    ctl.ws
        .send(Message::binary(complete_msg.to_bytes()))
        .await
        .unwrap();

    let seen = drain_until_closed(&mut w.client).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].to_bytes(), last);
    assert_eq!(seen[1].message_type, MessageType::ChannelClosed);
    let ack = next_message(&mut ctl.ws).await;
    assert_eq!(ack.message_type, MessageType::AgentTaskAcknowledge);
    let ack: serde_json::Value = serde_json::from_slice(&ack.payload).unwrap();
    assert_eq!(ack["MessageId"], complete_msg.message_id.to_string());
    assert_eq!(ack["TaskId"], w.session_id.as_str());
    gateway.shutdown().await;
}

#[tokio::test]
async fn resume_rejoins_the_same_agent_channel_with_a_new_token() {
    let (gateway, cred) = start_gateway("carol", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let agent = register_agent(&gateway).await;
    let mut ctl = open_control_channel(&gateway, &agent).await;
    let started = ssm
        .start_session()
        .target(&agent.instance_id)
        .send()
        .await
        .unwrap();
    let session_id = started.session_id().unwrap().to_owned();
    let stream_url = started.stream_url().unwrap().to_owned();
    let first_token = started.token_value().unwrap().to_owned();
    let client = open_client_data_channel(&stream_url, &first_token).await;
    expect_interactive_shell(&mut ctl).await;
    let mut agent_ws = open_agent_data_channel(&gateway, &agent, &session_id).await;

    // The client vanishes: the agent is told to pause; its output is kept for the client.
    drop(client);
    let paused = next_message(&mut agent_ws).await;
    assert_eq!(paused.message_type, MessageType::PausePublication);
    let while_away = [
        stream_frame(MessageType::OutputStreamData, 0, b"one"),
        stream_frame(MessageType::OutputStreamData, 1, b"two"),
    ];
    for f in &while_away {
        agent_ws.send(Message::binary(f.clone())).await.unwrap();
    }

    let resumed = ssm
        .resume_session()
        .session_id(&session_id)
        .send()
        .await
        .unwrap();
    let new_token = resumed.token_value().unwrap();
    assert_ne!(new_token, first_token);
    assert_eq!(resumed.stream_url(), Some(stream_url.as_str()));

    // The old token no longer opens the channel.
    let mut stale = open_client_data_channel(&stream_url, &first_token).await;
    assert!(expect_policy_close(&mut stale).await.contains("token"));

    let mut client = open_client_data_channel(&stream_url, new_token).await;
    assert_eq!(next_binary(&mut client).await, while_away[0]);
    assert_eq!(next_binary(&mut client).await, while_away[1]);
    let started_again = next_message(&mut agent_ws).await;
    assert_eq!(started_again.message_type, MessageType::StartPublication);
    let live = stream_frame(MessageType::OutputStreamData, 2, b"three");
    agent_ws.send(Message::binary(live.clone())).await.unwrap();
    assert_eq!(next_binary(&mut client).await, live);
    gateway.shutdown().await;
}

#[tokio::test]
async fn tokens_are_bound_to_session_and_role() {
    let (gateway, cred) = start_gateway("dave", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let agent = register_agent(&gateway).await;
    let mut ctl = open_control_channel(&gateway, &agent).await;
    let a = ssm
        .start_session()
        .target(&agent.instance_id)
        .reason("a")
        .send()
        .await
        .unwrap();
    let b = ssm
        .start_session()
        .target(&agent.instance_id)
        .reason("b")
        .send()
        .await
        .unwrap();
    // Session a's token on session b's URL is refused, and so is a made-up token.
    for token in [
        a.token_value().unwrap(),
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let mut ws = open_client_data_channel(b.stream_url().unwrap(), token).await;
        expect_policy_close(&mut ws).await;
    }
    // A client token presented on a signed (agent) socket is refused too.
    let path = format!(
        "/v1/data-channel/{}?role=publish_subscribe",
        a.session_id().unwrap()
    );
    let mut ws = agent.signed_ws(gateway.url(), &path).await;
    let open = serde_json::json!({"MessageSchemaVersion":"1.0","RequestId":"x","TokenValue":a.token_value().unwrap(),"ClientInstanceId":agent.instance_id,"ClientId":""});
    ws.send(Message::text(open.to_string())).await.unwrap();
    let msg = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
    assert!(matches!(msg, Some(Ok(Message::Close(Some(_))))), "{msg:?}");
    // No interactive_shell went out: no client ever attached.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(200), ctl.ws.next())
            .await
            .is_err()
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_token_in_use_cannot_open_a_second_connection() {
    let (gateway, cred) = start_gateway("dora", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let agent = register_agent(&gateway).await;
    let mut ctl = open_control_channel(&gateway, &agent).await;
    let started = start_session(&ssm, &agent, None).await;
    let stream_url = started.stream_url().unwrap();
    let token = started.token_value().unwrap();
    let mut client = open_client_data_channel(stream_url, token).await;
    expect_interactive_shell(&mut ctl).await;
    let mut agent_ws =
        open_agent_data_channel(&gateway, &agent, started.session_id().unwrap()).await;

    // A second socket with the live token is refused with a reason; the first keeps the session.
    let mut intruder = open_client_data_channel(stream_url, token).await;
    let reason = expect_policy_close(&mut intruder).await;
    assert!(reason.contains("already opened"), "{reason}");
    let frame = stream_frame(MessageType::OutputStreamData, 0, b"still mine");
    agent_ws.send(Message::binary(frame.clone())).await.unwrap();
    assert_eq!(next_binary(&mut client).await, frame);

    // Nor can the agent's token be presented twice, even by the agent itself.
    let path = format!(
        "/v1/data-channel/{}?role=publish_subscribe",
        started.session_id().unwrap()
    );
    let body = serde_json::json!({"MessageSchemaVersion": "1.0", "RequestId": "r", "ClientId": ""});
    let (status, created) = agent
        .mgs_post(
            gateway.url(),
            &format!("/v1/data-channel/{}", started.session_id().unwrap()),
            &body.to_string(),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let agent_token = ssmx_protocol::payload::parse_create_channel_output_xml(&created).unwrap();
    let open = serde_json::json!({"MessageSchemaVersion":"1.0","RequestId":"x","TokenValue":agent_token,"ClientInstanceId":agent.instance_id,"ClientId":""});
    let mut first = agent.signed_ws(gateway.url(), &path).await;
    first.send(Message::text(open.to_string())).await.unwrap();
    let mut second = agent.signed_ws(gateway.url(), &path).await;
    second.send(Message::text(open.to_string())).await.unwrap();
    let reason = expect_policy_close(&mut second).await;
    assert!(reason.contains("already opened"), "{reason}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_client_may_sign_its_upgrade_with_its_user_credentials() {
    let (gateway, cred) = start_gateway("sigrid", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let agent = register_agent(&gateway).await;
    let mut ctl = open_control_channel(&gateway, &agent).await;
    let started = start_session(&ssm, &agent, None).await;
    let path = url::Url::parse(started.stream_url().unwrap()).unwrap();
    let path = format!("{}?{}", path.path(), path.query().unwrap_or_default());

    // A wrong secret is refused at the upgrade.
    let http_url = format!("{}{path}", gateway.url()).replacen("http://", "ws://", 1);
    let signed = sign_headers(
        "GET",
        &format!("{}{path}", gateway.url()),
        &[],
        b"",
        &Signer {
            service: "ssmmessages",
            key: &cred.access_key_id,
            secret: "not-the-secret",
            at: SystemTime::now(),
        },
    );
    let mut request = http_url.into_client_request().unwrap();
    for (k, v) in signed {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let refused = tokio_tungstenite::connect_async(request).await.unwrap_err();
    assert!(refused.to_string().contains("403"), "{refused}");

    // The user's own signature is accepted alongside the token, as a client.
    let ws = signed_ws(
        gateway.url(),
        &path,
        &cred.access_key_id,
        &cred.secret_access_key,
    )
    .await;
    let _client = send_client_open(ws, started.token_value().unwrap()).await;
    let task = expect_interactive_shell(&mut ctl).await;
    assert_eq!(task.session_id, started.session_id().unwrap());
    gateway.shutdown().await;
}

#[tokio::test]
async fn gateway_shutdown_closes_sessions_with_a_reason() {
    let (gateway, cred) = start_gateway("erin", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let agent = register_agent(&gateway).await;
    let mut ctl = open_control_channel(&gateway, &agent).await;
    let mut w = start_wired_session(&gateway, &ssm, &agent, &mut ctl, None).await;
    let store_session = w.session_id.clone();
    let shutdown = tokio::spawn(async move {
        let store_view = gateway.store().session(&store_session).unwrap().unwrap();
        assert_eq!(store_view.status, "Connecting");
        gateway.shutdown().await;
    });
    let seen = drain_until_closed(&mut w.client).await;
    let closed: ChannelClosed = serde_json::from_slice(&seen.last().unwrap().payload).unwrap();
    assert!(closed.output.contains("shutting down"), "{}", closed.output);
    shutdown.await.unwrap();
}

#[tokio::test]
async fn a_client_that_does_not_resume_ends_the_session() {
    let rec = tempfile::tempdir().unwrap();
    let cred = ssmx_gateway::config::ApiCredential::generate("frank");
    let gateway = ssmx_gateway::Gateway::builder()
        .config(ssmx_gateway::config::Config {
            disconnect_timeout_seconds: Some(1),
            record_port_sessions: true,
            ..Default::default()
        })
        .listen("127.0.0.1:0".parse().unwrap())
        .database(ssmx_gateway::config::Database::Memory)
        .credential(cred.clone())
        .recordings_dir(rec.path())
        .start()
        .await
        .unwrap();
    let ssm = ssm_client(gateway.url(), &cred);
    let agent = register_agent(&gateway).await;
    let mut ctl = open_control_channel(&gateway, &agent).await;
    let mut w = start_wired_session(
        &gateway,
        &ssm,
        &agent,
        &mut ctl,
        Some("AWS-StartSSHSession"),
    )
    .await;

    let out = stream_frame(MessageType::OutputStreamData, 0, b"SSH-2.0-OpenSSH\r\n");
    w.agent.send(Message::binary(out.clone())).await.unwrap();
    assert_eq!(next_binary(&mut w.client).await, out);
    let input = stream_frame(MessageType::InputStreamData, 0, b"SSH-2.0-client\r\n");
    w.client.send(Message::binary(input.clone())).await.unwrap();
    assert_eq!(next_binary(&mut w.agent).await, input);
    // A retransmission is relayed but recorded once.
    w.client.send(Message::binary(input.clone())).await.unwrap();
    assert_eq!(next_binary(&mut w.agent).await, input);

    drop(w.client);
    let seen = drain_until_closed(&mut w.agent).await;
    let types: Vec<&MessageType> = seen.iter().map(|m| &m.message_type).collect();
    assert_eq!(
        types,
        [&MessageType::PausePublication, &MessageType::ChannelClosed]
    );
    let record = gateway.store().session(&w.session_id).unwrap().unwrap();
    assert_eq!(record.status, "Terminated");
    assert!(
        record.details.contains("did not resume"),
        "{}",
        record.details
    );

    // Port sessions are recorded as a timestamped byte log, both directions, once each.
    let path = rec.path().join(format!("{}.log", w.session_id));
    let (header, records) = ssmx_gateway::recording::parse_byte_log(&path).unwrap();
    assert_eq!(header["session_id"], w.session_id.as_str());
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(records[0].from_agent);
    assert_eq!(&records[0].data[..], b"SSH-2.0-OpenSSH\r\n");
    assert!(!records[1].from_agent);
    assert_eq!(&records[1].data[..], b"SSH-2.0-client\r\n");
    assert!(records[0].at <= records[1].at);
    assert_eq!(
        record.recording.as_deref(),
        Some(
            rec.path()
                .join(format!("{}.log", w.session_id))
                .to_str()
                .unwrap()
        )
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn an_agent_failure_reaches_the_client_as_the_close_reason() {
    let (gateway, cred) = start_gateway("gina", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let agent = register_agent(&gateway).await;
    let mut ctl = open_control_channel(&gateway, &agent).await;
    let started = start_session(&ssm, &agent, None).await;
    let session_id = started.session_id().unwrap();
    let mut client = open_client_data_channel(
        started.stream_url().unwrap(),
        started.token_value().unwrap(),
    )
    .await;
    expect_interactive_shell(&mut ctl).await;
    // The agent could not start the session at all and says why.
    let report =
        AgentTaskComplete::new(session_id, &agent.instance_id, "Failed", "shell not found");
    let frame = AgentMessage::new(
        MessageType::AgentTaskComplete,
        PayloadType::Undefined,
        to_json(&report),
    );
    ctl.ws
        .send(Message::binary(frame.to_bytes()))
        .await
        .unwrap();
    let seen = drain_until_closed(&mut client).await;
    let closed: ChannelClosed = serde_json::from_slice(&seen.last().unwrap().payload).unwrap();
    assert_eq!(closed.output, "shell not found");
    assert_eq!(
        next_message(&mut ctl.ws).await.message_type,
        MessageType::AgentTaskAcknowledge
    );
    let record = gateway.store().session(session_id).unwrap().unwrap();
    assert_eq!(
        (record.status.as_str(), record.details.as_str()),
        ("Failed", "shell not found")
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn an_agent_that_reconnects_gets_what_the_client_sent_meanwhile() {
    let (gateway, cred) = start_gateway("hank", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let agent = register_agent(&gateway).await;
    let mut ctl = open_control_channel(&gateway, &agent).await;
    let mut w = start_wired_session(&gateway, &ssm, &agent, &mut ctl, None).await;
    let first = stream_frame(MessageType::InputStreamData, 0, b"a");
    w.client.send(Message::binary(first.clone())).await.unwrap();
    assert_eq!(next_binary(&mut w.agent).await, first);

    // The agent's data socket drops (network trouble); the client keeps typing.
    drop(w.agent);
    let meanwhile = [
        stream_frame(MessageType::InputStreamData, 1, b"b"),
        stream_frame(MessageType::InputStreamData, 2, b"c"),
    ];
    for f in &meanwhile {
        w.client.send(Message::binary(f.clone())).await.unwrap();
    }
    // It comes back through CreateDataChannel with a new token (PROTOCOL §13.2).
    let mut agent_ws = open_agent_data_channel(&gateway, &agent, &w.session_id).await;
    assert_eq!(next_binary(&mut agent_ws).await, meanwhile[0]);
    assert_eq!(next_binary(&mut agent_ws).await, meanwhile[1]);
    let out = stream_frame(MessageType::OutputStreamData, 0, b"abc");
    agent_ws.send(Message::binary(out.clone())).await.unwrap();
    assert_eq!(next_binary(&mut w.client).await, out);
    let record = gateway.store().session(&w.session_id).unwrap().unwrap();
    assert!(record.end_date.is_none());
    gateway.shutdown().await;
}

/// Starts a session (`document`, or the default) whose client reads through a 32 KiB receive
/// buffer and opens the agent's data channel: (session id, client, agent).
async fn slow_client_session(
    gateway: &ssmx_gateway::Gateway,
    cred: &ssmx_gateway::config::ApiCredential,
    agent: &AgentCredential,
    ctl: &mut ControlChannel,
    document: Option<&str>,
) -> (String, Ws, Ws) {
    let started = start_session(&ssm_client(gateway.url(), cred), agent, document).await;
    let session_id = started.session_id().unwrap().to_owned();
    let client = open_client_data_channel_with_receive_buffer(
        started.stream_url().unwrap(),
        started.token_value().unwrap(),
        32 * 1024,
    )
    .await;
    expect_interactive_shell(ctl).await;
    let agent_ws = open_agent_data_channel(gateway, agent, &session_id).await;
    (session_id, client, agent_ws)
}

/// Agent Output frames carrying `payloads`, numbered from 0.
fn output_frames(payloads: impl Iterator<Item = Bytes>) -> Vec<Bytes> {
    payloads
        .enumerate()
        .map(|(i, payload)| stream_frame(MessageType::OutputStreamData, i as i64, &payload))
        .collect()
}

/// `agent_task_complete` (Success) as the agent sends it on its control channel.
fn task_complete(session_id: &str, instance_id: &str) -> Bytes {
    let complete = AgentTaskComplete::new(session_id, instance_id, "Success", "");
    AgentMessage::new(
        MessageType::AgentTaskComplete,
        PayloadType::Undefined,
        to_json(&complete),
    )
    .to_bytes()
}

/// The agent sends a burst and ends the session at once, as the official agent does (§10.4:
/// `Terminating`, `agent_task_complete` on the control channel, its socket closed), to a client
/// that is not reading. The session ends with part of the burst still queued at the gateway;
/// the client then gets every frame, in order, then `channel_closed`, and the recording holds
/// every frame too.
#[tokio::test]
async fn output_queued_when_the_session_ends_reaches_the_client_before_channel_closed() {
    // 5 MiB: more than the loopback sockets to the client take in (about 3–4 MiB here), less
    // than that plus what the gateway queues for an end (MAX_PENDING_BYTES, 4 MiB).
    const FRAMES: usize = 320;
    const PAYLOAD: usize = 16 * 1024;
    let rec = tempfile::tempdir().unwrap();
    let (gateway, cred) = start_gateway("ivan", Some(rec.path())).await;
    let agent = register_agent(&gateway).await;
    let mut ctl = open_control_channel(&gateway, &agent).await;
    let (session_id, mut client, mut agent_ws) =
        slow_client_session(&gateway, &cred, &agent, &mut ctl, None).await;

    let burst = output_frames((0..FRAMES).map(|i| {
        let mut text = format!("frame {i:04} ").into_bytes();
        text.resize(PAYLOAD - 2, b'a' + (i % 26) as u8);
        text.extend_from_slice(b"\r\n");
        Bytes::from(text)
    }));
    let frames = burst.clone();
    let (sid, instance_id) = (session_id.clone(), agent.instance_id.clone());
    let agent_side = tokio::spawn(async move {
        for f in frames {
            agent_ws.feed(Message::binary(f)).await.unwrap();
        }
        let terminating = AgentSessionState::message(&sid, "Terminating").to_bytes();
        agent_ws.send(Message::binary(terminating)).await.unwrap();
        let complete = task_complete(&sid, &instance_id);
        ctl.ws.send(Message::binary(complete)).await.unwrap();
        agent_ws.close(None).await.unwrap();
    });

    // Only once the gateway has recorded the end does the client start reading.
    let deadline = std::time::Instant::now() + WAIT;
    let ended = || {
        let record = gateway.store().session(&session_id).unwrap().unwrap();
        record.end_date.is_some()
    };
    while !ended() {
        assert!(
            std::time::Instant::now() < deadline,
            "the session did not end"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let seen = drain_until_closed(&mut client).await;
    assert_eq!(seen.len(), FRAMES + 1);
    for (i, (got, sent)) in seen.iter().zip(&burst).enumerate() {
        assert!(got.to_bytes() == *sent, "frame {i} differs");
    }
    assert_eq!(seen[FRAMES].message_type, MessageType::ChannelClosed);
    let record = gateway.store().session(&session_id).unwrap().unwrap();
    assert_eq!(record.status, "Terminated");
    agent_side.await.unwrap();

    let cast = std::fs::read_to_string(rec.path().join(format!("{session_id}.cast"))).unwrap();
    let mut recorded = String::new();
    for line in cast.lines().skip(1) {
        let (_, _, text): (f64, String, String) = serde_json::from_str(line).unwrap();
        recorded.push_str(&text);
    }
    let mut relayed = String::new();
    for f in &burst {
        let m = AgentMessage::decode(f.clone()).unwrap();
        relayed.push_str(std::str::from_utf8(&m.payload).unwrap());
    }
    assert!(
        recorded == relayed,
        "the recording differs from the relayed output"
    );
    gateway.shutdown().await;
}

/// The agent reports the end on its control channel while a long backlog of output is still on
/// its way through the gateway to a client that reads slowly: the session is not closed while
/// that output keeps flowing, and the client gets all of it, then `channel_closed`.
#[tokio::test]
async fn a_backlog_still_flowing_to_a_slow_client_is_not_cut_off() {
    const FRAMES: usize = 2000;
    let (gateway, cred) = start_gateway("kate", None).await;
    let agent = register_agent(&gateway).await;
    let mut ctl = open_control_channel(&gateway, &agent).await;
    let (session_id, mut client, mut agent_ws) = slow_client_session(
        &gateway,
        &cred,
        &agent,
        &mut ctl,
        Some("AWS-StartSSHSession"),
    )
    .await;

    let payload = Bytes::from(vec![b'x'; 16 * 1024]);
    let burst = output_frames((0..FRAMES).map(|_| payload.clone()));
    // A port session's agent reports completion and closes its socket; here the report arrives
    // first, while most of the burst has yet to pass the gateway.
    let complete = task_complete(&session_id, &agent.instance_id);
    let frames = burst.clone();
    let agent_side = tokio::spawn(async move {
        for f in frames {
            agent_ws.feed(Message::binary(f)).await.unwrap();
        }
        agent_ws.close(None).await.unwrap();
    });
    ctl.ws.send(Message::binary(complete)).await.unwrap();

    // About 5 MB/s: the backlog takes several times the agent's grace to pass.
    let mut seen = 0;
    loop {
        let msg = tokio::time::timeout(WAIT, client.next())
            .await
            .expect("the client got nothing for too long");
        match msg {
            Some(Ok(Message::Binary(b))) => {
                let m = AgentMessage::decode(b.clone()).unwrap();
                if m.message_type == MessageType::ChannelClosed {
                    break;
                }
                assert!(b == burst[seen], "frame {seen} differs");
                seen += 1;
                if seen % 8 == 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                }
            }
            Some(Ok(_)) => {}
            other => panic!("closed without channel_closed after {seen} frames: {other:?}"),
        }
    }
    assert_eq!(seen, FRAMES);
    agent_side.await.unwrap();
    gateway.shutdown().await;
}

/// An agent that reports `Terminating` but keeps its data channel open is closed by the gateway
/// after its grace (2.5 s), and the session ends normally.
#[tokio::test]
async fn an_agent_that_stays_after_terminating_is_closed_after_its_grace() {
    let (gateway, cred) = start_gateway("judy", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let agent = register_agent(&gateway).await;
    let mut ctl = open_control_channel(&gateway, &agent).await;
    let mut w = start_wired_session(&gateway, &ssm, &agent, &mut ctl, None).await;
    let last = stream_frame(MessageType::OutputStreamData, 0, b"exit\r\n");
    w.agent.send(Message::binary(last.clone())).await.unwrap();
    let reported = std::time::Instant::now();
    let terminating = AgentSessionState::message(&w.session_id, "Terminating").to_bytes();
    w.agent.send(Message::binary(terminating)).await.unwrap();

    let seen = drain_until_closed(&mut w.client).await;
    let waited = reported.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(2500),
        "closed after {waited:?}"
    );
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].to_bytes(), last);
    let closed: ChannelClosed = serde_json::from_slice(&seen[1].payload).unwrap();
    assert_eq!(closed.output, "");
    let agent_seen = drain_until_closed(&mut w.agent).await;
    assert_eq!(
        agent_seen.last().map(|m| &m.message_type),
        Some(&MessageType::ChannelClosed)
    );
    let record = gateway.store().session(&w.session_id).unwrap().unwrap();
    assert_eq!(
        (record.status.as_str(), record.details.as_str()),
        ("Terminated", "the session ended on the target")
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn port_sessions_are_not_recorded_unless_asked_and_retention_runs_while_serving() {
    let rec = tempfile::tempdir().unwrap();
    // An old recording of an earlier run, and one too many for the size limit.
    let old = rec.path().join("old-session.cast");
    std::fs::write(&old, b"{}\n").unwrap();
    let month_ago = SystemTime::now() - std::time::Duration::from_secs(40 * 86_400);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(month_ago)
        .unwrap();
    let big = rec.path().join("big-session.log");
    std::fs::write(&big, vec![0u8; 2 << 20]).unwrap();
    let keep = rec.path().join("notes.txt");
    std::fs::write(&keep, b"not a recording").unwrap();

    let cred = ssmx_gateway::config::ApiCredential::generate("rhea");
    let config: ssmx_gateway::config::Config = toml::from_str(
        "recordings_max_age_days = 30\nrecordings_max_total_mib = 1\nrecordings_sweep_seconds = 1",
    )
    .unwrap();
    let gateway = ssmx_gateway::Gateway::builder()
        .config(config)
        .listen("127.0.0.1:0".parse().unwrap())
        .database(ssmx_gateway::config::Database::Memory)
        .credential(cred.clone())
        .recordings_dir(rec.path())
        .start()
        .await
        .unwrap();
    let ssm = ssm_client(gateway.url(), &cred);
    let agent = register_agent(&gateway).await;
    let mut ctl = open_control_channel(&gateway, &agent).await;
    let port = start_wired_session(
        &gateway,
        &ssm,
        &agent,
        &mut ctl,
        Some("AWS-StartPortForwardingSession"),
    )
    .await;
    let shell = start_wired_session(&gateway, &ssm, &agent, &mut ctl, None).await;

    // Retention removed the old and the oversized recordings, kept what is no recording.
    let deadline = tokio::time::Instant::now() + WAIT;
    while old.exists() || big.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never ran"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(keep.exists());
    // The live shell session's recording stays; the port session has none.
    assert!(rec
        .path()
        .join(format!("{}.cast", shell.session_id))
        .exists());
    assert!(!rec.path().join(format!("{}.log", port.session_id)).exists());
    let record = gateway.store().session(&port.session_id).unwrap().unwrap();
    assert_eq!(record.recording, None);
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_task_complete_forged_by_another_instance_is_ignored() {
    let (gateway, cred) = start_gateway("vera", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let victim = register_agent(&gateway).await;
    let forger = register_agent(&gateway).await;
    let mut victim_ctl = open_control_channel(&gateway, &victim).await;
    let mut forger_ctl = open_control_channel(&gateway, &forger).await;
    let mut w = start_wired_session(&gateway, &ssm, &victim, &mut victim_ctl, None).await;

    // The forger claims the victim's session is over, naming either instance.
    for claimed in [&victim.instance_id, &forger.instance_id] {
        forger_ctl
            .ws
            .send(Message::binary(task_complete(&w.session_id, claimed)))
            .await
            .unwrap();
        // Acknowledged like any report, so the forger learns nothing, but without effect.
        let ack = next_message(&mut forger_ctl.ws).await;
        assert_eq!(ack.message_type, MessageType::AgentTaskAcknowledge);
    }
    let frame = stream_frame(MessageType::OutputStreamData, 0, b"still running");
    w.agent.send(Message::binary(frame.clone())).await.unwrap();
    assert_eq!(next_binary(&mut w.client).await, frame);
    let record = gateway.store().session(&w.session_id).unwrap().unwrap();
    assert!(
        !matches!(
            record.status.as_str(),
            "Terminated" | "Failed" | "Terminating"
        ),
        "{}",
        record.status
    );
    gateway.shutdown().await;
}
