//! Fleet operations: GetConnectionStatus, DeregisterManagedInstance, DescribeActivations,
//! DeleteActivation.

use std::time::SystemTime;

use serde::Deserialize;
use serde_json::json;

use super::{epoch_seconds, paginate, validation, ApiResult};
use crate::error::{ApiError, ErrorCode};
use crate::fleet::ActivationRecord;
use crate::hub::Hub;

const DEFAULT_ACTIVATION_PAGE: u64 = 50;
const MAX_ACTIVATION_PAGE: u64 = 50;

#[derive(Debug, Deserialize)]
pub(super) struct TargetInput {
    #[serde(rename = "Target", default)]
    target: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct InstanceIdInput {
    #[serde(rename = "InstanceId", default)]
    instance_id: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct ActivationIdInput {
    #[serde(rename = "ActivationId", default)]
    activation_id: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct DescribeActivationsInput {
    #[serde(rename = "Filters", default)]
    filters: Vec<ActivationFilter>,
    #[serde(rename = "MaxResults")]
    max_results: Option<i64>,
    #[serde(rename = "NextToken")]
    next_token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ActivationFilter {
    #[serde(rename = "FilterKey", default)]
    key: String,
    #[serde(rename = "FilterValues", default)]
    values: Vec<String>,
}

pub(super) fn get_connection_status(hub: &Hub, input: TargetInput) -> ApiResult {
    if input.target.is_empty() {
        return Err(validation("Target is required"));
    }
    let status = match hub.agent_online(&input.target) {
        true => "connected",
        false => "notconnected",
    };
    Ok(json!({ "Target": input.target, "Status": status }))
}

pub(super) fn deregister_managed_instance(
    hub: &Hub,
    owner_arn: &str,
    input: InstanceIdInput,
) -> ApiResult {
    if !hub.store.deregister_instance(&input.instance_id)? {
        return Err(ApiError::new(
            ErrorCode::InvalidInstanceId,
            format!("{} is not a registered managed instance", input.instance_id),
        ));
    }
    // Its credential is gone with its row; the channel it holds is closed now.
    hub.disconnect_agent(&input.instance_id);
    hub.mailboxes.forget(&input.instance_id);
    hub.store.audit(
        owner_arn,
        "DeregisterManagedInstance",
        &input.instance_id,
        "",
        "",
    )?;
    Ok(json!({}))
}

pub(super) fn delete_activation(hub: &Hub, owner_arn: &str, input: ActivationIdInput) -> ApiResult {
    if !hub.store.delete_activation(&input.activation_id)? {
        return Err(ApiError::new(
            ErrorCode::InvalidActivationId,
            format!("activation {} does not exist", input.activation_id),
        ));
    }
    hub.store
        .audit(owner_arn, "DeleteActivation", "", "", &input.activation_id)?;
    Ok(json!({}))
}

fn activation_json(a: &ActivationRecord, now: SystemTime) -> serde_json::Value {
    json!({
        "ActivationId": a.activation_id,
        "Description": a.description,
        "DefaultInstanceName": a.default_instance_name,
        "IamRole": a.iam_role,
        "RegistrationLimit": a.registration_limit,
        "RegistrationsCount": a.registrations,
        "ExpirationDate": epoch_seconds(a.expires_at),
        "Expired": a.expires_at <= now,
        "CreatedDate": epoch_seconds(a.created_at),
        "Tags": [],
    })
}

pub(super) fn describe_activations(hub: &Hub, input: DescribeActivationsInput) -> ApiResult {
    for f in &input.filters {
        if !matches!(
            f.key.as_str(),
            "ActivationIds" | "DefaultInstanceName" | "IamRole"
        ) {
            return Err(validation(format!(
                "FilterKey {:?} must be ActivationIds, DefaultInstanceName or IamRole",
                f.key
            )));
        }
    }
    let listed: Vec<ActivationRecord> = hub
        .store
        .activations()?
        .into_iter()
        .filter(|a| {
            input.filters.iter().all(|f| {
                let field = match f.key.as_str() {
                    "ActivationIds" => &a.activation_id,
                    "DefaultInstanceName" => &a.default_instance_name,
                    _ => &a.iam_role,
                };
                f.values.iter().any(|v| v == field)
            })
        })
        .collect();
    let (page, next) = paginate(
        listed,
        input.max_results,
        input.next_token.as_deref(),
        (DEFAULT_ACTIVATION_PAGE, 1, MAX_ACTIVATION_PAGE),
    )?;
    let now = SystemTime::now();
    let page: Vec<_> = page.iter().map(|a| activation_json(a, now)).collect();
    let mut out = json!({ "ActivationList": page });
    if let Some(next) = next {
        out["NextToken"] = json!(next);
    }
    Ok(out)
}
