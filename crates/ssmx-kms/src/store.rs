//! Where the service keeps its master keys and aliases: a [`KeyStore`] trait with an in-memory
//! implementation and one on a SQLite connection the caller owns.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

/// Size of a master key: AES-256.
pub const MASTER_KEY_LEN: usize = 32;

/// A 32-byte AES-256 master key. Its `Debug` output hides the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey([u8; MASTER_KEY_LEN]);

impl MasterKey {
    /// Wraps key bytes.
    pub fn from_bytes(bytes: [u8; MASTER_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8; MASTER_KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// Who may use a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyAccess {
    /// Every caller the gateway let through (the default of a KMS key policy that trusts the
    /// account).
    AnyCaller,
    /// Only these principals, as the gateway names its authenticated callers.
    Principals(Vec<String>),
}

impl KeyAccess {
    /// True when `caller` may use the key.
    pub fn allows(&self, caller: Option<&str>) -> bool {
        match self {
            KeyAccess::AnyCaller => true,
            KeyAccess::Principals(list) => caller.is_some_and(|c| list.iter().any(|p| p == c)),
        }
    }
}

/// One master key as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    /// The key id (its ARN ends with it).
    pub id: Uuid,
    /// The key material.
    pub material: MasterKey,
    /// Free text.
    pub description: String,
    /// Creation time, Unix epoch milliseconds.
    pub created_unix_ms: i64,
    /// Disabled keys refuse cryptographic operations.
    pub enabled: bool,
    /// Who may use it.
    pub access: KeyAccess,
}

/// Outcome of storing a key together with an alias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    /// Stored.
    Done,
    /// The alias already names this key; nothing was stored.
    AliasTaken(Uuid),
}

/// A failure of the storage below the service.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row cannot be read back.
    #[error("corrupt key record {key_id}: {detail}")]
    Corrupt {
        /// The row's key id.
        key_id: String,
        /// What is wrong.
        detail: String,
    },
}

/// Storage of master keys and aliases. Every method is one atomic step.
pub trait KeyStore: Send + Sync {
    /// Stores `key`, and with `alias` also the alias pointing to it — unless the alias exists,
    /// in which case nothing is stored.
    fn insert(&self, key: &StoredKey, alias: Option<&str>) -> Result<Insert, StoreError>;
    /// The key with `id`.
    fn key(&self, id: Uuid) -> Result<Option<StoredKey>, StoreError>;
    /// All key ids, oldest first.
    fn key_ids(&self) -> Result<Vec<Uuid>, StoreError>;
    /// Enables or disables a key; false when there is no such key.
    fn set_enabled(&self, id: Uuid, enabled: bool) -> Result<bool, StoreError>;
    /// The key an alias names.
    fn alias(&self, name: &str) -> Result<Option<Uuid>, StoreError>;
    /// Points a new alias at `key`; returns the existing target if the alias is taken.
    fn insert_alias(&self, name: &str, key: Uuid) -> Result<Insert, StoreError>;
    /// All aliases and their keys, by name.
    fn aliases(&self) -> Result<Vec<(String, Uuid)>, StoreError>;
}

/// Keys kept in memory, lost when the process ends.
#[derive(Debug, Default)]
pub struct MemoryKeyStore {
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    keys: HashMap<Uuid, StoredKey>,
    order: Vec<Uuid>,
    aliases: BTreeMap<String, Uuid>,
}

impl MemoryKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemoryInner> {
        // The maps stay consistent even if a holder panicked: every update is a single insert.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl KeyStore for MemoryKeyStore {
    fn insert(&self, key: &StoredKey, alias: Option<&str>) -> Result<Insert, StoreError> {
        let mut inner = self.lock();
        if let Some(name) = alias {
            if let Some(existing) = inner.aliases.get(name) {
                return Ok(Insert::AliasTaken(*existing));
            }
            inner.aliases.insert(name.to_owned(), key.id);
        }
        inner.order.push(key.id);
        inner.keys.insert(key.id, key.clone());
        Ok(Insert::Done)
    }

    fn key(&self, id: Uuid) -> Result<Option<StoredKey>, StoreError> {
        Ok(self.lock().keys.get(&id).cloned())
    }

    fn key_ids(&self) -> Result<Vec<Uuid>, StoreError> {
        Ok(self.lock().order.clone())
    }

    fn set_enabled(&self, id: Uuid, enabled: bool) -> Result<bool, StoreError> {
        Ok(match self.lock().keys.get_mut(&id) {
            Some(key) => {
                key.enabled = enabled;
                true
            }
            None => false,
        })
    }

    fn alias(&self, name: &str) -> Result<Option<Uuid>, StoreError> {
        Ok(self.lock().aliases.get(name).copied())
    }

    fn insert_alias(&self, name: &str, key: Uuid) -> Result<Insert, StoreError> {
        let mut inner = self.lock();
        if let Some(existing) = inner.aliases.get(name) {
            return Ok(Insert::AliasTaken(*existing));
        }
        inner.aliases.insert(name.to_owned(), key);
        Ok(Insert::Done)
    }

    fn aliases(&self) -> Result<Vec<(String, Uuid)>, StoreError> {
        Ok(self
            .lock()
            .aliases
            .iter()
            .map(|(name, id)| (name.clone(), *id))
            .collect())
    }
}

/// Keys in the tables `kms_keys` and `kms_aliases` of a SQLite database the caller owns (the
/// gateway passes its own). Each call holds the connection's lock for a statement or two.
///
/// The key material is stored as it is: protect the database file like a key file.
#[derive(Clone, Debug)]
pub struct SqliteKeyStore {
    conn: Arc<Mutex<Connection>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kms_keys (
    key_id      TEXT PRIMARY KEY NOT NULL,
    material    BLOB NOT NULL,
    description TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    enabled     INTEGER NOT NULL,
    principals  TEXT
);
CREATE TABLE IF NOT EXISTS kms_aliases (
    alias_name  TEXT PRIMARY KEY NOT NULL,
    key_id      TEXT NOT NULL REFERENCES kms_keys(key_id)
);
";

impl SqliteKeyStore {
    /// A store on `conn`, creating its tables if they do not exist.
    pub fn new(conn: Arc<Mutex<Connection>>) -> Result<Self, StoreError> {
        let store = Self { conn };
        store.lock().execute_batch(SCHEMA)?;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // SQLite keeps its own consistency; a panic elsewhere does not corrupt the connection.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type KeyRow = (String, Vec<u8>, String, i64, bool, Option<String>);

fn key_from_row(row: KeyRow) -> Result<StoredKey, StoreError> {
    let (key_id, material, description, created_unix_ms, enabled, principals) = row;
    let corrupt = |detail: String| StoreError::Corrupt {
        key_id: key_id.clone(),
        detail,
    };
    let id = Uuid::parse_str(&key_id).map_err(|e| corrupt(format!("key id: {e}")))?;
    let material: [u8; MASTER_KEY_LEN] = material
        .as_slice()
        .try_into()
        .map_err(|_| corrupt(format!("key material has {} bytes", material.len())))?;
    let access = match principals {
        None => KeyAccess::AnyCaller,
        Some(json) => KeyAccess::Principals(
            serde_json::from_str(&json).map_err(|e| corrupt(format!("principals: {e}")))?,
        ),
    };
    Ok(StoredKey {
        id,
        material: MasterKey::from_bytes(material),
        description,
        created_unix_ms,
        enabled,
        access,
    })
}

fn parse_id(text: String) -> Result<Uuid, StoreError> {
    Uuid::parse_str(&text).map_err(|e| StoreError::Corrupt {
        key_id: text,
        detail: e.to_string(),
    })
}

fn alias_target(conn: &Connection, name: &str) -> Result<Option<Uuid>, StoreError> {
    conn.query_row(
        "SELECT key_id FROM kms_aliases WHERE alias_name = ?1",
        [name],
        |row| row.get::<_, String>(0),
    )
    .optional()?
    .map(parse_id)
    .transpose()
}

impl KeyStore for SqliteKeyStore {
    fn insert(&self, key: &StoredKey, alias: Option<&str>) -> Result<Insert, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        if let Some(name) = alias {
            if let Some(existing) = alias_target(&tx, name)? {
                return Ok(Insert::AliasTaken(existing));
            }
        }
        let principals = match &key.access {
            KeyAccess::AnyCaller => None,
            KeyAccess::Principals(list) => {
                Some(serde_json::to_string(list).expect("strings serialise"))
            }
        };
        tx.execute(
            "INSERT INTO kms_keys (key_id, material, description, created_ms, enabled, principals)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                key.id.hyphenated().to_string(),
                &key.material.as_bytes()[..],
                key.description,
                key.created_unix_ms,
                key.enabled,
                principals,
            ],
        )?;
        if let Some(name) = alias {
            tx.execute(
                "INSERT INTO kms_aliases (alias_name, key_id) VALUES (?1, ?2)",
                params![name, key.id.hyphenated().to_string()],
            )?;
        }
        tx.commit()?;
        Ok(Insert::Done)
    }

    fn key(&self, id: Uuid) -> Result<Option<StoredKey>, StoreError> {
        let row: Option<KeyRow> = self
            .lock()
            .query_row(
                "SELECT key_id, material, description, created_ms, enabled, principals
                 FROM kms_keys WHERE key_id = ?1",
                [id.hyphenated().to_string()],
                |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                    ))
                },
            )
            .optional()?;
        row.map(key_from_row).transpose()
    }

    fn key_ids(&self) -> Result<Vec<Uuid>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT key_id FROM kms_keys ORDER BY created_ms, rowid")?;
        let ids = stmt
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        ids.into_iter().map(parse_id).collect()
    }

    fn set_enabled(&self, id: Uuid, enabled: bool) -> Result<bool, StoreError> {
        let changed = self.lock().execute(
            "UPDATE kms_keys SET enabled = ?1 WHERE key_id = ?2",
            params![enabled, id.hyphenated().to_string()],
        )?;
        Ok(changed == 1)
    }

    fn alias(&self, name: &str) -> Result<Option<Uuid>, StoreError> {
        alias_target(&self.lock(), name)
    }

    fn insert_alias(&self, name: &str, key: Uuid) -> Result<Insert, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        if let Some(existing) = alias_target(&tx, name)? {
            return Ok(Insert::AliasTaken(existing));
        }
        tx.execute(
            "INSERT INTO kms_aliases (alias_name, key_id) VALUES (?1, ?2)",
            params![name, key.hyphenated().to_string()],
        )?;
        tx.commit()?;
        Ok(Insert::Done)
    }

    fn aliases(&self) -> Result<Vec<(String, Uuid)>, StoreError> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT alias_name, key_id FROM kms_aliases ORDER BY alias_name")?;
        let rows = stmt
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(name, id)| Ok((name, parse_id(id)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8, access: KeyAccess) -> StoredKey {
        StoredKey {
            id: Uuid::new_v4(),
            material: MasterKey::from_bytes([n; 32]),
            description: format!("key {n}"),
            created_unix_ms: 1_700_000_000_000 + i64::from(n),
            enabled: true,
            access,
        }
    }

    fn exercise(store: &dyn KeyStore) {
        let a = key(1, KeyAccess::AnyCaller);
        let b = key(
            2,
            KeyAccess::Principals(vec!["alice".into(), "mi-0123".into()]),
        );
        assert_eq!(store.insert(&a, Some("alias/a")).unwrap(), Insert::Done);
        assert_eq!(store.insert(&b, None).unwrap(), Insert::Done);
        assert_eq!(store.key(a.id).unwrap().unwrap(), a);
        assert_eq!(store.key(b.id).unwrap().unwrap(), b);
        assert_eq!(store.key(Uuid::new_v4()).unwrap(), None);
        assert_eq!(store.key_ids().unwrap(), vec![a.id, b.id]);

        // A taken alias stores nothing.
        let c = key(3, KeyAccess::AnyCaller);
        assert_eq!(
            store.insert(&c, Some("alias/a")).unwrap(),
            Insert::AliasTaken(a.id)
        );
        assert_eq!(store.key(c.id).unwrap(), None);
        assert_eq!(
            store.insert_alias("alias/a", b.id).unwrap(),
            Insert::AliasTaken(a.id)
        );
        assert_eq!(store.insert_alias("alias/b", b.id).unwrap(), Insert::Done);
        assert_eq!(store.alias("alias/b").unwrap(), Some(b.id));
        assert_eq!(store.alias("alias/none").unwrap(), None);
        assert_eq!(
            store.aliases().unwrap(),
            vec![("alias/a".to_owned(), a.id), ("alias/b".to_owned(), b.id)]
        );

        assert!(store.set_enabled(a.id, false).unwrap());
        assert!(!store.key(a.id).unwrap().unwrap().enabled);
        assert!(!store.set_enabled(Uuid::new_v4(), false).unwrap());
    }

    #[test]
    fn memory_store() {
        exercise(&MemoryKeyStore::new());
    }

    #[test]
    fn sqlite_store_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let conn = Arc::new(Mutex::new(Connection::open(&path).unwrap()));
        exercise(&SqliteKeyStore::new(conn).unwrap());

        let reopened =
            SqliteKeyStore::new(Arc::new(Mutex::new(Connection::open(&path).unwrap()))).unwrap();
        assert_eq!(reopened.key_ids().unwrap().len(), 2);
        assert_eq!(reopened.aliases().unwrap().len(), 2);
    }

    #[test]
    fn corrupt_rows_are_errors() {
        let conn = Arc::new(Mutex::new(Connection::open_in_memory().unwrap()));
        let store = SqliteKeyStore::new(conn.clone()).unwrap();
        let id = Uuid::new_v4();
        conn.lock()
            .unwrap()
            .execute(
                "INSERT INTO kms_keys VALUES (?1, x'0102', '', 0, 1, NULL)",
                [id.hyphenated().to_string()],
            )
            .unwrap();
        assert!(matches!(
            store.key(id),
            Err(StoreError::Corrupt { detail, .. }) if detail.contains("2 bytes")
        ));
    }

    #[test]
    fn access_rules() {
        assert!(KeyAccess::AnyCaller.allows(None));
        let only = KeyAccess::Principals(vec!["alice".into()]);
        assert!(only.allows(Some("alice")));
        assert!(!only.allows(Some("bob")));
        assert!(!only.allows(None));
    }
}
