//! The gateway's shared state: configuration, store, documents, live control channels, live
//! sessions and tokens. One `Arc<Hub>` is shared by every request handler and task.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use ssmx_kms::KeyService;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::{AccessControl, Arns, Principal};
use crate::documents::Documents;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::session::Session;
use crate::sigv4::{RequestParts, SigV4Error, SigningKey, Verifier};
use crate::store::Store;
use crate::tokens::Tokens;

/// Settings the handlers need, resolved from the configuration.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// Region reported to agents.
    pub region: String,
    /// Account id in ARNs.
    pub account_id: String,
    /// Base for StreamUrl, if configured (`http(s)://host:port`).
    pub public_url: Option<String>,
    /// Whether the listener speaks TLS (`wss://` StreamUrls).
    pub tls: bool,
    /// Where recordings go; `None` disables recording.
    pub recordings_dir: Option<PathBuf>,
    /// Whether port sessions are recorded when their document does not say.
    pub record_port_sessions: bool,
    /// How long a session waits for a dropped client.
    pub disconnect_timeout: Duration,
    /// How long a started session waits for its client's first connection.
    pub client_connect_timeout: Duration,
    /// How long a node without a control channel stays Online after its last contact.
    pub connection_lost_after: Duration,
    /// Agents older than this are not the latest version.
    pub latest_agent_version: String,
}

impl Settings {
    /// ARNs in this gateway's region and account.
    pub fn arns(&self) -> Arns {
        Arns {
            region: self.region.clone(),
            account_id: self.account_id.clone(),
        }
    }
}

/// Who signed an SSM API request.
#[derive(Clone, Debug)]
pub(crate) enum Caller {
    /// A configured API user, as the policies see it.
    User(Arc<Principal>),
    /// A registered agent.
    Agent {
        /// Its instance id.
        instance_id: String,
    },
}

/// A live control channel.
#[derive(Clone)]
pub(crate) struct AgentLink {
    /// Identifies this connection among reconnects.
    pub conn_id: u64,
    /// Frames to write on the control channel.
    pub tx: mpsc::Sender<Bytes>,
    /// Cancelled to close this connection (replaced, or gateway stopping).
    pub close: CancellationToken,
    /// When the agent was last heard on this connection (Unix milliseconds).
    pub heard: Arc<AtomicU64>,
}

/// Whether a node is reachable, as DescribeInstanceInformation reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PingStatus {
    /// The control channel is open, or the node was heard from recently.
    Online,
    /// Neither.
    ConnectionLost,
}

impl PingStatus {
    /// The API's value.
    pub fn as_str(self) -> &'static str {
        match self {
            PingStatus::Online => "Online",
            PingStatus::ConnectionLost => "ConnectionLost",
        }
    }
}

/// Shared state.
pub(crate) struct Hub {
    pub settings: Settings,
    pub store: Arc<Store>,
    pub documents: Documents,
    pub verifier: Verifier,
    /// The key service behind the KMS API.
    pub kms: KeyService,
    /// Counters and the scrape of the gauges.
    pub metrics: Metrics,
    /// Credentials, users and policies; replaced whole on reload.
    access: std::sync::RwLock<Arc<AccessControl>>,
    agents: Mutex<HashMap<String, AgentLink>>,
    /// Each agent's clock minus the gateway's, in seconds, from its latest signed request.
    clock_skews: Mutex<HashMap<String, i64>>,
    /// Bumped whenever a control channel opens or closes.
    agents_generation: watch::Sender<u64>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    tokens: Mutex<Tokens>,
    /// Cancelled when the gateway stops.
    pub shutdown: CancellationToken,
    /// Tracks every task and socket so shutdown can wait for them.
    pub tracker: TaskTracker,
    next_conn: AtomicU64,
    /// Serialises changes of Run Command state (see [`crate::commands::advance`]).
    pub commands_lock: tokio::sync::Mutex<()>,
    /// ec2messages mailboxes of agents that poll for jobs.
    pub mailboxes: crate::mds::Mailboxes,
    /// Commands being advanced after a finished invocation, each with whether another run was
    /// asked for meanwhile.
    advancing: Mutex<HashMap<String, bool>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    pub fn new(
        settings: Settings,
        store: Arc<Store>,
        documents: Documents,
        kms: KeyService,
        access: AccessControl,
    ) -> Self {
        let metrics = Metrics::new();
        access.count_refusals(metrics.refusal_hook());
        Self {
            settings,
            store,
            documents,
            verifier: Verifier::new(),
            kms,
            metrics,
            access: std::sync::RwLock::new(Arc::new(access)),
            agents: Mutex::new(HashMap::new()),
            clock_skews: Mutex::new(HashMap::new()),
            agents_generation: watch::channel(0).0,
            sessions: Mutex::new(HashMap::new()),
            tokens: Mutex::new(Tokens::default()),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            next_conn: AtomicU64::new(1),
            commands_lock: tokio::sync::Mutex::new(()),
            mailboxes: crate::mds::Mailboxes::default(),
            advancing: Mutex::new(HashMap::new()),
        }
    }

    /// Claims advancing `command_id`: true when the caller is to run it, false when a run is
    /// under way (which is then asked to run once more).
    pub fn start_advancing(&self, command_id: &str) -> bool {
        let mut advancing = lock(&self.advancing);
        match advancing.get_mut(command_id) {
            Some(again) => {
                *again = true;
                false
            }
            None => {
                advancing.insert(command_id.to_owned(), false);
                true
            }
        }
    }

    /// After a run claimed with [`Hub::start_advancing`]: true when another run was asked for
    /// (the caller runs again), false when the claim is released.
    pub fn advance_again(&self, command_id: &str) -> bool {
        let mut advancing = lock(&self.advancing);
        match advancing.get_mut(command_id) {
            Some(again) if *again => {
                *again = false;
                true
            }
            _ => {
                advancing.remove(command_id);
                false
            }
        }
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// The credentials, users and policies in force.
    pub fn access(&self) -> Arc<AccessControl> {
        self.access
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts reloaded credentials, users and policies in force for the calls that follow.
    pub fn replace_access(&self, access: AccessControl) {
        access.count_refusals(self.metrics.refusal_hook());
        *self.access.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(access);
    }

    /// The ARN of a registered instance.
    pub fn instance_arn(&self, instance_id: &str) -> String {
        self.settings.arns().instance(instance_id)
    }

    /// Verifies a signature for `service` (`ssm`, `kms` or `ssmmessages`) made with an API key or
    /// an agent credential, and says whose it is.
    pub fn authenticate(
        &self,
        parts: RequestParts<'_>,
        service: &'static str,
        single_use: bool,
    ) -> Result<Caller, SigV4Error> {
        let mut caller = None;
        let mut lookup_error = None;
        let mut session_token_hash = None;
        let access = self.access();
        let key_for = |akid: &str| {
            if let Some((cred, principal)) = access.credential(akid) {
                caller = Some(Caller::User(principal.clone()));
                return Some(SigningKey::Hmac(cred.secret_access_key.clone()));
            }
            match self.store.agent_credential(akid) {
                Ok(Some(key)) => {
                    caller = Some(Caller::Agent {
                        instance_id: key.instance_id,
                    });
                    session_token_hash = key.session_token_hash;
                    Some(SigningKey::Hmac(key.secret))
                }
                Ok(None) => None,
                Err(e) => {
                    lookup_error = Some(e);
                    None
                }
            }
        };
        let mut verified = self.verifier.verify(
            parts,
            service,
            &self.settings.region,
            SystemTime::now(),
            single_use,
            key_for,
        );
        // Temporary credentials are valid only with the session token issued with them.
        if let (Ok(_), Some(expected)) = (&verified, &session_token_hash) {
            let given = parts
                .headers
                .get("x-amz-security-token")
                .and_then(|v| v.to_str().ok())
                .map(crate::secrets::secret_hash);
            if given.as_deref() != Some(expected.as_str()) {
                verified = Err(SigV4Error::BadSessionToken);
            }
        }
        if let Some(store_err) = &lookup_error {
            tracing::error!(error = %store_err, "credential lookup failed");
        }
        if verified.is_err() {
            self.metrics.authentication_failed(service);
        }
        // Expired is only returned for a valid signature, so both tell the signer's clock.
        let skew = match &verified {
            Ok(v) => Some(v.skew_seconds),
            Err(SigV4Error::Expired { skew_seconds, .. }) => Some(*skew_seconds),
            Err(_) => None,
        };
        if let (Some(skew), Some(Caller::Agent { instance_id })) = (skew, &caller) {
            if verified.is_err() {
                tracing::warn!(%instance_id, skew_seconds = skew, "agent clock is outside the signature window");
            }
            lock(&self.clock_skews).insert(instance_id.clone(), skew);
        }
        verified?;
        Ok(caller.expect("the lookup ran and found the key"))
    }

    /// Verifies a request an official agent signed with its registered RSA key (OFFICIAL-AGENT.md
    /// §4.5); returns the instance id. Such signatures are accepted only once.
    pub fn authenticate_instance_key(&self, parts: RequestParts<'_>) -> Result<String, ApiError> {
        let mut lookup_error = None;
        let mut instance = None;
        let key_for = |id: &str| match self.store.instance_key(id) {
            Ok(Some(key)) => {
                instance = Some(id.to_owned());
                Some(SigningKey::Rsa(key.public_key))
            }
            Ok(None) => None,
            Err(e) => {
                lookup_error = Some(e);
                None
            }
        };
        let verified = self.verifier.verify(
            parts,
            "ssm",
            &self.settings.region,
            SystemTime::now(),
            true,
            key_for,
        );
        if let Some(e) = lookup_error {
            return Err(ApiError::internal(e));
        }
        if let Err(e) = verified {
            self.metrics.authentication_failed("ssm");
            return Err(e.into());
        }
        Ok(instance.expect("the lookup ran and found the key"))
    }

    pub fn tokens(&self) -> MutexGuard<'_, Tokens> {
        lock(&self.tokens)
    }

    /// Registers a control channel, replacing (and closing) any previous one of the instance.
    pub fn add_agent(&self, instance_id: &str, link: AgentLink) {
        if let Some(old) = lock(&self.agents).insert(instance_id.to_owned(), link) {
            old.close.cancel();
        }
        self.agents_generation.send_modify(|g| *g += 1);
    }

    /// Closes an instance's control channel, if it has one.
    pub fn disconnect_agent(&self, instance_id: &str) {
        if let Some(link) = lock(&self.agents).remove(instance_id) {
            link.close.cancel();
            self.agents_generation.send_modify(|g| *g += 1);
        }
    }

    /// Removes a control channel if it is still the current one.
    pub fn remove_agent(&self, instance_id: &str, conn_id: u64) {
        let mut agents = lock(&self.agents);
        if agents.get(instance_id).map(|l| l.conn_id) == Some(conn_id) {
            agents.remove(instance_id);
            drop(agents);
            self.agents_generation.send_modify(|g| *g += 1);
        }
    }

    /// True while the instance's control channel is open.
    pub fn agent_online(&self, instance_id: &str) -> bool {
        lock(&self.agents).contains_key(instance_id)
    }

    /// When the instance was last heard from: the later of `stored` (the database's last
    /// contact) and traffic on its open control channel.
    pub fn last_contact(
        &self,
        instance_id: &str,
        stored: Option<SystemTime>,
    ) -> Option<SystemTime> {
        let live = lock(&self.agents).get(instance_id).map(|link| {
            SystemTime::UNIX_EPOCH + Duration::from_millis(link.heard.load(Ordering::Relaxed))
        });
        stored.max(live)
    }

    /// Online while the control channel is open or the last contact is within
    /// `connection_lost_after`; ConnectionLost otherwise.
    pub fn ping_status(&self, instance_id: &str, last_contact: Option<SystemTime>) -> PingStatus {
        let recent = last_contact.is_some_and(|at| {
            SystemTime::now()
                .duration_since(at)
                .map_or(true, |age| age <= self.settings.connection_lost_after)
        });
        if recent || self.agent_online(instance_id) {
            PingStatus::Online
        } else {
            PingStatus::ConnectionLost
        }
    }

    /// The instance's clock skew (its clock minus the gateway's, in seconds) as its latest signed
    /// request showed, if it made one since the gateway started.
    pub fn clock_skew(&self, instance_id: &str) -> Option<i64> {
        lock(&self.clock_skews).get(instance_id).copied()
    }

    /// Watches control channels opening and closing.
    pub fn watch_agents(&self) -> watch::Receiver<u64> {
        self.agents_generation.subscribe()
    }

    /// Queues a frame on an instance's control channel; false if it has none (or it is gone).
    pub async fn send_control(&self, instance_id: &str, frame: Bytes) -> bool {
        let link = lock(&self.agents).get(instance_id).cloned();
        match link {
            Some(link) => link.tx.send(frame).await.is_ok(),
            None => false,
        }
    }

    pub fn add_session(&self, session: Arc<Session>) {
        lock(&self.sessions).insert(session.id.clone(), session);
    }

    /// Every session the gateway holds.
    pub fn live_sessions(&self) -> Vec<Arc<Session>> {
        lock(&self.sessions).values().cloned().collect()
    }

    /// How many agents have an open control channel.
    pub fn connected_agents(&self) -> usize {
        lock(&self.agents).len()
    }

    pub fn session(&self, id: &str) -> Option<Arc<Session>> {
        lock(&self.sessions).get(id).cloned()
    }

    pub fn remove_session(&self, id: &str) {
        lock(&self.sessions).remove(id);
    }

    /// The ids of the sessions the gateway holds.
    pub fn live_session_ids(&self) -> std::collections::HashSet<String> {
        lock(&self.sessions).keys().cloned().collect()
    }

    /// Number of live sessions.
    pub fn session_count(&self) -> usize {
        lock(&self.sessions).len()
    }
}
