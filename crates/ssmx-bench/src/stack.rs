//! The processes under test: a gateway and a registered agent, both this `ssmx` executable, started
//! exactly as the contract's command lines say, on 127.0.0.1 with an ephemeral port.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long the gateway, the activation, the registration and the agent's first connection may
/// take. A hang guard for a broken build, far above what a healthy stack needs.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// Pause between polls of a ready file, a port or the instance list.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long a process may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Lines of a log file quoted in an error.
const LOG_TAIL_LINES: usize = 30;
/// Session owner name the gateway gives the benchmark's key.
const USER: &str = "bench";

/// A process this benchmark started: stopped (SIGTERM, then SIGKILL after [`STOP_GRACE`]) and
/// reaped when dropped, on every exit path.
pub struct ChildGuard {
    child: Child,
    name: String,
}

impl ChildGuard {
    /// Spawns `cmd`, naming it `name` in errors.
    pub fn spawn(cmd: &mut Command, name: &str) -> anyhow::Result<Self> {
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start the {name} ({:?})", cmd.get_program()))?;
        Ok(Self {
            child,
            name: name.to_owned(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has already exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!("the {} exited early ({status})", self.name),
            Err(e) => bail!("cannot query the {}: {e}", self.name),
        }
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::warn!(process = %self.name, "no exit after SIGTERM; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The access key the gateway is configured to accept, used by the SDK and the plugin.
#[derive(Clone, Debug)]
pub struct ApiKey {
    /// AWS_ACCESS_KEY_ID.
    pub access_key_id: String,
    /// AWS_SECRET_ACCESS_KEY.
    pub secret_access_key: String,
}

impl ApiKey {
    /// A fresh random key pair.
    fn generate() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
        Self {
            access_key_id: format!("AKIA{}", &id[..16]),
            secret_access_key: format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            ),
        }
    }
}

/// What StartSession is asked for.
#[derive(Clone, Debug)]
pub struct SessionRequest {
    /// The managed instance.
    pub target: String,
    /// `None` for the default shell document.
    pub document_name: Option<String>,
    /// Document parameters.
    pub parameters: BTreeMap<String, Vec<String>>,
    /// The session's reason. Distinct on every request: the gateway refuses a second request
    /// with an identical signature, which two identical calls within one second would have.
    pub reason: String,
}

/// What StartSession answered.
#[derive(Clone, Debug)]
pub struct SessionResponse {
    /// The session id.
    pub session_id: String,
    /// The client's data-channel token.
    pub token_value: String,
    /// The data-channel WebSocket URL.
    pub stream_url: String,
}

/// The SSM API of the gateway under test, as any AWS SDK user sees it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Api {
    ssm: aws_sdk_ssm::Client,
    /// The gateway's base URL (also the SSM endpoint).
    pub url: String,
    /// The region the gateway runs in.
    pub region: String,
    /// The credentials the gateway accepts.
    pub key: ApiKey,
}

impl Api {
    /// The SDK client for the gateway's SSM API.
    pub fn sdk(&self) -> &aws_sdk_ssm::Client {
        &self.ssm
    }

    fn new(url: &str, region: &str, key: &ApiKey) -> Self {
        let creds = aws_sdk_ssm::config::Credentials::new(
            &key.access_key_id,
            &key.secret_access_key,
            None,
            None,
            "ssmx-bench",
        );
        let config = aws_sdk_ssm::Config::builder()
            .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
            .region(aws_sdk_ssm::config::Region::new(region.to_owned()))
            .credentials_provider(creds)
            .endpoint_url(url)
            .interceptor(ssmx_client::UniqueSignatures)
            .build();
        Self {
            ssm: aws_sdk_ssm::Client::from_conf(config),
            url: url.to_owned(),
            region: region.to_owned(),
            key: key.clone(),
        }
    }

    /// StartSession.
    pub async fn start_session(&self, req: &SessionRequest) -> anyhow::Result<SessionResponse> {
        let mut call = self
            .ssm
            .start_session()
            .target(&req.target)
            .set_document_name(req.document_name.clone())
            .reason(&req.reason);
        for (name, values) in &req.parameters {
            call = call.parameters(name, values.clone());
        }
        let out = call
            .send()
            .await
            .map_err(|e| api_failed("StartSession", e))?;
        let field = |v: Option<&str>, name: &str| {
            v.filter(|s| !s.is_empty())
                .map(str::to_owned)
                .with_context(|| format!("StartSession answered without {name}"))
        };
        Ok(SessionResponse {
            session_id: field(out.session_id(), "SessionId")?,
            token_value: field(out.token_value(), "TokenValue")?,
            stream_url: field(out.stream_url(), "StreamUrl")?,
        })
    }

    /// TerminateSession.
    pub async fn terminate_session(&self, session_id: &str) -> anyhow::Result<()> {
        self.ssm
            .terminate_session()
            .session_id(session_id)
            .send()
            .await
            .map_err(|e| api_failed(&format!("TerminateSession {session_id}"), e))?;
        Ok(())
    }

    /// Whether `instance_id`'s control channel is open (GetConnectionStatus), and then the agent
    /// version DescribeInstanceInformation reports for it.
    async fn connected_agent(&self, instance_id: &str) -> anyhow::Result<Option<Option<String>>> {
        let status = self
            .ssm
            .get_connection_status()
            .target(instance_id)
            .send()
            .await
            .map_err(|e| api_failed("GetConnectionStatus", e))?;
        if status.status() != Some(&aws_sdk_ssm::types::ConnectionStatus::Connected) {
            return Ok(None);
        }
        let out = self
            .ssm
            .describe_instance_information()
            .send()
            .await
            .map_err(|e| api_failed("DescribeInstanceInformation", e))?;
        Ok(Some(
            out.instance_information_list()
                .iter()
                .find(|i| i.instance_id() == Some(instance_id))
                .and_then(|i| i.agent_version().map(str::to_owned)),
        ))
    }
}

/// A running gateway with one registered, online agent. Dropping it stops the agent, then the
/// gateway.
pub struct Stack {
    // Field order is drop order: the agent goes before the gateway it talks to.
    agent: ChildGuard,
    gateway: ChildGuard,
    /// The SSM API of the gateway.
    pub api: Api,
    /// The agent's managed-instance id.
    pub instance_id: String,
    /// The agent version the gateway reports.
    pub agent_version: Option<String>,
    /// Environment for a process that makes its own AWS calls against the gateway (the
    /// plugin): the key, the region, and empty shared config files so no user's profile or
    /// instance metadata interferes.
    pub aws_env: Vec<(String, String)>,
    dir: PathBuf,
}

impl Stack {
    /// Starts the gateway on 127.0.0.1:0 with a fresh database and key under `dir`, creates an
    /// activation, registers an agent with it, starts the agent and waits until it is online.
    /// With `kms_key_id`, the session preferences encrypt every session with that key; with
    /// `recording`, the gateway records sessions into `dir/recordings`.
    pub async fn start(
        ssmx: &Path,
        dir: &Path,
        region: &str,
        kms_key_id: Option<&str>,
        recording: bool,
    ) -> anyhow::Result<Stack> {
        let key = ApiKey::generate();
        let documents = dir.join("documents");
        std::fs::create_dir_all(&documents)
            .with_context(|| format!("cannot create {}", documents.display()))?;
        if let Some(kms_key_id) = kms_key_id {
            let preferences = serde_json::json!({
                "schemaVersion": "1.0",
                "sessionType": "Standard_Stream",
                "inputs": {"kmsKeyId": kms_key_id},
            });
            let path = documents.join("SSM-SessionManagerRunShell.json");
            std::fs::write(&path, preferences.to_string())
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        let config = dir.join("gateway.toml");
        std::fs::write(&config, gateway_config(dir, region, &key, recording))
            .with_context(|| format!("cannot write {}", config.display()))?;
        let ready = dir.join("gateway.url");
        let mut gateway = ChildGuard::spawn(
            Command::new(ssmx)
                .args(["gateway", "run", "--config"])
                .arg(&config)
                .arg("--ready-file")
                .arg(&ready)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file(dir, "gateway.log")?),
            "gateway",
        )?;
        let url = poll(START_DEADLINE, "the gateway's ready file", || {
            gateway.ensure_running()?;
            Ok(std::fs::read_to_string(&ready)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty()))
        })
        .await
        .map_err(|e| with_log(e, dir, "gateway.log"))?;

        let (activation_id, activation_code) = create_activation(ssmx, dir, None).await?;
        let state_dir = dir.join("agent");
        let registered = run_json(
            tokio::process::Command::new(ssmx)
                .args(["agent", "register", "--gateway", &url])
                .args(["--activation-id", &activation_id])
                .args(["--activation-code", &activation_code])
                .arg("--state-dir")
                .arg(&state_dir),
            "ssmx agent register",
        )
        .await?;
        let instance_id = json_str(&registered, "InstanceId")?;

        let mut agent = ChildGuard::spawn(
            Command::new(ssmx)
                .args(["agent", "run", "--state-dir"])
                .arg(&state_dir)
                .arg("--log-dir")
                .arg(dir.join("session-logs"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file(dir, "agent.log")?),
            "agent",
        )?;
        let api = Api::new(&url, region, &key);
        let deadline = Instant::now() + START_DEADLINE;
        let agent_version = loop {
            agent
                .ensure_running()
                .map_err(|e| with_log(e, dir, "agent.log"))?;
            gateway
                .ensure_running()
                .map_err(|e| with_log(e, dir, "gateway.log"))?;
            if let Some(version) = api.connected_agent(&instance_id).await? {
                break version;
            }
            if Instant::now() >= deadline {
                let e = anyhow::anyhow!(
                    "agent {instance_id} did not come online within {START_DEADLINE:?}"
                );
                return Err(with_log(e, dir, "agent.log"));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        };
        Ok(Stack {
            aws_env: aws_env(dir, &api)?,
            agent,
            gateway,
            api,
            instance_id,
            agent_version,
            dir: dir.to_owned(),
        })
    }

    /// The gateway's process id.
    pub fn gateway_pid(&self) -> u32 {
        self.gateway.pid()
    }

    /// The agent's process id.
    pub fn agent_pid(&self) -> u32 {
        self.agent.pid()
    }

    /// Fails, quoting the logs, when the gateway or the agent has died.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.gateway
            .ensure_running()
            .map_err(|e| with_log(e, &self.dir, "gateway.log"))?;
        self.agent
            .ensure_running()
            .map_err(|e| with_log(e, &self.dir, "agent.log"))
    }
}

fn aws_env(dir: &Path, api: &Api) -> anyhow::Result<Vec<(String, String)>> {
    let empty_file = |name: &str| -> anyhow::Result<String> {
        let path = dir.join(name);
        std::fs::write(&path, "").with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path.display().to_string())
    };
    Ok(vec![
        ("AWS_ACCESS_KEY_ID".into(), api.key.access_key_id.clone()),
        (
            "AWS_SECRET_ACCESS_KEY".into(),
            api.key.secret_access_key.clone(),
        ),
        ("AWS_REGION".into(), api.region.clone()),
        ("AWS_DEFAULT_REGION".into(), api.region.clone()),
        ("AWS_CONFIG_FILE".into(), empty_file("aws-config")?),
        (
            "AWS_SHARED_CREDENTIALS_FILE".into(),
            empty_file("aws-credentials")?,
        ),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
    ])
}

/// Creates an activation in the database of the gateway configured in `dir` (for at most
/// `registration_limit` agents); its id and code.
pub async fn create_activation(
    ssmx: &Path,
    dir: &Path,
    registration_limit: Option<usize>,
) -> anyhow::Result<(String, String)> {
    let mut cmd = tokio::process::Command::new(ssmx);
    cmd.args(["gateway", "activation", "create", "--config"])
        .arg(dir.join("gateway.toml"));
    if let Some(limit) = registration_limit {
        cmd.args(["--registration-limit", &limit.to_string()]);
    }
    let activation = run_json(&mut cmd, "ssmx gateway activation create").await?;
    Ok((
        json_str(&activation, "ActivationId")?,
        json_str(&activation, "ActivationCode")?,
    ))
}

/// An SSM API failure of `operation`, with the SDK's whole error chain.
fn api_failed<
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
>(
    operation: &str,
    e: aws_sdk_ssm::error::SdkError<E, R>,
) -> anyhow::Error {
    anyhow::anyhow!(
        "{operation} failed: {}",
        aws_sdk_ssm::error::DisplayErrorContext(e)
    )
}

fn gateway_config(dir: &Path, region: &str, key: &ApiKey, recording: bool) -> String {
    let path = |name: &str| toml_string(&dir.join(name).display().to_string());
    format!(
        "listen = \"127.0.0.1:0\"\ndb = {}\nregion = {}\nrecording = {recording}\n\
         record_port_sessions = {recording}\nrecordings_dir = {}\ndocuments_dir = {}\n\n\
         [[credentials]]\naccess_key_id = {}\nsecret_access_key = {}\nuser = {}\n",
        path("gateway.db"),
        toml_string(region),
        path("recordings"),
        path("documents"),
        toml_string(&key.access_key_id),
        toml_string(&key.secret_access_key),
        toml_string(USER),
    )
}

/// A TOML basic string (JSON string escaping is a subset TOML accepts).
fn toml_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<Stdio> {
    let path = dir.join(name);
    let file = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    Ok(Stdio::from(file))
}

/// Adds the last lines of the log file `name` to an error.
pub fn with_log(e: anyhow::Error, dir: &Path, name: &str) -> anyhow::Error {
    let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    if tail.is_empty() {
        e
    } else {
        e.context(format!("last lines of {name}:\n{tail}"))
    }
}

/// Polls `f` until it yields a value or fails, or `timeout` passes.
async fn poll<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Runs a short command to completion and reads its stdout as JSON.
async fn run_json(
    cmd: &mut tokio::process::Command,
    what: &str,
) -> anyhow::Result<serde_json::Value> {
    let out = tokio::time::timeout(
        START_DEADLINE,
        cmd.stdin(Stdio::null()).kill_on_drop(true).output(),
    )
    .await
    .with_context(|| format!("`{what}` did not finish within {START_DEADLINE:?}"))?
    .with_context(|| format!("cannot run `{what}`"))?;
    if !out.status.success() {
        bail!(
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "`{what}` printed no JSON: {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn json_str(v: &serde_json::Value, key: &str) -> anyhow::Result<String> {
    v.get(key)
        .and_then(|s| s.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .with_context(|| format!("no {key} in {v}"))
}

/// A process's memory figures from `/proc/<pid>/status`, in KiB.
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    /// Resident set size now.
    pub rss_kib: u64,
    /// Peak resident set size.
    pub peak_rss_kib: u64,
}

/// Reads `VmRSS` and `VmHWM` of process `pid`.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("no {name} in {path}"))
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        peak_rss_kib: field("VmHWM:")?,
    })
}
