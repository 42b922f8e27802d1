//! A deterministic simulated network between a client-role and an agent-role [`Channel`]:
//! seeded loss, duplication, delay and jitter (which reorders), a fake clock, no sleeps.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ssmx_channel::{Channel, ChannelConfig, Event, Role};
use ssmx_protocol::{AgentMessage, MessageType, PayloadType};

/// Index of the client end in [`Sim::ends`].
pub const CLIENT: usize = 0;
/// Index of the agent end in [`Sim::ends`].
pub const AGENT: usize = 1;

/// How the network treats frames.
#[derive(Clone, Copy, Debug)]
pub struct NetConfig {
    /// Probability that a frame is lost.
    pub loss: f64,
    /// Probability that a frame is delivered twice (each copy with its own delay).
    pub duplication: f64,
    /// One-way delay.
    pub delay: Duration,
    /// Extra delay, uniform in [0, jitter]; frames overtake each other when it exceeds their
    /// spacing.
    pub jitter: Duration,
}

impl NetConfig {
    /// A perfect network with a fixed one-way delay.
    pub fn fixed(delay: Duration) -> Self {
        Self {
            loss: 0.0,
            duplication: 0.0,
            delay,
            jitter: Duration::ZERO,
        }
    }
}

/// A frame on its way.
struct InFlight {
    arrival: Duration,
    /// Send order, to keep same-time arrivals deterministic.
    id: u64,
    to: usize,
    frame: Bytes,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.arrival, self.id) == (other.arrival, other.id)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.arrival, self.id).cmp(&(other.arrival, other.id))
    }
}

/// Two channel ends, the network between them and the fake clock.
pub struct Sim {
    base: Instant,
    /// Simulated time since `base`.
    pub now: Duration,
    /// The client end and the agent end.
    pub ends: [Channel; 2],
    /// Network behaviour, changeable between steps.
    pub net: NetConfig,
    /// Ends that have vanished: nothing reaches them and nothing leaves them.
    pub vanished: [bool; 2],
    rng: StdRng,
    in_flight: BinaryHeap<Reverse<InFlight>>,
    next_id: u64,
    /// Frames put on the network, copies included.
    pub frames_sent: u64,
    /// Events each end produced, other than payloads (which `take_payloads` collects).
    pub other_events: [Vec<Event>; 2],
    received: [Vec<(PayloadType, Bytes)>; 2],
}

impl Sim {
    /// Two fresh ends with `config_for(role)` settings on network `net`, seeded with `seed`.
    pub fn new(seed: u64, net: NetConfig, config_for: impl Fn(Role) -> ChannelConfig) -> Self {
        let base = Instant::now();
        Self {
            base,
            now: Duration::ZERO,
            ends: [
                Channel::new(config_for(Role::Client), base),
                Channel::new(config_for(Role::Agent), base),
            ],
            net,
            vanished: [false; 2],
            rng: StdRng::seed_from_u64(seed),
            in_flight: BinaryHeap::new(),
            next_id: 0,
            frames_sent: 0,
            other_events: [Vec::new(), Vec::new()],
            received: [Vec::new(), Vec::new()],
        }
    }

    /// The fake clock's current reading.
    pub fn instant(&self) -> Instant {
        self.base + self.now
    }

    /// Sends `payload` from end `from` at the current time; false if the window is full.
    pub fn send(&mut self, from: usize, payload_type: PayloadType, payload: Bytes) -> bool {
        let now = self.instant();
        if !self.ends[from].can_send() {
            return false;
        }
        self.ends[from]
            .send(now, payload_type, payload)
            .expect("can_send said yes");
        self.transmit();
        true
    }

    /// Puts every queued frame of both ends on the network, and collects their events.
    pub fn transmit(&mut self) {
        for from in [CLIENT, AGENT] {
            while let Some(frame) = self.ends[from].poll_transmit() {
                if !self.vanished[from] {
                    self.put_on_wire(1 - from, frame);
                }
            }
            while let Some(event) = self.ends[from].poll_event() {
                match event {
                    Event::Payload {
                        payload_type,
                        payload,
                        ..
                    } => self.received[from].push((payload_type, payload)),
                    other => self.other_events[from].push(other),
                }
            }
        }
    }

    /// Puts `frame` for end `to` on the lossy network.
    fn put_on_wire(&mut self, to: usize, frame: Bytes) {
        let copies = if self.rng.random_bool(self.net.duplication) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            if self.rng.random_bool(self.net.loss) {
                continue;
            }
            let jitter = self.net.jitter.mul_f64(self.rng.random_range(0.0..=1.0));
            self.schedule(to, frame.clone(), self.net.delay + jitter);
        }
    }

    /// Delivers a service-originated frame (such as `pause_publication`) to end `to` after
    /// `after`, without loss: the service's own messages travel on an intact connection.
    pub fn inject(&mut self, to: usize, frame: Bytes, after: Duration) {
        self.schedule(to, frame, after);
    }

    fn schedule(&mut self, to: usize, frame: Bytes, after: Duration) {
        self.frames_sent += 1;
        self.in_flight.push(Reverse(InFlight {
            arrival: self.now + after,
            id: self.next_id,
            to,
            frame,
        }));
        self.next_id += 1;
    }

    /// Drops every frame in flight, as a broken connection does.
    pub fn cut(&mut self) {
        self.in_flight.clear();
    }

    /// Advances the clock to the next arrival or timer, handles everything due then, and
    /// transmits what that produced. False when nothing is left to happen.
    pub fn step(&mut self) -> bool {
        let next_arrival = self.in_flight.peek().map(|Reverse(f)| f.arrival);
        let next_timer = self
            .ends
            .iter()
            .filter_map(|end| end.poll_timeout())
            .min()
            .map(|deadline| deadline - self.base);
        let Some(next) = [next_arrival, next_timer].into_iter().flatten().min() else {
            return false;
        };
        self.now = self.now.max(next);
        let now = self.instant();
        while let Some(Reverse(f)) = self.in_flight.peek() {
            if f.arrival > self.now {
                break;
            }
            let Reverse(f) = self.in_flight.pop().expect("peeked");
            if !self.vanished[f.to] {
                self.ends[f.to].handle_frame(now, f.frame);
            }
        }
        for end in &mut self.ends {
            if end.poll_timeout().is_some_and(|deadline| deadline <= now) {
                end.handle_timeout(now);
            }
        }
        self.transmit();
        true
    }

    /// Payloads end `at` delivered since the last call, in delivery order.
    pub fn take_payloads(&mut self, at: usize) -> Vec<(PayloadType, Bytes)> {
        std::mem::take(&mut self.received[at])
    }
}

/// A service-originated frame without payload, such as `pause_publication`.
pub fn service_frame(message_type: MessageType) -> Bytes {
    AgentMessage::new(
        message_type,
        PayloadType::Undefined,
        Bytes::from_static(b"{}"),
    )
    .to_bytes()
}

/// `len` pseudo-random bytes from `seed` (xorshift64*: fast even in a debug build).
pub fn random_bytes(seed: u64, len: usize) -> Bytes {
    let mut state = seed | 1;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        data.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    data.truncate(len);
    Bytes::from(data)
}

/// Checks that `chunks` continue `expected` at `*offset` and advances it.
pub fn check_in_order(expected: &Bytes, offset: &mut usize, chunks: &[(PayloadType, Bytes)]) {
    for (payload_type, chunk) in chunks {
        assert_eq!(*payload_type, PayloadType::Output);
        let end = *offset + chunk.len();
        assert!(end <= expected.len(), "more bytes delivered than sent");
        assert!(
            expected[*offset..end] == chunk[..],
            "bytes at offset {offset} differ from what was sent"
        );
        *offset = end;
    }
}
