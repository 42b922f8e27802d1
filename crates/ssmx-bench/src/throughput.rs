//! Port-forwarding throughput: a port session through the plugin to a TCP server of ours; upload
//! and download timed separately, every byte checked.
//!
//! The server speaks a tiny protocol on each connection: a 9-byte request, the operation byte and
//! a big-endian u64 length. [`UPLOAD`]: the server reads that many bytes and answers one status
//! byte once all arrived. [`DOWNLOAD`]: the server writes that many bytes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Request byte: the client sends, the server sinks.
const UPLOAD: u8 = b'U';
/// Request byte: the server sends, the client sinks.
const DOWNLOAD: u8 = b'D';
/// Answer to an upload whose bytes all arrived intact.
const UPLOAD_OK: u8 = b'K';
/// Answer to an upload whose bytes differed from the pattern.
const UPLOAD_CORRUPT: u8 = b'X';
/// Request length: operation byte + u64 length.
const REQUEST_LEN: usize = 9;
/// Bytes per read or write call: large enough that syscalls are not what is measured.
const IO_CHUNK: usize = 256 * 1024;
/// Length of the repeating test pattern; not a divisor of typical frame sizes, so a misplaced
/// chunk shows.
const PATTERN_LEN: usize = 1024 * 1024 + 7;
/// How long the plugin may take to start listening on its local port.
const LISTEN_DEADLINE: Duration = Duration::from_secs(30);
/// Hang guard for one direction of the transfer (far above any sane transfer time).
const TRANSFER_DEADLINE: Duration = Duration::from_secs(600);

/// Figures of one throughput run.
#[derive(Clone, Debug, Serialize)]
pub struct ThroughputReport {
    /// Bytes moved in each direction.
    pub bytes_each_way: u64,
    /// Client → remote TCP server, decimal megabytes per second.
    pub upload_mb_per_s: f64,
    /// Remote TCP server → client, decimal megabytes per second.
    pub download_mb_per_s: f64,
    /// Seconds the upload took.
    pub upload_seconds: f64,
    /// Seconds the download took.
    pub download_seconds: f64,
    /// What the transfer cost each process in CPU time.
    pub cpu_seconds_per_gb: Option<CpuPerGb>,
}

/// User plus system CPU seconds per GB forwarded, both directions together.
#[derive(Clone, Debug, Serialize)]
pub struct CpuPerGb {
    /// The gateway: relaying, and recording when it is on.
    pub gateway: f64,
    /// The agent.
    pub agent: f64,
    /// The session-manager-plugin.
    pub plugin: f64,
}

/// The remote end: a TCP server on 127.0.0.1 that sinks and sources the pattern. Its tasks end
/// when it is dropped.
pub struct PatternServer {
    addr: SocketAddr,
    tasks: JoinSet<()>,
}

impl PatternServer {
    /// Binds 127.0.0.1:0 and starts accepting.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind the benchmark's TCP server")?;
        let addr = listener.local_addr()?;
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                match listener.accept().await {
                    Ok((conn, _)) => {
                        connections.spawn(async move {
                            if let Err(e) = serve(conn).await {
                                tracing::warn!("benchmark server connection: {e:#}");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!("benchmark server accept: {e}");
                        return;
                    }
                }
                // Reap finished connections so the set does not grow.
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Self { addr, tasks })
    }

    /// The port the agent must dial.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for PatternServer {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

async fn serve(mut conn: TcpStream) -> anyhow::Result<()> {
    conn.set_nodelay(true)?;
    let pattern = pattern();
    let mut buf = vec![0u8; IO_CHUNK];
    loop {
        let mut request = [0u8; REQUEST_LEN];
        match conn.read_exact(&mut request).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let len = u64::from_be_bytes(request[1..].try_into().expect("8 bytes"));
        match request[0] {
            UPLOAD => {
                let intact = sink(&mut conn, &pattern, &mut buf, len).await?;
                let answer = if intact { UPLOAD_OK } else { UPLOAD_CORRUPT };
                conn.write_all(&[answer]).await?;
            }
            DOWNLOAD => source(&mut conn, &pattern, len).await?,
            other => bail!("unknown request byte {other:#04x}"),
        }
    }
}

/// Writes `len` pattern bytes.
async fn source(conn: &mut TcpStream, pattern: &[u8], len: u64) -> std::io::Result<()> {
    let mut offset = 0u64;
    while offset < len {
        let at = (offset % PATTERN_LEN as u64) as usize;
        let n = (pattern.len() - at)
            .min(IO_CHUNK)
            .min(usize::try_from(len - offset).unwrap_or(usize::MAX));
        conn.write_all(&pattern[at..at + n]).await?;
        offset += n as u64;
    }
    conn.flush().await
}

/// Reads exactly `len` bytes and tells whether they equal the pattern.
async fn sink(
    conn: &mut TcpStream,
    pattern: &[u8],
    buf: &mut [u8],
    len: u64,
) -> anyhow::Result<bool> {
    let mut offset = 0u64;
    let mut intact = true;
    while offset < len {
        let want = buf
            .len()
            .min(usize::try_from(len - offset).unwrap_or(usize::MAX));
        let n = conn.read(&mut buf[..want]).await?;
        if n == 0 {
            bail!("connection closed after {offset} of {len} bytes");
        }
        intact &= matches_pattern(pattern, offset, &buf[..n]);
        offset += n as u64;
    }
    Ok(intact)
}

/// The repeating test pattern (xorshift bytes, so reordering or loss shows).
fn pattern() -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..PATTERN_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// True when `data` equals the pattern starting at stream offset `offset`.
fn matches_pattern(pattern: &[u8], offset: u64, mut data: &[u8]) -> bool {
    let mut at = (offset % pattern.len() as u64) as usize;
    while !data.is_empty() {
        let n = data.len().min(pattern.len() - at);
        if data[..n] != pattern[at..at + n] {
            return false;
        }
        data = &data[n..];
        at = 0;
    }
    true
}

/// Connects to the plugin's local port once it listens, or fails after [`LISTEN_DEADLINE`] or
/// as soon as `alive` reports the plugin gone.
pub async fn connect_when_listening(
    port: u16,
    mut alive: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<TcpStream> {
    let deadline = Instant::now() + LISTEN_DEADLINE;
    loop {
        match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(conn) => {
                conn.set_nodelay(true)?;
                return Ok(conn);
            }
            Err(e) if Instant::now() >= deadline => {
                bail!(
                    "the plugin did not listen on 127.0.0.1:{port} within {LISTEN_DEADLINE:?}: {e}"
                )
            }
            Err(_) => {
                alive()?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Uploads then downloads `bytes` over `conn` (a connection through the forward).
pub async fn measure(conn: &mut TcpStream, bytes: u64) -> anyhow::Result<ThroughputReport> {
    let pattern = pattern();
    let upload = tokio::time::timeout(TRANSFER_DEADLINE, upload(conn, &pattern, bytes))
        .await
        .context("upload hung")??;
    let download = tokio::time::timeout(TRANSFER_DEADLINE, download(conn, &pattern, bytes))
        .await
        .context("download hung")??;
    let rate = |d: Duration| bytes as f64 / 1e6 / d.as_secs_f64().max(f64::MIN_POSITIVE);
    Ok(ThroughputReport {
        bytes_each_way: bytes,
        upload_mb_per_s: rate(upload),
        download_mb_per_s: rate(download),
        upload_seconds: upload.as_secs_f64(),
        download_seconds: download.as_secs_f64(),
        cpu_seconds_per_gb: None,
    })
}

fn request(op: u8, len: u64) -> [u8; REQUEST_LEN] {
    let mut r = [0u8; REQUEST_LEN];
    r[0] = op;
    r[1..].copy_from_slice(&len.to_be_bytes());
    r
}

/// Time from the first byte written until the server confirms the last one arrived.
async fn upload(conn: &mut TcpStream, pattern: &[u8], len: u64) -> anyhow::Result<Duration> {
    let start = Instant::now();
    conn.write_all(&request(UPLOAD, len)).await?;
    source(conn, pattern, len).await?;
    let mut answer = [0u8; 1];
    conn.read_exact(&mut answer)
        .await
        .context("the forward closed before the upload was confirmed")?;
    match answer[0] {
        UPLOAD_OK => Ok(start.elapsed()),
        UPLOAD_CORRUPT => bail!("uploaded bytes arrived corrupted at the remote server"),
        other => bail!("unexpected upload answer {other:#04x}"),
    }
}

/// Time from the request until the last byte arrived.
async fn download(conn: &mut TcpStream, pattern: &[u8], len: u64) -> anyhow::Result<Duration> {
    let start = Instant::now();
    conn.write_all(&request(DOWNLOAD, len)).await?;
    let mut buf = vec![0u8; IO_CHUNK];
    if !sink(conn, pattern, &mut buf, len).await? {
        bail!("downloaded bytes arrived corrupted");
    }
    Ok(start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_check_spans_the_wrap_around() {
        let p = pattern();
        let mut stream = p[PATTERN_LEN - 10..].to_vec();
        stream.extend_from_slice(&p[..20]);
        assert!(matches_pattern(&p, (PATTERN_LEN - 10) as u64, &stream));
        assert!(matches_pattern(&p, (2 * PATTERN_LEN - 10) as u64, &stream));
        stream[15] ^= 1;
        assert!(!matches_pattern(&p, (PATTERN_LEN - 10) as u64, &stream));
    }

    #[tokio::test]
    async fn server_round_trips_both_directions_directly() {
        let server = PatternServer::start().await.unwrap();
        let mut conn = TcpStream::connect(("127.0.0.1", server.port()))
            .await
            .unwrap();
        let report = measure(&mut conn, 3 * PATTERN_LEN as u64 + 5)
            .await
            .unwrap();
        assert_eq!(report.bytes_each_way, 3 * PATTERN_LEN as u64 + 5);
        assert!(report.upload_mb_per_s > 0.0 && report.download_mb_per_s > 0.0);
    }

    #[tokio::test]
    async fn server_reports_corrupted_uploads() {
        let server = PatternServer::start().await.unwrap();
        let mut conn = TcpStream::connect(("127.0.0.1", server.port()))
            .await
            .unwrap();
        let mut data = pattern()[..1000].to_vec();
        data[500] ^= 0xff;
        conn.write_all(&request(UPLOAD, 1000)).await.unwrap();
        conn.write_all(&data).await.unwrap();
        let mut answer = [0u8; 1];
        conn.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer[0], UPLOAD_CORRUPT);
    }
}
