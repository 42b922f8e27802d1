//! KMS-encrypted sessions (PROTOCOL.md §6.3, §7): the client gets its data key from a KMS
//! endpoint (the local ssmx key service behind a real HTTP listener), answers the agent's
//! encryption challenge and seals/opens Output payloads. The agent side is a scripted agent on
//! the real channel implementation that unwraps the key with KMS Decrypt as the agent does.

use std::sync::Arc;

use aws_sdk_kms::primitives::Blob;
use futures::StreamExt;
use ssmx_channel::{ChannelConfig, ChannelEvent, Receiver, Role, Sender, Transport};
use ssmx_client::{Bytes, SessionEnd, SessionEvent, SessionManager, SessionTicket, SessionType};
use ssmx_kms::{KeyService, MemoryKeyStore};
use ssmx_protocol::crypto::{random_challenge, DataKeyUnwrap, SessionCipher, OVERHEAD};
use ssmx_protocol::payload::{
    from_json, to_json, ActionStatus, ChannelClosed, EncryptionChallenge, HandshakeComplete,
    HandshakeRequest, HandshakeResponse, KmsEncryptionParameters, KmsEncryptionResult,
    RequestedClientAction, SessionTypeParameters,
};
use ssmx_protocol::PayloadType;
use tokio::net::TcpListener;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use crate::common::STEP;

const KEY_ALIAS: &str = "alias/ssmx-sessions";
const SESSION_ID: &str = "kms-01";
const TARGET: &str = "mi-0123456789abcdef0";
const BANNER: &str = "This session is encrypted using AWS KMS.";

/// The local key service on an ephemeral port; returns its URL.
async fn key_service() -> String {
    let service = Arc::new(KeyService::new(MemoryKeyStore::new()).create_missing_aliases(true));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, ssmx_kms::router(service))
            .await
            .unwrap();
    });
    url
}

async fn sdk_config(endpoint: &str) -> aws_types::SdkConfig {
    crate::common::sdk_config(
        endpoint,
        &ssmx_gateway::config::ApiCredential::generate("kms-test"),
    )
    .await
}

/// Waits for the next stream payload on the agent's channel.
async fn next_payload(events: &mut Receiver) -> (PayloadType, Bytes) {
    loop {
        match timeout(STEP, events.recv()).await.unwrap().unwrap() {
            ChannelEvent::Payload {
                payload_type,
                payload,
            } => return (payload_type, payload),
            ChannelEvent::Message(_) => {}
            other => panic!("agent channel: {other:?}"),
        }
    }
}

/// What the scripted agent observed.
struct AgentView {
    response: HandshakeResponse,
    /// The client's Output payload as it travelled (sealed) and opened.
    sealed_input: Option<(Bytes, Bytes)>,
}

/// A scripted agent behind a stand-in MGS: handshake with KMSEncryption (with a random
/// challenge), key unwrap through KMS, encryption challenge, an encrypted prompt, then it reads
/// one encrypted input and closes the session.
async fn encrypting_agent(kms_url: String) -> (String, tokio::task::JoinHandle<AgentView>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "ws://{}/v1/data-channel/{SESSION_ID}?role=publish_subscribe",
        listener.local_addr().unwrap()
    );
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let Some(Ok(Message::Text(_open))) = ws.next().await else {
            panic!("no OpenDataChannel");
        };
        let (sender, mut events): (Sender, Receiver) = ssmx_channel::spawn(
            ChannelConfig::new(Role::Agent),
            Transport::from_websocket(ws),
        );
        let challenge = random_challenge().unwrap();
        let request = HandshakeRequest {
            agent_version: "3.3.0.0".to_owned(),
            requested_client_actions: vec![
                RequestedClientAction::session_type(&SessionTypeParameters {
                    session_type: "Standard_Stream".to_owned(),
                    properties: serde_json::Value::Null,
                }),
                RequestedClientAction::kms_encryption(&KmsEncryptionParameters {
                    kms_key_id: KEY_ALIAS.to_owned(),
                    challenge: Some(challenge.clone()),
                }),
            ],
            ssmx_capabilities: None,
        };
        sender
            .send(PayloadType::HandshakeRequest, to_json(&request))
            .await
            .unwrap();
        let (pt, payload) = next_payload(&mut events).await;
        assert_eq!(pt, PayloadType::HandshakeResponse);
        let response: HandshakeResponse = from_json("response", &payload).unwrap();
        let kms_action = &response.processed_client_actions[1];
        if kms_action.action_status != ActionStatus::Success {
            return AgentView {
                response,
                sealed_input: None,
            };
        }
        let result: KmsEncryptionResult =
            serde_json::from_value(kms_action.action_result.clone()).unwrap();
        let unwrap =
            DataKeyUnwrap::for_agent(SESSION_ID, TARGET, Some(&challenge), &result, true).unwrap();
        let kms = aws_sdk_kms::Client::new(&sdk_config(&kms_url).await);
        let key = kms
            .decrypt()
            .ciphertext_blob(Blob::new(unwrap.ciphertext_blob.clone()))
            .set_encryption_context(Some(
                unwrap.encryption_context.clone().into_iter().collect(),
            ))
            .send()
            .await
            .expect("the agent unwraps the client's data key");
        let cipher = SessionCipher::for_agent(key.plaintext().unwrap().as_ref()).unwrap();
        let (issued, challenge_request) = cipher.issue_challenge().unwrap();
        sender
            .send(
                PayloadType::EncChallengeRequest,
                to_json(&challenge_request),
            )
            .await
            .unwrap();
        let (pt, payload) = next_payload(&mut events).await;
        assert_eq!(pt, PayloadType::EncChallengeResponse);
        let answer: EncryptionChallenge = from_json("challenge", &payload).unwrap();
        issued.verify(&cipher, &answer).expect("challenge answered");
        let complete = HandshakeComplete {
            handshake_time_to_complete: 1_000_000,
            customer_message: BANNER.to_owned(),
        };
        sender
            .send(PayloadType::HandshakeComplete, to_json(&complete))
            .await
            .unwrap();
        sender
            .send(PayloadType::Output, cipher.encrypt(b"secret prompt$ "))
            .await
            .unwrap();
        let (pt, sealed) = next_payload(&mut events).await;
        assert_eq!(pt, PayloadType::Output);
        let opened = cipher.decrypt(&sealed).expect("client input is sealed");
        sender
            .send_message(ChannelClosed::message(
                SESSION_ID,
                TARGET,
                "",
                "2026-11-22T00:00:00.000Z".to_owned(),
            ))
            .await
            .unwrap();
        // Stay until the client hangs up, so the close reaches it before the socket ends.
        while let Ok(Some(event)) = timeout(STEP, events.recv()).await {
            if matches!(event, ChannelEvent::TransportLost(_)) {
                break;
            }
        }
        AgentView {
            response,
            sealed_input: Some((sealed, opened)),
        }
    });
    (url, task)
}

fn ticket(url: String) -> SessionTicket {
    serde_json::from_value(serde_json::json!({
        "SessionId": SESSION_ID, "TokenValue": "token", "StreamUrl": url,
    }))
    .unwrap()
}

#[tokio::test]
async fn encrypted_shell_round_trip() {
    let kms_url = key_service().await;
    let (url, agent) = encrypting_agent(kms_url.clone()).await;
    let manager = SessionManager::new(&sdk_config(&kms_url).await);
    let mut session = manager.attach(ticket(url), TARGET).await.unwrap();
    let start = timeout(STEP, session.started()).await.unwrap().unwrap();
    assert!(start.encrypted);
    assert_eq!(start.session_type, SessionType::StandardStream);
    assert_eq!(start.customer_message.as_deref(), Some(BANNER));
    session.write("whoami\r").await.unwrap();
    let mut output = Vec::new();
    let end = timeout(STEP, async {
        loop {
            match session.next_event().await.unwrap().unwrap() {
                SessionEvent::Output(b) => output.extend_from_slice(&b),
                SessionEvent::Ended(end) => return end,
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(output, b"secret prompt$ ");
    assert_eq!(end, SessionEnd::Closed { message: None });
    let view = agent.await.unwrap();
    let (sealed, opened) = view.sealed_input.unwrap();
    assert_eq!(opened, &b"whoami\r"[..]);
    assert_eq!(sealed.len(), opened.len() + OVERHEAD);
    let result: KmsEncryptionResult = serde_json::from_value(
        view.response.processed_client_actions[1]
            .action_result
            .clone(),
    )
    .unwrap();
    assert_eq!(result.challenge_acknowledgement, Some(true));
}

#[tokio::test]
async fn encryption_can_be_refused() {
    const REASON: &str = "Installed version of CLI does not support Session Manager encryption feature. Please upgrade to the latest version of your CLI (e.g., AWS CLI).";
    let kms_url = key_service().await;
    let (url, agent) = encrypting_agent(kms_url.clone()).await;
    let manager = SessionManager::builder()
        .refuse_encryption(REASON)
        .build(&sdk_config(&kms_url).await);
    let _session = manager.attach(ticket(url), TARGET).await.unwrap();
    let view = timeout(STEP, agent).await.unwrap().unwrap();
    let action = &view.response.processed_client_actions[1];
    assert_eq!(action.action_status, ActionStatus::Failed);
    assert_eq!(
        action.error,
        format!("Failed to process action KMSEncryption: {REASON}")
    );
    assert_eq!(view.response.errors, Some(vec![REASON.to_owned()]));
}
