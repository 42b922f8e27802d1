//! The channel core over an in-memory link: an agent end sends Output payloads to a client end,
//! which acknowledges each one; frames go straight from one end to the other. Measures what
//! one core pair costs per message (encode + digest, decode + digest check, ack build and
//! parse), in messages/s and bytes/s, at the official 1 KiB, the default 32 KiB and the
//! ssmx-to-ssmx 64 KiB payloads.

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ssmx_channel::core::{DEFAULT_MAX_PAYLOAD, SSMX_MAX_PAYLOAD};
use ssmx_channel::{Channel, ChannelConfig, Event, Role};
use ssmx_protocol::PayloadType;

/// Messages per measured iteration: a burst well inside the default send window.
const BURST: usize = 64;

/// An agent and a client end joined directly.
struct Link {
    agent: Channel,
    client: Channel,
}

impl Link {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            agent: Channel::new(ChannelConfig::new(Role::Agent), now),
            client: Channel::new(ChannelConfig::new(Role::Client), now),
        }
    }

    /// Sends a burst of `payload`s, delivers them and their acks; returns bytes delivered.
    fn burst(&mut self, payload: &Bytes) -> usize {
        let now = Instant::now();
        for _ in 0..BURST {
            self.agent
                .send(now, PayloadType::Output, payload.clone())
                .expect("window has room");
        }
        while let Some(frame) = self.agent.poll_transmit() {
            self.client.handle_frame(now, frame);
        }
        while let Some(ack) = self.client.poll_transmit() {
            self.agent.handle_frame(now, ack);
        }
        let mut delivered = 0;
        while let Some(event) = self.client.poll_event() {
            if let Event::Payload { payload, .. } = event {
                delivered += black_box(payload).len();
            }
        }
        assert_eq!(self.agent.unacked(), 0);
        delivered
    }
}

/// How a group counts work: messages or payload bytes per burst.
#[derive(Clone, Copy)]
enum Unit {
    Messages,
    Bytes,
}

impl Unit {
    fn throughput(self, payload_size: usize) -> Throughput {
        match self {
            Unit::Messages => Throughput::Elements(BURST as u64),
            Unit::Bytes => Throughput::Bytes((BURST * payload_size) as u64),
        }
    }
}

fn bench(c: &mut Criterion) {
    for (name, unit) in [
        ("core_link_messages", Unit::Messages),
        ("core_link_bytes", Unit::Bytes),
    ] {
        let mut group = c.benchmark_group(name);
        for size in [1024, DEFAULT_MAX_PAYLOAD, SSMX_MAX_PAYLOAD] {
            group.throughput(unit.throughput(size));
            let payload = Bytes::from(vec![0x5a; size]);
            let mut link = Link::new();
            group.bench_with_input(BenchmarkId::from_parameter(size), &payload, |b, payload| {
                b.iter(|| link.burst(payload))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
