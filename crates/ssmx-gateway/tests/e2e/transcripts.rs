//! Replays the frames the official agent and client sent in the recorded transcripts through a
//! real gateway, and checks what arrives on the other side: every frame byte for byte, in order,
//! except `agent_session_state`, which the service consumes; `agent_task_complete` is answered
//! with an `agent_task_acknowledge` naming its MessageId.

use std::path::PathBuf;

use crate::common::*;
use bytes::Bytes;
use futures::SinkExt;
use ssmx_protocol::{peek_message_type, AgentMessage, MessageType};
use tokio_tungstenite::tungstenite::Message;

fn transcripts() -> Vec<(String, serde_json::Value)> {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ssmx-protocol/tests/data/transcripts");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "index" || name == "agent-startup-control-channel" {
            continue;
        }
        let value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        out.push((name, value));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 9);
    out
}

fn frames(t: &serde_json::Value, channel: &str, direction: &str) -> Vec<Bytes> {
    t["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["channel"] == channel && e["direction"] == direction && e["ws_opcode"] == "binary"
        })
        .map(|e| Bytes::from(hex::decode(e["hex"].as_str().unwrap()).unwrap()))
        .collect()
}

#[tokio::test]
async fn official_frames_pass_through_unchanged() {
    let (gateway, cred) = start_gateway("probe", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let agent = register_agent(&gateway).await;
    let mut ctl = open_control_channel(&gateway, &agent).await;
    for (name, t) in transcripts() {
        let mut w = start_wired_session(&gateway, &ssm, &agent, &mut ctl, None).await;

        let from_agent = frames(&t, "agent-data", "agent->gw");
        let expected_at_client: Vec<&Bytes> = from_agent
            .iter()
            .filter(|f| peek_message_type(f).unwrap() != MessageType::AgentSessionState)
            .collect();
        assert!(
            from_agent.len() > expected_at_client.len(),
            "{name}: no agent_session_state"
        );
        for f in &from_agent {
            w.agent.send(Message::binary(f.clone())).await.unwrap();
        }
        for want in expected_at_client {
            assert_eq!(&next_binary(&mut w.client).await, want, "{name}");
        }

        let from_client = frames(&t, "client-data", "client->gw");
        assert!(!from_client.is_empty(), "{name}");
        for f in &from_client {
            w.client.send(Message::binary(f.clone())).await.unwrap();
        }
        for want in &from_client {
            assert_eq!(&next_binary(&mut w.agent).await, want, "{name}");
        }

        for report in frames(&t, "agent-control", "agent->gw") {
            let sent = AgentMessage::decode(report.clone()).unwrap();
            assert_eq!(sent.message_type, MessageType::AgentTaskComplete, "{name}");
            ctl.ws.send(Message::binary(report)).await.unwrap();
            let ack = next_message(&mut ctl.ws).await;
            assert_eq!(
                ack.message_type,
                MessageType::AgentTaskAcknowledge,
                "{name}"
            );
            let ack: serde_json::Value = serde_json::from_slice(&ack.payload).unwrap();
            assert_eq!(ack["MessageId"], sent.message_id.to_string(), "{name}");
            assert_eq!(ack["Topic"], "agent_task_complete");
        }

        ssm.terminate_session()
            .session_id(&w.session_id)
            .send()
            .await
            .unwrap();
        drain_until_closed(&mut w.client).await;
        drain_until_closed(&mut w.agent).await;
        let closed = next_message(&mut ctl.ws).await;
        assert_eq!(closed.message_type, MessageType::ChannelClosed, "{name}");
    }
    gateway.shutdown().await;
}
