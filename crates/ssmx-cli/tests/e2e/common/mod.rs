//! The end-to-end harness: a real gateway and a real agent as child processes on 127.0.0.1 with
//! ephemeral ports, and helpers to run the real `ssmx` client and aws-cli against them.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Access key the test gateway accepts; the client side uses it through the AWS environment.
pub const ACCESS_KEY_ID: &str = "AKIASSMXE2ETEST00001";
/// Its secret.
pub const SECRET_ACCESS_KEY: &str = "ssmx-e2e-secret-key-0123456789abcdefABCD";
/// Region the stack runs in.
pub const REGION: &str = "us-east-1";
/// How long any single step may take before the test gives up (a hang guard, not a timing goal).
pub const STEP_DEADLINE: Duration = Duration::from_secs(60);

/// Path of a binary of this package.
pub fn bin(name: &str) -> PathBuf {
    match name {
        "ssmx" => PathBuf::from(env!("CARGO_BIN_EXE_ssmx")),
        "session-manager-plugin" => PathBuf::from(env!("CARGO_BIN_EXE_session-manager-plugin")),
        other => panic!("unknown binary {other}"),
    }
}

/// The workspace root (for the Python virtualenv that scripts/setup-test-env creates).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A program of the Python virtualenv scripts/setup-test-env makes (aws-cli, python).
pub fn venv_bin(name: &str) -> PathBuf {
    let path = workspace_root().join(".venv/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup-test-env first",
        path.display()
    );
    path
}

/// PATH with our plugin first, then the virtualenv, then the system.
pub fn path_with_plugin() -> String {
    let plugin_dir = bin("session-manager-plugin")
        .parent()
        .unwrap()
        .to_path_buf();
    let venv = workspace_root().join(".venv/bin");
    format!(
        "{}:{}:{}",
        plugin_dir.display(),
        venv.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A gateway and one registered agent, running until dropped.
pub struct Stack {
    /// Scratch directory holding config, database, agent state and logs.
    pub dir: tempfile::TempDir,
    /// Base URL of the gateway (`http://127.0.0.1:PORT`).
    pub url: String,
    /// The agent's managed-instance id.
    pub instance_id: String,
    gateway: ChildGuard,
    agent: Option<ChildGuard>,
    extra_agents: Vec<ChildGuard>,
}

/// Kills (SIGTERM, then SIGKILL) and reaps a child process when dropped.
pub struct ChildGuard(pub Child, pub &'static str);

impl ChildGuard {
    /// Kills the process at once (SIGKILL: it says goodbye to nobody) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        terminate(&mut self.0);
    }
}

/// Asks a child to stop with SIGTERM, waits up to 5 s, then kills it.
pub fn terminate(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Stack {
    /// Starts a gateway on an ephemeral port, registers an agent with a fresh activation and
    /// starts it, and waits until the gateway reports it online.
    pub fn start() -> Stack {
        Self::start_with(&[], "")
    }

    /// [`Stack::start`] with custom session documents (`(name, JSON)`, e.g. session
    /// preferences as `SSM-SessionManagerRunShell`) and extra gateway configuration (TOML, top-level
    /// keys and then tables, inserted before the `[[credentials]]` table).
    pub fn start_with(documents: &[(&str, serde_json::Value)], extra_config: &str) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gateway.toml");
        let db = dir.path().join("gateway.db");
        let documents_dir = dir.path().join("documents");
        std::fs::create_dir(&documents_dir).unwrap();
        for (name, content) in documents {
            std::fs::write(
                documents_dir.join(format!("{name}.json")),
                content.to_string(),
            )
            .unwrap();
        }
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\ndb = \"{}\"\nregion = \"{REGION}\"\nrecordings_dir = \"{}\"\ndocuments_dir = \"{}\"\n{extra_config}\n\n[[credentials]]\naccess_key_id = \"{ACCESS_KEY_ID}\"\nsecret_access_key = \"{SECRET_ACCESS_KEY}\"\nuser = \"tester\"\n",
                db.display(),
                dir.path().join("recordings").display(),
                documents_dir.display(),
            ),
        )
        .unwrap();
        let (gateway, url) = spawn_gateway(dir.path());
        let mut stack = Stack {
            url,
            instance_id: String::new(),
            gateway,
            agent: None,
            extra_agents: Vec::new(),
            dir,
        };
        stack.instance_id = stack.register_agent("agent");
        stack.start_agent();
        stack
    }

    /// Registers an agent identity with a fresh activation, its state in the scratch
    /// directory's `state_dir`; its managed-instance id. No agent runs for it until one is
    /// started there.
    pub fn register_agent(&self, state_dir: &str) -> String {
        let config = self.path("gateway.toml");
        let activation = run_ok(
            Command::new(bin("ssmx"))
                .args(["gateway", "activation", "create", "--config"])
                .arg(&config),
        );
        let activation: serde_json::Value =
            serde_json::from_slice(&activation.stdout).expect("activation JSON");
        let registered = run_ok(
            Command::new(bin("ssmx"))
                .args([
                    "agent",
                    "register",
                    "--gateway",
                    &self.url,
                    "--activation-id",
                ])
                .arg(activation["ActivationId"].as_str().unwrap())
                .arg("--activation-code")
                .arg(activation["ActivationCode"].as_str().unwrap())
                .arg("--state-dir")
                .arg(self.path(state_dir)),
        );
        let registered: serde_json::Value =
            serde_json::from_slice(&registered.stdout).expect("register JSON");
        registered["InstanceId"].as_str().unwrap().to_owned()
    }

    /// Starts `ssmx agent run` with its state in `state_dir` (logging to `state_dir.log`) and
    /// waits until its control channel is open at the gateway.
    fn spawn_agent(&self, state_dir: &str, instance_id: &str) -> ChildGuard {
        let agent = Command::new(bin("ssmx"))
            .args(["agent", "run", "--state-dir"])
            .arg(self.path(state_dir))
            .arg("--log-dir")
            .arg(self.path(&format!("{state_dir}-sessions")))
            .env("SSMX_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file(self.dir.path(), &format!("{state_dir}.log")))
            .spawn()
            .expect("start ssmx agent");
        let agent = ChildGuard(agent, "agent");
        wait_for(
            || self.connected(instance_id).then_some(()),
            "agent connected",
        );
        agent
    }

    /// (Re)starts the agent process and waits until it is online.
    pub fn start_agent(&mut self) {
        self.agent = None;
        self.agent = Some(self.spawn_agent("agent", &self.instance_id));
    }

    /// Registers and starts one more agent (running until the stack is dropped); its
    /// managed-instance id.
    pub fn add_agent(&mut self) -> String {
        let state_dir = format!("agent{}", self.extra_agents.len() + 2);
        let instance_id = self.register_agent(&state_dir);
        let agent = self.spawn_agent(&state_dir, &instance_id);
        self.extra_agents.push(agent);
        instance_id
    }

    /// An instance's ping status as DescribeInstanceInformation reports it.
    pub fn ping_status_of(&self, instance_id: &str) -> Option<String> {
        let ssm = self.sdk();
        let target = instance_id.to_owned();
        runtime().block_on(async move {
            let out = ssm.describe_instance_information().send().await.ok()?;
            out.instance_information_list()
                .iter()
                .find(|i| i.instance_id() == Some(target.as_str()))
                .and_then(|i| i.ping_status())
                .map(|s| s.as_str().to_owned())
        })
    }

    /// True while the instance's control channel is open (GetConnectionStatus `connected`): it
    /// can take sessions and commands now. PingStatus may say Online for a while after an agent
    /// is gone.
    pub fn connected(&self, instance_id: &str) -> bool {
        let ssm = self.sdk();
        let target = instance_id.to_owned();
        runtime().block_on(async move {
            ssm.get_connection_status()
                .target(target)
                .send()
                .await
                .is_ok_and(|out| {
                    out.status() == Some(&aws_sdk_ssm::types::ConnectionStatus::Connected)
                })
        })
    }

    /// An aws-sdk-ssm client for the gateway, with the stack's credentials.
    pub fn sdk(&self) -> aws_sdk_ssm::Client {
        let creds = aws_sdk_ssm::config::Credentials::new(
            ACCESS_KEY_ID,
            SECRET_ACCESS_KEY,
            None,
            None,
            "e2e",
        );
        let config = aws_sdk_ssm::Config::builder()
            .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
            .region(aws_sdk_ssm::config::Region::new(REGION))
            .credentials_provider(creds)
            .endpoint_url(&self.url)
            .interceptor(ssmx_client::UniqueSignatures)
            .build();
        aws_sdk_ssm::Client::from_conf(config)
    }

    /// Kills the agent process, as a crash would.
    pub fn kill_agent(&mut self) {
        if let Some(agent) = &mut self.agent {
            agent.kill();
        }
    }

    /// Kills the gateway process, as a crash would.
    pub fn kill_gateway(&mut self) {
        self.gateway.kill();
    }

    /// Kills the gateway process with SIGKILL, as a crash would, and starts it again on the same
    /// port with the same configuration and database file; waits until it is ready.
    pub fn restart_gateway(&mut self) {
        self.kill_gateway();
        let config = self.path("gateway.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        let port = self.url.rsplit(':').next().unwrap();
        std::fs::write(
            &config,
            text.replace(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:{port}\""),
            ),
        )
        .unwrap();
        let (gateway, url) = spawn_gateway(self.dir.path());
        assert_eq!(url, self.url, "the gateway came back on another address");
        self.gateway = gateway;
    }

    /// Sends SIGHUP to the gateway and waits until its log says it reloaded its users and
    /// policies; fails if it says it could not.
    pub fn reload_gateway(&self) {
        let log = self.path("gateway.log");
        let count = |what: &str| {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .matches(what)
                .count()
        };
        const RELOADED: &str = "credentials, users and policies reloaded";
        const REFUSED: &str = "configuration not reloaded";
        let before = (count(RELOADED), count(REFUSED));
        run_ok(Command::new("kill").args(["-HUP", &self.gateway.0.id().to_string()]));
        wait_for(
            || (count(RELOADED) > before.0 || count(REFUSED) > before.1).then_some(()),
            "gateway reload",
        );
        assert_eq!(count(REFUSED), before.1, "{}", self.logs());
    }

    /// The agent's process id, if it runs.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(|g| g.0.id())
    }

    /// The `ssmx` binary with the stack's endpoint, region and credentials.
    pub fn ssmx(&self) -> Command {
        let mut cmd = Command::new(bin("ssmx"));
        self.aws_env(&mut cmd);
        cmd.args(["--endpoint-url", &self.url, "--region", REGION]);
        cmd
    }

    /// Unmodified aws-cli from the virtualenv with the stack's endpoint, region and
    /// credentials, and our plugin on PATH.
    pub fn aws(&self) -> Command {
        let mut cmd = Command::new(venv_bin("aws"));
        self.aws_env(&mut cmd);
        cmd.env("PATH", path_with_plugin())
            .args(["--endpoint-url", &self.url, "--region", REGION]);
        cmd
    }

    /// Runs aws-cli with `args` (JSON output), fails unless it succeeds, and parses what it
    /// prints (null when it prints nothing, as for operations without output).
    pub fn aws_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self
            .aws()
            .args(args)
            .args(["--output", "json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "aws {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return serde_json::Value::Null;
        }
        serde_json::from_slice(&out.stdout).expect("aws-cli JSON")
    }

    /// A shell command line running `ssmx ARGS…` against the stack (for a terminal in tmux).
    pub fn command_line(&self, args: &[&str]) -> String {
        let mut parts = vec![
            format!("AWS_ACCESS_KEY_ID={ACCESS_KEY_ID}"),
            format!("AWS_SECRET_ACCESS_KEY={SECRET_ACCESS_KEY}"),
            format!("AWS_CONFIG_FILE={}", self.path("no-aws-config").display()),
            format!(
                "AWS_SHARED_CREDENTIALS_FILE={}",
                self.path("no-aws-credentials").display()
            ),
            "AWS_EC2_METADATA_DISABLED=true".to_owned(),
            bin("ssmx").display().to_string(),
            "--endpoint-url".into(),
            self.url.clone(),
            "--region".into(),
            REGION.into(),
        ];
        parts.extend(args.iter().map(|a| a.to_string()));
        parts.join(" ")
    }

    /// Runs a boto3 `script` with the venv's Python and the stack's AWS environment; its
    /// arguments are the gateway URL, the region and the instance id. It must print `boto3-ok`.
    pub fn run_boto3(&self, script: &str) {
        self.run_boto3_with(script, &[]);
    }

    /// [`Stack::run_boto3`] with more arguments after the instance id.
    pub fn run_boto3_with(&self, script: &str, extra_args: &[&str]) {
        let mut py = Command::new(venv_bin("python"));
        self.aws_env(&mut py);
        let out = py
            .arg("-c")
            .arg(script)
            .args([&self.url, REGION, &self.instance_id])
            .args(extra_args)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("boto3-ok"),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
    }

    /// Sets the AWS environment (credentials, region, no shared config) on `cmd`.
    pub fn aws_env(&self, cmd: &mut Command) {
        cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
            .env("AWS_DEFAULT_REGION", REGION)
            .env("AWS_REGION", REGION)
            .env("AWS_CONFIG_FILE", self.dir.path().join("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.dir.path().join("no-aws-credentials"),
            )
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN");
    }

    /// Fails unless `out` (of a client run against this stack) exited with `code`, showing its
    /// stderr and the stack's logs.
    pub fn assert_exit(&self, out: &Output, code: i32) {
        assert_eq!(
            out.status.code(),
            Some(code),
            "stderr: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
    }

    /// Fails unless the agent has run an encrypted session.
    pub fn assert_agent_encrypted(&self) {
        let log = std::fs::read_to_string(self.path("agent.log")).unwrap_or_default();
        assert!(
            log.contains("encrypted=true"),
            "no encrypted session in the agent's log\n{}",
            self.logs()
        );
    }

    /// A file under the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The gateway's and agents' logs, for failure messages.
    pub fn logs(&self) -> String {
        let extra = (2..self.extra_agents.len() + 2).map(|n| format!("agent{n}.log"));
        ["gateway.log".to_owned(), "agent.log".to_owned()]
            .into_iter()
            .chain(extra)
            .map(|f| {
                format!(
                    "--- {f} ---\n{}",
                    std::fs::read_to_string(self.path(&f)).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Starts `ssmx gateway run` with the configuration in `dir` (logging to `gateway.log`, appended
/// to) and waits until it is ready; the process and its base URL.
fn spawn_gateway(dir: &Path) -> (ChildGuard, String) {
    let ready = dir.join("gateway.url");
    let _ = std::fs::remove_file(&ready);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("gateway.log"))
        .unwrap();
    let gateway = ChildGuard(
        Command::new(bin("ssmx"))
            .args(["gateway", "run", "--config"])
            .arg(dir.join("gateway.toml"))
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ssmx gateway"),
        "gateway",
    );
    let url = wait_for(
        || {
            std::fs::read_to_string(&ready)
                .ok()
                .filter(|s| !s.trim().is_empty())
        },
        "gateway ready file",
    )
    .trim()
    .to_owned();
    (gateway, url)
}

/// A runtime for the harness's few SDK calls.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    })
}

fn log_file(dir: &Path, name: &str) -> Stdio {
    Stdio::from(std::fs::File::create(dir.join(name)).unwrap())
}

/// Runs `cmd` to completion and insists on success.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Polls `f` until it yields a value, failing the test after [`STEP_DEADLINE`].
pub fn wait_for<T>(mut f: impl FnMut() -> Option<T>, what: &str) -> T {
    let deadline = Instant::now() + STEP_DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads a port forward's output until its "Port N opened" line (the official client's text,
/// which ours prints too), and returns N: forwards started with local port 0 say which port the
/// system gave them, so no test has to guess a free one. The rest of the output is read on in
/// the background, so the forward never writes to a closed pipe.
pub fn opened_port(output: impl std::io::Read + Send + 'static) -> u16 {
    let mut reader = BufReader::new(output);
    let seen = read_until(&mut reader, " opened for sessionId ");
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let line = seen
        .lines()
        .find(|l| l.contains(" opened for sessionId "))
        .unwrap();
    line.trim()
        .strip_prefix("Port ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"))
}

/// A free TCP port on 127.0.0.1 (bound and released; the caller binds it right away).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP echo server on 127.0.0.1 running on a background thread for the test's lifetime.
pub fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut reader = conn.try_clone().unwrap();
                let _ = std::io::copy(&mut reader, &mut conn);
            });
        }
    });
    port
}

/// A TCP server on 127.0.0.1 that sends pattern bytes to each connection until it goes away.
pub fn endless_source() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let chunk = pattern(64 * 1024, 5);
                while conn.write_all(&chunk).is_ok() {}
            });
        }
    });
    port
}

/// Connects to 127.0.0.1:`port`, retrying while the listener comes up.
pub fn connect(port: u16) -> TcpStream {
    wait_for(
        || TcpStream::connect(("127.0.0.1", port)).ok(),
        "local port to accept",
    )
}

/// Sends `data` over `conn` and reads the same number of bytes back.
pub fn echo_roundtrip(conn: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    conn.set_read_timeout(Some(STEP_DEADLINE)).unwrap();
    let mut writer = conn.try_clone().unwrap();
    let payload = data.to_vec();
    let sender = std::thread::spawn(move || writer.write_all(&payload));
    let mut back = vec![0u8; data.len()];
    conn.read_exact(&mut back).unwrap();
    sender.join().unwrap().unwrap();
    back
}

/// Deterministic pseudo-random bytes (xorshift), so failures are reproducible.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A tmux server of its own (socket under the scratch dir) running one command in a pane.
pub struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    /// Starts `command` (a shell command line) in a detached `cols`×`rows` tmux session.
    pub fn start(dir: &Path, command: &str, cols: u16, rows: u16) -> Tmux {
        let tmux = Tmux {
            socket: dir.join("tmux.sock"),
        };
        let status = tmux
            .cmd()
            .args([
                "new-session",
                "-d",
                "-s",
                "t",
                "-x",
                &cols.to_string(),
                "-y",
                &rows.to_string(),
            ])
            .arg(format!("{command}; echo \"[exit $?]\"; sleep 600"))
            .status()
            .expect("tmux");
        assert!(status.success(), "tmux new-session failed");
        tmux
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket).env_remove("TMUX");
        c
    }

    /// Types `keys` (tmux key names, e.g. "Enter", "C-d") into the pane.
    pub fn send_keys(&self, keys: &[&str]) {
        let status = self
            .cmd()
            .args(["send-keys", "-t", "t"])
            .args(keys)
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Types literal text.
    pub fn type_text(&self, text: &str) {
        let status = self
            .cmd()
            .args(["send-keys", "-t", "t", "-l", text])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The pane's visible text.
    pub fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "t", "-S", "-200"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Resizes the window (and so the pane's terminal).
    pub fn resize(&self, cols: u16, rows: u16) {
        let status = self
            .cmd()
            .args([
                "resize-window",
                "-t",
                "t",
                "-x",
                &cols.to_string(),
                "-y",
                &rows.to_string(),
            ])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits until the screen contains `needle`, returning the screen.
    pub fn wait_for_text(&self, needle: &str) -> String {
        let mut last = String::new();
        let deadline = Instant::now() + STEP_DEADLINE;
        while Instant::now() < deadline {
            last = self.screen();
            if last.contains(needle) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out waiting for {needle:?} on screen:\n{last}");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

/// Reads a child's stdout line by line until one contains `needle`.
pub fn read_until(reader: &mut impl BufRead, needle: &str) -> String {
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).unwrap();
        assert!(n > 0, "stream ended before {needle:?}; got:\n{seen}");
        seen.push_str(&line);
        if line.contains(needle) {
            return seen;
        }
    }
}

/// Wraps a child's stdout for [`read_until`].
pub fn lines(child: &mut Child) -> BufReader<std::process::ChildStdout> {
    BufReader::new(child.stdout.take().unwrap())
}
