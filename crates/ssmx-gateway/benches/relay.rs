//! Relay throughput through a real gateway on loopback, with recording off, as asciicast (shell
//! document) and as a byte log (port document): shows what recording costs, as saturated
//! throughput and as process CPU time per GB relayed (the bench's own agent and client ends are
//! in the same process and cost the same in every mode, so differences are the recording's).
//!
//! `cargo bench -p ssmx-gateway --bench relay` (SSMX_BENCH_MB sets the volume per run, default 200).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use bytes::Bytes;
use common::*;
use futures::{SinkExt, StreamExt};
use ssmx_protocol::{AgentMessage, MessageType, PayloadType};
use tokio_tungstenite::tungstenite::Message;

const PAYLOAD: usize = 16 * 1024;
const RUNS: usize = 3;

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
        .map(|seq| {
            let mut m = AgentMessage::new(
                MessageType::OutputStreamData,
                PayloadType::Output,
                Bytes::from(line.clone()),
            );
            m.sequence_number = seq as i64;
            m.to_bytes()
        })
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
    let bytes = (frames * (PAYLOAD + 120)) as f64;
    let cpu = cpu_seconds() - cpu_before;
    (bytes / secs / 1e6, cpu / (bytes / 1e9))
}

fn main() {
    let total_mb: usize = std::env::var("SSMX_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let rt = tokio::runtime::Runtime::new().unwrap();
    println!(
        "relay agent -> client, {PAYLOAD}-byte payloads, {total_mb} MB per run, best of {RUNS}"
    );
    for (label, recording, document) in [
        ("no recording (shell)", false, "SSM-SessionManagerRunShell"),
        (
            "asciicast recording (shell)",
            true,
            "SSM-SessionManagerRunShell",
        ),
        ("no recording (port)", false, "AWS-StartSSHSession"),
        ("byte-log recording (port)", true, "AWS-StartSSHSession"),
    ] {
        let runs: Vec<(f64, f64)> = (0..RUNS)
            .map(|_| rt.block_on(run_once(recording, document, total_mb)))
            .collect();
        let best = runs.iter().map(|r| r.0).fold(0.0f64, f64::max);
        let cpu = runs.iter().map(|r| r.1).fold(f64::MAX, f64::min);
        println!("{label:32} {best:8.1} MB/s  {cpu:6.2} CPU-s/GB (incl. fsync at session end)");
    }
}
