//! Codec throughput against raw SHA-256 in the same run (DESIGN.md "Performance targets"):
//! encode should reach 90% of the SHA-256 speed, decode without the digest check 5 GiB/s.
//!
//! The SHA-256 group compares the candidates for `src/digest.rs` side by side: `ring` (what the
//! crate uses), the `sha2` 0.10 crate as compiled by default (it dispatches to SHA-NI at run time
//! when the CPU has it, otherwise to portable Rust), and the assembly kernel of `sha2-asm` that
//! `sha2`'s `asm` feature substitutes for the portable fallback. With `asm` on, `sha2` still
//! prefers SHA-NI, so on a SHA-NI machine `sha2` with and without `asm` run the same code; the
//! kernel line shows what the `asm` build gives a CPU without SHA extensions. The kernel is timed
//! over whole 64-byte blocks, without the final padding block (under 0.4% of the 16 KiB work).
//!
//! The `construct_encode` group times what a sender does per message, as `ssmx-channel`'s core
//! does it for stream data: `AgentMessage::new` (fresh id and timestamp), the sequence number set,
//! then `to_bytes` (the frame is kept as its own `Bytes` until acknowledged), next to SHA-256 of
//! the same payload in the same run; `new+encode-reused-buf` is the same without the per-frame
//! allocation. `construct_parts` splits construction into its pieces.
//!
//! Run: `cargo bench -p ssmx-protocol --bench codec -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sha2::Digest as _;
use ssmx_protocol::message::{now_millis, PAYLOAD_OFFSET};
use ssmx_protocol::{AgentMessage, DecodeOptions, MessageType, PayloadType};
use uuid::Uuid;

/// Payload sizes: the official ends' 1 KiB chunk, ssmx's usual 16 KiB, and a large 64 KiB one.
const SIZES: [usize; 3] = [1024, 16 * 1024, 64 * 1024];

/// SHA-256 initial state (FIPS 180-4 §5.3.3), for driving the bare compression kernel.
const SHA256_INITIAL_STATE: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

fn payload(len: usize) -> Bytes {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn message(len: usize) -> AgentMessage {
    AgentMessage {
        message_type: MessageType::OutputStreamData,
        schema_version: 1,
        created_date: 1_700_000_000_000,
        sequence_number: 42,
        flags: 0,
        message_id: Uuid::from_u128(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff),
        payload_type: PayloadType::Output,
        payload: payload(len),
    }
}

fn sha256_implementations(c: &mut Criterion) {
    let mut group = c.benchmark_group("sha256");
    for size in SIZES {
        let data = payload(size);
        let blocks: Vec<[u8; 64]> = data
            .chunks_exact(64)
            .map(|b| b.try_into().expect("64-byte block"))
            .collect();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("ring", size), &data, |b, data| {
            b.iter(|| ring::digest::digest(&ring::digest::SHA256, black_box(data)))
        });
        group.bench_with_input(BenchmarkId::new("sha2-0.10", size), &data, |b, data| {
            b.iter(|| sha2::Sha256::digest(black_box(data)))
        });
        group.bench_with_input(
            BenchmarkId::new("sha2-asm-kernel", size),
            &blocks,
            |b, blocks| {
                b.iter(|| {
                    let mut state = SHA256_INITIAL_STATE;
                    sha2_asm::compress256(&mut state, black_box(blocks));
                    state
                })
            },
        );
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for size in SIZES {
        let msg = message(size);
        let mut buf = BytesMut::with_capacity(msg.encoded_len());
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                buf.clear();
                black_box(&msg).encode(&mut buf);
                black_box(buf.len())
            })
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    let checked = DecodeOptions::default();
    let unchecked = DecodeOptions {
        verify_digest: false,
        ..DecodeOptions::default()
    };
    for size in SIZES {
        let frame = message(size).to_bytes();
        group.throughput(Throughput::Bytes(size as u64));
        for (name, options) in [
            ("digest-checked", &checked),
            ("digest-unchecked", &unchecked),
        ] {
            group.bench_with_input(BenchmarkId::new(name, size), &frame, |b, frame| {
                b.iter(|| AgentMessage::decode_with(black_box(frame.clone()), options))
            });
        }
    }
    group.finish();
}

/// Sizes for the per-message cost: the official ends' 1 KiB chunk and ssmx's usual 16 KiB.
const CONSTRUCT_SIZES: [usize; 2] = [1024, 16 * 1024];

fn construct_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("construct_encode");
    for size in CONSTRUCT_SIZES {
        let data = payload(size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("sha256-ring", size), &data, |b, data| {
            b.iter(|| ring::digest::digest(&ring::digest::SHA256, black_box(data)))
        });
        let mut seq = 0i64;
        group.bench_with_input(BenchmarkId::new("new+to_bytes", size), &data, |b, data| {
            b.iter(|| {
                let mut msg = AgentMessage::new(
                    MessageType::OutputStreamData,
                    PayloadType::Output,
                    black_box(data).clone(),
                );
                msg.sequence_number = seq;
                seq += 1;
                msg.to_bytes()
            })
        });
        // Construction as `AgentMessage::new` did up to ed2277b (an OS call per id), kept as the
        // before figure in the same run.
        group.bench_with_input(
            BenchmarkId::new("getrandom-id+to_bytes", size),
            &data,
            |b, data| {
                b.iter(|| {
                    let msg = AgentMessage {
                        message_type: MessageType::OutputStreamData,
                        schema_version: 1,
                        created_date: now_millis(),
                        sequence_number: seq,
                        flags: 0,
                        message_id: Uuid::new_v4(),
                        payload_type: PayloadType::Output,
                        payload: black_box(data).clone(),
                    };
                    seq += 1;
                    msg.to_bytes()
                })
            },
        );
        let mut buf = BytesMut::with_capacity(PAYLOAD_OFFSET + size);
        group.bench_with_input(
            BenchmarkId::new("new+encode-reused-buf", size),
            &data,
            |b, data| {
                b.iter(|| {
                    let mut msg = AgentMessage::new(
                        MessageType::OutputStreamData,
                        PayloadType::Output,
                        black_box(data).clone(),
                    );
                    msg.sequence_number = seq;
                    seq += 1;
                    buf.clear();
                    msg.encode(&mut buf);
                    black_box(buf.len())
                })
            },
        );
        // Frames split off one growing buffer: they share its allocations (one per 64 KiB) instead
        // of one allocation each, as a sender keeping one `BytesMut` could do with `encode`.
        let mut shared = BytesMut::with_capacity(64 * 1024);
        group.bench_with_input(
            BenchmarkId::new("new+encode-split-off-shared-buf", size),
            &data,
            |b, data| {
                b.iter(|| {
                    let mut msg = AgentMessage::new(
                        MessageType::OutputStreamData,
                        PayloadType::Output,
                        black_box(data).clone(),
                    );
                    msg.sequence_number = seq;
                    seq += 1;
                    if shared.capacity() < msg.encoded_len() {
                        shared.reserve(64 * 1024);
                    }
                    msg.encode(&mut shared);
                    shared.split().freeze()
                })
            },
        );
    }
    group.finish();
}

fn construct_parts(c: &mut Criterion) {
    let mut group = c.benchmark_group("construct_parts");
    group.bench_function("Uuid::new_v4", |b| b.iter(Uuid::new_v4));
    group.bench_function("ThreadRng-u128", |b| b.iter(rand::random::<u128>));
    group.bench_function("now_millis", |b| b.iter(now_millis));
    group.bench_function("frame-buffer-1024", |b| {
        b.iter(|| BytesMut::with_capacity(black_box(PAYLOAD_OFFSET + 1024)))
    });
    let data = payload(1024);
    group.bench_function("AgentMessage::new/1024", |b| {
        b.iter(|| {
            AgentMessage::new(
                MessageType::OutputStreamData,
                PayloadType::Output,
                black_box(&data).clone(),
            )
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    sha256_implementations,
    encode,
    decode,
    construct_encode,
    construct_parts
);
criterion_main!(benches);
