//! What a WebSocket reader does with frames that do not decode: drop them, log a bounded number
//! of them, and close a connection that keeps sending them.
//!
//! A peer that sends garbage must not be able to fill the log (one WARN line per frame would let
//! it write as fast as it can send) nor hold a connection open doing nothing else. Each
//! connection gets a [`MalformedFrames`] counter over fixed windows of [`WINDOW`]: the first
//! [`LOGGED_PER_WINDOW`] malformed frames of a window are logged one by one, the rest are
//! counted and reported in one summary line when the next malformed frame arrives after the
//! window, and a window with [`CLOSE_AFTER`] of them ends the connection.

use std::fmt::Display;
use std::time::{Duration, Instant};

use tracing::warn;

/// Length of a counting window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Malformed frames logged individually per window and connection.
pub const LOGGED_PER_WINDOW: u32 = 5;
/// Malformed frames in one window that close the connection.
pub const CLOSE_AFTER: u32 = 100;
/// The close code for a connection closed for garbage (RFC 6455: invalid frame payload data).
pub const CLOSE_CODE: u16 = 1007;
/// The close reason sent with [`CLOSE_CODE`].
pub const CLOSE_REASON: &str = "too many malformed frames";

/// What to do after a malformed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Verdict {
    /// Keep reading the connection.
    KeepOpen,
    /// Drop it and close the connection with [`CLOSE_CODE`] and [`CLOSE_REASON`].
    Close,
}

/// Counts one connection's malformed frames.
#[derive(Debug)]
pub struct MalformedFrames {
    /// Which channel, for the log (`"data"`, `"control"`).
    channel: &'static str,
    window_start: Option<Instant>,
    in_window: u32,
    /// Counted but not logged one by one, in earlier windows not summarised yet.
    unreported: u32,
}

impl MalformedFrames {
    /// A counter for one connection of `channel`.
    pub fn new(channel: &'static str) -> Self {
        Self {
            channel,
            window_start: None,
            in_window: 0,
            unreported: 0,
        }
    }

    /// Records a malformed frame that arrived at `now` and failed with `error`.
    pub fn record(&mut self, now: Instant, error: &dyn Display) -> Verdict {
        let expired = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= WINDOW);
        if expired {
            if self.unreported > 0 {
                warn!(
                    channel = self.channel,
                    dropped = self.unreported,
                    "more malformed frames were dropped without being logged"
                );
            }
            self.window_start = Some(now);
            self.in_window = 0;
            self.unreported = 0;
        }
        self.in_window += 1;
        if self.in_window <= LOGGED_PER_WINDOW {
            warn!(channel = self.channel, error = %error, "dropping malformed frame");
        } else {
            self.unreported += 1;
        }
        if self.in_window >= CLOSE_AFTER {
            warn!(
                channel = self.channel,
                count = self.in_window,
                window_seconds = WINDOW.as_secs(),
                "closing a connection that keeps sending malformed frames"
            );
            Verdict::Close
        } else {
            Verdict::KeepOpen
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_a_few_per_window_and_closes_a_flood() {
        let mut frames = MalformedFrames::new("data");
        let t0 = Instant::now();
        for n in 1..CLOSE_AFTER {
            assert_eq!(frames.record(t0, &"bad"), Verdict::KeepOpen, "frame {n}");
        }
        assert_eq!(frames.unreported, CLOSE_AFTER - 1 - LOGGED_PER_WINDOW);
        assert_eq!(frames.record(t0, &"bad"), Verdict::Close);
    }

    #[test]
    fn a_trickle_spread_over_windows_never_closes() {
        let mut frames = MalformedFrames::new("control");
        let t0 = Instant::now();
        for window in 0..50u32 {
            let at = t0 + WINDOW * window;
            for _ in 0..CLOSE_AFTER - 1 {
                assert_eq!(frames.record(at, &"bad"), Verdict::KeepOpen);
            }
        }
        // Each new window starts counting (and logging) afresh.
        assert_eq!(frames.in_window, CLOSE_AFTER - 1);
    }
}
