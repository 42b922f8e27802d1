//! The key service over HTTP: `POST /` with `X-Amz-Target: TrentService.<Op>` (awsJson1_1).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};

use crate::service::{KeyService, KmsResponse, TARGET_PREFIX};

/// Content type of awsJson1_1 requests and responses.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// The header naming the operation.
pub const TARGET_HEADER: &str = "x-amz-target";
/// Largest request body read. The largest KMS request (Encrypt with 4 KiB of plaintext, as
/// base64, plus an encryption context) stays far below it.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The principal an authenticating layer in front of [`router`] (the gateway's SigV4 check)
/// inserts into the request extensions; keys with [`crate::KeyAccess::Principals`] admit only
/// the principals listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmsCaller(pub String);

/// True when `target` (an `X-Amz-Target` value) is a KMS operation, which
/// [`KeyService::handle`] answers.
pub fn is_kms_target(target: &str) -> bool {
    target.starts_with(TARGET_PREFIX)
}

/// A router answering `POST /` for KMS targets. It verifies no signatures: put it behind the
/// layer that authenticates callers (and inserts [`KmsCaller`]), or use it where every caller
/// is trusted.
pub fn router(service: Arc<KeyService>) -> Router {
    Router::new()
        .route("/", post(handle_request))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(service)
}

/// The axum handler behind [`router`], for servers that mount it themselves.
pub async fn handle_request(
    State(service): State<Arc<KeyService>>,
    caller: Option<Extension<KmsCaller>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = headers
        .get(TARGET_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let caller = caller
        .as_ref()
        .map(|Extension(KmsCaller(name))| name.as_str());
    service.handle(caller, target, &body).into_response()
}

impl IntoResponse for KmsResponse {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, self.body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if let Ok(id) = HeaderValue::from_str(&uuid::Uuid::new_v4().hyphenated().to_string()) {
            headers.insert("x-amzn-requestid", id);
        }
        response
    }
}
