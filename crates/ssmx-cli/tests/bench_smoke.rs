//! `ssmx bench --quick --json` end to end: every measurement runs against the real processes and
//! the JSON report has every field with a sane value. No timing thresholds: figures are for
//! people and BENCHMARKS.md, not for tests.

use std::process::Command;

use serde_json::Value;

fn number(v: &Value, path: &str) -> f64 {
    let mut at = v;
    for key in path.split('.') {
        at = &at[key];
    }
    at.as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v:#}"))
}

#[test]
fn quick_bench_reports_every_measurement() {
    let out = Command::new(env!("CARGO_BIN_EXE_ssmx"))
        .args(["bench", "--quick", "--json"])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("run ssmx bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ssmx bench failed ({}):\n{}\n{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).expect("JSON report");

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

    let targets = report["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 7, "{targets:#?}");
    for t in targets {
        assert_ne!(t["verdict"], "skipped", "{t}");
        assert!(t["measured"].as_str().is_some_and(|m| !m.is_empty()), "{t}");
    }
}
