//! AWS-shaped errors of the SSM JSON API: `{"__type": "<Code>", "message": "<text>"}` with the
//! HTTP status AWS uses for that code (PROTOCOL.md §12.1).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Error codes the gateway returns; the names are AWS's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The signer's key is not allowed to call the operation.
    AccessDenied,
    /// The access key id is unknown.
    UnrecognizedClient,
    /// The signature does not match, or its date is outside the window.
    InvalidSignature,
    /// The Authorization header is missing or malformed.
    IncompleteSignature,
    /// No authentication at all.
    MissingAuthenticationToken,
    /// Too many requests (replay cache full).
    Throttling,
    /// `X-Amz-Target` names no operation the gateway serves.
    UnknownOperation,
    /// The request body breaks the operation's input rules.
    Validation,
    /// The document does not exist or its parameters are invalid.
    InvalidDocument,
    /// The target has no open control channel, or is unknown.
    TargetNotConnected,
    /// The session does not exist.
    DoesNotExist,
    /// A DescribeSessions filter key is not known.
    InvalidFilterKey,
    /// A NextToken was not issued by this gateway.
    InvalidNextToken,
    /// A DescribeInstanceInformation filter is not valid.
    InvalidInstanceInformationFilterValue,
    /// An instance id is not known.
    InvalidInstanceId,
    /// Activation id/code wrong, expired or used up.
    InvalidActivation,
    /// SendCommand's parameters do not fit the document.
    InvalidParameters,
    /// No such (command, instance) pair.
    InvocationDoesNotExist,
    /// No such command.
    InvalidCommandId,
    /// The document has no such plugin or step.
    InvalidPluginName,
    /// The request body is over the size limit.
    RequestEntityTooLarge,
    /// The resource type cannot carry tags, or the resource is not of that type.
    InvalidResourceType,
    /// No resource with that id.
    InvalidResourceId,
    /// A resource would carry more than 50 tags.
    TooManyTags,
    /// A document's content does not parse or is not a valid document of its type.
    InvalidDocumentContent,
    /// A document's schemaVersion is not valid for its type.
    InvalidDocumentSchemaVersion,
    /// The document has no such version.
    InvalidDocumentVersion,
    /// CreateDocument with a name in use.
    DocumentAlreadyExists,
    /// UpdateDocument with the content of the latest version.
    DuplicateDocumentContent,
    /// The operation is not allowed on this document (AWS-owned, or its default version).
    InvalidDocumentOperation,
    /// No activation with that id.
    InvalidActivationId,
    /// A managed instance's hardware fingerprint is not the one it registered with.
    MachineFingerprintDoesNotMatch,
    /// The activation has expired.
    ActivationExpired,
    /// Something broke inside the gateway.
    InternalServerError,
}

impl ErrorCode {
    /// The `__type` text.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::AccessDenied => "AccessDeniedException",
            ErrorCode::UnrecognizedClient => "UnrecognizedClientException",
            ErrorCode::InvalidSignature => "InvalidSignatureException",
            ErrorCode::IncompleteSignature => "IncompleteSignatureException",
            ErrorCode::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            ErrorCode::Throttling => "ThrottlingException",
            ErrorCode::UnknownOperation => "UnknownOperationException",
            ErrorCode::Validation => "ValidationException",
            ErrorCode::InvalidDocument => "InvalidDocument",
            ErrorCode::TargetNotConnected => "TargetNotConnected",
            ErrorCode::DoesNotExist => "DoesNotExistException",
            ErrorCode::InvalidFilterKey => "InvalidFilterKey",
            ErrorCode::InvalidNextToken => "InvalidNextToken",
            ErrorCode::InvalidInstanceInformationFilterValue => {
                "InvalidInstanceInformationFilterValue"
            }
            ErrorCode::InvalidInstanceId => "InvalidInstanceId",
            ErrorCode::InvalidActivation => "InvalidActivation",
            ErrorCode::InvalidParameters => "InvalidParameters",
            ErrorCode::InvocationDoesNotExist => "InvocationDoesNotExist",
            ErrorCode::InvalidCommandId => "InvalidCommandId",
            ErrorCode::InvalidPluginName => "InvalidPluginName",
            ErrorCode::RequestEntityTooLarge => "RequestEntityTooLargeException",
            ErrorCode::InvalidResourceType => "InvalidResourceType",
            ErrorCode::InvalidResourceId => "InvalidResourceId",
            ErrorCode::TooManyTags => "TooManyTagsError",
            ErrorCode::InvalidDocumentContent => "InvalidDocumentContent",
            ErrorCode::InvalidDocumentSchemaVersion => "InvalidDocumentSchemaVersion",
            ErrorCode::InvalidDocumentVersion => "InvalidDocumentVersion",
            ErrorCode::DocumentAlreadyExists => "DocumentAlreadyExists",
            ErrorCode::DuplicateDocumentContent => "DuplicateDocumentContent",
            ErrorCode::InvalidDocumentOperation => "InvalidDocumentOperation",
            ErrorCode::InvalidActivationId => "InvalidActivationId",
            ErrorCode::MachineFingerprintDoesNotMatch => "MachineFingerprintDoesNotMatch",
            ErrorCode::ActivationExpired => "ActivationExpired",
            ErrorCode::InternalServerError => "InternalServerError",
        }
    }

    /// The HTTP status AWS answers with for this code.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InternalServerError => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::MissingAuthenticationToken => StatusCode::FORBIDDEN,
            ErrorCode::RequestEntityTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// An error answer of the SSM API.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ApiError {
    /// The AWS error code.
    pub code: ErrorCode,
    /// Human-readable text.
    pub message: String,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `InternalServerError` with a generic message; the cause goes to the log, not the caller.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(
            ErrorCode::InternalServerError,
            "the gateway failed to process the request; see its log",
        )
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"__type": self.code.as_str(), "message": self.message})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        (
            self.code.status(),
            [(http::header::CONTENT_TYPE, "application/x-amz-json-1.1")],
            body,
        )
            .into_response()
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::internal(e)
    }
}
