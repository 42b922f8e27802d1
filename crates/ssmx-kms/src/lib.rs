//! A local key service standing in for AWS KMS in encrypted sessions (PROTOCOL.md §7.2, §12.3).
//!
//! It answers the KMS JSON API (awsJson1_1, `X-Amz-Target: TrentService.<Op>`) so unmodified
//! AWS SDK clients work against it: GenerateDataKey, Encrypt, Decrypt, CreateKey, DescribeKey,
//! ListKeys, CreateAlias, ListAliases, EnableKey, DisableKey. Master keys (AES-256) live in a
//! [`KeyStore`]: [`MemoryKeyStore`] or [`SqliteKeyStore`] on a connection the caller owns. A
//! ciphertext blob is an envelope naming its master key and sealed with AES-256-GCM over the
//! plaintext, its associated data binding the encryption context, so Decrypt succeeds only with
//! the context given at GenerateDataKey. Errors are AWS-shaped (`{"__type","message"}`, 400).
//!
//! Authentication (SigV4) is the embedding server's job: it calls [`KeyService::handle`] with
//! the authenticated principal, or mounts [`router`] behind a layer that inserts
//! [`KmsCaller`].
//!
//! ```
//! use std::sync::Arc;
//! use ssmx_kms::{KeyService, MemoryKeyStore, NewKey};
//!
//! let kms = Arc::new(KeyService::new(MemoryKeyStore::new()));
//! let key = kms.create_key(NewKey { alias: Some("alias/sessions".into()), ..NewKey::default() }).unwrap();
//! assert!(key.arn.starts_with("arn:aws:kms:us-east-1:000000000000:key/"));
//! let app: axum::Router = ssmx_kms::router(kms);
//! # drop(app);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod api;
mod envelope;
mod error;
mod http;
mod service;
mod store;

pub use error::{KmsError, KmsErrorCode};
pub use http::{
    handle_request, is_kms_target, router, KmsCaller, CONTENT_TYPE, MAX_REQUEST_BYTES,
    TARGET_HEADER,
};
pub use service::{
    Caller, IdentityPolicy, KeyMetadata, KeyService, KmsResponse, NewKey, DEFAULT_ACCOUNT_ID,
    DEFAULT_LIST_LIMIT, DEFAULT_REGION, MAX_ALIAS_NAME_LEN, MAX_CIPHERTEXT_BLOB_BYTES,
    MAX_DATA_KEY_BYTES, MAX_DESCRIPTION_LEN, MAX_LIST_LIMIT, MAX_PLAINTEXT_BYTES, TARGET_PREFIX,
};
pub use store::{
    Insert, KeyAccess, KeyStore, MasterKey, MemoryKeyStore, SqliteKeyStore, StoreError, StoredKey,
    MASTER_KEY_LEN,
};
