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
//! Run: `cargo bench -p ssmx-protocol --bench codec -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sha2::Digest as _;
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

criterion_group!(benches, sha256_implementations, encode, decode);
criterion_main!(benches);
