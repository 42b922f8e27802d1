//! A self-hostable stand-in for the AWS side of Session Manager: the SSM JSON API
//! (StartSession, ResumeSession, TerminateSession, DescribeSessions,
//! DescribeInstanceInformation, CreateActivation, UpdateInstanceInformation), the Message
//! Gateway Service (control and data channel WebSockets, relayed byte for byte), agent
//! registration with activations, SigV4 and token authentication, SQLite state, and session
//! recording — all on one HTTP(S) port.
//!
//! Run one in-process on an ephemeral port:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use ssmx_gateway::{config::{ApiCredential, Database}, store::NewActivation, Gateway};
//!
//! let credential = ApiCredential::generate("alice");
//! let gateway = Gateway::builder()
//!     .listen("127.0.0.1:0".parse()?)
//!     .database(Database::Memory)
//!     .credential(credential.clone())
//!     .without_recording()
//!     .start()
//!     .await?;
//! println!("gateway at {}", gateway.url());
//! let activation = gateway.create_activation(&NewActivation::default())?;
//! // ... register an agent with activation.activation_id / activation_code, then:
//! // gateway.wait_for_agent("mi-...", Duration::from_secs(10)).await;
//! gateway.shutdown().await;
//! # Ok(()) }
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod access;
pub mod catalog;
pub mod config;
pub mod documents;
pub mod error;
pub mod fleet;
pub mod onprem;
pub mod recording;
pub mod retention;
pub mod sigv4;
pub mod store;
pub mod tags;
pub mod tokens;

mod api;
pub mod commands;
mod hub;
mod kms;
mod malformed;
mod mds;
mod metrics;
mod mgs;
mod secrets;
mod server;
mod session;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ssmx_kms::KeyService;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{ApiCredential, Config, ConfigError, Database};
use crate::documents::{DocumentLoadError, Documents};
use crate::hub::{Hub, Settings};
use crate::store::{Activation, NewActivation, Store, StoreError};

pub use crate::tls::{generated_ca_path, TlsError};

/// How long [`Gateway::shutdown`] waits for sessions and sockets to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A custom document is invalid.
    #[error(transparent)]
    Documents(#[from] DocumentLoadError),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The key service's tables could not be opened.
    #[error("cannot open the key service's tables: {0}")]
    Kms(#[from] ssmx_kms::StoreError),
    /// Plain HTTP on a network address without `allow_plaintext_on_network`.
    #[error("refusing to serve plain HTTP on {0}, which is not a loopback address: configure [tls], listen on 127.0.0.1, or set allow_plaintext_on_network = true to accept that signed requests and session tokens cross the network readable and replayable")]
    PlaintextOnNetwork(SocketAddr),
    /// The users, groups or policies are unusable.
    #[error(transparent)]
    Access(#[from] access::AccessConfigError),
    /// The listen address is taken or not allowed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Tunes the process's allocator for relaying; for a program that runs a gateway, called once
/// before it starts. Keeps the memory relayed frames were in for the next frames: with glibc's
/// defaults the heap is trimmed whenever 128 KiB lie free and growing frame buffers are mapped
/// separately, so a busy relay hands memory back to the kernel after every burst and faults it
/// in again, about a sixth of its CPU time per GB relayed. What is kept is bounded by the
/// largest burst; idle sessions cost no more. Does nothing with other C libraries.
#[allow(unsafe_code)]
pub fn keep_relay_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes two of glibc's allocation thresholds; glibc serialises it
    // with allocation.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

/// Options for starting a [`Gateway`]; values given here override the [`Config`].
#[derive(Debug, Default)]
#[must_use]
pub struct GatewayBuilder {
    config: Config,
    listen: Option<SocketAddr>,
    database: Option<Database>,
    credentials: Vec<ApiCredential>,
    recordings_dir: Option<PathBuf>,
    recording: Option<bool>,
}

impl GatewayBuilder {
    /// Starts from a loaded configuration file.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Listen address (`127.0.0.1:0` picks a free port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// The database.
    pub fn database(mut self, database: Database) -> Self {
        self.database = Some(database);
        self
    }

    /// Accepts this access key on the SSM API (in addition to the configured ones).
    pub fn credential(mut self, credential: ApiCredential) -> Self {
        self.credentials.push(credential);
        self
    }

    /// Where to write session recordings.
    pub fn recordings_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.recordings_dir = Some(dir.into());
        self.recording = Some(true);
        self
    }

    /// Turns session recording off.
    pub fn without_recording(mut self) -> Self {
        self.recording = Some(false);
        self
    }

    /// Opens the database, loads documents, binds the listener and starts serving.
    pub async fn start(self) -> Result<Gateway, GatewayError> {
        let mut config = self.config;
        config.credentials.extend(self.credentials);
        config.validate()?;
        let database = match self.database {
            Some(db) => db,
            None => config.database()?,
        };
        let store = Arc::new(Store::open(&database)?);
        let interrupted =
            store.fail_interrupted_sessions("the gateway stopped while the session was active")?;
        for id in &interrupted {
            warn!(session = %id, "session left active by a previous run recorded as failed");
            store.audit(
                "gateway",
                "SessionEnded",
                "",
                id,
                "Failed: the gateway stopped while the session was active",
            )?;
        }
        let mut documents = Documents::builtin();
        if let Some(dir) = &config.documents_dir {
            let n = documents.load_dir(dir)?;
            info!(count = n, dir = %dir.display(), "custom session documents loaded");
        }
        let recording = self.recording.or(config.recording).unwrap_or(true);
        let recordings_dir = match (recording, self.recordings_dir) {
            (false, _) => None,
            (true, Some(dir)) => Some(dir),
            (true, None) => Some(config.recordings_dir()?),
        };
        let addr = match self.listen.or(config.listen) {
            Some(addr) => addr,
            None => config::DEFAULT_LISTEN
                .parse()
                .expect("valid default address"),
        };
        if config.tls.is_none() && !addr.ip().is_loopback() {
            if !config.allow_plaintext_on_network {
                return Err(GatewayError::PlaintextOnNetwork(addr));
            }
            warn!(
                %addr,
                "INSECURE: serving plain HTTP on a network address; signed requests and session tokens can be read and replayed by anyone on the path (configure [tls])"
            );
        }
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| GatewayError::Bind { addr, source })?;
        let local_addr = tcp
            .local_addr()
            .map_err(|source| GatewayError::Bind { addr, source })?;
        let acceptor = match &config.tls {
            Some(tls) => Some(tls::prepare(tls)?),
            None => None,
        };
        let settings = Settings {
            region: config.region().to_owned(),
            account_id: config.account_id().to_owned(),
            public_url: config.public_url.clone(),
            tls: acceptor.is_some(),
            recordings_dir: recordings_dir.clone(),
            record_port_sessions: config.record_port_sessions,
            disconnect_timeout: config
                .disconnect_timeout_seconds
                .map(Duration::from_secs)
                .unwrap_or(config::DEFAULT_DISCONNECT_TIMEOUT),
            client_connect_timeout: config.client_connect_timeout(),
            connection_lost_after: config.connection_lost_after(),
            latest_agent_version: config.latest_agent_version().to_owned(),
        };
        let kms = KeyService::new(store.key_store()?)
            .with_region(settings.region.clone())
            .with_account_id(settings.account_id.clone())
            .create_missing_aliases(config.kms.create_missing_aliases);
        let access = config.access_control()?;
        let hub = Arc::new(Hub::new(settings, store.clone(), documents, kms, access));
        if config.credentials.is_empty() {
            warn!("no [[credentials]] configured: no API caller can authenticate");
        }
        commands::spawn_ticker(hub.clone());
        if let Some(dir) = recordings_dir {
            retention::spawn(hub.clone(), dir, config.retention());
        }
        let metrics_addr = match config.metrics_listen {
            Some(addr) => {
                let bind_error = |source| GatewayError::Bind { addr, source };
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(bind_error)?;
                let bound = listener.local_addr().map_err(bind_error)?;
                metrics::serve(hub.clone(), listener);
                info!(url = %format!("http://{bound}/metrics"), "metrics listening");
                Some(bound)
            }
            None => None,
        };
        let app = server::router(hub.clone()).into_make_service();
        let stop = hub.shutdown.clone();
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let server = match acceptor {
            Some(acceptor) => {
                let listener =
                    server::TlsListener::spawn(tcp, acceptor, &hub.tracker, stop.clone())
                        .map_err(|source| GatewayError::Bind { addr, source })?;
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(stop.cancelled_owned())
                        .await;
                })
            }
            None => tokio::spawn(async move {
                // Keystrokes and acks are tiny frames: Nagle's algorithm would hold each one
                // back for a delayed ACK (tens of milliseconds per round trip).
                let tcp = axum::serve::ListenerExt::tap_io(tcp, |tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                let _ = axum::serve(tcp, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
            }),
        };
        let url = format!("{scheme}://{local_addr}");
        info!(%url, "gateway listening");
        Ok(Gateway {
            hub,
            store,
            url,
            local_addr,
            metrics_addr,
            server: Some(server),
        })
    }
}

/// A running gateway. Dropping it stops it; [`Gateway::shutdown`] stops it and waits.
pub struct Gateway {
    hub: Arc<Hub>,
    store: Arc<Store>,
    url: String,
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    server: Option<JoinHandle<()>>,
}

impl Gateway {
    /// Options for a new gateway.
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::default()
    }

    /// The base URL (`http://127.0.0.1:PORT`, or https with TLS): the SSM endpoint, the MGS
    /// endpoint and the registration endpoint at once.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The bound socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where Prometheus metrics are served (`http://<addr>/metrics`), when configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The state store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Puts the credentials, users, groups and policies of `config` in force for the calls that
    /// follow (the rest of the configuration needs a restart). Nothing changes when they are
    /// invalid.
    pub fn reload_access(&self, config: &Config) -> Result<(), GatewayError> {
        self.hub.replace_access(config.access_control()?);
        info!(
            users = config.users.len(),
            policies = config.policies.len(),
            "credentials, users and policies reloaded"
        );
        Ok(())
    }

    /// Creates an activation agents can register with.
    pub fn create_activation(&self, new: &NewActivation) -> Result<Activation, StoreError> {
        self.store.create_activation(new)
    }

    /// True while the instance's control channel is open.
    pub fn is_agent_online(&self, instance_id: &str) -> bool {
        self.hub.agent_online(instance_id)
    }

    /// Waits until the instance's control channel is open; false on timeout.
    pub async fn wait_for_agent(&self, instance_id: &str, timeout: Duration) -> bool {
        let mut changes = self.hub.watch_agents();
        let wait = async {
            while !self.hub.agent_online(instance_id) {
                if changes.changed().await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }

    /// Number of sessions currently live at the relay.
    pub fn active_sessions(&self) -> usize {
        self.hub.session_count()
    }

    /// Stops serving: live sessions get `channel_closed` ("the gateway is shutting down") and
    /// are recorded as terminated; waits for sockets and tasks to finish.
    pub async fn shutdown(mut self) {
        self.hub.shutdown.cancel();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        self.hub.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.hub.tracker.wait())
            .await
            .is_err()
        {
            warn!("some connections did not close within the shutdown grace period");
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.hub.shutdown.cancel();
    }
}
