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
//!
//! Asciicast text is the output's UTF-8: a character split across messages is written with the
//! message that completes it, and bytes that are not UTF-8 are written as U+FFFD.
//!
//! Cost on the relay: the relay hands each stream payload (the frame's own refcounted bytes, no
//! copy) to a per-session writer task through a bounded queue, without a lock; retransmissions
//! are recognised with one atomic operation. The writer encodes records into a batch (asciicast:
//! JSON string escaping with a fast path for runs of characters that need none; byte log: the
//! payloads are not copied, the batch refers to them) and writes each batch with one (vectored)
//! write on the blocking pool while it encodes the next. When the disk falls behind, the queue
//! fills and the relay waits: nothing is dropped. The file is synced when the session ends.

use std::io::{IoSlice, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Records queued between the relay and the file writer. Deep enough that a disk hiccup does not
/// stall the relay; when full, the relay waits (nothing is dropped).
const QUEUE_DEPTH: usize = 1024;
/// Records the writer takes off the queue at a time.
const RECEIVE_BATCH: usize = 64;
/// A batch is written in one call once it holds this many bytes.
const FLUSH_AT: usize = 512 * 1024;
/// A batch is written at the latest this long after its first record, so a recording is on disk
/// while its session is still running (and survives a gateway that dies).
const FLUSH_DELAY: Duration = Duration::from_millis(50);
/// Byte-log payloads at least this long are written from the relayed frame itself (one more
/// entry in the vectored write) instead of being copied into the batch.
const SHARE_AT: usize = 2048;
/// Most buffers passed to one vectored write (Linux's `IOV_MAX`).
const MAX_IOVECS: usize = 1024;
/// Terminal size written in the header until the client reports its own.
const DEFAULT_SIZE: (u32, u32) = (80, 24);

/// Which format a session is recorded in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// asciicast v2 (`.cast`).
    Asciicast,
    /// JSON header line, then binary timestamped records (`.log`).
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
    /// No more records: complete the file.
    End,
}

/// A session's recording: the relay's side of it (shared by the session's reader tasks, used
/// without locking) and the writer task behind it.
pub struct Recorder {
    format: Format,
    tx: mpsc::Sender<Record>,
    task: Mutex<Option<JoinHandle<std::io::Result<()>>>>,
    path: PathBuf,
    /// Highest sequence number recorded per direction (-1: none yet).
    last_output_seq: AtomicI64,
    last_input_seq: AtomicI64,
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
            format,
            file: Some(file),
            batch: Batch::default(),
            spare: Batch::default(),
            writing: None,
            started: Instant::now(),
            started_wall: SystemTime::now(),
            session_id: session_id.to_owned(),
            header_written: false,
            utf8_carry: Vec::new(),
        };
        let task = tokio::spawn(writer.run(rx));
        Ok(Self {
            format,
            tx,
            task: Mutex::new(Some(task)),
            path,
            last_output_seq: AtomicI64::new(-1),
            last_input_seq: AtomicI64::new(-1),
        })
    }

    /// Records waiting in the queue for the writer.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Where the recording is written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records an agent stream message (`seq`, payload type value, payload) unless it is a
    /// retransmission of one already recorded.
    pub async fn agent_stream(&self, seq: i64, payload_type: u32, payload: Bytes) {
        if !first_time(&self.last_output_seq, seq) {
            return;
        }
        // Output (1) and StdErr (11) are what a terminal shows; a port stream is Output.
        let keep = match self.format {
            Format::Asciicast => matches!(payload_type, 1 | 11),
            Format::ByteLog => payload_type == 1,
        };
        if keep && !payload.is_empty() {
            self.push(Record::Output(Instant::now(), payload)).await;
        }
    }

    /// Records a client stream message unless it is a retransmission: terminal sizes for
    /// asciicast, Output bytes for byte logs.
    pub async fn client_stream(&self, seq: i64, payload_type: u32, payload: Bytes) {
        if !first_time(&self.last_input_seq, seq) {
            return;
        }
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

    async fn push(&self, record: Record) {
        if let Err(mpsc::error::TrySendError::Full(record)) = self.tx.try_send(record) {
            // Disk slower than the network: wait rather than lose the record. (Closed: the
            // writer failed, and `finish` reports why.)
            let _ = self.tx.send(record).await;
        }
    }

    /// Writes what is queued, completes and syncs the file. Records offered afterwards are not
    /// written; a second call fails.
    pub async fn finish(&self) -> std::io::Result<PathBuf> {
        let task = self
            .task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        let Some(task) = task else {
            return Err(std::io::Error::other("the recording is already finished"));
        };
        // Fails only if the writer stopped on an error, which its result carries.
        let _ = self.tx.send(Record::End).await;
        match task.await {
            Ok(result) => result.map(|()| self.path.clone()),
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

/// True the first time `seq` (or a later one) is seen on a direction whose highest sequence
/// number so far is in `last`: stream messages are sent in order, so one numbered at or below it
/// is a retransmission.
fn first_time(last: &AtomicI64, seq: i64) -> bool {
    last.fetch_max(seq, Ordering::Relaxed) < seq
}

/// Bytes waiting to be written, in file order: `own` with shared payloads inserted at offsets.
#[derive(Default)]
struct Batch {
    own: Vec<u8>,
    /// `(offset in own, payload)`, offsets ascending: the payload comes before `own[offset..]`.
    shared: Vec<(usize, Bytes)>,
    shared_len: usize,
}

impl Batch {
    fn len(&self) -> usize {
        self.own.len() + self.shared_len
    }

    fn is_empty(&self) -> bool {
        self.own.is_empty() && self.shared.is_empty()
    }

    fn clear(&mut self) {
        self.own.clear();
        self.shared.clear();
        self.shared_len = 0;
    }

    /// Appends `data`, by reference when it is long enough to be worth its own write buffer.
    fn push_bytes(&mut self, data: Bytes) {
        if data.len() >= SHARE_AT {
            self.shared_len += data.len();
            self.shared.push((self.own.len(), data));
        } else {
            self.own.extend_from_slice(&data);
        }
    }

    /// Writes the whole batch: one `write` call, or vectored writes of up to [`MAX_IOVECS`]
    /// buffers when payloads are shared.
    fn write_to(&self, file: &mut std::fs::File) -> std::io::Result<()> {
        if self.shared.is_empty() {
            return file.write_all(&self.own);
        }
        let mut slices = Vec::with_capacity(self.shared.len() * 2 + 1);
        let mut at = 0;
        for (offset, data) in &self.shared {
            if *offset > at {
                slices.push(IoSlice::new(&self.own[at..*offset]));
            }
            slices.push(IoSlice::new(data));
            at = *offset;
        }
        if at < self.own.len() {
            slices.push(IoSlice::new(&self.own[at..]));
        }
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let count = rest.len().min(MAX_IOVECS);
            match file.write_vectored(&rest[..count]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(written) => IoSlice::advance_slices(&mut rest, written),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A batch being written on the blocking pool; gives back the file and the (emptied) batch.
type Writing = JoinHandle<(std::fs::File, Batch, std::io::Result<()>)>;

struct Writer {
    format: Format,
    /// Taken while a batch is being written on the blocking pool.
    file: Option<std::fs::File>,
    /// Records are encoded into this batch...
    batch: Batch,
    /// ...while the previous one is written, then kept for reuse.
    spare: Batch,
    writing: Option<Writing>,
    started: Instant,
    started_wall: SystemTime,
    session_id: String,
    header_written: bool,
    /// The start of a UTF-8 character whose remaining bytes are in the next Output record.
    utf8_carry: Vec<u8>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Record>) -> std::io::Result<()> {
        if self.format == Format::ByteLog {
            let header = serde_json::json!({
                "format": "ssmx-byte-log", "version": 1, "session_id": self.session_id,
                "timestamp": unix_seconds(self.started_wall),
                "records": "after this line: u64 BE microseconds since timestamp, u8 'o' (agent to client) or 'i' (client to agent), u32 BE length, bytes",
            });
            self.json_line(&header)?;
        }
        let mut records = Vec::new();
        let deadline = tokio::time::sleep(FLUSH_DELAY);
        tokio::pin!(deadline);
        let mut armed = false;
        'receive: loop {
            tokio::select! {
                biased;
                received = rx.recv_many(&mut records, RECEIVE_BATCH) => {
                    if received == 0 {
                        break 'receive; // every sender is gone
                    }
                    for record in records.drain(..) {
                        if let Record::End = record {
                            break 'receive;
                        }
                        self.encode(record)?;
                    }
                    if self.batch.len() >= FLUSH_AT {
                        self.flush().await?;
                        armed = false;
                    } else if !armed && !self.batch.is_empty() {
                        deadline.as_mut().reset(tokio::time::Instant::now() + FLUSH_DELAY);
                        armed = true;
                    }
                }
                () = &mut deadline, if armed => {
                    // Traffic paused: write what there is, and give back the memory a burst
                    // took (an idle session keeps next to none).
                    self.flush().await?;
                    self.written().await?;
                    self.batch = Batch::default();
                    self.spare = Batch::default();
                    records = Vec::new();
                    armed = false;
                }
            }
        }
        if self.format == Format::Asciicast {
            if !self.utf8_carry.is_empty() {
                // The stream ended inside a character: write what there is, lossily.
                let carry = std::mem::take(&mut self.utf8_carry);
                self.output_event(Instant::now(), &carry, true)?;
            }
            self.ensure_header(DEFAULT_SIZE)?;
        }
        self.flush().await?;
        self.written().await?;
        let file = self.take_file()?;
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(std::io::Error::other)?
    }

    fn encode(&mut self, record: Record) -> std::io::Result<()> {
        match (self.format, record) {
            (Format::Asciicast, Record::Output(at, bytes)) => {
                if self.utf8_carry.is_empty() {
                    self.output_event(at, &bytes, false)?;
                } else {
                    let mut joined = std::mem::take(&mut self.utf8_carry);
                    joined.extend_from_slice(&bytes);
                    self.output_event(at, &joined, false)?;
                }
            }
            (Format::Asciicast, Record::Resize(at, cols, rows)) => {
                if self.header_written {
                    self.event_start(at, b'r');
                    let size = format!("{cols}x{rows}");
                    self.batch.own.extend_from_slice(size.as_bytes());
                    self.batch.own.extend_from_slice(b"\"]\n");
                } else {
                    self.ensure_header((cols, rows))?;
                }
            }
            (Format::ByteLog, Record::Output(at, bytes)) => self.binary(at, b'o', bytes),
            (Format::ByteLog, Record::Input(at, bytes)) => self.binary(at, b'i', bytes),
            _ => {}
        }
        Ok(())
    }

    /// Appends an `"o"` event for `data` (escaped; invalid UTF-8 replaced). A character cut off
    /// at the end is kept for the next record unless `last`.
    fn output_event(&mut self, at: Instant, data: &[u8], last: bool) -> std::io::Result<()> {
        self.ensure_header(DEFAULT_SIZE)?;
        let event_start = self.batch.own.len();
        self.event_start(at, b'o');
        let text_start = self.batch.own.len();
        let mut rest = data;
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    escape_json(&mut self.batch.own, text.as_bytes());
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    escape_json(&mut self.batch.own, valid);
                    match e.error_len() {
                        Some(invalid) => {
                            self.batch.own.extend_from_slice(REPLACEMENT);
                            rest = after.get(invalid..).unwrap_or_default();
                        }
                        None if last => {
                            self.batch.own.extend_from_slice(REPLACEMENT);
                            break;
                        }
                        None => {
                            self.utf8_carry.extend_from_slice(after);
                            break;
                        }
                    }
                }
            }
        }
        if self.batch.own.len() == text_start {
            self.batch.own.truncate(event_start);
        } else {
            self.batch.own.extend_from_slice(b"\"]\n");
        }
        Ok(())
    }

    /// Appends `[<seconds>,"<code>","` for an event at `at`.
    fn event_start(&mut self, at: Instant, code: u8) {
        let micros = at.saturating_duration_since(self.started).as_micros();
        let out = &mut self.batch.own;
        // Writing to a Vec cannot fail.
        let _ = write!(out, "[{}.{:06},\"", micros / 1_000_000, micros % 1_000_000);
        out.extend_from_slice(&[code, b'"', b',', b'"']);
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

    fn binary(&mut self, at: Instant, dir: u8, data: Bytes) {
        let micros = at.saturating_duration_since(self.started).as_micros() as u64;
        let own = &mut self.batch.own;
        own.extend_from_slice(&micros.to_be_bytes());
        own.push(dir);
        own.extend_from_slice(&(data.len() as u32).to_be_bytes());
        self.batch.push_bytes(data);
    }

    fn json_line(&mut self, value: &serde_json::Value) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.batch.own, value).map_err(std::io::Error::other)?;
        self.batch.own.push(b'\n');
        Ok(())
    }

    fn take_file(&mut self) -> std::io::Result<std::fs::File> {
        self.file
            .take()
            .ok_or_else(|| std::io::Error::other("the recording file was lost in a failed write"))
    }

    /// Starts writing the batch on the blocking pool (one call per batch, not per record) once
    /// the previous batch is written; records are encoded into the next batch meanwhile.
    async fn flush(&mut self) -> std::io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.written().await?;
        let mut file = self.take_file()?;
        let spare = std::mem::take(&mut self.spare);
        let batch = std::mem::replace(&mut self.batch, spare);
        self.writing = Some(tokio::task::spawn_blocking(move || {
            let result = batch.write_to(&mut file);
            (file, batch, result)
        }));
        Ok(())
    }

    /// Waits until the batch being written (if any) is written.
    async fn written(&mut self) -> std::io::Result<()> {
        let Some(writing) = self.writing.take() else {
            return Ok(());
        };
        let (file, mut batch, result) = writing.await.map_err(std::io::Error::other)?;
        batch.clear();
        self.spare = batch;
        self.file = Some(file);
        result
    }
}

/// U+FFFD REPLACEMENT CHARACTER, written for bytes that are not UTF-8.
const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

/// For each byte: 0 when it stands for itself inside a JSON string, else the letter after the
/// backslash of its escape (`u` for `\u00XX`).
const JSON_ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

const ONES: u64 = 0x0101_0101_0101_0101;
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `word` that needs escaping in a JSON string: a control
/// character, `"` or `\`. (Exact per byte: no carry crosses a byte boundary.)
fn escape_mask(word: u64) -> u64 {
    // Bytes below 0x80 whose low seven bits plus 0x60 stay below 0x80 are below 0x20.
    let control = !(((word & LOW7) + ONES * 0x60) | word);
    let zero_bytes = |x: u64| !(((x & LOW7) + LOW7) | x);
    let quote = zero_bytes(word ^ (ONES * b'"' as u64));
    let backslash = zero_bytes(word ^ (ONES * b'\\' as u64));
    (control | quote | backslash) & HIGHS
}

/// The 8 bytes of `chunk` (8 long) as a little-endian word: byte `i` is bits `8i..8i+8`.
fn word(chunk: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(chunk);
    u64::from_le_bytes(bytes)
}

/// Appends valid UTF-8 `text` as the inside of a JSON string, escaped as serde_json does it.
/// Text is examined 16 bytes at a time; what needs no escaping is copied in runs, one copy from
/// one escape to the next.
fn escape_json(out: &mut Vec<u8>, text: &[u8]) {
    out.reserve(text.len() + 16);
    let mut copied = 0;
    let blocks = text.chunks_exact(16);
    let tail_at = text.len() - blocks.remainder().len();
    for (n, block) in blocks.enumerate() {
        let mut masks = [0u64; 2];
        for (mask, chunk) in masks.iter_mut().zip(block.chunks_exact(8)) {
            *mask = escape_mask(word(chunk));
        }
        if masks == [0; 2] {
            continue;
        }
        for (i, mut mask) in masks.into_iter().enumerate() {
            while mask != 0 {
                let at = n * 16 + i * 8 + (mask.trailing_zeros() / 8) as usize;
                out.extend_from_slice(&text[copied..at]);
                push_escaped(out, text[at]);
                copied = at + 1;
                mask &= mask - 1;
            }
        }
    }
    for (at, &byte) in text.iter().enumerate().skip(tail_at) {
        if JSON_ESCAPE[byte as usize] != 0 {
            out.extend_from_slice(&text[copied..at]);
            push_escaped(out, byte);
            copied = at + 1;
        }
    }
    out.extend_from_slice(&text[copied..]);
}

/// Appends the JSON escape of `byte` (one that [`JSON_ESCAPE`] marks).
fn push_escaped(out: &mut Vec<u8>, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match JSON_ESCAPE[byte as usize] {
        b'u' => out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[(byte >> 4) as usize],
            HEX[(byte & 0xf) as usize],
        ]),
        letter => out.extend_from_slice(&[b'\\', letter]),
    }
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
    use rand::rngs::StdRng;
    use rand::{Rng as _, SeedableRng as _};

    #[test]
    fn escaping_matches_serde_json() {
        let mut samples: Vec<String> = vec![
            String::new(),
            "plain text that is long enough for several words".into(),
            "\"quoted\" and \\backslashed\\ \u{7f} déjà vu € 😀".into(),
            "\u{1b}[1;32muser@host\u{1b}[0m:~$ ls\r\n".into(),
        ];
        samples.push((0u8..0x80).map(char::from).collect());
        // Seeded, so failures reproduce.
        let mut rng = StdRng::seed_from_u64(0x9e37_79b9_7f4a_7c15);
        for _ in 0..500 {
            let len = rng.random_range(0..40);
            let s: String = (0..len)
                .map(|_| match rng.random_range(0..6) {
                    0 => char::from(rng.random_range(0..0x20) as u8),
                    1 => '"',
                    2 => '\\',
                    3 => 'é',
                    _ => char::from(b'a' + rng.random_range(0..26) as u8),
                })
                .collect();
            samples.push(s);
        }
        for s in samples {
            let mut ours = vec![b'"'];
            escape_json(&mut ours, s.as_bytes());
            ours.push(b'"');
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(&s).unwrap(),
                "{s:?}"
            );
        }
    }

    #[tokio::test]
    async fn asciicast_round_trip_dedupes_and_splits_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recorder::create(dir.path(), "alice-1", Format::Asciicast)
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
        rec.client_stream(1, 3, Bytes::from_static(br#"{"cols":100,"rows":30}"#))
            .await;
        let path = rec.finish().await.unwrap();
        assert!(rec.finish().await.is_err());
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("\"width\":132"), "{}", lines[0]);
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[1].ends_with(",\"o\",\"$ \"]"), "{}", lines[1]);
        assert!(lines[2].ends_with(",\"o\",\"€\"]"), "{}", lines[2]);
        let resize: (f64, String, String) = serde_json::from_str(lines[3]).unwrap();
        assert_eq!((resize.1.as_str(), resize.2.as_str()), ("r", "100x30"));
        let mut out = Vec::new();
        replay(&path, 1000.0, None, &mut out).await.unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "$ €");
    }

    /// However a stream is cut into messages, the recorded text is its lossy UTF-8 decoding,
    /// one event per message that completes a character, nothing lost at the end.
    #[tokio::test]
    async fn asciicast_text_is_the_lossy_decoding_of_the_whole_stream() {
        let pieces: [&[u8]; 8] = [
            b"ls -l\r\n",
            b"\x1b[0m\"q\"\\",
            "déjà € 😀".as_bytes(),
            b"\xff\xfe",
            b"\xe2\x82",
            b"\xf0\x9f\x98",
            b"\x80\xbf",
            b"\t\x00\x07",
        ];
        let mut rng = StdRng::seed_from_u64(42);
        for round in 0..40 {
            let mut stream = Vec::new();
            for _ in 0..rng.random_range(0..60) + 1 {
                stream.extend_from_slice(pieces[rng.random_range(0..pieces.len())]);
            }
            if round % 2 == 0 {
                stream.extend_from_slice(b"\xe2\x82"); // ends inside a character
            }
            let dir = tempfile::tempdir().unwrap();
            let rec = Recorder::create(dir.path(), "cut", Format::Asciicast)
                .await
                .unwrap();
            let mut at = 0;
            let mut seq = 0;
            while at < stream.len() {
                let len = (rng.random_range(0..9) + 1).min(stream.len() - at);
                let chunk = Bytes::copy_from_slice(&stream[at..at + len]);
                rec.agent_stream(seq, 1, chunk).await;
                at += len;
                seq += 1;
            }
            let path = rec.finish().await.unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            let mut recorded = String::new();
            for line in text.lines().skip(1) {
                let (_, kind, data): (f64, String, String) = serde_json::from_str(line).unwrap();
                assert_eq!(kind, "o");
                assert!(!data.is_empty());
                recorded.push_str(&data);
            }
            assert_eq!(recorded, String::from_utf8_lossy(&stream), "round {round}");
        }
    }

    #[tokio::test]
    async fn byte_log_keeps_every_payload_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recorder::create(dir.path(), "port-1", Format::ByteLog)
            .await
            .unwrap();
        // Large payloads are written by reference, small ones copied: both must come out whole.
        let big: Bytes = (0..5000u32).map(|i| i as u8).collect::<Vec<u8>>().into();
        let mut expected = Vec::new();
        for seq in 0..3000i64 {
            let payload = if seq % 3 == 0 {
                big.slice(seq as usize % 100..)
            } else {
                Bytes::from(format!("small {seq}"))
            };
            rec.agent_stream(seq, 1, payload.clone()).await;
            expected.push((true, payload));
            if seq % 7 == 0 {
                rec.agent_stream(seq, 1, Bytes::from_static(b"retransmitted"))
                    .await;
                let input = Bytes::from(format!("in {seq}"));
                rec.client_stream(seq / 7, 1, input.clone()).await;
                expected.push((false, input));
            }
        }
        rec.agent_stream(i64::MAX, 1, Bytes::from_static(b"last"))
            .await;
        expected.push((true, Bytes::from_static(b"last")));
        rec.agent_stream(i64::MAX, 1, Bytes::from_static(b"again"))
            .await;
        let path = rec.finish().await.unwrap();
        let (header, records) = parse_byte_log(&path).unwrap();
        assert_eq!(header["session_id"], "port-1");
        let got: Vec<(bool, Bytes)> = records
            .iter()
            .map(|r| (r.from_agent, r.data.clone()))
            .collect();
        assert!(
            got == expected,
            "{} records, {} expected",
            got.len(),
            expected.len()
        );
        assert!(records.windows(2).all(|w| w[0].at <= w[1].at));
    }
}
