//! AWS-shaped errors of the key service: `{"__type": …, "message": …}` with an HTTP status.

use serde::Serialize;

/// The error codes this service answers with, named as KMS names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KmsErrorCode {
    /// The key or alias does not exist (also for a malformed key id).
    NotFound,
    /// Decrypt: the blob was altered, is not ours, or the encryption context differs.
    InvalidCiphertext,
    /// The caller may not use the key.
    AccessDenied,
    /// A parameter is missing or out of range.
    Validation,
    /// Decrypt: the `KeyId` given is not the key the blob was made under.
    IncorrectKey,
    /// The key is disabled.
    Disabled,
    /// CreateAlias: the alias is taken.
    AlreadyExists,
    /// A feature of the real service this stand-in does not offer (policies, tags, …).
    UnsupportedOperation,
    /// The body is not the JSON the operation expects.
    Serialization,
    /// The `X-Amz-Target` names no operation of this service.
    UnknownOperation,
    /// A `Marker` this service did not hand out.
    InvalidMarker,
    /// The key store failed.
    Internal,
}

impl KmsErrorCode {
    /// The `__type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            KmsErrorCode::NotFound => "NotFoundException",
            KmsErrorCode::InvalidCiphertext => "InvalidCiphertextException",
            KmsErrorCode::AccessDenied => "AccessDeniedException",
            KmsErrorCode::Validation => "ValidationException",
            KmsErrorCode::IncorrectKey => "IncorrectKeyException",
            KmsErrorCode::Disabled => "DisabledException",
            KmsErrorCode::AlreadyExists => "AlreadyExistsException",
            KmsErrorCode::UnsupportedOperation => "UnsupportedOperationException",
            KmsErrorCode::Serialization => "SerializationException",
            KmsErrorCode::UnknownOperation => "UnknownOperationException",
            KmsErrorCode::InvalidMarker => "InvalidMarkerException",
            KmsErrorCode::Internal => "KMSInternalException",
        }
    }

    /// The HTTP status: 500 for internal failures, 400 for everything the caller got wrong.
    pub fn status(self) -> u16 {
        match self {
            KmsErrorCode::Internal => 500,
            _ => 400,
        }
    }
}

/// A failed key service call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct KmsError {
    /// What kind of failure.
    pub code: KmsErrorCode,
    /// Text for the caller.
    pub message: String,
}

impl KmsError {
    /// An error of `code` with `message`.
    pub fn new(code: KmsErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The JSON body AWS SDKs parse: `{"__type":"…","message":"…"}`.
    pub fn to_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(rename = "__type")]
            error_type: &'a str,
            message: &'a str,
        }
        serde_json::to_vec(&Body {
            error_type: self.code.as_str(),
            message: &self.message,
        })
        .expect("strings serialise")
    }
}

impl From<crate::store::StoreError> for KmsError {
    fn from(err: crate::store::StoreError) -> Self {
        tracing::error!(error = %err, "key store failed");
        KmsError::new(KmsErrorCode::Internal, format!("key store failed: {err}"))
    }
}
