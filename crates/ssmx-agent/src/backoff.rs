//! Exponential back-off with jitter for reconnect loops (PROTOCOL.md §10.2, §13.2).

use std::time::Duration;

use rand::Rng;

/// A retry delay policy: the first delay is drawn from `[initial_min, initial_max)`, each later one
/// is `multiplier` times the previous, plus up to `jitter` (a fraction) on top, never above `cap`.
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    /// Lower bound of the first delay.
    pub initial_min: Duration,
    /// Upper bound (exclusive) of the first delay.
    pub initial_max: Duration,
    /// Growth factor between attempts.
    pub multiplier: f64,
    /// Random extra on each delay, as a fraction of it (0.5 = up to +50 %).
    pub jitter: f64,
    /// Largest delay.
    pub cap: Duration,
}

impl Backoff {
    /// The official agent's control-channel policy: 5–10 s, doubling, +≤50 % jitter, 40 min cap.
    pub fn control_channel() -> Self {
        Self {
            initial_min: Duration::from_secs(5),
            initial_max: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: 0.5,
            cap: Duration::from_secs(40 * 60),
        }
    }

    /// The official agent's data-channel reconnect policy: 100–200 ms, doubling, 5 s cap.
    pub fn data_channel() -> Self {
        Self {
            initial_min: Duration::from_millis(100),
            initial_max: Duration::from_millis(200),
            multiplier: 2.0,
            jitter: 0.0,
            cap: Duration::from_secs(5),
        }
    }

    /// A fresh sequence of delays.
    pub(crate) fn start(&self) -> BackoffState {
        BackoffState {
            policy: self.clone(),
            base: None,
        }
    }
}

/// The delays of one retry sequence.
pub(crate) struct BackoffState {
    policy: Backoff,
    base: Option<Duration>,
}

impl BackoffState {
    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let policy = &self.policy;
        let mut rng = rand::rng();
        let base = match self.base {
            None => {
                let (lo, hi) = (
                    policy.initial_min,
                    policy.initial_max.max(policy.initial_min),
                );
                if hi > lo {
                    rng.random_range(lo..hi)
                } else {
                    lo
                }
            }
            Some(prev) => prev.mul_f64(policy.multiplier.max(1.0)),
        }
        .min(policy.cap);
        self.base = Some(base);
        let extra = if policy.jitter > 0.0 {
            base.mul_f64(rng.random_range(0.0..policy.jitter))
        } else {
            Duration::ZERO
        };
        (base + extra).min(policy.cap)
    }

    /// Starts over at the initial delay (after a success).
    pub(crate) fn reset(&mut self) {
        self.base = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_channel_delays_grow_within_bounds_and_stop_at_the_cap() {
        let policy = Backoff::control_channel();
        let mut state = policy.start();
        let first = state.next_delay();
        assert!(first >= Duration::from_secs(5) && first < Duration::from_secs(15));
        let second = state.next_delay();
        assert!(second >= Duration::from_secs(10) && second < Duration::from_secs(30));
        let mut last = second;
        for _ in 0..30 {
            last = state.next_delay();
        }
        assert_eq!(last, policy.cap);
        state.reset();
        assert!(state.next_delay() < Duration::from_secs(15));
    }

    #[test]
    fn data_channel_delays_double_without_jitter() {
        let mut state = Backoff::data_channel().start();
        let first = state.next_delay();
        assert!(first >= Duration::from_millis(100) && first < Duration::from_millis(200));
        assert_eq!(state.next_delay(), first * 2);
        assert_eq!(state.next_delay(), first * 4);
    }
}
