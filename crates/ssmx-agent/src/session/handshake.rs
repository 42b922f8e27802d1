//! The agent's side of the session handshake (PROTOCOL.md §6): HandshakeRequest with the session
//! type (and what an ssmx client may use beyond the protocol), HandshakeResponse within the
//! timeout, HandshakeComplete.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ssmx_protocol::payload::{
    from_json, to_json, ActionStatus, HandshakeComplete, HandshakeRequest, HandshakeResponse,
    RequestedClientAction, SessionTypeParameters, SsmxCapabilities,
};
use ssmx_protocol::version::AGENT_VERSION;
use ssmx_protocol::PayloadType;

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

/// What the handshake established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Negotiated {
    /// The client's version (drives the port-forwarding mode and smux keep-alive).
    pub(crate) client_version: String,
    /// The payload size both ends agreed on, when the client is an ssmx client.
    pub(crate) max_payload: Option<usize>,
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
/// otherwise); `customer_message` computes the HandshakeComplete text from the client version.
pub(crate) async fn perform(
    channel: &mut DataChannel,
    session_type: &str,
    properties: serde_json::Value,
    customer_message: impl FnOnce(&str) -> String,
    timeout: Duration,
) -> Result<Negotiated, HandshakeError> {
    let request = HandshakeRequest {
        agent_version: AGENT_VERSION.to_owned(),
        requested_client_actions: vec![RequestedClientAction::session_type(
            &SessionTypeParameters {
                session_type: session_type.to_owned(),
                properties,
            },
        )],
        ssmx_capabilities: Some(SsmxCapabilities {
            max_payload_size: MAX_PAYLOAD_OFFER,
        }),
    };
    let started = Instant::now();
    send(channel, PayloadType::HandshakeRequest, to_json(&request)).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    let response = loop {
        let event = match tokio::time::timeout_at(deadline, channel.next()).await {
            Ok(event) => event,
            Err(_) => return Err(HandshakeError::Failed(HANDSHAKE_TIMED_OUT.into())),
        };
        match event {
            DataEvent::Payload(input) if input.payload_type == PayloadType::HandshakeResponse => {
                break from_json::<HandshakeResponse>("HandshakeResponse", &input.payload)
                    .map_err(|e| HandshakeError::Failed(e.to_string()))?;
            }
            DataEvent::Payload(input) => {
                // As the official agent: input before the handshake completes is dropped.
                tracing::debug!(payload_type = ?input.payload_type, "input before the handshake completed; dropped");
            }
            DataEvent::Closed(_) => return Err(HandshakeError::Closed),
            DataEvent::Failed(reason) => return Err(HandshakeError::Failed(reason)),
        }
    };
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
    })
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
