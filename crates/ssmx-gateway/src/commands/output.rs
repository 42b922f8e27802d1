//! Whole command output, beyond what the API's fields carry (24,000 characters of stdout, 8,000
//! of stderr): agents upload a plugin's full stdout or stderr when its reply had to truncate it,
//! and users read it at the invocation's `StandardOutputUrl` / `StandardErrorUrl`.
//!
//! `PUT` and `GET /ssmx/v1/command-output/{command_id}/{instance_id}/{plugin}/{stdout|stderr}`,
//! both SigV4-signed (service `ssm`): a PUT by the agent of that instance, for an invocation it
//! was sent; a GET by a user whose policies allow `ssm:GetCommandInvocation` (for example
//! `curl --aws-sigv4 aws:amz:<region>:ssm`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use rusqlite::{params, OptionalExtension};
use ssmx_protocol::command::PluginResult;

use crate::access::Resource;
use crate::error::{ApiError, ErrorCode};
use crate::hub::{Caller, Hub};
use crate::sigv4::RequestParts;
use crate::store::{Store, StoreError};

/// Tables of this module, created with the store's.
pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS command_output (
    command_id TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    plugin TEXT NOT NULL,
    stream TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (command_id, instance_id, plugin, stream)
);
"#;

/// Most bytes of one stream of one plugin kept (the agent captures at most this much).
pub const MAX_STREAM_BYTES: usize = 16 << 20;
/// The action a user's policies must allow to read output.
const READ_ACTION: &str = "ssm:GetCommandInvocation";
/// The route both methods share.
pub const ROUTE: &str = "/ssmx/v1/command-output/{command_id}/{instance_id}/{plugin}/{stream}";

/// Which stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// Its path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn parse(segment: &str) -> Result<Self, ApiError> {
        match segment {
            "stdout" => Ok(Stream::Stdout),
            "stderr" => Ok(Stream::Stderr),
            other => Err(ApiError::new(
                ErrorCode::Validation,
                format!("stream {other:?} must be stdout or stderr"),
            )),
        }
    }
}

/// Where a plugin's full output is read: `base` (the gateway's URL) plus the path. The plugin
/// name goes in hex: names hold `:`, and SigV4 signers disagree on how to canonicalise an
/// escaped path (aws-sigv4 escapes it again, curl does not), so the path keeps to characters
/// that need no escaping.
pub fn url(
    base: &str,
    command_id: &str,
    instance_id: &str,
    plugin: &str,
    stream: Stream,
) -> String {
    format!(
        "{base}/ssmx/v1/command-output/{command_id}/{instance_id}/{}/{}",
        hex::encode(plugin),
        stream.as_str()
    )
}

impl Store {
    fn put_command_output(
        &self,
        key: &OutputKey,
        stream: Stream,
        data: &[u8],
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO command_output (command_id, instance_id, plugin, stream, data) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![key.command_id, key.instance_id, key.plugin, stream.as_str(), data],
        )?;
        Ok(())
    }

    fn command_output(
        &self,
        key: &OutputKey,
        stream: Stream,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT data FROM command_output WHERE command_id = ?1 AND instance_id = ?2 AND plugin = ?3 AND stream = ?4",
                params![key.command_id, key.instance_id, key.plugin, stream.as_str()],
                |r| r.get(0),
            )
            .optional()?)
    }
}

/// The path's parameters.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct OutputKey {
    command_id: String,
    instance_id: String,
    /// Hex of the plugin's name (see [`url`]); decoded by [`OutputKey::decode`].
    plugin: String,
    stream: String,
}

impl OutputKey {
    /// Decodes the plugin name and the stream.
    fn decode(mut self) -> Result<(Self, Stream), ApiError> {
        let stream = Stream::parse(&self.stream)?;
        self.plugin = hex::decode(&self.plugin)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Validation,
                    "the plugin segment of the path must be the hex of its name",
                )
            })?;
        Ok((self, stream))
    }
}

fn authenticate(
    hub: &Hub,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Caller, ApiError> {
    hub.authenticate(
        RequestParts {
            method,
            uri,
            headers,
            body,
        },
        "ssm",
        false,
    )
    .map_err(ApiError::from)
}

/// `PUT`: an agent uploads one stream of one of its invocations' plugins.
pub(crate) async fn put(
    State(hub): State<Arc<Hub>>,
    Path(key): Path<OutputKey>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let (key, stream) = key.decode()?;
    let caller = authenticate(&hub, &method, &uri, &headers, &body)?;
    let own = matches!(&caller, Caller::Agent { instance_id } if *instance_id == key.instance_id);
    if !own {
        return Err(ApiError::new(
            ErrorCode::AccessDenied,
            "only the instance's own agent uploads its command output",
        ));
    }
    if hub
        .store
        .invocation(&key.command_id, &key.instance_id)?
        .is_none()
    {
        return Err(ApiError::new(
            ErrorCode::InvocationDoesNotExist,
            format!(
                "{} was not sent command {}",
                key.instance_id, key.command_id
            ),
        ));
    }
    let kept = &body[..body.len().min(MAX_STREAM_BYTES)];
    hub.store.put_command_output(&key, stream, kept)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET`: a user reads one stream, whole: what the agent uploaded, else what its reply carried
/// (complete when it did not have to truncate).
pub(crate) async fn get(
    State(hub): State<Arc<Hub>>,
    Path(key): Path<OutputKey>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (key, stream) = key.decode()?;
    match authenticate(&hub, &method, &uri, &headers, &[])? {
        Caller::Agent { .. } => {
            return Err(ApiError::new(
                ErrorCode::AccessDenied,
                "command output is read with user credentials",
            ))
        }
        // The output is the rest of what GetCommandInvocation answers, so it asks the same.
        Caller::User(user) => user.authorize(READ_ACTION, &Resource::any())?,
    }
    let data = match hub.store.command_output(&key, stream)? {
        Some(data) => data,
        None => {
            let invocation = hub
                .store
                .invocation(&key.command_id, &key.instance_id)?
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::InvocationDoesNotExist,
                        format!("no invocation of {} on {}", key.command_id, key.instance_id),
                    )
                })?;
            let mut plugins: BTreeMap<String, PluginResult> =
                serde_json::from_str(&invocation.plugins).unwrap_or_default();
            let result = plugins.remove(&key.plugin).unwrap_or_default();
            match stream {
                Stream::Stdout => result.standard_output,
                Stream::Stderr => result.standard_error,
            }
            .into_bytes()
        }
    };
    Ok((
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        data,
    )
        .into_response())
}
