//! Test harness: an in-process ssmx gateway on 127.0.0.1 with one registered, running agent,
//! and a [`SessionManager`] configured like any AWS client (static keys, endpoint URL).
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::net::SocketAddr;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use ssmx_agent::{register, Agent, AgentConfig, AgentError, Backoff};
use ssmx_client::SessionManager;
use ssmx_gateway::config::{ApiCredential, Database};
use ssmx_gateway::store::NewActivation;
use ssmx_gateway::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Hang guard for one step of a test (not a timing goal).
pub const STEP: Duration = Duration::from_secs(60);

/// Logs to the test output when `SSMX_LOG` is set (e.g. `SSMX_LOG=ssmx_client=debug`).
pub fn init_logs() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("SSMX_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

/// A gateway with one registered, running agent.
pub struct Stack {
    /// The agent's instance id.
    pub instance_id: String,
    /// The SSM API key the gateway accepts.
    pub credential: ApiCredential,
    /// The proxy the agent reaches the gateway through, when started with one.
    pub agent_proxy: Option<CuttableProxy>,
    gateway: Option<Gateway>,
    agent_stop: Option<oneshot::Sender<()>>,
    agent: Option<JoinHandle<Result<(), AgentError>>>,
    _dir: tempfile::TempDir,
}

impl Stack {
    /// Starts the gateway and the agent and waits until the agent is online.
    pub async fn start() -> Stack {
        Self::start_with_documents(&[]).await
    }

    /// [`Stack::start`] with custom session documents (`(name, JSON)`; `SSM-SessionManagerRunShell`
    /// replaces the session preferences).
    pub async fn start_with_documents(documents: &[(&str, serde_json::Value)]) -> Stack {
        Self::start_with(documents, false).await
    }

    /// [`Stack::start`] with the agent's connections (registration, control and data channels)
    /// going through a [`CuttableProxy`], kept in [`Stack::agent_proxy`].
    pub async fn start_with_agent_proxy() -> Stack {
        Self::start_with(&[], true).await
    }

    async fn start_with(documents: &[(&str, serde_json::Value)], agent_proxy: bool) -> Stack {
        init_logs();
        let dir = tempfile::tempdir().unwrap();
        let documents_dir = dir.path().join("documents");
        std::fs::create_dir(&documents_dir).unwrap();
        for (name, content) in documents {
            std::fs::write(
                documents_dir.join(format!("{name}.json")),
                content.to_string(),
            )
            .unwrap();
        }
        let credential = ApiCredential::generate("tester");
        let gateway = Gateway::builder()
            .config(ssmx_gateway::config::Config {
                documents_dir: Some(documents_dir),
                ..Default::default()
            })
            .listen("127.0.0.1:0".parse().unwrap())
            .database(Database::Memory)
            .credential(credential.clone())
            .without_recording()
            .start()
            .await
            .expect("gateway starts");
        let activation = gateway
            .create_activation(&NewActivation::default())
            .unwrap();
        let agent_proxy = match agent_proxy {
            true => Some(CuttableProxy::start(gateway.local_addr()).await),
            false => None,
        };
        let agent_url = agent_proxy
            .as_ref()
            .map_or_else(|| gateway.url().to_owned(), CuttableProxy::url);
        let registration = register(
            &agent_url,
            &activation.activation_id,
            &activation.activation_code,
        )
        .await
        .expect("agent registers");
        let instance_id = registration.instance_id.clone();
        let mut config = AgentConfig::new(registration);
        config.log_dir = Some(dir.path().join("logs"));
        config.timing.control_backoff = Backoff {
            initial_min: Duration::from_millis(50),
            initial_max: Duration::from_millis(100),
            multiplier: 2.0,
            jitter: 0.5,
            cap: Duration::from_secs(1),
        };
        let (agent_stop, stopped) = oneshot::channel::<()>();
        let agent = tokio::spawn(Agent::new(config).run(async {
            let _ = stopped.await;
        }));
        assert!(
            gateway.wait_for_agent(&instance_id, STEP).await,
            "the agent never came online"
        );
        Stack {
            instance_id,
            credential,
            agent_proxy,
            gateway: Some(gateway),
            agent_stop: Some(agent_stop),
            agent: Some(agent),
            _dir: dir,
        }
    }

    /// The gateway's base URL.
    pub fn url(&self) -> &str {
        self.gateway.as_ref().expect("running").url()
    }

    /// The gateway's socket address.
    pub fn addr(&self) -> SocketAddr {
        self.gateway.as_ref().expect("running").local_addr()
    }

    /// A client pointed at `endpoint` (the gateway, or a proxy in front of it).
    pub async fn manager_at(&self, endpoint: &str) -> SessionManager {
        SessionManager::new(&sdk_config(endpoint, &self.credential).await)
    }

    /// A client pointed at the gateway.
    pub async fn manager(&self) -> SessionManager {
        self.manager_at(self.url()).await
    }

    /// Stops the agent and the gateway.
    pub async fn stop(mut self) {
        if let Some(stop) = self.agent_stop.take() {
            let _ = stop.send(());
        }
        if let Some(agent) = self.agent.take() {
            let _ = tokio::time::timeout(STEP, agent).await;
        }
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown().await;
        }
    }
}

/// An SDK configuration as a user would have it: static keys, region, endpoint URL.
pub async fn sdk_config(endpoint: &str, credential: &ApiCredential) -> aws_types::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            &credential.access_key_id,
            &credential.secret_access_key,
            None,
            None,
            "test",
        ))
        .load()
        .await
}

/// A TCP echo server on 127.0.0.1; returns its port.
pub async fn echo_server() -> (u16, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (port, task)
}

/// A TCP server on 127.0.0.1 that sends `total` bytes of `Pattern::new(seed)` to each client.
pub async fn pattern_source(seed: u64, total: u64) -> (u16, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut pattern = Pattern::new(seed);
                let mut buf = vec![0u8; 64 * 1024];
                let mut sent = 0u64;
                while sent < total {
                    let n = buf.len().min((total - sent) as usize);
                    pattern.fill(&mut buf[..n]);
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    sent += n as u64;
                }
            });
        }
    });
    (port, task)
}

/// A TCP server on 127.0.0.1 that checks what each client sends against
/// `Pattern::new(seed)` and, at the client's EOF, answers `ok <bytes>` (or where it differed).
pub async fn pattern_sink(seed: u64) -> (u16, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut pattern = Pattern::new(seed);
                let mut got = vec![0u8; 64 * 1024];
                let mut want = vec![0u8; 64 * 1024];
                let mut total = 0u64;
                let verdict = loop {
                    let n = match s.read(&mut got).await {
                        Ok(0) => break format!("ok {total}"),
                        Ok(n) => n,
                        Err(e) => break format!("read error at {total}: {e}"),
                    };
                    pattern.fill(&mut want[..n]);
                    if got[..n] != want[..n] {
                        break format!("corrupt data at offset {total}");
                    }
                    total += n as u64;
                };
                let _ = s.write_all(verdict.as_bytes()).await;
            });
        }
    });
    (port, task)
}

/// A TCP proxy that can reset every connection it carries while staying open for new ones.
pub struct CuttableProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    cut: tokio::sync::watch::Sender<usize>,
    accept: JoinHandle<()>,
}

impl CuttableProxy {
    /// Proxies 127.0.0.1:<ephemeral> to `upstream`.
    pub async fn start(upstream: SocketAddr) -> CuttableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = tokio::sync::watch::channel(0usize);
        let cuts = cut.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((down, _)) = listener.accept().await else {
                    return;
                };
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut down, mut up) = (down, up);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = cut.changed() => {
                            // Linger 0: both peers see a TCP reset, not an orderly close.
                            let _ = down.set_zero_linger();
                            let _ = up.set_zero_linger();
                        }
                    }
                });
            }
        });
        CuttableProxy { addr, cut, accept }
    }

    /// The proxy's address as an `http://` URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Resets every connection open now; new ones are still accepted. Returns how many were
    /// open.
    pub fn cut(&self) -> usize {
        let open = self.cut.receiver_count();
        self.cut.send_modify(|n| *n += 1);
        open
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), so both ends can produce and check a
/// stream without holding it. Reads of any size see the same stream.
pub struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    /// A stream from `seed`.
    pub fn new(seed: u64) -> Pattern {
        Pattern {
            state: seed.max(1),
            word: [0; 8],
            used: 8,
        }
    }

    fn next(&mut self) -> u8 {
        if self.used == 8 {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            self.word = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            self.used = 0;
        }
        self.used += 1;
        self.word[self.used - 1]
    }

    /// Fills `buf` with the next bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next();
        }
    }
}
