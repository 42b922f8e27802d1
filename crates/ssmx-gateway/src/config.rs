//! Gateway configuration: a TOML file plus command-line overrides.
//!
//! ```
//! let config: ssmx_gateway::config::Config = toml::from_str(r#"
//!     listen = "127.0.0.1:8080"
//!     region = "us-east-1"
//!     [[credentials]]
//!     access_key_id = "AKIDEXAMPLE"
//!     secret_access_key = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
//!     user = "alice"
//! "#).unwrap();
//! assert_eq!(config.credentials[0].user, "alice");
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::retention::RetentionPolicy;
use crate::tokens::TOKEN_TTL;

/// Address the gateway listens on when neither the file nor a flag names one.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Region reported to agents and used in signatures when none is configured.
pub const DEFAULT_REGION: &str = "us-east-1";
/// Account id in the ARNs the gateway reports (owners, roles) when none is configured.
pub const DEFAULT_ACCOUNT_ID: &str = "000000000000";
/// How long a session waits for its client to come back after the client's WebSocket drops
/// before the gateway ends it. The official client retries ResumeSession five times with a
/// back-off that stays under ~10 s in total, so a minute leaves ample room.
pub const DEFAULT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default age limit of recordings.
pub const DEFAULT_RECORDINGS_MAX_AGE_DAYS: u64 = 30;
/// Default size limit of all recordings together.
pub const DEFAULT_RECORDINGS_MAX_TOTAL_MIB: u64 = 10 * 1024;
/// Default period of the retention sweep.
pub const DEFAULT_RECORDINGS_SWEEP_SECONDS: u64 = 600;
/// How long a node without a control channel stays Online after it was last heard from:
/// twice the agents' default health period of five minutes (RUNCOMMAND.md §5).
pub const DEFAULT_CONNECTION_LOST_AFTER: Duration = Duration::from_secs(600);

/// Where the SQLite state lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Database {
    /// A file (created if missing).
    File(PathBuf),
    /// An in-memory database that dies with the process (tests, demos).
    Memory,
}

impl Database {
    /// Parses `--db` / `db =`: `:memory:` or a path.
    pub fn parse(value: &str) -> Self {
        if value == ":memory:" {
            Database::Memory
        } else {
            Database::File(PathBuf::from(value))
        }
    }

    /// `<user data dir>/ssmx/gateway.db`.
    pub fn default_file() -> Result<Self, ConfigError> {
        Ok(Database::File(data_dir()?.join("gateway.db")))
    }
}

/// An access key accepted on the SSM API.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApiCredential {
    /// The access key id callers sign with.
    pub access_key_id: String,
    /// Its secret.
    pub secret_access_key: String,
    /// Owner name: session ids look like `<user>-<hex>`.
    pub user: String,
}

impl ApiCredential {
    /// A credential for `user`.
    pub fn new(access_key_id: &str, secret_access_key: &str, user: &str) -> Self {
        Self {
            access_key_id: access_key_id.to_owned(),
            secret_access_key: secret_access_key.to_owned(),
            user: user.to_owned(),
        }
    }

    /// A credential for `user` with a random key id and secret (for in-process gateways).
    pub fn generate(user: &str) -> Self {
        Self {
            access_key_id: format!(
                "AKID{}",
                crate::secrets::random_token(16, crate::secrets::BASE32)
            ),
            secret_access_key: crate::secrets::random_token(40, crate::secrets::ALNUM),
            user: user.to_owned(),
        }
    }
}

/// Certificate and key for HTTPS/WSS.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When `cert` and `key` do not exist yet: create a private CA (`ca.pem` beside `cert`)
    /// and a server certificate it signs, for first runs and test fleets. Agents trust the CA.
    #[serde(default)]
    pub generate: bool,
    /// Host names and IP addresses the generated certificate is valid for (default:
    /// `localhost`, `127.0.0.1`, `::1` and this host's name).
    #[serde(default)]
    pub names: Vec<String>,
}

/// The whole configuration. Every field is optional in the file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Socket address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: Option<SocketAddr>,
    /// Where Prometheus metrics are served (`GET /metrics`, no credentials); none: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// SQLite file, or `:memory:`.
    pub db: Option<String>,
    /// Region reported to agents.
    pub region: Option<String>,
    /// Account id used in ARNs.
    pub account_id: Option<String>,
    /// Base URL for StreamUrl (default: from the request's Host header).
    pub public_url: Option<String>,
    /// Directory of custom Session documents (`*.json`, `*.yaml`, `*.yml`).
    pub documents_dir: Option<PathBuf>,
    /// Directory for session recordings (default `<data dir>/ssmx/recordings`).
    pub recordings_dir: Option<PathBuf>,
    /// Turn relay recording off (on by default).
    pub recording: Option<bool>,
    /// Record the bytes of port-forwarding sessions too (off by default: they can be large and
    /// are rarely wanted). A session document's `ssmxRecording` input overrides this either way.
    #[serde(default)]
    pub record_port_sessions: bool,
    /// Recordings older than this many days are deleted (default 30; 0 keeps them forever).
    pub recordings_max_age_days: Option<u64>,
    /// The recordings together are kept within this many MiB, the oldest deleted first
    /// (default 10240; 0: no limit).
    pub recordings_max_total_mib: Option<u64>,
    /// How often retention runs, in seconds (default 600).
    pub recordings_sweep_seconds: Option<u64>,
    /// Seconds a session waits for a dropped client to resume (default 60).
    pub disconnect_timeout_seconds: Option<u64>,
    /// Seconds a started session waits for its client to open the data channel before it
    /// fails (default and most: the StreamUrl token's lifetime, 300).
    pub client_connect_timeout_seconds: Option<u64>,
    /// Seconds a node whose control channel is closed stays Online after it was last heard
    /// from (control channel traffic, UpdateInstanceInformation); then it is ConnectionLost
    /// (default 600: twice the agents' default health period).
    pub connection_lost_after_seconds: Option<u64>,
    /// The newest agent version; DescribeInstanceInformation reports `IsLatestVersion` false
    /// for nodes that run an older one (default: the version ssmx agents report).
    pub latest_agent_version: Option<String>,
    /// Access keys accepted on the SSM API.
    #[serde(default)]
    pub credentials: Vec<ApiCredential>,
    /// Users, with their groups, policies and tags (none, and no groups: every credential has
    /// the built-in `FirstRunAccess`, everything but other users' sessions).
    #[serde(default)]
    pub users: Vec<crate::access::UserConfig>,
    /// Groups of users and their policies.
    #[serde(default)]
    pub groups: Vec<crate::access::GroupConfig>,
    /// Named IAM policy documents users and groups attach.
    #[serde(default)]
    pub policies: Vec<crate::access::PolicyConfig>,
    /// HTTPS when present.
    pub tls: Option<TlsConfig>,
    /// Serve plain HTTP on an address other than loopback. Off by default: without TLS anyone
    /// who can read the link can replay signed requests within their 15-minute window and read
    /// session tokens, so the gateway refuses to start that way unless this says so.
    #[serde(default)]
    pub allow_plaintext_on_network: bool,
    /// The key service for encrypted sessions.
    #[serde(default)]
    pub kms: KmsConfig,
}

/// The `[kms]` section: the key service that answers KMS calls for encrypted sessions.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KmsConfig {
    /// GenerateDataKey naming an alias that does not exist creates a key under it (default
    /// true), so `kmsKeyId: alias/<name>` in a document works without key administration.
    /// Turn off to allow only keys created with CreateKey/CreateAlias.
    #[serde(default = "default_true")]
    pub create_missing_aliases: bool,
}

impl Default for KmsConfig {
    fn default() -> Self {
        Self {
            create_missing_aliases: true,
        }
    }
}

fn default_true() -> bool {
    true
}

impl Config {
    /// Reads a TOML file; relative paths inside it are taken relative to the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(dir) = config.documents_dir.as_mut() {
            rebase(dir);
        }
        if let Some(dir) = config.recordings_dir.as_mut() {
            rebase(dir);
        }
        for policy in &mut config.policies {
            if let Some(file) = policy.file.as_mut() {
                rebase(file);
            }
        }
        if let Some(tls) = config.tls.as_mut() {
            rebase(&mut tls.cert);
            rebase(&mut tls.key);
        }
        if let Some(db) = config.db.as_mut() {
            if db != ":memory:" && Path::new(db).is_relative() {
                *db = base.join(&*db).to_string_lossy().into_owned();
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks values the types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for cred in &self.credentials {
            if cred.access_key_id.is_empty() || cred.secret_access_key.is_empty() {
                return Err(ConfigError::Invalid(
                    "every [[credentials]] entry needs access_key_id and secret_access_key".into(),
                ));
            }
            if !valid_user_name(&cred.user) {
                return Err(ConfigError::Invalid(format!(
                    "credential user {:?} must be 1-64 characters of letters, digits, '.', '_' or '-'",
                    cred.user
                )));
            }
        }
        if let Some(seconds) = self.client_connect_timeout_seconds {
            if seconds == 0 || seconds > TOKEN_TTL.as_secs() {
                return Err(ConfigError::Invalid(format!(
                    "client_connect_timeout_seconds must be 1 to {} (the token's lifetime)",
                    TOKEN_TTL.as_secs()
                )));
            }
        }
        if self.connection_lost_after_seconds == Some(0) {
            return Err(ConfigError::Invalid(
                "connection_lost_after_seconds must be at least 1".into(),
            ));
        }
        if let Some(version) = &self.latest_agent_version {
            if !version.split('.').all(|part| part.parse::<u64>().is_ok()) {
                return Err(ConfigError::Invalid(format!(
                    "latest_agent_version {version:?} is not a dotted version like 3.3.2000.0"
                )));
            }
        }
        if let Some(url) = &self.public_url {
            let parsed = url::Url::parse(url)
                .map_err(|e| ConfigError::Invalid(format!("public_url {url:?}: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(ConfigError::Invalid(format!(
                    "public_url {url:?} must start with http:// or https://"
                )));
            }
        }
        Ok(())
    }

    /// The database to open: the `db` value, else the default file.
    pub fn database(&self) -> Result<Database, ConfigError> {
        match &self.db {
            Some(db) => Ok(Database::parse(db)),
            None => Database::default_file(),
        }
    }

    /// The recordings directory: the configured one, else `<data dir>/ssmx/recordings`.
    pub fn recordings_dir(&self) -> Result<PathBuf, ConfigError> {
        match &self.recordings_dir {
            Some(dir) => Ok(dir.clone()),
            None => Ok(data_dir()?.join("recordings")),
        }
    }

    /// What retention keeps of the recordings.
    pub fn retention(&self) -> RetentionPolicy {
        let nonzero = |v: u64| (v > 0).then_some(v);
        RetentionPolicy {
            max_age: nonzero(
                self.recordings_max_age_days
                    .unwrap_or(DEFAULT_RECORDINGS_MAX_AGE_DAYS),
            )
            .map(|days| Duration::from_secs(days * 86_400)),
            max_total_bytes: nonzero(
                self.recordings_max_total_mib
                    .unwrap_or(DEFAULT_RECORDINGS_MAX_TOTAL_MIB),
            )
            .map(|mib| mib << 20),
            sweep_every: Duration::from_secs(
                self.recordings_sweep_seconds
                    .unwrap_or(DEFAULT_RECORDINGS_SWEEP_SECONDS)
                    .max(1),
            ),
        }
    }

    /// How long a node without a control channel stays Online after its last contact.
    pub fn connection_lost_after(&self) -> Duration {
        self.connection_lost_after_seconds
            .map_or(DEFAULT_CONNECTION_LOST_AFTER, Duration::from_secs)
    }

    /// The version below which an agent is reported as not the latest.
    pub fn latest_agent_version(&self) -> &str {
        self.latest_agent_version
            .as_deref()
            .unwrap_or(ssmx_protocol::version::AGENT_VERSION)
    }

    /// How long a started session waits for its client.
    pub fn client_connect_timeout(&self) -> Duration {
        self.client_connect_timeout_seconds
            .map_or(TOKEN_TTL, Duration::from_secs)
    }

    /// The region, or the default.
    pub fn region(&self) -> &str {
        self.region.as_deref().unwrap_or(DEFAULT_REGION)
    }

    /// The account id, or the default.
    pub fn account_id(&self) -> &str {
        self.account_id.as_deref().unwrap_or(DEFAULT_ACCOUNT_ID)
    }

    /// The credentials, users, groups and policies resolved for checking calls.
    pub fn access_control(
        &self,
    ) -> Result<crate::access::AccessControl, crate::access::AccessConfigError> {
        crate::access::AccessControl::build(
            &self.credentials,
            &self.users,
            &self.groups,
            &self.policies,
            &crate::access::Arns {
                region: self.region().to_owned(),
                account_id: self.account_id().to_owned(),
            },
        )
    }
}

/// True for names usable as session-id prefixes: URL-safe and short.
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn data_dir() -> Result<PathBuf, ConfigError> {
    dirs::data_dir()
        .map(|d| d.join("ssmx"))
        .ok_or(ConfigError::NoDataDir)
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config file {path} is invalid: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML error.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// No user data directory could be determined for the defaults.
    #[error(
        "no user data directory is known on this system; set db and recordings_dir explicitly"
    )]
    NoDataDir,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_file_parses_and_rebases_paths() {
        let dir = std::env::temp_dir().join(format!("ssmx-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gw.toml");
        std::fs::write(
            &path,
            r#"
listen = "127.0.0.1:0"
db = "state.db"
documents_dir = "docs"
[[credentials]]
access_key_id = "AKID"
secret_access_key = "s"
user = "alice"
[tls]
cert = "c.pem"
key = "/abs/k.pem"
"#,
        )
        .unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(
            config.database().unwrap(),
            Database::File(dir.join("state.db"))
        );
        assert_eq!(config.documents_dir, Some(dir.join("docs")));
        let tls = config.tls.unwrap();
        assert_eq!(tls.cert, dir.join("c.pem"));
        assert_eq!(tls.key, PathBuf::from("/abs/k.pem"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_user_and_unknown_keys_are_refused() {
        let bad: Config = toml::from_str(
            "[[credentials]]\naccess_key_id = \"A\"\nsecret_access_key = \"s\"\nuser = \"a b\"",
        )
        .unwrap();
        assert!(matches!(bad.validate(), Err(ConfigError::Invalid(_))));
        assert!(toml::from_str::<Config>("lisen = \"x\"").is_err());
    }

    #[test]
    fn client_connect_timeout_is_at_most_the_token_lifetime() {
        let parse = |text: &str| toml::from_str::<Config>(text).unwrap();
        assert_eq!(Config::default().client_connect_timeout(), TOKEN_TTL);
        let short = parse("client_connect_timeout_seconds = 20");
        assert!(short.validate().is_ok());
        assert_eq!(short.client_connect_timeout(), Duration::from_secs(20));
        for bad in ["0", "301"] {
            let config = parse(&format!("client_connect_timeout_seconds = {bad}"));
            assert!(matches!(config.validate(), Err(ConfigError::Invalid(_))));
        }
    }
}
