//! Relay throughput through a real gateway on loopback, with recording off, as asciicast (shell
//! document) and as a byte log (port document): shows what recording costs, as saturated
//! throughput and as process CPU time per GB relayed (the bench's own agent and client ends are
//! in the same process and cost the same in every mode, so differences are the recording's).
//!
//! The modes run interleaved, one run of each per round, so a change in machine load hits every
//! mode alike; each recording mode is compared with the mode without recording of the same round.
//!
//! `cargo bench -p ssmx-gateway --bench relay` (SSMX_BENCH_MB sets the volume per run, default
//! 200; SSMX_BENCH_ROUNDS the number of rounds, default 5; SSMX_BENCH_MODES=shell or =port runs
//! only the modes whose label contains that word).

#[path = "../tests/e2e/common/mod.rs"]
mod common;

use std::time::Instant;

use bytes::Bytes;
use common::*;
use futures::{SinkExt, StreamExt};
use ssmx_protocol::MessageType;
use tokio_tungstenite::tungstenite::Message;

const PAYLOAD: usize = 16 * 1024;
const SHELL: &str = "SSM-SessionManagerRunShell";
const PORT: &str = "AWS-StartSSHSession";

/// One configuration: label, recording on, document, and for a recording mode the index of the
/// mode without recording it is compared with.
const MODES: [(&str, bool, &str, Option<usize>); 4] = [
    ("shell, no recording", false, SHELL, None),
    ("shell, asciicast recording", true, SHELL, Some(0)),
    ("port, no recording", false, PORT, None),
    ("port, byte-log recording", true, PORT, Some(2)),
];

/// User + system CPU time of this process, from /proc/self/stat (clock ticks of 10 ms).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of the file (utime, stime) are at 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Relays `total_mb` agent → client in one session; returns (MB/s, CPU-s per GB). The CPU time
/// includes completing the recording (its last write and fsync) at the session's end.
async fn run_once(recording: bool, document: &str, total_mb: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, cred) = start_gateway("bench", recording.then(|| dir.path())).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let agent = register_agent(&gateway).await;
    let mut ctl = open_control_channel(&gateway, &agent).await;
    let w = start_wired_session(&gateway, &ssm, &agent, &mut ctl, Some(document)).await;
    let line: Vec<u8> = b"0123456789abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n"
        .iter()
        .copied()
        .cycle()
        .take(PAYLOAD)
        .collect();
    let frames = total_mb * 1024 * 1024 / PAYLOAD;
    let encoded: Vec<Bytes> = (0..frames)
        .map(|seq| stream_frame(MessageType::OutputStreamData, seq as i64, &line))
        .collect();
    let (mut agent_tx, _agent_rx) = w.agent.split();
    let (_client_tx, mut client_rx) = w.client.split();
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let reader = tokio::spawn(async move {
        let mut got = 0usize;
        while got < frames {
            match client_rx.next().await {
                Some(Ok(Message::Binary(_))) => got += 1,
                Some(Ok(_)) => {}
                other => panic!("client socket ended: {other:?}"),
            }
        }
    });
    for f in encoded {
        agent_tx.feed(Message::binary(f)).await.unwrap();
    }
    agent_tx.flush().await.unwrap();
    reader.await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    gateway.shutdown().await;
    let cpu = cpu_seconds() - cpu_before;
    let bytes = (frames * (PAYLOAD + 120)) as f64;
    (bytes / secs / 1e6, cpu / (bytes / 1e9))
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Median, minimum and maximum.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    (median, v[0], v[v.len() - 1])
}

fn main() {
    let total_mb = env_usize("SSMX_BENCH_MB", 200);
    let rounds = env_usize("SSMX_BENCH_ROUNDS", 5).max(1);
    // As `ssmx gateway run` does.
    ssmx_gateway::keep_relay_memory();
    let rt = tokio::runtime::Runtime::new().unwrap();
    println!(
        "relay agent -> client, {PAYLOAD}-byte payloads, {total_mb} MB per run, {rounds} rounds \
         (median [min-max])"
    );
    let only = std::env::var("SSMX_BENCH_MODES").unwrap_or_default();
    let selected = |label: &str| label.contains(only.as_str());
    // results[mode][round] = (MB/s, CPU-s/GB)
    let mut results = vec![Vec::new(); MODES.len()];
    for _ in 0..rounds {
        for (i, (label, recording, document, _)) in MODES.iter().enumerate() {
            if selected(label) {
                results[i].push(rt.block_on(run_once(*recording, document, total_mb)));
            }
        }
    }
    for (i, (label, _, _, baseline)) in MODES.iter().enumerate() {
        if !selected(label) {
            continue;
        }
        let rate: Vec<f64> = results[i].iter().map(|r| r.0).collect();
        let cpu: Vec<f64> = results[i].iter().map(|r| r.1).collect();
        let (rate_med, rate_min, rate_max) = spread(&rate);
        let (cpu_med, cpu_min, cpu_max) = spread(&cpu);
        print!(
            "{label:28} {rate_med:7.0} MB/s [{rate_min:.0}-{rate_max:.0}]  \
             {cpu_med:5.2} CPU-s/GB [{cpu_min:.2}-{cpu_max:.2}]"
        );
        // Compared only when its mode without recording ran too (SSMX_BENCH_MODES may leave it out).
        if let Some(base) = baseline.filter(|&base| !results[base].is_empty()) {
            let slower: Vec<f64> = results[i]
                .iter()
                .zip(&results[base])
                .map(|(rec, off)| 100.0 * (1.0 - rec.0 / off.0))
                .collect();
            let extra_cpu: Vec<f64> = results[i]
                .iter()
                .zip(&results[base])
                .map(|(rec, off)| rec.1 - off.1)
                .collect();
            let (s_med, s_min, s_max) = spread(&slower);
            let (c_med, c_min, c_max) = spread(&extra_cpu);
            print!(
                "  vs off: {s_med:+.0} % slower [{s_min:+.0} to {s_max:+.0}], \
                 {c_med:+.2} CPU-s/GB [{c_min:+.2} to {c_max:+.2}]"
            );
        }
        println!();
    }
}
