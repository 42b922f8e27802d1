//! Run Command operations: SendCommand, ListCommands, ListCommandInvocations,
//! GetCommandInvocation, CancelCommand (RUNCOMMAND.md §1). Typed inputs and outputs with the
//! model's member names.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use ssmx_protocol::command::PluginResult;

use super::{epoch_seconds, paginate, parse_date, validation, ApiResult};
use crate::commands::output::{self, Stream};
use crate::commands::{self, documents, status, summarise, CommandRecord, InvocationRecord, Limit};
use crate::error::{ApiError, ErrorCode};
use crate::hub::Hub;
use crate::tags::TagSelector;

/// The default and most results of ListCommands / ListCommandInvocations.
const MAX_PAGE: u64 = 50;
/// Most instance ids in one SendCommand.
const MAX_INSTANCE_IDS: usize = 50;
/// TimeoutSeconds bounds (delivery timeout) and default.
const TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 30..=2_592_000;
const DEFAULT_TIMEOUT_SECONDS: u64 = 3600;

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub(super) struct Target {
    #[serde(rename = "Key", default)]
    key: String,
    #[serde(rename = "Values", default)]
    values: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct SendCommandInput {
    #[serde(rename = "DocumentName")]
    document_name: String,
    #[serde(rename = "InstanceIds", default)]
    instance_ids: Vec<String>,
    #[serde(rename = "Targets", default)]
    targets: Vec<Target>,
    #[serde(rename = "DocumentVersion")]
    document_version: Option<String>,
    #[serde(rename = "TimeoutSeconds")]
    timeout_seconds: Option<u64>,
    #[serde(rename = "Comment", default)]
    comment: String,
    #[serde(rename = "Parameters", default)]
    parameters: BTreeMap<String, Vec<String>>,
    #[serde(rename = "MaxConcurrency")]
    max_concurrency: Option<String>,
    #[serde(rename = "MaxErrors")]
    max_errors: Option<String>,
}

/// The model's `Command`.
#[derive(Debug, Serialize)]
struct CommandOutput {
    #[serde(rename = "CommandId")]
    command_id: String,
    #[serde(rename = "DocumentName")]
    document_name: String,
    #[serde(rename = "DocumentVersion")]
    document_version: &'static str,
    #[serde(rename = "Comment")]
    comment: String,
    #[serde(rename = "ExpiresAfter")]
    expires_after: f64,
    #[serde(rename = "Parameters")]
    parameters: Value,
    #[serde(rename = "InstanceIds")]
    instance_ids: Value,
    #[serde(rename = "Targets")]
    targets: Value,
    #[serde(rename = "RequestedDateTime")]
    requested_date_time: f64,
    #[serde(rename = "Status")]
    status: &'static str,
    #[serde(rename = "StatusDetails")]
    status_details: &'static str,
    #[serde(rename = "OutputS3Region")]
    output_s3_region: String,
    #[serde(rename = "OutputS3BucketName")]
    output_s3_bucket_name: &'static str,
    #[serde(rename = "OutputS3KeyPrefix")]
    output_s3_key_prefix: &'static str,
    #[serde(rename = "MaxConcurrency")]
    max_concurrency: String,
    #[serde(rename = "MaxErrors")]
    max_errors: String,
    #[serde(rename = "TargetCount")]
    target_count: u64,
    #[serde(rename = "CompletedCount")]
    completed_count: u64,
    #[serde(rename = "ErrorCount")]
    error_count: u64,
    #[serde(rename = "DeliveryTimedOutCount")]
    delivery_timed_out_count: u64,
    #[serde(rename = "ServiceRole")]
    service_role: &'static str,
    #[serde(rename = "CloudWatchOutputConfig")]
    cloud_watch_output_config: CloudWatchOutputConfig,
    #[serde(rename = "TimeoutSeconds")]
    timeout_seconds: u64,
}

#[derive(Debug, Default, Serialize)]
struct CloudWatchOutputConfig {
    #[serde(rename = "CloudWatchLogGroupName")]
    cloud_watch_log_group_name: &'static str,
    #[serde(rename = "CloudWatchOutputEnabled")]
    cloud_watch_output_enabled: bool,
}

fn command_output(
    hub: &Hub,
    command: &CommandRecord,
    invocations: &[InvocationRecord],
) -> CommandOutput {
    let summary = summarise(command, invocations);
    let json = |text: &str| serde_json::from_str(text).unwrap_or(Value::Null);
    CommandOutput {
        command_id: command.command_id.clone(),
        document_name: command.document_name.clone(),
        document_version: "$DEFAULT",
        comment: command.comment.clone(),
        expires_after: epoch_seconds(command.expires_at),
        parameters: json(&command.requested_parameters),
        instance_ids: json(&command.instance_ids),
        targets: json(&command.targets),
        requested_date_time: epoch_seconds(command.requested_at),
        status: summary.status,
        status_details: summary.status_details,
        output_s3_region: hub.settings.region.clone(),
        output_s3_bucket_name: "",
        output_s3_key_prefix: "",
        max_concurrency: command.max_concurrency.clone(),
        max_errors: command.max_errors.clone(),
        target_count: summary.target_count,
        completed_count: summary.completed_count,
        error_count: summary.error_count,
        delivery_timed_out_count: summary.delivery_timed_out_count,
        service_role: "",
        cloud_watch_output_config: CloudWatchOutputConfig::default(),
        timeout_seconds: command.timeout_seconds,
    }
}

/// Targets one SendCommand takes.
const MAX_TARGETS: usize = 5;

/// The instances a SendCommand names, in order, without repeats: its InstanceIds, or the
/// instances every one of its Targets matches (`InstanceIds`, `tag:<name>` with any of the
/// values, `tag-key` with any of the keys). Tag targets may match nothing; named instances must
/// exist.
fn target_instances(hub: &Hub, input: &SendCommandInput) -> Result<Vec<String>, ApiError> {
    if input.instance_ids.is_empty() == input.targets.is_empty() {
        return Err(validation(
            "exactly one of InstanceIds and Targets must be given",
        ));
    }
    if input.instance_ids.len() > MAX_INSTANCE_IDS {
        return Err(validation(format!(
            "InstanceIds takes at most {MAX_INSTANCE_IDS} instance ids"
        )));
    }
    if input.targets.len() > MAX_TARGETS {
        return Err(validation(format!(
            "Targets takes at most {MAX_TARGETS} targets"
        )));
    }
    let mut wanted: Option<Vec<String>> =
        (!input.instance_ids.is_empty()).then(|| input.instance_ids.clone());
    for target in &input.targets {
        if target.values.is_empty() {
            return Err(validation(format!(
                "target {:?} needs at least one value",
                target.key
            )));
        }
        let matched = if target.key == "InstanceIds" {
            target.values.clone()
        } else if let Some(selector) = TagSelector::from_key(&target.key, &target.values) {
            hub.store.instances_tagged(&selector)?
        } else {
            return Err(validation(format!(
                "target key {:?} is not supported (InstanceIds, tag:<name> or tag-key)",
                target.key
            )));
        };
        wanted = Some(match wanted {
            None => matched,
            Some(so_far) => so_far
                .into_iter()
                .filter(|id| matched.contains(id))
                .collect(),
        });
    }
    let mut wanted = wanted.unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    wanted.retain(|id| seen.insert(id.clone()));
    let unknown: Vec<&String> = wanted
        .iter()
        .filter(|id| !matches!(hub.store.instance(id), Ok(Some(_))))
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidInstanceId,
            format!(
                "Instances {unknown:?} not in a valid state for account {}",
                hub.settings.account_id
            ),
        ));
    }
    Ok(wanted)
}

pub(super) async fn send_command(
    hub: &Hub,
    principal: &crate::access::Principal,
    input: SendCommandInput,
) -> ApiResult {
    let owner_arn = principal.arn.as_str();
    let document = crate::catalog::command_document(
        &hub.store,
        &hub.documents,
        &input.document_name,
        input.document_version.as_deref(),
    )?;
    if input.comment.chars().count() > 100 {
        return Err(validation("Comment is at most 100 characters"));
    }
    let timeout_seconds = input.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS);
    if !TIMEOUT_RANGE.contains(&timeout_seconds) {
        return Err(validation(format!(
            "TimeoutSeconds must be {} to {}",
            TIMEOUT_RANGE.start(),
            TIMEOUT_RANGE.end()
        )));
    }
    let max_concurrency = input.max_concurrency.clone().unwrap_or_else(|| "50".into());
    let max_errors = input.max_errors.clone().unwrap_or_else(|| "0".into());
    if Limit::parse(&max_concurrency, false).is_none() {
        return Err(validation(format!("MaxConcurrency {max_concurrency:?} must be a number from 1 or a percentage from 1% to 100%")));
    }
    if Limit::parse(&max_errors, true).is_none() {
        return Err(validation(format!(
            "MaxErrors {max_errors:?} must be a number from 0 or a percentage from 1% to 100%"
        )));
    }
    let parameters = documents::resolve_parameters(&document, &input.parameters)?;
    let instances = target_instances(hub, &input)?;
    // Every node must be allowed before anything is queued anywhere.
    principal.authorize(
        "ssm:SendCommand",
        &super::authorize::document(hub, &document.name)?,
    )?;
    for instance_id in &instances {
        principal.authorize(
            "ssm:SendCommand",
            &super::authorize::instance(hub, instance_id)?,
        )?;
    }
    let now = SystemTime::now();
    let expires_at =
        now + Duration::from_secs(timeout_seconds + document.execution_timeout(&parameters));
    let command = CommandRecord {
        command_id: uuid::Uuid::new_v4().to_string(),
        owner: owner_arn.to_owned(),
        document_name: document.name.clone(),
        document_content: document.content.to_string(),
        comment: input.comment.clone(),
        parameters: serde_json::to_string(&parameters).unwrap_or_default(),
        requested_parameters: serde_json::to_string(&input.parameters).unwrap_or_default(),
        instance_ids: serde_json::to_string(&input.instance_ids).unwrap_or_default(),
        targets: serde_json::to_string(&input.targets).unwrap_or_default(),
        requested_at: now,
        expires_at,
        timeout_seconds,
        max_concurrency,
        max_errors,
        cancel_requested: false,
    };
    hub.store.insert_command(&command, &instances)?;
    commands::advance(hub, &command.command_id).await;
    let invocations = hub.store.invocations(&command.command_id)?;
    Ok(serde_json::json!({ "Command": command_output(hub, &command, &invocations) }))
}

#[derive(Debug, Deserialize)]
pub(super) struct Filter {
    #[serde(rename = "key")]
    key: String,
    #[serde(rename = "value")]
    value: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct ListInput {
    #[serde(rename = "CommandId")]
    command_id: Option<String>,
    #[serde(rename = "InstanceId")]
    instance_id: Option<String>,
    #[serde(rename = "MaxResults")]
    max_results: Option<i64>,
    #[serde(rename = "NextToken")]
    next_token: Option<String>,
    #[serde(rename = "Filters", default)]
    filters: Vec<Filter>,
    #[serde(rename = "Details", default)]
    details: bool,
}

/// Whether a command passes ListCommands/ListCommandInvocations filters.
fn passes(filters: &[Filter], command: &CommandRecord, status: &str) -> Result<bool, ApiError> {
    for f in filters {
        let ok = match f.key.as_str() {
            "Status" => f.value == status,
            "DocumentName" => f.value == command.document_name,
            "InvokedAfter" => command.requested_at >= parse_date("InvokedAfter", &f.value)?,
            "InvokedBefore" => command.requested_at <= parse_date("InvokedBefore", &f.value)?,
            "ExecutionStage" => match f.value.as_str() {
                "Executing" => !status::is_terminal(status),
                "Complete" => status::is_terminal(status),
                other => return Err(ApiError::new(ErrorCode::InvalidFilterKey, format!("ExecutionStage {other:?} must be Executing or Complete"))),
            },
            other => {
                return Err(ApiError::new(
                    ErrorCode::InvalidFilterKey,
                    format!("filter key {other:?} is not one of InvokedAfter, InvokedBefore, Status, ExecutionStage, DocumentName"),
                ))
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The commands a list call is about: one, or all (newest first).
fn listed_commands(hub: &Hub, input: &ListInput) -> Result<Vec<CommandRecord>, ApiError> {
    match &input.command_id {
        Some(id) => match hub.store.command(id)? {
            Some(c) => Ok(vec![c]),
            None => Err(ApiError::new(
                ErrorCode::InvalidCommandId,
                format!("command {id} does not exist"),
            )),
        },
        None => Ok(hub
            .store
            .commands(input.instance_id.as_deref(), 0, u64::MAX >> 1)?),
    }
}

/// One page of `items` after the offset in `next_token`.
fn page<T: Serialize>(
    items: Vec<T>,
    input: &ListInput,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    paginate(
        items,
        input.max_results,
        input.next_token.as_deref(),
        (MAX_PAGE, 1, MAX_PAGE),
    )
}

pub(super) fn list_commands(hub: &Hub, input: ListInput) -> ApiResult {
    let mut out = Vec::new();
    for command in listed_commands(hub, &input)? {
        let invocations = hub.store.invocations(&command.command_id)?;
        let output = command_output(hub, &command, &invocations);
        if passes(&input.filters, &command, output.status)? {
            out.push(output);
        }
    }
    let (commands, next) = page(out, &input)?;
    let mut answer = serde_json::json!({ "Commands": commands });
    if let Some(next) = next {
        answer["NextToken"] = next.into();
    }
    Ok(answer)
}

/// Plugin ids of a document, in order: schema 1.2 `runtimeConfig` keys (or property ids), 2.x
/// step names.
fn plugin_names(content: &Value) -> Vec<String> {
    if let Some(steps) = content.get("mainSteps").and_then(Value::as_array) {
        return steps
            .iter()
            .filter_map(|s| s.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect();
    }
    content
        .get("runtimeConfig")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn iso_to_epoch(text: &str) -> Option<f64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| epoch_seconds(SystemTime::from(t)))
}

/// The plugins of an invocation: the agent's results, and Pending entries for the rest.
fn invocation_plugins(
    command: &CommandRecord,
    inv: &InvocationRecord,
) -> Vec<(String, Option<PluginResult>)> {
    let results: BTreeMap<String, PluginResult> =
        serde_json::from_str(&inv.plugins).unwrap_or_default();
    let content: Value = serde_json::from_str(&command.document_content).unwrap_or_default();
    let mut names = plugin_names(&content);
    for name in results.keys() {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
        .into_iter()
        .map(|n| {
            let r = results.get(&n).cloned();
            (n, r)
        })
        .collect()
}

/// The public status of one plugin.
fn plugin_status(inv: &InvocationRecord, result: Option<&PluginResult>) -> (String, String, i64) {
    match result {
        Some(r) if !r.status.is_empty() => {
            let details = if r.status == "TimedOut" {
                status::EXECUTION_TIMED_OUT.to_owned()
            } else {
                r.status.clone()
            };
            (r.status.clone(), details, r.code)
        }
        _ if status::is_terminal(&inv.status) => (
            inv.status.clone(),
            inv.status_details.clone(),
            inv.response_code,
        ),
        _ => (status::PENDING.to_owned(), status::PENDING.to_owned(), -1),
    }
}

/// The URLs of one plugin's whole stdout and stderr at this gateway.
fn output_urls(
    base: &str,
    command: &CommandRecord,
    inv: &InvocationRecord,
    plugin: &str,
) -> (String, String) {
    let url = |stream| output::url(base, &command.command_id, &inv.instance_id, plugin, stream);
    (url(Stream::Stdout), url(Stream::Stderr))
}

fn invocation_json(
    hub: &Hub,
    base: &str,
    command: &CommandRecord,
    inv: &InvocationRecord,
    details: bool,
) -> Value {
    let instance_name = hub
        .store
        .instance(&inv.instance_id)
        .ok()
        .flatten()
        .map(|i| i.info.computer_name)
        .unwrap_or_default();
    let plugins = invocation_plugins(command, inv);
    let trace: String = plugins
        .iter()
        .filter_map(|(_, r)| r.as_ref().map(|r| r.output.clone()))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = serde_json::json!({
        "CommandId": command.command_id,
        "InstanceId": inv.instance_id,
        "InstanceName": instance_name,
        "Comment": command.comment,
        "DocumentName": command.document_name,
        "DocumentVersion": "$DEFAULT",
        "RequestedDateTime": epoch_seconds(command.requested_at),
        "Status": inv.status,
        "StatusDetails": inv.status_details,
        "TraceOutput": ssmx_protocol::command::truncate_chars(&trace, 2500),
        "StandardOutputUrl": "",
        "StandardErrorUrl": "",
        "CommandPlugins": [],
        "ServiceRole": "",
        "NotificationConfig": {"NotificationArn": "", "NotificationEvents": [], "NotificationType": ""},
        "CloudWatchOutputConfig": {"CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": false},
    });
    // As on AWS, the invocation names output URLs only when its document has one plugin.
    if let [(name, _)] = plugins.as_slice() {
        let (stdout, stderr) = output_urls(base, command, inv, name);
        out["StandardOutputUrl"] = stdout.into();
        out["StandardErrorUrl"] = stderr.into();
    }
    if details {
        let entries: Vec<Value> = plugins
            .iter()
            .map(|(name, result)| {
                let (status, status_details, code) = plugin_status(inv, result.as_ref());
                let (stdout_url, stderr_url) = output_urls(base, command, inv, name);
                let mut p = serde_json::json!({
                    "Name": name,
                    "Status": status,
                    "StatusDetails": status_details,
                    "ResponseCode": code,
                    "Output": result.as_ref().map(|r| r.output.clone()).unwrap_or_default(),
                    "StandardOutputUrl": stdout_url,
                    "StandardErrorUrl": stderr_url,
                    "OutputS3Region": hub.settings.region,
                    "OutputS3BucketName": "",
                    "OutputS3KeyPrefix": "",
                });
                if let Some(r) = result {
                    if let Some(t) = iso_to_epoch(&r.start_date_time) {
                        p["ResponseStartDateTime"] = t.into();
                    }
                    if let Some(t) = iso_to_epoch(&r.end_date_time) {
                        p["ResponseFinishDateTime"] = t.into();
                    }
                }
                p
            })
            .collect();
        out["CommandPlugins"] = entries.into();
    }
    out
}

pub(super) fn list_command_invocations(hub: &Hub, base: &str, input: ListInput) -> ApiResult {
    let mut out = Vec::new();
    for command in listed_commands(hub, &input)? {
        for inv in hub.store.invocations(&command.command_id)? {
            if input
                .instance_id
                .as_ref()
                .is_some_and(|i| i != &inv.instance_id)
            {
                continue;
            }
            if passes(&input.filters, &command, &inv.status)? {
                out.push(invocation_json(hub, base, &command, &inv, input.details));
            }
        }
    }
    let (invocations, next) = page(out, &input)?;
    let mut answer = serde_json::json!({ "CommandInvocations": invocations });
    if let Some(next) = next {
        answer["NextToken"] = next.into();
    }
    Ok(answer)
}

#[derive(Debug, Deserialize)]
pub(super) struct GetCommandInvocationInput {
    #[serde(rename = "CommandId")]
    command_id: String,
    #[serde(rename = "InstanceId")]
    instance_id: String,
    #[serde(rename = "PluginName")]
    plugin_name: Option<String>,
}

/// `PT0.541S`.
fn elapsed(start: &str, end: &str) -> String {
    match (
        chrono::DateTime::parse_from_rfc3339(start),
        chrono::DateTime::parse_from_rfc3339(end),
    ) {
        (Ok(s), Ok(e)) => {
            let ms = (e - s).num_milliseconds().max(0);
            format!("PT{}.{:03}S", ms / 1000, ms % 1000)
        }
        _ => String::new(),
    }
}

pub(super) fn get_command_invocation(
    hub: &Hub,
    base: &str,
    input: GetCommandInvocationInput,
) -> ApiResult {
    let missing = || {
        ApiError::new(
            ErrorCode::InvocationDoesNotExist,
            "An error occurred (InvocationDoesNotExist)",
        )
    };
    let command = hub.store.command(&input.command_id)?.ok_or_else(missing)?;
    let inv = hub
        .store
        .invocation(&input.command_id, &input.instance_id)?
        .ok_or_else(missing)?;
    let plugins = invocation_plugins(&command, &inv);
    let chosen = match &input.plugin_name {
        Some(name) => plugins.iter().find(|(n, _)| n == name).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidPluginName,
                format!("the document has no plugin or step {name:?}"),
            )
        })?,
        None => plugins.first().ok_or_else(missing)?,
    };
    let (name, result) = chosen;
    let result = result.clone().unwrap_or_default();
    let single = plugins.len() == 1 || input.plugin_name.is_some();
    // A plugin's own result once it has one; until then (and for a multi-step document asked
    // without PluginName) the invocation's.
    let (status, details, code) = if single && !result.status.is_empty() {
        plugin_status(&inv, Some(&result))
    } else {
        (
            inv.status.clone(),
            inv.status_details.clone(),
            inv.response_code,
        )
    };
    let limits = |text: &str, n| ssmx_protocol::command::truncate_chars(text, n).to_owned();
    let (stdout_url, stderr_url) = output_urls(base, &command, &inv, name);
    Ok(serde_json::json!({
        "CommandId": command.command_id,
        "InstanceId": inv.instance_id,
        "Comment": command.comment,
        "DocumentName": command.document_name,
        "DocumentVersion": "$DEFAULT",
        "PluginName": name,
        "ResponseCode": code,
        "ExecutionStartDateTime": result.start_date_time,
        "ExecutionElapsedTime": elapsed(&result.start_date_time, &result.end_date_time),
        "ExecutionEndDateTime": result.end_date_time,
        "Status": status,
        "StatusDetails": details,
        "StandardOutputContent": limits(&result.standard_output, 24_000),
        "StandardOutputUrl": stdout_url,
        "StandardErrorContent": limits(&result.standard_error, 8_000),
        "StandardErrorUrl": stderr_url,
        "CloudWatchOutputConfig": {"CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": false},
    }))
}

#[derive(Debug, Deserialize)]
pub(super) struct CancelCommandInput {
    #[serde(rename = "CommandId")]
    command_id: String,
    #[serde(rename = "InstanceIds", default)]
    instance_ids: Vec<String>,
}

pub(super) async fn cancel_command(hub: &Hub, input: CancelCommandInput) -> ApiResult {
    let command = hub.store.command(&input.command_id)?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidCommandId,
            format!("command {} does not exist", input.command_id),
        )
    })?;
    commands::cancel(hub, &command, &input.instance_ids).await;
    Ok(serde_json::json!({}))
}
