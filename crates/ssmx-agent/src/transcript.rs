//! Per-session transcripts: `<log-dir>/<session-id>.log` in asciicast v2 form (a JSON header line,
//! then one `[seconds, code, text]` line per event), so `asciinema play` replays shell sessions.
//!
//! Event codes: `o` output (stdout and stderr), `i` input (shell sessions only), `r` terminal
//! resize (`COLSxROWS`), `m` markers for session events (port connections, exit code, end).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::json;

/// Terminal size in the header, before the client reports its own.
const DEFAULT_COLS: u32 = 80;
/// See [`DEFAULT_COLS`].
const DEFAULT_ROWS: u32 = 24;

/// Appends events to one session's transcript. Cheap to clone; write errors are logged once and
/// then the transcript stops (the session itself goes on).
#[derive(Clone)]
pub(crate) struct Transcript {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    writer: Option<BufWriter<File>>,
    started: Instant,
    path: PathBuf,
}

impl Transcript {
    /// Creates `<dir>/<session_id>.log` (mode 0600; the directory is created if missing).
    pub(crate) fn create(dir: &Path, session_id: &str, title: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{}.log", file_name_safe(session_id)));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        let mut writer = BufWriter::new(file);
        let header = json!({
            "version": 2,
            "width": DEFAULT_COLS,
            "height": DEFAULT_ROWS,
            "timestamp": chrono::Utc::now().timestamp(),
            "title": title,
            "env": {"TERM": "xterm-256color"},
        });
        writeln!(writer, "{header}")?;
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                writer: Some(writer),
                started: Instant::now(),
                path,
            })),
        })
    }

    /// Records bytes the session produced.
    pub(crate) fn output(&self, data: &[u8]) {
        self.event("o", &String::from_utf8_lossy(data));
    }

    /// Records bytes the user sent.
    pub(crate) fn input(&self, data: &[u8]) {
        self.event("i", &String::from_utf8_lossy(data));
    }

    /// Records a terminal resize.
    pub(crate) fn resize(&self, cols: u32, rows: u32) {
        self.event("r", &format!("{cols}x{rows}"));
    }

    /// Records a session event.
    pub(crate) fn marker(&self, text: &str) {
        self.event("m", text);
    }

    /// Writes buffered events to the file.
    pub(crate) fn flush(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let path = inner.path.clone();
        if let Some(writer) = inner.writer.as_mut() {
            if let Err(e) = writer.flush() {
                tracing::warn!(path = %path.display(), "transcript flush failed: {e}");
                inner.writer = None;
            }
        }
    }

    fn event(&self, code: &str, text: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = inner.started.elapsed().as_secs_f64();
        let path = inner.path.clone();
        if let Some(writer) = inner.writer.as_mut() {
            let event = ((elapsed * 1e6).round() / 1e6, code, text);
            let written = serde_json::to_writer(&mut *writer, &event)
                .map_err(std::io::Error::from)
                .and_then(|()| writer.write_all(b"\n"));
            if let Err(e) = written {
                tracing::warn!(path = %path.display(), "transcript write failed, stopping it: {e}");
                inner.writer = None;
            }
        }
    }
}

/// `id` with every character outside `[A-Za-z0-9._-]` replaced by `_` (and no leading dot).
fn file_name_safe(id: &str) -> String {
    let mut name: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.starts_with('.') || name.is_empty() {
        name.insert(0, '_');
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcript_is_asciicast_with_every_event() {
        let dir = tempfile::tempdir().unwrap();
        let t = Transcript::create(dir.path(), "alice-0a1b", "shell").unwrap();
        t.output("héllo\r\n".as_bytes());
        t.input(b"ls\r");
        t.resize(132, 40);
        t.marker("exit code 0");
        t.flush();
        let text = std::fs::read_to_string(dir.path().join("alice-0a1b.log")).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["version"], 2);
        assert_eq!(lines[1][1], "o");
        assert_eq!(lines[1][2], "héllo\r\n");
        assert_eq!(lines[2][1], "i");
        assert_eq!(lines[3][2], "132x40");
        assert_eq!(lines[4][1], "m");
    }

    #[test]
    fn session_ids_cannot_escape_the_directory() {
        assert_eq!(file_name_safe("../etc/passwd"), "_.._etc_passwd");
        assert_eq!(file_name_safe(""), "_");
    }
}
