//! The KMS JSON API on the gateway's port (`X-Amz-Target: TrentService.<Op>`, SigV4 service
//! `kms`, PROTOCOL.md §7.2, §12.3), answered by [`ssmx_kms::KeyService`] on the gateway's
//! database, so clients and agents run encrypted sessions without AWS.
//!
//! Who may do what:
//! * API users (the configured access keys) may call what their policies allow, `kms:<Op>` on
//!   the key's ARN (`*` for CreateKey, ListKeys and ListAliases): GenerateDataKey for their
//!   sessions, and key administration (CreateKey, CreateAlias, …).
//! * Agents may only call Decrypt, and only for a live session on themselves: the encryption
//!   context must name the agent's own instance id as `aws:ssm:TargetId` and a session the
//!   gateway is relaying to that instance as `aws:ssm:SessionId`. A stolen data-key blob is no
//!   use to another agent.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use ssmx_kms::{KmsError, KmsErrorCode};
use ssmx_protocol::crypto::context_key;

use crate::access::{Principal, Resource};
use crate::error::ApiError;
use crate::hub::{Caller, Hub};
use crate::sigv4::RequestParts;

/// The SigV4 service name of KMS.
const SERVICE: &str = "kms";
/// The one operation agents may call.
const AGENT_OPERATION: &str = "TrentService.Decrypt";

/// Answers one KMS request already identified by its `X-Amz-Target`.
pub(crate) fn handle(
    hub: &Hub,
    target: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let parts = RequestParts {
        method,
        uri,
        headers,
        body,
    };
    let caller = match hub.authenticate(parts, SERVICE, false) {
        Ok(caller) => caller,
        Err(e) => {
            let e = ApiError::from(e);
            tracing::info!(code = e.code.as_str(), message = %e.message, "KMS request refused");
            return e.into_response();
        }
    };
    match &caller {
        Caller::User(user) => {
            let policy = UserPolicy { user };
            let caller = ssmx_kms::Caller {
                principal: Some(&user.arn),
                policy: Some(&policy),
            };
            hub.kms.handle_as(caller, target, body).into_response()
        }
        Caller::Agent { instance_id } => {
            if let Err(e) = agent_may_decrypt(hub, instance_id, target, body) {
                tracing::info!(instance = %instance_id, message = %e.message, "KMS request refused");
                return refusal(e);
            }
            let arn = hub.instance_arn(instance_id);
            hub.kms.handle(Some(&arn), target, body).into_response()
        }
    }
}

/// A user's policies, as the key service asks them (keys carry no tags here).
struct UserPolicy<'a> {
    user: &'a Principal,
}

impl ssmx_kms::IdentityPolicy for UserPolicy<'_> {
    fn check(&self, action: &str, resource: &str) -> Result<(), String> {
        self.user
            .authorize(action, &Resource::untagged(resource.to_owned()))
            .map_err(|e| e.message)
    }
}

/// The part of a Decrypt request the agent check reads.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DecryptContext {
    #[serde(default)]
    encryption_context: BTreeMap<String, String>,
}

/// Allows an agent's Decrypt only for a live session on that agent.
fn agent_may_decrypt(
    hub: &Hub,
    instance_id: &str,
    target: &str,
    body: &[u8],
) -> Result<(), KmsError> {
    let denied = |message: String| KmsError::new(KmsErrorCode::AccessDenied, message);
    if target != AGENT_OPERATION {
        return Err(denied(format!(
            "agent credentials may only call {AGENT_OPERATION}, not {target}"
        )));
    }
    let request: DecryptContext = serde_json::from_slice(body).map_err(|e| {
        KmsError::new(
            KmsErrorCode::Validation,
            format!("the Decrypt request body is not valid: {e}"),
        )
    })?;
    let context = &request.encryption_context;
    let named_target = context.get(context_key::TARGET_ID).map(String::as_str);
    if named_target != Some(instance_id) {
        return Err(denied(format!(
            "an agent may only decrypt data keys whose encryption context names it as {} (got {:?})",
            context_key::TARGET_ID,
            named_target.unwrap_or("")
        )));
    }
    let session_id = context
        .get(context_key::SESSION_ID)
        .map(String::as_str)
        .unwrap_or("");
    match hub.session(session_id) {
        Some(session) if session.target == instance_id && !session.is_ended() => Ok(()),
        _ => Err(denied(format!(
            "session {session_id:?} is not an active session on {instance_id}"
        ))),
    }
}

fn refusal(e: KmsError) -> Response {
    ssmx_kms::KmsResponse {
        status: e.code.status(),
        body: e.to_json(),
    }
    .into_response()
}
