//! Recording at the relay: what the gateway forwards, written as it forwards it, so the record
//! survives an agent or client that dies.
//!
//! * Shell-like sessions (Standard_Stream, InteractiveCommands, NonInteractiveCommands): an
//!   [asciicast v2](https://docs.asciinema.org/manual/asciicast/v2/) file: one JSON header line,
//!   then `[seconds, "o", text]` for agent output (Output and StdErr payloads) and
//!   `[seconds, "r", "COLSxROWS"]` for terminal size changes.
//! * Port sessions: a byte log: one JSON header line, then binary records (u64 big-endian
//!   microseconds since the header's timestamp, `o` for agent → client or `i` for client →
//!   agent, u32 big-endian length, the bytes) — a copy of the stream, no encoding cost.
//!
//! Retransmitted stream messages are recorded once (by sequence number). KMS-encrypted sessions
//! are not recorded: the relay only sees ciphertext.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Records queued between the relay and the file writer. Deep enough that a disk hiccup does not
/// stall the relay; when full, the relay waits (nothing is dropped).
const QUEUE_DEPTH: usize = 1024;
/// Records are encoded into a batch written in one call once it reaches this size, so the cost
/// per relayed byte is one copy.
const FLUSH_AT: usize = 256 * 1024;
/// A batch is written at the latest this long after the traffic pauses, so a recording is on
/// disk while its session is still running (and survives a gateway that dies).
const FLUSH_DELAY: Duration = Duration::from_millis(50);
/// Terminal size written in the header until the client reports its own.
const DEFAULT_SIZE: (u32, u32) = (80, 24);

/// Which format a session is recorded in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// asciicast v2 (`.cast`).
    Asciicast,
    /// JSON lines of timestamped bytes (`.log`).
    ByteLog,
}

impl Format {
    /// The file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Asciicast => "cast",
            Format::ByteLog => "log",
        }
    }
}

enum Record {
    /// Agent → client stream bytes.
    Output(Instant, Bytes),
    /// Client → agent stream bytes.
    Input(Instant, Bytes),
    /// Terminal size from the client.
    Resize(Instant, u32, u32),
}

/// The relay's handle on a session's recording.
pub struct Recorder {
    format: Format,
    tx: mpsc::Sender<Record>,
    task: JoinHandle<std::io::Result<()>>,
    path: PathBuf,
    next_output_seq: i64,
    next_input_seq: i64,
}

impl Recorder {
    /// Creates `<dir>/<session_id>.<ext>` and starts its writer task.
    pub async fn create(dir: &Path, session_id: &str, format: Format) -> std::io::Result<Self> {
        tokio::fs::create_dir_all(dir).await?;
        let path = dir.join(format!("{session_id}.{}", format.extension()));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?
            .into_std()
            .await;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer = Writer {
            file: Some(file),
            batch: Vec::with_capacity(FLUSH_AT),
            started: Instant::now(),
            started_wall: SystemTime::now(),
            session_id: session_id.to_owned(),
            header_written: false,
            utf8_carry: Vec::new(),
        };
        let task = tokio::spawn(writer.run(format, rx));
        Ok(Self {
            format,
            tx,
            task,
            path,
            next_output_seq: 0,
            next_input_seq: 0,
        })
    }

    /// Where the recording is written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records an agent stream message (`seq`, payload type value, payload) unless it is a
    /// retransmission of one already recorded.
    pub async fn agent_stream(&mut self, seq: i64, payload_type: u32, payload: Bytes) {
        if seq < self.next_output_seq {
            return;
        }
        self.next_output_seq = seq + 1;
        // Output (1) and StdErr (11) are what a terminal shows.
        let shown = matches!(payload_type, 1 | 11);
        let port_bytes = payload_type == 1;
        let keep = match self.format {
            Format::Asciicast => shown,
            Format::ByteLog => port_bytes,
        };
        if keep && !payload.is_empty() {
            self.push(Record::Output(Instant::now(), payload)).await;
        }
    }

    /// Records a client stream message unless it is a retransmission: terminal sizes for
    /// asciicast, Output bytes for byte logs.
    pub async fn client_stream(&mut self, seq: i64, payload_type: u32, payload: Bytes) {
        if seq < self.next_input_seq {
            return;
        }
        self.next_input_seq = seq + 1;
        match (self.format, payload_type) {
            (Format::Asciicast, 3) => {
                if let Ok(size) =
                    serde_json::from_slice::<ssmx_protocol::payload::TerminalSize>(&payload)
                {
                    self.push(Record::Resize(Instant::now(), size.cols, size.rows))
                        .await;
                }
            }
            (Format::ByteLog, 1) if !payload.is_empty() => {
                self.push(Record::Input(Instant::now(), payload)).await;
            }
            _ => {}
        }
    }

    async fn push(&mut self, record: Record) {
        if let Err(mpsc::error::TrySendError::Full(record)) = self.tx.try_send(record) {
            // Disk slower than the network: wait rather than lose the record.
            let _ = self.tx.send(record).await;
        }
    }

    /// Flushes and closes the file.
    pub async fn finish(self) -> std::io::Result<PathBuf> {
        drop(self.tx);
        match self.task.await {
            Ok(result) => result.map(|()| self.path),
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

struct Writer {
    /// Taken while a batch is being written on the blocking pool.
    file: Option<std::fs::File>,
    batch: Vec<u8>,
    started: Instant,
    started_wall: SystemTime,
    session_id: String,
    header_written: bool,
    utf8_carry: Vec<u8>,
}

impl Writer {
    async fn run(mut self, format: Format, mut rx: mpsc::Receiver<Record>) -> std::io::Result<()> {
        if format == Format::ByteLog {
            let header = serde_json::json!({
                "format": "ssmx-byte-log", "version": 1, "session_id": self.session_id,
                "timestamp": unix_seconds(self.started_wall),
                "records": "after this line: u64 BE microseconds since timestamp, u8 'o' (agent to client) or 'i' (client to agent), u32 BE length, bytes",
            });
            self.json_line(&header)?;
        }
        loop {
            let next = if self.batch.is_empty() {
                rx.recv().await
            } else {
                match tokio::time::timeout(FLUSH_DELAY, rx.recv()).await {
                    Ok(next) => next,
                    Err(_) => {
                        self.flush().await?;
                        continue;
                    }
                }
            };
            let Some(record) = next else { break };
            self.encode(format, record)?;
            if self.batch.len() >= FLUSH_AT {
                self.flush().await?;
            }
        }
        if format == Format::Asciicast {
            self.ensure_header(DEFAULT_SIZE)?;
        }
        self.flush().await?;
        let file = self.file.take().expect("file is back after every flush");
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(std::io::Error::other)?
    }

    fn encode(&mut self, format: Format, record: Record) -> std::io::Result<()> {
        match (format, record) {
            (Format::Asciicast, Record::Output(at, bytes)) => {
                self.ensure_header(DEFAULT_SIZE)?;
                let t = self.secs(at);
                let carry = std::mem::take(&mut self.utf8_carry);
                let joined;
                let data: &[u8] = if carry.is_empty() {
                    &bytes
                } else {
                    joined = [carry.as_slice(), &bytes].concat();
                    &joined
                };
                let cut = incomplete_utf8_tail(data);
                self.utf8_carry = data[data.len() - cut..].to_vec();
                let text = String::from_utf8_lossy(&data[..data.len() - cut]);
                if !text.is_empty() {
                    serde_json::to_writer(&mut self.batch, &(t, "o", text.as_ref()))
                        .map_err(std::io::Error::other)?;
                    self.batch.push(b'\n');
                }
            }
            (Format::Asciicast, Record::Resize(at, cols, rows)) => {
                if self.header_written {
                    let t = self.secs(at);
                    self.json_line(&serde_json::json!([t, "r", format!("{cols}x{rows}")]))?;
                } else {
                    self.ensure_header((cols, rows))?;
                }
            }
            (Format::ByteLog, Record::Output(at, bytes)) => self.binary(at, b'o', &bytes),
            (Format::ByteLog, Record::Input(at, bytes)) => self.binary(at, b'i', &bytes),
            _ => {}
        }
        Ok(())
    }

    fn ensure_header(&mut self, (width, height): (u32, u32)) -> std::io::Result<()> {
        if self.header_written {
            return Ok(());
        }
        self.header_written = true;
        let header = serde_json::json!({
            "version": 2, "width": width, "height": height,
            "timestamp": unix_seconds(self.started_wall) as u64,
            "title": self.session_id,
            "env": {"TERM": "xterm-256color"},
        });
        self.json_line(&header)
    }

    fn binary(&mut self, at: Instant, dir: u8, data: &[u8]) {
        let micros = at.saturating_duration_since(self.started).as_micros() as u64;
        self.batch.extend_from_slice(&micros.to_be_bytes());
        self.batch.push(dir);
        self.batch
            .extend_from_slice(&(data.len() as u32).to_be_bytes());
        self.batch.extend_from_slice(data);
    }

    fn json_line(&mut self, value: &serde_json::Value) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.batch, value).map_err(std::io::Error::other)?;
        self.batch.push(b'\n');
        Ok(())
    }

    /// Writes the batch on the blocking pool (one call per batch, not per record).
    async fn flush(&mut self) -> std::io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let mut file = self.file.take().expect("file is back after every flush");
        let batch = std::mem::take(&mut self.batch);
        let (file, mut batch, result) = tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            let result = file.write_all(&batch);
            (file, batch, result)
        })
        .await
        .map_err(std::io::Error::other)?;
        batch.clear();
        self.batch = batch;
        self.file = Some(file);
        result
    }

    fn secs(&self, at: Instant) -> f64 {
        let d = at.saturating_duration_since(self.started);
        (d.as_secs_f64() * 1e6).round() / 1e6
    }
}

/// Length of a trailing, still incomplete UTF-8 sequence (0 to 3 bytes).
fn incomplete_utf8_tail(buf: &[u8]) -> usize {
    for back in 1..=3.min(buf.len()) {
        let b = buf[buf.len() - back];
        if b & 0xC0 == 0x80 {
            continue; // continuation byte: keep looking for the lead byte
        }
        let needed = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return 0,
        };
        return if needed > back { back } else { 0 };
    }
    0
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Why a recording cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The file could not be read.
    #[error("cannot read recording {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not an asciicast v2 recording.
    #[error("{path} line {line} is not asciicast v2: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Writing the output failed.
    #[error("cannot write the replay: {0}")]
    Write(std::io::Error),
}

/// One record of a byte log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// Time since the recording started.
    pub at: Duration,
    /// True for agent → client bytes, false for client → agent.
    pub from_agent: bool,
    /// The bytes.
    pub data: Bytes,
}

/// Reads a byte log: its JSON header and its records.
pub fn parse_byte_log(path: &Path) -> Result<(serde_json::Value, Vec<LogRecord>), ReplayError> {
    let raw = std::fs::read(path).map_err(|source| ReplayError::Read {
        path: path.to_owned(),
        source,
    })?;
    let bad = |reason: &str| ReplayError::Format {
        path: path.to_owned(),
        line: 1,
        reason: reason.to_owned(),
    };
    let end = raw
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| bad("no header line"))?;
    let header: serde_json::Value =
        serde_json::from_slice(&raw[..end]).map_err(|e| bad(&e.to_string()))?;
    if header["format"] != "ssmx-byte-log" {
        return Err(bad("not an ssmx byte log"));
    }
    let body = Bytes::from(raw).slice(end + 1..);
    let mut records = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let head = body
            .get(at..at + 13)
            .ok_or_else(|| bad("truncated record header"))?;
        let micros = u64::from_be_bytes(head[..8].try_into().expect("8 bytes"));
        let from_agent = match head[8] {
            b'o' => true,
            b'i' => false,
            _ => return Err(bad("record direction is not 'o' or 'i'")),
        };
        let len = u32::from_be_bytes(head[9..13].try_into().expect("4 bytes")) as usize;
        let data_end = at + 13 + len;
        if data_end > body.len() {
            return Err(bad("truncated record"));
        }
        records.push(LogRecord {
            at: Duration::from_micros(micros),
            from_agent,
            data: body.slice(at + 13..data_end),
        });
        at = data_end;
    }
    Ok((header, records))
}

/// Plays an asciicast v2 recording to `out`, sleeping between events as recorded (divided by
/// `speed`, each pause capped at `max_pause` when given).
pub async fn replay<W: AsyncWrite + Unpin>(
    path: &Path,
    speed: f64,
    max_pause: Option<Duration>,
    out: &mut W,
) -> Result<(), ReplayError> {
    let read_err = |source| ReplayError::Read {
        path: path.to_owned(),
        source,
    };
    let format_err = |line: usize, reason: String| ReplayError::Format {
        path: path.to_owned(),
        line,
        reason,
    };
    let file = tokio::fs::File::open(path).await.map_err(read_err)?;
    let mut lines = BufReader::new(file).lines();
    let header = lines
        .next_line()
        .await
        .map_err(read_err)?
        .ok_or_else(|| format_err(1, "the file is empty".into()))?;
    let header: serde_json::Value =
        serde_json::from_str(&header).map_err(|e| format_err(1, e.to_string()))?;
    if header.get("version").and_then(|v| v.as_u64()) != Some(2) {
        return Err(format_err(1, "the header does not say version 2".into()));
    }
    let speed = if speed.is_finite() && speed > 0.0 {
        speed
    } else {
        1.0
    };
    let mut last = 0.0f64;
    let mut number = 1;
    while let Some(line) = lines.next_line().await.map_err(read_err)? {
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        let event: (f64, String, String) =
            serde_json::from_str(&line).map_err(|e| format_err(number, e.to_string()))?;
        let (t, kind, data) = event;
        if kind != "o" {
            continue;
        }
        let mut pause = Duration::from_secs_f64(((t - last) / speed).max(0.0));
        if let Some(cap) = max_pause {
            pause = pause.min(cap);
        }
        last = t;
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        out.write_all(data.as_bytes())
            .await
            .map_err(ReplayError::Write)?;
        out.flush().await.map_err(ReplayError::Write)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_tail_detection() {
        assert_eq!(incomplete_utf8_tail(b"abc"), 0);
        assert_eq!(incomplete_utf8_tail("é".as_bytes()), 0);
        assert_eq!(incomplete_utf8_tail(&"é".as_bytes()[..1]), 1);
        assert_eq!(incomplete_utf8_tail(&"€".as_bytes()[..2]), 2);
        assert_eq!(incomplete_utf8_tail(&"😀".as_bytes()[..3]), 3);
        assert_eq!(incomplete_utf8_tail(b"\xff"), 0);
    }

    #[tokio::test]
    async fn asciicast_round_trip_dedupes_and_splits_utf8() {
        let dir = std::env::temp_dir().join(format!("ssmx-rec-{}", crate::store::random_hex(8)));
        let mut rec = Recorder::create(&dir, "alice-1", Format::Asciicast)
            .await
            .unwrap();
        rec.client_stream(0, 3, Bytes::from_static(br#"{"cols":132,"rows":40}"#))
            .await;
        let euro = "€".as_bytes();
        rec.agent_stream(0, 1, Bytes::from(["$ ".as_bytes(), &euro[..1]].concat()))
            .await;
        rec.agent_stream(0, 1, Bytes::from_static(b"duplicate"))
            .await;
        rec.agent_stream(1, 1, Bytes::copy_from_slice(&euro[1..]))
            .await;
        rec.agent_stream(2, 5, Bytes::from_static(b"{}")).await;
        let path = rec.finish().await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("\"width\":132"), "{}", lines[0]);
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[1].ends_with(",\"o\",\"$ \"]"), "{}", lines[1]);
        assert!(lines[2].ends_with(",\"o\",\"€\"]"), "{}", lines[2]);
        let mut out = Vec::new();
        replay(&path, 1000.0, None, &mut out).await.unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "$ €");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
