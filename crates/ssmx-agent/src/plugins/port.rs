//! `Port` sessions (PROTOCOL.md §8.4–§8.8, §9): TCP to `host:portNumber` from the target.
//!
//! * Standard-stream mode (no `type`, e.g. an SSH ProxyCommand): one connection; the session
//!   ends with success when the destination closes it.
//! * Basic mode (`LocalPortForwarding` with a client older than 1.1.70): one connection at a
//!   time; DisconnectToPort or a destination close drops it, the next payload re-dials.
//! * Multiplexed mode (`LocalPortForwarding`, newer clients): the Output byte stream in each
//!   direction carries an smux v1 session, the agent is its server; each stream the client opens
//!   is one connection to the destination, and a failed dial is reported with ConnectToPortError.
//!
//! The TerminateSession flag ends the session in every mode. When the session fails (its data
//! channel or the smux session), destination connections are reset rather than closed, so the
//! programs at the destination see the failure.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU64;

use async_smux::{MuxBuilder, MuxStream};
use bytes::Bytes;
use ssmx_protocol::payload::PortFlag;
use ssmx_protocol::version::{
    agent_compare, AGENT_KEEPALIVE_OFF_CLIENT_EXCLUSIVE, AGENT_MUX_MIN_CLIENT,
};
use ssmx_protocol::PayloadType;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::session::io::{Input, Output, OutputClosed, PluginContext, PluginOutcome};

/// `type` value that selects local port forwarding.
pub(crate) const LOCAL_PORT_FORWARDING: &str = "LocalPortForwarding";

/// Destinations a session may never reach: the cloud instance metadata, DNS, time and
/// activation services (PROTOCOL.md Appendix A).
const DENIED_ADDRESSES: [IpAddr; 9] = [
    IpAddr::V4(std::net::Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V4(std::net::Ipv4Addr::new(169, 254, 169, 253)),
    IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x253)),
    IpAddr::V4(std::net::Ipv4Addr::new(169, 254, 169, 123)),
    IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x123)),
    IpAddr::V4(std::net::Ipv4Addr::new(169, 254, 169, 250)),
    IpAddr::V4(std::net::Ipv4Addr::new(169, 254, 169, 251)),
    IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x240)),
];

/// smux keep-alive when the client has it on (PROTOCOL.md §8.8): NOP every 10 s …
const SMUX_KEEPALIVE_INTERVAL_SECS: u64 = 10;
/// … and the session is dead after 30 s without any frame.
const SMUX_KEEPALIVE_TIMEOUT_SECS: u64 = 30;

/// Bytes buffered between the smux server and the data channel in each direction: enough for a
/// few large payloads in flight, small enough to keep a session's memory bounded.
const MUX_PIPE_BUFFER: usize = 512 * 1024;

/// Copy buffer of each forwarded connection, per direction.
const STREAM_COPY_BUFFER: usize = 64 * 1024;

/// Largest smux frame sent to a client that is not ssmx: xtaci/smux's default MaxFrameSize,
/// what the official agent sends and all that some clients accept (PROTOCOL.md §9).
const OFFICIAL_SMUX_MAX_FRAME: usize = 32 * 1024;

/// Where a Port session connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PortSpec {
    /// Destination host (`localhost` when the document gives none).
    pub(crate) host: String,
    /// Destination port.
    pub(crate) port: u16,
    /// `type` is `LocalPortForwarding`.
    pub(crate) local_port_forwarding: bool,
}

/// How a Port session moves bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PortMode {
    /// One connection, the session ends with it.
    StandardStream,
    /// One connection at a time, re-dialled after a disconnect.
    Basic,
    /// smux-multiplexed connections; `keepalive` when the client expects smux keep-alive.
    Mux {
        /// Send NOPs and time out a silent peer.
        keepalive: bool,
    },
}

impl PortSpec {
    /// The mode the official agent picks for a client of `client_version` (PROTOCOL.md §8.4).
    pub(crate) fn mode(&self, client_version: &str) -> PortMode {
        if !self.local_port_forwarding {
            return PortMode::StandardStream;
        }
        if agent_compare(client_version, AGENT_MUX_MIN_CLIENT).is_lt() {
            return PortMode::Basic;
        }
        PortMode::Mux {
            keepalive: !agent_compare(client_version, AGENT_KEEPALIVE_OFF_CLIENT_EXCLUSIVE).is_gt(),
        }
    }
}

/// Runs the port session until it ends, is terminated by the client or cancelled.
pub(crate) async fn run(spec: PortSpec, ctx: PluginContext) -> PluginOutcome {
    let mode = spec.mode(&ctx.client_version);
    tracing::info!(host = %spec.host, port = spec.port, ?mode, "port session");
    if let Some(t) = ctx.output.transcript() {
        t.marker(&format!(
            "port session to {}:{} ({mode:?})",
            spec.host, spec.port
        ));
    }
    match mode {
        PortMode::StandardStream => run_single(spec, ctx, false).await,
        PortMode::Basic => run_single(spec, ctx, true).await,
        PortMode::Mux { keepalive } => run_mux(spec, ctx, keepalive).await,
    }
}

/// Resolves and connects to the destination, trying each allowed address in turn.
async fn dial(host: &str, port: u16) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let allowed: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|a| !DENIED_ADDRESSES.contains(&a.ip()))
        .collect();
    if allowed.is_empty() {
        return Err(format!(
            "connections to {host}:{port} are not allowed (denied address {})",
            addrs
                .first()
                .map(|a| a.ip().to_string())
                .unwrap_or_default()
        ));
    }
    let mut last_error = String::new();
    for addr in allowed {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last_error = format!("{addr}: {e}"),
        }
    }
    Err(format!("Unable to connect to {host}:{port}: {last_error}"))
}

/// How the destination side of a single connection ended.
#[derive(Debug)]
enum ReadEnd {
    /// The destination closed it.
    Eof,
    /// Reading failed.
    Error(String),
    /// The data channel is gone.
    OutputClosed,
}

/// One live destination connection: its write half here, its read half in a task.
struct Connection {
    writer: OwnedWriteHalf,
    ended: oneshot::Receiver<ReadEnd>,
    // Dropping the set aborts the reader task.
    _reader: JoinSet<()>,
}

impl Connection {
    fn start(stream: TcpStream, output: Output, max_payload: usize) -> Self {
        let (mut reader, writer) = stream.into_split();
        let (tx, ended) = oneshot::channel();
        let mut tasks = JoinSet::new();
        tasks.spawn(
            async move {
                let mut buf = vec![0u8; max_payload.max(1)];
                let end = loop {
                    match reader.read(&mut buf).await {
                        Ok(0) => break ReadEnd::Eof,
                        Ok(n) => {
                            let chunk = Bytes::copy_from_slice(&buf[..n]);
                            if output.send(PayloadType::Output, chunk).await.is_err() {
                                break ReadEnd::OutputClosed;
                            }
                        }
                        Err(e) => break ReadEnd::Error(e.to_string()),
                    }
                };
                let _ = tx.send(end);
            }
            .in_current_span(),
        );
        Self {
            writer,
            ended,
            _reader: tasks,
        }
    }

    /// Ends the connection with a reset instead of a close.
    fn reset(self) {
        reset_on_close(self.writer.as_ref());
        // No FIN from the write half: the socket is closed, with the reset, once the aborted
        // reader task has let go of the read half.
        self.writer.forget();
    }
}

/// Makes closing `stream` send a reset (RST) instead of a FIN, so the destination sees that the
/// session failed.
fn reset_on_close(stream: &TcpStream) {
    if let Err(e) = stream.set_zero_linger() {
        tracing::debug!("cannot make the destination connection reset on close: {e}");
    }
}

/// How the session ended the plugin: the connection is reset when the session failed, otherwise
/// closed.
fn cancelled(connection: Option<Connection>, abort: &CancellationToken) -> PluginOutcome {
    if let (Some(connection), true) = (connection, abort.is_cancelled()) {
        connection.reset();
    }
    PluginOutcome::cancelled()
}

/// Waits for the session to end the plugin once the data channel is gone, dropping what the
/// client still sent (unread, it would hold up the session's receive loop).
async fn until_cancelled(ctx: &mut PluginContext) {
    let (cancel, input) = (&ctx.cancel, &mut ctx.input);
    let discard = async {
        while input.recv().await.is_some() {}
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = cancel.cancelled() => {}
        () = discard => {}
    }
}

/// Waits for the end of the connection's reading side; never resolves without a connection.
async fn connection_end(connection: &mut Option<Connection>) -> ReadEnd {
    match connection {
        Some(c) => (&mut c.ended).await.unwrap_or(ReadEnd::OutputClosed),
        None => std::future::pending().await,
    }
}

/// Standard-stream (`redial` false) and basic (`redial` true) modes.
async fn run_single(spec: PortSpec, mut ctx: PluginContext, redial: bool) -> PluginOutcome {
    let max_payload = ctx.max_payload;
    let mut connection = match dial(&spec.host, spec.port).await {
        Ok(stream) => Some(Connection::start(stream, ctx.output.clone(), max_payload)),
        Err(e) => return PluginOutcome::failed(e),
    };
    loop {
        tokio::select! {
            biased;
            () = ctx.cancel.cancelled() => return cancelled(connection, &ctx.abort),
            end = connection_end(&mut connection) => {
                tracing::debug!(?end, "destination connection ended");
                match end {
                    ReadEnd::OutputClosed => {
                        until_cancelled(&mut ctx).await;
                        return cancelled(connection, &ctx.abort);
                    }
                    _ if redial => {
                        connection = None;
                        if let Some(t) = ctx.output.transcript() {
                            t.marker("destination connection closed");
                        }
                    }
                    ReadEnd::Eof => return PluginOutcome::closed(),
                    ReadEnd::Error(e) => {
                        return PluginOutcome::failed(format!("reading from the destination failed: {e}"))
                    }
                }
            }
            item = ctx.input.recv() => {
                let Some(item) = item else {
                    until_cancelled(&mut ctx).await;
                    return cancelled(connection, &ctx.abort);
                };
                match item.payload_type {
                    PayloadType::Output => {
                        if connection.is_none() {
                            if !redial {
                                continue;
                            }
                            match dial(&spec.host, spec.port).await {
                                Ok(stream) => {
                                    if let Some(t) = ctx.output.transcript() {
                                        t.marker("destination connection reopened");
                                    }
                                    connection = Some(Connection::start(stream, ctx.output.clone(), max_payload));
                                }
                                Err(e) => return PluginOutcome::failed(e),
                            }
                        }
                        let conn = connection.as_mut().expect("connected above");
                        let written = tokio::select! {
                            r = conn.writer.write_all(&item.payload) => r,
                            () = ctx.cancel.cancelled() => return cancelled(connection, &ctx.abort),
                        };
                        if let Err(e) = written {
                            if !redial {
                                return PluginOutcome::failed(format!("writing to the destination failed: {e}"));
                            }
                            connection = None;
                        }
                    }
                    PayloadType::Flag => match PortFlag::from_payload(&item.payload) {
                        Ok(PortFlag::TerminateSession) => return PluginOutcome::closed(),
                        Ok(PortFlag::DisconnectToPort) => connection = None,
                        other => tracing::debug!(?other, "ignoring flag"),
                    },
                    other => tracing::debug!(payload_type = ?other, "ignoring input"),
                }
            }
        }
    }
}

/// Multiplexed mode: an smux server over the Output byte streams.
async fn run_mux(spec: PortSpec, mut ctx: PluginContext, keepalive: bool) -> PluginOutcome {
    let (agent_end, mux_end) = tokio::io::duplex(MUX_PIPE_BUFFER);
    let mut builder = MuxBuilder::server();
    if keepalive {
        builder
            .with_keep_alive_interval(
                NonZeroU64::new(SMUX_KEEPALIVE_INTERVAL_SECS).expect("non-zero"),
            )
            .with_keep_alive_timeout(
                NonZeroU64::new(SMUX_KEEPALIVE_TIMEOUT_SECS).expect("non-zero"),
            );
    }
    let (_connector, mut acceptor, worker) = builder.with_connection(mux_end).build();
    let (mut from_mux, mut to_mux) = tokio::io::split(agent_end);

    // Dropping these sets (on every return) aborts the worker, the uplink and every connection.
    let mut infrastructure = JoinSet::new();
    let (worker_tx, mut worker_done) = oneshot::channel();
    infrastructure.spawn(
        async move {
            let _ = worker_tx.send(worker.await.map_err(|e| e.to_string()));
        }
        .in_current_span(),
    );
    let (uplink_tx, mut uplink_done) = oneshot::channel();
    let output = ctx.output.clone();
    let max_payload = ctx.max_payload.max(1);
    // Destination connections are reset when the session fails, or when the smux session does.
    let reset = ctx.abort.child_token();
    let max_frame = if ctx.ssmx_client {
        STREAM_COPY_BUFFER
    } else {
        OFFICIAL_SMUX_MAX_FRAME
    };
    infrastructure.spawn(
        async move {
            let mut buf = vec![0u8; max_payload];
            let result = loop {
                match from_mux.read(&mut buf).await {
                    Ok(0) | Err(_) => break Ok(()),
                    Ok(n) => {
                        let chunk = Bytes::copy_from_slice(&buf[..n]);
                        if let Err(e) = output.send(PayloadType::Output, chunk).await {
                            break Err(e);
                        }
                    }
                }
            };
            let _ = uplink_tx.send(result);
        }
        .in_current_span(),
    );
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = ctx.cancel.cancelled() => return PluginOutcome::cancelled(),
            result = &mut worker_done => {
                return match result {
                    Ok(Err(e)) => {
                        reset.cancel();
                        PluginOutcome::failed(format!("port multiplexing failed: {e}"))
                    }
                    _ => PluginOutcome::closed(),
                };
            }
            result = &mut uplink_done => {
                if matches!(result, Ok(Err(OutputClosed))) {
                    until_cancelled(&mut ctx).await;
                    return PluginOutcome::cancelled();
                }
                return PluginOutcome::closed();
            }
            stream = acceptor.accept() => {
                let Some(stream) = stream else {
                    return PluginOutcome::closed();
                };
                let forward = forward_stream(
                    stream,
                    spec.clone(),
                    ctx.output.clone(),
                    max_frame,
                    reset.clone(),
                );
                connections.spawn(forward.in_current_span());
            }
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = joined {
                    tracing::warn!("a forwarded connection's task failed: {e}");
                }
            }
            item = ctx.input.recv() => {
                let Some(Input { payload_type, payload }) = item else {
                    until_cancelled(&mut ctx).await;
                    return PluginOutcome::cancelled();
                };
                match payload_type {
                    PayloadType::Output => {
                        let written = tokio::select! {
                            r = to_mux.write_all(&payload) => r,
                            () = ctx.cancel.cancelled() => return PluginOutcome::cancelled(),
                        };
                        if written.is_err() {
                            return PluginOutcome::closed();
                        }
                    }
                    PayloadType::Flag => match PortFlag::from_payload(&payload) {
                        Ok(PortFlag::TerminateSession) => return PluginOutcome::closed(),
                        other => tracing::debug!(?other, "ignoring flag"),
                    },
                    other => tracing::debug!(payload_type = ?other, "ignoring input"),
                }
            }
        }
    }
}

/// A destination connection of a multiplexed session: reset instead of closed when it is
/// dropped once `reset` is cancelled.
struct Destination {
    stream: TcpStream,
    reset: CancellationToken,
}

impl Drop for Destination {
    fn drop(&mut self) {
        if self.reset.is_cancelled() {
            reset_on_close(&self.stream);
        }
    }
}

/// One smux stream: dial the destination and copy both ways, half-closing as each side ends.
/// Writes to the stream carry at most `max_frame` bytes, and async_smux sends each write as one
/// frame, so no frame to the client is larger.
async fn forward_stream(
    mut stream: MuxStream<DuplexStream>,
    spec: PortSpec,
    output: Output,
    max_frame: usize,
    reset: CancellationToken,
) {
    let id = stream.get_stream_id();
    match dial(&spec.host, spec.port).await {
        Err(e) => {
            tracing::warn!(stream = id, "{e}");
            if let Some(t) = output.transcript() {
                t.marker(&format!("stream {id}: {e}"));
            }
            let _ = output
                .send(PayloadType::Flag, PortFlag::ConnectToPortError.to_payload())
                .await;
            let _ = stream.shutdown().await;
        }
        Ok(tcp) => {
            let mut destination = Destination { stream: tcp, reset };
            if let Some(t) = output.transcript() {
                t.marker(&format!(
                    "stream {id}: connected to {}:{}",
                    spec.host, spec.port
                ));
            }
            let result = tokio::io::copy_bidirectional_with_sizes(
                &mut stream,
                &mut destination.stream,
                STREAM_COPY_BUFFER,
                max_frame,
            )
            .await;
            let summary = match result {
                Ok((up, down)) => {
                    format!("stream {id}: closed ({up} bytes to, {down} from the destination)")
                }
                Err(e) => format!("stream {id}: ended: {e}"),
            };
            tracing::debug!("{summary}");
            if let Some(t) = output.transcript() {
                t.marker(&summary);
            }
        }
    }
}

/// Reads `portNumber` (a string or a number) and `host` from substituted Port properties.
pub(crate) fn spec_from_properties(properties: &serde_json::Value) -> Result<PortSpec, String> {
    let text = |key: &str| -> Option<String> {
        match properties.get(key)? {
            serde_json::Value::String(s) => Some(s.trim().to_owned()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Array(items) if items.len() == 1 => {
                items[0].as_str().map(|s| s.trim().to_owned())
            }
            _ => None,
        }
    };
    let port_text = text("portNumber").ok_or("the Port session has no portNumber")?;
    let port: u16 = port_text
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("invalid portNumber {port_text:?}"))?;
    let host = text("host")
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    let local_port_forwarding = text("type").as_deref() == Some(LOCAL_PORT_FORWARDING);
    Ok(PortSpec {
        host,
        port,
        local_port_forwarding,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::session::io::test_support::context;
    use serde_json::json;
    use tokio::net::TcpListener;

    /// How long tests wait for one expected event before failing.
    const TEST_WAIT: Duration = Duration::from_secs(10);

    /// A port on 127.0.0.1 that refuses connections: bound, so that nothing else can take it
    /// (nor an outgoing connection pick it as its own port), but not listening. The port stays
    /// reserved while the returned socket lives.
    fn refusing_port() -> (tokio::net::TcpSocket, u16) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = socket.local_addr().unwrap().port();
        (socket, port)
    }

    /// A destination that accepts one connection, sends `greeting` and reports when it has
    /// accepted and, later, how reading from the connection ended.
    async fn watched_destination(
        greeting: &'static [u8],
    ) -> (
        u16,
        oneshot::Receiver<()>,
        tokio::task::JoinHandle<std::io::Result<usize>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (accepted_tx, accepted) = oneshot::channel();
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            socket.write_all(greeting).await.unwrap();
            let _ = accepted_tx.send(());
            let mut buf = [0u8; 64];
            socket.read(&mut buf).await
        });
        (port, accepted, task)
    }

    /// smux v1 SYN for stream 3, exactly as the official client opens its first stream.
    const SYN_STREAM_3: [u8; 8] = [1, 0, 0, 0, 3, 0, 0, 0];

    async fn echo_server() -> (u16, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        (port, task)
    }

    fn output(payload: &[u8]) -> Input {
        Input {
            payload_type: PayloadType::Output,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    fn flag(flag: PortFlag) -> Input {
        Input {
            payload_type: PayloadType::Flag,
            payload: flag.to_payload(),
        }
    }

    #[test]
    fn properties_and_modes_follow_the_official_rules() {
        let spec = spec_from_properties(&json!({"portNumber": "22"})).unwrap();
        assert_eq!(spec.host, "localhost");
        assert_eq!(spec.mode("1.2.677.0"), PortMode::StandardStream);
        let lpf = spec_from_properties(
            &json!({"portNumber": "80", "type": "LocalPortForwarding", "host": "db", "localPortNumber": "0"}),
        )
        .unwrap();
        assert_eq!(lpf.host, "db");
        assert_eq!(lpf.mode("1.1.69.0"), PortMode::Basic);
        assert_eq!(lpf.mode(""), PortMode::Basic);
        assert_eq!(lpf.mode("1.1.70"), PortMode::Mux { keepalive: true });
        assert_eq!(lpf.mode("1.2.331.0"), PortMode::Mux { keepalive: true });
        assert_eq!(lpf.mode("1.2.677.0"), PortMode::Mux { keepalive: false });
        assert!(spec_from_properties(&json!({"portNumber": "x"})).is_err());
        assert!(spec_from_properties(&json!({})).is_err());
    }

    #[tokio::test]
    async fn denied_destinations_are_refused_before_dialling() {
        let err = dial("169.254.169.254", 80).await.unwrap_err();
        assert!(err.contains("not allowed"), "{err}");
    }

    #[tokio::test]
    async fn standard_stream_echoes_and_ends_when_the_destination_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 5];
            socket.read_exact(&mut buf).await.unwrap();
            socket.write_all(&buf).await.unwrap();
        });
        let (ctx, input, mut out, _cancel) = context(1024, "1.2.677.0");
        let spec = PortSpec {
            host: "127.0.0.1".into(),
            port,
            local_port_forwarding: false,
        };
        let session = tokio::spawn(run(spec, ctx));
        input.send(output(b"hello")).await.unwrap();
        let echoed = tokio::time::timeout(TEST_WAIT, out.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&echoed.payload[..], b"hello");
        assert_eq!(session.await.unwrap(), PluginOutcome::closed());
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_refusing_port_stays_reserved_and_refuses_connections() {
        let (_reserved, port) = refusing_port();
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_err());
        let refused = TcpStream::connect(("127.0.0.1", port)).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn refused_destination_fails_the_session() {
        let (_reserved, port) = refusing_port();
        let (ctx, _input, _out, _cancel) = context(1024, "1.2.677.0");
        let spec = PortSpec {
            host: "127.0.0.1".into(),
            port,
            local_port_forwarding: false,
        };
        let outcome = run(spec, ctx).await;
        assert_eq!(outcome.status, "Failed");
        assert!(
            outcome.output.contains("Unable to connect"),
            "{}",
            outcome.output
        );
    }

    #[tokio::test]
    async fn basic_mode_redials_after_disconnect_and_stops_on_terminate() {
        let (port, server) = echo_server().await;
        let (ctx, input, mut out, _cancel) = context(1024, "1.1.69.0");
        let spec = PortSpec {
            host: "127.0.0.1".into(),
            port,
            local_port_forwarding: true,
        };
        let session = tokio::spawn(run(spec, ctx));
        for round in [&b"first"[..], &b"second"[..]] {
            input.send(output(round)).await.unwrap();
            let mut got = Vec::new();
            while got.len() < round.len() {
                let item = tokio::time::timeout(TEST_WAIT, out.recv())
                    .await
                    .unwrap()
                    .unwrap();
                got.extend_from_slice(&item.payload);
            }
            assert_eq!(got, round);
            input.send(flag(PortFlag::DisconnectToPort)).await.unwrap();
        }
        input.send(flag(PortFlag::TerminateSession)).await.unwrap();
        assert_eq!(session.await.unwrap(), PluginOutcome::closed());
        server.abort();
    }

    #[tokio::test]
    async fn mux_mode_reports_a_refused_stream_with_connect_to_port_error() {
        let (_reserved, port) = refusing_port();
        let (ctx, input, mut out, cancel) = context(1024, "1.2.677.0");
        let spec = PortSpec {
            host: "127.0.0.1".into(),
            port,
            local_port_forwarding: true,
        };
        let session = tokio::spawn(run(spec, ctx));
        input.send(output(&SYN_STREAM_3)).await.unwrap();
        let mut saw_error = false;
        while !saw_error {
            let item = tokio::time::timeout(TEST_WAIT, out.recv())
                .await
                .unwrap()
                .unwrap();
            saw_error = item.payload_type == PayloadType::Flag
                && PortFlag::from_payload(&item.payload).unwrap() == PortFlag::ConnectToPortError;
        }
        cancel.cancel();
        assert_eq!(session.await.unwrap(), PluginOutcome::cancelled());
    }

    /// Runs a port session (multiplexed when `mux`) to a watched destination and ends it from
    /// outside, as a failure when `failed`. Without `output_open` the data channel is gone
    /// first: the destination's greeting finds it closed. Returns how the destination's read
    /// ended.
    async fn end_from_outside(
        mux: bool,
        failed: bool,
        output_open: bool,
    ) -> std::io::Result<usize> {
        // Only a greeting that goes nowhere: data left unread when a socket is closed would
        // make the close a reset in any case.
        let greeting: &'static [u8] = if output_open { b"" } else { b"hello" };
        let (port, accepted, destination) = watched_destination(greeting).await;
        let (ctx, input, out, cancel) = context(1024, "1.2.677.0");
        let abort = ctx.abort.clone();
        let spec = PortSpec {
            host: "127.0.0.1".into(),
            port,
            local_port_forwarding: mux,
        };
        if !output_open {
            drop(out);
        }
        let session = tokio::spawn(run(spec, ctx));
        if mux {
            input.send(output(&SYN_STREAM_3)).await.unwrap();
        }
        tokio::time::timeout(TEST_WAIT, accepted)
            .await
            .unwrap()
            .unwrap();
        if !output_open {
            // Time for the greeting to meet the closed data channel.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if failed {
            abort.cancel();
        }
        cancel.cancel();
        assert_eq!(session.await.unwrap(), PluginOutcome::cancelled());
        tokio::time::timeout(TEST_WAIT, destination)
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn a_failed_session_resets_its_destination_connections() {
        for (mux, output_open) in [(false, true), (true, true), (false, false), (true, false)] {
            let read = end_from_outside(mux, true, output_open).await;
            let kind = read.as_ref().map_err(std::io::Error::kind);
            assert_eq!(
                kind,
                Err(std::io::ErrorKind::ConnectionReset),
                "mux {mux}, data channel open {output_open}: {read:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_session_ended_normally_closes_its_destination_connections() {
        for mux in [false, true] {
            let read = end_from_outside(mux, false, true).await;
            assert_eq!(read.unwrap(), 0, "mux {mux}");
        }
    }
}
