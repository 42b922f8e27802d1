//! The agent's data channel for one session: opened with retries, reconnected when the WebSocket
//! drops (the stream state survives in ssmx-channel), closed by the service (PROTOCOL.md §10.4,
//! §13.2).

use std::sync::Arc;
use std::time::Duration;

use ssmx_channel::{ChannelConfig, ChannelEvent, Receiver, Role, Sender, Transport};
use ssmx_protocol::crypto::SessionCipher;

use crate::backoff::Backoff;
use crate::error::AgentError;
use crate::mgs::{is_session_terminated, Mgs};
use crate::session::io::Input;

/// What the session learns from its data channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DataEvent {
    /// The client's next in-order stream payload.
    Payload(Input),
    /// The service closed the channel (`Output`: its reason, empty for a normal end).
    Closed(String),
    /// The channel is unusable (the WebSocket could not be re-established, or the peer stopped
    /// acknowledging).
    Failed(String),
}

/// One session's data channel.
pub(crate) struct DataChannel {
    /// Sends stream payloads and non-stream messages.
    pub(crate) sender: Sender,
    receiver: Receiver,
    mgs: Arc<Mgs>,
    session_id: String,
    backoff: Backoff,
    retries: u32,
    /// Opens the client's Output payloads once the session is encrypted.
    cipher: Option<Arc<SessionCipher>>,
}

impl DataChannel {
    /// CreateDataChannel + WebSocket + OpenDataChannel, retried `retries` more times.
    pub(crate) async fn open(
        mgs: Arc<Mgs>,
        session_id: &str,
        backoff: Backoff,
        retries: u32,
    ) -> Result<Self, AgentError> {
        let transport = connect(&mgs, session_id, &backoff, retries).await?;
        let (sender, receiver) = ssmx_channel::spawn(ChannelConfig::new(Role::Agent), transport);
        Ok(Self {
            sender,
            receiver,
            mgs,
            session_id: session_id.to_owned(),
            backoff,
            retries,
            cipher: None,
        })
    }

    /// Decrypts the client's Output payloads from now on (PROTOCOL.md §7.1).
    pub(crate) fn decrypt_with(&mut self, cipher: Arc<SessionCipher>) {
        self.cipher = Some(cipher);
    }

    /// The next event; reconnects transparently when the WebSocket drops.
    pub(crate) async fn next(&mut self) -> DataEvent {
        loop {
            match self.receiver.recv().await {
                Some(ChannelEvent::Payload {
                    payload_type,
                    payload,
                }) => {
                    let payload = match &self.cipher {
                        Some(cipher) if cipher.role().peer().encrypts(payload_type) => {
                            match cipher.decrypt(&payload) {
                                Ok(plaintext) => plaintext,
                                Err(e) => {
                                    return DataEvent::Failed(format!(
                                        "cannot decrypt the client's data ({e}); the session was ended so that nothing corrupted reaches it"
                                    ))
                                }
                            }
                        }
                        _ => payload,
                    };
                    return DataEvent::Payload(Input {
                        payload_type,
                        payload,
                    });
                }
                Some(ChannelEvent::Message(msg)) => {
                    tracing::debug!(message_type = %msg.message_type, "ignoring message on the data channel");
                }
                Some(ChannelEvent::Closed(closed)) => return DataEvent::Closed(closed.output),
                Some(ChannelEvent::TransportLost(err)) => {
                    tracing::info!("data channel WebSocket lost ({err}); reconnecting");
                    let transport =
                        match connect(&self.mgs, &self.session_id, &self.backoff, self.retries)
                            .await
                        {
                            Ok(t) => t,
                            Err(e) => {
                                return DataEvent::Failed(format!(
                                    "the data channel was lost and could not be reopened: {e}"
                                ))
                            }
                        };
                    if let Err(e) = self.sender.reattach(transport).await {
                        return DataEvent::Failed(format!("the data channel failed: {e}"));
                    }
                    tracing::info!("data channel reconnected");
                }
                Some(ChannelEvent::Failed(err)) => {
                    return DataEvent::Failed(format!("the data channel failed: {err}"))
                }
                None => return DataEvent::Failed("the data channel ended".into()),
            }
        }
    }
}

/// Longest wait for the channel to write what is queued (e.g. `Terminating`) when closing.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

impl DataChannel {
    /// Closes the channel once the frames already queued are written (or [`CLOSE_WAIT`] passed).
    pub(crate) async fn close(mut self) {
        self.sender.close();
        // The driver ends after writing what is queued; keep its handles alive until then.
        let drained = tokio::time::timeout(CLOSE_WAIT, async {
            while self.receiver.recv().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::debug!("data channel did not finish closing in time");
        }
    }
}

/// Opens the session's data-channel WebSocket, retrying `retries` times unless the service says
/// the session is over.
async fn connect(
    mgs: &Mgs,
    session_id: &str,
    backoff: &Backoff,
    retries: u32,
) -> Result<Transport, AgentError> {
    let mut delays = backoff.start();
    let mut attempt = 0;
    loop {
        match mgs.connect_data_channel(session_id).await {
            Ok(socket) => return Ok(Transport::from_websocket(socket)),
            Err(e) if attempt < retries && !is_session_terminated(&e) => {
                attempt += 1;
                let delay = delays.next_delay();
                tracing::warn!(attempt, ?delay, "cannot open the data channel: {e}");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}
