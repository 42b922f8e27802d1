//! Deterministic simulations of the channel core over a lossy, duplicating, reordering network
//! with a fake clock.

mod sim;

use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use sim::{check_in_order, random_bytes, service_frame, NetConfig, Sim, AGENT, CLIENT};
use ssmx_channel::core::{DEFAULT_MAX_RESENDS, MAX_RTO};
use ssmx_channel::{ChannelConfig, ChannelError, Event};
use ssmx_protocol::{MessageType, PayloadType};

/// A transfer in both directions: `down` from the agent to the client, `up` back, each offered
/// in chunks of `chunk` bytes whenever the window allows. Runs until both arrived complete and
/// in order, and every message was acknowledged.
struct Transfer {
    down: Bytes,
    up: Bytes,
    chunk: usize,
}

impl Transfer {
    fn run(&self, sim: &mut Sim, mut between_steps: impl FnMut(&mut Sim)) {
        let (mut sent_down, mut sent_up) = (0, 0);
        let (mut got_down, mut got_up) = (0, 0);
        let mut steps = 0u64;
        loop {
            for (from, data, sent) in [
                (AGENT, &self.down, &mut sent_down),
                (CLIENT, &self.up, &mut sent_up),
            ] {
                while *sent < data.len() {
                    let end = (*sent + self.chunk).min(data.len());
                    if !sim.send(from, PayloadType::Output, data.slice(*sent..end)) {
                        break;
                    }
                    *sent = end;
                }
            }
            check_in_order(&self.down, &mut got_down, &sim.take_payloads(CLIENT));
            check_in_order(&self.up, &mut got_up, &sim.take_payloads(AGENT));
            let done = got_down == self.down.len()
                && got_up == self.up.len()
                && sim.ends.iter().all(|end| end.unacked() == 0);
            if done {
                break;
            }
            between_steps(sim);
            assert!(sim.step(), "stalled at {got_down}/{got_up} bytes");
            steps += 1;
            assert!(steps < 10_000_000, "no end in sight");
        }
        for events in &sim.other_events {
            assert!(
                !events.iter().any(|e| matches!(e, Event::Failed(_))),
                "{events:?}"
            );
        }
    }
}

/// Size of the bulk transfer.
const BULK_BYTES: usize = 100 * 1000 * 1000;

#[test]
fn bulk_100_mb_through_loss_duplication_and_reordering() {
    let net = NetConfig {
        loss: 0.10,
        duplication: 0.05,
        delay: Duration::from_millis(20),
        jitter: Duration::from_millis(20),
    };
    let mut sim = Sim::new(0x5EED, net, ChannelConfig::new);
    let transfer = Transfer {
        down: random_bytes(1, BULK_BYTES),
        up: random_bytes(2, 1000 * 1000),
        // Larger than max_payload, so the core splits every second chunk.
        chunk: 48 * 1024,
    };
    transfer.run(&mut sim, |_| {});
}

#[test]
fn rto_follows_the_round_trip_time() {
    let mut sim = Sim::new(
        7,
        NetConfig::fixed(Duration::from_millis(30)),
        ChannelConfig::new,
    );
    fn measure(sim: &mut Sim, messages: usize) -> Duration {
        for _ in 0..messages {
            assert!(sim.send(CLIENT, PayloadType::Output, Bytes::from_static(b"k")));
            let until = sim.now + Duration::from_millis(10);
            while sim.now < until && sim.step() {}
        }
        while sim.ends[CLIENT].unacked() > 0 {
            assert!(sim.step());
        }
        sim.ends[CLIENT].rto()
    }
    // Round trip 60 ms: the RTO converges to RTT + the 10 ms granularity term.
    let rto = measure(&mut sim, 300);
    assert!(
        (Duration::from_millis(69)..Duration::from_millis(71)).contains(&rto),
        "{rto:?}"
    );
    // The path slows to a 600 ms round trip, more than the RTO: resends back off until
    // messages sent once are acknowledged, and the RTO follows.
    sim.net = NetConfig::fixed(Duration::from_millis(300));
    let rto = measure(&mut sim, 400);
    assert!(
        (Duration::from_millis(609)..Duration::from_millis(611)).contains(&rto),
        "{rto:?}"
    );
}

#[test]
fn resend_limit_fires_about_five_minutes_after_the_peer_vanished() {
    let mut sim = Sim::new(
        3,
        NetConfig::fixed(Duration::from_millis(5)),
        ChannelConfig::new,
    );
    let data = random_bytes(3, 64 * 1024);
    Transfer {
        down: data.clone(),
        up: Bytes::new(),
        chunk: 4096,
    }
    .run(&mut sim, |_| {});
    sim.vanished[CLIENT] = true;
    let gone_at = sim.now;
    assert!(sim.send(AGENT, PayloadType::Output, data.slice(..100)));
    while sim.step() {}
    let failed_after = sim.now - gone_at;
    assert_eq!(
        sim.other_events[AGENT],
        vec![Event::Failed(ChannelError::ResendLimit {
            sequence_number: 16,
            resends: DEFAULT_MAX_RESENDS
        })]
    );
    // Resends back off to one a second; the limit is reached after 300 of them.
    let limit = MAX_RTO * DEFAULT_MAX_RESENDS;
    assert!(
        failed_after > limit - Duration::from_secs(5) && failed_after <= limit,
        "failed after {failed_after:?}"
    );
    assert!(!sim.ends[AGENT].is_open());
}

#[test]
fn pause_holds_traffic_until_start_publication() {
    let mut sim = Sim::new(
        4,
        NetConfig::fixed(Duration::from_millis(5)),
        ChannelConfig::new,
    );
    sim.inject(
        AGENT,
        service_frame(MessageType::PausePublication),
        Duration::ZERO,
    );
    assert!(sim.step());
    assert!(sim.ends[AGENT].is_paused());
    let data = random_bytes(4, 10 * 1024);
    assert!(sim.send(AGENT, PayloadType::Output, data.clone()));
    let frames_before = sim.frames_sent;
    while sim.step() {}
    assert_eq!(
        sim.frames_sent, frames_before,
        "nothing leaves a paused end"
    );
    assert!(sim.take_payloads(CLIENT).is_empty());
    sim.inject(
        AGENT,
        service_frame(MessageType::StartPublication),
        Duration::ZERO,
    );
    while sim.step() {}
    let mut offset = 0;
    check_in_order(&data, &mut offset, &sim.take_payloads(CLIENT));
    assert_eq!(offset, data.len());
    assert_eq!(sim.other_events[AGENT], vec![Event::Paused, Event::Resumed]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any seed and network quality, with reconnects (frames in flight lost, everything
    /// unacknowledged resent) and pauses thrown in: both streams arrive complete and in order.
    #[test]
    fn any_seed_delivers_everything_in_order(
        seed in any::<u64>(),
        loss in 0.0..0.3f64,
        duplication in 0.0..0.2f64,
        jitter_ms in 0u64..50,
        chunk in 1usize..40_000,
        down_len in 1usize..300_000,
        up_len in 0usize..50_000,
        max_payload in prop::sample::select(vec![1024usize, 8 * 1024, 32 * 1024]),
        send_window in 1usize..64,
        reorder_capacity in 0usize..64,
        disruption_every in 50u64..500,
        pause_ms in 0u64..2000,
    ) {
        let net = NetConfig {
            loss,
            duplication,
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(jitter_ms),
        };
        let mut sim = Sim::new(seed, net, |role| ChannelConfig {
            send_window,
            reorder_capacity,
            max_payload,
            ..ChannelConfig::new(role)
        });
        let transfer = Transfer {
            down: random_bytes(seed, down_len),
            up: random_bytes(!seed, up_len),
            chunk,
        };
        let mut steps = 0u64;
        transfer.run(&mut sim, |sim| {
            steps += 1;
            if steps % disruption_every != 0 {
                return;
            }
            if (steps / disruption_every) % 2 == 0 {
                sim.cut();
                let now = sim.instant();
                for end in &mut sim.ends {
                    end.handle_reconnect(now);
                }
                sim.transmit();
            } else {
                sim.inject(AGENT, service_frame(MessageType::PausePublication), Duration::ZERO);
                sim.inject(
                    AGENT,
                    service_frame(MessageType::StartPublication),
                    Duration::from_millis(pause_ms),
                );
            }
        });
    }
}
