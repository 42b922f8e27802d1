//! Request and response bodies of the operations served, as the KMS JSON API spells them.
//! Blobs travel as base64; timestamps as epoch seconds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Base64 (standard, padded) for `Blob` members.
mod base64_blob {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize_option<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| STANDARD.decode(text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Members every cryptographic request may carry that this service does not offer.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Unsupported {
    pub dry_run: Option<bool>,
    pub recipient: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GenerateDataKeyRequest {
    pub key_id: Option<String>,
    #[serde(default)]
    pub encryption_context: BTreeMap<String, String>,
    pub number_of_bytes: Option<i64>,
    pub key_spec: Option<String>,
    #[serde(flatten)]
    pub unsupported: Unsupported,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GenerateDataKeyResponse {
    #[serde(serialize_with = "base64_blob::serialize")]
    pub ciphertext_blob: Vec<u8>,
    #[serde(serialize_with = "base64_blob::serialize")]
    pub plaintext: Vec<u8>,
    pub key_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EncryptRequest {
    pub key_id: Option<String>,
    #[serde(default, deserialize_with = "base64_blob::deserialize_option")]
    pub plaintext: Option<Vec<u8>>,
    #[serde(default)]
    pub encryption_context: BTreeMap<String, String>,
    pub encryption_algorithm: Option<String>,
    #[serde(flatten)]
    pub unsupported: Unsupported,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EncryptResponse {
    #[serde(serialize_with = "base64_blob::serialize")]
    pub ciphertext_blob: Vec<u8>,
    pub key_id: String,
    pub encryption_algorithm: &'static str,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DecryptRequest {
    #[serde(default, deserialize_with = "base64_blob::deserialize_option")]
    pub ciphertext_blob: Option<Vec<u8>>,
    #[serde(default)]
    pub encryption_context: BTreeMap<String, String>,
    pub key_id: Option<String>,
    pub encryption_algorithm: Option<String>,
    #[serde(flatten)]
    pub unsupported: Unsupported,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DecryptResponse {
    pub key_id: String,
    #[serde(serialize_with = "base64_blob::serialize")]
    pub plaintext: Vec<u8>,
    pub encryption_algorithm: &'static str,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateKeyRequest {
    pub description: Option<String>,
    pub policy: Option<String>,
    pub key_usage: Option<String>,
    pub key_spec: Option<String>,
    pub customer_master_key_spec: Option<String>,
    pub origin: Option<String>,
    pub custom_key_store_id: Option<String>,
    pub xks_key_id: Option<String>,
    pub multi_region: Option<bool>,
    pub tags: Option<Vec<serde_json::Value>>,
}

/// The `KeyMetadata` structure.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyMetadataJson {
    #[serde(rename = "AWSAccountId")]
    pub aws_account_id: String,
    pub key_id: String,
    pub arn: String,
    pub creation_date: f64,
    pub enabled: bool,
    pub description: String,
    pub key_usage: &'static str,
    pub key_state: &'static str,
    pub origin: &'static str,
    pub key_manager: &'static str,
    pub customer_master_key_spec: &'static str,
    pub key_spec: &'static str,
    pub encryption_algorithms: [&'static str; 1],
    pub multi_region: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyMetadataResponse {
    pub key_metadata: KeyMetadataJson,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyIdRequest {
    pub key_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListRequest {
    pub limit: Option<i64>,
    pub marker: Option<String>,
    /// ListAliases only: aliases of this key.
    pub key_id: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListKeysEntry {
    pub key_id: String,
    pub key_arn: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListKeysResponse {
    pub keys: Vec<ListKeysEntry>,
    pub truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AliasEntry {
    pub alias_name: String,
    pub alias_arn: String,
    pub target_key_id: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListAliasesResponse {
    pub aliases: Vec<AliasEntry>,
    pub truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateAliasRequest {
    pub alias_name: Option<String>,
    pub target_key_id: Option<String>,
}

/// The empty body of operations without output.
#[derive(Debug, Serialize)]
pub struct Empty {}
