//! What a session plugin sees of its session: payloads in, payloads out, a cancellation token.
//!
//! Plugins write through [`Output`] (which records the transcript and the idle clock) into an
//! [`OutputSink`] — the data channel in production, a plain queue in unit tests — and read
//! [`Input`] from a bounded queue fed by the session's receive loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use ssmx_protocol::crypto::{SessionCipher, OVERHEAD};
use ssmx_protocol::PayloadType;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::transcript::Transcript;

/// The data channel is gone; nothing more can be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the data channel is closed")]
pub(crate) struct OutputClosed;

/// Where a plugin's stream payloads go.
pub(crate) trait OutputSink: Send + Sync {
    /// Sends one stream payload, waiting while the peer is behind.
    fn send(
        &self,
        payload_type: PayloadType,
        payload: Bytes,
    ) -> BoxFuture<'_, Result<(), OutputClosed>>;
}

impl OutputSink for ssmx_channel::Sender {
    fn send(
        &self,
        payload_type: PayloadType,
        payload: Bytes,
    ) -> BoxFuture<'_, Result<(), OutputClosed>> {
        Box::pin(async move {
            ssmx_channel::Sender::send(self, payload_type, payload)
                .await
                .map_err(|_| OutputClosed)
        })
    }
}

/// The data channel of an encrypted session (PROTOCOL.md §7): Output, StdErr and ExitCode are
/// sealed with the session's data key, each piece small enough for one message (the channel
/// would split a longer payload, and a split ciphertext cannot be opened).
pub(crate) struct EncryptedSink {
    sender: ssmx_channel::Sender,
    cipher: Arc<SessionCipher>,
    /// Largest plaintext per message: the message limit less [`OVERHEAD`].
    max_plaintext: usize,
}

impl EncryptedSink {
    /// Seals what goes out on `sender`, whose messages carry at most `max_payload` bytes.
    pub(crate) fn new(
        sender: ssmx_channel::Sender,
        cipher: Arc<SessionCipher>,
        max_payload: usize,
    ) -> Self {
        Self {
            sender,
            cipher,
            max_plaintext: max_payload.saturating_sub(OVERHEAD).max(1),
        }
    }
}

impl OutputSink for EncryptedSink {
    fn send(
        &self,
        payload_type: PayloadType,
        payload: Bytes,
    ) -> BoxFuture<'_, Result<(), OutputClosed>> {
        Box::pin(async move {
            if !self.cipher.role().encrypts(payload_type) {
                return OutputSink::send(&self.sender, payload_type, payload).await;
            }
            for piece in payload.chunks(self.max_plaintext) {
                let sealed = self.cipher.encrypt(piece);
                OutputSink::send(&self.sender, payload_type, sealed).await?;
            }
            Ok(())
        })
    }
}

/// One stream payload from the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Input {
    /// Its payload type (Output, Size, Flag…).
    pub(crate) payload_type: PayloadType,
    /// Its bytes.
    pub(crate) payload: Bytes,
}

/// Time of the last stream payload in either direction, for the idle timeout.
#[derive(Clone)]
pub(crate) struct Activity {
    started: Instant,
    last_millis: Arc<AtomicU64>,
}

impl Activity {
    /// A clock that starts now.
    pub(crate) fn new() -> Self {
        Self {
            started: Instant::now(),
            last_millis: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Notes activity now.
    pub(crate) fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_millis.fetch_max(now, Ordering::Relaxed);
    }

    /// How long since the last activity.
    pub(crate) fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_millis.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

/// A plugin's way out: sends payloads, recording them in the transcript and the idle clock.
#[derive(Clone)]
pub(crate) struct Output {
    sink: Arc<dyn OutputSink>,
    transcript: Option<Transcript>,
    /// Output bytes go into the transcript (shells and commands; port sessions carry binary
    /// data at high rates and record only their connection events).
    record_output: bool,
    activity: Activity,
}

impl Output {
    /// Output into `sink`; Output and StdErr payloads are recorded when `record_output`.
    pub(crate) fn new(
        sink: Arc<dyn OutputSink>,
        transcript: Option<Transcript>,
        record_output: bool,
        activity: Activity,
    ) -> Self {
        Self {
            sink,
            transcript,
            record_output,
            activity,
        }
    }

    /// Sends one payload (empty payloads are never sent, PROTOCOL.md T6).
    pub(crate) async fn send(
        &self,
        payload_type: PayloadType,
        payload: Bytes,
    ) -> Result<(), OutputClosed> {
        if payload.is_empty() {
            return Ok(());
        }
        if let (Some(t), true, PayloadType::Output | PayloadType::StdErr) =
            (&self.transcript, self.record_output, payload_type)
        {
            t.output(&payload);
        }
        self.activity.touch();
        self.sink.send(payload_type, payload).await
    }

    /// The session transcript, if one is written.
    pub(crate) fn transcript(&self) -> Option<&Transcript> {
        self.transcript.as_ref()
    }
}

/// Everything a plugin runs with.
pub(crate) struct PluginContext {
    /// Payloads to the client.
    pub(crate) output: Output,
    /// Payloads from the client, in order.
    pub(crate) input: mpsc::Receiver<Input>,
    /// Cancelled when the session must end now (terminate, channel closed, timeout).
    pub(crate) cancel: CancellationToken,
    /// Cancelled just before `cancel` when the session ends abnormally (its data channel
    /// failed): connections are then aborted rather than closed, so their other end sees it.
    pub(crate) abort: CancellationToken,
    /// Largest payload to send in one message.
    pub(crate) max_payload: usize,
    /// The client's version from the handshake (`""` without handshake).
    pub(crate) client_version: String,
    /// The client answered the handshake as an ssmx client, so it takes more than the limits of
    /// the official ends.
    pub(crate) ssmx_client: bool,
    /// Between SIGHUP and SIGKILL when processes are ended.
    pub(crate) kill_grace: Duration,
}

/// How a plugin ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PluginOutcome {
    /// `FinalTaskStatus` for `agent_task_complete`.
    pub(crate) status: &'static str,
    /// Failure text (empty on success).
    pub(crate) output: String,
    /// The session ended by itself (shell or command exited): tell the service `Terminating`.
    pub(crate) terminating: bool,
}

impl PluginOutcome {
    /// The shell or command ended on its own.
    pub(crate) fn finished() -> Self {
        Self {
            status: ssmx_protocol::payload::task_status::SUCCESS,
            output: String::new(),
            terminating: true,
        }
    }

    /// A port session ended (destination closed, or the client asked to terminate).
    pub(crate) fn closed() -> Self {
        Self {
            terminating: false,
            ..Self::finished()
        }
    }

    /// Cancelled from outside; reported as success, as the official agent does.
    pub(crate) fn cancelled() -> Self {
        Self::closed()
    }

    /// The plugin could not do its work.
    pub(crate) fn failed(output: impl Into<String>) -> Self {
        Self {
            status: ssmx_protocol::payload::task_status::FAILED,
            output: output.into(),
            terminating: false,
        }
    }
}

/// Appends `data` to `carry` and returns the longest prefix that does not end inside a UTF-8
/// sequence; the incomplete tail (at most 3 bytes) stays in `carry` for the next read, so no
/// Output message splits a character (PROTOCOL.md §8.1, T26). Invalid bytes pass through.
pub(crate) fn complete_utf8(carry: &mut Vec<u8>, data: &[u8]) -> Bytes {
    carry.extend_from_slice(data);
    let keep = incomplete_utf8_suffix(carry);
    let split = carry.len() - keep;
    let out = Bytes::copy_from_slice(&carry[..split]);
    carry.drain(..split);
    out
}

/// Length of a trailing, incomplete (but so far valid) UTF-8 sequence in `buf`.
fn incomplete_utf8_suffix(buf: &[u8]) -> usize {
    for back in 1..=buf.len().min(3) {
        let byte = buf[buf.len() - back];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // continuation byte: the lead is further back
        }
        let needed = match byte {
            b if b & 0b1110_0000 == 0b1100_0000 => 2,
            b if b & 0b1111_0000 == 0b1110_0000 => 3,
            b if b & 0b1111_1000 == 0b1111_0000 => 4,
            _ => return 0, // ASCII or an invalid lead byte: nothing to wait for
        };
        return if back < needed { back } else { 0 };
    }
    0
}

#[cfg(test)]
pub(crate) mod test_support {
    //! A queue-backed [`OutputSink`] for plugin unit tests.

    use super::*;

    /// Collects what a plugin sends.
    pub(crate) struct QueueSink(pub(crate) mpsc::Sender<Input>);

    impl OutputSink for QueueSink {
        fn send(
            &self,
            payload_type: PayloadType,
            payload: Bytes,
        ) -> BoxFuture<'_, Result<(), OutputClosed>> {
            Box::pin(async move {
                self.0
                    .send(Input {
                        payload_type,
                        payload,
                    })
                    .await
                    .map_err(|_| OutputClosed)
            })
        }
    }

    /// A plugin context wired to queues: (context, input to the plugin, output from it, cancel).
    pub(crate) fn context(
        max_payload: usize,
        client_version: &str,
    ) -> (
        PluginContext,
        mpsc::Sender<Input>,
        mpsc::Receiver<Input>,
        CancellationToken,
    ) {
        let (in_tx, in_rx) = mpsc::channel(64);
        let (out_tx, out_rx) = mpsc::channel(1024);
        let cancel = CancellationToken::new();
        let ctx = PluginContext {
            output: Output::new(Arc::new(QueueSink(out_tx)), None, true, Activity::new()),
            input: in_rx,
            cancel: cancel.clone(),
            abort: CancellationToken::new(),
            max_payload,
            client_version: client_version.into(),
            ssmx_client: false,
            kill_grace: Duration::from_millis(300),
        };
        (ctx, in_tx, out_rx, cancel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_sequences_are_never_split() {
        let text = "aé€😀".as_bytes(); // 1 + 2 + 3 + 4 bytes
        for cut in 0..=text.len() {
            let mut carry = Vec::new();
            let first = complete_utf8(&mut carry, &text[..cut]);
            let second = complete_utf8(&mut carry, &text[cut..]);
            assert!(std::str::from_utf8(&first).is_ok(), "cut {cut}");
            assert!(std::str::from_utf8(&second).is_ok(), "cut {cut}");
            assert_eq!([first, second].concat(), text);
            assert!(carry.is_empty());
        }
    }

    #[test]
    fn invalid_bytes_pass_through() {
        let mut carry = Vec::new();
        assert_eq!(&complete_utf8(&mut carry, b"a\xff")[..], b"a\xff");
        assert_eq!(
            &complete_utf8(&mut carry, b"\x80\x80\x80")[..],
            b"\x80\x80\x80"
        );
        assert!(carry.is_empty());
    }
}
