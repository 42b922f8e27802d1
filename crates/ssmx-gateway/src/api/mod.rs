//! The SSM JSON API (awsJson1_1 on `POST /`, PROTOCOL.md §12) and the agent registration
//! endpoint `POST /ssmx/v1/register`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use ssmx_protocol::payload::AgentTaskPayload;
use tracing::{info, Instrument as _};

use crate::error::{ApiError, ErrorCode};
use crate::hub::{Caller, Hub};
use crate::recording::{Format, Recorder};
use crate::session::{Event, NewSession, Session, TERMINATE_WAIT};
use crate::sigv4::RequestParts;
use crate::store::{
    self, status, InstanceInfo, NewActivation, RegisterError, SessionQuery, SessionRecord,
};
use crate::tokens::Purpose;

pub(crate) mod authorize;
mod commands;
mod documents;
mod fleet;
mod onprem;
mod tags;

/// Largest API request body accepted; SSM requests are a few KiB.
pub const MAX_API_BODY: usize = 1024 * 1024;
const TARGET_PREFIX: &str = "AmazonSSM.";
const DEFAULT_SESSION_PAGE: u64 = 20;
const MAX_SESSION_PAGE: u64 = 200;
const DEFAULT_INSTANCE_PAGE: u64 = 10;
const MAX_INSTANCE_PAGE: u64 = 50;

type ApiResult = Result<Value, ApiError>;

/// `POST /`: dispatches on `X-Amz-Target`.
pub(crate) async fn handle(
    State(hub): State<Arc<Hub>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if ssmx_kms::is_kms_target(&target) {
        let span = tracing::info_span!("kms", op = %target);
        return span.in_scope(|| crate::kms::handle(&hub, &target, &method, &uri, &headers, &body));
    }
    let (service, op) = match target.strip_prefix(crate::mds::TARGET_PREFIX) {
        Some(op) => (crate::mds::SERVICE, op.to_owned()),
        None => (
            "ssm",
            target.strip_prefix(TARGET_PREFIX).unwrap_or("").to_owned(),
        ),
    };
    let span = tracing::info_span!("api", service, op = %op);
    async move {
        let parts = RequestParts {
            method: &method,
            uri: &uri,
            headers: &headers,
            body: &body,
        };
        let result = if service == crate::mds::SERVICE {
            match hub.authenticate(parts, service, false) {
                Ok(Caller::Agent { instance_id }) => {
                    crate::mds::handle(&hub, &instance_id, &op, &body).await
                }
                Ok(Caller::User(_)) => Err(ApiError::new(
                    ErrorCode::AccessDenied,
                    "ec2messages is for agent credentials",
                )),
                Err(e) => Err(e.into()),
            }
        } else {
            dispatch(&hub, &op, parts).await
        };
        match result {
            Ok(value) => (
                StatusCode::OK,
                [(http::header::CONTENT_TYPE, "application/x-amz-json-1.1")],
                serde_json::to_vec(&value).unwrap_or_default(),
            )
                .into_response(),
            Err(e) => {
                info!(code = e.code.as_str(), message = %e.message, "request refused");
                e.into_response()
            }
        }
    }
    .instrument(span)
    .await
}

async fn dispatch(hub: &Arc<Hub>, op: &str, parts: RequestParts<'_>) -> ApiResult {
    let RequestParts {
        uri, headers, body, ..
    } = parts;
    // The official agent's registration is unsigned; its credential requests carry its RSA
    // signature (OFFICIAL-AGENT.md §4).
    if op == "RegisterManagedInstance" && !headers.contains_key(http::header::AUTHORIZATION) {
        return onprem::register_managed_instance(hub, parse(body)?);
    }
    if onprem::RSA_SIGNED.contains(&op) {
        let instance_id = hub.authenticate_instance_key(parts)?;
        return match op {
            "RequestManagedInstanceRoleToken" => {
                onprem::request_role_token(hub, &instance_id, parse(body)?)
            }
            _ => onprem::update_public_key(hub, &instance_id, parse(body)?),
        };
    }
    // Requests that mint tokens or activation codes must not work twice (see sigv4).
    let single_use = matches!(op, "StartSession" | "ResumeSession" | "CreateActivation");
    let caller = hub.authenticate(parts, "ssm", single_use)?;
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    if let Caller::User(principal) = &caller {
        authorize::check(hub, principal, op, body)?;
    }
    match (op, &caller) {
        ("UpdateInstanceInformation", Caller::Agent { instance_id }) => {
            update_instance_information(hub, instance_id, parse(body)?)
        }
        ("GetDocument", Caller::Agent { .. }) => documents::get_document(hub, parse(body)?),
        ("DescribeDocument", Caller::Agent { .. }) => {
            documents::describe_document(hub, parse(body)?)
        }
        ("ListInstanceAssociations" | "ListAssociations", Caller::Agent { .. }) => {
            onprem::no_associations()
        }
        ("StartSession", caller) => {
            let p = user(caller, op)?;
            start_session(hub, p, &host, parse(body)?).await
        }
        ("ResumeSession", caller) => {
            let p = user(caller, op)?;
            resume_session(hub, &p.arn, &host, parse(body)?)
        }
        ("TerminateSession", caller) => {
            let p = user(caller, op)?;
            terminate_session(hub, &p.arn, parse(body)?).await
        }
        ("DescribeSessions", caller) => {
            user(caller, op)?;
            describe_sessions(hub, parse(body)?)
        }
        ("DescribeInstanceInformation", caller) => {
            user(caller, op)?;
            describe_instance_information(hub, parse(body)?)
        }
        ("CreateActivation", caller) => {
            let p = user(caller, op)?;
            create_activation(hub, &p.arn, parse(body)?)
        }
        ("DescribeActivations", caller) => {
            user(caller, op)?;
            fleet::describe_activations(hub, parse(body)?)
        }
        ("DeleteActivation", caller) => {
            let p = user(caller, op)?;
            fleet::delete_activation(hub, &p.arn, parse(body)?)
        }
        ("DeregisterManagedInstance", caller) => {
            let p = user(caller, op)?;
            fleet::deregister_managed_instance(hub, &p.arn, parse(body)?)
        }
        ("GetConnectionStatus", caller) => {
            user(caller, op)?;
            fleet::get_connection_status(hub, parse(body)?)
        }
        ("SendCommand", caller) => {
            let p = user(caller, op)?;
            commands::send_command(hub, p, parse(body)?).await
        }
        ("ListCommands", caller) => {
            user(caller, op)?;
            commands::list_commands(hub, parse(body)?)
        }
        ("ListCommandInvocations", caller) => {
            user(caller, op)?;
            commands::list_command_invocations(hub, &base_url(hub, &host), parse(body)?)
        }
        ("GetCommandInvocation", caller) => {
            user(caller, op)?;
            commands::get_command_invocation(hub, &base_url(hub, &host), parse(body)?)
        }
        ("CancelCommand", caller) => {
            user(caller, op)?;
            commands::cancel_command(hub, parse(body)?).await
        }
        ("CreateDocument", caller) => {
            user(caller, op)?;
            documents::create_document(hub, parse(body)?)
        }
        ("GetDocument", caller) => {
            user(caller, op)?;
            documents::get_document(hub, parse(body)?)
        }
        ("DescribeDocument", caller) => {
            user(caller, op)?;
            documents::describe_document(hub, parse(body)?)
        }
        ("ListDocuments", caller) => {
            user(caller, op)?;
            documents::list_documents(hub, parse(body)?)
        }
        ("UpdateDocument", caller) => {
            user(caller, op)?;
            documents::update_document(hub, parse(body)?)
        }
        ("UpdateDocumentDefaultVersion", caller) => {
            user(caller, op)?;
            documents::update_document_default_version(hub, parse(body)?)
        }
        ("DeleteDocument", caller) => {
            user(caller, op)?;
            documents::delete_document(hub, parse(body)?)
        }
        ("AddTagsToResource", caller) => {
            user(caller, op)?;
            tags::add_tags_to_resource(hub, parse(body)?)
        }
        ("RemoveTagsFromResource", caller) => {
            user(caller, op)?;
            tags::remove_tags_from_resource(hub, parse(body)?)
        }
        ("ListTagsForResource", caller) => {
            user(caller, op)?;
            tags::list_tags_for_resource(hub, parse(body)?)
        }
        ("UpdateInstanceInformation", Caller::User(_)) => Err(ApiError::new(
            ErrorCode::AccessDenied,
            "UpdateInstanceInformation is for agent credentials",
        )),
        _ => Err(ApiError::new(
            ErrorCode::UnknownOperation,
            format!("operation {op:?} is not served by this gateway (X-Amz-Target must be AmazonSSM.<Operation>)"),
        )),
    }
}

pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorCode::Validation,
            format!("the request body is not valid for this operation: {e}"),
        )
    })
}

/// The user behind `caller`: the operations below are for users; agent credentials that call
/// one are refused.
fn user<'a>(caller: &'a Caller, op: &str) -> Result<&'a crate::access::Principal, ApiError> {
    match caller {
        Caller::User(p) => Ok(p),
        Caller::Agent { .. } => Err(ApiError::new(
            ErrorCode::AccessDenied,
            format!("agent credentials may not call {op}"),
        )),
    }
}

fn validation(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Validation, message)
}

fn check_len(field: &str, value: &str, min: usize, max: usize) -> Result<(), ApiError> {
    let n = value.chars().count();
    if n < min || n > max {
        return Err(validation(format!(
            "{field} must be {min} to {max} characters long (got {n})"
        )));
    }
    Ok(())
}

fn epoch_seconds(t: SystemTime) -> f64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_millis() as f64) / 1000.0
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StartSessionInput {
    target: Option<String>,
    document_name: Option<String>,
    reason: Option<String>,
    #[serde(default)]
    parameters: BTreeMap<String, Vec<String>>,
}

/// The gateway's base URL as callers reach it: `public_url`, else the scheme and the `Host` the
/// request came to.
fn base_url(hub: &Hub, host: &str) -> String {
    match &hub.settings.public_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let scheme = if hub.settings.tls { "https" } else { "http" };
            format!("{scheme}://{host}")
        }
    }
}

fn stream_url(hub: &Hub, host: &str, session_id: &str) -> String {
    let base = base_url(hub, host);
    let base = match base.strip_prefix("https://") {
        Some(rest) => format!("wss://{rest}"),
        None => format!("ws://{}", base.trim_start_matches("http://")),
    };
    format!("{base}/v1/data-channel/{session_id}?role=publish_subscribe")
}

async fn start_session(
    hub: &Arc<Hub>,
    principal: &crate::access::Principal,
    host: &str,
    input: StartSessionInput,
) -> ApiResult {
    let (user, owner_arn) = (principal.name.as_str(), principal.arn.as_str());
    let target = input
        .target
        .ok_or_else(|| validation("Target is required"))?;
    check_len("Target", &target, 1, 400)?;
    if let Some(name) = &input.document_name {
        if !crate::documents::valid_document_name(name) && !name.starts_with("arn:") {
            return Err(validation(format!(
                "DocumentName {name:?} must match [a-zA-Z0-9_\\-.:/]{{3,128}}"
            )));
        }
    }
    if let Some(reason) = &input.reason {
        check_len("Reason", reason, 1, 256)?;
    }
    let prepared = crate::catalog::prepare_session(
        &hub.store,
        &hub.documents,
        input.document_name.as_deref(),
        &input.parameters,
    )?;
    authorize::session_start(
        hub,
        principal,
        &target,
        input.document_name.as_deref(),
        &prepared.name,
    )?;
    if hub.store.instance(&target)?.is_none() || !hub.agent_online(&target) {
        return Err(ApiError::new(
            ErrorCode::TargetNotConnected,
            format!("{target} is not connected."),
        ));
    }
    let session_id = format!("{user}-{}", crate::secrets::random_hex(17));
    let task = AgentTaskPayload {
        session_id: session_id.clone(),
        document_name: prepared.name.clone(),
        document_content: prepared.content.clone(),
        parameters: prepared.parameters.clone(),
        run_as_user: principal.run_as().unwrap_or_default().to_owned(),
        session_owner: owner_arn.to_owned(),
    };
    let is_port = prepared.content.session_type == ssmx_protocol::payload::session_type::PORT;
    let wanted = prepared
        .inputs
        .recording
        .unwrap_or(!is_port || hub.settings.record_port_sessions);
    let recorder = match (
        &hub.settings.recordings_dir,
        wanted && prepared.inputs.kms_key_id.is_empty(),
    ) {
        (Some(dir), true) => {
            let format = if is_port {
                Format::ByteLog
            } else {
                Format::Asciicast
            };
            match Recorder::create(dir, &session_id, format).await {
                Ok(r) => Some(r),
                Err(e) => {
                    return Err(ApiError::internal(format!(
                        "cannot create the session recording in {}: {e}",
                        dir.display()
                    )))
                }
            }
        }
        _ => None,
    };
    let max = prepared.inputs.max_session_duration_minutes;
    hub.store.insert_session(&SessionRecord {
        session_id: session_id.clone(),
        target: target.clone(),
        owner: owner_arn.to_owned(),
        document_name: prepared.name.clone(),
        reason: input.reason.clone().unwrap_or_default(),
        status: status::CONNECTING.to_owned(),
        details: String::new(),
        start_date: SystemTime::now(),
        end_date: None,
        max_session_duration: if max > 0 {
            max.to_string()
        } else {
            String::new()
        },
        parameters: serde_json::to_string(&input.parameters).unwrap_or_default(),
        recording: recorder
            .as_ref()
            .map(|r| r.path().to_string_lossy().into_owned()),
    })?;
    hub.store.audit(
        owner_arn,
        "StartSession",
        &target,
        &session_id,
        &format!(
            "document {} parameters {}",
            prepared.name,
            serde_json::to_string(&input.parameters).unwrap_or_default()
        ),
    )?;
    Session::spawn(
        hub,
        NewSession {
            id: session_id.clone(),
            target: target.clone(),
            session_type: prepared.content.session_type.clone(),
            document: prepared.name.clone(),
            document_named: input.document_name.is_some(),
            owner_arn: owner_arn.to_owned(),
            idle_timeout_minutes: prepared.idle_timeout_minutes(),
            inputs: prepared.inputs.clone(),
            start_frame: task.to_message().to_bytes(),
            recorder,
        },
    );
    let token = hub.tokens().issue(
        Purpose::ClientData {
            session_id: session_id.clone(),
        },
        Instant::now(),
    );
    info!(session = %session_id, %target, document = %prepared.name, "session started");
    Ok(json!({
        "SessionId": session_id,
        "TokenValue": token,
        "StreamUrl": stream_url(hub, host, &session_id),
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SessionIdInput {
    session_id: Option<String>,
}

fn session_id_of(input: SessionIdInput) -> Result<String, ApiError> {
    let id = input
        .session_id
        .ok_or_else(|| validation("SessionId is required"))?;
    check_len("SessionId", &id, 1, 96)?;
    Ok(id)
}

fn resume_session(hub: &Hub, owner_arn: &str, host: &str, input: SessionIdInput) -> ApiResult {
    let id = session_id_of(input)?;
    match hub.session(&id).filter(|s| !s.is_ended()) {
        Some(session) => {
            let token = hub.tokens().issue(
                Purpose::ClientData {
                    session_id: id.clone(),
                },
                Instant::now(),
            );
            hub.store
                .audit(owner_arn, "ResumeSession", &session.target, &id, "")?;
            Ok(json!({
                "SessionId": id,
                "TokenValue": token,
                "StreamUrl": stream_url(hub, host, &id),
            }))
        }
        // An ended session answers without a token: the official client then reports
        // "Session: <id> timed out." and exits (§12.3).
        None => match hub.store.session(&id)? {
            Some(_) => Ok(json!({ "SessionId": id })),
            None => Err(ApiError::new(
                ErrorCode::DoesNotExist,
                format!("session {id} does not exist"),
            )),
        },
    }
}

async fn terminate_session(hub: &Hub, owner_arn: &str, input: SessionIdInput) -> ApiResult {
    let id = session_id_of(input)?;
    match hub.session(&id) {
        Some(session) => {
            hub.store
                .audit(owner_arn, "TerminateSession", &session.target, &id, "")?;
            let (done, wait) = tokio::sync::oneshot::channel();
            let by = owner_arn.to_owned();
            if session.send_event(Event::Terminate { by, done }) {
                let _ = tokio::time::timeout(TERMINATE_WAIT, wait).await;
            }
            Ok(json!({ "SessionId": id }))
        }
        None => match hub.store.session(&id)? {
            Some(_) => Ok(json!({ "SessionId": id })),
            None => Err(ApiError::new(
                ErrorCode::DoesNotExist,
                format!("session {id} does not exist"),
            )),
        },
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeSessionsInput {
    state: Option<String>,
    max_results: Option<i64>,
    next_token: Option<String>,
    #[serde(default)]
    filters: Vec<SessionFilter>,
}

#[derive(Deserialize)]
struct SessionFilter {
    key: String,
    value: String,
}

fn encode_next_token(offset: u64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("ssmx:{offset}"))
}

fn decode_next_token(token: &str) -> Result<u64, ApiError> {
    let invalid = || ApiError::new(ErrorCode::InvalidNextToken, "the NextToken is not valid");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| invalid())?;
    let text = String::from_utf8(raw).map_err(|_| invalid())?;
    text.strip_prefix("ssmx:")
        .and_then(|n| n.parse().ok())
        .ok_or_else(invalid)
}

/// One page of `items` for an operation with `MaxResults` (`default`, within `min..=max`) and
/// `NextToken`: the page, and the token of the next one when more follow.
fn paginate<T>(
    items: Vec<T>,
    max_results: Option<i64>,
    next_token: Option<&str>,
    (default, min, max): (u64, u64, u64),
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let limit = page_size(max_results, default, min, max)?;
    let offset = match next_token {
        Some(t) => decode_next_token(t)?,
        None => 0,
    };
    let total = items.len() as u64;
    let page = items
        .into_iter()
        .skip(offset as usize)
        .take(limit as usize)
        .collect();
    let next = (offset + limit < total).then(|| encode_next_token(offset + limit));
    Ok((page, next))
}

fn page_size(given: Option<i64>, default: u64, min: u64, max: u64) -> Result<u64, ApiError> {
    match given {
        None => Ok(default),
        Some(n) if n >= min as i64 && n <= max as i64 => Ok(n as u64),
        Some(n) => Err(validation(format!(
            "MaxResults must be between {min} and {max} (got {n})"
        ))),
    }
}

fn parse_date(key: &str, value: &str) -> Result<SystemTime, ApiError> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(SystemTime::from)
        .or_else(|_| {
            chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d")
                .map(|d| SystemTime::from(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc()))
        })
        .map_err(|_| {
            validation(format!(
                "filter {key} value {value:?} is not a date like 2024-01-31T00:00:00Z"
            ))
        })
}

fn describe_sessions(hub: &Hub, input: DescribeSessionsInput) -> ApiResult {
    let active = match input.state.as_deref() {
        Some("Active") => true,
        Some("History") => false,
        Some(other) => {
            return Err(validation(format!(
                "State must be Active or History (got {other:?})"
            )))
        }
        None => return Err(validation("State is required (Active or History)")),
    };
    if input.filters.len() > 6 {
        return Err(validation("at most 6 filters are allowed"));
    }
    let limit = page_size(input.max_results, DEFAULT_SESSION_PAGE, 1, MAX_SESSION_PAGE)?;
    let offset = match &input.next_token {
        Some(t) => decode_next_token(t)?,
        None => 0,
    };
    let mut query = SessionQuery {
        active,
        offset,
        limit: limit + 1,
        ..Default::default()
    };
    let mut only_just_in_time = false;
    for f in &input.filters {
        match f.key.as_str() {
            "InvokedAfter" => query.invoked_after = Some(parse_date(&f.key, &f.value)?),
            "InvokedBefore" => query.invoked_before = Some(parse_date(&f.key, &f.value)?),
            "Target" => query.target = Some(f.value.clone()),
            "Owner" => query.owner = Some(f.value.clone()),
            "Status" => query.status = Some(f.value.clone()),
            "SessionId" => query.session_id = Some(f.value.clone()),
            "AccessType" => match f.value.as_str() {
                "Standard" => {}
                "JustInTime" => only_just_in_time = true,
                other => {
                    return Err(validation(format!(
                        "AccessType must be Standard or JustInTime (got {other:?})"
                    )))
                }
            },
            other => {
                return Err(ApiError::new(
                    ErrorCode::InvalidFilterKey,
                    format!("filter key {other:?} is not one of InvokedAfter, InvokedBefore, Target, Owner, Status, SessionId, AccessType"),
                ))
            }
        }
    }
    let mut rows = if only_just_in_time {
        Vec::new()
    } else {
        hub.store.query_sessions(&query)?
    };
    let next = (rows.len() as u64 > limit).then(|| encode_next_token(offset + limit));
    rows.truncate(limit as usize);
    let sessions: Vec<Value> = rows.iter().map(session_json).collect();
    let mut out = json!({ "Sessions": sessions });
    if let Some(next) = next {
        out["NextToken"] = json!(next);
    }
    Ok(out)
}

fn session_json(r: &SessionRecord) -> Value {
    let mut v = json!({
        "SessionId": r.session_id,
        "Target": r.target,
        "Status": r.status,
        "StartDate": epoch_seconds(r.start_date),
        "DocumentName": r.document_name,
        "Owner": r.owner,
        "OutputUrl": {},
        "AccessType": "Standard",
    });
    if let Some(end) = r.end_date {
        v["EndDate"] = json!(epoch_seconds(end));
    }
    if !r.reason.is_empty() {
        v["Reason"] = json!(r.reason);
    }
    if !r.details.is_empty() {
        v["Details"] = json!(r.details);
    }
    if !r.max_session_duration.is_empty() {
        v["MaxSessionDuration"] = json!(r.max_session_duration);
    }
    v
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeInstanceInformationInput {
    #[serde(default)]
    instance_information_filter_list: Vec<LegacyInstanceFilter>,
    #[serde(default)]
    filters: Vec<InstanceFilter>,
    max_results: Option<i64>,
    next_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LegacyInstanceFilter {
    key: String,
    value_set: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InstanceFilter {
    key: String,
    values: Vec<String>,
}

fn describe_instance_information(hub: &Hub, input: DescribeInstanceInformationInput) -> ApiResult {
    let filters: Vec<(String, Vec<String>)> = input
        .instance_information_filter_list
        .into_iter()
        .map(|f| (f.key, f.value_set))
        .chain(input.filters.into_iter().map(|f| (f.key, f.values)))
        .collect();
    // Tag filters (`tag:<name>`, `tag-key`) become the sets of instances they match.
    let mut tagged: Vec<Vec<String>> = Vec::new();
    for (key, values) in &filters {
        if let Some(selector) = crate::tags::TagSelector::from_key(key, values) {
            tagged.push(hub.store.instances_tagged(&selector)?);
        }
    }
    let mut listed = Vec::new();
    for record in hub.store.instances()? {
        let item = instance_json(hub, &record);
        let mut keep = tagged.iter().all(|ids| ids.contains(&record.instance_id));
        for (key, values) in &filters {
            if crate::tags::TagSelector::from_key(key, values).is_some() {
                continue;
            }
            let field = match key.as_str() {
                "InstanceIds" => "InstanceId",
                "AgentVersion" => "AgentVersion",
                "PingStatus" => "PingStatus",
                "PlatformTypes" => "PlatformType",
                "ActivationIds" => "ActivationId",
                "IamRole" => "IamRole",
                "ResourceType" => "ResourceType",
                other => {
                    return Err(ApiError::new(
                        ErrorCode::InvalidInstanceInformationFilterValue,
                        format!("filter key {other:?} is not supported"),
                    ))
                }
            };
            let actual = item.get(field).and_then(Value::as_str).unwrap_or("");
            keep &= values.iter().any(|v| v == actual);
        }
        if keep {
            listed.push(item);
        }
    }
    let (page, next) = paginate(
        listed,
        input.max_results,
        input.next_token.as_deref(),
        (DEFAULT_INSTANCE_PAGE, 5, MAX_INSTANCE_PAGE),
    )?;
    let mut out = json!({ "InstanceInformationList": page });
    if let Some(next) = next {
        out["NextToken"] = json!(next);
    }
    Ok(out)
}

/// One InstanceInformation item. `ClockSkewSeconds` (the node's clock minus the gateway's, from
/// its latest signed request) is an ssmx addition; SDKs ignore members they do not model.
fn instance_json(hub: &Hub, r: &store::InstanceRecord) -> Value {
    let last_contact = hub.last_contact(&r.instance_id, r.last_seen_at);
    let is_latest = !r.info.agent_version.is_empty()
        && ssmx_protocol::version::agent_compare(
            &r.info.agent_version,
            &hub.settings.latest_agent_version,
        ) != std::cmp::Ordering::Less;
    let mut v = json!({
        "InstanceId": r.instance_id,
        "PingStatus": hub.ping_status(&r.instance_id, last_contact).as_str(),
        "AgentVersion": r.info.agent_version,
        "IsLatestVersion": is_latest,
        "PlatformType": r.info.platform_type,
        "PlatformName": r.info.platform_name,
        "PlatformVersion": r.info.platform_version,
        "ActivationId": r.activation_id,
        "IamRole": r.iam_role,
        "RegistrationDate": epoch_seconds(r.registered_at),
        "ResourceType": "ManagedInstance",
        "Name": r.name,
        "IPAddress": r.info.ip_address,
        "ComputerName": r.info.computer_name,
        "SourceId": r.instance_id,
        "SourceType": "AWS::SSM::ManagedInstance",
    });
    if let Some(seen) = last_contact {
        v["LastPingDateTime"] = json!(epoch_seconds(seen));
    }
    if let Some(skew) = hub.clock_skew(&r.instance_id) {
        v["ClockSkewSeconds"] = json!(skew);
    }
    v
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateActivationInput {
    description: Option<String>,
    default_instance_name: Option<String>,
    iam_role: Option<String>,
    registration_limit: Option<i64>,
    expiration_date: Option<f64>,
}

fn create_activation(hub: &Hub, owner_arn: &str, input: CreateActivationInput) -> ApiResult {
    let limit = match input.registration_limit {
        None => None,
        Some(n) if (1..=store::MAX_REGISTRATION_LIMIT as i64).contains(&n) => Some(n as u32),
        Some(n) => {
            return Err(validation(format!(
                "RegistrationLimit must be 1 to {} (got {n})",
                store::MAX_REGISTRATION_LIMIT
            )))
        }
    };
    let now = SystemTime::now();
    let expires_at = match input.expiration_date {
        None => None,
        Some(secs) if secs.is_finite() && secs > 0.0 => {
            let at = UNIX_EPOCH + Duration::from_secs_f64(secs);
            if at <= now || at > now + store::MAX_ACTIVATION_LIFETIME {
                return Err(validation(
                    "ExpirationDate must be in the future and at most 30 days away",
                ));
            }
            Some(at)
        }
        Some(_) => return Err(validation("ExpirationDate is not a valid time")),
    };
    let activation = hub.store.create_activation(&NewActivation {
        description: input.description.unwrap_or_default(),
        default_instance_name: input.default_instance_name.unwrap_or_default(),
        iam_role: input.iam_role.unwrap_or_default(),
        registration_limit: limit,
        expires_at,
    })?;
    hub.store.audit(
        owner_arn,
        "CreateActivation",
        "",
        "",
        &activation.activation_id,
    )?;
    Ok(json!({
        "ActivationId": activation.activation_id,
        "ActivationCode": activation.activation_code,
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateInstanceInformationInput {
    instance_id: Option<String>,
    agent_version: Option<String>,
    computer_name: Option<String>,
    #[serde(rename = "IPAddress")]
    ip_address: Option<String>,
    platform_type: Option<String>,
    platform_name: Option<String>,
    platform_version: Option<String>,
}

fn normalise_platform(p: &str) -> String {
    match p.to_ascii_lowercase().as_str() {
        "linux" => "Linux".into(),
        "windows" => "Windows".into(),
        "macos" | "darwin" => "MacOS".into(),
        _ => p.to_owned(),
    }
}

fn update_instance_information(
    hub: &Hub,
    caller_instance: &str,
    input: UpdateInstanceInformationInput,
) -> ApiResult {
    let instance = input
        .instance_id
        .ok_or_else(|| validation("InstanceId is required"))?;
    if instance != caller_instance {
        return Err(ApiError::new(
            ErrorCode::AccessDenied,
            "an agent may only update its own instance",
        ));
    }
    let known = hub
        .store
        .instance(&instance)?
        .map(|r| r.info)
        .unwrap_or_default();
    let pick = |given: Option<String>, old: String| given.filter(|s| !s.is_empty()).unwrap_or(old);
    let info = InstanceInfo {
        computer_name: pick(input.computer_name, known.computer_name),
        ip_address: pick(input.ip_address, known.ip_address),
        platform_type: pick(
            input.platform_type.map(|p| normalise_platform(&p)),
            known.platform_type,
        ),
        platform_name: pick(input.platform_name, known.platform_name),
        platform_version: pick(input.platform_version, known.platform_version),
        agent_version: pick(input.agent_version, known.agent_version),
    };
    if !hub.store.update_instance_information(&instance, &info)? {
        return Err(ApiError::new(
            ErrorCode::InvalidInstanceId,
            format!("instance {instance} is not registered"),
        ));
    }
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RegisterInput {
    activation_id: String,
    activation_code: String,
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    platform_type: String,
}

/// `POST /ssmx/v1/register` (unsigned; the activation code is the proof).
pub(crate) async fn register(State(hub): State<Arc<Hub>>, body: Bytes) -> Response {
    let result = (|| {
        let input: RegisterInput = parse(&body)?;
        let platform = normalise_platform(&input.platform_type);
        let reg = hub
            .store
            .register_instance(
                &input.activation_id,
                &input.activation_code,
                &input.hostname,
                &platform,
            )
            .map_err(|e| match e {
                RegisterError::Store(e) => ApiError::internal(e),
                refused => ApiError::new(ErrorCode::InvalidActivation, refused.to_string()),
            })?;
        hub.store.audit(
            &reg.instance_id,
            "RegisterInstance",
            &reg.instance_id,
            "",
            &format!(
                "activation {} host {:?}",
                input.activation_id, input.hostname
            ),
        )?;
        info!(instance = %reg.instance_id, "instance registered");
        Ok::<_, ApiError>(json!({
            "InstanceId": reg.instance_id,
            "AccessKeyId": reg.access_key_id,
            "SecretAccessKey": reg.secret_access_key,
            "Region": hub.settings.region,
        }))
    })();
    match result {
        Ok(v) => (
            StatusCode::OK,
            [(http::header::CONTENT_TYPE, "application/json")],
            serde_json::to_vec(&v).unwrap_or_default(),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}
