//! The tokio driver: one task runs a [`Channel`] over a [`Transport`].
//!
//! The task reads frames, fires the retransmission timer and writes what the core queues; the
//! application holds a [`Sender`] (cheap to clone) and a [`Receiver`]. The core sits behind a
//! mutex shared by the task and the handles, so a `send` either happens entirely or not at all:
//! every `Sender` future is cancellation-safe.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use bytes::Bytes;
//! use ssmx_channel::{spawn, ChannelConfig, ChannelEvent, Role, Transport};
//! use ssmx_protocol::PayloadType;
//!
//! let (client_side, agent_side) = Transport::pair();
//! let (client, mut client_events) = spawn(ChannelConfig::new(Role::Client), client_side);
//! let (agent, _agent_events) = spawn(ChannelConfig::new(Role::Agent), agent_side);
//! agent.send(PayloadType::Output, Bytes::from_static(b"hello")).await.unwrap();
//! agent.flush().await.unwrap();
//! assert_eq!(
//!     client_events.recv().await,
//!     Some(ChannelEvent::Payload { payload_type: PayloadType::Output, payload: Bytes::from_static(b"hello") })
//! );
//! # drop(client);
//! # }
//! ```
//!
//! The receiving side applies back-pressure: while [`EVENT_QUEUE_CAPACITY`] events wait for the
//! `Receiver`, the transport is not read. If acks for our own stream messages are awaited
//! meanwhile, frames are still read for them, and new stream data is left unacknowledged (the
//! peer sends it again at its RTO): an application that sends without reading for a while does
//! not stall its own output.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures::{future, Sink, SinkExt, Stream, StreamExt};
use ssmx_protocol::payload::ChannelClosed;
use ssmx_protocol::{AgentMessage, PayloadType};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

use crate::core::{Channel, ChannelConfig, ChannelError, Event, SendError};

/// Events waiting for the [`Receiver`] before the driver stops reading the transport. With
/// 32 KiB payloads this holds 2 MiB per session.
pub const EVENT_QUEUE_CAPACITY: usize = 64;
/// Frames buffered in each direction of [`Transport::pair`], like a socket's buffer.
pub const PAIR_BUFFER_FRAMES: usize = 64;
/// How long [`Sender::close`] keeps writing frames already queued (acks, last data) before the
/// transport is dropped; the official agent drains its buffer for up to 2 s before closing.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Time between WebSocket pings on a data channel: the official client's 5 minutes, which keeps
/// idle sessions through proxies and load balancers that close silent connections.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Frames and timer expiries handled per wake-up before the task yields to others.
const WORK_PER_WAKE: usize = 64;

/// A failure of the underlying connection (not of the channel: reattach and go on).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("transport: {0}")]
pub struct TransportError(pub String);

/// Whole WebSocket messages in both directions. Text messages are passed up like binary ones;
/// ping/pong/close are handled below this layer.
pub struct Transport {
    /// Frames to send (as binary messages).
    pub sink: Pin<Box<dyn Sink<Bytes, Error = TransportError> + Send>>,
    /// Frames received.
    pub stream: Pin<Box<dyn Stream<Item = Result<Bytes, TransportError>> + Send>>,
}

impl Transport {
    /// Wraps a connected WebSocket whose Open…Channel text frame has already been sent, with a
    /// ping every [`KEEPALIVE_INTERVAL`] as the official client sends.
    ///
    /// Frames go out as binary messages; binary and text messages come in alike (§2.4). Pongs
    /// to the peer's pings are sent by the WebSocket layer; a close message ends the stream.
    pub fn from_websocket<S>(ws: WebSocketStream<S>) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::from_websocket_with_keepalive(ws, KEEPALIVE_INTERVAL)
    }

    /// [`Transport::from_websocket`] with pings every `keepalive` (e.g. shorter, for a proxy or
    /// load balancer that drops idle connections sooner).
    pub fn from_websocket_with_keepalive<S>(ws: WebSocketStream<S>, keepalive: Duration) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sink, stream) = ws.split();
        let sink = KeepaliveSink::new(sink, keepalive)
            .sink_map_err(|err| TransportError(err.to_string()))
            .with(|frame: Bytes| future::ready(Ok::<_, TransportError>(Message::Binary(frame))));
        let stream = stream.filter_map(|msg| {
            future::ready(match msg {
                Ok(Message::Binary(frame)) => Some(Ok(frame)),
                Ok(Message::Text(text)) => Some(Ok(Bytes::from(text))),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_)) => {
                    None
                }
                Err(err) => Some(Err(TransportError(err.to_string()))),
            })
        });
        Self {
            sink: Box::pin(sink),
            stream: Box::pin(stream),
        }
    }

    /// Two transports joined in memory, each delivering what the other sends; for running two
    /// channel ends (or an end and a relay) without sockets. Dropping one ends the other's
    /// stream, as a closed connection would.
    pub fn pair() -> (Transport, Transport) {
        let (a_tx, a_rx) = futures::channel::mpsc::channel::<Bytes>(PAIR_BUFFER_FRAMES);
        let (b_tx, b_rx) = futures::channel::mpsc::channel::<Bytes>(PAIR_BUFFER_FRAMES);
        let end = |tx: futures::channel::mpsc::Sender<Bytes>,
                   rx: futures::channel::mpsc::Receiver<Bytes>| Transport {
            sink: Box::pin(tx.sink_map_err(|err| TransportError(err.to_string()))),
            stream: Box::pin(rx.map(Ok)),
        };
        (end(a_tx, b_rx), end(b_tx, a_rx))
    }
}

/// A WebSocket sink that slips a ping in whenever `interval` has passed since the last one.
///
/// The driver polls its sink for readiness on every wake-up, so the ping timer registered there
/// wakes the driver when a ping is due, idle or not; no extra task is needed.
struct KeepaliveSink<S> {
    inner: S,
    interval: Duration,
    next_ping: Pin<Box<Sleep>>,
    /// A ping was queued and not yet flushed (the driver flushes only its own frames).
    ping_unflushed: bool,
}

impl<S> KeepaliveSink<S> {
    fn new(inner: S, interval: Duration) -> Self {
        Self {
            inner,
            interval,
            next_ping: Box::pin(tokio::time::sleep(interval)),
            ping_unflushed: false,
        }
    }
}

impl<S> Sink<Message> for KeepaliveSink<S>
where
    S: Sink<Message> + Unpin,
{
    type Error = S::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.next_ping.as_mut().poll(cx).is_ready() {
            futures::ready!(Pin::new(&mut self.inner).poll_ready(cx))?;
            Pin::new(&mut self.inner).start_send(Message::Ping(Bytes::new()))?;
            let next = Instant::now() + self.interval;
            self.next_ping.as_mut().reset(next);
            // Register the timer again so the next ping wakes the task too.
            let _ = self.next_ping.as_mut().poll(cx);
            self.ping_unflushed = true;
            tracing::trace!("keepalive ping queued");
        }
        if self.ping_unflushed {
            if let Poll::Ready(flushed) = Pin::new(&mut self.inner).poll_flush(cx) {
                flushed?;
                self.ping_unflushed = false;
            }
        }
        Pin::new(&mut self.inner).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        Pin::new(&mut self.inner).start_send(item)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// What the application receives.
#[derive(Clone, Debug, PartialEq)]
pub enum ChannelEvent {
    /// The peer's next in-order stream payload.
    Payload {
        /// Its payload type.
        payload_type: PayloadType,
        /// Its bytes.
        payload: Bytes,
    },
    /// A non-stream message other than acks and publication control.
    Message(AgentMessage),
    /// The service closed the channel; no more events follow.
    Closed(ChannelClosed),
    /// The transport dropped; call [`Sender::reattach`] with a new one. Sending keeps buffering.
    TransportLost(TransportError),
    /// The channel failed for good; no more events follow.
    Failed(ChannelError),
}

/// Starts the driver task. It ends when the channel closes or fails, or when the `Receiver` and
/// every `Sender` are dropped.
///
/// The task runs in the caller's tracing span. Must be called from within a tokio runtime with
/// the time driver enabled.
pub fn spawn(config: ChannelConfig, transport: Transport) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            channel: Channel::new(config, Instant::now().into_std()),
            events: VecDeque::new(),
            receiver_waker: None,
            driver_waker: None,
            replacement: None,
            close_requested: false,
            senders_alive: true,
            receiver_alive: true,
            ended: None,
        }),
        progress: Notify::new(),
    });
    let driver = Driver {
        shared: Arc::clone(&shared),
        transport: Some(transport),
        unflushed: false,
        timer: None,
        linger: None,
    };
    tokio::spawn(driver.instrument(tracing::Span::current()));
    let sender = Sender {
        handle: Arc::new(SenderHandle {
            shared: Arc::clone(&shared),
        }),
    };
    (sender, Receiver { shared })
}

/// State shared by the driver task and the handles.
struct Shared {
    state: Mutex<State>,
    /// Notified when acks free window space, and when the channel or the driver ends.
    progress: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the core half-updated in a way that
        // matters more than losing the session, so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct State {
    channel: Channel,
    /// Events for the `Receiver`; at most `EVENT_QUEUE_CAPACITY` while reading goes on.
    events: VecDeque<ChannelEvent>,
    receiver_waker: Option<Waker>,
    driver_waker: Option<Waker>,
    /// A transport from `reattach`, for the driver to take.
    replacement: Option<Transport>,
    close_requested: bool,
    senders_alive: bool,
    receiver_alive: bool,
    /// Set when the driver has ended: what `Sender` calls return from then on.
    ended: Option<ChannelError>,
}

impl State {
    fn wake_driver(&mut self) {
        if let Some(waker) = self.driver_waker.take() {
            waker.wake();
        }
    }

    fn push_event(&mut self, event: ChannelEvent) {
        if !self.receiver_alive {
            tracing::trace!(?event, "event dropped: the receiver is gone");
            return;
        }
        self.events.push_back(event);
        if let Some(waker) = self.receiver_waker.take() {
            waker.wake();
        }
    }

    /// The error for a `Sender` call, if the channel can no longer take one.
    fn unusable(&self) -> Option<ChannelError> {
        if let Some(err) = &self.ended {
            return Some(err.clone());
        }
        self.close_requested.then_some(ChannelError::Closed)
    }
}

/// What one step of the driver achieved.
enum Step {
    /// Something happened; step again.
    Progress,
    /// Everything waits on a registered waker.
    Idle,
    /// The driver is done.
    Finished,
}

/// The task's future.
struct Driver {
    shared: Arc<Shared>,
    transport: Option<Transport>,
    /// Frames were started on the sink since its last flush.
    unflushed: bool,
    /// The retransmission timer, armed at the core's `poll_timeout`.
    timer: Option<Pin<Box<Sleep>>>,
    /// Deadline of a close in progress.
    linger: Option<Pin<Box<Sleep>>>,
}

impl Future for Driver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let shared = Arc::clone(&self.shared);
        let mut st = shared.lock();
        match &st.driver_waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => st.driver_waker = Some(cx.waker().clone()),
        }
        for _ in 0..WORK_PER_WAKE {
            match self.step(&mut st, cx) {
                Step::Progress => continue,
                Step::Idle => return Poll::Pending,
                Step::Finished => {
                    drop(st);
                    shared.progress.notify_waiters();
                    return Poll::Ready(());
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Driver {
    fn step(&mut self, st: &mut State, cx: &mut Context<'_>) -> Step {
        if !st.senders_alive && !st.receiver_alive {
            tracing::debug!("every handle dropped; channel driver ends");
            return self.finish(st, ChannelError::Closed);
        }
        let now = Instant::now();
        if let Some(transport) = st.replacement.take() {
            tracing::info!("transport reattached; resending unacknowledged messages");
            self.transport = Some(transport);
            self.unflushed = false;
            st.channel.handle_reconnect(now.into_std());
            return Step::Progress;
        }
        if st.close_requested && self.linger.is_none() {
            st.channel.close();
            self.timer = None;
            self.linger = Some(Box::pin(tokio::time::sleep(CLOSE_LINGER)));
        }
        if let Some(end) = self.pump_events(st) {
            return self.finish(st, end);
        }
        let mut progress = self.write(st, cx);
        if let Some(linger) = &mut self.linger {
            let written =
                self.transport.is_none() || (!st.channel.has_pending_transmit() && !self.unflushed);
            if written || linger.as_mut().poll(cx).is_ready() {
                tracing::debug!("channel closed locally");
                return self.finish(st, ChannelError::Closed);
            }
            return if progress { Step::Progress } else { Step::Idle };
        }
        progress |= self.read(st, cx, now);
        progress |= self.poll_timer(st, cx);
        if progress {
            Step::Progress
        } else {
            Step::Idle
        }
    }

    /// Moves core events to the `Receiver`'s queue while it has room; returns the end of the
    /// channel if a closing event went out.
    fn pump_events(&mut self, st: &mut State) -> Option<ChannelError> {
        while st.events.len() < EVENT_QUEUE_CAPACITY || !st.receiver_alive {
            let Some(event) = to_channel_event(st.channel.poll_event()?) else {
                continue;
            };
            let end = match &event {
                ChannelEvent::Closed(closed) => {
                    tracing::info!(output = %closed.output, "channel closed by the service");
                    Some(ChannelError::Closed)
                }
                ChannelEvent::Failed(err) => {
                    tracing::warn!(%err, "channel failed");
                    Some(err.clone())
                }
                _ => None,
            };
            st.push_event(event);
            if end.is_some() {
                return end;
            }
        }
        None
    }

    /// Writes queued frames while the sink takes them, then flushes; true if any went out.
    fn write(&mut self, st: &mut State, cx: &mut Context<'_>) -> bool {
        let Some(transport) = &mut self.transport else {
            return false;
        };
        let mut wrote = false;
        let result = loop {
            match transport.sink.as_mut().poll_ready(cx) {
                Poll::Pending => break Ok(()),
                Poll::Ready(Err(err)) => break Err(err),
                Poll::Ready(Ok(())) => {}
            }
            let Some(frame) = st.channel.poll_transmit() else {
                break Ok(());
            };
            if let Err(err) = transport.sink.as_mut().start_send(frame) {
                break Err(err);
            }
            wrote = true;
            self.unflushed = true;
        };
        let result = result.and_then(|()| {
            if self.unflushed {
                if let Poll::Ready(flushed) = transport.sink.as_mut().poll_flush(cx) {
                    flushed?;
                    self.unflushed = false;
                }
            }
            Ok(())
        });
        if let Err(err) = result {
            self.lose_transport(st, err);
            return true;
        }
        wrote
    }

    /// Handles one received frame; true if anything happened. While the `Receiver` is behind,
    /// the transport is left unread (back-pressure through the connection) unless acks for our
    /// own stream messages are awaited: then frames are read, acks taken and new stream data
    /// left unacknowledged for the peer to resend.
    fn read(&mut self, st: &mut State, cx: &mut Context<'_>, now: Instant) -> bool {
        let behind = st.events.len() >= EVENT_QUEUE_CAPACITY && st.receiver_alive;
        if behind && st.channel.unacked() == 0 {
            return false;
        }
        st.channel.set_receive_window(!behind);
        let Some(transport) = &mut self.transport else {
            return false;
        };
        match transport.stream.as_mut().poll_next(cx) {
            Poll::Pending => false,
            Poll::Ready(Some(Ok(frame))) => {
                let unacked = st.channel.unacked();
                st.channel.handle_frame(now.into_std(), frame);
                if st.channel.unacked() < unacked || !st.channel.is_open() {
                    self.shared.progress.notify_waiters();
                }
                true
            }
            Poll::Ready(Some(Err(err))) => {
                self.lose_transport(st, err);
                true
            }
            Poll::Ready(None) => {
                self.lose_transport(st, TransportError("connection closed by the peer".into()));
                true
            }
        }
    }

    /// Arms the timer at the core's deadline and fires it when due; true if it fired.
    fn poll_timer(&mut self, st: &mut State, cx: &mut Context<'_>) -> bool {
        let Some(deadline) = st.channel.poll_timeout().map(Instant::from_std) else {
            self.timer = None;
            return false;
        };
        let timer = match &mut self.timer {
            Some(timer) => {
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        // The timer fired, so the deadline counts as reached even if the clock reads earlier.
        st.channel
            .handle_timeout(Instant::now().max(deadline).into_std());
        if !st.channel.is_open() {
            self.shared.progress.notify_waiters();
        }
        true
    }

    fn lose_transport(&mut self, st: &mut State, err: TransportError) {
        tracing::warn!(%err, "transport lost; waiting for a reattach");
        self.transport = None;
        self.unflushed = false;
        st.push_event(ChannelEvent::TransportLost(err));
    }

    /// Drops the transport and hands every remaining core event to the `Receiver`.
    fn finish(&mut self, st: &mut State, end: ChannelError) -> Step {
        self.transport = None;
        self.timer = None;
        self.linger = None;
        while let Some(event) = st.channel.poll_event() {
            if let Some(event) = to_channel_event(event) {
                st.push_event(event);
            }
        }
        st.channel.close();
        st.ended = Some(end);
        if let Some(waker) = st.receiver_waker.take() {
            waker.wake();
        }
        Step::Finished
    }
}

/// The application's view of a core event; publication control and rejected frames are only
/// logged (the core has already acted on them).
fn to_channel_event(event: Event) -> Option<ChannelEvent> {
    match event {
        Event::Payload {
            payload_type,
            payload,
            ..
        } => Some(ChannelEvent::Payload {
            payload_type,
            payload,
        }),
        Event::Message(msg) => Some(ChannelEvent::Message(msg)),
        Event::Closed(closed) => Some(ChannelEvent::Closed(closed)),
        Event::Failed(err) => Some(ChannelEvent::Failed(err)),
        Event::Paused => {
            tracing::info!("peer away: publication paused");
            None
        }
        Event::Resumed => {
            tracing::info!("publication resumed");
            None
        }
        Event::Rejected(err) => {
            tracing::warn!(%err, "frame rejected");
            None
        }
    }
}

/// The writing half; cheap to clone.
#[derive(Clone)]
pub struct Sender {
    handle: Arc<SenderHandle>,
}

/// Shared by all clones of a [`Sender`]; its drop tells the driver the last one is gone.
struct SenderHandle {
    shared: Arc<Shared>,
}

impl Drop for SenderHandle {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.senders_alive = false;
        st.wake_driver();
    }
}

impl Sender {
    /// Sends a stream payload, waiting while the send window is full. Output longer than the
    /// negotiated maximum is split.
    ///
    /// Cancellation-safe: if the future is dropped, the payload was either queued whole or not
    /// at all. Payloads go out in the order their `send` calls completed.
    pub async fn send(
        &self,
        payload_type: PayloadType,
        payload: Bytes,
    ) -> Result<(), ChannelError> {
        let shared = &self.handle.shared;
        loop {
            let progress = shared.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            {
                let mut st = shared.lock();
                if let Some(err) = st.unusable() {
                    return Err(err);
                }
                match st
                    .channel
                    .send(Instant::now().into_std(), payload_type, payload.clone())
                {
                    Ok(_) => {
                        st.wake_driver();
                        return Ok(());
                    }
                    Err(SendError::WindowFull) => {}
                    Err(SendError::Channel(err)) => return Err(err),
                }
            }
            progress.await;
        }
    }

    /// Sends a non-stream message once (e.g. `agent_session_state`).
    ///
    /// Queued while the transport is lost and written after the next reattach.
    pub async fn send_message(&self, msg: AgentMessage) -> Result<(), ChannelError> {
        let mut st = self.handle.shared.lock();
        if let Some(err) = st.unusable() {
            return Err(err);
        }
        st.channel.send_message(msg);
        st.wake_driver();
        Ok(())
    }

    /// Replaces the transport after a reconnect; unacknowledged messages are sent again.
    pub async fn reattach(&self, transport: Transport) -> Result<(), ChannelError> {
        let mut st = self.handle.shared.lock();
        if let Some(err) = st.unusable() {
            return Err(err);
        }
        st.replacement = Some(transport);
        st.wake_driver();
        Ok(())
    }

    /// Resolves when every stream message sent so far has been acknowledged.
    pub async fn flush(&self) -> Result<(), ChannelError> {
        let shared = &self.handle.shared;
        loop {
            let progress = shared.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            {
                let st = shared.lock();
                if st.channel.unacked() == 0 {
                    return Ok(());
                }
                if let Some(err) = st.unusable() {
                    return Err(err);
                }
            }
            progress.await;
        }
    }

    /// Changes the largest payload per message (after ssmx ends agreed on a larger one).
    pub fn set_max_payload(&self, max_payload: usize) {
        self.handle
            .shared
            .lock()
            .channel
            .set_max_payload(max_payload);
    }

    /// Stops the driver and drops the transport.
    ///
    /// Frames already queued (acks, data not yet written) are still written for up to
    /// [`CLOSE_LINGER`]; unacknowledged data is not waited for: call [`Sender::flush`] first for
    /// that. Events already received stay readable from the [`Receiver`].
    pub fn close(&self) {
        let mut st = self.handle.shared.lock();
        st.close_requested = true;
        st.wake_driver();
        drop(st);
        self.handle.shared.progress.notify_waiters();
    }
}

/// The reading half.
pub struct Receiver {
    shared: Arc<Shared>,
}

impl Receiver {
    /// The next event; `None` once the driver has ended.
    pub async fn recv(&mut self) -> Option<ChannelEvent> {
        future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next event; `Ready(None)` once the driver has ended and every event was
    /// read.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<ChannelEvent>> {
        let mut st = self.shared.lock();
        if let Some(event) = st.events.pop_front() {
            if st.events.len() + 1 >= EVENT_QUEUE_CAPACITY {
                // The driver may have stopped reading for want of room.
                st.wake_driver();
            }
            return Poll::Ready(Some(event));
        }
        if st.ended.is_some() {
            return Poll::Ready(None);
        }
        st.receiver_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Stream for Receiver {
    type Item = ChannelEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ChannelEvent>> {
        self.get_mut().poll_recv(cx)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.receiver_alive = false;
        st.events.clear();
        st.wake_driver();
    }
}
