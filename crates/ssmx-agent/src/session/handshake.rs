//! The agent's side of the session handshake (PROTOCOL.md §6): HandshakeRequest with the session
//! type, the KMSEncryption action when the session is encrypted (and what an ssmx client may use
//! beyond the protocol), HandshakeResponse within the timeout, the data key from KMS and the
//! encryption challenge, HandshakeComplete.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use ssmx_protocol::crypto::{random_challenge, DataKeyUnwrap, SessionCipher};
use ssmx_protocol::payload::{
    action_type, from_json, to_json, ActionStatus, EncryptionChallenge, HandshakeComplete,
    HandshakeRequest, HandshakeResponse, KmsEncryptionParameters, KmsEncryptionResult,
    RequestedClientAction, SessionTypeParameters, SsmxCapabilities,
};
use ssmx_protocol::version::AGENT_VERSION;
use ssmx_protocol::PayloadType;

use crate::gateway_api::GatewayApi;
use crate::session::data_channel::{DataChannel, DataEvent};

/// Largest stream payload this agent offers to an ssmx client. Large payloads are the throughput
/// lever (DESIGN.md): at 256 KiB the per-message costs (header, acknowledgement) are below 0.1 %
/// of the bytes, while one message stays far under the 16 MiB every decoder accepts.
pub(crate) const MAX_PAYLOAD_OFFER: u32 = 256 * 1024;

/// Smallest payload size accepted from a client's capabilities (the official ends' chunk size).
const MIN_NEGOTIATED_PAYLOAD: u32 = 1024;

/// Text of the official agent when the client does not answer in time.
const HANDSHAKE_TIMED_OUT: &str =
    "Handshake timed out. Please ensure that you have the latest version of the session manager plugin.";

/// Text of the official agent when the client does not answer the encryption challenge in time.
const CHALLENGE_TIMED_OUT: &str = "Timed out waiting for encryption challenge.";

/// How an encrypted session gets its data key (PROTOCOL.md §7.2).
pub(crate) struct Encryption<'a> {
    /// The KMS key the document names (`inputs.kmsKeyId`).
    pub(crate) key_id: &'a str,
    /// The session, for the encryption context.
    pub(crate) session_id: &'a str,
    /// This agent's instance id, for the encryption context.
    pub(crate) instance_id: &'a str,
    /// Where KMS `Decrypt` is called.
    pub(crate) api: &'a GatewayApi,
}

/// What the handshake established.
#[derive(Debug)]
pub(crate) struct Negotiated {
    /// The client's version (drives the port-forwarding mode and smux keep-alive).
    pub(crate) client_version: String,
    /// The payload size both ends agreed on, when the client is an ssmx client.
    pub(crate) max_payload: Option<usize>,
    /// The session's cipher, when it is encrypted.
    pub(crate) cipher: Option<Arc<SessionCipher>>,
}

/// Why the handshake did not complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HandshakeError {
    /// The service closed the channel meanwhile.
    Closed,
    /// The client refused, answered nonsense or not in time, or the channel failed.
    Failed(String),
}

/// Runs the handshake for `session_type`. `properties` go to the client (Port sessions; `null`
/// otherwise); `customer_message` computes the HandshakeComplete text from the client version;
/// with `encryption` the session's data key is agreed and checked before it completes.
pub(crate) async fn perform(
    channel: &mut DataChannel,
    session_type: &str,
    properties: serde_json::Value,
    encryption: Option<Encryption<'_>>,
    customer_message: impl FnOnce(&str) -> String,
    timeout: Duration,
) -> Result<Negotiated, HandshakeError> {
    let mut actions = vec![RequestedClientAction::session_type(
        &SessionTypeParameters {
            session_type: session_type.to_owned(),
            properties,
        },
    )];
    let challenge = match &encryption {
        Some(encryption) => {
            let challenge = random_challenge().map_err(failed)?;
            actions.push(RequestedClientAction::kms_encryption(
                &KmsEncryptionParameters {
                    kms_key_id: encryption.key_id.to_owned(),
                    challenge: Some(challenge.clone()),
                },
            ));
            Some(challenge)
        }
        None => None,
    };
    let request = HandshakeRequest {
        agent_version: AGENT_VERSION.to_owned(),
        requested_client_actions: actions,
        ssmx_capabilities: Some(SsmxCapabilities {
            max_payload_size: MAX_PAYLOAD_OFFER,
        }),
    };
    let started = Instant::now();
    send(channel, PayloadType::HandshakeRequest, to_json(&request)).await?;
    let response: HandshakeResponse = receive(
        channel,
        PayloadType::HandshakeResponse,
        "HandshakeResponse",
        timeout,
        HANDSHAKE_TIMED_OUT,
    )
    .await?;
    for action in &response.processed_client_actions {
        if action.action_status != ActionStatus::Success {
            return Err(HandshakeError::Failed(format!(
                "{} failed on client with status {} error: {}",
                action.action_type,
                i64::from(action.action_status),
                action.error
            )));
        }
    }
    let cipher = match (encryption, challenge) {
        (Some(encryption), Some(challenge)) => {
            let cipher = data_key(&encryption, &challenge, &response).await?;
            encryption_challenge(channel, &cipher, timeout).await?;
            Some(Arc::new(cipher))
        }
        _ => None,
    };
    let max_payload = response.ssmx_capabilities.map(|caps| {
        let agreed = caps
            .max_payload_size
            .clamp(MIN_NEGOTIATED_PAYLOAD, MAX_PAYLOAD_OFFER) as usize;
        channel.sender.set_max_payload(agreed);
        agreed
    });
    let complete = HandshakeComplete {
        handshake_time_to_complete: i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX),
        customer_message: customer_message(&response.client_version),
    };
    send(channel, PayloadType::HandshakeComplete, to_json(&complete)).await?;
    Ok(Negotiated {
        client_version: response.client_version,
        max_payload,
        cipher,
    })
}

/// Unwraps the data key the client had KMS generate (its KMSEncryption result) with KMS
/// `Decrypt`, under the context this agent computes itself (PROTOCOL.md §7.2).
async fn data_key(
    encryption: &Encryption<'_>,
    challenge: &str,
    response: &HandshakeResponse,
) -> Result<SessionCipher, HandshakeError> {
    let result = response
        .processed_client_actions
        .iter()
        .find(|a| a.action_type == action_type::KMS_ENCRYPTION)
        .ok_or_else(|| {
            HandshakeError::Failed(
                "the client did not process the KMSEncryption action; this session must be encrypted".into(),
            )
        })?;
    let result: KmsEncryptionResult = serde_json::from_value(result.action_result.clone())
        .map_err(|e| {
            HandshakeError::Failed(format!("the client's KMSEncryption result is invalid: {e}"))
        })?;
    let unwrap = DataKeyUnwrap::for_agent(
        encryption.session_id,
        encryption.instance_id,
        Some(challenge),
        &result,
        false,
    )
    .map_err(failed)?;
    let plaintext = encryption
        .api
        .decrypt_data_key(encryption.key_id, &unwrap)
        .await
        .map_err(|e| {
            HandshakeError::Failed(format!(
                "cannot decrypt the session's data key with KMS key {}: {e}",
                encryption.key_id
            ))
        })?;
    SessionCipher::for_agent(&plaintext).map_err(failed)
}

/// The encryption challenge (PROTOCOL.md §6.3): proves the client holds the same data key.
async fn encryption_challenge(
    channel: &mut DataChannel,
    cipher: &SessionCipher,
    timeout: Duration,
) -> Result<(), HandshakeError> {
    let (issued, request) = cipher.issue_challenge().map_err(failed)?;
    send(channel, PayloadType::EncChallengeRequest, to_json(&request)).await?;
    let answer: EncryptionChallenge = receive(
        channel,
        PayloadType::EncChallengeResponse,
        "EncChallengeResponse",
        timeout,
        CHALLENGE_TIMED_OUT,
    )
    .await?;
    issued.verify(cipher, &answer).map_err(|e| {
        HandshakeError::Failed(format!("the client failed the encryption challenge: {e}"))
    })
}

/// Waits up to `timeout` for the client's payload of `payload_type`, dropping other input as
/// the official agent does.
async fn receive<T: DeserializeOwned>(
    channel: &mut DataChannel,
    payload_type: PayloadType,
    what: &'static str,
    timeout: Duration,
    timed_out: &str,
) -> Result<T, HandshakeError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let event = match tokio::time::timeout_at(deadline, channel.next()).await {
            Ok(event) => event,
            Err(_) => return Err(HandshakeError::Failed(timed_out.into())),
        };
        match event {
            DataEvent::Payload(input) if input.payload_type == payload_type => {
                return from_json(what, &input.payload).map_err(failed);
            }
            DataEvent::Payload(input) => {
                tracing::debug!(payload_type = ?input.payload_type, "input before the handshake completed; dropped");
            }
            DataEvent::Closed(_) => return Err(HandshakeError::Closed),
            DataEvent::Failed(reason) => return Err(HandshakeError::Failed(reason)),
        }
    }
}

fn failed(e: impl std::fmt::Display) -> HandshakeError {
    HandshakeError::Failed(e.to_string())
}

async fn send(
    channel: &DataChannel,
    payload_type: PayloadType,
    payload: Bytes,
) -> Result<(), HandshakeError> {
    channel
        .sender
        .send(payload_type, payload)
        .await
        .map_err(|e| HandshakeError::Failed(format!("the data channel failed: {e}")))
}
