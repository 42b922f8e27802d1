//! Shell sessions with the plugin on a PTY, as a person at a terminal runs it: set-up time to the
//! first shell output, keystroke → echo round trips, and the plugin's memory meanwhile.
//!
//! Everything here blocks (PTY reads and writes); run it on a blocking thread.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use portable_pty::{native_pty_system, Child, MasterPty, PtySize};

use super::plugin::Launch;
use super::stack::memory;

/// Terminal size the plugin sees.
const PTY_SIZE: PtySize = PtySize {
    rows: 40,
    cols: 120,
    pixel_width: 0,
    pixel_height: 0,
};
/// Bytes per PTY read.
const READ_CHUNK: usize = 16 * 1024;
/// How long the plugin may take to show the shell's first output, or the marker of the latency
/// set-up. A hang guard, not a goal.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long one keystroke may take to come back before the run is declared broken.
const ECHO_DEADLINE: Duration = Duration::from_secs(10);
/// How long the plugin may take to exit once the remote shell ended.
const EXIT_DEADLINE: Duration = Duration::from_secs(15);
/// How long the PTY reader may take to see the end of the terminal once the plugin is gone.
const READER_EXIT_DEADLINE: Duration = Duration::from_secs(2);
/// How often a wait checks for cancellation.
const CANCEL_POLL: Duration = Duration::from_millis(50);
/// Keystrokes typed on one line before Enter: far below the 4095-byte line limit of a canonical
/// mode terminal, so no keystroke is dropped unechoed.
const KEYS_PER_LINE: usize = 64;
/// The plugin's memory is sampled every this many keystrokes.
const MEMORY_SAMPLE_EVERY: usize = 25;
/// Printed by the remote shell once `cat` is about to take the terminal. Typed split by `""`, so
/// the echo of the command line does not contain it.
const READY_MARKER: &str = "SSMXBENCHREADY";
/// Typed at the first prompt: print the marker, then let `cat` read the terminal (its output to
/// /dev/null), so what comes back for a keystroke is the terminal's own echo and nothing else.
const LATENCY_SETUP: &str = "printf '%s\\n' SSMXBENCH\"\"READY; exec cat >/dev/null\r";
/// The keys typed in turn.
const KEYS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";

/// Set by the async side when the benchmark is abandoned; every wait here gives up promptly.
#[derive(Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// Marks the run abandoned.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Keystroke latency and the plugin's memory during it.
#[derive(Clone, Debug)]
pub struct LatencyRun {
    /// One round trip per keystroke.
    pub samples: Vec<Duration>,
    /// Largest VmRSS of the plugin seen during the run, KiB.
    pub plugin_rss_kib: u64,
    /// The plugin's VmHWM at the end of the run, KiB.
    pub plugin_peak_rss_kib: u64,
}

/// A plugin running on a PTY. Dropping it kills the plugin if it still runs and joins the reader.
pub struct ShellSession {
    child: Box<dyn Child + Send + Sync>,
    /// Held so the terminal stays open for as long as the session.
    _master: Box<dyn MasterPty + Send>,
    writer: Box<dyn Write + Send>,
    chunks: mpsc::Receiver<(Instant, Vec<u8>)>,
    reader: Option<JoinHandle<()>>,
    /// All output so far, with the arrival time of each chunk's first byte offset.
    output: Vec<u8>,
    arrivals: Vec<(usize, Instant)>,
    /// Output before this offset has been consumed by an earlier wait.
    cursor: usize,
    cancel: Cancel,
}

impl ShellSession {
    /// Starts the plugin on a fresh PTY.
    pub fn spawn(launch: &Launch, cwd: &std::path::Path, cancel: Cancel) -> anyhow::Result<Self> {
        let pair = native_pty_system()
            .openpty(PTY_SIZE)
            .context("cannot open a PTY")?;
        let child = pair
            .slave
            .spawn_command(launch.pty_command(cwd))
            .with_context(|| format!("cannot start {}", launch.program.display()))?;
        // Only the child holds the slave now, so reads end when it exits.
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().context("PTY reader")?;
        let writer = pair.master.take_writer().context("PTY writer")?;
        let (tx, chunks) = mpsc::channel();
        let reader = std::thread::Builder::new()
            .name("bench-pty-reader".into())
            .spawn(move || {
                let mut buf = vec![0u8; READ_CHUNK];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                                return;
                            }
                        }
                    }
                }
            })
            .context("cannot start the PTY reader thread")?;
        Ok(Self {
            child,
            _master: pair.master,
            writer,
            chunks,
            reader: Some(reader),
            output: Vec::new(),
            arrivals: Vec::new(),
            cursor: 0,
            cancel,
        })
    }

    /// The plugin's process id.
    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .process_id()
            .context("the plugin has no process id")
    }

    /// Waits for the first output of the remote shell: the first visible byte after the
    /// plugin's `Starting session with SessionId: <id>` line. Returns when it arrived.
    pub fn first_shell_output(&mut self, session_id: &str) -> anyhow::Result<Instant> {
        let banner = format!("SessionId: {session_id}");
        self.wait_for(START_DEADLINE, "the shell's first output", |out| {
            let after_banner = find(out, banner.as_bytes())? + banner.len();
            let line_end = after_banner + out[after_banner..].iter().position(|&b| b == b'\n')?;
            let first = line_end
                + out[line_end..]
                    .iter()
                    .position(|b| !b.is_ascii_whitespace())?;
            Some(first)
        })
    }

    /// Types `text`.
    pub fn type_text(&mut self, text: &[u8]) -> anyhow::Result<()> {
        self.writer
            .write_all(text)
            .and_then(|()| self.writer.flush())
            .context("cannot type into the plugin's terminal")
    }

    /// Measures `count` keystroke → echo round trips. Call at the shell's first prompt.
    pub fn keystroke_latency(&mut self, count: usize) -> anyhow::Result<LatencyRun> {
        self.type_text(LATENCY_SETUP.as_bytes())?;
        self.wait_for(START_DEADLINE, "the remote `cat` to start", |out| {
            find(out, READY_MARKER.as_bytes()).map(|at| at + READY_MARKER.len() - 1)
        })?;
        let pid = self.pid()?;
        let mut samples = Vec::with_capacity(count);
        let mut rss = memory(pid)?.rss_kib;
        for i in 0..count {
            if i > 0 && i % KEYS_PER_LINE == 0 {
                self.type_text(b"\r")?;
                self.wait_for(ECHO_DEADLINE, "the echo of Enter", |out| {
                    out.iter().position(|&b| b == b'\n')
                })?;
            }
            let key = KEYS[i % KEYS.len()];
            let typed = Instant::now();
            self.type_text(&[key])?;
            let echoed = self.wait_for(ECHO_DEADLINE, "a keystroke's echo", |out| {
                out.iter().position(|&b| b == key)
            })?;
            samples.push(echoed.saturating_duration_since(typed));
            if i % MEMORY_SAMPLE_EVERY == 0 {
                rss = rss.max(memory(pid)?.rss_kib);
            }
        }
        let end = memory(pid)?;
        Ok(LatencyRun {
            samples,
            plugin_rss_kib: rss.max(end.rss_kib),
            plugin_peak_rss_kib: end.peak_rss_kib,
        })
    }

    /// Waits for the plugin to exit by itself (after the remote shell ended).
    pub fn wait_exit(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + EXIT_DEADLINE;
        loop {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            if self.cancel.is_cancelled() {
                bail!("cancelled");
            }
            if Instant::now() >= deadline {
                bail!(
                    "the plugin did not exit within {EXIT_DEADLINE:?} after the shell ended; its output ended with: {}",
                    self.output_tail()
                );
            }
            // Keep draining output so the plugin never blocks on a full PTY.
            if let Ok(chunk) = self.chunks.recv_timeout(CANCEL_POLL) {
                self.push(chunk);
            }
        }
    }

    /// Waits until `found` locates a byte in the unconsumed output; consumes output up to and
    /// including it and returns the arrival time of the chunk that carried it.
    fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        found: impl Fn(&[u8]) -> Option<usize>,
    ) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(rel) = found(&self.output[self.cursor..]) {
                let at = self.cursor + rel;
                self.cursor = at + 1;
                return Ok(self.arrival_of(at));
            }
            if self.cancel.is_cancelled() {
                bail!("cancelled");
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what}; the plugin's output ended with: {}",
                    self.output_tail()
                );
            }
            match self.chunks.recv_timeout((deadline - now).min(CANCEL_POLL)) {
                Ok(chunk) => self.push(chunk),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!(
                    "the plugin's terminal closed while waiting for {what}; its output ended with: {}",
                    self.output_tail()
                ),
            }
        }
    }

    fn push(&mut self, (at, bytes): (Instant, Vec<u8>)) {
        self.arrivals.push((self.output.len(), at));
        self.output.extend_from_slice(&bytes);
    }

    fn arrival_of(&self, offset: usize) -> Instant {
        let i = self.arrivals.partition_point(|&(start, _)| start <= offset);
        self.arrivals[i.saturating_sub(1)].1
    }

    fn output_tail(&self) -> String {
        const TAIL: usize = 400;
        let start = self.output.len().saturating_sub(TAIL);
        format!("{:?}", String::from_utf8_lossy(&self.output[start..]))
    }
}

impl Drop for ShellSession {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // The reader ends once every slave descriptor is closed, which the plugin's exit does
        // unless something it started still holds the terminal: then it is left to end with it
        // rather than hang the benchmark.
        if let Some(reader) = self.reader.take() {
            let deadline = Instant::now() + READER_EXIT_DEADLINE;
            while !reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if reader.is_finished() {
                let _ = reader.join();
            } else {
                tracing::warn!("the plugin's terminal is still open after it exited");
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A local `sh` standing in for the plugin: the same banner, then an interactive shell as
    /// its child (the measured process keeps its image, as a plugin does).
    fn local_shell() -> Launch {
        Launch {
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "printf '\\nStarting session with SessionId: s-1\\n\\n'; PS1='$ ' sh -i".into(),
            ],
            env: vec![],
        }
    }

    #[test]
    fn keystrokes_round_trip_through_a_terminal_across_line_breaks() {
        let dir = tempfile::tempdir().unwrap();
        let mut shell = ShellSession::spawn(&local_shell(), dir.path(), Cancel::default()).unwrap();
        shell.first_shell_output("s-1").unwrap();
        let run = shell.keystroke_latency(KEYS_PER_LINE + 3).unwrap();
        assert_eq!(run.samples.len(), KEYS_PER_LINE + 3);
        assert!(run.plugin_rss_kib > 0 && run.plugin_peak_rss_kib >= run.plugin_rss_kib);
        shell.type_text(b"\r\x04").unwrap();
        shell.wait_exit().unwrap();
    }

    #[test]
    fn first_output_is_the_prompt_after_the_banner_and_exit_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut shell = ShellSession::spawn(&local_shell(), dir.path(), Cancel::default()).unwrap();
        shell.first_shell_output("s-1").unwrap();
        assert_eq!(&shell.output[shell.cursor - 1..shell.cursor], b"$");
        shell.type_text(b"exit\r").unwrap();
        shell.wait_exit().unwrap();
    }

    #[test]
    fn a_cancelled_wait_gives_up() {
        let dir = tempfile::tempdir().unwrap();
        let cancel = Cancel::default();
        let mut shell = ShellSession::spawn(&local_shell(), dir.path(), cancel.clone()).unwrap();
        cancel.cancel();
        let err = shell.first_shell_output("another-session").unwrap_err();
        assert!(err.to_string().contains("cancelled"), "{err:#}");
    }
}
