//! Managed instances of the official amazon-ssm-agent (OFFICIAL-AGENT.md §4): the RSA public key
//! and hardware fingerprint each registered with, and the temporary role credentials issued to
//! it on requests signed with that key.

use std::time::{Duration, SystemTime};

use rusqlite::{params, OptionalExtension as _};

use crate::secrets::{random_base64, random_token, secret_hash, ALNUM, BASE32};
use crate::store::{millis, RegisterError, Store, StoreError};

/// Lifetime of issued role credentials: AWS's one hour. The agent refreshes at half-life.
pub const ROLE_CREDENTIALS_LIFETIME: Duration = Duration::from_secs(3600);

/// Tables of this module, created with the store's.
pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS instance_keys (
    instance_id TEXT PRIMARY KEY REFERENCES instances(instance_id),
    public_key BLOB NOT NULL,
    fingerprint TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS role_credentials (
    access_key_id TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL REFERENCES instances(instance_id),
    secret_sealed BLOB NOT NULL,
    session_token_hash TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS role_credentials_by_expiry ON role_credentials(expires_at);
"#;

/// Tables holding rows of an instance, emptied when it is deregistered.
pub(crate) const INSTANCE_TABLES: [&str; 2] = ["instance_keys", "role_credentials"];

/// The key an instance registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceKey {
    /// DER SubjectPublicKeyInfo of its RSA key.
    pub public_key: Vec<u8>,
    /// The fingerprint it registered with.
    pub fingerprint: String,
}

/// Temporary credentials issued to an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleCredentials {
    /// Access key id (`ASIA…`, as AWS's temporary keys).
    pub access_key_id: String,
    /// Secret key.
    pub secret_access_key: String,
    /// Session token the agent sends as `X-Amz-Security-Token`.
    pub session_token: String,
    /// End of validity.
    pub expires_at: SystemTime,
}

impl Store {
    /// Registers an official agent with an activation (RegisterManagedInstance): a new instance
    /// that keeps `public_key` and `fingerprint`. Returns the instance id.
    pub fn register_managed_instance(
        &self,
        activation_id: &str,
        activation_code: &str,
        public_key: &[u8],
        fingerprint: &str,
    ) -> Result<String, RegisterError> {
        let registration =
            self.register_instance_with(activation_id, activation_code, "", "", |tx, id| {
                tx.execute(
                    "INSERT INTO instance_keys (instance_id, public_key, fingerprint, updated_at) VALUES (?1, ?2, ?3, ?4)",
                    params![id, public_key, fingerprint, millis(SystemTime::now())],
                )
                .map(drop)
            })?;
        Ok(registration.instance_id)
    }

    /// The key `instance_id` registered, if it registered one.
    pub fn instance_key(&self, instance_id: &str) -> Result<Option<InstanceKey>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT public_key, fingerprint FROM instance_keys WHERE instance_id = ?1",
                params![instance_id],
                |r| {
                    Ok(InstanceKey {
                        public_key: r.get(0)?,
                        fingerprint: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    /// Replaces an instance's key (UpdateManagedInstancePublicKey). False when it has none.
    pub fn replace_instance_key(
        &self,
        instance_id: &str,
        public_key: &[u8],
    ) -> Result<bool, StoreError> {
        let n = self.conn().execute(
            "UPDATE instance_keys SET public_key = ?2, updated_at = ?3 WHERE instance_id = ?1",
            params![instance_id, public_key, millis(SystemTime::now())],
        )?;
        Ok(n == 1)
    }

    /// Issues temporary credentials to `instance_id` for [`ROLE_CREDENTIALS_LIFETIME`], and
    /// forgets every expired one.
    pub fn issue_role_credentials(&self, instance_id: &str) -> Result<RoleCredentials, StoreError> {
        let now = SystemTime::now();
        let credentials = RoleCredentials {
            access_key_id: format!("ASIA{}", random_token(16, BASE32)),
            secret_access_key: random_token(40, ALNUM),
            session_token: random_base64(96),
            expires_at: now + ROLE_CREDENTIALS_LIFETIME,
        };
        let sealed = self
            .sealing_key
            .seal(credentials.secret_access_key.as_bytes());
        let conn = self.conn();
        conn.execute(
            "DELETE FROM role_credentials WHERE expires_at <= ?1",
            params![millis(now)],
        )?;
        conn.execute(
            "INSERT INTO role_credentials (access_key_id, instance_id, secret_sealed, session_token_hash, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                credentials.access_key_id,
                instance_id,
                sealed,
                secret_hash(&credentials.session_token),
                millis(credentials.expires_at),
            ],
        )?;
        Ok(credentials)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Database;
    use crate::store::NewActivation;

    #[test]
    fn a_managed_instance_keeps_its_key_and_gets_expiring_credentials() {
        let store = Store::open(&Database::Memory).unwrap();
        let a = store.create_activation(&NewActivation::default()).unwrap();
        let id = store
            .register_managed_instance(&a.activation_id, &a.activation_code, b"spki", "fp-1")
            .unwrap();
        let key = store.instance_key(&id).unwrap().unwrap();
        assert_eq!(
            (key.public_key.as_slice(), key.fingerprint.as_str()),
            (&b"spki"[..], "fp-1")
        );
        assert!(store.replace_instance_key(&id, b"new").unwrap());
        assert_eq!(store.instance_key(&id).unwrap().unwrap().public_key, b"new");

        let issued = store.issue_role_credentials(&id).unwrap();
        let found = store
            .agent_credential(&issued.access_key_id)
            .unwrap()
            .unwrap();
        assert_eq!(found.instance_id, id);
        assert_eq!(found.secret, issued.secret_access_key);
        assert_eq!(
            found.session_token_hash,
            Some(secret_hash(&issued.session_token))
        );
        store
            .conn()
            .execute("UPDATE role_credentials SET expires_at = 0", [])
            .unwrap();
        assert_eq!(store.agent_credential(&issued.access_key_id).unwrap(), None);

        assert!(store.deregister_instance(&id).unwrap());
        assert_eq!(store.instance_key(&id).unwrap(), None);
    }

    #[test]
    fn a_wrong_activation_code_registers_nothing() {
        let store = Store::open(&Database::Memory).unwrap();
        let a = store.create_activation(&NewActivation::default()).unwrap();
        assert!(matches!(
            store.register_managed_instance(&a.activation_id, "wrong", b"k", "f"),
            Err(RegisterError::Invalid)
        ));
        assert!(store.instances().unwrap().is_empty());
    }
}
