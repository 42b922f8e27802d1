//! Port sessions on the client side (PROTOCOL.md §8.4–§8.8, §9): standard-stream, basic and
//! smux-multiplexed forwarding of local connections through one session.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::Value;
use ssmx_protocol::payload::PortFlag;
use ssmx_protocol::version::{
    client_sees_greater, CLIENT_KEEPALIVE_OFF_AGENT_EXCLUSIVE, CLIENT_MUX_MIN_AGENT_EXCLUSIVE,
    CLIENT_TERMINATE_FLAG_AGENT_EXCLUSIVE,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, Join};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{broadcast, mpsc, watch, Mutex};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::handshake::{SessionStart, SessionType};
use crate::session::{Session, SessionEnd, SessionEvent, SessionReader, SessionWriter};

/// `type` value that selects local port forwarding (basic or multiplexed).
pub const LOCAL_PORT_FORWARDING: &str = "LocalPortForwarding";
/// smux keep-alive interval when the agent still expects it (§8.8).
const SMUX_KEEPALIVE_INTERVAL_SECS: u64 = 10;
/// smux keep-alive timeout when the agent still expects it (§8.8).
const SMUX_KEEPALIVE_TIMEOUT_SECS: u64 = 30;
/// Buffer of the in-process pipe between the smux session and the channel. A few payloads, so
/// the channel sees large writes without holding much memory per session.
const MUX_PIPE_BUFFER: usize = 256 * 1024;
/// Received payloads queued for the single local connection of basic/standard-stream mode.
const SINGLE_STREAM_QUEUE: usize = 16;
/// Read size for local connections and the smux pipe; the channel splits to the payload size.
const READ_CHUNK: usize = 64 * 1024;
/// Port notices kept for slow subscribers.
const NOTICE_QUEUE: usize = 16;
/// How long [`PortForwarder::terminate`] waits for the agent to acknowledge the flag.
const TERMINATE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// The document properties a port session's client reads (§8.4). Unknown keys are ignored;
/// numbers are accepted where strings are expected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortParameters {
    /// Destination port on the target side.
    pub port_number: String,
    /// Destination host (empty: the target itself).
    pub host: String,
    /// Local TCP port to listen on (`""`/`"0"`: any free port).
    pub local_port_number: String,
    /// `unix` to listen on a Unix socket.
    pub local_connection_type: String,
    /// The Unix socket path when `local_connection_type` is `unix`.
    pub local_unix_socket: String,
    /// `LocalPortForwarding`, or empty for standard-stream mode.
    pub forwarding_type: String,
}

impl PortParameters {
    /// Reads the handshake's `Properties`.
    pub fn from_properties(properties: &Value) -> Self {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Raw {
            #[serde(rename = "portNumber")]
            port_number: Value,
            host: Value,
            #[serde(rename = "localPortNumber")]
            local_port_number: Value,
            #[serde(rename = "localConnectionType")]
            local_connection_type: Value,
            #[serde(rename = "localUnixSocket")]
            local_unix_socket: Value,
            #[serde(rename = "type")]
            forwarding_type: Value,
        }
        let raw = Raw::deserialize(properties).unwrap_or_default();
        let text = |v: Value| match v {
            Value::String(s) => s,
            Value::Null => String::new(),
            other => other.to_string(),
        };
        Self {
            port_number: text(raw.port_number),
            host: text(raw.host),
            local_port_number: text(raw.local_port_number),
            local_connection_type: text(raw.local_connection_type),
            local_unix_socket: text(raw.local_unix_socket),
            forwarding_type: text(raw.forwarding_type),
        }
    }
}

/// How the client carries local connections, decided as the official client does (§8.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortMode {
    /// No `type`: one byte stream (e.g. stdin/stdout for an SSH ProxyCommand).
    StandardStream,
    /// LocalPortForwarding with an agent too old for smux: one connection at a time.
    Basic,
    /// LocalPortForwarding over smux: many concurrent connections.
    Multiplexed {
        /// Whether smux keep-alive is on (only for agents up to 3.1.1511.0).
        keep_alive: bool,
    },
}

impl PortMode {
    /// The mode for a started session; fails unless it is a Port session.
    pub fn select(start: &SessionStart) -> Result<PortMode> {
        if start.session_type != SessionType::Port {
            return Err(Error::WrongSessionType(format!(
                "expected a Port session, the agent started {}",
                start.session_type.as_str()
            )));
        }
        let params = PortParameters::from_properties(&start.properties);
        if params.forwarding_type != LOCAL_PORT_FORWARDING {
            return Ok(PortMode::StandardStream);
        }
        let agent = start.agent_version.as_deref().unwrap_or("");
        Ok(
            if client_sees_greater(agent, CLIENT_MUX_MIN_AGENT_EXCLUSIVE) {
                PortMode::Multiplexed {
                    keep_alive: !client_sees_greater(agent, CLIENT_KEEPALIVE_OFF_AGENT_EXCLUSIVE),
                }
            } else {
                PortMode::Basic
            },
        )
    }
}

/// Something a port session reports besides data.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PortNotice {
    /// The agent could not connect to the destination (Flag ConnectToPortError).
    ConnectToPortError,
}

/// How the session ended, shared with every waiter.
type Outcome = Option<std::result::Result<SessionEnd, Arc<Error>>>;

/// Aborts a background task when dropped.
#[derive(Debug)]
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The per-mode plumbing.
enum Plumbing {
    Mux(async_smux::MuxConnector<DuplexStream>),
    Single(Mutex<mpsc::Receiver<Bytes>>),
}

/// Forwards local connections through a started Port session.
///
/// ```no_run
/// # async fn demo(manager: ssmx_client::SessionManager) -> ssmx_client::Result<()> {
/// use ssmx_client::PortForwarder;
/// let params = [("portNumber".to_owned(), vec!["80".to_owned()])].into();
/// let session = manager
///     .start_session("mi-0123456789abcdef0", Some("AWS-StartPortForwardingSession"), params)
///     .await?;
/// let forwarder = std::sync::Arc::new(PortForwarder::new(session).await?);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// loop {
///     let (conn, _) = listener.accept().await?;
///     let f = forwarder.clone();
///     tokio::spawn(async move { f.forward(conn).await });
/// }
/// # }
/// ```
pub struct PortForwarder {
    writer: SessionWriter,
    start: Arc<SessionStart>,
    mode: PortMode,
    parameters: PortParameters,
    plumbing: Plumbing,
    outcome: watch::Receiver<Outcome>,
    notices: broadcast::Sender<PortNotice>,
    _tasks: Vec<Task>,
}

impl std::fmt::Debug for PortForwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortForwarder")
            .field("session_id", &self.writer.id())
            .field("mode", &self.mode)
            .finish()
    }
}

impl PortForwarder {
    /// Waits for the session's handshake and sets up forwarding in the mode the agent's
    /// version calls for.
    pub async fn new(session: Session) -> Result<PortForwarder> {
        let (writer, mut reader) = session.split();
        let start = reader.started().await?;
        let mode = PortMode::select(&start)?;
        let parameters = PortParameters::from_properties(&start.properties);
        let (outcome_tx, outcome) = watch::channel(None);
        let (notices, _) = broadcast::channel(NOTICE_QUEUE);
        let mut tasks = Vec::new();
        let plumbing = match mode {
            PortMode::Multiplexed { keep_alive } => {
                let (mux_end, channel_end) = tokio::io::duplex(MUX_PIPE_BUFFER);
                let mut builder = async_smux::MuxBuilder::client();
                if keep_alive {
                    builder
                        .with_keep_alive_interval(nonzero(SMUX_KEEPALIVE_INTERVAL_SECS))
                        .with_keep_alive_timeout(nonzero(SMUX_KEEPALIVE_TIMEOUT_SECS));
                }
                let (connector, _acceptor, worker) = builder.with_connection(mux_end).build();
                let (from_mux, to_mux) = tokio::io::split(channel_end);
                tasks.push(spawn(async move {
                    if let Err(e) = worker.await {
                        tracing::debug!("smux session ended: {e}");
                    }
                }));
                tasks.push(spawn(uplink(from_mux, writer.clone())));
                tasks.push(spawn(downlink(
                    reader,
                    Sink::Pipe(to_mux),
                    outcome_tx,
                    notices.clone(),
                )));
                Plumbing::Mux(connector)
            }
            PortMode::Basic | PortMode::StandardStream => {
                let (tx, rx) = mpsc::channel(SINGLE_STREAM_QUEUE);
                tasks.push(spawn(downlink(
                    reader,
                    Sink::Queue(tx),
                    outcome_tx,
                    notices.clone(),
                )));
                Plumbing::Single(Mutex::new(rx))
            }
        };
        Ok(PortForwarder {
            writer,
            start,
            mode,
            parameters,
            plumbing,
            outcome,
            notices,
            _tasks: tasks,
        })
    }

    /// The session id.
    pub fn session_id(&self) -> &str {
        self.writer.id()
    }

    /// The forwarding mode in use.
    pub fn mode(&self) -> PortMode {
        self.mode
    }

    /// The session's port properties.
    pub fn parameters(&self) -> &PortParameters {
        &self.parameters
    }

    /// What the handshake established.
    pub fn start_info(&self) -> &SessionStart {
        &self.start
    }

    /// Notices such as "the agent could not reach the destination".
    pub fn subscribe(&self) -> broadcast::Receiver<PortNotice> {
        self.notices.subscribe()
    }

    /// Carries one local connection until both directions are done or the session ends. In
    /// multiplexed mode many calls run at once; in basic and standard-stream mode calls take
    /// turns (the protocol carries one connection at a time).
    ///
    /// A normal end of the session closes the connection normally. A call that fails aborts
    /// its connection instead (see [`LocalConnection`]); when the session fails while the
    /// connection is open (the agent or the service went away and the session could not be
    /// resumed), the call returns that failure. A call dropped after such a failure aborts its
    /// connection too.
    pub async fn forward<C: LocalConnection>(&self, conn: C) -> Result<()> {
        let mut carried = Carried {
            conn,
            outcome: self.outcome.clone(),
            failed: None,
        };
        let result = tokio::select! {
            r = self.carry(&mut carried.conn) => r,
            r = self.session_over() => r,
        };
        carried.failed = Some(result.is_err());
        result
    }

    /// Moves the connection's bytes in the session's mode until they stop.
    async fn carry<C: LocalConnection>(&self, conn: &mut C) -> Result<()> {
        match &self.plumbing {
            Plumbing::Mux(connector) => {
                let mut stream = connector
                    .connect()
                    .map_err(|e| Error::Multiplexer(e.to_string()))?;
                tokio::io::copy_bidirectional(conn, &mut stream)
                    .await
                    .map(drop)
                    .or_else(ignore_disconnect)
            }
            Plumbing::Single(queue) => self.single(conn, &mut *queue.lock().await).await,
        }
    }

    /// Waits for the end of the session and says what it means for a connection still open:
    /// nothing when the session ended normally, else the failure.
    async fn session_over(&self) -> Result<()> {
        let end = self.closed().await?;
        if end.is_normal() {
            Ok(())
        } else {
            Err(Error::Interrupted(end))
        }
    }

    /// Basic / standard-stream mode: one connection owns the session's byte stream.
    async fn single<C: LocalConnection>(
        &self,
        conn: &mut C,
        queue: &mut mpsc::Receiver<Bytes>,
    ) -> Result<()> {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let local_done = loop {
            buf.reserve(READ_CHUNK);
            tokio::select! {
                n = conn.read_buf(&mut buf) => match n {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        tracing::trace!(n, "local to session");
                        if self.writer.write(buf.split().freeze()).await.is_err() {
                            return self.rest_of_session(conn, queue).await;
                        }
                    }
                    Err(e) => break Err(e),
                },
                data = queue.recv() => match data {
                    Some(bytes) => {
                        tracing::trace!(n = bytes.len(), "session to local");
                        // Flush too: stdout (standard-stream mode) is line-buffered.
                        if let Err(e) = write_flush(conn, &bytes).await {
                            break Err(e);
                        }
                    }
                    // The downlink has stopped: the session's outcome is known.
                    None => return self.session_over().await,
                },
            }
        };
        if let Err(e) = &local_done {
            tracing::debug!("local connection failed: {e}");
        }
        let sent = match self.mode {
            // Tell the agent to drop its destination connection; the next connection
            // makes it dial again (§8.7).
            PortMode::Basic => self.writer.send_flag(PortFlag::DisconnectToPort).await,
            // Standard-stream mode ends with the local input (§8.6); deliver what was sent.
            _ => self.writer.flush().await,
        };
        match sent {
            Ok(()) => Ok(()),
            Err(_) => self.rest_of_session(conn, queue).await,
        }
    }

    /// After a failed send the session is over: delivers what it still sends (the queue must
    /// keep moving for its outcome to arrive), then reports that outcome.
    async fn rest_of_session<C: LocalConnection>(
        &self,
        conn: &mut C,
        queue: &mut mpsc::Receiver<Bytes>,
    ) -> Result<()> {
        let mut delivering = true;
        while let Some(bytes) = queue.recv().await {
            delivering = delivering && write_flush(conn, &bytes).await.is_ok();
        }
        self.session_over().await
    }

    /// True once the session has ended.
    pub fn is_closed(&self) -> bool {
        self.outcome.borrow().is_some()
    }

    /// Resolves when the session has ended.
    pub async fn closed(&self) -> Result<SessionEnd> {
        let mut outcome = self.outcome.clone();
        let value = outcome
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::SessionEnded)?
            .clone();
        match value {
            Some(Ok(end)) => Ok(end),
            Some(Err(e)) => Err(Error::Shared(e)),
            None => Err(Error::SessionEnded),
        }
    }

    /// Ends the session: the TerminateSession flag where the agent understands it (the official
    /// client's choice, §8.7), else the TerminateSession API.
    pub async fn terminate(&self) -> Result<()> {
        let agent = self.start.agent_version.as_deref().unwrap_or("");
        if self.mode != PortMode::StandardStream
            && client_sees_greater(agent, CLIENT_TERMINATE_FLAG_AGENT_EXCLUSIVE)
        {
            self.writer.send_flag(PortFlag::TerminateSession).await?;
            if tokio::time::timeout(TERMINATE_FLUSH_TIMEOUT, self.writer.flush())
                .await
                .is_err()
            {
                tracing::debug!("TerminateSession flag not acknowledged in time");
            }
            Ok(())
        } else {
            self.writer.terminate().await
        }
    }
}

/// A local connection that [`PortForwarder::forward`] carries.
///
/// When the session fails while the connection is open, the connection is aborted instead of
/// closed where its transport can tell the two apart, so the program at the other end sees the
/// failure: a download cut short must not look complete.
pub trait LocalConnection: AsyncRead + AsyncWrite + Unpin + Send {
    /// Makes the coming close abortive. The default does nothing: Unix sockets, pipes and
    /// standard streams have only the normal close.
    fn abort_on_close(&self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LocalConnection for TcpStream {
    /// A zero linger time: closing sends a reset (RST) instead of a FIN.
    fn abort_on_close(&self) -> std::io::Result<()> {
        self.set_zero_linger()
    }
}

impl LocalConnection for UnixStream {}

impl LocalConnection for DuplexStream {}

impl<R, W> LocalConnection for Join<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
}

/// A connection in [`PortForwarder::forward`]: aborted when dropped if carrying it failed, or,
/// if it is dropped before the end, if the session has failed.
struct Carried<C: LocalConnection> {
    conn: C,
    outcome: watch::Receiver<Outcome>,
    /// Whether carrying failed, once it has ended.
    failed: Option<bool>,
}

impl<C: LocalConnection> Drop for Carried<C> {
    fn drop(&mut self) {
        let failed = self
            .failed
            .unwrap_or_else(|| match &*self.outcome.borrow() {
                None => false,
                Some(Ok(end)) => !end.is_normal(),
                Some(Err(_)) => true,
            });
        if failed {
            if let Err(e) = self.conn.abort_on_close() {
                tracing::debug!("cannot abort the local connection: {e}");
            }
        }
    }
}

async fn write_flush<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

/// A closed or reset local connection is the normal end of a forwarded connection.
fn ignore_disconnect(e: std::io::Error) -> Result<()> {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | NotConnected => Ok(()),
        _ => Err(e.into()),
    }
}

fn spawn(fut: impl std::future::Future<Output = ()> + Send + 'static) -> Task {
    Task(tokio::spawn(fut))
}

fn nonzero(v: u64) -> std::num::NonZeroU64 {
    std::num::NonZeroU64::new(v).unwrap_or(std::num::NonZeroU64::MIN)
}

/// Where received port bytes go.
enum Sink {
    /// Into the smux session's pipe.
    Pipe(tokio::io::WriteHalf<DuplexStream>),
    /// To whichever local connection is current.
    Queue(mpsc::Sender<Bytes>),
}

/// Moves the session's events to the local side until it ends.
async fn downlink(
    mut reader: SessionReader,
    mut sink: Sink,
    outcome: watch::Sender<Outcome>,
    notices: broadcast::Sender<PortNotice>,
) {
    let result = loop {
        match reader.next_event().await {
            Some(Ok(SessionEvent::Output(bytes))) => {
                let delivered = match &mut sink {
                    Sink::Pipe(pipe) => pipe.write_all(&bytes).await.is_ok(),
                    Sink::Queue(queue) => queue.send(bytes).await.is_ok(),
                };
                if !delivered {
                    tracing::debug!("local side gone; dropping port data");
                }
            }
            Some(Ok(SessionEvent::Flag(PortFlag::ConnectToPortError))) => {
                tracing::info!("the agent could not connect to the destination port");
                let _ = notices.send(PortNotice::ConnectToPortError);
            }
            Some(Ok(SessionEvent::Ended(end))) => break Ok(end),
            Some(Ok(other)) => tracing::debug!(?other, "ignoring event in a port session"),
            Some(Err(e)) => break Err(Arc::new(e)),
            None => break Err(Arc::new(Error::SessionEnded)),
        }
    };
    outcome.send_replace(Some(result));
}

/// Moves bytes the smux session writes to the channel. Once a write fails the session is over;
/// what the smux session writes after that is discarded, so its streams stay open until their
/// connections see the session's outcome (closing the pipe would end them first).
async fn uplink(mut from_mux: tokio::io::ReadHalf<DuplexStream>, writer: SessionWriter) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut sending = true;
    loop {
        buf.reserve(READ_CHUNK);
        match from_mux.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let bytes = buf.split().freeze();
                if sending {
                    if let Err(e) = writer.write(bytes).await {
                        tracing::debug!("port uplink stopped: {e}");
                        sending = false;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn start(properties: Value, agent: &str) -> SessionStart {
        SessionStart {
            session_type: SessionType::Port,
            properties,
            agent_version: Some(agent.to_owned()),
            customer_message: None,
            negotiated_payload: None,
            encrypted: false,
        }
    }

    #[test]
    fn parameters_accept_strings_and_numbers() {
        let p = PortParameters::from_properties(&json!({
            "portNumber": "22", "localPortNumber": 0, "type": "LocalPortForwarding",
            "host": "db.internal", "extra": true
        }));
        assert_eq!(p.port_number, "22");
        assert_eq!(p.local_port_number, "0");
        assert_eq!(p.host, "db.internal");
        assert_eq!(p.forwarding_type, LOCAL_PORT_FORWARDING);
        assert_eq!(
            PortParameters::from_properties(&Value::Null),
            PortParameters::default()
        );
    }

    #[test]
    fn mode_follows_the_official_version_rules() {
        let lpf = json!({"portNumber":"80","type":"LocalPortForwarding"});
        assert_eq!(
            PortMode::select(&start(lpf.clone(), "3.3.0.0")).unwrap(),
            PortMode::Multiplexed { keep_alive: false }
        );
        assert_eq!(
            PortMode::select(&start(lpf.clone(), "3.1.1511.0")).unwrap(),
            PortMode::Multiplexed { keep_alive: true }
        );
        assert_eq!(
            PortMode::select(&start(lpf.clone(), "3.0.196.0")).unwrap(),
            PortMode::Basic
        );
        // The official client's comparison needs equal component counts.
        assert_eq!(
            PortMode::select(&start(lpf, "3.3.0")).unwrap(),
            PortMode::Basic
        );
        assert_eq!(
            PortMode::select(&start(json!({"portNumber":"22"}), "3.3.0.0")).unwrap(),
            PortMode::StandardStream
        );
        let mut shell = start(Value::Null, "3.3.0.0");
        shell.session_type = SessionType::StandardStream;
        assert!(PortMode::select(&shell).is_err());
    }
}
