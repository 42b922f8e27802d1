//! `ssmx bench --quick --json` end to end: every measurement runs against the real processes and
//! the JSON report has every field with a sane value. No timing thresholds: figures are for
//! people and BENCHMARKS.md, not for tests.

use std::process::{Command, Output};

use serde_json::Value;

fn number(v: &Value, path: &str) -> f64 {
    let mut at = v;
    for key in path.split('.') {
        at = &at[key];
    }
    at.as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v:#}"))
}

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ssmx"))
        .arg("bench")
        .args(args)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("run ssmx bench")
}

fn json_report(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ssmx bench failed ({}):\n{}\n{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).expect("JSON report")
}

/// CPU time per GB is reported for each process (0 is possible for a tiny transfer: the kernel
/// counts in clock ticks).
fn assert_cpu_figures(report: &Value) {
    for process in ["gateway", "agent", "plugin"] {
        let cpu = number(
            report,
            &format!("port_forwarding.cpu_seconds_per_gb.{process}"),
        );
        assert!(cpu.is_finite() && cpu >= 0.0, "{process}: {cpu}");
    }
}

/// The CPUs this process may use, from /proc/self/status.
fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim();
    list.split(',')
        .flat_map(|part| match part.split_once('-') {
            Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).collect::<Vec<usize>>(),
            None => vec![part.parse().unwrap()],
        })
        .collect()
}

#[test]
fn quick_bench_reports_every_measurement() {
    let report = json_report(&bench(&["--quick", "--json"]));
    assert!(report["gateway_cpus"].is_null(), "{report:#}");
    assert_cpu_figures(&report);

    assert!(number(&report, "machine.nproc") >= 1.0);
    assert!(report["plugin"]["version"]
        .as_str()
        .is_some_and(|v| !v.is_empty()));

    assert_eq!(number(&report, "port_forwarding.bytes_each_way"), 1048576.0);
    for field in ["upload_mb_per_s", "download_mb_per_s"] {
        let rate = number(&report, &format!("port_forwarding.{field}"));
        assert!(rate.is_finite() && rate > 0.0, "{field} = {rate}");
    }

    assert_eq!(number(&report, "interactive_latency.samples"), 20.0);
    let (min, p50, p99, max) = (
        number(&report, "interactive_latency.min_ms"),
        number(&report, "interactive_latency.p50_ms"),
        number(&report, "interactive_latency.p99_ms"),
        number(&report, "interactive_latency.max_ms"),
    );
    assert!(
        0.0 < min && min <= p50 && p50 <= p99 && p99 <= max,
        "{min} {p50} {p99} {max}"
    );

    assert_eq!(number(&report, "session_setup.runs"), 2.0);
    let setup = number(&report, "session_setup.p50_ms");
    assert!(setup > 0.0 && setup >= number(&report, "session_setup.min_ms"));

    assert_eq!(number(&report, "idle_sessions.sessions"), 10.0);
    assert!(number(&report, "idle_sessions.gateway_rss_before_kib") > 0.0);
    assert!(number(&report, "idle_sessions.gateway_rss_after_kib") > 0.0);
    assert!(number(&report, "idle_sessions.gateway_kib_per_session").is_finite());

    let rss = number(&report, "client_memory.plugin_rss_kib");
    assert!(rss > 0.0 && number(&report, "client_memory.plugin_peak_rss_kib") >= rss);

    assert_eq!(number(&report, "fleet.agents"), 5.0);
    assert!(number(&report, "fleet.command_seconds") > 0.0);
    assert!(number(&report, "fleet.gateway_cpu_seconds") >= 0.0);
    assert!(number(&report, "fleet.gateway_kib_per_agent").is_finite());

    let targets = report["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 9, "{targets:#?}");
    for t in targets {
        assert_ne!(t["verdict"], "skipped", "{t}");
        assert!(t["measured"].as_str().is_some_and(|m| !m.is_empty()), "{t}");
    }
}

#[test]
fn gateway_cpus_gives_the_gateway_cpus_of_its_own() {
    let allowed = allowed_cpus();
    let last = allowed.last().expect("at least one CPU").to_string();
    let args = [
        "--json",
        "--mib",
        "8",
        "--latency-samples",
        "0",
        "--setup-runs",
        "0",
        "--idle-sessions",
        "0",
        "--fleet-agents",
        "0",
        "--gateway-cpus",
        &last,
    ];
    let out = bench(&args);
    if allowed.len() < 2 {
        // Nothing would be left for the other processes.
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("leaves no CPU"), "{stderr}");
        return;
    }
    let report = json_report(&out);
    assert_eq!(report["gateway_cpus"], last.as_str(), "{report:#}");
    assert_eq!(number(&report, "port_forwarding.bytes_each_way"), 8388608.0);
    assert_cpu_figures(&report);

    let unknown = bench(&["--quick", "--gateway-cpus", "100000"]);
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("no CPU 100000"), "{stderr}");
}

#[test]
fn a_failed_measurement_leaves_the_others_reported_and_no_files_behind() {
    let dir = tempfile::tempdir().unwrap();
    // A plugin that refuses port forwarding and runs shells.
    let plugin = dir.path().join("session-manager-plugin");
    std::fs::write(
        &plugin,
        format!(
            "#!/bin/sh\ncase \"$*\" in *AWS-StartPortForwardingSession*) echo refusing port sessions >&2; exit 1;; esac\nexec {} \"$@\"\n",
            env!("CARGO_BIN_EXE_session-manager-plugin")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let scratch = dir.path().join("tmp");
    std::fs::create_dir(&scratch).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ssmx"))
        .args([
            "bench",
            "--quick",
            "--json",
            "--idle-sessions",
            "0",
            "--fleet-agents",
            "0",
        ])
        .arg("--plugin")
        .arg(&plugin)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("TMPDIR", &scratch)
        .output()
        .expect("run ssmx bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let report: Value =
        serde_json::from_slice(&out.stdout).expect("JSON report despite the failure");
    let failed = report["failed_phases"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert_eq!(failed[0]["phase"], "port forwarding");
    assert!(report["port_forwarding"].is_null());
    // The other measurements ran.
    assert_eq!(number(&report, "session_setup.runs"), 2.0);
    assert_eq!(number(&report, "interactive_latency.samples"), 20.0);
    assert!(stderr.contains("port forwarding failed"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&scratch).unwrap().collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}
