//! One session at the relay: the two data-channel sockets, the frames queued for an absent end,
//! and the supervisor task that owns the session's lifecycle (start, pause/resume, timeouts,
//! termination) — PROTOCOL.md §1.1, §5.7, §12.3.
//!
//! Frames flow socket → reader task → the other side's queue → that side's writer task → socket,
//! so a slow reader on one side never stalls the other direction, and a writer sends whatever
//! has queued up with one flush. A queue holds up to [`MAX_PENDING_BYTES`] (while its socket is
//! absent, too); beyond that the sending side's reader waits (back-pressure, nothing dropped)
//! until the frames are written, the socket returns or the session ends. When the session ends,
//! what is queued for an end is written before its `channel_closed`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures::stream::SplitSink;
use futures::SinkExt as _;
use ssmx_protocol::document::SessionInputs;
use ssmx_protocol::payload::{session_state, task_status, AgentSessionState, ChannelClosed};
use ssmx_protocol::{AgentMessage, DecodeOptions, MessageType, PayloadType};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument as _};

use crate::hub::Hub;
use crate::malformed::{MalformedFrames, Verdict};
use crate::recording::Recorder;
use crate::store::status;

/// Bytes queued for an end, written or waiting for its socket. Covers the agent's early frames
/// (T13) and what is in flight when a client drops; past it the producing side is held back.
pub const MAX_PENDING_BYTES: usize = 4 * 1024 * 1024;
/// Bytes a writer takes from its queue for one flush of the socket.
const WRITE_BATCH: usize = 256 * 1024;
/// Frames' worth of queue (and writer batch) capacity kept once a backlog is written; more is
/// given back, so a session that has gone idle holds little memory.
const KEEP_CAPACITY: usize = 64;
/// When the session ends, time for the frames queued for an end, then its `channel_closed` and
/// close frame, to be written; past it the socket is dropped.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// A write that does not complete in this time marks the socket dead (the peer stopped reading).
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time given to a socket being replaced or dropped to take its close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Time for the agent to open its data channel after `interactive_shell` (its own retries take
/// up to ~15 s), or for a control channel to appear when the client is waiting for it.
const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// After the agent's data socket drops without the session ending, time for it to reconnect
/// (5 retries, back-off capped at 5 s) or to report completion on the control channel.
const AGENT_RECONNECT_GRACE: Duration = Duration::from_secs(30);
/// Once the agent has reported the end (`Terminating`, or `agent_task_complete` while its data
/// socket is still open), time for it to close that socket — frames it sent before are relayed
/// first — before the gateway closes it. Counted from the report, or from the last frame passed
/// on from the agent while those keep coming (a backlog queued behind a slow client).
const TERMINATING_GRACE: Duration = Duration::from_millis(2500);
/// Time TerminateSession waits for the session to be closed before answering.
pub const TERMINATE_WAIT: Duration = Duration::from_secs(5);

/// Frames are checked for length, header and type before they are relayed (T30); the digest is
/// left to the receiving end (the official client checks it) so the relay adds no hashing.
fn relay_decode_options() -> DecodeOptions {
    DecodeOptions {
        verify_digest: false,
        ..DecodeOptions::default()
    }
}

/// Which end of the data channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Client,
    Agent,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Agent => "agent",
        }
    }
}

/// What the supervisor reacts to.
#[derive(Debug)]
pub(crate) enum Event {
    Attached(Role, u64),
    /// The connection ended (with the close frame to send it, when the reader chose one).
    Detached(Role, u64, Option<CloseFrame>),
    AgentState(String),
    TaskComplete {
        status: String,
        output: String,
    },
    Terminate {
        by: String,
        done: oneshot::Sender<()>,
    },
}

type Sink = SplitSink<WebSocket, Message>;

/// The task writing one attached socket.
struct SocketWriter {
    conn_id: u64,
    /// Cancelled to take the socket back (replaced or detached); the task returns it.
    stop: CancellationToken,
    task: JoinHandle<Option<Sink>>,
}

#[derive(Default)]
struct Outlet {
    writer: Option<SocketWriter>,
    /// Frames not yet written, oldest first. Only the current writer removes frames (those it
    /// has written), so a socket that fails or is replaced leaves the rest for the next one.
    queue: VecDeque<Message>,
    queued_bytes: usize,
    /// The session has ended: nothing more is queued.
    closed: bool,
}

impl Outlet {
    fn discard_queue(&mut self) {
        self.queue.clear();
        self.queued_bytes = 0;
    }
}

/// One direction's destination: the socket of that end and the queue in front of it.
#[derive(Default)]
struct Side {
    outlet: Mutex<Outlet>,
    /// Signalled when queue space may have appeared (frames written, session ended).
    space: Notify,
    /// Signalled when frames were queued (wakes the writer).
    ready: Notify,
}

impl Side {
    fn lock(&self) -> MutexGuard<'_, Outlet> {
        self.outlet.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the writer of connection `conn_id` off this side (if it is still the attached one)
    /// and closes its socket, with `close` as the close frame when given; what it had not
    /// written stays queued.
    async fn detach(&self, conn_id: u64, close: Option<CloseFrame>) {
        let writer = {
            let mut outlet = self.lock();
            match &outlet.writer {
                Some(w) if w.conn_id == conn_id => outlet.writer.take(),
                _ => None,
            }
        };
        if let Some(writer) = writer {
            stop_writer(writer, close).await;
        }
    }

    /// Stops queueing (frames relayed from now on are dropped: the session is over). Without a
    /// socket the queue is discarded; with one it is kept for [`Side::close`].
    fn seal(&self) {
        let mut outlet = self.lock();
        outlet.closed = true;
        if outlet.writer.is_none() {
            outlet.discard_queue();
        }
        drop(outlet);
        self.space.notify_waiters();
    }

    /// Writes what is queued, then `last` and a close frame, and closes the socket — all within
    /// [`CLOSE_FLUSH_TIMEOUT`].
    async fn close(&self, last: Bytes) {
        let writer = {
            let mut outlet = self.lock();
            outlet.closed = true;
            let writer = outlet.writer.take();
            if writer.is_some() {
                outlet.queue.push_back(Message::Binary(last));
                outlet.queue.push_back(Message::Close(Some(CloseFrame {
                    code: 1000,
                    reason: "".into(),
                })));
            } else {
                outlet.discard_queue();
            }
            writer
        };
        self.space.notify_waiters();
        let Some(mut writer) = writer else { return };
        self.ready.notify_one();
        if !join_writer(&mut writer, CLOSE_FLUSH_TIMEOUT, None).await {
            warn!(
                conn_id = writer.conn_id,
                frames = self.lock().queue.len(),
                "socket did not take its last frames in time; dropped"
            );
        }
    }
}

/// Stops a writer and closes its socket.
async fn stop_writer(mut writer: SocketWriter, close: Option<CloseFrame>) {
    writer.stop.cancel();
    join_writer(&mut writer, CLOSE_TIMEOUT, close).await;
}

/// Waits up to `limit` for a writer's task to end and closes the socket it hands back (one that
/// failed or was stopped before its close frame), sending `close` first when given; past the
/// limit the task is aborted. False when it was aborted.
async fn join_writer(
    writer: &mut SocketWriter,
    limit: Duration,
    close: Option<CloseFrame>,
) -> bool {
    match tokio::time::timeout(limit, &mut writer.task).await {
        Ok(Ok(Some(mut sink))) => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                if let Some(frame) = close {
                    sink.send(Message::Close(Some(frame))).await?;
                }
                sink.close().await
            })
            .await;
            true
        }
        Ok(_) => true,
        Err(_) => {
            writer.task.abort();
            false
        }
    }
}

/// Writes `role`'s queue to its socket until stopped (returns the socket), the socket fails
/// (reports it detached) or the close frame queued at the session's end is written.
async fn write_queue(
    session: Arc<Session>,
    role: Role,
    conn_id: u64,
    mut sink: Sink,
    stop: CancellationToken,
) -> Option<Sink> {
    let side = session.side(role);
    let mut batch: Vec<Message> = Vec::new();
    loop {
        let mut bytes = 0;
        {
            let outlet = side.lock();
            for msg in &outlet.queue {
                if bytes >= WRITE_BATCH {
                    break;
                }
                bytes += message_len(msg);
                batch.push(msg.clone());
            }
        }
        if batch.is_empty() {
            if batch.capacity() > KEEP_CAPACITY {
                batch = Vec::new();
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Some(sink),
                _ = side.ready.notified() => continue,
            }
        }
        let count = batch.len();
        let closing = matches!(batch.last(), Some(Message::Close(_)));
        let write = async {
            for msg in batch.drain(..) {
                sink.feed(msg).await?;
            }
            sink.flush().await
        };
        let result = tokio::select! {
            biased;
            _ = stop.cancelled() => return Some(sink),
            result = tokio::time::timeout(WRITE_TIMEOUT, write) => result,
        };
        batch.clear();
        match result {
            Ok(Ok(())) => {
                {
                    let mut outlet = side.lock();
                    let written = count.min(outlet.queue.len());
                    outlet.queue.drain(..written);
                    outlet.queued_bytes = outlet.queued_bytes.saturating_sub(bytes);
                    if outlet.queue.is_empty() && outlet.queue.capacity() > KEEP_CAPACITY {
                        outlet.queue = VecDeque::new();
                    }
                }
                side.space.notify_waiters();
                if closing {
                    let _ = sink.close().await;
                    return None;
                }
            }
            result => {
                if !closing {
                    warn!(
                        role = role.as_str(),
                        conn_id,
                        timed_out = result.is_err(),
                        "write failed; socket detached"
                    );
                    session.send_event(Event::Detached(role, conn_id, None));
                }
                return None;
            }
        }
    }
}

/// Why a session ended.
#[derive(Debug)]
struct End {
    status: &'static str,
    /// `Output` of the client's `channel_closed` (empty: normal end).
    client_output: String,
    /// Recorded in the session's Details.
    details: String,
    /// The agent already reported the end; no `channel_closed` on its control channel.
    agent_done: bool,
}

impl End {
    fn normal(details: impl Into<String>) -> Self {
        Self {
            status: status::TERMINATED,
            client_output: String::new(),
            details: details.into(),
            agent_done: false,
        }
    }

    fn with_reason(status: &'static str, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Self {
            status,
            client_output: reason.clone(),
            details: reason,
            agent_done: false,
        }
    }
}

/// Static facts of a session plus its live relay state.
pub(crate) struct Session {
    pub id: String,
    pub target: String,
    /// The session type of its document (`Standard_Stream`, `Port`, …).
    pub session_type: String,
    /// Its document's name, and whether StartSession named it (or it is the default).
    pub document: String,
    pub document_named: bool,
    pub owner_arn: String,
    pub idle_timeout: Option<Duration>,
    /// The encoded `interactive_shell` frame.
    start_frame: Bytes,
    client: Side,
    agent: Side,
    events: mpsc::UnboundedSender<Event>,
    /// Cancelled when the session has ended: readers stop.
    pub cancel: CancellationToken,
    ended: AtomicBool,
    created: Instant,
    /// Milliseconds after `created` of the last stream message in either direction.
    last_activity_ms: AtomicU64,
    /// Milliseconds after `created` when a frame from the agent was last passed on.
    last_from_agent_ms: AtomicU64,
    recorder: Option<Recorder>,
}

/// What StartSession hands to [`Session::spawn`].
pub(crate) struct NewSession {
    pub id: String,
    pub target: String,
    pub session_type: String,
    pub document: String,
    pub document_named: bool,
    pub owner_arn: String,
    pub inputs: SessionInputs,
    pub idle_timeout_minutes: u64,
    pub start_frame: Bytes,
    pub recorder: Option<Recorder>,
}

impl Session {
    /// Creates the session, registers it with the hub and starts its supervisor.
    pub fn spawn(hub: &Arc<Hub>, new: NewSession) -> Arc<Session> {
        let (events, rx) = mpsc::unbounded_channel();
        let max = new.inputs.max_session_duration_minutes;
        let session = Arc::new(Session {
            id: new.id,
            target: new.target,
            session_type: new.session_type,
            document: new.document,
            document_named: new.document_named,
            owner_arn: new.owner_arn,
            idle_timeout: (new.idle_timeout_minutes > 0)
                .then(|| Duration::from_secs(new.idle_timeout_minutes * 60)),
            start_frame: new.start_frame,
            client: Side::default(),
            agent: Side::default(),
            events,
            cancel: CancellationToken::new(),
            ended: AtomicBool::new(false),
            created: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            last_from_agent_ms: AtomicU64::new(0),
            recorder: new.recorder,
        });
        hub.add_session(session.clone());
        let supervisor = Supervisor {
            hub: hub.clone(),
            session: session.clone(),
            rx,
            agents: hub.watch_agents(),
            max_duration: (max > 0).then(|| Duration::from_secs(max * 60)),
            client_conn: None,
            agent_conn: None,
            client_first_at: None,
            shell_sent_at: None,
            agent_ever: false,
            client_lost_at: None,
            agent_lost_at: None,
            pending_end: None,
        };
        let span = tracing::info_span!("session", id = %session.id, target = %session.target);
        hub.tracker.spawn(supervisor.run().instrument(span));
        session
    }

    /// True once the session has ended (or is ending).
    /// Records queued for the recording's file (0 when not recorded).
    pub fn recording_backlog(&self) -> usize {
        self.recorder.as_ref().map_or(0, Recorder::queued)
    }

    pub fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    pub fn send_event(&self, event: Event) -> bool {
        self.events.send(event).is_ok()
    }

    fn side(&self, role: Role) -> &Side {
        match role {
            Role::Client => &self.client,
            Role::Agent => &self.agent,
        }
    }

    fn since_created(&self) -> u64 {
        self.created.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last_activity_ms
            .store(self.since_created(), Ordering::Relaxed);
    }

    /// Attaches a socket as `role` (replacing one already there); its writer starts with what
    /// was queued for that end. Returns false when the session has ended (the socket is closed).
    pub async fn attach(self: &Arc<Self>, role: Role, conn_id: u64, mut sink: Sink) -> bool {
        let side = self.side(role);
        loop {
            let replaced = {
                let mut outlet = side.lock();
                if outlet.closed {
                    None
                } else if let Some(old) = outlet.writer.take() {
                    Some(old)
                } else {
                    let stop = CancellationToken::new();
                    let task =
                        tokio::spawn(write_queue(self.clone(), role, conn_id, sink, stop.clone()));
                    outlet.writer = Some(SocketWriter {
                        conn_id,
                        stop,
                        task,
                    });
                    // Sent before the writer can report a failure of this socket.
                    self.send_event(Event::Attached(role, conn_id));
                    drop(outlet);
                    side.ready.notify_one();
                    return true;
                }
            };
            match replaced {
                Some(old) => {
                    debug!(role = role.as_str(), old = old.conn_id, "replacing socket");
                    stop_writer(old, None).await;
                }
                None => {
                    let _ = sink.close().await;
                    return false;
                }
            }
        }
    }

    /// Queues `msg` for `role`'s socket; waits while the queue is full.
    async fn deliver(&self, role: Role, msg: Message) {
        let side = self.side(role);
        let len = message_len(&msg);
        loop {
            let space = side.space.notified();
            tokio::pin!(space);
            {
                let mut outlet = side.lock();
                if outlet.closed {
                    return;
                }
                if outlet.queue.is_empty() || outlet.queued_bytes + len <= MAX_PENDING_BYTES {
                    outlet.queued_bytes += len;
                    outlet.queue.push_back(msg);
                    drop(outlet);
                    side.ready.notify_one();
                    return;
                }
                space.as_mut().enable();
            }
            tokio::select! {
                _ = space => {}
                _ = self.cancel.cancelled() => return,
            }
        }
    }

    /// Queues a service-originated frame for `role` if its socket is there (never kept for an
    /// absent socket).
    fn notify_side(&self, role: Role, frame: Bytes) {
        let side = self.side(role);
        let mut outlet = side.lock();
        if outlet.writer.is_some() && !outlet.closed {
            outlet.queued_bytes += frame.len();
            outlet.queue.push_back(Message::Binary(frame));
            drop(outlet);
            side.ready.notify_one();
        }
    }

    /// Relays one frame read from `from`'s socket; one that does not decode is dropped and
    /// counted in `malformed`, whose verdict is returned.
    pub async fn relay(
        &self,
        from: Role,
        msg: Message,
        malformed: &mut MalformedFrames,
    ) -> Verdict {
        let data = match &msg {
            Message::Binary(b) => b.clone(),
            Message::Text(t) => Bytes::copy_from_slice(t.as_str().as_bytes()),
            _ => return Verdict::KeepOpen,
        };
        let frame = match AgentMessage::decode_with(data, &relay_decode_options()) {
            Ok(frame) => frame,
            Err(e) => return malformed.record(Instant::now(), &e),
        };
        match (from, &frame.message_type) {
            (Role::Agent, MessageType::AgentSessionState) => {
                match ssmx_protocol::payload::from_json::<AgentSessionState>(
                    "agent_session_state",
                    &frame.payload,
                ) {
                    Ok(state) => {
                        self.send_event(Event::AgentState(state.session_state));
                        return Verdict::KeepOpen;
                    }
                    Err(e) => return malformed.record(Instant::now(), &e),
                }
            }
            (Role::Agent, MessageType::OutputStreamData) => {
                self.touch();
                if let Some(rec) = &self.recorder {
                    rec.agent_stream(
                        frame.sequence_number,
                        frame.payload_type.to_u32(),
                        frame.payload.clone(),
                    )
                    .await;
                }
            }
            (Role::Client, MessageType::InputStreamData) => {
                self.touch();
                if let Some(rec) = &self.recorder {
                    rec.client_stream(
                        frame.sequence_number,
                        frame.payload_type.to_u32(),
                        frame.payload.clone(),
                    )
                    .await;
                }
            }
            _ => {}
        }
        let to = match from {
            Role::Agent => Role::Client,
            Role::Client => Role::Agent,
        };
        self.deliver(to, msg).await;
        if from == Role::Agent {
            self.last_from_agent_ms
                .store(self.since_created(), Ordering::Relaxed);
        }
        Verdict::KeepOpen
    }
}

/// "1 minute", "20 minutes".
fn minutes(d: Duration) -> String {
    match d.as_secs() / 60 {
        1 => "1 minute".to_owned(),
        n => format!("{n} minutes"),
    }
}

fn message_len(msg: &Message) -> usize {
    match msg {
        Message::Binary(b) => b.len(),
        Message::Text(t) => t.len(),
        _ => 0,
    }
}

fn channel_closed_frame(session_id: &str, destination: &str, output: &str) -> Bytes {
    let now = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    ChannelClosed::message(session_id, destination, output, now).to_bytes()
}

fn publication_frame(message_type: MessageType) -> Bytes {
    // The payload is read by nobody, but must not be empty (T6).
    AgentMessage::new(
        message_type,
        PayloadType::Undefined,
        Bytes::from_static(b"{}"),
    )
    .to_bytes()
}

struct Supervisor {
    hub: Arc<Hub>,
    session: Arc<Session>,
    rx: mpsc::UnboundedReceiver<Event>,
    agents: tokio::sync::watch::Receiver<u64>,
    max_duration: Option<Duration>,
    client_conn: Option<u64>,
    agent_conn: Option<u64>,
    client_first_at: Option<Instant>,
    shell_sent_at: Option<Instant>,
    agent_ever: bool,
    client_lost_at: Option<Instant>,
    agent_lost_at: Option<Instant>,
    /// The end the agent reported, applied when its data socket closes or the grace expires.
    pending_end: Option<(End, Instant)>,
}

impl Supervisor {
    async fn run(mut self) {
        let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
        let end = loop {
            let deadline = self.next_deadline();
            let waiting_for_agent = self.client_first_at.is_some() && self.shell_sent_at.is_none();
            tokio::select! {
                event = self.rx.recv() => {
                    let Some(event) = event else { break End::normal("session dropped") };
                    if let Some(end) = self.handle(event, &mut waiters).await {
                        break end;
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if let Some(end) = self.check_timers() {
                        break end;
                    }
                }
                changed = self.agents.changed(), if waiting_for_agent => {
                    if changed.is_ok() {
                        self.start_agent().await;
                    }
                }
                _ = self.hub.shutdown.cancelled() => {
                    break End::with_reason(status::TERMINATED, "the gateway is shutting down");
                }
            }
        };
        self.finish(end).await;
        for done in waiters {
            let _ = done.send(());
        }
    }

    async fn handle(
        &mut self,
        event: Event,
        waiters: &mut Vec<oneshot::Sender<()>>,
    ) -> Option<End> {
        let s = &self.session;
        match event {
            Event::Attached(Role::Client, id) => {
                info!(conn_id = id, "client attached");
                self.client_conn = Some(id);
                self.client_lost_at = None;
                if self.client_first_at.is_none() {
                    self.client_first_at = Some(Instant::now());
                    self.start_agent().await;
                } else {
                    self.set_status(status::CONNECTED);
                    if self.agent_conn.is_some() {
                        s.notify_side(
                            Role::Agent,
                            publication_frame(MessageType::StartPublication),
                        );
                    }
                }
            }
            Event::Detached(Role::Client, id, close) => {
                if self.client_conn == Some(id) {
                    info!(conn_id = id, "client detached");
                    self.client_conn = None;
                    self.client_lost_at = Some(Instant::now());
                    s.client.detach(id, close).await;
                    self.set_status(status::DISCONNECTED);
                    if self.agent_conn.is_some() {
                        s.notify_side(
                            Role::Agent,
                            publication_frame(MessageType::PausePublication),
                        );
                    }
                }
            }
            Event::Attached(Role::Agent, id) => {
                info!(conn_id = id, "agent attached");
                self.agent_conn = Some(id);
                self.agent_ever = true;
                self.agent_lost_at = None;
                if self.client_conn.is_none() {
                    s.notify_side(
                        Role::Agent,
                        publication_frame(MessageType::PausePublication),
                    );
                }
            }
            Event::Detached(Role::Agent, id, close) => {
                if self.agent_conn == Some(id) {
                    info!(conn_id = id, "agent detached");
                    self.agent_conn = None;
                    s.agent.detach(id, close).await;
                    if let Some((end, _)) = self.pending_end.take() {
                        return Some(end);
                    }
                    self.agent_lost_at = Some(Instant::now());
                }
            }
            Event::AgentState(state) => {
                debug!(%state, "agent session state");
                if state == session_state::CONNECTED {
                    self.set_status(status::CONNECTED);
                } else if state == session_state::TERMINATING {
                    self.set_status(status::TERMINATING);
                    return self.agent_reported(End::normal("the session ended on the target"));
                }
            }
            Event::TaskComplete {
                status: final_status,
                output,
            } => {
                info!(%final_status, "agent reported the session complete");
                let failed = matches!(
                    final_status.as_str(),
                    task_status::FAILED | task_status::TIMED_OUT
                );
                let mut end = if failed {
                    let reason = if output.is_empty() {
                        format!("the session failed on the target ({final_status})")
                    } else {
                        output
                    };
                    End::with_reason(status::FAILED, reason)
                } else {
                    End::normal(format!("the target reported {final_status}"))
                };
                end.agent_done = true;
                return self.agent_reported(end);
            }
            Event::Terminate { by, done } => {
                waiters.push(done);
                self.set_status(status::TERMINATING);
                return Some(End::normal(format!("terminated by {by}")));
            }
        }
        None
    }

    /// The agent has reported the end: apply it now if its data socket is gone, else once the
    /// socket closes (so its last frames are relayed) or the grace expires. A later report (the
    /// completion after `Terminating`) refines the earlier one.
    fn agent_reported(&mut self, end: End) -> Option<End> {
        if self.agent_conn.is_none() {
            return Some(end);
        }
        let deadline = match &self.pending_end {
            Some((_, at)) => *at,
            None => Instant::now() + TERMINATING_GRACE,
        };
        self.pending_end = Some((end, deadline));
        None
    }

    /// Sends `interactive_shell` once the client is there and the target's control channel is.
    async fn start_agent(&mut self) {
        if self.shell_sent_at.is_some() {
            return;
        }
        let s = &self.session;
        if self
            .hub
            .send_control(&s.target, s.start_frame.clone())
            .await
        {
            info!("interactive_shell sent to the target");
            self.shell_sent_at = Some(Instant::now());
        } else {
            info!("waiting for the target's control channel");
        }
    }

    fn next_deadline(&self) -> Instant {
        let s = &self.session;
        let far = Instant::now() + Duration::from_secs(3600);
        let mut deadlines = vec![far];
        match (self.client_first_at, self.shell_sent_at) {
            (None, _) => deadlines.push(s.created + self.hub.settings.client_connect_timeout),
            (Some(at), None) => deadlines.push(at + AGENT_CONNECT_TIMEOUT),
            (Some(_), Some(at)) if !self.agent_ever => deadlines.push(at + AGENT_CONNECT_TIMEOUT),
            _ => {}
        }
        if let Some(at) = self.client_lost_at {
            deadlines.push(at + self.hub.settings.disconnect_timeout);
        }
        if let Some(at) = self.agent_lost_at {
            deadlines.push(at + AGENT_RECONNECT_GRACE);
        }
        if let Some((_, at)) = &self.pending_end {
            deadlines.push(*at);
        }
        if let Some(idle) = s.idle_timeout {
            deadlines.push(self.last_activity() + idle);
        }
        if let Some(max) = self.max_duration {
            deadlines.push(s.created + max);
        }
        deadlines.into_iter().min().unwrap_or(far)
    }

    fn last_activity(&self) -> Instant {
        self.session.created
            + Duration::from_millis(self.session.last_activity_ms.load(Ordering::Relaxed))
    }

    fn check_timers(&mut self) -> Option<End> {
        let s = &self.session;
        let now = Instant::now();
        let passed = |at: Instant| now >= at;
        match (self.client_first_at, self.shell_sent_at) {
            (None, _) if passed(s.created + self.hub.settings.client_connect_timeout) => {
                return Some(End::with_reason(
                    status::FAILED,
                    "the client never opened the data channel",
                ))
            }
            (Some(at), None) if passed(at + AGENT_CONNECT_TIMEOUT) => {
                return Some(End::with_reason(
                    status::FAILED,
                    format!("target {} is not connected", s.target),
                ))
            }
            (Some(_), Some(at)) if !self.agent_ever && passed(at + AGENT_CONNECT_TIMEOUT) => {
                return Some(End::with_reason(
                    status::FAILED,
                    "the agent did not open the session's data channel",
                ))
            }
            _ => {}
        }
        if let Some((end, at)) = self.pending_end.take() {
            let progress = s.created
                + Duration::from_millis(s.last_from_agent_ms.load(Ordering::Relaxed))
                + TERMINATING_GRACE;
            if !passed(at) {
                self.pending_end = Some((end, at));
            } else if self.agent_conn.is_some() && !passed(progress) {
                // Frames from the agent are still being passed on: wait while they flow.
                self.pending_end = Some((end, progress));
            } else {
                return Some(end);
            }
        }
        if let Some(at) = self.client_lost_at {
            if passed(at + self.hub.settings.disconnect_timeout) {
                return Some(End::normal("the client disconnected and did not resume"));
            }
        }
        if let Some(at) = self.agent_lost_at {
            if passed(at + AGENT_RECONNECT_GRACE) {
                return Some(End::with_reason(
                    status::FAILED,
                    "the agent's data channel closed unexpectedly",
                ));
            }
        }
        if let Some(idle) = s.idle_timeout {
            if passed(self.last_activity() + idle) {
                return Some(End::with_reason(
                    status::TERMINATED,
                    format!(
                        "the session was idle for {} and has been terminated",
                        minutes(idle)
                    ),
                ));
            }
        }
        if let Some(max) = self.max_duration {
            if passed(s.created + max) {
                return Some(End::with_reason(
                    status::TERMINATED,
                    format!(
                        "the session reached its maximum duration of {}",
                        minutes(max)
                    ),
                ));
            }
        }
        None
    }

    fn set_status(&self, st: &str) {
        if let Err(e) = self.hub.store.set_session_status(&self.session.id, st) {
            warn!(error = %e, "cannot record session status");
        }
    }

    /// Closes the session: both queues sealed (nothing more is relayed), the recording completed
    /// and the end recorded (so whoever sees `channel_closed` finds a consistent record), then
    /// at each end what was already queued for it followed by `channel_closed`, sockets closed,
    /// tokens revoked.
    async fn finish(self, end: End) {
        let s = &self.session;
        s.ended.store(true, Ordering::Release);
        self.hub.tokens().revoke_session(&s.id);
        info!(status = end.status, details = %end.details, "session ending");
        s.client.seal();
        s.agent.seal();

        let store = &self.hub.store;
        if let Some(recorder) = &s.recorder {
            match recorder.finish().await {
                Ok(path) => {
                    if let Err(e) = store.set_recording(&s.id, &path) {
                        warn!(error = %e, "cannot record the recording's path");
                    }
                }
                Err(e) => warn!(error = %e, "recording could not be completed"),
            }
        }
        if let Err(e) = store.end_session(&s.id, end.status, &end.details, SystemTime::now()) {
            warn!(error = %e, "cannot record the session's end");
        }
        if let Err(e) = store.audit(
            "gateway",
            "SessionEnded",
            &s.target,
            &s.id,
            &format!("{}: {}", end.status, end.details),
        ) {
            warn!(error = %e, "cannot write the audit trail");
        }

        let agent_frame = channel_closed_frame(&s.id, &s.target, "");
        tokio::join!(
            s.client
                .close(channel_closed_frame(&s.id, &s.target, &end.client_output)),
            s.agent.close(agent_frame.clone()),
        );
        if !end.agent_done && self.shell_sent_at.is_some() {
            self.hub.send_control(&s.target, agent_frame).await;
        }
        s.cancel.cancel();
        self.hub.remove_session(&s.id);
    }
}
