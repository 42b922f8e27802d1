//! A running session: the task that drives the handshake, delivers the agent's output and
//! resumes the connection when it drops, and the two halves the application holds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use ssmx_channel::{ChannelEvent, Receiver, Sender};
use ssmx_protocol::crypto::{DataKeyRequest, SessionCipher, DATA_KEY_LEN, OVERHEAD};
use ssmx_protocol::payload::{
    from_json, to_json, EncryptionChallenge, ExitCode, HandshakeComplete, HandshakeRequest,
    KmsEncryptionParameters, KmsEncryptionResult, PortFlag, TerminalSize,
};
use ssmx_protocol::PayloadType;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::handshake::{self, HandshakeReply, SessionStart, SessionType};
use crate::manager::Inner;

/// Events buffered between the session task and the reader. When the reader falls behind, the
/// task stops taking frames from the channel, which stops reading the WebSocket: back-pressure
/// instead of unbounded memory.
const EVENT_QUEUE: usize = 64;
/// The first retry of a dropped connection waits a random delay in this range (§13.1).
const RECONNECT_INITIAL_DELAY_MS: std::ops::Range<u64> = 100..200;
/// A retry delay that would exceed this starts the doubling again from the initial delay (§13.1).
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(5000);

/// Something the session produced, in order.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// The session is ready: the handshake completed, or (for shells without a handshake) the
    /// agent's first output arrived. Comes before any output, exactly once.
    Started(Arc<SessionStart>),
    /// Standard output, terminal output or forwarded port bytes.
    Output(Bytes),
    /// Standard error of a non-interactive command.
    StdErr(Bytes),
    /// The exit status of a non-interactive command.
    ExitCode(i32),
    /// A port-session flag from the agent (e.g. the destination refused the connection).
    Flag(PortFlag),
    /// The session is over; no events follow.
    Ended(SessionEnd),
}

/// How a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEnd {
    /// The service closed the session; `message` is its reason when it gave one (an empty
    /// `channel_closed` Output is a normal end).
    Closed {
        /// The reason text, if any.
        message: Option<String>,
    },
    /// The connection dropped and the service no longer knows the session (ResumeSession gave
    /// no token): it timed out or was terminated meanwhile.
    TimedOut,
}

impl SessionEnd {
    /// True for the normal end: the service closed the session without a reason (it finished,
    /// or was terminated).
    pub fn is_normal(&self) -> bool {
        matches!(self, SessionEnd::Closed { message: None })
    }
}

impl std::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionEnd::Closed { message: None } => f.write_str("closed by the service"),
            SessionEnd::Closed {
                message: Some(reason),
            } => write!(f, "closed by the service: {reason}"),
            SessionEnd::TimedOut => f.write_str("timed out (the service no longer knows it)"),
        }
    }
}

/// Where the session is in its life.
#[derive(Clone, Debug)]
enum Phase {
    Starting,
    Started(Arc<SessionStart>),
    Ended,
}

/// Aborts the session task when the last half of the session is dropped.
#[derive(Debug)]
struct TaskGuard(JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How the writer must shape Output payloads; set by the session task during the handshake.
#[derive(Debug)]
struct Payloads {
    /// The session's cipher once KMS encryption is on.
    cipher: OnceLock<SessionCipher>,
    /// Largest payload per message (the channel's setting, mirrored so encrypted payloads can
    /// be cut before sealing: the channel must not split ciphertext).
    max_payload: AtomicUsize,
}

/// State both halves share.
#[derive(Debug)]
struct Shared {
    session_id: String,
    target: String,
    manager: Arc<Inner>,
    _task: TaskGuard,
}

/// A started session. Read its events with [`Session::next_event`], send input with
/// [`Session::write`], or [`Session::split`] it to do both from different tasks.
///
/// ```no_run
/// # async fn demo(manager: ssmx_client::SessionManager) -> ssmx_client::Result<()> {
/// use ssmx_client::SessionEvent;
/// let mut session = manager.start_session("mi-0123456789abcdef0", None, Default::default()).await?;
/// while let Some(event) = session.next_event().await {
///     match event? {
///         SessionEvent::Started(_) => session.write("uname -a\r").await?,
///         SessionEvent::Output(bytes) => print!("{}", String::from_utf8_lossy(&bytes)),
///         SessionEvent::Ended(_) => break,
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Session {
    writer: SessionWriter,
    reader: SessionReader,
}

impl Session {
    /// Starts the task that runs a connected channel.
    pub(crate) fn spawn(
        manager: Arc<Inner>,
        session_id: String,
        target: String,
        stream_url: String,
        channel: (Sender, Receiver),
    ) -> Session {
        let (sender, receiver) = channel;
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let (phase_tx, phase_rx) = watch::channel(Phase::Starting);
        let payloads = Arc::new(Payloads {
            cipher: OnceLock::new(),
            max_payload: AtomicUsize::new(manager.options.payload_size),
        });
        let pump = Pump {
            manager: manager.clone(),
            session_id: session_id.clone(),
            target: target.clone(),
            stream_url,
            payloads: payloads.clone(),
            pending_cipher: None,
            sender: sender.clone(),
            receiver,
            events: events_tx,
            phase: phase_tx,
            handshake: None,
        };
        let span = tracing::info_span!("session", id = %session_id);
        let task = tokio::spawn(pump.run().instrument(span));
        let shared = Arc::new(Shared {
            session_id,
            target,
            manager,
            _task: TaskGuard(task),
        });
        Session {
            writer: SessionWriter {
                sender,
                phase: phase_rx,
                payloads,
                shared: shared.clone(),
            },
            reader: SessionReader {
                events: events_rx,
                shared,
                start: None,
                exit_code: None,
                finished: false,
            },
        }
    }

    /// The session id.
    pub fn id(&self) -> &str {
        &self.writer.shared.session_id
    }

    /// The target the session runs on, as given when it was started.
    pub fn target(&self) -> &str {
        &self.writer.shared.target
    }

    /// Separates the input and output halves.
    pub fn split(self) -> (SessionWriter, SessionReader) {
        (self.writer, self.reader)
    }

    /// The next event; `None` after [`SessionEvent::Ended`] or an error.
    pub async fn next_event(&mut self) -> Option<Result<SessionEvent>> {
        self.reader.next_event().await
    }

    /// Waits until the session has started and returns what the handshake established.
    pub async fn started(&mut self) -> Result<Arc<SessionStart>> {
        self.reader.started().await
    }

    /// Sends input bytes (keystrokes, or data for a standard-stream port session).
    pub async fn write(&self, data: impl Into<Bytes>) -> Result<()> {
        self.writer.write(data).await
    }

    /// Tells the agent the terminal size.
    pub async fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        self.writer.resize(cols, rows).await
    }

    /// Ends the session through the SSM TerminateSession API.
    pub async fn terminate(&self) -> Result<()> {
        self.writer.terminate().await
    }

    /// Discards output until the session ends; returns how it ended and the exit code, if the
    /// session type has one.
    pub async fn wait(mut self) -> Result<(SessionEnd, Option<i32>)> {
        while let Some(event) = self.reader.next_event().await {
            if let SessionEvent::Ended(end) = event? {
                return Ok((end, self.reader.exit_code));
            }
        }
        Err(Error::SessionEnded)
    }
}

/// The sending half of a session. Cheap to clone.
///
/// Every send waits until the session has started (the agent discards input that arrives before
/// its handshake completes) and while the channel's send window is full.
#[derive(Clone)]
pub struct SessionWriter {
    sender: Sender,
    phase: watch::Receiver<Phase>,
    payloads: Arc<Payloads>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SessionWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionWriter")
            .field("session_id", &self.shared.session_id)
            .field("phase", &*self.phase.borrow())
            .finish()
    }
}

impl SessionWriter {
    /// The session id.
    pub fn id(&self) -> &str {
        &self.shared.session_id
    }

    /// What the handshake established, once the session has started.
    pub fn start_info(&self) -> Option<Arc<SessionStart>> {
        match &*self.phase.borrow() {
            Phase::Started(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// Waits until the session has started; fails if it ended first.
    pub async fn ready(&self) -> Result<Arc<SessionStart>> {
        let mut phase = self.phase.clone();
        loop {
            match &*phase.borrow_and_update() {
                Phase::Started(s) => return Ok(s.clone()),
                Phase::Ended => return Err(Error::SessionEnded),
                Phase::Starting => {}
            }
            phase.changed().await.map_err(|_| Error::SessionEnded)?;
        }
    }

    /// Sends input bytes as Output payloads (split if large; sealed when the session is
    /// encrypted). Empty input is a no-op: the official agent cannot handle empty payloads.
    pub async fn write(&self, data: impl Into<Bytes>) -> Result<()> {
        let data = data.into();
        if data.is_empty() {
            return Ok(());
        }
        self.ready().await?;
        match self.payloads.cipher.get() {
            None => Ok(self.sender.send(PayloadType::Output, data).await?),
            Some(cipher) => {
                let max = self.payloads.max_payload.load(Ordering::Relaxed);
                for piece in data.chunks(max.saturating_sub(OVERHEAD).max(1)) {
                    self.sender
                        .send(PayloadType::Output, cipher.encrypt(piece))
                        .await?;
                }
                Ok(())
            }
        }
    }

    /// Sends a Size payload with the terminal's columns and rows.
    pub async fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        self.ready().await?;
        let size = TerminalSize {
            cols: cols.into(),
            rows: rows.into(),
        };
        Ok(self
            .sender
            .send(PayloadType::Size, ssmx_protocol::payload::to_json(&size))
            .await?)
    }

    /// Sends a port-session flag (e.g. [`PortFlag::TerminateSession`]).
    pub async fn send_flag(&self, flag: PortFlag) -> Result<()> {
        self.ready().await?;
        Ok(self
            .sender
            .send(PayloadType::Flag, flag.to_payload())
            .await?)
    }

    /// Resolves once the agent has acknowledged everything sent so far.
    pub async fn flush(&self) -> Result<()> {
        Ok(self.sender.flush().await?)
    }

    /// Ends the session through the SSM TerminateSession API; the service then closes the
    /// channel and the reader sees [`SessionEvent::Ended`].
    pub async fn terminate(&self) -> Result<()> {
        self.shared
            .manager
            .terminate_session(&self.shared.session_id)
            .await
    }
}

/// The receiving half of a session.
#[derive(Debug)]
pub struct SessionReader {
    events: mpsc::Receiver<Result<SessionEvent>>,
    shared: Arc<Shared>,
    start: Option<Arc<SessionStart>>,
    exit_code: Option<i32>,
    finished: bool,
}

impl SessionReader {
    /// The session id.
    pub fn id(&self) -> &str {
        &self.shared.session_id
    }

    /// The next event; `None` after [`SessionEvent::Ended`] or an error.
    pub async fn next_event(&mut self) -> Option<Result<SessionEvent>> {
        if self.finished {
            return None;
        }
        let event = self.events.recv().await;
        match &event {
            Some(Ok(SessionEvent::Started(start))) => self.start = Some(start.clone()),
            Some(Ok(SessionEvent::ExitCode(code))) => self.exit_code = Some(*code),
            Some(Ok(SessionEvent::Ended(_))) | Some(Err(_)) | None => self.finished = true,
            _ => {}
        }
        event
    }

    /// Consumes events up to [`SessionEvent::Started`]; once the session has started, returns
    /// what it established right away.
    pub async fn started(&mut self) -> Result<Arc<SessionStart>> {
        if let Some(start) = &self.start {
            return Ok(start.clone());
        }
        loop {
            match self.next_event().await {
                Some(Ok(SessionEvent::Started(s))) => return Ok(s),
                Some(Ok(SessionEvent::Ended(end))) => return Err(Error::EndedBeforeStart(end)),
                Some(Ok(other)) => {
                    tracing::debug!(?other, "event before the session started");
                }
                Some(Err(e)) => return Err(e),
                None => return Err(Error::SessionEnded),
            }
        }
    }

    /// The exit code seen so far (NonInteractiveCommands sessions send one at the end).
    pub fn exit_code(&self) -> Option<i32> {
        self.exit_code
    }
}

/// The task behind a session.
struct Pump {
    manager: Arc<Inner>,
    session_id: String,
    target: String,
    stream_url: String,
    payloads: Arc<Payloads>,
    /// The cipher from the KMS data key, switched on once the HandshakeResponse is sent.
    pending_cipher: Option<SessionCipher>,
    sender: Sender,
    receiver: Receiver,
    events: mpsc::Sender<Result<SessionEvent>>,
    phase: watch::Sender<Phase>,
    handshake: Option<HandshakeReply>,
}

impl Pump {
    async fn run(mut self) {
        let outcome = self.drive().await;
        match &outcome {
            Ok(end) => tracing::debug!(?end, "session ended"),
            Err(e) => tracing::warn!("session failed: {e}"),
        }
        if let Err(Error::Encryption(_)) = &outcome {
            // Altered or undecryptable data: end the session at the service too, so the agent
            // stops now rather than when the disconnect timeout runs out.
            if let Err(e) = self.manager.terminate_session(&self.session_id).await {
                tracing::warn!("cannot terminate the session after the encryption failure: {e}");
            }
        }
        self.phase.send_replace(Phase::Ended);
        let last = outcome.map(SessionEvent::Ended);
        // The reader may be gone; then nobody needs the news.
        let _ = self.events.send(last).await;
        self.sender.close();
    }

    async fn drive(&mut self) -> Result<SessionEnd> {
        loop {
            let Some(event) = self.receiver.recv().await else {
                return Err(Error::SessionEnded);
            };
            match event {
                ChannelEvent::Payload {
                    payload_type,
                    payload,
                } => {
                    tracing::trace!(?payload_type, len = payload.len(), "payload");
                    self.on_payload(payload_type, payload).await?;
                }
                ChannelEvent::Message(msg) => {
                    tracing::debug!(message_type = %msg.message_type, "ignoring non-stream message");
                }
                ChannelEvent::Closed(closed) => {
                    let message = (!closed.output.is_empty()).then_some(closed.output);
                    return Ok(SessionEnd::Closed { message });
                }
                ChannelEvent::TransportLost(cause) => {
                    tracing::info!("data channel connection lost: {cause}");
                    if let Some(end) = self.resume().await? {
                        return Ok(end);
                    }
                }
                ChannelEvent::Failed(e) => return Err(e.into()),
            }
        }
    }

    async fn on_payload(&mut self, payload_type: PayloadType, payload: Bytes) -> Result<()> {
        match payload_type {
            PayloadType::HandshakeRequest => {
                let request: HandshakeRequest = from_json("HandshakeRequest", &payload)
                    .map_err(|e| Error::Handshake(e.to_string()))?;
                let kms = match handshake::kms_request(&request) {
                    None => None,
                    Some(Err(e)) => Some(Err(e)),
                    Some(Ok(params)) => Some(self.data_key(&params).await),
                };
                let reply =
                    handshake::respond(&request, self.manager.options.max_negotiated_payload, kms);
                tracing::debug!(agent_version = %reply.agent_version, session_type = ?reply.session_type, encrypted = reply.encrypted, "handshake request");
                self.sender
                    .send(PayloadType::HandshakeResponse, reply.payload())
                    .await?;
                if let Some(size) = reply.negotiated_payload {
                    tracing::debug!(size, "ssmx agent: larger payloads agreed");
                    self.sender.set_max_payload(size);
                    self.payloads.max_payload.store(size, Ordering::Relaxed);
                }
                // The official client encrypts from here on (§7.1).
                if let Some(cipher) = self.pending_cipher.take().filter(|_| reply.encrypted) {
                    let _ = self.payloads.cipher.set(cipher);
                }
                self.handshake = Some(reply);
            }
            PayloadType::HandshakeComplete => {
                let complete: HandshakeComplete = from_json("HandshakeComplete", &payload)
                    .map_err(|e| Error::Handshake(e.to_string()))?;
                let reply = self.handshake.take().ok_or_else(|| {
                    Error::Handshake("HandshakeComplete arrived without a HandshakeRequest".into())
                })?;
                let session_type = reply.session_type.ok_or_else(|| {
                    Error::Handshake("unable to determine SessionType".to_owned())
                })?;
                self.start(SessionStart {
                    session_type,
                    properties: reply.properties,
                    agent_version: Some(reply.agent_version),
                    customer_message: handshake::customer_message(&complete),
                    negotiated_payload: reply.negotiated_payload,
                    encrypted: reply.encrypted,
                })
                .await;
            }
            PayloadType::EncChallengeRequest => {
                let cipher = self.payloads.cipher.get().ok_or_else(|| {
                    Error::Handshake("encryption challenge without KMS encryption".into())
                })?;
                let request: EncryptionChallenge = from_json("EncChallengeRequest", &payload)
                    .map_err(|e| Error::Handshake(e.to_string()))?;
                let answer = cipher
                    .answer_challenge(&request)
                    .map_err(|e| Error::Encryption(e.to_string()))?;
                self.sender
                    .send(PayloadType::EncChallengeResponse, to_json(&answer))
                    .await?;
            }
            other => {
                if matches!(*self.phase.borrow(), Phase::Starting) {
                    if self.handshake.is_none() && other == PayloadType::Output {
                        // No handshake: the first output starts a shell (§6.6).
                        self.start(SessionStart {
                            session_type: SessionType::StandardStream,
                            properties: serde_json::Value::Null,
                            agent_version: None,
                            customer_message: None,
                            negotiated_payload: None,
                            encrypted: false,
                        })
                        .await;
                    } else {
                        tracing::debug!(?other, "stream data before the session started");
                    }
                }
                let payload = match self.payloads.cipher.get() {
                    Some(cipher) if ssmx_protocol::crypto::Role::Agent.encrypts(other) => cipher
                        .decrypt(&payload)
                        .map_err(|e| Error::Encryption(e.to_string()))?,
                    _ => payload,
                };
                if let Some(event) = stream_event(other, payload) {
                    self.emit(event).await;
                }
            }
        }
        Ok(())
    }

    /// Asks KMS for the session's data key (§7.2) and keeps the cipher until the response is
    /// sent. The error text goes into the handshake response.
    async fn data_key(
        &mut self,
        params: &KmsEncryptionParameters,
    ) -> std::result::Result<KmsEncryptionResult, String> {
        if let Some(reason) = &self.manager.options.encryption_refusal {
            return Err(reason.clone());
        }
        let request = DataKeyRequest::for_client(&self.session_id, &self.target, params);
        let out = self
            .manager
            .kms
            .generate_data_key()
            .key_id(&request.key_id)
            .number_of_bytes(DATA_KEY_LEN as i32)
            .set_encryption_context(Some(
                request.encryption_context.clone().into_iter().collect(),
            ))
            .send()
            .await
            .map_err(|e| {
                let e = Error::from_api("GenerateDataKey", &request.key_id, e);
                tracing::warn!("KMS data key: {e}");
                e.to_string()
            })?;
        let (Some(blob), Some(plaintext)) = (out.ciphertext_blob(), out.plaintext()) else {
            return Err("KMS GenerateDataKey returned no key".to_owned());
        };
        let cipher = SessionCipher::for_client(plaintext.as_ref()).map_err(|e| e.to_string())?;
        self.pending_cipher = Some(cipher);
        Ok(request.result(blob.as_ref()))
    }

    async fn start(&mut self, start: SessionStart) {
        let start = Arc::new(start);
        self.phase.send_replace(Phase::Started(start.clone()));
        self.emit(SessionEvent::Started(start)).await;
    }

    async fn emit(&self, event: SessionEvent) {
        // A dropped reader means the application lost interest in output; keep running so the
        // writer half still works.
        let _ = self.events.send(Ok(event)).await;
    }

    /// ResumeSession + redial of the original StreamUrl with the new token (§13.1).
    /// `Ok(Some(end))` when the service says the session is gone.
    async fn resume(&mut self) -> Result<Option<SessionEnd>> {
        let options = &self.manager.options;
        let mut backoff = Backoff::new();
        let mut last_error = String::new();
        for attempt in 0..=options.reconnect_attempts {
            if attempt > 0 {
                tokio::time::sleep(backoff.next_delay()).await;
            }
            let token = match self.manager.resume_session(&self.session_id).await {
                Ok(Some(token)) => token,
                Ok(None) => return Ok(Some(SessionEnd::TimedOut)),
                Err(e @ (Error::SessionNotFound(_) | Error::AccessDenied(_))) => return Err(e),
                Err(e) => {
                    tracing::info!(attempt, "ResumeSession failed: {e}");
                    last_error = e.to_string();
                    continue;
                }
            };
            match self.manager.dialer.open(&self.stream_url, &token).await {
                Ok(transport) => {
                    self.sender.reattach(transport).await?;
                    tracing::info!(attempt, "data channel resumed");
                    return Ok(None);
                }
                Err(e) => {
                    tracing::info!(attempt, "reconnect failed: {e}");
                    last_error = e.to_string();
                }
            }
        }
        Err(Error::Reconnect {
            session_id: self.session_id.clone(),
            reason: last_error,
        })
    }
}

/// Maps an in-order stream payload to the event the application sees.
fn stream_event(payload_type: PayloadType, payload: Bytes) -> Option<SessionEvent> {
    match payload_type {
        PayloadType::Output => Some(SessionEvent::Output(payload)),
        PayloadType::StdErr => Some(SessionEvent::StdErr(payload)),
        PayloadType::ExitCode => match ExitCode::from_payload(&payload) {
            Ok(code) => Some(SessionEvent::ExitCode(code.0)),
            Err(e) => {
                tracing::warn!("ignoring {e}");
                None
            }
        },
        PayloadType::Flag => match PortFlag::from_payload(&payload) {
            Ok(flag) => Some(SessionEvent::Flag(flag)),
            Err(e) => {
                tracing::warn!("ignoring {e}");
                None
            }
        },
        other => {
            tracing::debug!(?other, "ignoring payload type");
            None
        }
    }
}

/// The official client's retry delays (§13.1): a random start in [100, 200) ms, doubled per
/// retry, back to the start when a delay would exceed 5 s.
#[derive(Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    exponent: u32,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        let ms = rand::rng().random_range(RECONNECT_INITIAL_DELAY_MS);
        Self {
            initial: Duration::from_millis(ms),
            exponent: 0,
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let mut delay = self.initial * 2u32.saturating_pow(self.exponent);
        if delay > RECONNECT_MAX_DELAY {
            self.exponent = 0;
            delay = self.initial;
        }
        self.exponent += 1;
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_wraps_at_five_seconds() {
        let mut b = Backoff::new();
        let first = b.next_delay();
        assert!((100..200).contains(&(first.as_millis() as u64)));
        let mut delays = vec![first];
        for _ in 0..8 {
            delays.push(b.next_delay());
        }
        for w in delays.windows(2) {
            assert!(w[1] == w[0] * 2 || w[1] == first, "{delays:?}");
        }
        assert!(delays.iter().all(|d| *d <= RECONNECT_MAX_DELAY));
        assert!(delays[1..].contains(&first), "wraps around: {delays:?}");
    }

    #[test]
    fn stream_payloads_map_to_events() {
        assert_eq!(
            stream_event(PayloadType::ExitCode, Bytes::from_static(b"EXIT_CODE: 3")),
            Some(SessionEvent::ExitCode(3))
        );
        assert_eq!(
            stream_event(PayloadType::Flag, PortFlag::ConnectToPortError.to_payload()),
            Some(SessionEvent::Flag(PortFlag::ConnectToPortError))
        );
        assert_eq!(
            stream_event(PayloadType::StdErr, Bytes::from_static(b"e")),
            Some(SessionEvent::StdErr(Bytes::from_static(b"e")))
        );
        assert_eq!(
            stream_event(PayloadType::ExitCode, Bytes::from_static(b"garbage")),
            None
        );
        assert_eq!(
            stream_event(PayloadType::Size, Bytes::from_static(b"{}")),
            None
        );
    }
}
