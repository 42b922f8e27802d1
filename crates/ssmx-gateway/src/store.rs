//! Durable state in SQLite: activations, registered instances and their credentials, sessions,
//! and an audit trail.
//!
//! Activation codes are stored as SHA-256 hashes (they are only ever compared). Agent secrets must
//! be recoverable to verify SigV4, so they are sealed with AES-256-GCM under a key kept in a file
//! beside the database (`<db>.key`, mode 0600), never in the database itself.
//!
//! ```
//! use ssmx_gateway::store::{NewActivation, Store};
//! use ssmx_gateway::config::Database;
//!
//! let store = Store::open(&Database::Memory).unwrap();
//! let activation = store.create_activation(&NewActivation::default()).unwrap();
//! let reg = store
//!     .register_instance(&activation.activation_id, &activation.activation_code, "host1", "linux")
//!     .unwrap();
//! assert!(reg.instance_id.starts_with("mi-"));
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::config::Database;
use crate::secrets::{
    constant_time_eq, random_hex, random_token, secret_hash, SealingKey, ALNUM, BASE32,
};

/// How long SQLite waits on a lock held by another process (e.g. `ssmx gateway activation
/// create` while the gateway runs) before reporting busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Registrations an activation allows when the caller names no limit (AWS's default).
pub const DEFAULT_REGISTRATION_LIMIT: u32 = 1;
/// Lifetime of an activation when the caller names no expiry (AWS's default: 24 hours).
pub const DEFAULT_ACTIVATION_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// AWS's maximum activation lifetime: 30 days.
pub const MAX_ACTIVATION_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// AWS's maximum registration limit per activation.
pub const MAX_REGISTRATION_LIMIT: u32 = 1000;

const SCHEMA: &str = r#"
PRAGMA foreign_keys = ON;
CREATE TABLE IF NOT EXISTS activations (
    activation_id TEXT PRIMARY KEY,
    code_hash TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    default_instance_name TEXT NOT NULL DEFAULT '',
    iam_role TEXT NOT NULL DEFAULT '',
    registration_limit INTEGER NOT NULL,
    registrations INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    instance_id TEXT PRIMARY KEY,
    activation_id TEXT NOT NULL REFERENCES activations(activation_id),
    name TEXT NOT NULL DEFAULT '',
    iam_role TEXT NOT NULL DEFAULT '',
    access_key_id TEXT NOT NULL UNIQUE,
    secret_sealed BLOB NOT NULL,
    registered_at INTEGER NOT NULL,
    computer_name TEXT NOT NULL DEFAULT '',
    ip_address TEXT NOT NULL DEFAULT '',
    platform_type TEXT NOT NULL DEFAULT '',
    platform_name TEXT NOT NULL DEFAULT '',
    platform_version TEXT NOT NULL DEFAULT '',
    agent_version TEXT NOT NULL DEFAULT '',
    last_seen_at INTEGER
);
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    owner TEXT NOT NULL,
    document_name TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '',
    start_date INTEGER NOT NULL,
    end_date INTEGER,
    max_session_duration TEXT NOT NULL DEFAULT '',
    parameters TEXT NOT NULL DEFAULT '{}',
    recording TEXT
);
CREATE INDEX IF NOT EXISTS sessions_by_start ON sessions(start_date DESC, session_id);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL DEFAULT '',
    session_id TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT ''
);
"#;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The key file could not be read or written.
    #[error("secret key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file exists but is not a 32-byte key.
    #[error("secret key file {0} is corrupt (expected 32 bytes)")]
    KeyFileCorrupt(PathBuf),
    /// A sealed secret could not be opened (wrong key file for this database).
    #[error(
        "a stored agent secret cannot be decrypted: the key file does not belong to this database"
    )]
    Unseal,
    /// A directory for the database could not be created.
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Why a registration was refused. The message never says which part was wrong beyond what the
/// caller already knows.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// Unknown id, or wrong code.
    #[error("the activation id or code is not valid")]
    Invalid,
    /// Past its expiry.
    #[error("the activation has expired")]
    Expired,
    /// Registration limit reached.
    #[error("the activation's registration limit has been reached")]
    LimitReached,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Parameters of a new activation.
#[derive(Clone, Debug, Default)]
pub struct NewActivation {
    /// Free text.
    pub description: String,
    /// Name given to instances registered with it.
    pub default_instance_name: String,
    /// Informational IAM role name.
    pub iam_role: String,
    /// Maximum registrations; `None` means [`DEFAULT_REGISTRATION_LIMIT`].
    pub registration_limit: Option<u32>,
    /// Expiry; `None` means now + [`DEFAULT_ACTIVATION_LIFETIME`].
    pub expires_at: Option<SystemTime>,
}

/// A created activation: what an agent needs to register.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Activation {
    /// Public id (a UUID).
    #[serde(rename = "ActivationId")]
    pub activation_id: String,
    /// The secret code, shown once.
    #[serde(rename = "ActivationCode")]
    pub activation_code: String,
}

/// A new instance's identity and credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// `mi-` and 17 lowercase hex digits.
    pub instance_id: String,
    /// The agent's access key id.
    pub access_key_id: String,
    /// The agent's secret key.
    pub secret_access_key: String,
}

/// An agent's signing key, as [`Store::agent_credential`] finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentKey {
    /// The instance it belongs to.
    pub instance_id: String,
    /// Its secret access key.
    pub secret: String,
    /// For a temporary key: the hex SHA-256 of the session token issued with it.
    pub session_token_hash: Option<String>,
}

/// What an agent reports about itself in UpdateInstanceInformation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceInfo {
    /// Host name.
    pub computer_name: String,
    /// Primary IP address.
    pub ip_address: String,
    /// `Linux`, `Windows` or `MacOS`.
    pub platform_type: String,
    /// e.g. `Debian GNU/Linux`.
    pub platform_name: String,
    /// e.g. `12`.
    pub platform_version: String,
    /// Agent version.
    pub agent_version: String,
}

/// A registered instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceRecord {
    /// Its id.
    pub instance_id: String,
    /// Activation it registered with.
    pub activation_id: String,
    /// Default instance name of that activation.
    pub name: String,
    /// IAM role of that activation.
    pub iam_role: String,
    /// Registration time.
    pub registered_at: SystemTime,
    /// Last report.
    pub info: InstanceInfo,
    /// Last time the agent was heard from.
    pub last_seen_at: Option<SystemTime>,
}

/// Session statuses (PROTOCOL.md §12.2).
pub mod status {
    /// StartSession returned; the agent has not connected yet.
    pub const CONNECTING: &str = "Connecting";
    /// Both ends attached (or the agent attached).
    pub const CONNECTED: &str = "Connected";
    /// The client's socket dropped; it may resume.
    pub const DISCONNECTED: &str = "Disconnected";
    /// Ending.
    pub const TERMINATING: &str = "Terminating";
    /// Ended.
    pub const TERMINATED: &str = "Terminated";
    /// Ended abnormally.
    pub const FAILED: &str = "Failed";
    /// Statuses DescribeSessions lists under `Active`.
    pub const ACTIVE: &[&str] = &[CONNECTING, CONNECTED, DISCONNECTED, TERMINATING];
    /// Statuses DescribeSessions lists under `History`.
    pub const HISTORY: &[&str] = &[TERMINATED, FAILED];
}

/// A session row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// Id.
    pub session_id: String,
    /// Instance id.
    pub target: String,
    /// Owner ARN.
    pub owner: String,
    /// Document used.
    pub document_name: String,
    /// Caller's reason.
    pub reason: String,
    /// See [`status`].
    pub status: String,
    /// How it ended, or other notes.
    pub details: String,
    /// Start.
    pub start_date: SystemTime,
    /// End, once ended.
    pub end_date: Option<SystemTime>,
    /// Maximum duration in minutes as text (empty: none).
    pub max_session_duration: String,
    /// Parameters as given, JSON.
    pub parameters: String,
    /// Path of the recording, if any.
    pub recording: Option<String>,
}

/// Filters of DescribeSessions, already validated.
#[derive(Clone, Debug, Default)]
pub struct SessionQuery {
    /// Active (true) or History (false).
    pub active: bool,
    /// Started at or after.
    pub invoked_after: Option<SystemTime>,
    /// Started at or before.
    pub invoked_before: Option<SystemTime>,
    /// Target equals.
    pub target: Option<String>,
    /// Owner equals (ARN or user name).
    pub owner: Option<String>,
    /// Status equals.
    pub status: Option<String>,
    /// Session id equals.
    pub session_id: Option<String>,
    /// Rows to skip.
    pub offset: u64,
    /// Rows to return.
    pub limit: u64,
}

/// One audit entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// When.
    pub at: SystemTime,
    /// Who (owner ARN, instance id, `gateway`).
    pub actor: String,
    /// What (`StartSession`, `SessionEnded`, ...).
    pub action: String,
    /// On which target.
    pub target: String,
    /// Which session.
    pub session_id: String,
    /// Details.
    pub detail: String,
}

/// The SQLite store. Cheap operations, run inline under a mutex.
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    pub(crate) sealing_key: SealingKey,
}

impl Store {
    /// Opens (creating if needed) the database and its key file.
    pub fn open(database: &Database) -> Result<Self, StoreError> {
        let (conn, sealing_key) = match database {
            Database::Memory => (Connection::open_in_memory()?, SealingKey::ephemeral()),
            Database::File(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                        path: dir.to_owned(),
                        source,
                    })?;
                }
                let conn = Connection::open(path)?;
                conn.busy_timeout(BUSY_TIMEOUT)?;
                conn.pragma_update(None, "journal_mode", "WAL")?;
                conn.pragma_update(None, "synchronous", "NORMAL")?;
                (conn, SealingKey::for_database(path)?)
            }
        };
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(crate::commands::store::SCHEMA)?;
        conn.execute_batch(crate::tags::SCHEMA)?;
        conn.execute_batch(crate::catalog::SCHEMA)?;
        conn.execute_batch(crate::fleet::SCHEMA)?;
        conn.execute_batch(crate::commands::output::SCHEMA)?;
        conn.execute_batch(crate::onprem::SCHEMA)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            sealing_key,
        })
    }

    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key service's tables (`kms_keys`, `kms_aliases`) in this database.
    pub fn key_store(&self) -> Result<ssmx_kms::SqliteKeyStore, ssmx_kms::StoreError> {
        ssmx_kms::SqliteKeyStore::new(self.conn.clone())
    }

    /// Creates an activation and returns its id and (only now) its code.
    pub fn create_activation(&self, new: &NewActivation) -> Result<Activation, StoreError> {
        let now = SystemTime::now();
        let id = uuid::Uuid::new_v4().hyphenated().to_string();
        let code = random_token(20, ALNUM);
        let expires = new.expires_at.unwrap_or(now + DEFAULT_ACTIVATION_LIFETIME);
        self.conn().execute(
            "INSERT INTO activations (activation_id, code_hash, description, default_instance_name, iam_role, registration_limit, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                id,
                secret_hash(&code),
                new.description,
                new.default_instance_name,
                new.iam_role,
                new.registration_limit.unwrap_or(DEFAULT_REGISTRATION_LIMIT),
                millis(now),
                millis(expires),
            ],
        )?;
        Ok(Activation {
            activation_id: id,
            activation_code: code,
        })
    }

    /// Registers a new instance with an activation, issuing its id and credential.
    pub fn register_instance(
        &self,
        activation_id: &str,
        activation_code: &str,
        computer_name: &str,
        platform_type: &str,
    ) -> Result<Registration, RegisterError> {
        self.register_instance_with(
            activation_id,
            activation_code,
            computer_name,
            platform_type,
            |_, _| Ok(()),
        )
    }

    /// [`Store::register_instance`], running `also` with the new instance id in the same
    /// transaction (the official agent's registration keeps its public key).
    pub(crate) fn register_instance_with(
        &self,
        activation_id: &str,
        activation_code: &str,
        computer_name: &str,
        platform_type: &str,
        also: impl FnOnce(&rusqlite::Transaction<'_>, &str) -> rusqlite::Result<()>,
    ) -> Result<Registration, RegisterError> {
        let now = SystemTime::now();
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(StoreError::from)?;
        let row: Option<(String, i64, i64, i64, String, String)> = tx
            .query_row(
                "SELECT code_hash, registration_limit, registrations, expires_at, default_instance_name, iam_role FROM activations WHERE activation_id = ?1 AND activation_id NOT IN (SELECT activation_id FROM deleted_activations)",
                params![activation_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .optional()
            .map_err(StoreError::from)?;
        let Some((code_hash, limit, used, expires_at, name, iam_role)) = row else {
            return Err(RegisterError::Invalid);
        };
        if !constant_time_eq(
            code_hash.as_bytes(),
            secret_hash(activation_code).as_bytes(),
        ) {
            return Err(RegisterError::Invalid);
        }
        if expires_at <= millis(now) {
            return Err(RegisterError::Expired);
        }
        if used >= limit {
            return Err(RegisterError::LimitReached);
        }
        let registration = Registration {
            instance_id: format!("mi-{}", random_hex(17)),
            access_key_id: format!("SSMX{}", random_token(16, BASE32)),
            secret_access_key: random_token(40, ALNUM),
        };
        let sealed = self
            .sealing_key
            .seal(registration.secret_access_key.as_bytes());
        tx.execute(
            "INSERT INTO instances (instance_id, activation_id, name, iam_role, access_key_id, secret_sealed, registered_at, computer_name, platform_type) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                registration.instance_id,
                activation_id,
                name,
                iam_role,
                registration.access_key_id,
                sealed,
                millis(now),
                computer_name,
                platform_type,
            ],
        )
        .map_err(StoreError::from)?;
        also(&tx, &registration.instance_id).map_err(StoreError::from)?;
        tx.execute(
            "UPDATE activations SET registrations = registrations + 1 WHERE activation_id = ?1",
            params![activation_id],
        )
        .map_err(StoreError::from)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(registration)
    }

    /// The instance and secret of an agent access key: the static key an ssmx agent registered
    /// with, or an unexpired temporary key issued to an official agent (with its session token's
    /// hash, which the request must match).
    pub fn agent_credential(&self, access_key_id: &str) -> Result<Option<AgentKey>, StoreError> {
        let row: Option<(String, Vec<u8>, Option<String>)> = self
            .conn()
            .query_row(
                "SELECT instance_id, secret_sealed, NULL FROM instances WHERE access_key_id = ?1
                 UNION ALL
                 SELECT instance_id, secret_sealed, session_token_hash FROM role_credentials
                 WHERE access_key_id = ?1 AND expires_at > ?2",
                params![access_key_id, millis(SystemTime::now())],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        match row {
            None => Ok(None),
            Some((instance_id, sealed, session_token_hash)) => Ok(Some(AgentKey {
                instance_id,
                secret: self.sealing_key.open(&sealed)?,
                session_token_hash,
            })),
        }
    }

    /// Records an agent's self-description and marks it seen now.
    pub fn update_instance_information(
        &self,
        instance_id: &str,
        info: &InstanceInfo,
    ) -> Result<bool, StoreError> {
        let n = self.conn().execute(
            "UPDATE instances SET computer_name = ?2, ip_address = ?3, platform_type = ?4, platform_name = ?5, platform_version = ?6, agent_version = ?7, last_seen_at = ?8 WHERE instance_id = ?1",
            params![
                instance_id,
                info.computer_name,
                info.ip_address,
                info.platform_type,
                info.platform_name,
                info.platform_version,
                info.agent_version,
                millis(SystemTime::now()),
            ],
        )?;
        Ok(n == 1)
    }

    /// Marks an instance as heard from now (control channel traffic).
    pub fn touch_instance(&self, instance_id: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE instances SET last_seen_at = ?2 WHERE instance_id = ?1",
            params![instance_id, millis(SystemTime::now())],
        )?;
        Ok(())
    }

    /// Every registered instance, ordered by id.
    pub fn instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT instance_id, activation_id, name, iam_role, registered_at, computer_name, ip_address, platform_type, platform_name, platform_version, agent_version, last_seen_at FROM instances ORDER BY instance_id",
        )?;
        let rows = stmt.query_map([], instance_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One instance.
    pub fn instance(&self, instance_id: &str) -> Result<Option<InstanceRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT instance_id, activation_id, name, iam_role, registered_at, computer_name, ip_address, platform_type, platform_name, platform_version, agent_version, last_seen_at FROM instances WHERE instance_id = ?1",
                params![instance_id],
                instance_from_row,
            )
            .optional()?)
    }

    /// Inserts a new session row.
    pub fn insert_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO sessions (session_id, target, owner, document_name, reason, status, details, start_date, end_date, max_session_duration, parameters, recording) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                s.session_id,
                s.target,
                s.owner,
                s.document_name,
                s.reason,
                s.status,
                s.details,
                millis(s.start_date),
                s.end_date.map(millis),
                s.max_session_duration,
                s.parameters,
                s.recording,
            ],
        )?;
        Ok(())
    }

    /// The status of every session that has not ended, by session id.
    pub fn open_session_statuses(&self) -> Result<HashMap<String, String>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT session_id, status FROM sessions WHERE end_date IS NULL")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Sets a live session's status (never changes an ended one).
    pub fn set_session_status(&self, session_id: &str, status: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE sessions SET status = ?2 WHERE session_id = ?1 AND end_date IS NULL",
            params![session_id, status],
        )?;
        Ok(())
    }

    /// Records a session's end (once; later calls change nothing).
    pub fn end_session(
        &self,
        session_id: &str,
        status: &str,
        details: &str,
        at: SystemTime,
    ) -> Result<bool, StoreError> {
        let n = self.conn().execute(
            "UPDATE sessions SET status = ?2, details = ?3, end_date = ?4 WHERE session_id = ?1 AND end_date IS NULL",
            params![session_id, status, details, millis(at)],
        )?;
        Ok(n == 1)
    }

    /// Records where a session's recording is.
    pub fn set_recording(&self, session_id: &str, path: &Path) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE sessions SET recording = ?2 WHERE session_id = ?1",
            params![session_id, path.to_string_lossy()],
        )?;
        Ok(())
    }

    /// One session.
    pub fn session(&self, session_id: &str) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?1"),
                params![session_id],
                session_from_row,
            )
            .optional()?)
    }

    /// Sessions matching `q`, newest first.
    pub fn query_sessions(&self, q: &SessionQuery) -> Result<Vec<SessionRecord>, StoreError> {
        let statuses = if q.active {
            status::ACTIVE
        } else {
            status::HISTORY
        };
        let mut sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE status IN ({})",
            statuses
                .iter()
                .map(|s| format!("'{s}'"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut push = |sql: &mut String, clause: &str, v: rusqlite::types::Value| {
            args.push(v);
            sql.push_str(&format!(" AND {clause} ?{}", args.len()));
        };
        if let Some(t) = q.invoked_after {
            push(&mut sql, "start_date >=", millis(t).into());
        }
        if let Some(t) = q.invoked_before {
            push(&mut sql, "start_date <=", millis(t).into());
        }
        if let Some(t) = &q.target {
            push(&mut sql, "target =", t.clone().into());
        }
        if let Some(s) = &q.status {
            push(&mut sql, "status =", s.clone().into());
        }
        if let Some(s) = &q.session_id {
            push(&mut sql, "session_id =", s.clone().into());
        }
        if let Some(o) = &q.owner {
            args.push(o.clone().into());
            let n = args.len();
            // The full ARN, or the user name after its last '/'.
            sql.push_str(&format!(
                " AND (owner = ?{n} OR substr(owner, -length(?{n}) - 1) = '/' || ?{n})"
            ));
        }
        sql.push_str(&format!(
            " ORDER BY start_date DESC, session_id LIMIT {} OFFSET {}",
            q.limit, q.offset
        ));
        let conn = self.conn();
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), session_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Marks sessions left active by a previous run as failed; returns how many.
    pub fn fail_interrupted_sessions(&self, details: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let placeholders = status::ACTIVE
            .iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(",");
        let ids: Vec<String> = conn
            .prepare(&format!(
                "SELECT session_id FROM sessions WHERE status IN ({placeholders}) AND end_date IS NULL"
            ))?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        conn.execute(
            &format!(
                "UPDATE sessions SET status = ?1, details = ?2, end_date = ?3 WHERE status IN ({placeholders}) AND end_date IS NULL"
            ),
            params![status::FAILED, details, millis(SystemTime::now())],
        )?;
        Ok(ids)
    }

    /// Appends to the audit trail.
    pub fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        session_id: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO audit (at, actor, action, target, session_id, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![millis(SystemTime::now()), actor, action, target, session_id, detail],
        )?;
        Ok(())
    }

    /// The audit trail, oldest first; only one session's entries when `session_id` is given.
    pub fn audit_trail(&self, session_id: Option<&str>) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT at, actor, action, target, session_id, detail FROM audit WHERE ?1 IS NULL OR session_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map(params![session_id], |r| {
            Ok(AuditEntry {
                at: from_millis(r.get(0)?),
                actor: r.get(1)?,
                action: r.get(2)?,
                target: r.get(3)?,
                session_id: r.get(4)?,
                detail: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

const SESSION_COLUMNS: &str = "session_id, target, owner, document_name, reason, status, details, start_date, end_date, max_session_duration, parameters, recording";

fn session_from_row(r: &Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        session_id: r.get(0)?,
        target: r.get(1)?,
        owner: r.get(2)?,
        document_name: r.get(3)?,
        reason: r.get(4)?,
        status: r.get(5)?,
        details: r.get(6)?,
        start_date: from_millis(r.get(7)?),
        end_date: r.get::<_, Option<i64>>(8)?.map(from_millis),
        max_session_duration: r.get(9)?,
        parameters: r.get(10)?,
        recording: r.get(11)?,
    })
}

fn instance_from_row(r: &Row<'_>) -> rusqlite::Result<InstanceRecord> {
    Ok(InstanceRecord {
        instance_id: r.get(0)?,
        activation_id: r.get(1)?,
        name: r.get(2)?,
        iam_role: r.get(3)?,
        registered_at: from_millis(r.get(4)?),
        info: InstanceInfo {
            computer_name: r.get(5)?,
            ip_address: r.get(6)?,
            platform_type: r.get(7)?,
            platform_name: r.get(8)?,
            platform_version: r.get(9)?,
            agent_version: r.get(10)?,
        },
        last_seen_at: r.get::<_, Option<i64>>(11)?.map(from_millis),
    })
}

/// Milliseconds since the epoch, as stored.
pub(crate) fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The time stored as milliseconds since the epoch (negative: the epoch).
pub(crate) fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_limits_and_codes_are_enforced() {
        let store = Store::open(&Database::Memory).unwrap();
        let a = store.create_activation(&NewActivation::default()).unwrap();
        assert!(matches!(
            store.register_instance(&a.activation_id, "wrong", "h", "linux"),
            Err(RegisterError::Invalid)
        ));
        let reg = store
            .register_instance(&a.activation_id, &a.activation_code, "h", "linux")
            .unwrap();
        assert_eq!(reg.instance_id.len(), 20);
        assert!(matches!(
            store.register_instance(&a.activation_id, &a.activation_code, "h", "linux"),
            Err(RegisterError::LimitReached)
        ));
        let found = store.agent_credential(&reg.access_key_id).unwrap().unwrap();
        let (instance, secret) = (found.instance_id, found.secret);
        assert_eq!(instance, reg.instance_id);
        assert_eq!(secret, reg.secret_access_key);
        let expired = store
            .create_activation(&NewActivation {
                expires_at: Some(SystemTime::now() - Duration::from_secs(1)),
                ..Default::default()
            })
            .unwrap();
        assert!(matches!(
            store.register_instance(
                &expired.activation_id,
                &expired.activation_code,
                "h",
                "linux"
            ),
            Err(RegisterError::Expired)
        ));
    }

    #[test]
    fn secrets_are_sealed_in_the_file_and_survive_reopen() {
        let dir = tempfile_dir();
        let db = Database::File(dir.join("gw.db"));
        let reg = {
            let store = Store::open(&db).unwrap();
            let a = store.create_activation(&NewActivation::default()).unwrap();
            store
                .register_instance(&a.activation_id, &a.activation_code, "h", "linux")
                .unwrap()
        };
        let raw = std::fs::read(dir.join("gw.db")).unwrap();
        let needle = reg.secret_access_key.as_bytes();
        assert!(!raw.windows(needle.len()).any(|w| w == needle));
        let store = Store::open(&db).unwrap();
        let secret = store
            .agent_credential(&reg.access_key_id)
            .unwrap()
            .unwrap()
            .secret;
        assert_eq!(secret, reg.secret_access_key);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ssmx-store-{}", random_hex(12)));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
