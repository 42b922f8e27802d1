//! The end-to-end benchmark behind `ssmx bench`. Starts a real gateway and agent (the running
//! `ssmx` executable) on loopback, drives a `session-manager-plugin` binary exactly as aws-cli
//! does, and measures port-forwarding throughput, keystroke latency, session set-up time,
//! gateway memory per idle session, the plugin's memory, and Run Command to a fleet of agent
//! identities (time to finish, gateway memory per connected agent), each beside its target.

mod cpus;
mod fleet;
mod idle;
mod plugin;
mod report;
mod shell;
mod stack;
mod throughput;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use self::cpus::{CpuList, Placement};
use self::plugin::{Launch, Plugin};
use self::report::{
    ClientMemory, FailedPhase, LatencyReport, Machine, PluginInfo, Report, SetupReport,
};
use self::shell::{Cancel, ShellSession};
use self::stack::{Api, ChildGuard, SessionRequest, SessionResponse, Stack};
use self::throughput::{CpuPerGb, PatternServer, ThroughputReport};

/// The plugin looked for next to this executable when `--plugin` is not given.
const PLUGIN_BINARY: &str = "session-manager-plugin";
/// Region of the benchmark's gateway unless `--region` says otherwise.
const DEFAULT_REGION: &str = "us-east-1";
/// The port-forwarding document.
const PORT_DOCUMENT: &str = "AWS-StartPortForwardingSession";
/// How long the plugin may take to exit after its port session was terminated.
const PLUGIN_EXIT_DEADLINE: Duration = Duration::from_secs(15);
/// Exit status after SIGINT or SIGTERM, as shells report a death by SIGINT.
const EXIT_INTERRUPTED: u8 = 130;
/// Descriptors any process of the benchmark needs besides its sessions.
const FD_BASELINE: u64 = 256;
/// Descriptors per idle session in the process that holds most of them: the gateway keeps the
/// client's and the agent's WebSocket, plus one spare for the database and the agent's dials.
const FDS_PER_IDLE_SESSION: u64 = 3;
/// Descriptors per fleet agent in the process that holds most of them: this one, where each
/// agent has its control channel, a few pooled HTTP connections and its command's files.
const FDS_PER_FLEET_AGENT: u64 = 8;

/// `ssmx bench` options. Every size has a default sized for a 2-core machine and a couple of
/// minutes; `--quick` shrinks them all to a smoke run; 0 skips a measurement.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// The session-manager-plugin binary to drive, e.g. the official one for a side-by-side run
    /// [default: session-manager-plugin next to this executable].
    #[arg(long, value_name = "PATH")]
    pub plugin: Option<PathBuf>,
    /// MiB sent each way through port forwarding [default: 64; quick: 1].
    #[arg(long, value_name = "MIB")]
    pub mib: Option<u64>,
    /// Keystroke → echo round trips in a shell session; also samples the plugin's memory
    /// [default: 200; quick: 20].
    #[arg(long, value_name = "N")]
    pub latency_samples: Option<usize>,
    /// Shell sessions started to time set-up [default: 5; quick: 2].
    #[arg(long, value_name = "N")]
    pub setup_runs: Option<usize>,
    /// Idle sessions held open on the gateway [default: 500; quick: 10].
    #[arg(long, value_name = "N")]
    pub idle_sessions: Option<usize>,
    /// Agent identities, hosted in this process, that one Run Command `echo` goes to
    /// [default: 1000; quick: 5; at most 1000, one activation's limit].
    #[arg(long, value_name = "N")]
    pub fleet_agents: Option<usize>,
    /// Encrypt every session with this KMS key (e.g. `alias/bench`), through the session
    /// preferences of the bench gateway, whose key service creates it.
    #[arg(long, value_name = "KEY")]
    pub kms_key_id: Option<String>,
    /// Tiny sizes: every measurement once, in seconds, for a smoke test.
    #[arg(long)]
    pub quick: bool,
    /// Print the results as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Keep the scratch directory (configuration, database, logs) and print where it is.
    #[arg(long)]
    pub keep: bool,
    /// Run the gateway with session recording off (on by default, as in production), to see
    /// what recording costs.
    #[arg(long)]
    pub no_recording: bool,
    /// Run the gateway on these CPUs (e.g. `1`, `2-3`) and everything else the benchmark starts
    /// on the others, as when the gateway has a host of its own [default: all share every CPU].
    #[arg(long, value_name = "LIST")]
    pub gateway_cpus: Option<CpuList>,
}

/// How much of each measurement to do.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    mib: u64,
    latency_samples: usize,
    setup_runs: usize,
    idle_sessions: usize,
    fleet_agents: usize,
}

impl Sizes {
    const DEFAULT: Sizes = Sizes {
        mib: 64,
        latency_samples: 200,
        setup_runs: 5,
        idle_sessions: 500,
        fleet_agents: 1000,
    };
    const QUICK: Sizes = Sizes {
        mib: 1,
        latency_samples: 20,
        setup_runs: 2,
        idle_sessions: 10,
        fleet_agents: 5,
    };

    fn from_args(args: &BenchArgs) -> Self {
        let base = if args.quick {
            Self::QUICK
        } else {
            Self::DEFAULT
        };
        Self {
            mib: args.mib.unwrap_or(base.mib),
            latency_samples: args.latency_samples.unwrap_or(base.latency_samples),
            setup_runs: args.setup_runs.unwrap_or(base.setup_runs),
            idle_sessions: args.idle_sessions.unwrap_or(base.idle_sessions),
            fleet_agents: args.fleet_agents.unwrap_or(base.fleet_agents),
        }
    }
}

/// Runs the benchmarks and prints the report; `region` signs the API calls (default us-east-1).
pub async fn run(region: Option<&str>, args: BenchArgs) -> anyhow::Result<ExitCode> {
    let region = region.unwrap_or(DEFAULT_REGION);
    let sizes = Sizes::from_args(&args);
    let ssmx = std::env::current_exe().context("cannot locate the running ssmx executable")?;
    let plugin_path = args
        .plugin
        .clone()
        .unwrap_or_else(|| ssmx.with_file_name(PLUGIN_BINARY));
    if sizes.fleet_agents > ssmx_gateway::store::MAX_REGISTRATION_LIMIT as usize {
        bail!(
            "--fleet-agents is at most {} (one activation's registration limit)",
            ssmx_gateway::store::MAX_REGISTRATION_LIMIT
        );
    }
    raise_fd_limit(sizes)?;
    let placement = args
        .gateway_cpus
        .as_ref()
        .map(Placement::split)
        .transpose()?;
    let scratch = tempfile::Builder::new()
        .prefix("ssmx-bench-")
        .tempdir()
        .context("cannot create a scratch directory")?;

    let mut work = Box::pin(bench(
        &ssmx,
        &plugin_path,
        scratch.path(),
        GatewaySetup {
            region,
            kms_key_id: args.kms_key_id.as_deref(),
            recording: !args.no_recording,
            placement,
        },
        sizes,
    ));
    let finished = tokio::select! {
        r = &mut work => Ok(r),
        signal = interrupted() => Err(signal),
    };
    // Every process it started stops here, before their scratch directory goes.
    drop(work);
    let outcome = match finished {
        Ok(outcome) => outcome,
        Err(signal) => {
            eprintln!("ssmx bench: interrupted by {signal}; everything it started is stopped");
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
    };
    match outcome {
        Ok(report) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
            }
            if args.keep {
                eprintln!("ssmx bench: files kept in {}", scratch.keep().display());
            }
            if report.failed_phases.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            for failed in &report.failed_phases {
                eprintln!("ssmx bench: {} failed: {}", failed.phase, failed.error);
            }
            if !args.keep {
                eprintln!("ssmx bench: run again with --keep to keep the logs of the gateway, the agent and the plugins");
            }
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            if args.keep {
                eprintln!("ssmx bench: files kept in {}", scratch.keep().display());
            }
            Err(e.context("the benchmark could not start"))
        }
    }
}

/// What every measurement needs to start sessions and plugins.
struct Ctx {
    /// This executable, which administers the gateway.
    ssmx: PathBuf,
    api: Api,
    target: String,
    plugin: Plugin,
    scratch: PathBuf,
    aws_env: Vec<(String, String)>,
    cancel: Cancel,
    /// Sessions requested so far, to give each its own reason.
    requests: AtomicUsize,
}

impl Ctx {
    fn launch(&self, request: &SessionRequest, response: &SessionResponse) -> Launch {
        self.plugin.launch(
            request,
            response,
            &self.api.region,
            &self.api.url,
            &self.aws_env,
        )
    }

    /// A request for `document` (`None`: the default shell document) on the agent.
    fn request(
        &self,
        document: Option<&str>,
        parameters: BTreeMap<String, Vec<String>>,
    ) -> SessionRequest {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        SessionRequest {
            target: self.target.clone(),
            document_name: document.map(str::to_owned),
            parameters,
            reason: format!("ssmx bench session {n}"),
        }
    }
}

/// Tells blocking work to give up when the benchmark future is dropped (interrupted or failed).
struct CancelOnDrop(Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// How the benchmark's gateway is set up.
struct GatewaySetup<'a> {
    region: &'a str,
    /// Every session encrypted with this key.
    kms_key_id: Option<&'a str>,
    recording: bool,
    /// CPUs of its own (`--gateway-cpus`).
    placement: Option<Placement>,
}

async fn bench(
    ssmx: &Path,
    plugin_path: &Path,
    scratch: &Path,
    gateway: GatewaySetup<'_>,
    sizes: Sizes,
) -> anyhow::Result<Report> {
    let GatewaySetup {
        region,
        kms_key_id,
        recording,
        placement,
    } = gateway;
    let cancel = Cancel::default();
    let _cancel_on_drop = CancelOnDrop(cancel.clone());
    let plugin = Plugin::probe(plugin_path).await?;
    if let Some(placement) = &placement {
        placement.confine_self()?;
    }
    progress("starting a gateway and an agent on 127.0.0.1");
    let mut stack = Stack::start(ssmx, scratch, region, kms_key_id, recording).await?;
    let gateway_cpus = match &placement {
        Some(placement) => Some(placement.place_gateway(stack.gateway_pid())?),
        None => None,
    };
    let ctx = Ctx {
        ssmx: ssmx.to_owned(),
        api: stack.api.clone(),
        target: stack.instance_id.clone(),
        aws_env: stack.aws_env.clone(),
        plugin,
        scratch: scratch.to_owned(),
        cancel,
        requests: AtomicUsize::new(0),
    };
    let mut report = Report {
        machine: Machine::detect(),
        plugin: PluginInfo {
            path: ctx.plugin.path.display().to_string(),
            version: ctx.plugin.version.clone(),
        },
        agent_version: stack.agent_version.clone(),
        kms_key_id: kms_key_id.map(str::to_owned),
        recording,
        gateway_cpus: gateway_cpus.map(|cpus| cpus.to_string()),
        port_forwarding: None,
        interactive_latency: None,
        session_setup: None,
        idle_sessions: None,
        client_memory: None,
        fleet: None,
        targets: Vec::new(),
        failed_phases: Vec::new(),
    };
    let failures = measure_all(&ctx, &stack, sizes, &mut report).await;
    record_failures(&mut report, &mut stack, failures);
    report.judge();
    Ok(report)
}

/// Records failed measurements in `report`; a dead gateway or agent explains more than the
/// symptom a measurement saw, so it is named first.
fn record_failures(report: &mut Report, stack: &mut Stack, failures: Vec<(&str, anyhow::Error)>) {
    for (phase, e) in failures {
        let e = match stack.ensure_running() {
            Err(dead) => e.context(format!("{dead:#}")),
            Ok(()) => e,
        };
        report.failed_phases.push(FailedPhase {
            phase: phase.to_owned(),
            error: format!("{e:#}"),
        });
    }
}

/// Runs every measurement `sizes` asks for into `report`; one that fails does not stop the
/// others. Returns the failed ones.
async fn measure_all(
    ctx: &Ctx,
    stack: &Stack,
    sizes: Sizes,
    report: &mut Report,
) -> Vec<(&'static str, anyhow::Error)> {
    let mut failures = Vec::new();
    let mut failed = |phase: &'static str, e: anyhow::Error| {
        progress(&format!("{phase} failed: {e:#}"));
        failures.push((phase, e));
    };
    if sizes.setup_runs > 0 {
        progress(&format!(
            "session set-up: {} shell sessions",
            sizes.setup_runs
        ));
        let mut times = Vec::with_capacity(sizes.setup_runs);
        let mut failure = None;
        for _ in 0..sizes.setup_runs {
            match setup_time(ctx).await {
                Ok(time) => times.push(time),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        match failure {
            None => report.session_setup = SetupReport::from_samples(&times),
            Some(e) => failed("session set-up", e),
        }
    }
    if sizes.latency_samples > 0 {
        progress(&format!(
            "interactive latency: {} keystrokes in a shell session",
            sizes.latency_samples
        ));
        match latency(ctx, sizes.latency_samples).await {
            Ok(run) => {
                report.interactive_latency = LatencyReport::from_samples(&run.samples);
                report.client_memory = Some(ClientMemory {
                    plugin_rss_kib: run.plugin_rss_kib,
                    plugin_peak_rss_kib: run.plugin_peak_rss_kib,
                });
            }
            Err(e) => failed("interactive latency", e),
        }
    }
    if sizes.mib > 0 {
        progress(&format!("port forwarding: {} MiB each way", sizes.mib));
        let run = match sizes.mib.checked_mul(1024 * 1024) {
            Some(bytes) => port_forwarding(ctx, stack, bytes).await,
            None => Err(anyhow::anyhow!("--mib is too large")),
        };
        match run {
            Ok(result) => report.port_forwarding = Some(result),
            Err(e) => failed("port forwarding", e),
        }
    }
    if sizes.idle_sessions > 0 {
        progress(&format!(
            "concurrency: {} idle sessions",
            sizes.idle_sessions
        ));
        let run = idle::measure(
            &ctx.api,
            &ctx.target,
            sizes.idle_sessions,
            stack.gateway_pid(),
            stack.agent_pid(),
        )
        .await;
        match run {
            Ok(result) => report.idle_sessions = Some(result),
            Err(e) => failed("idle sessions", e),
        }
    }
    if sizes.fleet_agents > 0 {
        progress(&format!(
            "Run Command: echo to {} agent identities",
            sizes.fleet_agents
        ));
        let run = async {
            let activation =
                stack::create_activation(&ctx.ssmx, &ctx.scratch, Some(sizes.fleet_agents)).await?;
            fleet::measure(
                &ctx.api,
                activation,
                sizes.fleet_agents,
                stack.gateway_pid(),
                &ctx.scratch,
            )
            .await
        };
        match run.await {
            Ok(result) => report.fleet = Some(result),
            Err(e) => failed("Run Command fleet", e),
        }
    }
    failures
}

/// CPU seconds used so far by each of `pids`.
fn cpu_times(pids: [u32; 3]) -> anyhow::Result<[f64; 3]> {
    Ok([
        cpus::cpu_seconds(pids[0])?,
        cpus::cpu_seconds(pids[1])?,
        cpus::cpu_seconds(pids[2])?,
    ])
}

/// StartSession → the shell's first output through the plugin; then `exit`.
async fn setup_time(ctx: &Ctx) -> anyhow::Result<Duration> {
    let request = ctx.request(None, BTreeMap::new());
    let started = Instant::now();
    let response = ctx.api.start_session(&request).await?;
    let (launch, session_id) = (ctx.launch(&request, &response), response.session_id.clone());
    let (cwd, cancel) = (ctx.scratch.clone(), ctx.cancel.clone());
    let first_output = blocking(move || {
        let mut shell = ShellSession::spawn(&launch, &cwd, cancel)?;
        let first = shell.first_shell_output(&session_id)?;
        shell.type_text(b"exit\r")?;
        shell.wait_exit()?;
        Ok(first)
    })
    .await;
    match first_output {
        Ok(first) => Ok(first.saturating_duration_since(started)),
        Err(e) => Err(end_session(ctx, &response.session_id, e).await),
    }
}

/// Keystroke round trips in one shell session, and the plugin's memory meanwhile.
async fn latency(ctx: &Ctx, samples: usize) -> anyhow::Result<shell::LatencyRun> {
    let request = ctx.request(None, BTreeMap::new());
    let response = ctx.api.start_session(&request).await?;
    let (launch, session_id) = (ctx.launch(&request, &response), response.session_id.clone());
    let (cwd, cancel) = (ctx.scratch.clone(), ctx.cancel.clone());
    let run = blocking(move || {
        let mut shell = ShellSession::spawn(&launch, &cwd, cancel)?;
        shell.first_shell_output(&session_id)?;
        let run = shell.keystroke_latency(samples)?;
        // Enter, then end of file: `cat` exits, and with it the shell it replaced.
        shell.type_text(b"\r\x04")?;
        shell.wait_exit()?;
        Ok(run)
    })
    .await;
    match run {
        Ok(run) => Ok(run),
        Err(e) => Err(end_session(ctx, &response.session_id, e).await),
    }
}

/// A port session through the plugin to a server of ours; `bytes` up, then `bytes` down.
/// The CPU time each process spent, per GB forwarded in both directions together, is measured
/// over the transfer alone.
async fn port_forwarding(ctx: &Ctx, stack: &Stack, bytes: u64) -> anyhow::Result<ThroughputReport> {
    let server = PatternServer::start().await?;
    let local_port = free_port()?;
    let request = ctx.request(
        Some(PORT_DOCUMENT),
        BTreeMap::from([
            ("portNumber".to_owned(), vec![server.port().to_string()]),
            ("localPortNumber".to_owned(), vec![local_port.to_string()]),
        ]),
    );
    let response = ctx.api.start_session(&request).await?;
    let log_path = ctx.scratch.join("plugin-port-forwarding.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut plugin = ChildGuard::spawn(
        ctx.launch(&request, &response)
            .command()
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log),
        "plugin",
    )?;
    let measured = async {
        let mut conn =
            throughput::connect_when_listening(local_port, || plugin.ensure_running()).await?;
        let pids = [stack.gateway_pid(), stack.agent_pid(), plugin.pid()];
        let before = cpu_times(pids)?;
        let mut report = throughput::measure(&mut conn, bytes).await?;
        let after = cpu_times(pids)?;
        let per_gb = |i: usize| (after[i] - before[i]) / (2.0 * bytes as f64 / 1e9);
        report.cpu_seconds_per_gb = Some(CpuPerGb {
            gateway: per_gb(0),
            agent: per_gb(1),
            plugin: per_gb(2),
        });
        anyhow::Ok(report)
    }
    .await;
    // End it as a user's Ctrl-C would: the session is terminated and the plugin exits.
    let ended = ctx.api.terminate_session(&response.session_id).await;
    let exited = plugin.wait_exit(PLUGIN_EXIT_DEADLINE).await;
    let report =
        measured.map_err(|e| stack::with_log(e, &ctx.scratch, "plugin-port-forwarding.log"))?;
    ended?;
    if exited.is_none() {
        tracing::warn!(
            "the plugin did not exit within {PLUGIN_EXIT_DEADLINE:?} of TerminateSession"
        );
    }
    Ok(report)
}

/// Terminates a session whose measurement failed, keeping the measurement's error.
async fn end_session(ctx: &Ctx, session_id: &str, error: anyhow::Error) -> anyhow::Error {
    if let Err(e) = ctx.api.terminate_session(session_id).await {
        tracing::warn!("{e:#}");
    }
    error
}

/// Runs blocking work (PTY reads and writes) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("a benchmark thread panicked")?
}

/// A port on 127.0.0.1 free a moment ago, for the plugin's local listener.
fn free_port() -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free local port")?;
    Ok(listener.local_addr()?.port())
}

/// Raises this process's open-file limit (inherited by the gateway and the agent) to what
/// `idle_sessions` need.
fn raise_fd_limit(sizes: Sizes) -> anyhow::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let needed = FD_BASELINE
        + FDS_PER_IDLE_SESSION * sizes.idle_sessions as u64
        + FDS_PER_FLEET_AGENT * sizes.fleet_agents as u64;
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).context("cannot read the open-file limit")?;
    if soft >= needed {
        return Ok(());
    }
    if hard < needed {
        bail!(
            "{} idle sessions and {} fleet agents need about {needed} open files per process, above the hard limit of {hard}; raise it (ulimit -Hn) or pass a smaller --idle-sessions or --fleet-agents",
            sizes.idle_sessions,
            sizes.fleet_agents
        );
    }
    setrlimit(Resource::RLIMIT_NOFILE, needed, hard).context("cannot raise the open-file limit")
}

/// Resolves on SIGINT or SIGTERM, naming it.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// A line of progress for the person waiting (stderr, so `--json` output stays clean).
fn progress(what: &str) {
    eprintln!("ssmx bench: {what}");
}
