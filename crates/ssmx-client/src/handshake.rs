//! The client's side of the session handshake (PROTOCOL.md §6): pure functions from the agent's
//! request to our response and what the session turned out to be.

use bytes::Bytes;
use serde_json::Value;
use ssmx_protocol::payload::{
    action_type, session_type, to_json, ActionStatus, HandshakeComplete, HandshakeRequest,
    HandshakeResponse, KmsEncryptionParameters, KmsEncryptionResult, ProcessedClientAction,
    SessionTypeParameters, SsmxCapabilities,
};
use ssmx_protocol::version::CLIENT_VERSION;

/// The session types a client can run (the document's `sessionType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionType {
    /// Interactive shell (`Standard_Stream`).
    StandardStream,
    /// A document command on a terminal (`InteractiveCommands`).
    InteractiveCommands,
    /// A command without terminal: stdout, stderr and an exit code (`NonInteractiveCommands`).
    NonInteractiveCommands,
    /// Port forwarding (`Port`).
    Port,
}

impl SessionType {
    /// Parses the wire name.
    pub fn from_wire(name: &str) -> Option<Self> {
        match name {
            session_type::STANDARD_STREAM => Some(SessionType::StandardStream),
            session_type::INTERACTIVE_COMMANDS => Some(SessionType::InteractiveCommands),
            session_type::NON_INTERACTIVE_COMMANDS => Some(SessionType::NonInteractiveCommands),
            session_type::PORT => Some(SessionType::Port),
            _ => None,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionType::StandardStream => session_type::STANDARD_STREAM,
            SessionType::InteractiveCommands => session_type::INTERACTIVE_COMMANDS,
            SessionType::NonInteractiveCommands => session_type::NON_INTERACTIVE_COMMANDS,
            SessionType::Port => session_type::PORT,
        }
    }
}

/// What the client knows once a session has started.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionStart {
    /// The session type, from the handshake or (without one) inferred from the first output.
    pub session_type: SessionType,
    /// The document's properties after substitution (port sessions), else `null`.
    pub properties: Value,
    /// The agent's version, when a handshake told it.
    pub agent_version: Option<String>,
    /// Text the agent wants shown to the user (HandshakeComplete `CustomerMessage`).
    pub customer_message: Option<String>,
    /// Largest stream payload both ends agreed on, when the agent is an ssmx agent.
    pub negotiated_payload: Option<usize>,
    /// Whether payloads are encrypted with a KMS data key (the document sets `kmsKeyId`).
    pub encrypted: bool,
}

/// Our answer to a HandshakeRequest and what it decided.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HandshakeReply {
    /// The HandshakeResponse payload to send (PayloadType 6).
    pub response: HandshakeResponse,
    /// The session type the agent announced, if we accepted it.
    pub session_type: Option<SessionType>,
    /// Its properties.
    pub properties: Value,
    /// The agent's version.
    pub agent_version: String,
    /// The payload size both ssmx ends agreed on.
    pub negotiated_payload: Option<usize>,
    /// Whether the KMSEncryption action succeeded (encryption is on from now).
    pub encrypted: bool,
}

impl HandshakeReply {
    /// The response serialised as the official client does.
    pub fn payload(&self) -> Bytes {
        to_json(&self.response)
    }
}

/// The KMSEncryption action's parameters, if the agent asks for encryption.
pub(crate) fn kms_request(
    request: &HandshakeRequest,
) -> Option<Result<KmsEncryptionParameters, String>> {
    request
        .requested_client_actions
        .iter()
        .find(|a| a.action_type == action_type::KMS_ENCRYPTION)
        .map(|a| a.parameters().map_err(|e| e.to_string()))
}

/// Answers every requested action in order (PROTOCOL.md §6.2). `max_payload` is what we offer
/// an ssmx agent that advertised [`SsmxCapabilities`]; official agents never see it. `kms` is
/// the outcome of the KMS data-key request for the KMSEncryption action, when there is one.
pub(crate) fn respond(
    request: &HandshakeRequest,
    max_payload: u32,
    kms: Option<Result<KmsEncryptionResult, String>>,
) -> HandshakeReply {
    let mut actions = Vec::with_capacity(request.requested_client_actions.len());
    let mut errors = Vec::new();
    let mut session = None;
    let mut properties = Value::Null;
    let mut encrypted = false;
    for action in &request.requested_client_actions {
        let mut result = Value::Null;
        let outcome = match action.action_type.as_str() {
            action_type::SESSION_TYPE => match action.parameters::<SessionTypeParameters>() {
                Ok(p) => match SessionType::from_wire(&p.session_type) {
                    Some(t) => {
                        session = Some(t);
                        properties = p.properties;
                        Ok(())
                    }
                    None => Err(format!("Unknown session type {}", p.session_type)),
                },
                Err(e) => Err(e.to_string()),
            },
            action_type::KMS_ENCRYPTION => match &kms {
                Some(Ok(key)) => {
                    encrypted = true;
                    result = serde_json::to_value(key).expect("serialisable");
                    Ok(())
                }
                Some(Err(e)) => Err(e.clone()),
                None => Err("no data key was requested".to_owned()),
            },
            other => {
                let error = format!("Unsupported action {other}");
                errors.push(error.clone());
                actions.push(ProcessedClientAction {
                    action_type: other.to_owned(),
                    action_status: ActionStatus::Unsupported,
                    action_result: Value::Null,
                    error,
                });
                continue;
            }
        };
        let (status, error) = match outcome {
            Ok(()) => (ActionStatus::Success, String::new()),
            Err(e) => {
                errors.push(e.clone());
                (
                    ActionStatus::Failed,
                    format!("Failed to process action {}: {e}", action.action_type),
                )
            }
        };
        actions.push(ProcessedClientAction {
            action_type: action.action_type.clone(),
            action_status: status,
            action_result: result,
            error,
        });
    }
    let negotiated_payload = request
        .ssmx_capabilities
        .map(|theirs| theirs.max_payload_size.min(max_payload) as usize);
    HandshakeReply {
        response: HandshakeResponse {
            client_version: CLIENT_VERSION.to_owned(),
            processed_client_actions: actions,
            errors: (!errors.is_empty()).then_some(errors),
            ssmx_capabilities: request.ssmx_capabilities.map(|_| SsmxCapabilities {
                max_payload_size: max_payload,
            }),
        },
        session_type: session,
        properties,
        agent_version: request.agent_version.clone(),
        negotiated_payload,
        encrypted,
    }
}

/// The text to show from a HandshakeComplete, if any.
pub(crate) fn customer_message(complete: &HandshakeComplete) -> Option<String> {
    (!complete.customer_message.is_empty()).then(|| complete.customer_message.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssmx_protocol::payload::{from_json, RequestedClientAction, SessionTypeParameters};

    fn request(actions: Vec<RequestedClientAction>, caps: Option<u32>) -> HandshakeRequest {
        HandshakeRequest {
            agent_version: "3.3.0.0".to_owned(),
            requested_client_actions: actions,
            ssmx_capabilities: caps.map(|m| SsmxCapabilities {
                max_payload_size: m,
            }),
        }
    }

    fn port_action() -> RequestedClientAction {
        RequestedClientAction::session_type(&SessionTypeParameters {
            session_type: "Port".to_owned(),
            properties: serde_json::json!({"portNumber":"22"}),
        })
    }

    #[test]
    fn session_type_is_accepted_like_the_official_client() {
        let reply = respond(&request(vec![port_action()], None), 1 << 20, None);
        assert_eq!(reply.session_type, Some(SessionType::Port));
        assert_eq!(reply.properties, serde_json::json!({"portNumber":"22"}));
        let json = String::from_utf8(reply.payload().to_vec()).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"ClientVersion":"{CLIENT_VERSION}","ProcessedClientActions":[{{"ActionType":"SessionType","ActionStatus":1,"ActionResult":null,"Error":""}}],"Errors":null}}"#
            )
        );
    }

    #[test]
    fn unknown_session_type_fails_the_action() {
        let action = RequestedClientAction::session_type(&SessionTypeParameters {
            session_type: "Telepathy".to_owned(),
            properties: Value::Null,
        });
        let reply = respond(&request(vec![action], None), 1024, None);
        assert_eq!(reply.session_type, None);
        let a = &reply.response.processed_client_actions[0];
        assert_eq!(a.action_status, ActionStatus::Failed);
        assert_eq!(
            a.error,
            "Failed to process action SessionType: Unknown session type Telepathy"
        );
        assert_eq!(
            reply.response.errors,
            Some(vec!["Unknown session type Telepathy".to_owned()])
        );
    }

    #[test]
    fn unknown_action_is_unsupported_with_status_3() {
        let odd = RequestedClientAction {
            action_type: "Teleport".to_owned(),
            action_parameters: serde_json::json!({}),
        };
        let reply = respond(&request(vec![port_action(), odd], None), 1024, None);
        let a = &reply.response.processed_client_actions[1];
        assert_eq!(a.action_status, ActionStatus::Unsupported);
        assert_eq!(a.error, "Unsupported action Teleport");
        let back: HandshakeResponse = from_json("response", &reply.payload()).unwrap();
        assert_eq!(back.processed_client_actions.len(), 2);
    }

    fn kms_action(challenge: Option<&str>) -> RequestedClientAction {
        RequestedClientAction::kms_encryption(&KmsEncryptionParameters {
            kms_key_id: "arn:aws:kms:us-east-1:1:key/x".to_owned(),
            challenge: challenge.map(str::to_owned),
        })
    }

    #[test]
    fn kms_result_goes_into_the_action() {
        let req = request(vec![port_action(), kms_action(Some("abc"))], None);
        let params = kms_request(&req).unwrap().unwrap();
        assert_eq!(params.challenge.as_deref(), Some("abc"));
        let result = KmsEncryptionResult {
            kms_cipher_text_key: "AQID".to_owned(),
            kms_cipher_text_hash: None,
            challenge_acknowledgement: Some(true),
        };
        let reply = respond(&req, 1024, Some(Ok(result)));
        assert!(reply.encrypted);
        let json = String::from_utf8(reply.payload().to_vec()).unwrap();
        assert!(
            json.contains(r#"{"ActionType":"KMSEncryption","ActionStatus":1,"ActionResult":{"KMSCipherTextKey":"AQID","KMSCipherTextHash":null,"ChallengeAcknowledgement":true},"Error":""}"#),
            "{json}"
        );
    }

    #[test]
    fn kms_failure_fails_the_action() {
        let req = request(vec![port_action(), kms_action(None)], None);
        let reply = respond(&req, 1024, Some(Err("no key".to_owned())));
        assert!(!reply.encrypted);
        let a = &reply.response.processed_client_actions[1];
        assert_eq!(a.action_status, ActionStatus::Failed);
        assert_eq!(a.error, "Failed to process action KMSEncryption: no key");
        assert!(kms_request(&request(vec![port_action()], None)).is_none());
    }

    #[test]
    fn capabilities_are_answered_and_the_smaller_size_wins() {
        let reply = respond(
            &request(vec![port_action()], Some(256 * 1024)),
            1 << 20,
            None,
        );
        assert_eq!(reply.negotiated_payload, Some(256 * 1024));
        assert_eq!(
            reply.response.ssmx_capabilities,
            Some(SsmxCapabilities {
                max_payload_size: 1 << 20
            })
        );
        let official = respond(&request(vec![port_action()], None), 1 << 20, None);
        assert_eq!(official.negotiated_payload, None);
        assert!(!String::from_utf8(official.payload().to_vec())
            .unwrap()
            .contains("Ssmx"));
    }
}
