//! The official agent's OnPrem operations (OFFICIAL-AGENT.md §4): RegisterManagedInstance
//! (unsigned: the activation code is the proof), and RequestManagedInstanceRoleToken and
//! UpdateManagedInstancePublicKey (signed with the instance's RSA key, verified by the caller).

use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use super::{validation, ApiResult};
use crate::error::{ApiError, ErrorCode};
use crate::hub::Hub;
use crate::store::RegisterError;

/// Operations signed with the instance's RSA key instead of an access key.
pub(crate) const RSA_SIGNED: [&str; 2] = [
    "RequestManagedInstanceRoleToken",
    "UpdateManagedInstancePublicKey",
];

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RegisterManagedInstanceInput {
    #[serde(default)]
    activation_code: String,
    #[serde(default)]
    activation_id: String,
    #[serde(default)]
    fingerprint: String,
    #[serde(default)]
    public_key: String,
    #[serde(default)]
    public_key_type: String,
}

/// The DER key of a `PublicKey` field: standard base64 of an RSA SubjectPublicKeyInfo.
fn rsa_key(field: &str, text: &str, key_type: &str) -> Result<Vec<u8>, ApiError> {
    if !key_type.is_empty() && key_type != "Rsa" {
        return Err(validation(format!(
            "{field}Type must be Rsa, not {key_type:?}"
        )));
    }
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
        .filter(|der| crate::sigv4::rsa_public_key(der).is_some())
        .ok_or_else(|| {
            validation(format!(
                "{field} must be the base64 of an RSA SubjectPublicKeyInfo"
            ))
        })
}

/// `RegisterManagedInstance`: a new managed instance for the activation, keeping its key.
pub(crate) fn register_managed_instance(
    hub: &Hub,
    input: RegisterManagedInstanceInput,
) -> ApiResult {
    if input.fingerprint.is_empty() {
        return Err(validation("Fingerprint is required"));
    }
    let public_key = rsa_key("PublicKey", &input.public_key, &input.public_key_type)?;
    let instance_id = hub
        .store
        .register_managed_instance(
            &input.activation_id,
            &input.activation_code,
            &public_key,
            &input.fingerprint,
        )
        .map_err(|e| match e {
            RegisterError::Store(e) => ApiError::internal(e),
            RegisterError::Expired => ApiError::new(ErrorCode::ActivationExpired, e.to_string()),
            refused => ApiError::new(ErrorCode::InvalidActivation, refused.to_string()),
        })?;
    hub.store.audit(
        &instance_id,
        "RegisterManagedInstance",
        &instance_id,
        "",
        &format!("activation {}", input.activation_id),
    )?;
    info!(instance = %instance_id, "managed instance registered");
    Ok(json!({ "InstanceId": instance_id }))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RoleTokenInput {
    #[serde(default)]
    fingerprint: String,
}

/// `RequestManagedInstanceRoleToken`: temporary credentials for an instance whose fingerprint
/// is the registered one.
pub(crate) fn request_role_token(hub: &Hub, instance_id: &str, input: RoleTokenInput) -> ApiResult {
    let key = hub.store.instance_key(instance_id)?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidInstanceId,
            format!("{instance_id} is not registered"),
        )
    })?;
    if input.fingerprint != key.fingerprint {
        return Err(ApiError::new(
            ErrorCode::MachineFingerprintDoesNotMatch,
            "Fingerprint does not match",
        ));
    }
    let issued = hub.store.issue_role_credentials(instance_id)?;
    let expires = issued
        .expires_at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as f64
        / 1000.0;
    Ok(json!({
        "AccessKeyId": issued.access_key_id,
        "SecretAccessKey": issued.secret_access_key,
        "SessionToken": issued.session_token,
        "TokenExpirationDate": expires,
        "UpdateKeyPair": false,
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct NewPublicKeyInput {
    #[serde(default)]
    new_public_key: String,
    #[serde(default)]
    new_public_key_type: String,
}

/// `UpdateManagedInstancePublicKey`: the instance rotates its key (signed with the old one).
pub(crate) fn update_public_key(
    hub: &Hub,
    instance_id: &str,
    input: NewPublicKeyInput,
) -> ApiResult {
    let public_key = rsa_key(
        "NewPublicKey",
        &input.new_public_key,
        &input.new_public_key_type,
    )?;
    if !hub.store.replace_instance_key(instance_id, &public_key)? {
        return Err(ApiError::new(
            ErrorCode::InvalidInstanceId,
            format!("{instance_id} is not registered"),
        ));
    }
    hub.store.audit(
        instance_id,
        "UpdateManagedInstancePublicKey",
        instance_id,
        "",
        "",
    )?;
    info!(instance = %instance_id, "managed instance rotated its key");
    Ok(json!({}))
}

/// Answers the association calls of an agent: this gateway runs no State Manager associations,
/// so there are none (OFFICIAL-AGENT.md §7.2).
pub(crate) fn no_associations() -> ApiResult {
    Ok(json!({ "Associations": [] }))
}
