//! The key service: resolves keys, checks access and answers each operation.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use crate::api::{self, Empty, KeyMetadataJson, KeyMetadataResponse};
use crate::envelope::{self, Envelope};
use crate::error::{KmsError, KmsErrorCode};
use crate::store::{Insert, KeyAccess, KeyStore, MasterKey, StoredKey, MASTER_KEY_LEN};

/// Region in ARNs unless configured.
pub const DEFAULT_REGION: &str = "us-east-1";
/// Account id in ARNs unless configured.
pub const DEFAULT_ACCOUNT_ID: &str = "000000000000";
/// Prefix of the `X-Amz-Target` header values this service answers.
pub const TARGET_PREFIX: &str = "TrentService.";
/// Largest `NumberOfBytes` of GenerateDataKey, as in KMS.
pub const MAX_DATA_KEY_BYTES: i64 = 1024;
/// Largest Encrypt plaintext, as in KMS.
pub const MAX_PLAINTEXT_BYTES: usize = 4096;
/// Largest CiphertextBlob Decrypt accepts, as in KMS.
pub const MAX_CIPHERTEXT_BLOB_BYTES: usize = 6144;
/// Longest alias name including `alias/`, as in KMS.
pub const MAX_ALIAS_NAME_LEN: usize = 256;
/// Longest key description, as in KMS.
pub const MAX_DESCRIPTION_LEN: usize = 8192;
/// Largest page of ListKeys / ListAliases, as in KMS.
pub const MAX_LIST_LIMIT: i64 = 1000;
/// Page size of ListKeys / ListAliases without `Limit`, as in KMS.
pub const DEFAULT_LIST_LIMIT: i64 = 100;
/// The only encryption algorithm of symmetric keys.
const SYMMETRIC_DEFAULT: &str = "SYMMETRIC_DEFAULT";

/// The answer to one request: HTTP status and JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmsResponse {
    /// 200, or the error's status.
    pub status: u16,
    /// The response JSON, or `{"__type","message"}` for an error.
    pub body: Vec<u8>,
}

/// What to create with [`KeyService::create_key`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewKey {
    /// Free text.
    pub description: String,
    /// An alias (`alias/…`) for the new key.
    pub alias: Option<String>,
    /// Who may use it.
    pub access: KeyAccess,
}

impl Default for NewKey {
    fn default() -> Self {
        Self {
            description: String::new(),
            alias: None,
            access: KeyAccess::AnyCaller,
        }
    }
}

/// What the service tells about a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyMetadata {
    /// The key id.
    pub key_id: Uuid,
    /// `arn:aws:kms:<region>:<account>:key/<key id>`.
    pub arn: String,
    /// Free text.
    pub description: String,
    /// Creation time, Unix epoch milliseconds.
    pub created_unix_ms: i64,
    /// Whether cryptographic operations are allowed.
    pub enabled: bool,
    /// Who may use it.
    pub access: KeyAccess,
}

/// An identity-policy check the embedding server makes of each request, on top of the keys' own
/// [`KeyAccess`]: `action` is `kms:<Operation>`, `resource` the ARN of the key (or, before a
/// key is created for it, the alias) the request acts on, `*` for operations on no key. The
/// error is the refusal's message.
pub trait IdentityPolicy {
    /// Allows or refuses one action on one resource.
    fn check(&self, action: &str, resource: &str) -> Result<(), String>;
}

/// Who makes a request: the principal the embedding server authenticated (if any) and the
/// identity policy that applies to it (none: only the keys' [`KeyAccess`] decides).
#[derive(Clone, Copy, Default)]
pub struct Caller<'a> {
    /// The principal's name (an ARN on the gateway), matched against [`KeyAccess`].
    pub principal: Option<&'a str>,
    /// The principal's identity policy.
    pub policy: Option<&'a dyn IdentityPolicy>,
}

impl<'a> Caller<'a> {
    /// A caller known by name only.
    pub fn named(principal: Option<&'a str>) -> Self {
        Self {
            principal,
            policy: None,
        }
    }

    /// Checks the identity policy (if any) for `kms:<op>` on `resource`.
    fn allow(&self, op: &str, resource: &str) -> Result<(), KmsError> {
        match self.policy {
            Some(policy) => policy
                .check(&format!("kms:{op}"), resource)
                .map_err(|message| KmsError::new(KmsErrorCode::AccessDenied, message)),
            None => Ok(()),
        }
    }
}

/// How a request names a key.
enum KeyRef {
    Id(Uuid),
    Alias(String),
}

/// A local key service answering the KMS JSON API (`TrentService.*`) from the keys in its
/// [`KeyStore`]: GenerateDataKey, Encrypt, Decrypt, CreateKey, DescribeKey, ListKeys,
/// CreateAlias, ListAliases, EnableKey, DisableKey.
///
/// Authentication is the embedding server's job; it passes the authenticated principal to
/// [`KeyService::handle`], which checks it against each key's [`KeyAccess`].
///
/// ```
/// use ssmx_kms::{KeyService, MemoryKeyStore};
///
/// let kms = KeyService::new(MemoryKeyStore::new()).create_missing_aliases(true);
/// let body = br#"{"KeyId":"alias/ssmx","NumberOfBytes":64,"EncryptionContext":{"aws:ssm:SessionId":"s-1"}}"#;
/// let response = kms.handle(Some("alice"), "TrentService.GenerateDataKey", body);
/// assert_eq!(response.status, 200);
/// ```
pub struct KeyService {
    store: Box<dyn KeyStore>,
    region: String,
    account_id: String,
    create_missing_aliases: bool,
    rng: SystemRandom,
}

impl std::fmt::Debug for KeyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyService")
            .field("region", &self.region)
            .field("account_id", &self.account_id)
            .field("create_missing_aliases", &self.create_missing_aliases)
            .finish_non_exhaustive()
    }
}

impl KeyService {
    /// A service over `store`, in [`DEFAULT_REGION`] and account [`DEFAULT_ACCOUNT_ID`], that
    /// creates no keys on its own.
    pub fn new(store: impl KeyStore + 'static) -> Self {
        Self {
            store: Box::new(store),
            region: DEFAULT_REGION.to_owned(),
            account_id: DEFAULT_ACCOUNT_ID.to_owned(),
            create_missing_aliases: false,
            rng: SystemRandom::new(),
        }
    }

    /// Sets the region named in ARNs (and required in ARNs callers pass).
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    /// Sets the account id named in ARNs (and required in ARNs callers pass).
    pub fn with_account_id(mut self, account_id: impl Into<String>) -> Self {
        self.account_id = account_id.into();
        self
    }

    /// When true, GenerateDataKey and Encrypt naming an alias that does not exist create a key
    /// open to every caller under that alias, so a fresh local setup needs no key
    /// administration. Key ids and ARNs are never created.
    pub fn create_missing_aliases(mut self, create: bool) -> Self {
        self.create_missing_aliases = create;
        self
    }

    /// Answers one request: `target` is the `X-Amz-Target` header value, `body` the JSON body,
    /// `caller` the principal the embedding server authenticated (if any).
    pub fn handle(&self, caller: Option<&str>, target: &str, body: &[u8]) -> KmsResponse {
        self.handle_as(Caller::named(caller), target, body)
    }

    /// Like [`KeyService::handle`], for a caller whose identity policy is checked too.
    pub fn handle_as(&self, caller: Caller<'_>, target: &str, body: &[u8]) -> KmsResponse {
        let op = target.strip_prefix(TARGET_PREFIX).unwrap_or("");
        let _span =
            tracing::debug_span!("kms", op, caller = caller.principal.unwrap_or("-")).entered();
        let result = match op {
            "GenerateDataKey" => call(body, |r| self.generate_data_key_op(caller, r)),
            "Encrypt" => call(body, |r| self.encrypt_op(caller, r)),
            "Decrypt" => call(body, |r| self.decrypt_op(caller, r)),
            "CreateKey" => call(body, |r| self.create_key_op(caller, r)),
            "DescribeKey" => call(body, |r| self.describe_key_op(caller, r)),
            "ListKeys" => call(body, |r| self.list_keys_op(caller, r)),
            "CreateAlias" => call(body, |r| self.create_alias_op(caller, r)),
            "ListAliases" => call(body, |r| self.list_aliases_op(caller, r)),
            "EnableKey" => call(body, |r| self.set_enabled_op(caller, r, true)),
            "DisableKey" => call(body, |r| self.set_enabled_op(caller, r, false)),
            _ => Err(KmsError::new(
                KmsErrorCode::UnknownOperation,
                format!("unknown operation {target:?}"),
            )),
        };
        match result {
            Ok(body) => KmsResponse { status: 200, body },
            Err(err) => {
                tracing::debug!(code = err.code.as_str(), message = %err.message, "refused");
                KmsResponse {
                    status: err.code.status(),
                    body: err.to_json(),
                }
            }
        }
    }

    /// Creates a key (administration, no access check).
    pub fn create_key(&self, new: NewKey) -> Result<KeyMetadata, KmsError> {
        let alias = new.alias.clone();
        match self.insert_key(new)? {
            (key, Insert::Done) => Ok(self.metadata(&key)),
            (_, Insert::AliasTaken(_)) => Err(self.alias_exists(alias.as_deref().unwrap_or(""))),
        }
    }

    /// The key `alias` names, created (open to every caller) if the alias does not exist yet.
    pub fn ensure_alias(&self, alias: &str) -> Result<KeyMetadata, KmsError> {
        self.resolve(alias, true).map(|key| self.metadata(&key))
    }

    /// The key `key_id` (id, ARN, alias or alias ARN) names (administration, no access check).
    pub fn describe_key(&self, key_id: &str) -> Result<KeyMetadata, KmsError> {
        self.resolve(key_id, false).map(|key| self.metadata(&key))
    }

    /// The ARN of the key with `id`.
    pub fn key_arn(&self, id: Uuid) -> String {
        format!(
            "arn:aws:kms:{}:{}:key/{}",
            self.region,
            self.account_id,
            id.hyphenated()
        )
    }

    fn alias_arn(&self, alias: &str) -> String {
        format!("arn:aws:kms:{}:{}:{alias}", self.region, self.account_id)
    }

    fn generate_data_key_op(
        &self,
        caller: Caller<'_>,
        req: api::GenerateDataKeyRequest,
    ) -> Result<api::GenerateDataKeyResponse, KmsError> {
        check_unsupported(&req.unsupported)?;
        let key_id = required(req.key_id, "KeyId")?;
        let len = match (req.number_of_bytes, req.key_spec.as_deref()) {
            (Some(n), None) if (1..=MAX_DATA_KEY_BYTES).contains(&n) => n as usize,
            (Some(n), None) => {
                return Err(validation(format!(
                    "NumberOfBytes must be between 1 and {MAX_DATA_KEY_BYTES}, not {n}"
                )))
            }
            (None, Some("AES_256")) => 32,
            (None, Some("AES_128")) => 16,
            (None, Some(other)) => {
                return Err(validation(format!(
                    "KeySpec must be AES_256 or AES_128, not {other:?}"
                )))
            }
            _ => {
                return Err(validation(
                    "specify either NumberOfBytes or KeySpec (exactly one of them)",
                ))
            }
        };
        let key = self.resolve_for_use(caller, "GenerateDataKey", &key_id)?;
        self.check_use(&key, caller, "GenerateDataKey")?;
        let mut plaintext = vec![0u8; len];
        self.fill_random(&mut plaintext)?;
        let ciphertext_blob = self.seal(&key, &req.encryption_context, &plaintext)?;
        tracing::debug!(key = %key.id, bytes = len, "generated data key");
        Ok(api::GenerateDataKeyResponse {
            ciphertext_blob,
            plaintext,
            key_id: self.key_arn(key.id),
        })
    }

    fn encrypt_op(
        &self,
        caller: Caller<'_>,
        req: api::EncryptRequest,
    ) -> Result<api::EncryptResponse, KmsError> {
        check_unsupported(&req.unsupported)?;
        check_algorithm(req.encryption_algorithm.as_deref())?;
        let key_id = required(req.key_id, "KeyId")?;
        let plaintext = required(req.plaintext, "Plaintext")?;
        if plaintext.is_empty() || plaintext.len() > MAX_PLAINTEXT_BYTES {
            return Err(validation(format!(
                "Plaintext must have 1 to {MAX_PLAINTEXT_BYTES} bytes, not {}",
                plaintext.len()
            )));
        }
        let key = self.resolve_for_use(caller, "Encrypt", &key_id)?;
        self.check_use(&key, caller, "Encrypt")?;
        let ciphertext_blob = self.seal(&key, &req.encryption_context, &plaintext)?;
        Ok(api::EncryptResponse {
            ciphertext_blob,
            key_id: self.key_arn(key.id),
            encryption_algorithm: SYMMETRIC_DEFAULT,
        })
    }

    fn decrypt_op(
        &self,
        caller: Caller<'_>,
        req: api::DecryptRequest,
    ) -> Result<api::DecryptResponse, KmsError> {
        check_unsupported(&req.unsupported)?;
        check_algorithm(req.encryption_algorithm.as_deref())?;
        let blob = required(req.ciphertext_blob, "CiphertextBlob")?;
        if blob.is_empty() || blob.len() > MAX_CIPHERTEXT_BLOB_BYTES {
            return Err(validation(format!(
                "CiphertextBlob must have 1 to {MAX_CIPHERTEXT_BLOB_BYTES} bytes, not {}",
                blob.len()
            )));
        }
        let invalid = || {
            KmsError::new(
                KmsErrorCode::InvalidCiphertext,
                "the ciphertext was not made by this key service, was altered, or the \
                 encryption context differs from the one it was made with",
            )
        };
        let envelope = Envelope::parse(&blob).ok_or_else(invalid)?;
        if let Some(requested) = req.key_id {
            let named = self.resolve(&requested, false)?;
            if named.id != envelope.key_id {
                return Err(KmsError::new(
                    KmsErrorCode::IncorrectKey,
                    format!(
                        "the ciphertext was not made under {}",
                        self.key_arn(named.id)
                    ),
                ));
            }
        }
        let key = self.store.key(envelope.key_id)?.ok_or_else(invalid)?;
        self.check_use(&key, caller, "Decrypt")?;
        let plaintext = envelope
            .open(&key.material, &req.encryption_context)
            .ok_or_else(invalid)?;
        tracing::debug!(key = %key.id, "decrypted");
        Ok(api::DecryptResponse {
            key_id: self.key_arn(key.id),
            plaintext,
            encryption_algorithm: SYMMETRIC_DEFAULT,
        })
    }

    fn create_key_op(
        &self,
        caller: Caller<'_>,
        req: api::CreateKeyRequest,
    ) -> Result<KeyMetadataResponse, KmsError> {
        caller.allow("CreateKey", "*")?;
        let unsupported = |what: &str| {
            Err(KmsError::new(
                KmsErrorCode::UnsupportedOperation,
                format!("{what} is not supported by this key service"),
            ))
        };
        if req.policy.as_deref().is_some_and(|p| !p.is_empty()) {
            return unsupported("a key policy (keys are open to every caller when created here)");
        }
        if req.tags.as_ref().is_some_and(|t| !t.is_empty()) {
            return unsupported("tagging");
        }
        if req
            .key_usage
            .as_deref()
            .is_some_and(|u| u != "ENCRYPT_DECRYPT")
        {
            return unsupported("a KeyUsage other than ENCRYPT_DECRYPT");
        }
        for spec in [&req.key_spec, &req.customer_master_key_spec] {
            if spec.as_deref().is_some_and(|s| s != SYMMETRIC_DEFAULT) {
                return unsupported("a KeySpec other than SYMMETRIC_DEFAULT");
            }
        }
        if req.origin.as_deref().is_some_and(|o| o != "AWS_KMS") {
            return unsupported("an Origin other than AWS_KMS");
        }
        if req.custom_key_store_id.is_some() || req.xks_key_id.is_some() {
            return unsupported("a custom key store");
        }
        if req.multi_region == Some(true) {
            return unsupported("a multi-Region key");
        }
        let (key, _) = self.insert_key(NewKey {
            description: req.description.unwrap_or_default(),
            ..NewKey::default()
        })?;
        tracing::info!(key = %key.id, "created key");
        Ok(self.metadata_response(&key))
    }

    fn describe_key_op(
        &self,
        caller: Caller<'_>,
        req: api::KeyIdRequest,
    ) -> Result<KeyMetadataResponse, KmsError> {
        let key = self.resolve(&required(req.key_id, "KeyId")?, false)?;
        self.check_access(&key, caller, "DescribeKey")?;
        Ok(self.metadata_response(&key))
    }

    fn list_keys_op(
        &self,
        caller: Caller<'_>,
        req: api::ListRequest,
    ) -> Result<api::ListKeysResponse, KmsError> {
        caller.allow("ListKeys", "*")?;
        let ids = self.store.key_ids()?;
        let (page, next_marker) = paginate(ids, |id| id.hyphenated().to_string(), &req)?;
        Ok(api::ListKeysResponse {
            keys: page
                .into_iter()
                .map(|id| api::ListKeysEntry {
                    key_id: id.hyphenated().to_string(),
                    key_arn: self.key_arn(id),
                })
                .collect(),
            truncated: next_marker.is_some(),
            next_marker,
        })
    }

    fn create_alias_op(
        &self,
        caller: Caller<'_>,
        req: api::CreateAliasRequest,
    ) -> Result<Empty, KmsError> {
        let alias = required(req.alias_name, "AliasName")?;
        validate_alias(&alias)?;
        let target = required(req.target_key_id, "TargetKeyId")?;
        let KeyRef::Id(id) = self.parse_key_ref(&target)? else {
            return Err(validation(
                "TargetKeyId must be a key id or key ARN, not an alias",
            ));
        };
        let key = self.key_by_id(id)?;
        self.check_access(&key, caller, "CreateAlias")?;
        match self.store.insert_alias(&alias, key.id)? {
            Insert::Done => Ok(Empty {}),
            Insert::AliasTaken(_) => Err(self.alias_exists(&alias)),
        }
    }

    fn list_aliases_op(
        &self,
        caller: Caller<'_>,
        req: api::ListRequest,
    ) -> Result<api::ListAliasesResponse, KmsError> {
        caller.allow("ListAliases", "*")?;
        let mut aliases = self.store.aliases()?;
        if let Some(key_id) = &req.key_id {
            let key = self.resolve(key_id, false)?;
            aliases.retain(|(_, id)| *id == key.id);
        }
        let (page, next_marker) = paginate(aliases, |(name, _)| name.clone(), &req)?;
        Ok(api::ListAliasesResponse {
            aliases: page
                .into_iter()
                .map(|(name, id)| api::AliasEntry {
                    alias_arn: self.alias_arn(&name),
                    alias_name: name,
                    target_key_id: id.hyphenated().to_string(),
                })
                .collect(),
            truncated: next_marker.is_some(),
            next_marker,
        })
    }

    fn set_enabled_op(
        &self,
        caller: Caller<'_>,
        req: api::KeyIdRequest,
        enabled: bool,
    ) -> Result<Empty, KmsError> {
        let key = self.resolve(&required(req.key_id, "KeyId")?, false)?;
        self.check_access(
            &key,
            caller,
            if enabled { "EnableKey" } else { "DisableKey" },
        )?;
        self.store.set_enabled(key.id, enabled)?;
        tracing::info!(key = %key.id, enabled, "key state changed");
        Ok(Empty {})
    }

    /// Reads a key reference: key id, key ARN, alias name or alias ARN of this region and
    /// account.
    fn parse_key_ref(&self, text: &str) -> Result<KeyRef, KmsError> {
        let not_found = || KmsError::new(KmsErrorCode::NotFound, format!("Invalid keyId '{text}'"));
        let resource = match text.strip_prefix("arn:") {
            Some(arn) => {
                let parts: Vec<&str> = arn.splitn(5, ':').collect();
                match parts.as_slice() {
                    [partition, "kms", region, account, resource]
                        if partition.starts_with("aws")
                            && *region == self.region
                            && *account == self.account_id =>
                    {
                        match resource.strip_prefix("key/") {
                            Some(id) => {
                                return parse_key_id(id).map(KeyRef::Id).ok_or_else(not_found)
                            }
                            None => *resource,
                        }
                    }
                    _ => {
                        return Err(KmsError::new(
                            KmsErrorCode::NotFound,
                            format!(
                                "'{text}' is not a key of this key service (region {}, account {})",
                                self.region, self.account_id
                            ),
                        ))
                    }
                }
            }
            None => text,
        };
        if resource.starts_with("alias/") {
            Ok(KeyRef::Alias(resource.to_owned()))
        } else if text.starts_with("arn:") {
            Err(not_found())
        } else {
            parse_key_id(resource).map(KeyRef::Id).ok_or_else(not_found)
        }
    }

    /// The key a GenerateDataKey or Encrypt names: with `create_missing_aliases`, a missing alias
    /// gets a new key, once the caller's policy allows `op` on the alias.
    fn resolve_for_use(
        &self,
        caller: Caller<'_>,
        op: &str,
        text: &str,
    ) -> Result<StoredKey, KmsError> {
        match self.resolve(text, false) {
            Err(e) if e.code == KmsErrorCode::NotFound && self.create_missing_aliases => {
                if let Ok(KeyRef::Alias(alias)) = self.parse_key_ref(text) {
                    caller.allow(op, &self.alias_arn(&alias))?;
                }
                self.resolve(text, true)
            }
            other => other,
        }
    }

    /// The key `text` names; with `create_alias`, a missing alias gets a new key.
    fn resolve(&self, text: &str, create_alias: bool) -> Result<StoredKey, KmsError> {
        match self.parse_key_ref(text)? {
            KeyRef::Id(id) => self.key_by_id(id),
            KeyRef::Alias(alias) => {
                if let Some(id) = self.store.alias(&alias)? {
                    return self.key_by_id(id);
                }
                if !create_alias {
                    return Err(KmsError::new(
                        KmsErrorCode::NotFound,
                        format!("Alias {} is not found.", self.alias_arn(&alias)),
                    ));
                }
                match self.insert_key(NewKey {
                    description: format!("created on first use of {alias}"),
                    alias: Some(alias.clone()),
                    access: KeyAccess::AnyCaller,
                })? {
                    (key, Insert::Done) => {
                        tracing::info!(key = %key.id, alias, "created key on first use");
                        Ok(key)
                    }
                    // Another request created it meanwhile.
                    (_, Insert::AliasTaken(id)) => self.key_by_id(id),
                }
            }
        }
    }

    fn key_by_id(&self, id: Uuid) -> Result<StoredKey, KmsError> {
        self.store.key(id)?.ok_or_else(|| {
            KmsError::new(
                KmsErrorCode::NotFound,
                format!("Key '{}' does not exist", self.key_arn(id)),
            )
        })
    }

    fn insert_key(&self, new: NewKey) -> Result<(StoredKey, Insert), KmsError> {
        if let Some(alias) = &new.alias {
            validate_alias(alias)?;
        }
        if new.description.len() > MAX_DESCRIPTION_LEN {
            return Err(validation(format!(
                "Description must have at most {MAX_DESCRIPTION_LEN} characters"
            )));
        }
        let mut material = [0u8; MASTER_KEY_LEN];
        self.fill_random(&mut material)?;
        let key = StoredKey {
            id: Uuid::new_v4(),
            material: MasterKey::from_bytes(material),
            description: new.description,
            created_unix_ms: now_unix_ms(),
            enabled: true,
            access: new.access,
        };
        let outcome = self.store.insert(&key, new.alias.as_deref())?;
        Ok((key, outcome))
    }

    fn check_access(
        &self,
        key: &StoredKey,
        caller: Caller<'_>,
        action: &str,
    ) -> Result<(), KmsError> {
        caller.allow(action, &self.key_arn(key.id))?;
        if key.access.allows(caller.principal) {
            return Ok(());
        }
        tracing::info!(key = %key.id, action, "access denied");
        Err(KmsError::new(
            KmsErrorCode::AccessDenied,
            format!(
                "User: {} is not authorized to perform: kms:{action} on resource: {}",
                caller.principal.unwrap_or("anonymous"),
                self.key_arn(key.id)
            ),
        ))
    }

    /// Access, then state: a cryptographic operation needs both.
    fn check_use(&self, key: &StoredKey, caller: Caller<'_>, action: &str) -> Result<(), KmsError> {
        self.check_access(key, caller, action)?;
        if key.enabled {
            Ok(())
        } else {
            Err(KmsError::new(
                KmsErrorCode::Disabled,
                format!("{} is disabled.", self.key_arn(key.id)),
            ))
        }
    }

    fn seal(
        &self,
        key: &StoredKey,
        context: &BTreeMap<String, String>,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, KmsError> {
        envelope::seal(&self.rng, key.id, &key.material, context, plaintext)
            .map_err(|_| random_failed())
    }

    fn fill_random(&self, buf: &mut [u8]) -> Result<(), KmsError> {
        self.rng.fill(buf).map_err(|_| random_failed())
    }

    fn alias_exists(&self, alias: &str) -> KmsError {
        KmsError::new(
            KmsErrorCode::AlreadyExists,
            format!(
                "An alias with the name {} already exists",
                self.alias_arn(alias)
            ),
        )
    }

    fn metadata(&self, key: &StoredKey) -> KeyMetadata {
        KeyMetadata {
            key_id: key.id,
            arn: self.key_arn(key.id),
            description: key.description.clone(),
            created_unix_ms: key.created_unix_ms,
            enabled: key.enabled,
            access: key.access.clone(),
        }
    }

    fn metadata_response(&self, key: &StoredKey) -> KeyMetadataResponse {
        KeyMetadataResponse {
            key_metadata: KeyMetadataJson {
                aws_account_id: self.account_id.clone(),
                key_id: key.id.hyphenated().to_string(),
                arn: self.key_arn(key.id),
                creation_date: key.created_unix_ms as f64 / 1000.0,
                enabled: key.enabled,
                description: key.description.clone(),
                key_usage: "ENCRYPT_DECRYPT",
                key_state: if key.enabled { "Enabled" } else { "Disabled" },
                origin: "AWS_KMS",
                key_manager: "CUSTOMER",
                customer_master_key_spec: SYMMETRIC_DEFAULT,
                key_spec: SYMMETRIC_DEFAULT,
                encryption_algorithms: [SYMMETRIC_DEFAULT],
                multi_region: false,
            },
        }
    }
}

/// Parses the body, runs the operation, serialises its output.
fn call<Req: DeserializeOwned, Resp: Serialize>(
    body: &[u8],
    op: impl FnOnce(Req) -> Result<Resp, KmsError>,
) -> Result<Vec<u8>, KmsError> {
    // Operations without input may come with an empty body.
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let request = serde_json::from_slice(body).map_err(|e| {
        KmsError::new(
            KmsErrorCode::Serialization,
            format!("malformed request body: {e}"),
        )
    })?;
    let response = op(request)?;
    Ok(serde_json::to_vec(&response).expect("responses serialise"))
}

fn required<T>(value: Option<T>, member: &str) -> Result<T, KmsError> {
    value.ok_or_else(|| validation(format!("{member} is required")))
}

fn validation(message: impl Into<String>) -> KmsError {
    KmsError::new(KmsErrorCode::Validation, message)
}

fn random_failed() -> KmsError {
    KmsError::new(
        KmsErrorCode::Internal,
        "the system random number generator failed",
    )
}

fn check_unsupported(unsupported: &api::Unsupported) -> Result<(), KmsError> {
    let what = if unsupported.dry_run == Some(true) {
        "DryRun"
    } else if unsupported.recipient.is_some() {
        "Recipient (attested enclaves)"
    } else {
        return Ok(());
    };
    Err(KmsError::new(
        KmsErrorCode::UnsupportedOperation,
        format!("{what} is not supported by this key service"),
    ))
}

fn check_algorithm(algorithm: Option<&str>) -> Result<(), KmsError> {
    match algorithm {
        None | Some(SYMMETRIC_DEFAULT) => Ok(()),
        Some(other) => Err(validation(format!(
            "EncryptionAlgorithm must be SYMMETRIC_DEFAULT, not {other:?}"
        ))),
    }
}

/// A key id in its canonical form (lowercase, hyphenated).
fn parse_key_id(text: &str) -> Option<Uuid> {
    let id = Uuid::try_parse(text).ok()?;
    (id.hyphenated().to_string() == text).then_some(id)
}

fn validate_alias(alias: &str) -> Result<(), KmsError> {
    let name = alias.strip_prefix("alias/").unwrap_or("");
    if name.is_empty()
        || alias.len() > MAX_ALIAS_NAME_LEN
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'))
    {
        return Err(validation(format!(
            "alias {alias:?} must be 'alias/' followed by letters, digits, '/', '_' or '-', \
             at most {MAX_ALIAS_NAME_LEN} characters in all"
        )));
    }
    if name.starts_with("aws/") {
        return Err(validation(format!(
            "alias {alias:?}: the prefix alias/aws/ is reserved for AWS managed keys"
        )));
    }
    Ok(())
}

/// One page of `items` after `Marker`, and the marker of the next page.
fn paginate<T>(
    items: Vec<T>,
    marker_of: impl Fn(&T) -> String,
    req: &api::ListRequest,
) -> Result<(Vec<T>, Option<String>), KmsError> {
    let limit = req.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(validation(format!(
            "Limit must be between 1 and {MAX_LIST_LIMIT}, not {limit}"
        )));
    }
    let start = match &req.marker {
        None => 0,
        Some(marker) => items
            .iter()
            .position(|item| marker_of(item) == *marker)
            .ok_or_else(|| {
                KmsError::new(
                    KmsErrorCode::InvalidMarker,
                    format!("marker {marker:?} was not issued by this service or is stale"),
                )
            })?,
    };
    let mut page: Vec<T> = items.into_iter().skip(start).collect();
    let next = page.get(limit as usize).map(&marker_of);
    page.truncate(limit as usize);
    Ok((page, next))
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
