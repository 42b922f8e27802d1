//! The benchmark's results: JSON for machines, a table for people, each DESIGN.md target beside
//! its measured figure.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::fleet::FleetReport;
use super::idle::IdleReport;
use super::throughput::ThroughputReport;

/// DESIGN.md: port forwarding, each direction, MB/s.
const TARGET_THROUGHPUT_MB_S: f64 = 100.0;
/// DESIGN.md: keystroke to echo, p50, ms.
const TARGET_LATENCY_P50_MS: f64 = 1.0;
/// DESIGN.md: keystroke to echo, p99, ms.
const TARGET_LATENCY_P99_MS: f64 = 5.0;
/// DESIGN.md: idle sessions on one gateway.
const TARGET_IDLE_SESSIONS: usize = 5000;
/// DESIGN.md: gateway memory per idle session, KiB.
const TARGET_KIB_PER_SESSION: f64 = 64.0;
/// Issue target: SendCommand `echo` to 1,000 agents, all Success within this many seconds.
const TARGET_FLEET_SECONDS: f64 = 5.0;
/// The fleet size that target is for.
const TARGET_FLEET_AGENTS: usize = 1000;
/// Issue target: gateway memory per idle connected agent, KiB.
const TARGET_KIB_PER_AGENT: f64 = 64.0;
/// DESIGN.md: client RSS during a shell session, KiB.
const TARGET_CLIENT_RSS_KIB: u64 = 8 * 1024;

/// Everything one `ssmx bench` run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// The plugin driven.
    pub plugin: PluginInfo,
    /// The agent version the gateway reported.
    pub agent_version: Option<String>,
    /// The KMS key every session was encrypted with, if any.
    pub kms_key_id: Option<String>,
    /// Whether the gateway recorded the sessions (its default).
    pub recording: bool,
    /// The CPUs the gateway had to itself (`--gateway-cpus`, as the kernel reports them after
    /// the move); `None`: every process shared all.
    pub gateway_cpus: Option<String>,
    /// Port forwarding; `None` when skipped.
    pub port_forwarding: Option<ThroughputReport>,
    /// Keystroke → echo; `None` when skipped.
    pub interactive_latency: Option<LatencyReport>,
    /// StartSession → first shell output; `None` when skipped.
    pub session_setup: Option<SetupReport>,
    /// Idle sessions on the gateway; `None` when skipped.
    pub idle_sessions: Option<IdleReport>,
    /// The plugin's memory in a shell session; `None` when skipped.
    pub client_memory: Option<ClientMemory>,
    /// Run Command to a fleet of agent identities; `None` when skipped.
    pub fleet: Option<FleetReport>,
    /// Each DESIGN.md target with its figure.
    pub targets: Vec<TargetRow>,
    /// Measurements that failed; the others still ran.
    pub failed_phases: Vec<FailedPhase>,
}

/// A measurement that failed, and why.
#[derive(Clone, Debug, Serialize)]
pub struct FailedPhase {
    /// Which (`port forwarding`, `session set-up`, …).
    pub phase: String,
    /// The error with its causes.
    pub error: String,
}

/// The machine.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// Logical CPUs available.
    pub nproc: usize,
    /// `model name` of the first CPU in /proc/cpuinfo.
    pub cpu_model: String,
    /// Kernel release.
    pub kernel: String,
    /// Total memory, MiB.
    pub memory_mib: u64,
}

impl Machine {
    /// Reads the running machine's description.
    pub fn detect() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                let (key, value) = l.split_once(':')?;
                (key.trim() == "model name").then(|| value.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let memory_mib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024);
        Self {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            memory_mib,
        }
    }
}

/// The plugin binary.
#[derive(Clone, Debug, Serialize)]
pub struct PluginInfo {
    /// Its path.
    pub path: String,
    /// What `--version` printed.
    pub version: String,
}

/// Percentiles of a set of durations, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyReport {
    /// Number of samples.
    pub samples: usize,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Smallest.
    pub min_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Arithmetic mean.
    pub mean_ms: f64,
}

impl LatencyReport {
    /// Summarises `samples` (nearest-rank percentiles). `None` when empty.
    pub fn from_samples(samples: &[Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let rank =
            |p: f64| ms[((p / 100.0 * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
        Some(Self {
            samples: ms.len(),
            p50_ms: rank(50.0),
            p90_ms: rank(90.0),
            p99_ms: rank(99.0),
            min_ms: ms[0],
            max_ms: ms[ms.len() - 1],
            mean_ms: ms.iter().sum::<f64>() / ms.len() as f64,
        })
    }
}

/// Session set-up times.
#[derive(Clone, Debug, Serialize)]
pub struct SetupReport {
    /// Sessions started.
    pub runs: usize,
    /// Median, ms.
    pub p50_ms: f64,
    /// Fastest, ms.
    pub min_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
}

impl SetupReport {
    /// Summarises the set-up times. `None` when empty.
    pub fn from_samples(samples: &[Duration]) -> Option<Self> {
        let summary = LatencyReport::from_samples(samples)?;
        Some(Self {
            runs: summary.samples,
            p50_ms: summary.p50_ms,
            min_ms: summary.min_ms,
            max_ms: summary.max_ms,
        })
    }
}

/// The plugin's memory during a shell session.
#[derive(Clone, Debug, Serialize)]
pub struct ClientMemory {
    /// Largest VmRSS sampled while typing, KiB.
    pub plugin_rss_kib: u64,
    /// VmHWM (peak RSS) at the end, KiB.
    pub plugin_peak_rss_kib: u64,
}

/// Where a measured figure stands against its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Target reached.
    Met,
    /// Target missed.
    Missed,
    /// Measured at a smaller scale than the target names.
    BelowTargetScale,
    /// Not measured in this run.
    Skipped,
}

impl Verdict {
    fn of(met: bool) -> Self {
        if met {
            Verdict::Met
        } else {
            Verdict::Missed
        }
    }

    fn label(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "MISSED",
            Verdict::BelowTargetScale => "below target scale",
            Verdict::Skipped => "skipped",
        }
    }
}

/// One DESIGN.md target and this run's figure.
#[derive(Clone, Debug, Serialize)]
pub struct TargetRow {
    /// What is measured.
    pub what: String,
    /// The target, as DESIGN.md states it.
    pub target: String,
    /// The figure, formatted; empty when skipped.
    pub measured: String,
    /// The comparison.
    pub verdict: Verdict,
}

impl Report {
    /// Compares every figure with its DESIGN.md target and fills [`Report::targets`].
    pub fn judge(&mut self) {
        let mut rows = Vec::new();
        let mut row = |what: &str, target: &str, measured: Option<(String, Verdict)>| {
            let (measured, verdict) = measured.unwrap_or((String::new(), Verdict::Skipped));
            rows.push(TargetRow {
                what: what.to_owned(),
                target: target.to_owned(),
                measured,
                verdict,
            });
        };
        let pf = self.port_forwarding.as_ref();
        let throughput = |rate: f64| {
            (
                format!("{rate:.1} MB/s"),
                Verdict::of(rate >= TARGET_THROUGHPUT_MB_S),
            )
        };
        let throughput_target = format!("≥ {TARGET_THROUGHPUT_MB_S} MB/s");
        row(
            "port forwarding upload",
            &throughput_target,
            pf.map(|p| throughput(p.upload_mb_per_s)),
        );
        row(
            "port forwarding download",
            &throughput_target,
            pf.map(|p| throughput(p.download_mb_per_s)),
        );
        let lat = self.interactive_latency.as_ref();
        row(
            "keystroke → echo p50",
            &format!("≤ {TARGET_LATENCY_P50_MS} ms"),
            lat.map(|l| {
                (
                    format!("{:.2} ms", l.p50_ms),
                    Verdict::of(l.p50_ms <= TARGET_LATENCY_P50_MS),
                )
            }),
        );
        row(
            "keystroke → echo p99",
            &format!("≤ {TARGET_LATENCY_P99_MS} ms"),
            lat.map(|l| {
                (
                    format!("{:.2} ms", l.p99_ms),
                    Verdict::of(l.p99_ms <= TARGET_LATENCY_P99_MS),
                )
            }),
        );
        let idle = self.idle_sessions.as_ref();
        row(
            "idle sessions on one gateway",
            &format!("≥ {TARGET_IDLE_SESSIONS}"),
            idle.map(|i| {
                let verdict = if i.sessions >= TARGET_IDLE_SESSIONS {
                    Verdict::Met
                } else {
                    Verdict::BelowTargetScale
                };
                (format!("{} held", i.sessions), verdict)
            }),
        );
        row(
            "gateway memory per idle session",
            &format!("≤ {TARGET_KIB_PER_SESSION} KiB"),
            idle.map(|i| {
                (
                    format!("{:.1} KiB", i.gateway_kib_per_session),
                    Verdict::of(i.gateway_kib_per_session <= TARGET_KIB_PER_SESSION),
                )
            }),
        );
        row(
            "client RSS in a shell session",
            &format!("≤ {} MiB", TARGET_CLIENT_RSS_KIB / 1024),
            self.client_memory.as_ref().map(|m| {
                (
                    mib(m.plugin_rss_kib),
                    Verdict::of(m.plugin_rss_kib <= TARGET_CLIENT_RSS_KIB),
                )
            }),
        );
        let fleet = self.fleet.as_ref();
        row(
            &format!("Run Command echo to {TARGET_FLEET_AGENTS} agents"),
            &format!("≤ {TARGET_FLEET_SECONDS} s"),
            fleet.map(|f| {
                let verdict = if f.agents < TARGET_FLEET_AGENTS {
                    Verdict::BelowTargetScale
                } else {
                    Verdict::of(f.command_seconds <= TARGET_FLEET_SECONDS)
                };
                (
                    format!("{:.2} s for {}", f.command_seconds, f.agents),
                    verdict,
                )
            }),
        );
        row(
            "gateway memory per connected agent",
            &format!("≤ {TARGET_KIB_PER_AGENT} KiB"),
            fleet.map(|f| {
                (
                    format!("{:.1} KiB", f.gateway_kib_per_agent),
                    Verdict::of(f.gateway_kib_per_agent <= TARGET_KIB_PER_AGENT),
                )
            }),
        );
        self.targets = rows;
    }

    /// The report for people.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "ssmx bench: {} CPUs ({}), {} MiB, Linux {}",
            m.nproc, m.cpu_model, m.memory_mib, m.kernel
        );
        let _ = writeln!(
            out,
            "plugin {} (version {}), agent {}, gateway recording {}\n",
            self.plugin.path,
            self.plugin.version,
            self.agent_version.as_deref().unwrap_or("unknown"),
            if self.recording { "on" } else { "off" }
        );
        if let Some(key) = &self.kms_key_id {
            let _ = writeln!(out, "every session encrypted with KMS key {key}\n");
        }
        if let Some(cpus) = &self.gateway_cpus {
            let _ = writeln!(
                out,
                "gateway on CPUs {cpus}, everything else on the other CPUs\n"
            );
        }
        let mut lines: Vec<[String; 4]> = vec![[
            "measurement".into(),
            "measured".into(),
            "target".into(),
            String::new(),
        ]];
        for t in &self.targets {
            lines.push([
                t.what.clone(),
                if t.verdict == Verdict::Skipped {
                    "-".into()
                } else {
                    t.measured.clone()
                },
                t.target.clone(),
                t.verdict.label().into(),
            ]);
        }
        if let Some(s) = &self.session_setup {
            lines.push([
                format!("session set-up p50 ({} runs)", s.runs),
                format!("{:.0} ms", s.p50_ms),
                "-".into(),
                String::new(),
            ]);
        }
        if let Some(i) = &self.idle_sessions {
            lines.push([
                "agent memory per idle session".into(),
                format!("{:.1} KiB", i.agent_kib_per_session),
                "-".into(),
                String::new(),
            ]);
        }
        let width = |col: usize| {
            lines
                .iter()
                .map(|l| l[col].chars().count())
                .max()
                .unwrap_or(0)
        };
        let widths = [width(0), width(1), width(2)];
        for l in &lines {
            let cell = |col: usize| {
                let pad = widths[col].saturating_sub(l[col].chars().count());
                format!("{}{}", l[col], " ".repeat(pad))
            };
            let _ = writeln!(out, "{}  {}  {}  {}", cell(0), cell(1), cell(2), l[3]);
        }
        let _ = writeln!(out);
        for failed in &self.failed_phases {
            let _ = writeln!(out, "FAILED {}: {}", failed.phase, failed.error);
        }
        if let Some(p) = &self.port_forwarding {
            let _ = writeln!(
                out,
                "port forwarding: {} MiB each way; upload {:.2} s, download {:.2} s",
                p.bytes_each_way / (1024 * 1024),
                p.upload_seconds,
                p.download_seconds
            );
            if let Some(cpu) = &p.cpu_seconds_per_gb {
                let _ = writeln!(
                    out,
                    "CPU time per GB forwarded: gateway {:.2} s, agent {:.2} s, plugin {:.2} s",
                    cpu.gateway, cpu.agent, cpu.plugin
                );
            }
        }
        if let Some(l) = &self.interactive_latency {
            let _ = writeln!(
                out,
                "keystroke → echo: {} samples; min {:.2} ms, p90 {:.2} ms, max {:.2} ms, mean {:.2} ms",
                l.samples, l.min_ms, l.p90_ms, l.max_ms, l.mean_ms
            );
        }
        if let Some(s) = &self.session_setup {
            let _ = writeln!(
                out,
                "session set-up (StartSession → first shell output): min {:.0} ms, max {:.0} ms",
                s.min_ms, s.max_ms
            );
        }
        if let Some(i) = &self.idle_sessions {
            let _ = writeln!(
                out,
                "idle sessions: {} opened in {:.1} s; gateway RSS {} → {}, agent RSS {} → {}",
                i.sessions,
                i.open_seconds,
                mib(i.gateway_rss_before_kib),
                mib(i.gateway_rss_after_kib),
                mib(i.agent_rss_before_kib),
                mib(i.agent_rss_after_kib)
            );
        }
        if let Some(f) = &self.fleet {
            let _ = writeln!(
                out,
                "fleet: {} agents connected in {:.1} s; gateway RSS {} → {}; echo to all in {:.2} s, gateway CPU {:.2} s",
                f.agents,
                f.connect_seconds,
                mib(f.gateway_rss_before_kib),
                mib(f.gateway_rss_idle_kib),
                f.command_seconds,
                f.gateway_cpu_seconds
            );
        }
        if let Some(c) = &self.client_memory {
            let _ = writeln!(
                out,
                "plugin memory in a shell session: RSS {}, peak {}",
                mib(c.plugin_rss_kib),
                mib(c.plugin_peak_rss_kib)
            );
        }
        out
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::throughput::CpuPerGb;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let r = LatencyReport::from_samples(&samples).unwrap();
        assert_eq!((r.p50_ms, r.p90_ms, r.p99_ms), (50.0, 90.0, 99.0));
        assert_eq!((r.min_ms, r.max_ms, r.mean_ms), (1.0, 100.0, 50.5));
        let one = LatencyReport::from_samples(&[Duration::from_millis(3)]).unwrap();
        assert_eq!((one.p50_ms, one.p99_ms), (3.0, 3.0));
        assert!(LatencyReport::from_samples(&[]).is_none());
    }

    #[test]
    fn every_target_gets_a_row_and_skips_are_marked() {
        let mut report = Report {
            machine: Machine::detect(),
            plugin: PluginInfo {
                path: "p".into(),
                version: "1".into(),
            },
            agent_version: None,
            kms_key_id: Some("alias/bench".into()),
            recording: true,
            gateway_cpus: Some("1".into()),
            port_forwarding: Some(ThroughputReport {
                bytes_each_way: 1 << 20,
                upload_mb_per_s: 150.0,
                download_mb_per_s: 50.0,
                upload_seconds: 0.0,
                download_seconds: 0.0,
                cpu_seconds_per_gb: Some(CpuPerGb {
                    gateway: 0.5,
                    agent: 1.0,
                    plugin: 1.5,
                }),
            }),
            interactive_latency: None,
            session_setup: None,
            idle_sessions: None,
            client_memory: Some(ClientMemory {
                plugin_rss_kib: 4096,
                plugin_peak_rss_kib: 5000,
            }),
            fleet: Some(FleetReport {
                agents: 100,
                connect_seconds: 1.0,
                command_seconds: 0.5,
                gateway_cpu_seconds: 0.2,
                gateway_rss_before_kib: 1000,
                gateway_rss_idle_kib: 9000,
                gateway_kib_per_agent: 80.0,
            }),
            targets: Vec::new(),
            failed_phases: Vec::new(),
        };
        report.judge();
        let verdicts: Vec<_> = report.targets.iter().map(|t| t.verdict).collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Met,
                Verdict::Missed,
                Verdict::Skipped,
                Verdict::Skipped,
                Verdict::Skipped,
                Verdict::Skipped,
                Verdict::Met,
                Verdict::BelowTargetScale,
                Verdict::Missed
            ]
        );
        let table = report.table();
        assert!(
            table.contains("150.0 MB/s") && table.contains("MISSED"),
            "{table}"
        );
        assert!(
            table.contains("encrypted with KMS key alias/bench"),
            "{table}"
        );
        assert!(table.contains("gateway recording on"), "{table}");
        assert!(table.contains("gateway on CPUs 1,"), "{table}");
        assert!(
            table.contains("gateway 0.50 s, agent 1.00 s, plugin 1.50 s"),
            "{table}"
        );
    }
}
